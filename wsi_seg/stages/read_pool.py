"""One process-wide thread pool that reads the tiles of a slide region concurrently.

OpenSlide decodes with the GIL released (ctypes drops it around ``openslide_read_region``) and
its handles are thread-safe since 3.3.1, so the tiles of one big read can decode on several
cores at once; OpenCV's blur and remap release the GIL too.

Deadlock-free under nesting and many callers: the calling thread works through its own jobs
alongside pool helpers, and only ever waits for jobs that a thread has already *started*.
Helpers that start after the work is gone return at once. So a read never waits for a free
pool thread (with the pool busy, or with no pool at all, the caller does everything itself),
and no pool thread blocks on another pool task; a read made from inside a helper runs inline.
Many Dask task threads reading at once share the one pool, so the total stays bounded.

:data:`READ_THREADS` is the default parallelism of one read (the caller plus helpers):
``$WSI_SEG_READ_THREADS`` when set, else ``min(cores, 8)``; more than 8 rarely pays for one
region, and a Dask worker running several tasks already reads in parallel across them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

#: Most concurrent reads worth giving one region by default (see the module docstring).
DEFAULT_MAX_THREADS = 8
THREADS_ENV = "WSI_SEG_READ_THREADS"


def usable_cores() -> int:
    """Cores this process may run on (affinity and cgroup-pinned CPU sets included)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """``$WSI_SEG_READ_THREADS`` when it is a positive integer, else ``min(cores, 8)``."""
    raw = os.environ.get(THREADS_ENV, "")
    if raw.strip().isdigit() and int(raw) > 0:
        return int(raw)
    return min(usable_cores(), DEFAULT_MAX_THREADS)


#: Threads one read uses unless it names its own ``threads`` (1 = read in the calling thread).
READ_THREADS = default_threads()

_local = threading.local()
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_workers = 0


def _helper_pool(workers: int) -> ThreadPoolExecutor:
    """The shared pool, grown (replaced) when a read asks for more helpers than it has."""
    global _pool, _pool_workers
    with _pool_lock:
        if _pool is None or _pool_workers < workers:
            old = _pool
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsi-read",
                                       initializer=_mark_helper)
            _pool_workers = workers
            if old is not None:
                old.shutdown(wait=False)  # its queued helpers still run and find no work
        return _pool


def _mark_helper() -> None:
    _local.helper = True


def _forget_pool_after_fork() -> None:
    # A forked child inherits the pool object but none of its threads.
    global _pool, _pool_workers, _pool_lock
    _pool, _pool_workers, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


class _Batch:
    """Jobs handed out one at a time to whichever thread asks next."""

    def __init__(self, jobs: Sequence[Callable[[], None]]) -> None:
        self.jobs = jobs
        self.next = 0
        self.running = 0
        self.error: BaseException | None = None
        self.cond = threading.Condition()

    def work(self) -> None:
        """Run jobs until none is left or one has failed."""
        while True:
            with self.cond:
                if self.error is not None or self.next >= len(self.jobs):
                    return
                job = self.jobs[self.next]
                self.next += 1
                self.running += 1
            try:
                job()
            except BaseException as exc:
                with self.cond:
                    if self.error is None:
                        self.error = exc
            finally:
                with self.cond:
                    self.running -= 1
                    self.cond.notify_all()

    def wait_started(self) -> None:
        """Block until every started job has finished (jobs never started are not waited on)."""
        with self.cond:
            while self.running:
                self.cond.wait()


def run_jobs(jobs: Sequence[Callable[[], None]], threads: int | None = None) -> None:
    """Run every job, up to ``threads`` at once (default :data:`READ_THREADS`).

    Jobs must be independent (each writes its own part of an output). The first exception a
    job raises is re-raised here once the jobs already running have finished; jobs not yet
    started are then skipped.
    """
    n = READ_THREADS if threads is None else threads
    if n <= 1 or len(jobs) <= 1 or getattr(_local, "helper", False):
        for job in jobs:
            job()
        return
    batch = _Batch(jobs)
    helpers = min(n, len(jobs)) - 1
    pool = _helper_pool(helpers)
    for _ in range(helpers):
        pool.submit(batch.work)
    batch.work()
    batch.wait_started()
    if batch.error is not None:
        raise batch.error
