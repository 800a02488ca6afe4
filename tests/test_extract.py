"""Training data from slides: tiles + masks (UNet layout) and IDC patches."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import shapely
from shapely.geometry import box

from wsi_seg.cli import main
from wsi_seg.core.errors import WsiSegError
from wsi_seg.tools.synth import SynthResult, write_synthetic_slide
from wsi_seg.training.extract import ExtractOptions, extract_training_data
from wsi_seg.training.idc_data import scan_idc
from wsi_seg.training.unet_data import find_pairs, load_pairs


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    path = tmp_path_factory.mktemp("slides") / "s7.svs"
    return write_synthetic_slide(path, (2400, 2400), seed=7, mpp=0.5)


def test_unet_layout_masks_match_the_truth(synth: SynthResult, tmp_path: Path) -> None:
    out = tmp_path / "unet"
    r = extract_training_data(synth.slide_path, synth.truth_path, out,
                              ExtractOptions(mpp=1.0, tile_px=128, min_tissue=0.25))
    pairs = find_pairs(out)
    assert len(pairs) == r.tiles > 0
    images, masks = load_pairs(pairs)
    assert all(i.shape == (128, 128, 3) for i in images)
    assert r.tumour_tiles > 0
    # every mask agrees with the exact tumour polygon over the tile's level-0 square
    f = 2.0  # level-0 px per working px (1.0 / 0.5)
    for pair, mask in zip(pairs, masks, strict=True):
        stem = pair.image.stem
        xw = int(stem.split("_x")[1].split("_")[0])
        yw = int(stem.split("_y")[1])
        square = box(xw * f, yw * f, (xw + 128) * f, (yw + 128) * f)
        exact = synth.tumour.intersection(square).area / square.area
        assert mask.mean() == pytest.approx(exact, abs=0.02), stem
    manifest = json.loads((out / f"extract_{r.name}.json").read_text())
    assert manifest["mpp"] == 1.0 and manifest["tiles"] == r.tiles


def test_idc_layout_labels(synth: SynthResult, tmp_path: Path) -> None:
    out = tmp_path / "idc"
    r = extract_training_data(synth.slide_path, synth.truth_path, out,
                              ExtractOptions(mpp=2.0, layout="idc", name="P7"))
    patches = scan_idc(out)
    assert len(patches) == r.tiles and {p.patient for p in patches} == {"P7"}
    assert sum(p.label for p in patches) == r.tumour_tiles > 0
    f = 4.0  # level-0 px per patch px at 2 µm/px
    for p in patches:
        square = box(p.x * f, p.y * f, (p.x + 50) * f, (p.y + 50) * f)
        fraction = synth.tumour.intersection(square).area / square.area
        if abs(fraction - 0.5) > 0.05:  # clear cases: label follows the truth
            assert p.label == int(fraction >= 0.5), (p, fraction)
        img = cv2.imread(str(p.path))
        assert img.shape == (50, 50, 3)


def test_cli_extract_and_bad_inputs(
    synth: SynthResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["extract", str(synth.slide_path), "--truth", str(synth.truth_path), "--out",
               str(tmp_path / "cli"), "--mpp", "2.0", "--tile", "64", "--max-tiles", "5"])
    assert rc == 0
    assert len(list((tmp_path / "cli" / "images").glob("*.png"))) == 5
    capsys.readouterr()
    # truth of a bigger slide: coordinates outside this one
    far = tmp_path / "far.geojson"
    far.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "geometry": shapely.geometry.mapping(box(9000, 9000, 9500, 9500)),
        "properties": {"objectType": "annotation",
                       "classification": {"name": "Tumor", "color": [200, 0, 0]}}}]}))
    rc = main(["extract", str(synth.slide_path), "--truth", str(far), "--out",
               str(tmp_path / "x"), "--mpp", "1.0"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "outside" in err
    with pytest.raises(WsiSegError, match="smaller than one"):
        extract_training_data(synth.slide_path, synth.truth_path, tmp_path / "y",
                              ExtractOptions(mpp=10.0, tile_px=256))
    with pytest.raises(WsiSegError):
        extract_training_data(synth.slide_path, synth.truth_path, tmp_path / "z",
                              ExtractOptions(mpp=1.0, layout="coco"))


def test_extracted_tiles_feed_training(synth: SynthResult, tmp_path: Path) -> None:
    """The extracted folder is exactly what train reads (images/masks stems, 0/255 masks)."""
    out = tmp_path / "feed"
    extract_training_data(synth.slide_path, synth.truth_path, out,
                          ExtractOptions(mpp=2.0, tile_px=64, min_tissue=0.1))
    _, masks = load_pairs(find_pairs(out))
    values = np.unique(np.concatenate([m.ravel() for m in masks]))
    assert set(values.tolist()) <= {0, 1} and 1 in values


def test_extraction_uses_runs_window_grid(synth: SynthResult, tmp_path: Path) -> None:
    """Tiles lie on run's grid (tiling.window_starts): the last row and column are moved back
    inside the slide, so tissue at the right and bottom borders is not dropped."""
    from wsi_seg.stages.tiling import window_starts

    out = tmp_path / "grid"
    # 600 x 600 px at 2 µm/px with tissue up to x = 460 px: whole steps of 250 px end their
    # last tile at 430 px; run's grid adds the tile at 600 - 180 = 420 px
    extract_training_data(synth.slide_path, synth.truth_path, out,
                          ExtractOptions(mpp=2.0, tile_px=180, stride_px=250, min_tissue=0.01))
    xy = {(int(p.image.stem.split("_x")[1].split("_")[0]), int(p.image.stem.split("_y")[1]))
          for p in find_pairs(out)}
    starts = window_starts(600, 180, 250).tolist()
    assert starts == [0, 250, 420]
    assert xy <= {(x, y) for x in starts for y in starts}
    assert max(x for x, _ in xy) == 420, xy
