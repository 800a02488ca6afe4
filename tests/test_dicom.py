"""DICOM whole-slide images: a multi-file series written from a synthetic slide (known truth)
opens by its folder or by any of its files, OpenSlide and wsidicom give the same pixels, a
directory run counts the series once, it scores as the same slide in SVS does, and the real
TCGA DICOM slide (which neither OpenSlide nor wsidicom opens) runs end to end; DICOM files
that are not WSIs, or are truncated, get one line each."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import wsi_seg
from tests.dicom_fixtures import svs_levels, truncate_copy, write_ct_image, write_dicom_series
from tests.synth_fixtures import synthetic
from wsi_seg.cli import main
from wsi_seg.core.errors import SlideError
from wsi_seg.stages.dicom_reader import ENV, DicomSlide, open_dicom, series_files
from wsi_seg.stages.slide import find_slides, open_slide
from wsi_seg.tools.synth import truth_path_for

SVS = "p2.svs"  # 3000 x 2000 px at 0.5 µm/px, levels 1, 2, 4
SVS_MPP = 0.5


@pytest.fixture(scope="module")
def svs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic(tmp_path_factory, SVS)


@pytest.fixture(scope="module")
def series(svs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic slide as a DICOM series folder ``p2dcm/`` (one file per level), its truth
    beside the folder as ``p2dcm.tumor.geojson`` (the folder is the slide)."""
    root = tmp_path_factory.mktemp("dicom")
    folder = root / "p2dcm"
    write_dicom_series(svs_levels(svs), folder, SVS_MPP)
    shutil.copy(truth_path_for(svs), root / "p2dcm.tumor.geojson")
    return folder


def test_series_opens_by_folder_and_by_each_file(series: Path, svs: Path) -> None:
    with open_slide(svs) as ref:
        want = (ref.dimensions, ref.level_dimensions, ref.mpp)
        ref_px = ref.read_w(0, 0, 600, 400, 2.0)
    for path in (series, *sorted(series.glob("*.dcm"))):
        with open_slide(path) as s:
            assert (s.dimensions, s.level_dimensions, s.mpp) == want, path
            assert s.vendor == "dicom" and s.path == path
            # JPEG re-encoding of the frames (quality 95) differs from the SVS's tiles a little.
            px = s.read_w(0, 0, 600, 400, 2.0)
            assert np.abs(px.astype(int) - ref_px).mean() < 2.0


def test_openslide_and_wsidicom_give_equal_pixels(series: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Both readers open the series: every level, read whole, is equal pixel for pixel (both
    decode the same JPEG frames with libjpeg-turbo: max abs difference 0)."""
    with open_slide(series) as by_openslide:
        assert not isinstance(by_openslide._osr, DicomSlide)
        monkeypatch.setenv(ENV, "wsidicom")
        with open_slide(series) as by_wsidicom:
            assert isinstance(by_wsidicom._osr, DicomSlide)
            assert by_wsidicom.properties["dicom.reader"] == "wsidicom"
            assert by_wsidicom.level_dimensions == by_openslide.level_dimensions
            assert by_wsidicom.mpp == by_openslide.mpp
            for level, (w, h) in enumerate(by_openslide.level_dimensions):
                a = by_openslide._read_level(level, 0, 0, w, h)
                b = by_wsidicom._read_level(level, 0, 0, w, h)
                assert np.array_equal(a, b), level
            # And through the resampling path, at a resolution no level has.
            assert np.array_equal(by_openslide.read_w(10, 20, 300, 200, 1.3),
                                  by_wsidicom.read_w(10, 20, 300, 200, 1.3))


def test_lenient_reader_equals_wsidicom(series: Path) -> None:
    """The lenient reader (for files wsidicom refuses) decodes this series to wsidicom's
    pixels exactly."""
    from wsi_seg.stages.dicom_reader import _open_lenient

    headers = series_files(series)
    with open_dicom(series, headers) as strict, _open_lenient(series, headers) as lenient:
        assert strict.level_dimensions == lenient.level_dimensions
        for level, (w, h) in enumerate(strict.level_dimensions):
            assert np.array_equal(strict.read_rgb(level, 0, 0, w, h),
                                  lenient.read_rgb(level, 0, 0, w, h)), level


def test_directory_run_counts_a_series_once(series: Path, svs: Path, tmp_path: Path) -> None:
    assert find_slides([series]) == [series]
    mixed = tmp_path / "mixed"
    shutil.copytree(series, mixed)  # a series' files among other slides and a CT image
    shutil.copy(svs, mixed / "p2.svs")
    write_ct_image(mixed / "ct.dcm")
    assert find_slides([mixed]) == [mixed / "ct.dcm", mixed / "level-0.dcm", mixed / "p2.svs"]
    # A folder of series folders (how archives deliver a study): each folder is a slide.
    study = tmp_path / "study"
    shutil.copytree(series, study / "a")
    shutil.copytree(series, study / "b")
    assert find_slides([study]) == [study / "a", study / "b"]


def test_not_a_wsi_and_truncated_get_one_line(series: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    ct = write_ct_image(bad / "ct.dcm")
    cut = truncate_copy(series / "level-0.dcm", bad / "cut.dcm")
    shutil.copytree(series, bad / "good")
    expect = {ct: "not a whole-slide image (SOP class CT Image Storage)", cut: "truncated"}
    for path, cause in expect.items():
        with pytest.raises(SlideError) as e:
            open_slide(path)
        msg = str(e.value)
        assert msg.startswith(f"{path}: ") and "\n" not in msg and cause in msg, msg
    # A directory run goes past them: info describes the good series, one line for each bad.
    rc = main(["info", str(bad), "--target-mpp", "2"])
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert rc == 1 and "Traceback" not in cap.err and len(lines) == 2, cap.err
    assert f"{ct}:" in lines[0] and f"{cut}:" in lines[1]
    assert str(bad / "good") in cap.out and "vendor          dicom" in cap.out


def _run_iou(slide: Path, truth: Path, out: Path, **kw: object) -> float:
    config = wsi_seg.RunConfig(out_dir=out, truth=truth,
                               tissue=wsi_seg.TissueConfig(min_area_um2=5000), **kw)
    result = wsi_seg.run_slides(slide, config, wsi_seg.ClusterConfig(scheduler="threads"))
    (res,) = result.slides
    assert res.status == "ok" and res.report is not None, res.error
    assert res.report.score is not None and res.report.score.iou is not None
    return float(res.report.score.iou)


@pytest.mark.parametrize("reader", ["openslide", "wsidicom"])
def test_series_scores_as_the_svs_does(series: Path, svs: Path, tmp_path: Path, reader: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end with the bundled UNet: the DICOM series (through either reader) scores the
    IoU of the same slide in SVS within 0.005."""
    iou_svs = _run_iou(svs, svs.parent, tmp_path / "svs")
    monkeypatch.setenv(ENV, reader)
    iou_dicom = _run_iou(series, series.parent, tmp_path / "dicom")
    assert iou_svs > 0.8
    assert abs(iou_dicom - iou_svs) <= 0.005, (iou_dicom, iou_svs)
    assert (tmp_path / "dicom" / "p2dcm" / "tumor.geojson").is_file()
    assert (tmp_path / "dicom" / "p2dcm" / "overlay.png").is_file()


def test_real_dicom_runs_end_to_end(real_slides: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The TCGA DICOM slide: OpenSlide refuses it ("Couldn't get image flavor": no ImageType)
    and wsidicom too (no ImageType, no pixel spacing); the lenient reader reads it. It states
    no µm/px, so the run is given one (--mpp; 0.5 is an assumption, not the slide's)."""
    path = real_slides / "tcga-xk-aaju-ts1-small.dcm"
    with open_slide(path, mpp=0.5) as s:
        assert s.properties["dicom.reader"] == "lenient" and s.dimensions == (3236, 2638)
        rgb = s.read_w(0, 0, 200, 200, 8.0)
        assert rgb.shape == (200, 200, 3) and 50 < rgb.mean() < 250
    out = tmp_path / "out"
    rc = main(["run", str(path), "--out", str(out), "--model", "bundled:unet", "--mpp", "0.5",
               "--scheduler", "threads", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0, err
    done = out / "tcga-xk-aaju-ts1-small"
    for name in ("mask.zarr", "tumor.geojson", "overlay.png", "report.json"):
        assert (done / name).exists(), name
