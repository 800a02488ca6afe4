"""A real Dask cluster for the tests: ``dask scheduler`` and ``dask worker`` processes on
localhost, as a user starts them for ``wsi-seg run --scheduler tcp://...``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


class DaskCluster:
    """``dask scheduler`` + worker processes on localhost, killed at the end."""

    def __init__(self, tmp: Path, n_workers: int = 2, worker_args: tuple[str, ...] = (),
                 cwds: list[Path] | None = None) -> None:
        """``cwds``: a working folder per worker (made here), so that workers share no folder
        (their scratch space goes under each one's own); default: the test's."""
        self.file = tmp / "scheduler.json"
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.scheduler = subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(self.file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
            start_new_session=True)
        deadline = time.time() + 60
        while True:  # the file appears before it is completely written
            assert time.time() < deadline, "dask scheduler did not start"
            try:
                self.address = json.loads(self.file.read_text())["address"]
                break
            except (OSError, ValueError, KeyError):
                time.sleep(0.1)
        for folder in cwds or ():
            folder.mkdir(parents=True, exist_ok=True)
        self.workers = [
            subprocess.Popen(
                [str(BIN / "dask"), "worker", self.address, "--nthreads", "1",
                 "--no-nanny", "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{i}",
                 *worker_args],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                start_new_session=True, cwd=cwds[i] if cwds else None)
            for i in range(n_workers)]
        from distributed import Client

        with Client(self.address, timeout="60s") as client:
            client.wait_for_workers(n_workers, timeout=60)

    def close(self) -> None:
        for p in [*self.workers, self.scheduler]:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
