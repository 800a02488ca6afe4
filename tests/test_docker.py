"""The container recipes refer to things that exist: files, console scripts and CLI flags.

No Docker engine runs in CI, so the images are not built here; what can be checked without one
is checked: every COPY source exists, every command the images and compose services run is an
installed console script, and every ``wsi-seg`` command line in them parses.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from wsi_seg.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfile_copies_existing_files_and_runs_wsi_seg(name: str) -> None:
    text = (DOCKER / name).read_text()
    copies = re.findall(r"^COPY\s+(.+?)\s+\S+$", text, flags=re.M)
    assert copies
    for line in copies:
        for src in line.split():
            assert (ROOT / src).exists(), f"{name}: COPY {src} does not exist"
    assert 'ENTRYPOINT ["wsi-seg"]' in text
    assert (BIN / "wsi-seg").exists()
    if name.endswith("gpu"):
        assert '".[gpu]"' in text
        extras = (ROOT / "pyproject.toml").read_text()
        assert re.search(r"^gpu = \[.*tensorflow\[and-cuda\]", extras, flags=re.M)


def test_compose_services_run_installed_commands_with_valid_flags() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"scheduler", "worker", "run"} <= services.keys()
    sched = services["scheduler"]
    assert sched["entrypoint"] == ["dask", "scheduler"] and (BIN / "dask").exists()
    worker = services["worker"]
    assert worker["entrypoint"] == ["dask", "worker"]
    cmd = worker["command"]
    assert cmd[cmd.index("--resources") + 1] == "GPU=1"
    assert cmd[0] == "tcp://scheduler:8786"
    devices = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert devices["capabilities"] == ["gpu"]
    run = services["run"]["command"]
    args = build_parser().parse_args(run)  # the image's entry point is wsi-seg
    assert args.command == "run" and args.scheduler == "tcp://scheduler:8786"
    assert args.gpu_resource is True
    assert all("../data:/data" in s["volumes"] for s in services.values())
