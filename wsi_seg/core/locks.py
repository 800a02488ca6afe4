"""One run at a time per slide: an exclusive lock on a slide's outputs within ``OUT``.

Several ``wsi-seg run`` processes may share one output folder (a SLURM array over one folder is
the everyday case). Each slide's work folder, its resume markers and its publication belong to
whichever run holds ``OUT/.<name>.lock``; the others leave that slide alone until the lock is
free. The lock is the operating system's (``flock`` through :mod:`filelock`, also across hosts
on NFS, whose Linux client maps it to a byte-range lock), so it dies with its process: a run
killed with SIGKILL holds nothing, and the next run that asks takes the slide over (and resumes
it block by block from what the killed run finished).

Beside the lock, ``OUT/.<name>.lock.json`` says who holds it (process id, host, since when), so
a run that finds a slide taken can say by whom in its one line. It is written by the holder
after taking the lock and may be stale once the holder is gone; the lock itself is the truth.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from wsi_seg.core.files import write_json_atomic

LOCK_SUFFIX = ".lock"


def lock_path(out_dir: Path, name: str) -> Path:
    """``OUT/.<name>.lock``: hidden, beside the slide's work folder ``OUT/.<name>.partial``."""
    return out_dir / f".{name}{LOCK_SUFFIX}"


@dataclass
class SlideLock:
    """A held lock on one slide's outputs; :meth:`release` (or the process's end) frees it."""

    path: Path
    _lock: FileLock

    def release(self) -> None:
        """Free the slide for other runs (idempotent)."""
        if self._lock.is_locked:
            with contextlib.suppress(OSError):
                self.path.with_suffix(".lock.json").unlink(missing_ok=True)
            self._lock.release(force=True)


def try_lock(out_dir: Path, name: str) -> SlideLock | None:
    """Take the slide's lock without waiting: the held lock, or None when another live
    process holds it (see :func:`holder`)."""
    path = lock_path(out_dir, name)
    # thread_local=False: the lock belongs to the run, whichever of its threads releases it.
    lock = FileLock(path, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        return None
    write_json_atomic(path.with_suffix(".lock.json"),
                      {"pid": os.getpid(), "host": socket.gethostname(),
                       "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return SlideLock(path, lock)


def holder(out_dir: Path, name: str) -> str:
    """Who holds a slide's lock, in words (``process 123 on node7 since ...``), as its holder
    wrote it; ``another run`` when that is unknown."""
    info = lock_path(out_dir, name).with_suffix(".lock.json")
    try:
        data = json.loads(info.read_text(encoding="utf-8"))
        return f"process {int(data['pid'])} on {data['host']} since {data['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another run"
