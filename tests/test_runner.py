"""Directory runs on Dask with real processes: external cluster, determinism, resume, failures.

A real ``dask scheduler`` and two ``dask worker`` processes are started on localhost by the
tests; the client is either this process (``wsi_seg.cli.main``) or a ``wsi-seg`` subprocess
that gets killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dask_fixtures import BIN, DaskCluster
from tests.model_fixtures import small_unet
from wsi_seg.cli import main
from wsi_seg.core.errors import WsiSegError
from wsi_seg.tools.synth import write_synthetic_slide

RUN_OPTS = ["--block", "128", "--chunk", "128", "--batch-size", "4", "--quiet"]


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("slides")
    write_synthetic_slide(d / "s1.svs", (2400, 2000), seed=11)
    write_synthetic_slide(d / "s2.tif", (1600, 1600), seed=12)
    return d


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_unet(tmp_path_factory.mktemp("model") / "unet.keras")


@pytest.fixture(scope="module")
def reference(slides: Path, model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean in-process run (one worker, threads) to compare every other run with."""
    out = tmp_path_factory.mktemp("ref")
    rc = main(["run", str(slides), "--out", str(out), "--model", str(model),
               "--scheduler", "threads", *RUN_OPTS])
    assert rc == 0
    return out


def store_bytes(out: Path, stem: str) -> dict[str, bytes]:
    """Every file of a slide's mosaic store, by relative path."""
    root = out / stem / "mask.zarr"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def assert_same_stores(a: Path, b: Path, stems: tuple[str, ...] = ("s1", "s2")) -> None:
    for stem in stems:
        left, right = store_bytes(a, stem), store_bytes(b, stem)
        assert left.keys() == right.keys()
        assert len(left) > 3
        for name in left:
            assert left[name] == right[name], f"{stem}/{name} differs"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[DaskCluster]:
    c = DaskCluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def test_external_cluster_is_byte_identical_to_local_run(
        slides: Path, model: Path, reference: Path, cluster: DaskCluster, tmp_path: Path) -> None:
    out = tmp_path / "remote"
    rc = main(["run", str(slides), "--out", str(out), "--model", str(model),
               "--scheduler", cluster.address, *RUN_OPTS])
    assert rc == 0
    assert_same_stores(reference, out)
    run = json.loads((out / "run.json").read_text())
    assert [s["status"] for s in run["slides"]] == ["ok", "ok"]
    assert run["cluster"]["scheduler"] == cluster.address


def _markers(out: Path) -> int:
    """Finished blocks' markers (not a marker's hidden temporary, caught mid-write)."""
    return sum(1 for _ in out.glob(".*.partial/blocks/[!.]*.json"))


def test_resume_after_killing_the_client(slides: Path, model: Path, reference: Path,
                                         tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cmd = [str(BIN / "wsi-seg"), "run", str(slides / "s1.svs"), "--out", str(out),
           "--model", str(model), "--scheduler", "threads", *RUN_OPTS]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while _markers(out) < 3:
        assert proc.poll() is None, "run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _markers(out)
    assert not (out / "s1").exists()  # nothing under a final name
    rc = main(["run", str(slides / "s1.svs"), "--out", str(out), "--model", str(model),
               "--scheduler", "threads", *RUN_OPTS])
    assert rc == 0
    record = json.loads((out / "run.json").read_text())["slides"][0]
    assert record["blocks_resumed"] >= done_before >= 3
    assert record["blocks_resumed"] < record["blocks"]
    assert not list(out.glob(".*.partial"))
    assert_same_stores(reference, out, ("s1",))
    # A third run finds the slide finished and skips it.
    assert main(["run", str(slides / "s1.svs"), "--out", str(out), "--model", str(model),
                 "--scheduler", "threads", *RUN_OPTS]) == 0
    assert json.loads((out / "run.json").read_text())["slides"][0]["status"] == "skipped"


def test_a_killed_worker_is_survived(slides: Path, model: Path, reference: Path,
                                     cluster: DaskCluster, tmp_path: Path) -> None:
    out = tmp_path / "worker-killed"
    rcs: list[int] = []
    run = threading.Thread(target=lambda: rcs.append(main(
        ["run", str(slides), "--out", str(out), "--model", str(model),
         "--scheduler", cluster.address, *RUN_OPTS])))
    run.start()
    deadline = time.time() + 120
    while _markers(out) < 2:
        assert run.is_alive(), "run ended before a worker could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    cluster.workers[0].kill()
    run.join(timeout=300)
    assert rcs == [0]
    assert_same_stores(reference, out)


def test_one_corrupt_slide_does_not_stop_the_run(slides: Path, model: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("s1.svs", "s2.tif", "s1.tumor.geojson"):
        if (slides / name).exists():
            (folder / name).symlink_to(slides / name)
    (folder / "broken.svs").write_text("this is not a slide\n")
    out = tmp_path / "out"
    rc = main(["run", str(folder), "--out", str(out), "--model", str(model),
               "--scheduler", "threads", *RUN_OPTS])
    assert rc == 1  # the exit status says a slide failed
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "broken.svs" in err[0]
    run = json.loads((out / "run.json").read_text())
    status = {Path(s["slide"]).name: s["status"] for s in run["slides"]}
    assert status == {"broken.svs": "failed", "s1.svs": "ok", "s2.tif": "ok"}
    bad = next(s for s in run["slides"] if s["status"] == "failed")
    assert "broken.svs" in bad["error"] and "\n" not in bad["error"]
    assert (out / "s1" / "report.json").is_file() and (out / "s2" / "report.json").is_file()
    assert "failed" in (out / "summary.md").read_text()


def test_config_file_and_flags(slides: Path, model: Path, tmp_path: Path) -> None:
    from wsi_seg.cli.run import load_config

    for toml in sorted((Path(__file__).parents[1] / "pipelines").glob("*.toml")):
        opts = load_config(toml)
        assert opts, toml
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\noverlap = 0.5\nblend = "hann"\n[device]\nbatch_size = 2\n')
    out = tmp_path / "o"
    rc = main(["run", str(slides / "s2.tif"), "--out", str(out), "--model", str(model),
               "--config", str(cfg), "--batch-size", "4", "--scheduler", "threads",
               "--block", "128", "--chunk", "128", "--quiet"])
    assert rc == 0
    prov = json.loads((out / "s2" / "mask.zarr" / "zarr.json").read_text())["attributes"]
    assert prov["wsi_seg"]["blend"] == "hann" and prov["wsi_seg"]["overlap"] == 0.5
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["infer"]["batch_size"] == 4  # the flag beats the file
    bad = tmp_path / "bad.toml"
    bad.write_text("overlapp = 0.3\n")
    with pytest.raises(WsiSegError, match="unknown option 'overlapp'"):
        load_config(bad)


def _worker_pids(parent: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(parent).children(recursive=True)
            if "spawn_main" in " ".join(p.cmdline()) and "resource_tracker" not in
            " ".join(p.cmdline())]


def test_a_worker_killed_while_loading_the_model_does_not_hang_the_run(
        slides: Path, model: Path, tmp_path: Path) -> None:
    """An out-of-memory kill during start-up: the nanny restarts the worker, the model plugin
    loads it again there, and the run finishes (it once waited forever on a warm-up task
    pinned to the dead worker's address)."""
    out = tmp_path / "killed-at-start"
    proc = subprocess.Popen(
        [str(BIN / "wsi-seg"), "run", str(slides), "--out", str(out), "--model", str(model),
         *RUN_OPTS], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        deadline = time.time() + 60
        run_json = out / "run.json"
        # run.json appears once the workers run and the client has planned the slides; the
        # workers are then still importing the framework and loading the model.
        while not run_json.exists():
            assert time.time() < deadline and proc.poll() is None, "the run did not start"
            time.sleep(0.05)
        assert json.loads(run_json.read_text())["startup_s"] is None  # still warming up
        pids = _worker_pids(proc.pid)
        assert len(pids) == 1
        os.kill(pids[0], signal.SIGKILL)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert rc == 0, proc.stderr.read() if proc.stderr else ""
    record = json.loads((out / "run.json").read_text())
    assert record["finished"] and {s["status"] for s in record["slides"]} == {"ok"}


def test_a_model_that_fails_to_load_on_the_workers_ends_the_run_in_one_line(
        slides: Path, model: Path, tmp_path: Path) -> None:
    """The file passes the client's checks (card, hash), but Keras cannot read its weights
    on the worker: every slide fails with that one line, run.json is finished, exit 1."""
    import hashlib
    import zipfile

    bad = tmp_path / "bad.keras"
    with zipfile.ZipFile(model) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith(".h5"):
                data = b"not an HDF5 file" * 64
            dst.writestr(item, data)
    card = json.loads(model.with_suffix(".json").read_text())
    card["sha256"] = hashlib.sha256(bad.read_bytes()).hexdigest()
    bad.with_suffix(".json").write_text(json.dumps(card))
    out = tmp_path / "out"
    done = subprocess.run(
        [str(BIN / "wsi-seg"), "run", str(slides), "--out", str(out), "--model", str(bad),
         *RUN_OPTS], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("wsi-seg: error:")]
    assert len(errors) == 2 and all("bad.keras" in ln for ln in errors), done.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["finished"] and {s["status"] for s in record["slides"]} == {"failed"}
