"""Ground-truth readers: every real annotation file, class rules, masks and bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import shapely
import zarr

from wsi_seg.core.errors import AnnotationError
from wsi_seg.evaluation.annotations import (
    ALL_CLASSES,
    check_truth_fits,
    is_tumour_class,
    read_truth,
)

# (file, classes, number of polygons). Counted by reading the files: ASAP counts are the
# README's; the TCGA QuPath file has Tumor (1 Polygon), Other (MultiPolygon of 3), Negative (1);
# the ImageScope file has "CaP" (1 region) and two unlabelled annotations of 1 region each.
REAL_FILES = [
    ("asap/tumor_009.xml", None, 6),
    ("asap/tumor_076.xml", None, 39),
    ("asap/tumor_085.xml", None, 50),
    ("asap/asap-polygon.xml", ALL_CLASSES, 1),
    ("imagescope/TCGA-EJ-5519-01Z-00-DX1.xml", None, 1),
    ("imagescope/TCGA-EJ-5519-01Z-00-DX1.xml", ALL_CLASSES, 3),
    ("qupath/TCGA-EJ-5519-01Z-00-DX1-tumor.json", None, 1),
    ("qupath/TCGA-EJ-5519-01Z-00-DX1-tumor.json", ALL_CLASSES, 5),
    ("qupath/TCGA-EJ-5519-01Z-00-DX1-tumor.json", ["Other"], 3),
    ("qupath/qupath05-three-polygons.geojson", ALL_CLASSES, 3),
    ("qupath/qupath-brush.json", ALL_CLASSES, 1),
    ("qupath/qupath-ellipse.json", ALL_CLASSES, 1),
    ("qupath/qupath-polygon.json", ALL_CLASSES, 1),
    ("qupath/qupath-rectangle.json", ALL_CLASSES, 1),
    ("qupath/qupath-wand.json", ALL_CLASSES, 1),
    ("qupath/qupath-polygon-cell-classified.json", ALL_CLASSES, 4),
    ("qupath/qupath-polygon-cell-classified.json", ["nucleus"], 2),
]
# Files with no area annotation at all: points and lines are not ground truth.
NO_AREAS = ["qupath/qupath-line.json", "qupath/qupath-multipoint.json",
            "qupath/qupath-point.json", "qupath/qupath-polyline.json"]
# Files whose classes are not tumour under the default rule.
NO_TUMOUR = ["asap/asap-polygon.xml", "qupath/qupath05-three-polygons.geojson",
             "qupath/qupath-polygon.json", "qupath/qupath-polygon-cell-classified.json"]


@pytest.mark.parametrize(("name", "classes", "count"), REAL_FILES)
def test_real_file_polygon_count(shared_data: Path, name: str, classes: list[str] | None,
                                 count: int) -> None:
    truth = read_truth(shared_data / "annotations" / name, classes)
    assert len(truth.polygons) == count
    assert truth.geometry.is_valid and truth.geometry.area > 0


def test_every_real_annotation_file_is_covered(shared_data: Path) -> None:
    files = {str(p.relative_to(shared_data / "annotations"))
             for p in (shared_data / "annotations").rglob("*") if p.is_file()}
    assert files == {f for f, _, _ in REAL_FILES} | set(NO_AREAS)


@pytest.mark.parametrize("name", NO_AREAS)
def test_points_and_lines_are_not_truth(shared_data: Path, name: str) -> None:
    with pytest.raises(AnnotationError, match="no tumour area annotation"):
        read_truth(shared_data / "annotations" / name, ALL_CLASSES)


@pytest.mark.parametrize("name", NO_TUMOUR)
def test_no_tumour_class_is_a_one_line_error(shared_data: Path, name: str) -> None:
    with pytest.raises(AnnotationError) as info:
        read_truth(shared_data / "annotations" / name)
    message = str(info.value)
    assert "\n" not in message and name.split("/")[-1] in message and "classes found" in message


def test_same_slide_qupath_and_imagescope_agree(shared_data: Path) -> None:
    a = read_truth(shared_data / "annotations/qupath/TCGA-EJ-5519-01Z-00-DX1-tumor.json")
    b = read_truth(shared_data / "annotations/imagescope/TCGA-EJ-5519-01Z-00-DX1.xml")
    iou = a.geometry.intersection(b.geometry).area / a.geometry.union(b.geometry).area
    assert iou > 0.999


def test_default_class_rule() -> None:
    for name in ["Tumor", "tumour", "Tumor1", "Carcinoma", "metastasis", "CaP", "Cancer cells",
                 "_0", "malignant epithelium"]:
        assert is_tumour_class(name), name
    for name in ["", None, "Stroma", "Negative", "Other", "Non-tumor", "normal", "Annotation 0",
                 "_2", "Capsule"]:
        assert not is_tumour_class(name), name
    assert is_tumour_class("Other", ["other"]) and not is_tumour_class("Tumor", ["Other"])
    assert is_tumour_class(None, ALL_CLASSES)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


SQUARE = [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]


def _feature(cls: object, coords: list[list[float]] | None = None) -> dict[str, object]:
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [coords or SQUARE]},
            "properties": {"classification": cls}}


@pytest.mark.parametrize("doc", [
    {"type": "FeatureCollection", "features": [_feature({"name": "Tumor", "color": [1, 2, 3]})]},
    _feature({"name": "Tumor", "colorRGB": -3670016}),
    [_feature("Tumor")],
    {"type": "Polygon", "coordinates": [SQUARE]},
])
def test_every_qupath_top_level(tmp_path: Path, doc: object) -> None:
    classes = ALL_CLASSES if isinstance(doc, dict) and doc.get("type") == "Polygon" else None
    truth = read_truth(_write(tmp_path / "t.geojson", json.dumps(doc)), classes)
    assert truth.geometry.area == 100 * 100


def test_utf8_bom(tmp_path: Path) -> None:
    path = tmp_path / "bom.geojson"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(_feature("Tumor")).encode())
    assert read_truth(path).geometry.area == 100 * 100


def test_gzip_and_multipolygon_and_repair(tmp_path: Path) -> None:
    bowtie = [[500, 500], [510, 510], [510, 500], [500, 510], [500, 500]]  # self-intersecting
    multi = {"type": "Feature", "properties": {"classification": {"names": ["Tumor"],
                                                                  "color": [0, 0, 0]}},
             "geometry": {"type": "MultiPolygon", "coordinates": [[SQUARE], [[[200, 200], [
                 300, 200], [300, 300], [200, 200]]]]}}
    doc = {"type": "FeatureCollection", "features": [multi, _feature("Tumor", bowtie)]}
    path = tmp_path / "t.geojson.gz"
    path.write_bytes(gzip.compress(json.dumps(doc).encode()))
    truth = read_truth(path)
    assert len(truth.polygons) == 3
    assert all(p.is_valid for p in truth.polygons) and truth.geometry.is_valid
    assert truth.geometry.area == pytest.approx(10000 + 5000 + 50)


@pytest.mark.parametrize(("name", "text"), [
    ("trunc.geojson", '{"type": "FeatureCollection", "features": [{"type": "Feat'),
    ("garbage.json", "{not json"),
    ("empty.geojson", ""),
    ("wrong.geojson", '{"type": "featurecollection", "features": []}'),
    ("trunc.xml", '<?xml version="1.0"?><ASAP_Annotations><Annotations><Annotation Name="a"'),
    ("bad.xml", "<Annotations><Annotation><Regions><Region><Vertices><Vertex X='a' Y='1'/>"
                "</Vertices></Region></Regions></Annotation></Annotations>"),
    ("other.xml", "<svg></svg>"),
    *((f"order-{o}.xml", '<ASAP_Annotations><Annotations><Annotation Name="t" '
       'PartOfGroup="Tumor" Type="Polygon"><Coordinates>'
       f'<Coordinate Order="{o}" X="0" Y="0"/><Coordinate Order="1" X="9" Y="0"/>'
       '<Coordinate Order="2" X="9" Y="9"/></Coordinates></Annotation></Annotations>'
       '</ASAP_Annotations>') for o in ("first", "1e999", "nan")),
    ("text.txt", "hello"),
    ("nocoords.geojson", '{"type": "Feature", "geometry": {"type": "Polygon"}}'),
    ("nan.geojson", '{"type": "Polygon", "coordinates": [[[0, 0], [NaN, 0], [9, 9], [0, 0]]]}'),
    ("notfeature.geojson", '{"type": "FeatureCollection", "features": [null]}'),
    ("deep.json", "[" * 100_000),
])
def test_malformed_files_give_one_line_errors(tmp_path: Path, name: str, text: str) -> None:
    path = _write(tmp_path / name, text)
    with pytest.raises(AnnotationError) as info:
        read_truth(path)
    assert "\n" not in str(info.value) and name in str(info.value)


def test_truncated_gzip_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "t.geojson.gz"
    path.write_bytes(gzip.compress(json.dumps(_feature("Tumor")).encode())[:20])
    with pytest.raises(AnnotationError, match="gzip"):
        read_truth(path)
    with pytest.raises(AnnotationError, match="no such file"):
        read_truth(tmp_path / "missing.geojson")


def test_asap_camelyon_exclusion_group(tmp_path: Path) -> None:
    def ann(group: str, x0: int, x1: int) -> str:
        pts = [(x0, x0), (x1, x0), (x1, x1), (x0, x1)]
        coords = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (x, y) in
                         enumerate(pts))
        return (f'<Annotation Name="a" Type="Polygon" PartOfGroup="{group}">'
                f"<Coordinates>{coords}</Coordinates></Annotation>")
    xml = f"<ASAP_Annotations><Annotations>{ann('_0', 0, 100)}{ann('_2', 40, 60)}" \
          "</Annotations></ASAP_Annotations>"
    truth = read_truth(_write(tmp_path / "c16.xml", xml))
    assert truth.geometry.area == 100 * 100 - 20 * 20


def test_imagescope_negative_region_and_rectangle(tmp_path: Path) -> None:
    def region(neg: int, kind: int, pts: list[tuple[int, int]]) -> str:
        verts = "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in pts)
        return (f'<Region Type="{kind}" NegativeROA="{neg}"><Vertices>{verts}</Vertices>'
                "</Region>")
    xml = ('<Annotations MicronsPerPixel="0.25"><Annotation Name="Tumor"><Regions>'
           + region(0, 1, [(0, 0), (100, 100)])  # rectangle as two corners
           + region(1, 0, [(10, 10), (20, 10), (20, 20), (10, 20)])
           + "</Regions></Annotation></Annotations>")
    truth = read_truth(_write(tmp_path / "scope.xml", xml))
    assert truth.geometry.area == 100 * 100 - 10 * 10


def test_png_mask_with_resolution(tmp_path: Path) -> None:
    mask = np.zeros((50, 80), np.uint8)
    mask[10:20, 30:50] = 255
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    truth = read_truth(tmp_path / "m.png", mask_mpp=8.0, slide_mpp=0.5)  # 16 level-0 px per px
    assert truth.geometry.equals(shapely.box(30 * 16, 10 * 16, 50 * 16, 20 * 16))
    with pytest.raises(AnnotationError, match="resolution"):
        read_truth(tmp_path / "m.png")


def test_zarr_mask(tmp_path: Path) -> None:
    arr = zarr.create_array(str(tmp_path / "m.zarr"), shape=(300, 300), chunks=(128, 128),
                            dtype="uint8", fill_value=0)
    arr[100:200, 50:250] = 1  # crosses chunk borders
    truth = read_truth(tmp_path / "m.zarr", mask_px_x0=4.0)
    assert len(truth.polygons) == 1
    assert truth.geometry.equals(shapely.box(200, 400, 1000, 800))


def test_check_truth_fits(tmp_path: Path) -> None:
    truth = read_truth(_write(tmp_path / "t.geojson", json.dumps(_feature("Tumor"))))
    assert check_truth_fits(truth, (1000, 1000)).geometry.area == 100 * 100
    clipped = check_truth_fits(truth, (99, 99))  # 1 px past the edge: within the margin
    assert clipped.geometry.area == 99 * 99
    with pytest.raises(AnnotationError, match="another slide") as info:
        check_truth_fits(truth, (50, 50))
    assert "\n" not in str(info.value)


def test_real_camelyon_truth_does_not_fit_a_small_slide(shared_data: Path) -> None:
    truth = read_truth(shared_data / "annotations/asap/tumor_009.xml")
    with pytest.raises(AnnotationError, match="outside the slide"):
        check_truth_fits(truth, (2220, 2967))


def test_a_z_coordinate_is_dropped(tmp_path: Path) -> None:
    """QuPath may write a third value (its plane); NaN there is harmless and not kept."""
    ring = [[0, 0, float("nan")], [100, 0, 1], [100, 100, 1], [0, 0, 1]]
    path = _write(tmp_path / "z.geojson", json.dumps(_feature("Tumor", ring)))
    truth = read_truth(path)
    assert not truth.geometry.has_z and truth.geometry.area == 5000


def test_empty_files_of_every_format_are_no_tumour(tmp_path: Path) -> None:
    for name, text in (("a.geojson", '{"type": "FeatureCollection", "features": []}'),
                       ("b.json", "[]"),
                       ("c.xml", "<ASAP_Annotations><Annotations/></ASAP_Annotations>"),
                       ("d.xml", '<Annotations><Annotation Name="Layer 1"><Regions/>'
                                 "</Annotation></Annotations>")):
        truth = read_truth(_write(tmp_path / name, text))
        assert truth.geometry.is_empty and truth.polygons == () and truth.classes == ()


def test_class_truths_from_asap_groups_and_a_class_map(tmp_path: Path) -> None:
    """Per-class truth: ASAP's groups are the classes; a map renames a truth's own names;
    derived QuPath names count for their first class; what names no model class is ignored."""
    from wsi_seg.evaluation.annotations import parse_class_map, read_class_truths

    def ann(group: str, x0: int, size: int) -> str:
        pts = [(x0, 0), (x0 + size, 0), (x0 + size, size), (x0, size)]
        coords = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>'
                         for i, (x, y) in enumerate(pts))
        return (f'<Annotation Name="a" PartOfGroup="{group}" Type="Polygon">'
                f"<Coordinates>{coords}</Coordinates></Annotation>")

    xml = tmp_path / "t.xml"
    xml.write_text("<ASAP_Annotations><Annotations>" + ann("tumor", 0, 10)
                   + ann("Stroma tissue", 20, 10) + ann("Fat", 40, 10)
                   + "</Annotations></ASAP_Annotations>")
    model = ["Tumor", "Stroma", "Necrosis"]
    out = read_class_truths(xml, model, parse_class_map(["Stroma tissue=Stroma"]))
    assert out["Tumor"].area == 100 and out["Stroma"].area == 100
    assert out["Necrosis"].is_empty  # not drawn: a run does not score it
    gj = tmp_path / "t.geojson"
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [
        _feature("Tumor: Positive")]}))
    assert not read_class_truths(gj, model)["Tumor"].is_empty
    with pytest.raises(AnnotationError, match="--class-map") as exc:
        read_class_truths(xml, ["Necrosis"])
    assert "'Fat'" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="TRUTH_CLASS=MODEL_CLASS"):
        parse_class_map(["no equals sign"])
