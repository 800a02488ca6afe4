"""The container recipes refer to things that exist: files, console scripts and CLI flags.

No Docker engine runs in CI, so the images are built only where one answers; what can be
checked without one is checked: every COPY source exists, every command the images and compose
services run is an installed console script, every ``wsi-seg`` command line in them parses, each
GPU worker reserves its own card, the base images and every runtime dependency are pinned.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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
    assert {"scheduler", "run"} <= services.keys()
    sched = services["scheduler"]
    assert sched["entrypoint"] == ["dask", "scheduler"] and (BIN / "dask").exists()
    workers = {k: v for k, v in services.items() if k.startswith("worker")}
    assert len(workers) >= 2
    for worker in workers.values():
        assert worker["entrypoint"] == ["dask", "worker"]
        cmd = worker["command"]
        assert cmd[cmd.index("--resources") + 1] == "GPU=1"
        assert cmd[0] == "tcp://scheduler:8786"
    run = services["run"]["command"]
    args = build_parser().parse_args(run)  # the image's entry point is wsi-seg
    assert args.command == "run" and args.scheduler == "tcp://scheduler:8786"
    assert args.gpu_resource is True
    assert set(workers) <= set(services["run"]["depends_on"])
    assert all("../data:/data" in s["volumes"] for s in services.values())


def test_each_gpu_worker_reserves_its_own_card() -> None:
    """One service per card, by id: replicas of one service ("count: 1" each) may all be
    given GPU 0."""
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    cards = []
    for name, svc in services.items():
        devices = (svc.get("deploy", {}).get("resources", {}).get("reservations", {})
                   .get("devices", []))
        if not name.startswith("worker"):
            assert not devices, name
            continue
        (dev,) = devices
        assert dev["capabilities"] == ["gpu"] and "count" not in dev, name
        (card,) = dev["device_ids"]
        assert name == f"worker-gpu{card}"
        cards.append(card)
    assert sorted(cards) == [str(i) for i in range(len(cards))]  # distinct, 0..n-1


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_images_are_pinned(name: str) -> None:
    text = (DOCKER / name).read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    assert "pip install --no-cache-dir -c docker/constraints.txt" in text
    assert "COPY docker/constraints.txt" in text
    assert "KERAS_HOME=/tmp/keras" in text  # nothing written into the image at run time


def test_constraints_pin_every_runtime_dependency_within_its_range() -> None:
    pins = _constraints()
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in meta["dependencies"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"docker/constraints.txt does not pin {name}"
        assert req.specifier.contains(pins[name], prereleases=True), (text, pins[name])
    assert all(v.count(".") >= 1 for v in pins.values())


def _engine() -> str | None:
    for tool in ("docker", "podman"):
        if shutil.which(tool):
            probe = subprocess.run([tool, "info"], capture_output=True, timeout=30)
            if probe.returncode == 0:
                return tool
    return None


@pytest.mark.timeout(1800)
def test_cpu_image_builds_and_runs_where_an_engine_answers() -> None:
    engine = _engine()
    if engine is None:
        pytest.skip("no container engine answers here (docker/podman info failed)")
    subprocess.run([engine, "build", "-f", "docker/Dockerfile.cpu", "-t", "wsi-seg:cpu-test",
                    "."], cwd=ROOT, check=True, timeout=1700)
    done = subprocess.run([engine, "run", "--rm", "--read-only", "--tmpfs", "/tmp",
                           "wsi-seg:cpu-test", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr
