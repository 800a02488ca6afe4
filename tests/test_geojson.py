"""tumor.geojson obeys each QuPath import rule of FORMATS.md (one test per rule)."""

from __future__ import annotations

import gzip
import json
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon, shape

from wsi_seg.evaluation.annotations import read_truth
from wsi_seg.stages.geojson import TUMOR_CLASS, write_geojson, write_polygons
from wsi_seg.stages.vectorize import RegionPolygon


def _region(poly: Polygon, mpp0: float = 0.5) -> RegionPolygon:
    return RegionPolygon(poly, 0.8, 0.99, poly.area * mpp0**2, poly.length * mpp0)


REGIONS = [
    _region(shapely.box(10.123, 20.456, 500.5, 400.25).difference(shapely.box(100, 100, 200, 200))),
    _region(Polygon([(1000, 1000), (1200.333, 1010), (1100, 1300.777)])),
    _region(shapely.box(5000, 5000, 5000.5, 5000.5)),
]


@pytest.fixture(scope="module")
def doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = write_geojson(REGIONS, tmp_path_factory.mktemp("g") / "tumor.geojson")
    return json.loads(path.read_text(encoding="utf-8"))


def _features(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["features"]


def test_top_level_is_a_feature_collection(doc: dict[str, Any]) -> None:
    assert doc["type"] == "FeatureCollection" and isinstance(doc["features"], list)
    assert len(doc["features"]) == len(REGIONS)


def test_every_feature_has_type_feature(doc: dict[str, Any]) -> None:
    assert all(f["type"] == "Feature" for f in _features(doc))


def test_id_is_a_uuid_string(doc: dict[str, Any]) -> None:
    ids = [f["id"] for f in _features(doc)]
    assert all(isinstance(i, str) and str(uuid.UUID(i)) == i for i in ids)
    assert len(set(ids)) == len(ids)


def test_object_type_is_annotation_inside_properties(doc: dict[str, Any]) -> None:
    for f in _features(doc):
        assert f["properties"]["objectType"] == "annotation"
        assert "objectType" not in f  # peers' bug: objectType at the Feature's top level


def test_classification_has_name_and_rgb_int_array_color(doc: dict[str, Any]) -> None:
    for f in _features(doc):
        cls = f["properties"]["classification"]
        assert cls["name"] == TUMOR_CLASS
        color = cls["color"]  # required; a packed int is not accepted here
        assert isinstance(color, list) and len(color) == 3
        assert all(isinstance(c, int) and 0 <= c <= 255 for c in color)


def test_measurements_are_name_to_number(doc: dict[str, Any]) -> None:
    for f, region in zip(_features(doc), REGIONS, strict=True):
        m = f["properties"]["measurements"]
        assert isinstance(m, dict)
        assert all(isinstance(v, (int, float)) and np.isfinite(v) for v in m.values())
        assert m["Area µm^2"] == pytest.approx(region.area_um2, rel=1e-3)
        assert m["Perimeter µm"] == pytest.approx(region.perimeter_um, rel=1e-3)
        assert m["Mean probability"] == pytest.approx(0.8)
        assert m["Max probability"] == pytest.approx(0.99)


def test_non_finite_measurements_use_qupath_strings(tmp_path: Path) -> None:
    region = RegionPolygon(shapely.box(0, 0, 10, 10), float("nan"), float("inf"), 1.0, 4.0)
    doc = json.loads(write_geojson([region], tmp_path / "t.geojson").read_text())
    m = doc["features"][0]["properties"]["measurements"]
    assert m["Mean probability"] == "NaN" and m["Max probability"] == "inf"


def test_geometry_is_polygon_in_level0_pixels(doc: dict[str, Any]) -> None:
    for f, region in zip(_features(doc), REGIONS, strict=True):
        assert f["geometry"]["type"] in {"Polygon", "MultiPolygon"}
        geom = shape(f["geometry"])
        iou = geom.intersection(region.polygon).area / geom.union(region.polygon).area
        assert iou > 0.999


def test_rings_are_closed(doc: dict[str, Any]) -> None:
    for f in _features(doc):
        for ring in f["geometry"]["coordinates"]:
            assert ring[0] == ring[-1]


def test_rings_have_at_least_four_positions(doc: dict[str, Any]) -> None:
    for f in _features(doc):
        assert all(len(ring) >= 4 for ring in f["geometry"]["coordinates"])


def test_holes_are_second_and_later_rings(doc: dict[str, Any]) -> None:
    rings = doc["features"][0]["geometry"]["coordinates"]
    assert len(rings) == 2
    shell, hole = Polygon(rings[0]), Polygon(rings[1])
    assert shell.contains(hole) and hole.area == pytest.approx(100 * 100)


def test_coordinates_have_at_most_two_decimals(tmp_path: Path) -> None:
    text = write_geojson(REGIONS, tmp_path / "t.geojson").read_text()
    coords = text[text.index('"coordinates"'):]
    assert not re.search(r"\d\.\d{3,}", coords.split('"properties"')[0])


def test_valid_after_qupath_snaps_to_hundredth_pixel(doc: dict[str, Any]) -> None:
    for f in _features(doc):
        geom = shape(f["geometry"])
        assert geom.is_valid
        assert shapely.set_precision(geom, 0.01, mode="pointwise").is_valid


def test_no_plane_or_only_integer_plane(doc: dict[str, Any]) -> None:
    for f in _features(doc):
        plane = f["geometry"].get("plane", {})
        assert all(isinstance(plane[k], int) for k in plane)


def test_gzip_variant_and_atomic_write(tmp_path: Path) -> None:
    path = write_geojson(REGIONS, tmp_path / "tumor.geojson.gz")
    doc = json.loads(gzip.decompress(path.read_bytes()))
    assert len(doc["features"]) == len(REGIONS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tumor.geojson.gz"]  # no temp left


def test_reproducible_bytes(tmp_path: Path) -> None:
    a = write_geojson(REGIONS, tmp_path / "t.geojson").read_bytes()
    b = write_geojson(REGIONS, tmp_path / "t.geojson").read_bytes()
    assert a == b


def test_reads_back_as_tumour_truth(tmp_path: Path) -> None:
    truth = read_truth(write_geojson(REGIONS, tmp_path / "t.geojson"))
    assert len(truth.polygons) == len(REGIONS) and truth.classes == (TUMOR_CLASS,)


def test_tens_of_thousands_of_features_in_bulk(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """20,000 features take one bulk pass (per-polygon numpy and shapely calls dominated
    the cost): coordinates gathered and rounded once, the document encoded once."""
    from wsi_seg.stages import geojson

    calls = {"coords": 0, "round": 0, "dumps": 0}

    def counting(name: str, fn: Any) -> Any:
        def wrapped(*a: Any, **k: Any) -> Any:
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(shapely, "get_coordinates", counting("coords", shapely.get_coordinates))
    monkeypatch.setattr(geojson, "_round_coords", counting("round", geojson._round_coords))
    monkeypatch.setattr(geojson.json, "dumps", counting("dumps", geojson.json.dumps))
    rng = np.random.default_rng(0)
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    centres = rng.uniform(0, 100_000, (20_000, 1, 2))
    rings = np.round(centres + 20 * np.stack([np.cos(t), np.sin(t)], axis=-1), 2)
    regions = [_region(p) for p in shapely.polygons(rings)]  # built in bulk: time the writer
    path = write_geojson(regions, tmp_path / "big.geojson")
    assert calls == {"coords": 1, "round": 1, "dumps": 1}
    with path.open("rb") as fh:
        fh.seek(-300, 2)
        assert fh.read().rstrip().endswith(b"}}}]}")


# -- write_polygons: any polygons (ground truth) written by the same rules -------------------------
def test_write_polygons_truth_reads_back_valid_on_the_qupath_grid(tmp_path: Path) -> None:
    """Smooth float polygons (as synth draws tumour), a MultiPolygon and a line: each part is
    one Feature, valid after rounding to 2 decimals, and reads back as the same area."""
    blob = shapely.Point(1000.123456, 2000.654321).buffer(333.3333, quad_segs=64)
    multi = shapely.MultiPolygon([shapely.box(0, 0, 10, 10), shapely.box(20, 20, 30.005, 30)])
    line = shapely.LineString([(0, 0), (5, 5)])
    path = write_polygons([blob, multi, line], tmp_path / "s.tumor.geojson",
                          properties={"metadata": {"source": "test"}})
    doc = json.loads(path.read_text(encoding="utf-8"))
    feats = doc["features"]
    assert doc["type"] == "FeatureCollection" and len(feats) == 3
    for feat in feats:
        assert uuid.UUID(feat["id"]).version == 4
        props = feat["properties"]
        assert props["objectType"] == "annotation" and props["metadata"] == {"source": "test"}
        assert props["classification"] == {"name": TUMOR_CLASS, "color": [200, 0, 0]}
        assert "measurements" not in props
        coords = np.asarray(feat["geometry"]["coordinates"][0])
        assert np.array_equal(coords, np.round(coords, 2))
        assert shape(feat["geometry"]).is_valid
    truth = read_truth(path)
    assert len(truth.polygons) == 3
    assert truth.geometry.area == pytest.approx(blob.area + multi.area, rel=1e-5)
    assert write_polygons([blob], tmp_path / "a.geojson").read_bytes() == \
        write_polygons([blob], tmp_path / "a.geojson").read_bytes()


def test_write_polygons_of_nothing_is_an_empty_truth(tmp_path: Path) -> None:
    path = write_polygons([], tmp_path / "blank.tumor.geojson.gz")
    assert json.loads(gzip.decompress(path.read_bytes())) == {
        "type": "FeatureCollection", "features": []}
    truth = read_truth(path)
    assert truth.geometry.is_empty and truth.polygons == ()
