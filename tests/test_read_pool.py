"""wsi_seg.stages.read_pool: jobs on a shared pool, the caller working too; never a deadlock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from wsi_seg.stages import read_pool
from wsi_seg.stages.read_pool import default_threads, run_jobs


def recorder(n: int, delay_s: float = 0.0) -> tuple[list[Callable[[], None]], list[str]]:
    """``n`` jobs that each note the thread that ran them."""
    ran: list[str] = [""] * n

    def job(i: int) -> Callable[[], None]:
        def run() -> None:
            time.sleep(delay_s)
            ran[i] = threading.current_thread().name
        return run

    return [job(i) for i in range(n)], ran


def test_every_job_runs_once_on_up_to_n_threads() -> None:
    jobs, ran = recorder(40, 0.002)
    run_jobs(jobs, threads=4)
    assert all(ran)
    assert len(set(ran)) <= 4
    assert threading.current_thread().name in ran  # the caller works too


def test_one_thread_runs_inline() -> None:
    jobs, ran = recorder(5)
    run_jobs(jobs, threads=1)
    assert set(ran) == {threading.current_thread().name}


def test_first_error_is_raised_after_running_jobs_finish() -> None:
    done: list[int] = []

    def ok(i: int) -> Callable[[], None]:
        def run() -> None:
            time.sleep(0.01)
            done.append(i)
        return run

    def bad() -> None:
        raise KeyError("tile 3")

    jobs = [ok(0), ok(1), ok(2), bad, *(ok(i) for i in range(4, 50))]
    with pytest.raises(KeyError, match="tile 3"):
        run_jobs(jobs, threads=3)
    assert len(done) < 49  # jobs after the failure were skipped


def test_busy_pool_cannot_block_a_read() -> None:
    """Every pool thread blocked elsewhere: the caller does all the work itself."""
    run_jobs(recorder(4)[0], threads=3)  # make sure a pool exists
    pool, workers = read_pool._pool, read_pool._pool_workers
    assert pool is not None
    release = threading.Event()
    blockers = [pool.submit(release.wait, 30) for _ in range(workers)]
    try:
        jobs, ran = recorder(12)
        run_jobs(jobs, threads=workers + 1)
        # Waiting for the pool would have run them there, once the blockers let go (30 s).
        assert set(ran) == {threading.current_thread().name}
    finally:
        release.set()
    for b in blockers:
        b.result(timeout=30)


def test_nested_and_concurrent_callers_finish() -> None:
    """Reads from many threads at once, and reads made inside pool jobs, all complete."""
    results: dict[int, list[str]] = {}

    def caller(k: int) -> None:
        def outer(i: int) -> Callable[[], None]:
            def run() -> None:
                inner, ran = recorder(3, 0.001)
                run_jobs(inner, threads=4)  # from a helper thread: runs inline
                assert all(ran)
                results.setdefault(k, []).append(threading.current_thread().name)
            return run
        run_jobs([outer(i) for i in range(6)], threads=4)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive(), "deadlock"
    assert sorted(results) == list(range(8))
    assert all(len(v) == 6 for v in results.values())


def test_default_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(read_pool.THREADS_ENV, "3")
    assert default_threads() == 3
    for bad in ("", "0", "x", "-2"):
        monkeypatch.setenv(read_pool.THREADS_ENV, bad)
        assert 1 <= default_threads() <= read_pool.DEFAULT_MAX_THREADS
