"""Results written to a real S3 server (moto's server mode, tests/s3_fixtures.py).

``--out s3://...`` gives the same bytes as a local ``--out`` (every mosaic chunk, the GeoJSON)
in this process and on a dask.distributed cluster whose workers each run in a folder of
their own; a run killed with SIGKILL mid-run and resumed gives the same bytes as one
uninterrupted; a listing of the prefix taken all through a run never shows a slide as
finished before its completion marker; a lease keeps a second run off a slide held.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dask_fixtures import DaskCluster
from tests.s3_fixtures import (
    STORE_RUN_OPTS,
    S3Server,
    local_reference,
    local_slides,
    model,
    s3_env,
    s3_server,
)
from wsi_seg.cli import main
from wsi_seg.core.locations import SlideURL
from wsi_seg.orchestration.job import finished_names
from wsi_seg.orchestration.report import REPORT
from wsi_seg.stages import result_store

__all__ = ["local_reference", "local_slides", "model", "s3_env", "s3_server"]  # fixtures

RUN_OPTS = STORE_RUN_OPTS
SLIDE_SEEDS = (21, 22)  # this file's slides (tests.s3_fixtures.local_slides)
BUCKET = "results"
STEMS = ("s1", "s2")


@pytest.fixture
def bucket(s3_env: S3Server) -> Iterator[str]:
    """An empty bucket for this test's outputs."""
    s3 = s3_env.client()
    s3.create_bucket(Bucket=BUCKET)
    yield BUCKET
    listed = s3.list_objects_v2(Bucket=BUCKET)
    for obj in listed.get("Contents", []):
        s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
    s3.delete_bucket(Bucket=BUCKET)


def local_outputs(out: Path, stem: str) -> dict[str, bytes]:
    """Every mosaic file and the GeoJSON of one slide's local outputs, by relative path."""
    root = out / stem
    files = {str(p.relative_to(root)): p.read_bytes()
             for p in sorted((root / "mask.zarr").rglob("*")) if p.is_file()}
    files["tumor.geojson"] = (root / "tumor.geojson").read_bytes()
    return files


def store_objects(server: S3Server, prefix: str) -> dict[str, bytes]:
    """Every object under ``s3://results/<prefix>``, by key relative to it."""
    s3 = server.client()
    out: dict[str, bytes] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            out[key[len(prefix):]] = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return out


def store_outputs(server: S3Server, prefix: str, stem: str) -> dict[str, bytes]:
    """The same files as :func:`local_outputs`, of a slide's outputs in the store."""
    objects = store_objects(server, f"{prefix}{stem}/")
    return {k: v for k, v in objects.items()
            if k.startswith("mask.zarr/") or k == "tumor.geojson"}


def assert_same_as_local(server: S3Server, prefix: str, reference: Path) -> None:
    for stem in STEMS:
        local, store = local_outputs(reference, stem), store_outputs(server, prefix, stem)
        assert local.keys() == store.keys() and len(local) > 3, (stem, sorted(store))
        for name in local:
            assert local[name] == store[name], f"{stem}/{name} differs"


def test_store_run_is_byte_identical_to_local(
        s3_env: S3Server, bucket: str, local_slides: Path, local_reference: Path,
        model: Path) -> None:
    out = f"s3://{bucket}/results/"
    assert main(["run", str(local_slides), "--out", out, "--model", str(model),
                 "--scheduler", "threads", *RUN_OPTS]) == 0
    assert_same_as_local(s3_env, "results/", local_reference)
    objects = store_objects(s3_env, "results/")
    # The same files as a local --out, and nothing of the work left: no markers, stamps,
    # leases or probes.
    assert sorted(objects) == sorted(
        str(p.relative_to(local_reference)) for p in local_reference.rglob("*")
        if p.is_file() and not p.name.startswith("."))
    record = json.loads(objects["run.json"])
    assert record["config"]["out_dir"] == f"s3://{bucket}/results"
    assert [s["status"] for s in record["slides"]] == ["ok", "ok"]
    assert s3_env.secret not in objects["run.json"].decode()
    for stem in STEMS:
        report = json.loads(objects[f"{stem}/{REPORT}"])
        assert report == json.loads((local_reference / stem / REPORT).read_text()) | {
            k: report[k] for k in ("slide", "wall_s", "tiles_per_s", "blocks_wall_s",
                                   "blocks_tiles_per_s", "finish_s", "stage_s",
                                   "predict_tiles_per_thread_s")}
        assert objects[f"{stem}/overlay.png"].startswith(b"\x89PNG")
    assert finished_names(SlideURL(f"s3://{bucket}/results")) == list(STEMS)
    # A second run finds both finished by their markers.
    assert main(["run", str(local_slides), "--out", out, "--model", str(model),
                 "--scheduler", "threads", *RUN_OPTS]) == 0
    record = json.loads(store_objects(s3_env, "results/")["run.json"])
    assert [s["status"] for s in record["slides"]] == ["skipped", "skipped"]


def _run_command(slides: Path, out: str, model: Path) -> list[str]:
    return [str(Path(sys.executable).parent / "wsi-seg"), "run", str(slides), "--out", out,
            "--model", str(model), "--scheduler", "threads", "--block", "128", "--chunk",
            "128", "--batch-size", "4"]


def test_killed_run_resumes_to_the_same_bytes(
        s3_env: S3Server, bucket: str, local_slides: Path, local_reference: Path,
        model: Path) -> None:
    """SIGKILL once the first slide's line appears (the second is mid-way, its blocks'
    markers in the store), then the same command: the same bytes as an uninterrupted run,
    and the second slide resumed block by block."""
    out = f"s3://{bucket}/killed/"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(_run_command(local_slides, out, model), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, text=True)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("✓ "):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    # What the kill left: one slide finished, the other not taken for finished.
    finished = finished_names(SlideURL(f"s3://{bucket}/killed"))
    assert len(finished) == 1, finished
    rerun = subprocess.run(_run_command(local_slides, out, model), capture_output=True,
                           text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert_same_as_local(s3_env, "killed/", local_reference)
    record = json.loads(store_objects(s3_env, "killed/")["run.json"])
    statuses = {s["output"]: s for s in record["slides"]}
    assert statuses[finished[0]]["status"] == "skipped"
    other = next(s for s in statuses.values() if s["status"] != "skipped")
    assert other["status"] == "ok" and other["blocks_resumed"] > 0, other


def test_listing_never_shows_a_slide_finished_before_its_marker(
        s3_env: S3Server, bucket: str, local_slides: Path, local_reference: Path,
        model: Path) -> None:
    """The prefix is listed over and over while a run writes it: every slide the listing
    calls finished already has all its outputs, byte for byte."""
    out = SlideURL(f"s3://{bucket}/listed")
    seen: list[tuple[str, dict[str, bytes]]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for name in finished_names(out):
                seen.append((name, store_outputs(s3_env, "listed/", name)))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        assert main(["run", str(local_slides), "--out", str(out), "--model", str(model),
                     "--scheduler", "threads", *RUN_OPTS]) == 0
    finally:
        stop.set()
        watcher.join(timeout=60)
    assert {name for name, _ in seen} <= set(STEMS)
    for name, files in seen:
        assert files == local_outputs(local_reference, name), name
    assert finished_names(out) == list(STEMS)


def test_cluster_workers_write_through_the_store_only(
        s3_env: S3Server, bucket: str, local_slides: Path, local_reference: Path,
        model: Path, tmp_path: Path) -> None:
    """Worker processes of a dask.distributed cluster, each in a working folder of its own
    (no folder shared with the client or each other), write the mosaic and every output
    through the store: their folders stay empty and the bytes equal a local run's."""
    folders = [tmp_path / f"worker{i}" for i in range(2)]
    cluster = DaskCluster(tmp_path, cwds=folders)  # after s3_env: workers inherit its key
    try:
        assert main(["run", str(local_slides), "--out", f"s3://{bucket}/cluster/",
                     "--model", str(model), "--scheduler", cluster.address, *RUN_OPTS]) == 0
    finally:
        cluster.close()
    assert_same_as_local(s3_env, "cluster/", local_reference)
    for folder in folders:
        assert sorted(p.name for p in folder.rglob("*")) == [], folder


def test_a_held_slide_is_left_alone(
        s3_env: S3Server, bucket: str, local_slides: Path, model: Path) -> None:
    """A live lease (this very process holds it, as another run would) keeps a run off the
    slide; the lease is a conditional PUT, so a second taker gets nothing."""
    out = SlideURL(f"s3://{bucket}/held")
    lease = result_store.try_lease(out, "s1")
    assert lease is not None
    try:
        assert result_store.try_lease(out, "s1") is None
        assert str(os.getpid()) in result_store.lease_holder(out, "s1")
    finally:
        lease.release()
    again = result_store.try_lease(out, "s1")
    assert again is not None
    again.release()
    assert not result_store.exists(result_store.lease_url(out, "s1"))


def test_stale_leases_are_taken_over_and_live_ones_kept(
        s3_env: S3Server, bucket: str) -> None:
    """A lease whose holder on this host is gone (SIGKILL) is taken over at once; one from
    another host is kept while it is renewed and taken over once it is not."""
    out = SlideURL(f"s3://{bucket}/stale")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    now = time.time()
    for body, taken in (
            ({"pid": int(gone.stdout), "host": socket.gethostname(), "since": "then",
              "renewed_unix_s": now}, True),
            ({"pid": 1, "host": "elsewhere", "since": "now", "renewed_unix_s": now}, False),
            ({"pid": 1, "host": "elsewhere", "since": "then",
              "renewed_unix_s": now - 2 * result_store.LEASE_TTL_S}, True)):
        result_store.put_bytes(result_store.lease_url(out, "s1"), json.dumps(body).encode())
        lease = result_store.try_lease(out, "s1")
        assert (lease is not None) == taken, body
        if lease is not None:
            assert str(os.getpid()) in result_store.lease_holder(out, "s1")
            lease.release()
        else:
            assert "elsewhere" in result_store.lease_holder(out, "s1")
    result_store.delete(result_store.lease_url(out, "s1"))


def test_overwrite_redoes_a_finished_slide_in_place(
        s3_env: S3Server, bucket: str, local_slides: Path, local_reference: Path,
        model: Path) -> None:
    """--overwrite clears a finished slide's prefix (its marker first) and writes it again:
    the same bytes, and nothing of the first run left beside them."""
    out = f"s3://{bucket}/again/"
    for extra in ([], ["--overwrite"]):
        assert main(["run", str(local_slides), "--out", out, "--model", str(model),
                     "--scheduler", "threads", *RUN_OPTS, *extra]) == 0
    assert_same_as_local(s3_env, "again/", local_reference)
    record = json.loads(store_objects(s3_env, "again/")["run.json"])
    assert [s["status"] for s in record["slides"]] == ["ok", "ok"]
    assert not any(k.split("/")[1] in ("blocks", "config.json")
                   for k in store_objects(s3_env, "again/") if "/" in k)
    assert finished_names(local_reference) == list(STEMS)  # the same listing on disk


def test_bad_out_urls_fail_in_one_line(
        s3_env: S3Server, local_slides: Path, model: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["run", str(local_slides), "--out", "s3://no-such-bucket/r/", "--model",
               str(model), "--scheduler", "threads", *RUN_OPTS])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "no-such-bucket" in err[0], err
    assert s3_env.secret not in err[0]
