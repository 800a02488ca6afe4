"""The public Python API (``import wsi_seg``): the README's example runs and returns typed
results; the configuration types refuse bad values themselves, in one line naming the
parameter, and the CLI words the same rule in flags; ``missing_mpp`` fills in only what a slide
lacks; ``score`` defaults to the threshold the run drew its polygons at; the report scores both
the mosaic and the exported polygons, as ``wsi-seg score`` would."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import wsi_seg
from tests.model_fixtures import red_channel_unet
from wsi_seg.cli import main
from wsi_seg.tools.synth import truth_path_for, write_synthetic_slide

REPO = Path(__file__).resolve().parents[1]


def readme_python_example() -> str:
    """The first ``python`` code block of the README's "Python" section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Python section lost its example"
    return match.group(1)


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """The README's example executed as a user would, in an empty folder."""
    import os

    where = tmp_path_factory.mktemp("readme")
    before = Path.cwd()
    os.chdir(where)
    try:
        namespace: dict[str, object] = {"__name__": "__readme__"}
        exec(compile(readme_python_example(), "README.md", "exec"), namespace)
    finally:
        os.chdir(before)
    return where, namespace


def test_readme_example_returns_typed_results(readme_run: tuple[Path, dict[str, object]]
                                              ) -> None:
    import numpy as np

    where, ns = readme_run
    result = ns["result"]
    assert isinstance(result, wsi_seg.RunResult)
    assert result.failed == 0 and result.count("ok") == 1
    (slide,) = result.slides
    assert isinstance(slide, wsi_seg.SlideResult)
    assert slide.status == "ok" and slide.error is None
    assert isinstance(slide.report, wsi_seg.SlideReport)
    assert slide.report.tiles > 0 and slide.report.tumour_mm2 > 0
    assert slide.output_dir == Path("results") / "sample"
    assert (where / slide.output_dir / "tumor.geojson").is_file()
    score = ns["score"]
    assert isinstance(score, wsi_seg.FileScore)
    assert score.score.iou is not None and score.score.iou > 0.8  # the bundled UNet's floor
    region = ns["region"]
    assert isinstance(region, np.ndarray)
    assert region.shape == (512, 512, 3) and region.dtype == np.uint8


def test_report_scores_mosaic_and_polygons_as_score_does(
        readme_run: tuple[Path, dict[str, object]]) -> None:
    """``score`` is what ``wsi-seg score mask.zarr`` gives at the traced level, and
    ``polygons_score`` what ``wsi-seg score tumor.geojson`` gives at that resolution."""
    where, ns = readme_run
    report = ns["result"].slides[0].report  # type: ignore[attr-defined]
    out, slide = where / "results" / "sample", where / "slides" / "sample.svs"
    truth = where / "slides" / "sample.tumor.geojson"
    assert report.score is not None and report.polygons_score is not None
    mosaic = wsi_seg.score_files(out / "mask.zarr", truth, slide, level=0)
    assert mosaic.score == report.score
    downsample = round(report.mpp / report.slide_mpp)  # the working level in level-0 halvings
    level = downsample.bit_length() - 1
    assert 2**level == downsample
    polygons = wsi_seg.score_files(out / "tumor.geojson", truth, slide, level=level)
    assert polygons.score.resolution_um == pytest.approx(report.polygons_score.resolution_um)
    assert polygons.score.iou == pytest.approx(report.polygons_score.iou, abs=2e-3)
    data = json.loads((out / "report.json").read_text())
    assert data["polygons_score"]["iou"] == pytest.approx(report.polygons_score.iou)


def test_import_loads_nothing_heavy_and_exports_resolve() -> None:
    code = ("import sys, wsi_seg\n"
            "heavy = [m for m in ('tensorflow', 'keras', 'dask', 'distributed', 'cv2', 'zarr')"
            " if m in sys.modules]\n"
            "print(heavy)\n"
            "missing = [n for n in wsi_seg.__all__ if getattr(wsi_seg, n, None) is None]\n"
            "print(missing)\n")
    lines = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                           text=True).stdout.splitlines()
    assert lines == ["[]", "[]"], lines


def test_configs_refuse_bad_values_in_one_line_naming_the_parameter() -> None:
    with pytest.raises(wsi_seg.ConfigError) as exc:
        wsi_seg.RunConfig(out_dir=Path("o"), block_px=1000)
    assert str(exc.value).startswith("block_px = 1000 must be a multiple of chunk_px = 1024")
    assert "\n" not in str(exc.value) and "--" not in str(exc.value)
    with pytest.raises(wsi_seg.ConfigError, match=r"^batch_size = 1000000"):
        wsi_seg.InferConfig(batch_size=1_000_000)
    with pytest.raises(wsi_seg.ConfigError, match=r"min_area_um2"):
        wsi_seg.TissueConfig(min_area_um2=-1)
    with pytest.raises(wsi_seg.ConfigError, match=r"slide_mpp.*missing_mpp"):
        wsi_seg.RunConfig(out_dir=Path("o"), slide_mpp=0.5, missing_mpp=0.25)
    with pytest.raises(wsi_seg.ConfigError, match=r"^infer"):
        wsi_seg.RunConfig(out_dir="o", infer={"batch_size": 8})  # type: ignore[arg-type]
    # Accepted values are normalised once, in the type.
    config = wsi_seg.RunConfig(out_dir="o", truth_classes=["Tumor"])  # type: ignore[arg-type]
    assert config.out_dir == Path("o") and config.truth_classes == ("Tumor",)


def test_the_cli_words_the_same_rule_in_flags(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    slide = tmp_path / "s.svs"
    write_synthetic_slide(slide, (400, 300), seed=1)
    rc = main(["run", str(slide), "--out", str(tmp_path / "o"), "--block", "1000"])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "--block 1000" in err[0] and "--chunk 1024" in err[0], err
    assert "block_px" not in err[0] and "chunk_px" not in err[0]
    assert not (tmp_path / "o").exists()


def test_stride_wider_than_the_window_is_refused_before_any_work(tmp_path: Path) -> None:
    slide = tmp_path / "s.svs"
    write_synthetic_slide(slide, (400, 300), seed=1)
    config = wsi_seg.RunConfig(out_dir=tmp_path / "o", stride_px=1000)
    with pytest.raises(wsi_seg.ConfigError, match=r"stride_px = 1000") as exc:
        wsi_seg.run_slides(slide, config, wsi_seg.ClusterConfig(scheduler="threads"))
    assert "--" not in str(exc.value)
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def red_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return red_channel_unet(tmp_path_factory.mktemp("model") / "red.keras")


def test_missing_mpp_only_where_the_metadata_has_none(tmp_path: Path, red_model: Path) -> None:
    slides = tmp_path / "slides"
    write_synthetic_slide(slides / "with.svs", (600, 500), seed=1)
    data = (slides / "with.svs").read_bytes()
    assert data.count(b"MPP = 0.5") >= 1
    (slides / "without.svs").write_bytes(data.replace(b"MPP = 0.5", b"XYZ = 0.5"))
    threads = wsi_seg.ClusterConfig(scheduler="threads")

    plain = wsi_seg.run_slides(slides, wsi_seg.RunConfig(out_dir=tmp_path / "a",
                                                         model_path=red_model), threads)
    status = {s.name: s.status for s in plain.slides}
    assert status == {"with": "ok", "without": "failed"}
    (bad,) = [s for s in plain.slides if s.status == "failed"]
    assert bad.error is not None and "no MPP" in bad.error

    filled = wsi_seg.run_slides(slides, wsi_seg.RunConfig(
        out_dir=tmp_path / "b", model_path=red_model, missing_mpp=0.25), threads)
    mpp = {s.name: s.report.slide_mpp for s in filled.slides if s.report is not None}
    assert mpp == {"with": 0.5, "without": 0.25}


def test_score_defaults_to_the_threshold_the_run_used(tmp_path: Path, red_model: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    slide = tmp_path / "s.svs"
    write_synthetic_slide(slide, (800, 600), seed=2)
    truth = truth_path_for(slide)
    out = tmp_path / "o"
    rc = main(["run", str(slide), "--out", str(out), "--model", str(red_model),
               "--threshold", "0.7", "--truth", str(truth), "--scheduler", "threads"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "s" / "report.json").read_text())
    scored = wsi_seg.score_files(out / "s", truth, slide, level=0)
    assert scored.threshold == 0.7
    assert scored.score.as_dict() == report["score"]
    at_half = wsi_seg.score_files(out / "s", truth, slide, level=0, threshold=0.5)
    assert at_half.score != scored.score  # the threshold matters on this slide
    capsys.readouterr()
    assert main(["score", str(out / "s"), str(truth), "--slide", str(slide), "--level",
                 "0"]) == 0
    text = capsys.readouterr().out
    assert "threshold 0.7" in text and f"{report['score']['iou']:.3f}" in text, text


def test_a_note_says_what_the_polygon_rules_changed() -> None:
    """The report's note names the rules and how far the polygons moved from the mosaic; a
    change below the notable fraction (simplification's) gets none."""
    from wsi_seg.evaluation.metrics import OverlapScore
    from wsi_seg.orchestration.finish import Polygons, Scored, polygons_note

    config = wsi_seg.RunConfig(out_dir=Path("o"))
    polygons = Polygons([], 0.5, 250.0, 0)
    mosaic = OverlapScore(tp=880, fp=20, fn=100)
    dropped = OverlapScore(tp=700, fp=0, fn=280)  # a region dropped, 22% of the area
    note = polygons_note(Scored(mosaic, dropped), polygons, config)
    assert note == ("tumor.geojson covers 22.2% less than the mosaic above 0.50 (regions "
                    "under 250.0 µm² dropped, holes under it filled, outlines simplified by "
                    "1 µm): IoU 0.714 for the polygons, 0.880 for the mosaic")
    almost = OverlapScore(tp=879, fp=20, fn=101)
    assert polygons_note(Scored(mosaic, almost), polygons, config) is None
    assert polygons_note(Scored(mosaic, None), polygons, config) is None
