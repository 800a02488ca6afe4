"""What ``benchmarks/`` ships runs on this checkout: the pytest-benchmark kernels (each once,
results checked), the asv suite (each benchmark once), the two scripts (the GPU one as a dry
run on the simulated device) and every file its README names. No timing is asserted."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from wsi_seg.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def _need(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{package} is not installed: it is a dev dependency "
                    "(pip install -e '.[dev]'); benchmarks/ needs it")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(extra)
    return env


def test_kernel_benchmarks_run_and_check_their_results() -> None:
    _need("pytest_benchmark", "pytest-benchmark")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/test_kernels.py", "--benchmark-disable",
         "-q", "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True,
        env=_clean_env())
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert re.search(r"\b\d+ passed\b", done.stdout) and " failed" not in done.stdout


def test_asv_config_points_at_this_repo_and_its_suite() -> None:
    conf = json.loads((BENCH / "asv.conf.json").read_text())  # strict JSON, no comments
    # asv resolves the paths from the config file's folder.
    assert (BENCH / conf["repo"]).resolve() == REPO
    assert (BENCH / conf["benchmark_dir"] / "__init__.py").is_file()
    for key in ("env_dir", "results_dir", "html_dir"):
        assert conf[key].startswith(".asv/")  # ignored by benchmarks/.gitignore
    assert "/.asv/" in (BENCH / ".gitignore").read_text().split()


def test_asv_suite_passes_asv_check() -> None:
    _need("asv", "asv")
    done = subprocess.run(
        [sys.executable, "-m", "asv", "check", "--config", str(BENCH / "asv.conf.json"),
         "-E", f"existing:{sys.executable}"], cwd=REPO, capture_output=True, text=True,
        env=_clean_env())
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "No problems found" in out, out[-3000:]


def _asv_benchmarks() -> list[tuple[type, str]]:
    module = importlib.import_module("asv_benches.bench_kernels")
    found = [(cls, name) for _, cls in inspect.getmembers(module, inspect.isclass)
             if cls.__module__ == module.__name__
             for name in dir(cls) if name.startswith(("time_", "mem_", "peakmem_", "track_"))]
    assert len(found) >= 4
    return found


def test_each_asv_benchmark_runs_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As asv calls them (setup_cache, setup, the benchmark, teardown), the first parameter
    combination of each; the kernels behind every combination are checked by
    benchmarks/test_kernels.py."""
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.chdir(tmp_path)  # setup_cache writes into the working folder, as under asv
    for cls, name in _asv_benchmarks():
        params = getattr(cls, "params", ())
        grid = params if params and isinstance(params[0], list) else [params] if params else []
        first = next(itertools.product(*grid)) if grid else ()
        bench = cls()
        cached = (bench.setup_cache(),) if hasattr(bench, "setup_cache") else ()
        args = (*cached, *first)
        if hasattr(bench, "setup"):
            bench.setup(*args)
        assert getattr(bench, name)(*args) is None
        if hasattr(bench, "teardown"):
            bench.teardown(*args)


def test_scripts_parse() -> None:
    for script in ("run_benchmarks.sh", "gpu_bench.sh"):
        done = subprocess.run(["bash", "-n", str(BENCH / script)], capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr


def test_run_benchmarks_sh_passes_options_wsi_seg_bench_takes(tmp_path: Path) -> None:
    """Each way of calling the script ends in a ``wsi-seg bench`` command line that the
    current parser accepts (a stand-in executable records it)."""
    record = tmp_path / "argv"
    fake = tmp_path / "wsi-seg"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\0" "$@" > "{record}"\n')
    fake.chmod(0o755)
    for extra in ({}, {"QUICK": "1"}, {"PROFILE": "simulated"}, {"PROFILE": "gpu"}):
        env = _clean_env(WSI_SEG=str(fake), OUT=str(tmp_path / "out"),
                         WSI_SEG_BENCH_CACHE=str(tmp_path / "cache"), **extra)
        done = subprocess.run(["bash", str(BENCH / "run_benchmarks.sh"), "--repeats", "1"],
                              env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        argv = record.read_text().split("\0")[:-1]
        assert argv[0] == "bench" and argv[-2:] == ["--repeats", "1"]
        args = build_parser().parse_args(argv)
        assert str(args.out) == str(tmp_path / "out")


def test_gpu_bench_sh_dry_run(tmp_path: Path) -> None:
    """The GPU script end to end on this CPU, every model on the simulated device, tiny
    sizes: the environment record, every step of the profile, its tables."""
    out = tmp_path / "out"
    env = _clean_env(PYTHON=sys.executable, OUT=str(out), GPU_BENCH_SIZE="2000",
                     GPU_BENCH_NOISY_SIZE="2000", GPU_BENCH_CACHE=str(tmp_path / "cache"),
                     GPU_BENCH_TOTAL_S="300", GPU_BENCH_STEP_S="120")
    env.pop("KERAS_BACKEND", None)  # the script's own default, as on the GPU machine
    done = subprocess.run(
        ["bash", str(BENCH / "gpu_bench.sh"), "--simulate-batch-s", "0.01", "--heavy",
         "128,2,4", "--noisy", "128,2,2", "--model-seconds", "0.3", "--repeats", "1"],
        env=env, capture_output=True, text=True, cwd=tmp_path)
    log = (out / "gpu_bench.log").read_text() if (out / "gpu_bench.log").exists() else ""
    assert done.returncode == 0, log + done.stderr[-3000:]
    machine = json.loads((out / "env.json").read_text())
    assert machine["keras_backend"] == "jax" and machine["cores"] >= 1
    assert Path(machine["wsi_seg"]).resolve().is_relative_to(REPO)  # this checkout's code
    rec = json.loads((out / "bench" / "bench.json").read_text())
    assert {name.split(":")[0] for name in rec["steps"]} >= {"bundled", "heavy", "noisy"}
    assert all(s["status"] == "ok" for s in rec["steps"].values()), rec["steps"]
    assert set(rec["runs"]) == {"bundled", "heavy"} and rec["noisy"]["tiles"] > 0
    # The cold runs come among each model's rounds, with their ratio to its model-only rate.
    assert all(e["cold"]["tiles"] > 0 and e["ratio_cold"] > 0 for e in rec["runs"].values())
    assert "End to end against the limits" in (out / "bench" / "bench.md").read_text()
    assert (out / "nvidia-smi.txt").exists()


def test_files_the_benchmark_docs_name_exist() -> None:
    """Every ``benchmarks/...`` path the READMEs and docs name (not ``REV:benchmarks/...``, a
    file at a past commit), and every record ``benchmarks/README.md`` cites (``results/...``),
    is in the repository."""
    scripts = sorted(p for p in (REPO / "scripts").rglob("*") if p.is_file())  # subfolders too
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), BENCH / "README.md",
            *sorted(BENCH.glob("*.sh")), *scripts]
    missing = []
    for doc in docs:
        text = doc.read_text()
        for rel in re.findall(r"(?<![\w:/])benchmarks/[\w./-]*\w", text):
            if rel.startswith("benchmarks/."):
                continue  # what runs write (benchmarks/.gitignore)
            if not (REPO / rel).exists():
                missing.append(f"{doc.relative_to(REPO)}: {rel}")
        if doc == BENCH / "README.md":
            for rel in re.findall(r"`(results/[\w./{},-]*[\w}])", text):
                for path in _brace(rel):
                    if not (BENCH / path).exists():
                        missing.append(f"benchmarks/README.md: {path}")
    assert not missing, missing


def _brace(path: str) -> list[str]:
    """``a.{json,md}`` as ``a.json`` and ``a.md``."""
    m = re.search(r"\{([^}]*)\}", path)
    if not m:
        return [path]
    return [x for alt in m.group(1).split(",")
            for x in _brace(path[: m.start()] + alt + path[m.end():])]
