"""wsi_seg.tools.synth: synthetic pyramidal slides that OpenSlide opens, with exact tumour truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openslide
import pytest
import shapely
from shapely.geometry import MultiPolygon, shape
from synth_fixtures import SLIDES, layout_of, synthetic

from wsi_seg.cli import main
from wsi_seg.stages.slide import open_slide
from wsi_seg.stages.tissue import find_tissue
from wsi_seg.tools.synth import SynthSpec, make_layout, truth_path_for, write_synthetic_slide


def level_pixels(path: Path, level: int = 0) -> np.ndarray:
    with openslide.OpenSlide(str(path)) as osr:
        w, h = osr.level_dimensions[level]
        return np.asarray(osr.read_region((0, 0), level, (w, h)))[..., :3]


def read_truth(path: Path) -> MultiPolygon:
    doc = json.loads(truth_path_for(path).read_text())
    polys = []
    for feat in doc["features"]:
        g = shape(feat["geometry"])
        polys.extend(getattr(g, "geoms", [g]))
    return MultiPolygon(polys)


@pytest.mark.parametrize(
    ("name", "vendor", "dims"),
    [
        ("p2.svs", "aperio", ((3000, 2000), (1500, 1000), (750, 500))),
        ("p4.svs", "aperio", ((2400, 1600), (600, 400))),
        ("t2.tif", "generic-tiff", ((2000, 1200), (1000, 600))),
    ],
)
def test_formats_open_with_vendor_levels_and_mpp(
    tmp_path_factory: pytest.TempPathFactory, name: str, vendor: str,
    dims: tuple[tuple[int, int], ...]
) -> None:
    path = synthetic(tmp_path_factory, name)
    assert openslide.OpenSlide.detect_format(str(path)) == vendor
    with open_slide(path) as s:
        assert s.vendor == vendor
        assert s.level_dimensions == dims
        assert s.mpp == pytest.approx(0.5)
        assert s.properties[openslide.PROPERTY_NAME_MPP_X] is not None
        if vendor == "aperio":
            assert s.objective_power == 20.0
    assert not list(path.parent.glob(".*partial"))  # written to a temporary name, then renamed


def test_pyramid_levels_are_downsampled_level0(tmp_path_factory: pytest.TempPathFactory
                                               ) -> None:
    for name, factor in (("p2.svs", 2), ("p4.svs", 4)):
        path = synthetic(tmp_path_factory, name)
        l0 = level_pixels(path, 0).astype(np.float32)
        l1 = level_pixels(path, 1).astype(np.float32)
        h, w = l1.shape[:2]
        box = l0[: h * factor, : w * factor].reshape(h, factor, w, factor, 3).mean(axis=(1, 3))
        # JPEG and texture detail differ; the picture is the same (mean error of a few levels).
        assert np.abs(box - l1).mean() < 6.0, name


def test_same_seed_same_pixels_other_seed_differs(tmp_path_factory: pytest.TempPathFactory
                                                  ) -> None:
    a = synthetic(tmp_path_factory, "det-a.svs")
    b = synthetic(tmp_path_factory, "det-b.svs")
    c = synthetic(tmp_path_factory, "det-c.svs")
    assert SLIDES["det-a.svs"] == SLIDES["det-b.svs"] != SLIDES["det-c.svs"]
    for level in (0, 1):
        np.testing.assert_array_equal(level_pixels(a, level), level_pixels(b, level))
    def features(path: Path) -> list[dict]:  # ids are seeded by the file name: left out
        text = truth_path_for(path).read_text().replace(path.stem, "det-x")
        return [{k: v for k, v in f.items() if k != "id"} for f in json.loads(text)["features"]]

    assert features(a) == features(b)
    pa, pc = level_pixels(a), level_pixels(c)
    assert (pa != pc).any(axis=-1).mean() > 0.2
    assert read_truth(a).symmetric_difference(read_truth(c)).area > 0


def test_layout_is_deterministic_and_seed_dependent() -> None:
    spec = SynthSpec(4000, 3000, seed=11)
    one, two = make_layout(spec), make_layout(spec)
    assert one.tumour.equals_exact(two.tumour, 0) and one.tissue.equals_exact(two.tissue, 0)
    other = make_layout(SynthSpec(4000, 3000, seed=12))
    assert not one.tissue.equals(other.tissue)


def test_truth_geojson_beside_the_slide(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = synthetic(tmp_path_factory, "p2.svs")
    truth = truth_path_for(path)
    assert truth == path.with_name("p2.tumor.geojson") and truth.exists()
    doc = json.loads(truth.read_text())
    assert doc["type"] == "FeatureCollection" and doc["features"]
    for feat in doc["features"]:
        assert feat["type"] == "Feature"
        assert feat["geometry"]["type"] in ("Polygon", "MultiPolygon")
        props = feat["properties"]
        assert props["objectType"] == "annotation"
        cls = props["classification"]
        assert cls["name"] == "Tumor" and len(cls["color"]) == 3
        assert all(isinstance(v, int) for v in cls["color"])
        g = shape(feat["geometry"])
        assert g.is_valid and g.area > 0
        for ring in [feat["geometry"]["coordinates"]] if feat["geometry"]["type"] == "Polygon" \
                else feat["geometry"]["coordinates"]:
            for r in ring:
                assert r[0] == r[-1] and len(r) >= 4  # closed rings, as QuPath needs
    tumour = read_truth(path)
    layout = layout_of("p2.svs")
    # Exact truth: the rendered layout's tumour, to the 0.01 px the file keeps.
    assert tumour.symmetric_difference(layout.tumour).area < 1e-3 * layout.tumour.area
    minx, miny, maxx, maxy = tumour.bounds
    assert minx >= 0 and miny >= 0 and maxx <= 3000 and maxy <= 2000
    # A polygon with a hole: the stromal hole written as an inner ring.
    assert any(len(p.interiors) > 0 for p in tumour.geoms)


def test_polygons_with_holes_occur_for_some_seeds() -> None:
    layouts = [make_layout(SynthSpec(4000, 4000, seed)) for seed in range(8)]
    with_holes = [lay for lay in layouts if any(p.interiors for p in lay.tumour.geoms)]
    assert 0 < len(with_holes) < 8  # some seeds have holes, not all (60 % chance per region)


def test_tumour_lies_inside_tissue(tmp_path_factory: pytest.TempPathFactory) -> None:
    for seed in range(6):
        layout = make_layout(SynthSpec(5000, 4000, seed))
        assert not layout.tumour.is_empty
        assert layout.tumour.difference(layout.tissue).area < 1e-6 * layout.tumour.area
        assert layout.lymph.intersection(layout.tumour).area < 1e-6 * layout.tumour.area
    # And inside the tissue that detection finds on the written slide.
    path = synthetic(tmp_path_factory, "p2.svs")
    with open_slide(path) as s:
        found = shapely.unary_union(find_tissue(s).polygons)
    tumour = read_truth(path)
    assert tumour.difference(found).area < 0.01 * tumour.area


def test_tumour_looks_different(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tumour is darker and more purple than the rest of the tissue, on average."""
    path = synthetic(tmp_path_factory, "p2.svs")
    layout = layout_of("p2.svs")
    rgb = level_pixels(path, 1).astype(np.float32)  # x2: pixel (r, c) covers 2r..2r+2
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    x0, y0 = (xx.ravel() + 0.5) * 2, (yy.ravel() + 0.5) * 2
    in_tumour = shapely.contains_xy(layout.tumour, x0, y0)
    in_tissue = shapely.contains_xy(layout.tissue, x0, y0)
    tum = rgb.reshape(-1, 3)[in_tumour]
    stroma = rgb.reshape(-1, 3)[in_tissue & ~in_tumour]
    glass = rgb.reshape(-1, 3)[~in_tissue]
    assert len(tum) > 1000 and len(stroma) > 1000
    assert glass.mean() > 230
    assert tum.mean() < stroma.mean() - 10
    # More haematoxylin (blue over red) in tumour nuclei than in stroma.
    assert (tum[:, 2] - tum[:, 0]).mean() > (stroma[:, 2] - stroma[:, 0]).mean()


def test_writer_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="level_factor"):
        write_synthetic_slide(tmp_path / "a.svs", (512, 512), level_factor=3)
    with pytest.raises(ValueError, match="unknown format"):
        write_synthetic_slide(tmp_path / "a.svs", (512, 512), fmt="ndpi")
    with pytest.raises(ValueError, match="too small"):
        write_synthetic_slide(tmp_path / "a.svs", (32, 512))
    assert not list(tmp_path.iterdir())


def test_cli_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "cli.tiff"
    rc = main(["synth", str(out), "--size", "700x500", "--seed", "4", "--format", "tiff",
               "--mpp", "0.25"])
    stdout = capsys.readouterr().out
    assert rc == 0 and out.exists() and "700x500" in stdout
    assert (tmp_path / "sub" / "cli.tumor.geojson").exists()
    with open_slide(out) as s:
        assert s.vendor == "generic-tiff" and s.mpp == pytest.approx(0.25)
        assert s.dimensions == (700, 500)


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--mpp", "50"], "outside 0.05-20"), (["--size", "10x10"], "too small")],
)
def test_cli_synth_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 args: list[str], needle: str) -> None:
    out = tmp_path / "x.svs"
    rc = main(["synth", str(out), *args])
    err = capsys.readouterr().err
    assert rc != 0 and needle in err and str(out) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_svs_keeps_its_thumbnail_where_aperio_does(tmp_path: Path) -> None:
    """Page 1 is a stripped thumbnail with its own description, so tifffile (and tiffslide)
    see every pyramid level, and OpenSlide lists the thumbnail as an associated image."""
    import openslide
    import tifffile

    path = tmp_path / "a.svs"
    write_synthetic_slide(path, (3000, 2000), seed=1)
    with tifffile.TiffFile(path) as tif:
        assert not tif.pages[1].is_tiled
        assert "->" in tif.pages[1].description and "[0,0" not in tif.pages[1].description
        base = tif.series[0]
        assert [lv.shape[:2] for lv in base.levels] == [(2000, 3000), (1000, 1500), (500, 750)]
        assert any(s.name == "Thumbnail" for s in tif.series)
    with openslide.OpenSlide(path) as osr:
        assert osr.level_dimensions == ((3000, 2000), (1500, 1000), (750, 500))
        assert "thumbnail" in osr.associated_images
        assert osr.properties["aperio.MPP"] == "0.5000"
