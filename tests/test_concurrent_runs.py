"""Several ``wsi-seg run`` processes over one folder of slides and one ``--out`` (a SLURM array
over one folder): every slide is finished exactly once, its outputs byte for byte what one run
writes, also when one process is killed with SIGKILL while it holds slides and the others go
on (the lock dies with its process; a survivor takes the slide over and resumes it).

Real processes, real OS locks: each run is the command a user types, in its own process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from wsi_seg.tools.synth import write_synthetic_slide

N_SLIDES = 10
RUN = ("import sys; from wsi_seg.cli import main; sys.exit(main(sys.argv[1:]))")


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("shared-slides")
    for i in range(N_SLIDES):
        write_synthetic_slide(d / f"s{i:02d}.svs", (2000, 1600), seed=40 + i)
    return d


@pytest.fixture(scope="module")
def reference(slides: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What one run alone writes."""
    out = tmp_path_factory.mktemp("single") / "out"
    done = subprocess.run(_command(slides, out), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return out


def _command(slides: Path, out: Path) -> list[str]:
    return [sys.executable, "-c", RUN, "run", str(slides), "--out", str(out),
            "--scheduler", "threads"]


class Proc:
    """A ``wsi-seg run`` process whose output lines are collected as they come."""

    def __init__(self, slides: Path, out: Path) -> None:
        self.p = subprocess.Popen(_command(slides, out), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout_s: float = 300) -> None:
        end = time.monotonic() + timeout_s
        while not any(text in line for line in self.lines):
            assert self.p.poll() is None or any(text in line for line in self.lines), \
                "\n".join(self.lines[-20:])
            assert time.monotonic() < end, f"no {text!r} in:\n" + "\n".join(self.lines[-20:])
            time.sleep(0.05)

    def finish(self, timeout_s: float = 600) -> int:
        rc = self.p.wait(timeout=timeout_s)
        self._reader.join(timeout=10)
        return rc

    def finished_slides(self) -> list[str]:
        """Names of the slides this process finished (its ``✓`` lines)."""
        return [line.split()[1].rstrip(":") for line in self.lines if line.startswith("✓ ")]


def _files(root: Path) -> dict[str, bytes]:
    """Every output file of every slide, by path (the run-level records aside: they hold
    timings and each run's own view)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and len(rel.parts) > 1 and not rel.parts[0].startswith(".") \
                and p.name != "report.json":
            out[str(rel)] = p.read_bytes()
    return out


def _check_exactly_once(procs: list[Proc], out: Path, reference: Path) -> None:
    finished = [name for p in procs for name in p.finished_slides()]
    assert sorted(finished) == sorted(f"s{i:02d}.svs" for i in range(N_SLIDES)), finished
    got, want = _files(out), _files(reference)
    # byte-identical to one run alone; named file by file (a dict of bytes is unreadable)
    assert sorted(got) == sorted(want)
    differ = [f"{k} ({len(got[k])} vs {len(want[k])} bytes)" for k in want if got[k] != want[k]]
    assert not differ, differ
    assert not list(out.glob(".*.partial")) and not list(out.glob(".*.lock.json"))


@pytest.mark.parametrize("n_procs", [2, 4])
def test_concurrent_runs_finish_every_slide_once(slides: Path, reference: Path,
                                                 tmp_path: Path, n_procs: int) -> None:
    out = tmp_path / "out"
    procs = [Proc(slides, out) for _ in range(n_procs)]
    assert [p.finish() for p in procs] == [0] * n_procs, [p.lines[-5:] for p in procs]
    _check_exactly_once(procs, out, reference)


def test_a_run_killed_midway_is_taken_over_by_the_others(slides: Path, reference: Path,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = Proc(slides, out)
    first.wait_for("✓ ")  # it holds every slide and has finished one
    # Paused where it stands (a real process, holding its locks), so that the others are up
    # before it could finish; then killed outright.
    first.p.send_signal(signal.SIGSTOP)
    others = [Proc(slides, out), Proc(slides, out)]
    for p in others:
        p.wait_for("is working on it")  # they see the first run's slides as held
    first.p.send_signal(signal.SIGKILL)
    assert first.finish() == -signal.SIGKILL
    killed_with = len(first.finished_slides())
    assert killed_with < N_SLIDES, "the first run finished before it was killed"
    assert [p.finish() for p in others] == [0, 0], [p.lines[-5:] for p in others]
    _check_exactly_once([first, *others], out, reference)
    assert any("takes it over" in line for p in others for line in p.lines)


def test_a_lock_left_by_a_dead_process_is_no_lock(slides: Path, tmp_path: Path) -> None:
    """A holder's record left behind (the process is gone) does not stop a run: the OS lock
    died with the process."""
    from wsi_seg.core.locks import holder, lock_path, try_lock

    out = tmp_path / "out"
    out.mkdir()
    code = ("import sys, os; from pathlib import Path; from wsi_seg.core.locks import try_lock; "
            "lock = try_lock(Path(sys.argv[1]), 's00'); os._exit(0 if lock else 3)")
    done = subprocess.run([sys.executable, "-c", code, str(out)], timeout=60)
    assert done.returncode == 0
    assert lock_path(out, "s00").with_suffix(".lock.json").exists()  # stale record
    assert "process" in holder(out, "s00")
    lock = try_lock(out, "s00")
    assert lock is not None
    lock.release()
