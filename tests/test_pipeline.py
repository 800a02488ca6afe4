"""One slide end to end: block path == in-memory spec, seams, patch footprints, OME-Zarr, bad input.

Real parts throughout: synthetic SVS slides read by OpenSlide, real Keras models (hand-set
weights, so the expected output is known) run by TensorFlow, real Zarr stores on disk.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.model_fixtures import constant_unet, mean_red_patch, red_channel_unet, small_unet
from wsi_seg.core.errors import WsiSegError
from wsi_seg.orchestration.pipeline import (
    REPORT_KEYS,
    RunConfig,
    SlideReport,
    prepare_slide,
    process_slide_inline,
)
from wsi_seg.stages.blend import BlendSpec, accumulate, sliding_window_inference, to_uint8
from wsi_seg.stages.infer import InferConfig, Predictor
from wsi_seg.stages.mosaic import downsample2_mean, open_mosaic
from wsi_seg.stages.slide import open_slide
from wsi_seg.stages.tiling import plan_blocks, step_for, window_starts
from wsi_seg.stages.tissue import find_tissue
from wsi_seg.tools.synth import write_synthetic_slide


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3000 x 2400 px at 0.5 µm/px: 1500 x 1200 working px at 1 µm/px, several blocks."""
    path = tmp_path_factory.mktemp("slides") / "case.svs"
    write_synthetic_slide(path, (3000, 2400), seed=5)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "const": constant_unet(d / "const.keras"),
        "red": red_channel_unet(d / "red.keras"),
        "unet": small_unet(d / "unet.keras"),
        "patch": mean_red_patch(d / "patch.keras"),
    }


def _run(slide: Path, out: Path, model: Path, **kw: object) -> tuple[np.ndarray, SlideReport]:
    opts: dict[str, object] = {"chunk_px": 128, "block_px": 256, **kw}
    cfg = RunConfig(out_dir=out, model_path=model, infer=InferConfig(batch_size=4),
                    **opts)  # type: ignore[arg-type]
    report = process_slide_inline(slide, cfg)
    mosaic = open_mosaic(out / slide.stem / "mask.zarr")
    return np.asarray(mosaic.level(0)[:]), report


def test_mosaic_does_not_depend_on_block_size(slide: Path, models: dict[str, Path],
                                              tmp_path: Path) -> None:
    a, rep_a = _run(slide, tmp_path / "a", models["unet"], block_px=256)
    b, rep_b = _run(slide, tmp_path / "b", models["unet"], block_px=640, chunk_px=128)
    assert rep_a.blocks != rep_b.blocks  # really different partitions
    assert a.any()
    assert np.array_equal(a, b)
    # Coarser levels too: 256 px blocks write level 1 themselves, 640 px blocks leave it all
    # to the finishing pass; both must give the same pyramid.
    ma = open_mosaic(tmp_path / "a" / slide.stem / "mask.zarr")
    mb = open_mosaic(tmp_path / "b" / slide.stem / "mask.zarr")
    assert ma.n_levels == mb.n_levels >= 3
    for level in range(1, ma.n_levels):
        assert np.array_equal(np.asarray(ma.level(level)[:]), np.asarray(mb.level(level)[:]))


def test_block_path_equals_in_memory_function(slide: Path, models: dict[str, Path],
                                              tmp_path: Path) -> None:
    mosaic, _ = _run(slide, tmp_path / "o", models["unet"])
    with open_slide(slide) as s:
        w, h = s.size_w(1.0)
        image = s.read_w(0, 0, w, h, 1.0)  # the whole working image, fine at this size
        tissue = find_tissue(s)
        plan = plan_blocks(w, h, 64, step_for(64, 0.25), 256, 128, tissue.keep_windows(2.0))
    predictor = Predictor.from_path(models["unet"], InferConfig(batch_size=4))
    ref = sliding_window_inference(image, predictor, 64, overlap=0.25, mode="gaussian",
                                   batch_size=4, keep=plan.keep)
    assert np.array_equal(mosaic, to_uint8(ref))


def test_windows_reach_the_predictor_while_the_image_is_read() -> None:
    """accumulate with ``ready``: the first windows go out before the last rows are read,
    and the sums equal those over the finished image bit for bit."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    filling = np.zeros_like(image)
    rows_ready = [0]

    def ready(rows_px: int) -> None:
        while rows_ready[0] < rows_px:  # a reader that fills 50 rows at a time
            a = rows_ready[0]
            filling[a : a + 50] = image[a : a + 50]
            rows_ready[0] = min(a + 50, 300)

    seen: list[int] = []

    def predict(tiles: np.ndarray) -> np.ndarray:
        seen.append(rows_ready[0])
        return tiles[..., 0].astype(np.float32) / 255

    starts_y, starts_x = window_starts(300, 64, 48), window_starts(200, 64, 48)
    keep = np.ones((len(starts_y), len(starts_x)), bool)
    spec = BlendSpec(64, 48, batch_size=4)
    want = accumulate(image, 0, 0, starts_y, starts_x, keep, predict, spec)
    seen.clear()
    got = accumulate(filling, 0, 0, starts_y, starts_x, keep, predict, spec, ready=ready)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    assert seen[0] < 300 and seen == sorted(seen) and seen[-1] == 300


def test_constant_model_gives_constant_mosaic_without_seams(slide: Path, models: dict[str, Path],
                                                            tmp_path: Path) -> None:
    mosaic, rep = _run(slide, tmp_path / "c", models["const"], blend="gaussian")
    values = set(np.unique(mosaic).tolist())
    # 0.6 * 255 = 153 sits mid-way between rounding edges, so float32 blending noise (a few
    # ulp) cannot flip it; any seam or unnormalised overlap would show as another value.
    assert values == {0, 153}  # tissue 0.6, untouched background 0
    assert rep.tiles > 0


def test_per_pixel_model_is_returned_exactly(slide: Path, models: dict[str, Path],
                                             tmp_path: Path) -> None:
    mosaic, _ = _run(slide, tmp_path / "r", models["red"])
    with open_slide(slide) as s:
        w, h = s.size_w(1.0)
        red = s.read_w(0, 0, w, h, 1.0)[..., 0]
    covered = mosaic > 0
    assert covered.mean() > 0.1
    assert np.array_equal(mosaic[covered], red[covered])


def test_patch_classifier_paints_footprints(slide: Path, models: dict[str, Path],
                                            tmp_path: Path) -> None:
    # 50 px patches at 4 µm/px, stride 50: footprints tile the image without overlap.
    mosaic, rep = _run(slide, tmp_path / "p", models["patch"], stride_px=50, chunk_px=64,
                       block_px=128)
    with open_slide(slide) as s:
        w, h = s.size_w(4.0)
        image = s.read_w(0, 0, w, h, 4.0)
    assert mosaic.shape == (h, w)
    painted = 0
    for y in range(0, h - 50, 50):
        for x in range(0, w - 50, 50):
            fp = mosaic[y : y + 50, x : x + 50]
            if not fp.any():
                continue
            expect = to_uint8(np.float32(image[y : y + 50, x : x + 50, 0].mean() / 255.0))
            assert np.all(np.abs(fp.astype(int) - int(expect)) <= 1), (y, x)
            painted += 1
    assert painted >= 4
    assert rep.tiles >= painted


def test_patch_stride_below_patch_size_blends_smoothly(slide: Path, models: dict[str, Path],
                                                       tmp_path: Path) -> None:
    coarse, _ = _run(slide, tmp_path / "p50", models["patch"], stride_px=50, chunk_px=64,
                     block_px=128)
    smooth, _ = _run(slide, tmp_path / "p25", models["patch"], stride_px=25, chunk_px=64,
                     block_px=128)
    inside = (coarse > 0) & (smooth > 0)
    # A box blend at half stride averages four patches: smaller jumps between neighbours.
    jump = lambda m: np.abs(np.diff(m.astype(int), axis=1))[inside[:, 1:]].mean()  # noqa: E731
    assert jump(smooth) < jump(coarse)


def test_ome_zarr_is_valid_and_levels_are_2x_means(slide: Path, models: dict[str, Path],
                                                   tmp_path: Path) -> None:
    _run(slide, tmp_path / "z", models["unet"])
    store = tmp_path / "z" / slide.stem / "mask.zarr"
    exe = Path(sys.executable).with_name("ome-zarr-models")
    res = subprocess.run([str(exe), "validate", str(store)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Valid" in res.stdout + res.stderr
    m = open_mosaic(store)
    assert m.n_levels >= 3
    attrs = m.group.attrs.asdict()
    prov = attrs["wsi_seg"]
    assert prov["mpp"] == 1.0 and prov["level0_px_per_px"] == 2.0
    assert prov["model"]["sha256"] and prov["blend"] == "gaussian"
    axes = attrs["ome"]["multiscales"][0]["axes"]
    assert [a["unit"] for a in axes] == ["micrometer", "micrometer"]
    level0 = np.asarray(m.level(0)[:])
    for level in range(1, m.n_levels):
        assert np.array_equal(np.asarray(m.level(level)[:]),
                              downsample2_mean(np.asarray(m.level(level - 1)[:])))
    # Against a direct 4x4 mean of level 0 the rounding may compound by at most one step.
    h, w = (s // 4 * 4 for s in level0.shape)
    direct = level0[:h, :w].reshape(h // 4, 4, w // 4, 4).mean(axis=(1, 3))
    assert np.abs(np.asarray(m.level(2)[: h // 4, : w // 4]) - direct).max() <= 1.0


def test_outputs_appear_complete_and_rerun_skips(slide: Path, models: dict[str, Path],
                                                 tmp_path: Path) -> None:
    out = tmp_path / "atomic"
    _run(slide, out, models["const"])
    names = sorted(p.name for p in out.iterdir())
    assert names == [slide.stem]  # no .partial left behind
    assert {p.name for p in (out / slide.stem).iterdir()} >= {
        "mask.zarr", "tumor.geojson", "overlay.png", "report.json"}
    cfg = RunConfig(out_dir=out, model_path=models["const"], chunk_px=128, block_px=256)
    from wsi_seg.orchestration.pipeline import is_finished

    assert is_finished(out, slide)
    job = prepare_slide(slide, cfg)  # a fresh job would redo everything...
    assert len(job.tasks) == job.n_blocks
    # ...but a killed run's work directory is resumed: finished blocks are not redone.
    from wsi_seg.orchestration.pipeline import run_block

    ctx = job.context()
    run_block(ctx, job.tasks[0], cfg.infer)
    again = prepare_slide(slide, cfg)
    assert again.n_blocks_done == 1 and len(again.tasks) == job.n_blocks - 1


def test_no_tissue_gives_all_zero_mosaic_and_a_note(tmp_path: Path, models: dict[str, Path]
                                                    ) -> None:
    import tifffile

    blank = tmp_path / "blank.tif"
    glass = np.full((1024, 1024, 3), 244, np.uint8)
    with tifffile.TiffWriter(blank) as tif:
        tif.write(glass, tile=(256, 256), photometric="rgb", resolution=(2e4, 2e4),
                  resolutionunit="CENTIMETER", metadata=None)
    mosaic, rep = _run(blank, tmp_path / "b", models["const"])
    assert rep.blocks == 0 and rep.tiles == 0
    assert not mosaic.any()
    assert any("no tissue" in n for n in rep.notes)


def test_slide_smaller_than_one_tile(tmp_path: Path, models: dict[str, Path]) -> None:
    tiny = tmp_path / "tiny.svs"
    write_synthetic_slide(tiny, (100, 80), seed=2)
    mosaic, rep = _run(tiny, tmp_path / "t", models["const"])
    assert mosaic.shape == (40, 50)  # 1 µm/px from 0.5 µm/px, smaller than the 64 px tile
    assert rep.tiles <= 1


def test_model_mpp_the_slide_cannot_serve(tmp_path: Path, models: dict[str, Path]) -> None:
    coarse = tmp_path / "coarse.svs"
    write_synthetic_slide(coarse, (600, 600), seed=3, mpp=2.0)
    with pytest.raises(WsiSegError, match=r"coarse\.svs.*cannot serve 1 µm/px"):
        prepare_slide(coarse, RunConfig(out_dir=tmp_path / "o", model_path=models["const"]))


def test_unwritable_output_folder(tmp_path: Path, models: dict[str, Path], slide: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from wsi_seg.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc = main(["run", str(slide), "--out", str(blocker / "out"), "--model",
               str(models["const"]), "--scheduler", "threads", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert len(err) == 1 and "not writable" in err[0] and str(blocker / "out") in err[0]


def test_report_has_timings_and_rates(slide: Path, models: dict[str, Path], tmp_path: Path
                                      ) -> None:
    _, rep = _run(slide, tmp_path / "rep", models["unet"])
    for stage in ("read", "predict", "blend", "write", "pyramid", "vectorize", "geojson"):
        assert stage in rep.stage_s
    assert rep.tiles_per_s is not None and rep.tiles_per_s > 0
    assert rep.predict_tiles_per_thread_s is not None and rep.predict_tiles_per_thread_s > 0
    on_disk = json.loads((tmp_path / "rep" / slide.stem / "report.json").read_text())
    assert on_disk["tiles"] == rep.tiles


#: report.json's keys as documented (wsi_seg.orchestration.report), in the order written.
DOCUMENTED_REPORT_KEYS = [
    "slide", "slide_identity", "output_name", "status", "wsi_seg_version", "model", "mpp",
    "slide_mpp", "mosaic_shape_px", "blocks", "tiles", "tile_predictions", "tissue_fraction",
    "tissue_mm2", "tumour_mm2", "tumour_regions", "threshold", "min_area_um2", "wall_s",
    "tiles_per_s", "blocks_wall_s", "blocks_tiles_per_s", "finish_s",
    "predict_tiles_per_thread_s", "stage_s", "truth", "score", "polygons_score", "score_error",
    "notes",
    "classes",
]


def test_report_json_keys_are_the_documented_ones_in_order(slide: Path, models: dict[str, Path],
                                                           tmp_path: Path) -> None:
    from wsi_seg.orchestration import report as report_module

    truth = tmp_path / "truth.geojson"
    truth.write_text('{"type": "FeatureCollection", "features": []}')
    _, rep = _run(slide, tmp_path / "keys", models["const"], truth=truth)
    on_disk = json.loads((tmp_path / "keys" / slide.stem / "report.json").read_text())
    assert list(on_disk) == DOCUMENTED_REPORT_KEYS == list(REPORT_KEYS)
    assert all(f"``{k}``" in (report_module.__doc__ or "") for k in DOCUMENTED_REPORT_KEYS)
    assert list(on_disk["model"]) == ["path", "sha256", "kind", "name"]
    assert list(on_disk["score"]) == ["tp", "fp", "fn", "resolution_um", "iou", "dice",
                                      "empty_both"]
    # What the runner gets back is what the file says.
    assert on_disk == json.loads(json.dumps(rep.to_json()))


def test_wrong_model_file_is_one_line_before_any_work(slide: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from wsi_seg.cli import main

    fake = tmp_path / "weights.keras"
    fake.write_text("not a model")
    out = tmp_path / "out"
    rc = main(["run", str(slide), "--out", str(out), "--model", str(fake), "--scheduler",
               "threads", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and str(fake) in err[0] and "not a Keras" in err[0]
    assert not out.exists()  # refused before the output folder is even made
