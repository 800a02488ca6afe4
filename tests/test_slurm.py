"""``wsi-seg run --cluster slurm`` on a real single-node SLURM (slurmctld + slurmd on this
machine, started by scripts/slurm/start.sh), workers submitted as jobs by dask-jobqueue.

Every slide finishes once with the same bytes as a run in this process; a worker job
``scancel``led mid-run costs only its in-flight blocks (another job takes its place); a run
killed with its jobs resumes from the blocks it finished. The services are installed (apt) and
started when absent; where they cannot be, the tests skip with the reason, and
``WSI_SEG_REQUIRE_SERVICES=1`` (scripts/test.sh) makes that a failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dask_fixtures import BIN
from wsi_seg.cli import main
from wsi_seg.tools.synth import write_synthetic_slide

REPO = Path(__file__).resolve().parents[1]
REQUIRE_ENV = "WSI_SEG_REQUIRE_SERVICES"
#: Small blocks, so that a slide has several and a job can be cancelled between them.
BLOCK_OPTS = ["--block", "128", "--chunk", "128", "--quiet"]
N_SLIDES = 3


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}; {REQUIRE_ENV}=1 makes this a failure")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm() -> Iterator[dict[str, str]]:
    """A running single-node SLURM: the environment its commands need (SLURM_CONF), also
    set in this process for the in-process runs' sbatch."""
    import importlib.util

    if importlib.util.find_spec("dask_jobqueue") is None:
        _unavailable("dask-jobqueue is not installed (pip install -e '.[dev]')")
    try:
        done = subprocess.run([str(REPO / "scripts" / "slurm" / "start.sh")],
                              capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"scripts/slurm/start.sh could not run ({exc})")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not lines[-1].startswith("SLURM_CONF="):
        tail = " ".join(done.stderr.split())[-300:]
        _unavailable(f"SLURM could not be started here (start.sh exit {done.returncode}: "
                     f"{tail})")
    conf = lines[-1].split("=", 1)[1]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", conf)
        yield {**os.environ, "SLURM_CONF": conf}


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("slurm-slides")
    for i in range(N_SLIDES):
        write_synthetic_slide(d / f"s{i}.svs", (1100, 900), seed=40 + i)
    return d


@pytest.fixture(scope="module")
def reference(slides: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same slides run in this process (thread workers), the bundled model."""
    out = tmp_path_factory.mktemp("slurm-ref")
    assert main(["run", str(slides), "--out", str(out), "--scheduler", "threads",
                 *BLOCK_OPTS]) == 0
    return out


def slurm_opts(logs: Path, jobs: int) -> list[str]:
    """One core and 2 GB per job (two fit this 2-core node), talking over loopback."""
    return ["--cluster", "slurm", "--slurm-cores", "1", "--slurm-memory", "2GB",
            "--slurm-jobs", str(jobs), "--slurm-interface", "lo", "--slurm-walltime", "10",
            "--slurm-log-dir", str(logs), *BLOCK_OPTS]


def outputs(root: Path) -> dict[str, bytes]:
    """Every output file of every slide by path (report.json aside: it holds timings)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and len(p.relative_to(root).parts) > 1
            and not p.relative_to(root).parts[0].startswith(".") and p.name != "report.json"}


def assert_same_outputs(got: Path, want: Path) -> None:
    a, b = outputs(got), outputs(want)
    assert sorted(a) == sorted(b)
    assert len(b) > 3 * N_SLIDES
    differ = [name for name in b if a[name] != b[name]]
    assert not differ, differ


def assert_every_slide_ok_once(out: Path, statuses: tuple[str, ...] = ("ok",)
                               ) -> dict[str, object]:
    """Each slide once in run.json, finished by this run (or by the one it resumes:
    ``skipped``, when allowed); nothing left half-done."""
    run = json.loads((out / "run.json").read_text())
    assert sorted(Path(s["slide"]).name for s in run["slides"]) == [
        f"s{i}.svs" for i in range(N_SLIDES)]
    assert all(s["status"] in statuses for s in run["slides"]), run["slides"]
    assert not list(out.glob(".*.partial")) and not list(out.glob(".*.lock.json"))
    return dict(run)


def our_jobs(env: dict[str, str], states: str = "PENDING,RUNNING") -> list[str]:
    """Job ids of the worker jobs (dask-jobqueue names them wsi-seg) in these states."""
    done = subprocess.run(["squeue", "-h", "-n", "wsi-seg", "-t", states, "-o", "%i"],
                          capture_output=True, text=True, env=env, check=True, timeout=60)
    return done.stdout.split()


def wait_until_released(env: dict[str, str]) -> None:
    """The run's jobs are gone from the queue (cancelled at its end): polled, not timed."""
    deadline = time.monotonic() + 120
    while our_jobs(env, "PENDING,RUNNING,COMPLETING"):
        assert time.monotonic() < deadline, our_jobs(env, "all")
        time.sleep(0.5)


def markers(out: Path) -> int:
    """Finished blocks' markers of the slides in flight."""
    return sum(1 for _ in out.glob(".*.partial/blocks/[!.]*.json"))


def start_run(slides: Path, out: Path, opts: list[str], env: dict[str, str]
              ) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(BIN / "wsi-seg"), "run", str(slides), "--out", str(out),
                             *opts], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env, start_new_session=True)


def wait_for_markers(proc: subprocess.Popen[bytes], out: Path, n: int) -> None:
    deadline = time.monotonic() + 300
    while markers(out) < n:
        assert proc.poll() is None, "the run ended before its job could be cancelled"
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_directory_runs_through_slurm_byte_identical(
        slurm: dict[str, str], slides: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["run", str(slides), "--out", str(out), *slurm_opts(tmp_path / "logs", 2)]
                ) == 0
    run = assert_every_slide_ok_once(out)
    assert_same_outputs(out, reference)
    assert run["cluster"]["kind"] == "slurm"  # type: ignore[index]
    assert list((tmp_path / "logs").glob("*.err"))  # the workers ran as SLURM jobs
    wait_until_released(slurm)


def test_a_cancelled_worker_job_is_replaced_and_loses_only_its_blocks(
        slurm: dict[str, str], slides: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # One job at a time: cancelling it leaves no worker, so the run can only finish through
    # the job submitted in its place.
    proc = start_run(slides, out, slurm_opts(tmp_path / "logs", 1), slurm)
    wait_for_markers(proc, out, 2)
    jobs = our_jobs(slurm, "RUNNING")
    assert jobs
    subprocess.run(["scancel", *jobs], env=slurm, check=True, timeout=60)
    _, err = proc.communicate(timeout=540)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert_every_slide_ok_once(out)
    assert_same_outputs(out, reference)
    wait_until_released(slurm)


def test_a_run_killed_with_its_jobs_resumes(
        slurm: dict[str, str], slides: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    opts = slurm_opts(tmp_path / "logs", 1)
    proc = start_run(slides, out, opts, slurm)
    wait_for_markers(proc, out, 2)
    os.killpg(proc.pid, signal.SIGKILL)  # the client and its scheduler
    proc.wait(timeout=60)
    jobs = our_jobs(slurm)
    if jobs:  # its workers would wait for the lost scheduler; SLURM ends them now
        subprocess.run(["scancel", *jobs], env=slurm, check=True, timeout=60)
    wait_until_released(slurm)
    done_before = markers(out)
    assert main(["run", str(slides), "--out", str(out), *opts]) == 0
    run = assert_every_slide_ok_once(out, ("ok", "skipped"))
    resumed = sum(s.get("blocks_resumed") or 0  # type: ignore[attr-defined]
                  for s in run["slides"])  # type: ignore[attr-defined]
    assert resumed >= min(done_before, 2)
    assert_same_outputs(out, reference)
    wait_until_released(slurm)
