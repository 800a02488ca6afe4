"""Bytes a run fetches of each slide read from S3, against the file's size and its tissue.

Starts moto's S3 server on 127.0.0.1 (as tests/s3_fixtures.py does; credentials not checked
here), uploads the given local slides, runs ``wsi-seg run s3://.../ --scheduler threads``
(one process, so this process's counts of :mod:`wsi_seg.stages.object_store` are the run's),
and prints one Markdown row per slide. Usage:

    python scripts/measure_s3_reads.py OUT_DIR MODEL SLIDE [SLIDE ...]
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def main(out: Path, model: str, slides: list[Path]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                time.sleep(0.2)
        os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="measure",
                          AWS_SECRET_ACCESS_KEY="measure", AWS_DEFAULT_REGION="us-east-1")
        import boto3

        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="measure")
        for f in slides:
            s3.upload_file(str(f), "measure", f"slides/{f.name}")
        from wsi_seg.cli import main as cli
        from wsi_seg.stages.object_store import BLOCK_BYTES, fetched

        t = time.perf_counter()
        rc = cli(["run", "s3://measure/slides/", "--out", str(out), "--model", model,
                  "--scheduler", "threads", "--quiet"])
        wall_s = time.perf_counter() - t
        print(f"rc {rc}, {wall_s:.1f} s, block {BLOCK_BYTES >> 10} KiB")
        print("| slide | file MB | fetched MB | requests | fetched / file | tissue share "
              "| fetched / (file x tissue share) |")
        print("|---|---|---|---|---|---|---|")
        for f in slides:
            report = json.loads((out / f.stem / "report.json").read_text())
            tissue = float(report["tissue_fraction"])
            c = fetched(f"s3://measure/slides/{f.name}")
            size = f.stat().st_size
            print(f"| {f.name} | {size / 1e6:.2f} | {c.bytes / 1e6:.2f} | {c.requests} | "
                  f"{c.bytes / size:.2f} | {tissue:.2f} | {c.bytes / (size * tissue):.2f} |")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], [Path(a) for a in sys.argv[3:]])
