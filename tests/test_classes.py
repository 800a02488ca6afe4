"""Multi-class models through ``wsi-seg run``: class maps, per-class polygons, areas and scores.

Real parts throughout: a slide of flat-coloured tissue classes (``tests/class_fixtures.py``)
read by OpenSlide, genuine Keras models of standard layers whose output is the slide's exact
truth (nearest-prototype classifiers), TensorFlow, Dask, Zarr stores on disk, QuPath GeoJSON
read back by the library's own truth readers and validated by ``ome-zarr-models``.

The runs are shared by the tests (module-scoped fixtures), each a few seconds:

* ``main``: the 6-class softmax UNet, blocks 512 / chunks 256, threads, with the truth and
  ``--class-map 'Necrotic debris=Necrosis'``;
* ``big_blocks``: the same model, blocks 1024, on a local cluster of worker processes, scored
  against a truth that does not draw the immune cells;
* ``logits``: the same classifier with a linear head (card ``output: logits``);
* ``two_class``: a fully convolutional 2-class (Background, Tumor) softmax UNet with
  ``mean_std`` normalisation, run with ``--tile 96``;
* ``patch2`` / ``patch6``: 2-class and 6-class patch classifiers, constant blend; the latter
  with ``imagenet`` normalisation and two tumour classes (Tumor and Necrosis);
* a rerun and an ``--overwrite`` run of ``main``'s command on a copy of its outputs.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
from shapely.geometry import shape

from tests.class_fixtures import (
    CARD_COLORS,
    CLASSES,
    ClassSlide,
    class_slide,
    prototype_softmax_patch,
    prototype_softmax_unet,
    write_class_truth,
)
from wsi_seg.cli import main
from wsi_seg.evaluation.annotations import (
    parse_class_map,
    read_class_truths,
    read_prediction_geojson,
    read_truth,
)
from wsi_seg.stages.card import read_card
from wsi_seg.stages.mosaic import Mosaic, downsample2_mean, open_mosaic

#: The classes that get polygons, areas and scores (all but the background), in output order.
MAPPED = CLASSES[1:]
DRAWN = ("Tumor", "Stroma", "Immune cells", "Necrosis")
CLASS_MAP = ["--class-map", "Necrotic debris=Necrosis"]
SMALL = ["--block", "512", "--chunk", "256", "--batch-size", "8", "--quiet"]
THREADS = ["--scheduler", "threads"]


@dataclass(frozen=True)
class Case:
    slide: ClassSlide
    models: dict[str, Path]
    root: Path


@dataclass(frozen=True)
class Run:
    out: Path
    argv: tuple[str, ...]

    @property
    def dir(self) -> Path:
        return self.out / "classes"

    @property
    def report(self) -> dict[str, Any]:
        return json.loads((self.dir / "report.json").read_text(encoding="utf-8"))

    def mosaic(self) -> Mosaic:
        return open_mosaic(self.dir / "mask.zarr")

    def classes(self) -> dict[str, dict[str, Any]]:
        return {c["name"]: c for c in self.report["classes"]}


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    root = tmp_path_factory.mktemp("classes")
    cs = class_slide(root / "slides")
    paint = [cs.paint[c] for c in CLASSES]
    m = root / "models"
    colors = {"class_colors": tuple(CARD_COLORS[c] for c in CLASSES)}
    # Prototypes of the 2-class models: every painted colour, merged into background/tumour.
    tumour_of = [int(c == "Tumor") for c in CLASSES]
    models = {
        "main": prototype_softmax_unet(m / "proto.keras", paint, CLASSES, **colors),
        "logits": prototype_softmax_unet(m / "proto_logits.keras", paint, CLASSES,
                                         output="logits", **colors),
        "two": prototype_softmax_unet(m / "two.keras", paint, ("Background", "Tumor"),
                                      roi=None, class_of=tumour_of, normalisation="mean_std",
                                      mean=(0.7, 0.6, 0.65), std=(0.2, 0.25, 0.3)),
        "patch2": prototype_softmax_patch(m / "patch2.keras", paint, ("Background", "Tumor"),
                                          class_of=tumour_of),
        "patch6": prototype_softmax_patch(m / "patch6.keras", paint, CLASSES,
                                          normalisation="imagenet",
                                          tumour_classes=("Tumor", "Necrosis")),
    }
    return Case(cs, models, root)


def _run(case: Case, name: str, model: str, *extra: str, truth: Path | None = None,
         scheduler: list[str] = THREADS) -> Run:
    out = case.root / "runs" / name
    argv = ("run", str(case.slide.slide), "--out", str(out), "--model",
            str(case.models[model]), *SMALL, *scheduler, *extra)
    if truth is not None:
        argv += ("--truth", str(truth), *CLASS_MAP)
    assert main(list(argv)) == 0
    return Run(out, argv)


@pytest.fixture(scope="module")
def main_run(case: Case) -> Run:
    return _run(case, "main", "main", truth=case.slide.truth)


@pytest.fixture(scope="module")
def big_blocks(case: Case) -> Run:
    """Blocks of 1024 (the whole slide in one) on worker processes; the truth leaves the
    immune cells undrawn."""
    truth = write_class_truth(case.root / "no_immune.geojson", case.slide.geometry,
                              drop=("Immune cells",))
    return _run(case, "big", "main", "--block", "1024", truth=truth, scheduler=[])


@pytest.fixture(scope="module")
def logits_run(case: Case) -> Run:
    return _run(case, "logits", "logits")


@pytest.fixture(scope="module")
def two_class(case: Case) -> Run:
    return _run(case, "two", "two", "--tile", "96", truth=case.slide.truth)


def _levels(m: Mosaic) -> list[tuple[np.ndarray, np.ndarray | None]]:
    return [(np.asarray(m.level(i)[:]), np.asarray(m.class_level(i)[:]) if m.classes else None)
            for i in range(m.n_levels)]


def _iou(a: Any, b: Any) -> float:
    return float(a.intersection(b).area / a.union(b).area)


# -- the run's records -----------------------------------------------------------------------
def test_every_drawn_class_is_scored_and_measured(main_run: Run, case: Case) -> None:
    rep = main_run.report
    assert rep["status"] == "ok" and rep["score_error"] is None
    assert rep["score"]["iou"] >= 0.98 and rep["score"]["resolution_um"] == 1.0
    assert rep["tumour_mm2"] == pytest.approx(case.slide.area_mm2("Tumor"), rel=0.01)
    assert [c["name"] for c in rep["classes"]] == list(MAPPED)  # no background, output order
    regions = {"Tumor": 2, "Stroma": 2, "Immune cells": 4, "Necrosis": 2, "Other": 0}
    for c in rep["classes"]:
        name = c["name"]
        assert c["color"] == list(CARD_COLORS[name])
        assert c["regions"] == regions[name], c
        assert c["area_mm2"] == pytest.approx(case.slide.area_mm2(name), rel=0.01, abs=1e-4)
        if name in DRAWN:
            s = c["score"]
            assert s["iou"] >= 0.98 and s["dice"] >= 0.99 and s["resolution_um"] == 1.0, c
            assert not s["empty_both"]
    # The tumour class is the tumour: the same score.
    assert main_run.classes()["Tumor"]["score"] == rep["score"]
    # Necrosis is scored only because --class-map names its truth class.
    unmapped = read_class_truths(case.slide.truth, MAPPED)
    mapped = read_class_truths(case.slide.truth, MAPPED,
                               parse_class_map(["Necrotic debris=Necrosis"]))
    assert unmapped["Necrosis"].is_empty and not mapped["Necrosis"].is_empty


def test_a_class_the_truth_does_not_draw_is_not_scored(main_run: Run, big_blocks: Run) -> None:
    # "Other" is on no slide and in no truth; the immune cells are on the slide and drawn in
    # the main run's truth only.
    assert main_run.classes()["Other"]["score"] is None
    assert main_run.classes()["Other"]["area_mm2"] == 0.0
    by_name = big_blocks.classes()
    assert by_name["Immune cells"]["score"] is None
    assert by_name["Immune cells"]["area_mm2"] > 0.01  # predicted, just not drawn
    for name in ("Tumor", "Stroma", "Necrosis"):
        assert by_name[name]["score"]["iou"] >= 0.98
    rows = {r["name"]: r for r in csv.DictReader(
        (big_blocks.out / "summary_classes.csv").open(encoding="utf-8"))}
    assert rows["Immune cells"]["iou"] == "" and rows["Stroma"]["iou"] != ""


def test_summaries_list_each_class(main_run: Run, case: Case) -> None:
    with (main_run.out / "summary_classes.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == list(MAPPED)
    assert {r["slide"] for r in rows} == {"classes.tif"}
    for r in rows:
        assert float(r["area_mm2"]) == pytest.approx(case.slide.area_mm2(r["name"]),
                                                     abs=6e-4)
        assert (r["iou"] != "") == (r["name"] in DRAWN)
        if r["name"] in DRAWN:
            assert float(r["iou"]) >= 0.98 and float(r["dice"]) >= 0.99
    md = (main_run.out / "summary.md").read_text(encoding="utf-8")
    table = md[md.index("## Classes"):].splitlines()
    assert table[2].startswith("| slide | class | area mm² | regions | IoU | Dice |")
    body = [line for line in table[4:] if line.startswith("| classes.tif |")]
    assert [line.split(" | ")[1] for line in body] == list(MAPPED)
    stroma = next(line for line in body if "| Stroma |" in line)
    assert f"{case.slide.area_mm2('Stroma'):.3f}" in stroma


# -- classes.geojson ---------------------------------------------------------------------------
def test_class_geojson_is_qupath_importable(main_run: Run) -> None:
    text = (main_run.dir / "classes.geojson").read_text(encoding="utf-8")
    doc = json.loads(text)
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 10
    ids = [f["id"] for f in doc["features"]]
    assert len(set(ids)) == len(ids) and all(str(uuid.UUID(i)) == i for i in ids)
    names = set()
    for f in doc["features"]:
        props = f["properties"]
        assert f["type"] == "Feature" and props["objectType"] == "annotation"
        cls = props["classification"]
        names.add(cls["name"])
        assert cls["color"] == list(CARD_COLORS[cls["name"]])
        assert all(isinstance(v, int) for v in cls["color"])
        assert set(props["measurements"]) >= {"Area µm^2", "Mean probability"}
        geom = f["geometry"]
        assert geom["type"] == "Polygon"
        for ring in geom["coordinates"]:
            assert ring[0] == ring[-1] and len(ring) >= 4
        poly = shape(geom)
        assert poly.is_valid and shapely.set_precision(poly, 0.01, mode="pointwise").is_valid
    assert names == set(DRAWN)  # no Background, no empty "Other"
    coords = re.findall(r"-?\d+\.\d+", text.split('"measurements"')[0])
    assert coords and not any(len(c.split(".")[1]) > 2 for c in coords)


def test_class_geojson_reads_back_as_each_class(main_run: Run, case: Case) -> None:
    path = main_run.dir / "classes.geojson"
    got = read_class_truths(path, MAPPED)
    for name in DRAWN:
        assert _iou(got[name], case.slide.geometry[name]) >= 0.98, name
    assert got["Other"].is_empty
    # Holes survive: the tumour ring's, and the stroma bed's around four immune discs.
    assert sorted(len(p.interiors) for p in shapely.get_parts(got["Tumor"])) == [0, 1]
    assert sorted(len(p.interiors) for p in shapely.get_parts(got["Stroma"])) == [0, 4]
    # tumor.geojson (from the tumour image) is the Tumor class's polygons.
    assert _iou(read_prediction_geojson(main_run.dir / "tumor.geojson"), got["Tumor"]) > 0.999
    assert read_truth(path).classes == ("Tumor",)  # and reads as tumour truth by name


# -- mask.zarr and mask.zarr/classes ----------------------------------------------------------
def test_both_images_are_valid_ome_zarr_with_class_labels(main_run: Run) -> None:
    store = main_run.dir / "mask.zarr"
    exe = Path(sys.executable).with_name("ome-zarr-models")
    for path in (store, store / "classes"):
        res = subprocess.run([str(exe), "validate", str(path)], capture_output=True, text=True)
        assert res.returncode == 0 and "Valid" in res.stdout + res.stderr, res.stdout + res.stderr
    m = main_run.mosaic()
    assert [c.name for c in m.classes] == list(CLASSES)
    ome = m.group["classes"].attrs["ome"]
    channels = ome["omero"]["channels"]
    assert [ch["label"] for ch in channels] == list(CLASSES)
    assert [ch["color"] for ch in channels] == ["{:02X}{:02X}{:02X}".format(*CARD_COLORS[c])
                                                 for c in CLASSES]
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    tumour_ms = m.group.attrs["ome"]["multiscales"][0]
    assert len(ms["datasets"]) == len(tumour_ms["datasets"]) == m.n_levels == 3
    for level in range(m.n_levels):
        t, c = m.level(level), m.class_level(level)
        assert c.shape == (len(CLASSES), *t.shape) and c.chunks == (1, *t.chunks)
        assert c.metadata.dimension_names == ("c", "y", "x")
        cds, tds = ms["datasets"][level], tumour_ms["datasets"][level]
        assert [x[1:] for x in (cds["coordinateTransformations"][0]["scale"],
                                cds["coordinateTransformations"][1]["translation"])] == [
            tds["coordinateTransformations"][0]["scale"],
            tds["coordinateTransformations"][1]["translation"]]


def test_class_maps_are_the_painted_truth(main_run: Run, case: Case) -> None:
    m = main_run.mosaic()
    tumour = np.asarray(m.level(0)[:])
    maps = np.asarray(m.class_level(0)[:])
    assert tumour.shape == (768, 1024)
    # Softmax with one tumour class: the tumour probability is that class's, byte for byte.
    assert np.array_equal(tumour, maps[CLASSES.index("Tumor")])
    for i, name in enumerate(CLASSES[1:], start=1):
        truth = case.slide.raster(name)
        wrong = np.count_nonzero((maps[i] >= 128) != truth)
        assert wrong <= truth.size // 1000, (name, wrong)
        assert np.all(maps[i][truth] == 255) and np.all(maps[i][~truth] == 0), name
    painted = np.any([case.slide.raster(c) for c in DRAWN], axis=0)
    assert not maps[0][painted].any()  # no background on tissue
    assert (maps[0][~painted] == 255).mean() > 0.3  # glass inside predicted windows
    covered = maps.any(axis=0)
    sums = maps.sum(axis=0, dtype=np.int32)[covered]
    assert np.all(np.abs(sums - 255) <= 3)  # probabilities that sum to one
    # Coarser levels are 2x means of the level below, channel by channel.
    for level in range(1, m.n_levels):
        below = np.asarray(m.class_level(level - 1)[:])
        here = np.asarray(m.class_level(level)[:])
        for c in range(len(CLASSES)):
            assert np.array_equal(here[c], downsample2_mean(below[c])), (level, c)


def test_class_maps_do_not_depend_on_blocks_or_processes(main_run: Run, big_blocks: Run
                                                          ) -> None:
    assert main_run.report["blocks"] == 4 and big_blocks.report["blocks"] == 1
    a, b = _levels(main_run.mosaic()), _levels(big_blocks.mosaic())
    assert len(a) == len(b) == 3
    for level, ((ta, ca), (tb, cb)) in enumerate(zip(a, b, strict=True)):
        assert np.array_equal(ta, tb), level
        assert ca is not None and cb is not None and np.array_equal(ca, cb), level
    # The stored chunks too, byte for byte (a threads run and a worker-process run).
    root_a, root_b = main_run.dir / "mask.zarr", big_blocks.dir / "mask.zarr"
    chunks = sorted(p.relative_to(root_a) for p in root_a.rglob("*")
                    if p.is_file() and p.name != "zarr.json")
    assert len(chunks) >= 6 * 4
    for rel in chunks:
        assert (root_a / rel).read_bytes() == (root_b / rel).read_bytes(), rel


# -- other heads and other kinds ----------------------------------------------------------------
def test_logits_head_gives_the_softmax_head_mosaics(main_run: Run, logits_run: Run,
                                                    case: Case) -> None:
    assert read_card(case.models["logits"]).output == "logits"
    a, b = _levels(main_run.mosaic()), _levels(logits_run.mosaic())
    for (ta, ca), (tb, cb) in zip(a, b, strict=True):
        assert np.abs(ta.astype(int) - tb).max() <= 1
        assert ca is not None and cb is not None and np.abs(ca.astype(int) - cb).max() <= 1
    feats = [json.loads((r.dir / "classes.geojson").read_text())["features"]
             for r in (main_run, logits_run)]
    classes = [sorted(f["properties"]["classification"]["name"] for f in fs) for fs in feats]
    assert classes[0] == classes[1]
    assert [c["area_mm2"] for c in logits_run.report["classes"]] == [
        c["area_mm2"] for c in main_run.report["classes"]]


def test_two_class_softmax_keeps_no_class_maps(two_class: Run, case: Case) -> None:
    card = read_card(case.models["two"])
    assert card.input_size_px is None and not card.class_maps
    d = two_class.dir
    assert not (d / "mask.zarr" / "classes").exists()
    assert not (d / "classes.geojson").exists()
    assert not (two_class.out / "summary_classes.csv").exists()
    assert "## Classes" not in (two_class.out / "summary.md").read_text(encoding="utf-8")
    m = two_class.mosaic()
    assert m.classes == () and "classes" not in m.provenance
    assert m.provenance["tile_px"] == 96  # the run's --tile for an undefined input size
    rep = two_class.report
    assert rep["classes"] == [] and rep["score"]["iou"] >= 0.98
    tumour = np.asarray(m.level(0)[:])
    truth = case.slide.raster("Tumor")
    assert np.count_nonzero((tumour >= 128) != truth) <= truth.size // 1000


def _patch_run(case: Case, name: str) -> Run:
    return _run(case, name, name, "--stride", "50", "--chunk", "128", "--block", "256",
                truth=case.slide.truth)


def _nearest_prototype(case: Case, shape_px: tuple[int, int]) -> np.ndarray:
    """The class (index into CLASSES) of each 50 px patch of the grid at 2 µm/px: the
    prototype nearest its mean colour (the rule the patch models implement), computed from
    the slide as the run reads it."""
    from wsi_seg.stages.slide import open_slide

    h, w = shape_px
    with open_slide(case.slide.slide) as s:
        image = s.read_w(0, 0, w, h, 2.0).astype(np.float64) / 255
    protos = np.asarray([case.slide.paint[c] for c in CLASSES], np.float64) / 255
    rows, cols = h // 50, w // 50
    means = image[: rows * 50, : cols * 50].reshape(rows, 50, cols, 50, 3).mean(axis=(1, 3))
    return ((means[..., None, :] - protos) ** 2).sum(-1).argmin(-1)


def test_patch_classifiers_run_end_to_end(case: Case) -> None:
    two, six = _patch_run(case, "patch2"), _patch_run(case, "patch6")
    expect = _nearest_prototype(case, (384, 512))[:6, :9]  # of the 7 x 10 patches
    tumour_i, necrosis_i = CLASSES.index("Tumor"), CLASSES.index("Necrosis")
    assert np.count_nonzero(expect == tumour_i) == 4  # those wholly inside the rectangle
    for run, tumour_is in ((two, expect == tumour_i),
                           (six, np.isin(expect, (tumour_i, necrosis_i)))):
        m = run.mosaic()
        assert m.provenance["blend"] == "constant"
        assert m.level(0).shape == (384, 512)  # 2 µm/px
        tumour = np.asarray(m.level(0)[:])
        # Footprint by footprint (the last row and column of windows are moved back inside
        # the image and overlap the others: left out), the patch's class; a patch of
        # several colours is the prototype nearest its mean colour.
        fp = tumour[:300, :450].reshape(6, 50, 9, 50)
        assert np.all(fp == fp[:, :1, :, :1])
        assert np.array_equal(fp[:, 0, :, 0] >= 128, tumour_is)
        assert np.all(tumour[:300, :450][np.repeat(np.repeat(expect == tumour_i, 50, 0), 50, 1)]
                      == 255)
        assert run.report["score"]["tp"] >= 4 * 50 * 50
    assert two.report["score"]["tp"] == 4 * 50 * 50 and two.report["score"]["fp"] == 0
    assert two.report["classes"] == [] and not (two.dir / "mask.zarr" / "classes").exists()
    assert not (two.dir / "classes.geojson").exists()
    rep = six.report
    assert [c["name"] for c in rep["classes"]] == list(MAPPED)
    m = six.mosaic()
    maps = np.asarray(m.class_level(0)[:]).astype(np.int32)
    # Two tumour classes of a softmax: the tumour probability is their sum.
    tumour = np.asarray(m.level(0)[:]).astype(np.int32)
    assert np.abs(tumour - maps[tumour_i] - maps[necrosis_i]).max() <= 1
    assert np.count_nonzero(maps[necrosis_i]) and np.count_nonzero(maps[tumour_i])
    covered = maps.any(axis=0)
    assert covered.mean() > 0.2
    assert np.all(np.abs(maps.sum(axis=0)[covered] - 255) <= 3)
    centres = maps[:, 25:300:50, 25:450:50]  # (C, 6, 9)
    kept = centres.any(axis=0)
    assert kept.sum() >= 20
    assert np.array_equal(centres.argmax(axis=0)[kept], expect[kept])
    by_name = six.classes()
    for i, name in enumerate(CLASSES[1:], start=1):
        n = np.count_nonzero(expect[kept] == i)
        assert (by_name[name]["area_mm2"] > 0) == (n > 0), name
        assert (by_name[name]["score"] is None) == (name not in DRAWN), name
    assert (six.dir / "classes.geojson").is_file()


# -- rerun and overwrite -------------------------------------------------------------------------
def test_rerun_skips_and_overwrite_reproduces_the_class_outputs(main_run: Run, case: Case
                                                                ) -> None:
    out = case.root / "runs" / "again"
    shutil.copytree(main_run.out, out)
    argv = [*main_run.argv]
    argv[argv.index("--out") + 1] = str(out)
    store = out / "classes" / "mask.zarr"
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(argv) == 0
    run = json.loads((out / "run.json").read_text())
    assert [s["status"] for s in run["slides"]] == ["skipped"]
    for rel in ("classes/classes.geojson", "classes/report.json"):
        assert (out / rel).read_bytes() == before[Path(rel)]
    assert main([*argv, "--overwrite"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert [s["status"] for s in run["slides"]] == ["ok"]
    assert (out / "classes" / "classes.geojson").read_bytes() == before[
        Path("classes/classes.geojson")]
    chunks = [p for p in store.rglob("*") if p.is_file()]
    assert len(chunks) > 6 * 4
    for p in chunks:
        assert p.read_bytes() == before[p.relative_to(out)], p
    assert (out / "summary_classes.csv").read_bytes() == before[Path("summary_classes.csv")]


def _md_class_rows(md: str) -> list[tuple[str, str]]:
    if "## Classes" not in md:
        return []
    lines = md[md.index("## Classes"):].splitlines()[4:]
    return [tuple(line.split(" | ")[:2]) for line in lines if line.startswith("| ")]


def test_summaries_agree_after_a_rerun_that_skips(main_run: Run, case: Case) -> None:
    out = case.root / "runs" / "skip-summaries"
    shutil.copytree(main_run.out, out)
    argv = [*main_run.argv]
    argv[argv.index("--out") + 1] = str(out)
    assert main(argv) == 0
    md = (out / "summary.md").read_text(encoding="utf-8")
    csv_path = out / "summary_classes.csv"
    rows = [] if not csv_path.exists() else [
        ("| " + r["slide"], r["name"]) for r in csv.DictReader(csv_path.open(encoding="utf-8"))]
    assert _md_class_rows(md) == rows
    assert rows  # the skipped slide's classes are still there
    # ... and so are its figures in summary.csv (they were blank for skipped slides).
    [row] = csv.DictReader((out / "summary.csv").open(encoding="utf-8"))
    assert row["status"] == "skipped" and row["tumour_mm2"] and row["iou"]


@pytest.mark.xfail(strict=True, reason="stages/tissue.py detect_tissue: the OD threshold is "
                   "Otsu's over the whole view, which falls between pale stroma (OD 0.23) and "
                   "the darker classes (0.6-0.9) instead of between glass and tissue, so pale "
                   "tissue next to dark tissue is left out (never predicted)")
def test_pale_stroma_beside_dark_tumour_is_tissue(case: Case) -> None:
    """Eosin-pink stroma (245, 150, 200) is tissue to the eye and to optical density; with
    the darker classes on the same slide it must still be found (its windows predicted)."""
    from wsi_seg.stages.slide import open_slide
    from wsi_seg.stages.tissue import find_tissue

    pale = class_slide(case.root / "pale", "pale.tif", paint={"Stroma": (245, 150, 200)})
    with open_slide(pale.slide) as s:
        tissue = find_tissue(s)
    k = tissue.level0_px_per_px
    stroma = pale.raster("Stroma", k)
    h, w = tissue.mask.shape
    # With the darker stroma of the other runs, 94 % of it is tissue on this 8 µm view (the
    # rest are mixed edge pixels); the pale one: 0.8 %.
    assert tissue.mask[: stroma.shape[0], : stroma.shape[1]][stroma[:h, :w]].mean() > 0.8
