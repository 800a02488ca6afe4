"""A score asked for and not truthfully possible fails the slide (stderr, run.json, exit 1);
the other slides still finish and are scored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.model_fixtures import small_unet
from wsi_seg.cli import main
from wsi_seg.tools.synth import write_synthetic_slide

OPTS = ["--block", "256", "--chunk", "128", "--batch-size", "4", "--scheduler", "threads",
        "--quiet"]


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("truth")
    for name, seed in (("good", 1), ("garbled", 2), ("elsewhere", 3), ("missing", 4)):
        write_synthetic_slide(d / "slides" / f"{name}.svs", (1000, 800), seed=seed)
    truth = d / "truth"
    truth.mkdir()
    shutil.copy(d / "slides" / "good.tumor.geojson", truth / "good.geojson")
    (truth / "garbled.geojson").write_text("{ this is not json")
    # Truth of a much larger slide: far outside this one.
    far = {"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"classification": {"name": "Tumor"}},
        "geometry": {"type": "Polygon", "coordinates": [[[50000, 50000], [60000, 50000],
                                                         [60000, 60000], [50000, 50000]]]}}]}
    (truth / "elsewhere.geojson").write_text(json.dumps(far))
    return d / "slides", truth, small_unet(d / "u.keras")


def test_unscorable_slides_fail_and_the_others_finish(
        case: tuple[Path, Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    slides, truth, model = case
    out = tmp_path / "out"
    rc = main(["run", str(slides), "--out", str(out), "--model", str(model), "--truth",
               str(truth), *OPTS])
    assert rc == 1
    err = capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    by_name = {Path(s["slide"]).stem: s for s in run["slides"]}
    assert by_name["good"]["status"] == "ok" and by_name["good"]["score"]["iou"] > 0
    for name, why in (("garbled", "truth not usable"), ("elsewhere", "outside the slide"),
                      ("missing", "no ground truth found")):
        rec = by_name[name]
        assert rec["status"] == "failed" and "cannot score" in rec["error"], rec
        assert why in rec["error"]
        assert sum(name in line and "cannot score" in line for line in err.splitlines()) == 1
        # The outputs themselves are complete and kept.
        assert (out / name / "mask.zarr" / "zarr.json").is_file()
    assert run["failed"] == 3
    # Every slide was predicted and published: its tiles count (they were 0 for failed ones).
    assert run["tiles"] == sum(s["tiles"] for s in run["slides"]) > 0
    # Rerun with the truth fixed: the unscored slides are done again and scored.
    shutil.copy(slides / "missing.tumor.geojson", truth / "missing.geojson")
    rc = main(["run", str(slides / "good.svs"), str(slides / "missing.svs"), "--out", str(out),
               "--model", str(model), "--truth", str(truth), *OPTS])
    assert rc == 0
    run = json.loads((out / "run.json").read_text())
    statuses = {Path(s["slide"]).stem: s["status"] for s in run["slides"]}
    assert statuses == {"good": "skipped", "missing": "ok"}


def test_a_tiny_slide_keeps_its_tissue_and_says_what_the_rules_did(
        tmp_path: Path, case: tuple[Path, Path, Path]) -> None:
    """300 x 200 px (0.015 mm²): smaller than the default tissue minimum of 10,000 µm² was
    once 'no tissue found'; minimums now scale to the slide and the notes say so."""
    _, _, model = case
    write_synthetic_slide(tmp_path / "s" / "tiny.svs", (300, 200), seed=1)
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "s"), "--out", str(out), "--model", str(model),
                 *OPTS]) == 0
    rep = json.loads((out / "tiny" / "report.json").read_text())
    assert rep["tiles"] >= 1 and rep["tissue_mm2"] > 0
    assert not any("no tissue" in n for n in rep["notes"])
    assert rep["min_area_um2"] == pytest.approx(150.0)
    assert any("scaled to 1%" in n for n in rep["notes"])


def test_a_slide_that_cannot_be_scored_is_no_tick(case: tuple[Path, Path, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Its outputs are there but the score asked for is not: its line says so (``✗``), and
    the closing line counts its tiles."""
    slides, truth, model = case
    rc = main(["run", str(slides / "garbled.svs"), "--out", str(tmp_path / "out"), "--model",
               str(model), "--truth", str(truth), *[o for o in OPTS if o != "--quiet"]])
    out = capsys.readouterr().out.splitlines()
    assert rc == 1
    assert any(line.startswith("✗ garbled.svs:") for line in out)
    assert not any(line.startswith("✓") for line in out)
    done = next(line for line in out if line.startswith("done:"))
    assert "0 ok" in done and " 0 tiles" not in done and "1 failed" in done


def test_a_truth_reader_that_breaks_costs_the_score_not_the_outputs(
        case: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever goes wrong reading the truth (here a reader's own bug), the slide's finished
    outputs are published and the slide fails with one line saying why."""
    from wsi_seg.evaluation import truth as truth_module

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("reader bug\non two lines")

    monkeypatch.setattr(truth_module, "rasterize_truth", broken)
    slides, truth, model = case
    out = tmp_path / "out"
    rc = main(["run", str(slides / "good.svs"), "--out", str(out), "--model", str(model),
               "--truth", str(truth), *OPTS])
    assert rc == 1
    [rec] = json.loads((out / "run.json").read_text())["slides"]
    assert rec["status"] == "failed" and "RuntimeError: reader bug on two lines" in rec["error"]
    assert (out / "good" / "report.json").is_file() and (out / "good" / "tumor.geojson").is_file()
