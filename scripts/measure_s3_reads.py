"""Bytes a run fetches of each slide read from S3, against the file's size and its tissue;
with ``--rounds N``, also tiles/s of the same slides read from the store against local disk.

Starts moto's S3 server on 127.0.0.1 (as tests/s3_fixtures.py does; credentials not checked
here), uploads the given local slides, runs ``wsi-seg run s3://.../ --scheduler threads``
(one process, so this process's counts of :mod:`wsi_seg.stages.object_store` are the run's),
and prints one Markdown row per slide. Usage:

    python scripts/measure_s3_reads.py OUT_DIR MODEL SLIDE [SLIDE ...] [--rounds N]

``--rounds N``: N rounds each of one run from the store and one of the same files from local
disk, interleaved (the store first in odd rounds, local disk first in even ones, so a drift
of the machine's load falls on both), each run a fresh process (no slide handle, block or
model cached from the run before; each pays the same start-up) with its output local (a
fresh folder). Prints each run's wall and tiles/s (the run's tiles over its wall, and over
its slides' blocks-phase walls), the median of each side and their ratio, and the bytes each
store run fetched.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunFigures:
    """One run's wall and tiles, and the blocks phase's tiles over its slides' blocks walls."""

    source: str
    wall_s: float
    tiles: int
    blocks_wall_s: float

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.wall_s

    @property
    def blocks_tiles_per_s(self) -> float:
        return self.tiles / self.blocks_wall_s if self.blocks_wall_s > 0 else 0.0


def _child(out: Path, model: str, sources: list[str]) -> None:
    """One run in this (fresh) process; prints its wall and what it fetched, as JSON."""
    from wsi_seg.cli import main as cli
    from wsi_seg.stages.object_store import _counts

    t = time.perf_counter()
    rc = cli(["run", *sources, "--out", str(out), "--model", model, "--scheduler", "threads",
              "--quiet"])
    wall_s = time.perf_counter() - t
    print(json.dumps({"rc": rc, "wall_s": wall_s,
                      "fetched": {u: [c.bytes, c.requests] for u, c in _counts.items()}}))


def _run(source: str, sources: list[str], out: Path, model: str
         ) -> tuple[RunFigures, dict[str, Any]]:
    """One run in a fresh process: its figures, and the bytes and requests it fetched by URL."""
    done = subprocess.run([sys.executable, __file__, "--child", str(out), model, *sources],
                          capture_output=True, text=True, check=False)
    lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
    if done.returncode != 0 or not lines or json.loads(lines[-1])["rc"] != 0:
        raise SystemExit(f"{source} run into {out} failed:\n{done.stderr[-2000:]}")
    record = json.loads(lines[-1])
    reports = [json.loads(p.read_text()) for p in sorted(out.glob("*/report.json"))]
    return (RunFigures(source, float(record["wall_s"]), sum(int(r["tiles"]) for r in reports),
                       sum(float(r["blocks_wall_s"]) for r in reports)), record["fetched"])


def _bytes_table(slides: list[Path], out: Path, counts: dict[str, Any]) -> None:
    print("| slide | file MB | fetched MB | requests | fetched / file | tissue share "
          "| fetched / (file x tissue share) |")
    print("|---|---|---|---|---|---|---|")
    for f in slides:
        report = json.loads((out / f.stem / "report.json").read_text())
        tissue = float(report["tissue_fraction"])
        got, requests = counts[f.name]
        size = f.stat().st_size
        print(f"| {f.name} | {size / 1e6:.2f} | {got / 1e6:.2f} | {requests} | "
              f"{got / size:.2f} | {tissue:.2f} | {got / (size * tissue):.2f} |")


def main(out: Path, model: str, slides: list[Path], rounds: int = 0) -> None:
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

        store = ["s3://measure/slides/"]
        local = [str(f) for f in slides]
        if rounds <= 0:  # the bytes alone, in this process, as before
            t = time.perf_counter()
            rc = cli(["run", *store, "--out", str(out), "--model", model,
                      "--scheduler", "threads", "--quiet"])
            print(f"rc {rc}, {time.perf_counter() - t:.1f} s, block {BLOCK_BYTES >> 10} KiB")
            _bytes_table(slides, out, {f.name: (c.bytes, c.requests) for f in slides
                                       if (c := fetched(f"s3://measure/slides/{f.name}"))})
            return
        figures: list[tuple[int, RunFigures]] = []
        first_counts: dict[str, Any] = {}
        for i in range(1, rounds + 1):
            order = ("store", "local") if i % 2 else ("local", "store")
            for source in order:
                run_out = out / f"round{i}-{source}"
                fig, got = _run(source, store if source == "store" else local, run_out, model)
                figures.append((i, fig))
                if source == "store":
                    counts = {f.name: tuple(got[f"s3://measure/slides/{f.name}"])
                              for f in slides}
                    first_counts = first_counts or counts
                    if counts != first_counts:
                        print(f"round {i}: fetched {counts}, not the first round's "
                              f"{first_counts}")
        print(f"block {BLOCK_BYTES >> 10} KiB; outputs local; {rounds} round(s)")
        print("| round | source | wall s | tiles | tiles/s (run) | tiles/s (blocks phase) |")
        print("|---|---|---|---|---|---|")
        for i, f in figures:
            print(f"| {i} | {f.source} | {f.wall_s:.1f} | {f.tiles} | {f.tiles_per_s:.1f} | "
                  f"{f.blocks_tiles_per_s:.1f} |")
        med = {src: (statistics.median(f.tiles_per_s for _, f in figures if f.source == src),
                     statistics.median(f.blocks_tiles_per_s for _, f in figures
                                       if f.source == src))
               for src in ("store", "local")}
        for src, (run_rate, blocks_rate) in med.items():
            print(f"median {src}: {run_rate:.1f} tiles/s (run), {blocks_rate:.1f} tiles/s "
                  f"(blocks phase)")
        print(f"store / local: {med['store'][0] / med['local'][0]:.2f} (run), "
              f"{med['store'][1] / med['local'][1]:.2f} (blocks phase)")
        _bytes_table(slides, out / "round1-store", first_counts)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(Path(sys.argv[2]), sys.argv[3], sys.argv[4:])
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("model")
    parser.add_argument("slides", type=Path, nargs="+")
    parser.add_argument("--rounds", type=int, default=0,
                        help="interleaved rounds of a store run and a local-disk run "
                        "(tiles/s); 0: one store run, bytes only")
    args = parser.parse_args()
    main(args.out, args.model, args.slides, args.rounds)
