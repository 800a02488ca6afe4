"""What ships is run: ``wsi-seg demo`` end to end, the bundled models' quality, and every
``pipelines/*.toml`` as a user runs it (the cluster one on a real ``dask scheduler`` and
workers advertising a GPU resource; the GPU workstation one refused in one line without a GPU
and run with the device left to ``auto``, which is all this machine can check of it).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dask_fixtures import DaskCluster
from tests.synth_fixtures import synthetic
from wsi_seg.cli import main

REPO = Path(__file__).resolve().parents[1]
PIPELINES = sorted((REPO / "pipelines").glob("*.toml"))
#: IoU of the bundled UNet on the demo's sample at the size below (measured 0.95 at seed 1001,
#: 3000 px): a floor that noise weights or a broken pipeline cannot reach.
DEMO_IOU_FLOOR = 0.85


def test_every_pipeline_file_is_run_by_a_test() -> None:
    assert {p.name for p in PIPELINES} == {
        "unet-10x-gaussian.toml", "patch-idc-50px.toml", "cluster.toml", "gpu-workstation.toml"}


def test_demo_runs_end_to_end_and_the_bundled_unet_finds_the_tumour(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--size", "3000x3000", "--scheduler", "threads"])
    text = capsys.readouterr().out
    assert rc == 0, text
    report = json.loads((out / "results" / "sample" / "report.json").read_text())
    assert report["score"]["iou"] >= DEMO_IOU_FLOOR, report["score"]
    assert f"IoU {report['score']['iou']:.3f}" in text
    assert report["tumour_regions"] >= 1
    # Records name the program and the model, not where this machine installed them.
    from wsi_seg.stages.card import WEIGHTS_DIR

    assert report["model"]["path"] == "bundled:unet" and len(report["model"]["sha256"]) == 64
    run_text = (out / "results" / "run.json").read_text()
    assert str(WEIGHTS_DIR) not in run_text


def test_demo_whose_run_fails_says_so_in_one_line(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A slide the run cannot read: the demo ends with the run's error, not a traceback."""
    out = tmp_path / "demo"
    out.mkdir()
    (out / "sample.svs").write_bytes(b"II*\x00" + b"\x00" * 100)  # a TIFF header, no image
    (out / "sample.tumor.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    rc = main(["demo", "--out", str(out), "--scheduler", "threads"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "sample.svs" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic(tmp_path_factory, "p2.svs")  # 3000 x 2000 px, truth beside it


def _run(slide: Path, out: Path, toml: str, *flags: str) -> dict[str, object]:
    rc = main(["run", str(slide), "--out", str(out), "--config", str(REPO / "pipelines" / toml),
               "--truth", str(slide.parent), "--quiet", *flags])
    assert rc == 0
    return json.loads((out / "run.json").read_text())


@pytest.mark.parametrize("toml", ["unet-10x-gaussian.toml", "patch-idc-50px.toml"])
def test_cpu_pipelines_run_end_to_end(slide: Path, tmp_path: Path, toml: str) -> None:
    run = _run(slide, tmp_path / "out", toml)
    [entry] = run["slides"]
    assert entry["status"] == "ok" and entry["tiles"] > 0
    report = json.loads((tmp_path / "out" / "p2" / "report.json").read_text())
    assert report["score"] is not None and report["score"]["iou"] is not None


@pytest.fixture
def gpu_labelled_cluster(tmp_path: Path) -> Iterator[DaskCluster]:
    """A scheduler and a worker that advertises one GPU (a resource label: it computes on the
    CPU), as cluster.toml expects its workers to be started."""
    c = DaskCluster(tmp_path, n_workers=1, worker_args=("--resources", "GPU=1"))
    try:
        yield c
    finally:
        c.close()


def test_cluster_pipeline_runs_on_a_real_scheduler(slide: Path, tmp_path: Path,
                                                   gpu_labelled_cluster: DaskCluster) -> None:
    # The file names its scheduler "tcp://scheduler:8786" (the compose file's); flags win.
    run = _run(slide, tmp_path / "out", "cluster.toml", "--scheduler",
               gpu_labelled_cluster.address)
    assert run["cluster"]["scheduler"] == gpu_labelled_cluster.address
    assert [s["status"] for s in run["slides"]] == ["ok"]
    assert run["config"]["infer"]["batch_size"] == 256  # the file's settings were used
    assert run["command"][0] == "wsi-seg"


def test_gpu_workstation_pipeline(slide: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    toml = str(REPO / "pipelines" / "gpu-workstation.toml")
    if shutil.which("nvidia-smi") is None:
        rc = main(["run", str(slide), "--out", str(tmp_path / "refused"), "--config", toml])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "\n" not in err and "gpu" in err.lower()
        assert not (tmp_path / "refused").exists()
    # Everything else of the file (batch 256, mixed precision, blocks) runs with the device
    # left to auto: on a CPU, float32 with a warning; on a GPU, the GPU.
    run = _run(slide, tmp_path / "out", "gpu-workstation.toml", "--device", "auto")
    assert [s["status"] for s in run["slides"]] == ["ok"]
    assert run["config"]["infer"]["batch_size"] == 256
    assert run["config"]["infer"]["mixed_precision"] is True
