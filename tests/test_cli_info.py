"""``wsi-seg info`` through the real CLI: output fields, thumbnails, and every bad input.

Bad input must give one line on stderr naming the file and the cause, a non-zero exit, and
never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from synth_fixtures import blank_slide, synthetic

from wsi_seg.cli import main
from wsi_seg.stages.tiling import plan_blocks, step_for


@pytest.fixture(scope="session")
def p2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic(tmp_path_factory, "p2.svs")


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["info", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_one_error(rc: int, err: str, path: Path | str, *causes: str) -> None:
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(f"wsi-seg: error: {path}: "), lines[0]
    for cause in causes:
        assert cause in lines[0], lines[0]


# -- output -------------------------------------------------------------------------------------
def test_info_json_fields(p2: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(capsys, str(p2), "--json", "--target-mpp", "1.0", "--tile", "256",
                           "--overlap", "0.25", "--block", "1024", "--chunk", "512")
    assert rc == 0 and err == ""
    assert list(tmp_path.iterdir()) == []  # info writes nothing it was not asked to
    d = json.loads(out)
    assert d["path"] == str(p2)
    assert d["vendor"] == "aperio"
    assert d["dimensions_px"] == [3000, 2000]
    assert d["bounds_x0"] == [0, 0, 3000, 2000]
    assert d["levels"] == [
        {"level": 0, "size_px": [3000, 2000], "downsample": 1.0, "mpp": 0.5},
        {"level": 1, "size_px": [1500, 1000], "downsample": 2.0, "mpp": 1.0},
        {"level": 2, "size_px": [750, 500], "downsample": 4.0, "mpp": 2.0},
    ]
    assert d["mpp"] == 0.5 and d["objective_power"] == 20.0
    assert d["associated_images"] == ["thumbnail"]  # page 1, as Aperio files keep it
    assert 0.1 < d["tissue_fraction"] < 0.9
    assert d["tissue_mm2"] == pytest.approx(d["tissue_fraction"] * 3000 * 2000 * 0.25 / 1e6,
                                            rel=0.02)
    assert d["tissue_regions"] >= 1
    pl = d["plan"]
    assert pl["target_mpp"] == 1.0 and pl["read_level"] == 1 and pl["resample"] == 1.0
    assert pl["working_size_px"] == [1500, 1000]
    assert (pl["tile_px"], pl["overlap"], pl["block_px"]) == (256, 0.25, 1024)
    full = plan_blocks(1500, 1000, 256, step_for(256, 0.25), 1024, 512)
    assert pl["blocks_total"] == full.n_blocks_total == 2
    assert pl["tiles_total"] == full.n_windows_total
    assert 0 < pl["tiles"] < pl["tiles_total"]  # glass around the islands is skipped
    assert 1 <= pl["blocks"] <= 2
    assert pl["tile_predictions"] >= pl["tiles"]


def test_info_text_and_thumbnail(p2: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
                                 ) -> None:
    png = tmp_path / "thumb.png"
    rc, out, err = run_cli(capsys, str(p2), "--thumbnail", str(png))
    assert rc == 0 and err == ""
    for needle in ("vendor          aperio", "3000 x 2000 px", "0.5 µm/px, objective 20x",
                   "0: 3000x2000 (x1), 1: 1500x1000 (x2), 2: 750x500 (x4)", "tissue ",
                   "plan @ 1 µm/px"):
        assert needle in out, out
    img = cv2.imread(str(png))
    assert img is not None and max(img.shape[:2]) == 1024 and img.shape[:2] == (682, 1024)
    b, g, r = (img[..., i].astype(int) for i in range(3))
    assert ((g > 120) & (r < 60) & (b < 60)).sum() > 200  # the green tissue outline


def test_info_several_slides_thumbnails_in_a_folder(
    tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    src = tmp_path / "slides"
    src.mkdir()
    for name in ("p4.svs", "t2.tif"):
        shutil.copy(synthetic(tmp_path_factory, name), src / name)
    (src / "readme.txt").write_text("not a slide")  # not a slide suffix: ignored in a folder
    rc, out, err = run_cli(capsys, str(src), "--json", "--thumbnail", str(tmp_path / "th"))
    assert rc == 0 and err == ""
    docs = [json.loads(line) for line in out.splitlines()]
    assert [Path(d["path"]).name for d in docs] == ["p4.svs", "t2.tif"]
    assert [d["vendor"] for d in docs] == ["aperio", "generic-tiff"]
    assert sorted(p.name for p in (tmp_path / "th").iterdir()) == ["p4.png", "t2.png"]


# -- bad input ----------------------------------------------------------------------------------
def test_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.svs"
    rc, out, err = run_cli(capsys, str(path))
    assert_one_error(rc, err, path, "no such file")
    assert out == ""


def test_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys, str(tmp_path))
    assert_one_error(rc, err, tmp_path, "no slides found")


def test_text_file_renamed_svs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "notes.svs"
    path.write_text("Patient notes, not an image.\n" * 20)
    rc, _, err = run_cli(capsys, str(path))
    assert_one_error(rc, err, path, "not a slide OpenSlide can open")


@pytest.mark.parametrize("frac", [0.5, 0.98])
def test_truncated_svs(p2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                       frac: float) -> None:
    data = p2.read_bytes()
    path = tmp_path / "cut.svs"
    path.write_bytes(data[: int(len(data) * frac)])
    rc, _, err = run_cli(capsys, str(path))
    assert_one_error(rc, err, path)
    assert "truncated" in err or "Short read" in err, err


def test_dicom_openslide_cannot_open(real_slides: Path, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    """OpenSlide refuses this DICOM slide; the DICOM reader describes it, and it states no
    µm/px: described as far as it goes, then one line asking for --mpp; with one, in full."""
    path = real_slides / "tcga-xk-aaju-ts1-small.dcm"
    rc, out, err = run_cli(capsys, str(path))
    assert_one_error(rc, err, path, "no MPP", "--mpp")
    assert "vendor          dicom" in out and "3236 x 2638 px" in out
    rc, out, err = run_cli(capsys, str(path), "--mpp", "0.5", "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["vendor"] == "dicom" and d["dimensions_px"] == [3236, 2638]
    assert d["tissue_fraction"] > 0.05 and d["plan"]["tiles"] > 0


def test_slide_without_mpp(real_slides: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = real_slides / "tcga-cr-7395-01a-01-ts1.svs"
    rc, out, err = run_cli(capsys, str(path))
    assert_one_error(rc, err, path, "no MPP", "--mpp")
    # Described anyway: what the file holds needs no MPP.
    assert "levels          0: 4443x3567 (x1), 1: 2221x1783 (x2.0005)" in out, out
    assert "mpp             unknown" in out
    rc, out, err = run_cli(capsys, str(path), "--mpp", "0.5", "--json")
    assert rc == 0 and err == ""
    d = json.loads(out)
    assert d["mpp"] == 0.5 and d["objective_power"] is None
    assert d["tissue_fraction"] > 0.45


@pytest.mark.parametrize("mpp", ["0", "25", "-1", "nan", "0.001"])
def test_implausible_mpp(p2: Path, capsys: pytest.CaptureFixture[str], mpp: str) -> None:
    rc, out, err = run_cli(capsys, str(p2), "--mpp", mpp)
    assert_one_error(rc, err, p2, "--mpp", "outside the plausible range")
    assert out == ""


def test_slide_with_no_tissue(tmp_path_factory: pytest.TempPathFactory,
                              capsys: pytest.CaptureFixture[str]) -> None:
    path = blank_slide(tmp_path_factory)
    rc, out, err = run_cli(capsys, str(path), "--json")
    assert_one_error(rc, err, path, "no tissue")
    d = json.loads(out)  # the description still comes, so the user sees what it holds
    assert d["tissue_fraction"] == 0 and d["plan"]["tiles"] == 0 and d["plan"]["blocks"] == 0


def test_real_slides_folder(real_slides: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The shared folder: two good slides described, two without MPP (an SVS, the DICOM
    slide) described as far as they can be with one line each, exit 1."""
    rc, out, err = run_cli(capsys, str(real_slides), "--json")
    assert rc == 1
    docs = {Path(d["path"]).name: d for d in map(json.loads, out.splitlines())}
    assert set(docs) == {"1065626.svs", "CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs",
                         "tcga-xk-aaju-ts1-small.dcm"}
    assert docs["tcga-cr-7395-01a-01-ts1.svs"]["mpp"] is None
    assert docs["tcga-xk-aaju-ts1-small.dcm"]["vendor"] == "dicom"
    assert len(docs["tcga-cr-7395-01a-01-ts1.svs"]["levels"]) == 2
    assert 0.002 < docs["1065626.svs"]["tissue_fraction"] < 0.05
    assert docs["1065626.svs"]["plan"]["blocks"] < docs["1065626.svs"]["plan"]["blocks_total"]
    assert 0.2 < docs["CMU-1-Small-Region.svs"]["tissue_fraction"] < 0.6
    assert docs["CMU-1-Small-Region.svs"]["associated_images"] == ["label", "macro",
                                                                    "thumbnail"]
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in err
    assert "tcga-cr-7395-01a-01-ts1.svs: slide has no MPP metadata" in lines[0]
    assert "tcga-xk-aaju-ts1-small.dcm: slide has no MPP metadata" in lines[1]


def test_console_script_subprocess(tmp_path: Path) -> None:
    """The installed entry point: one line, exit 2, no traceback, also for argparse errors."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    script = Path(sys.executable).with_name("wsi-seg")
    cmd = [str(script)] if script.exists() else [
        sys.executable, "-c", "import sys; from wsi_seg.cli import main; sys.exit(main())"]
    missing = tmp_path / "gone.svs"
    proc = subprocess.run([*cmd, "info", str(missing)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"wsi-seg: error: {missing}: no such file or directory"
    assert proc.stdout == ""
    proc = subprocess.run([*cmd, "info", str(missing), "--tile", "big"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "invalid int value" in proc.stderr


def test_info_needs_a_slide(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["info"])
    assert e.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_thumbnail_write_failure_is_one_line(p2: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "no-such-dir" / "t.png"
    rc, _, err = run_cli(capsys, str(p2), "--thumbnail", str(bad))
    assert rc != 0 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and str(bad) in err


def test_blank_thumbnail_has_no_outline(tmp_path_factory: pytest.TempPathFactory,
                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    png = tmp_path / "blank.png"
    rc, _, _ = run_cli(capsys, str(blank_slide(tmp_path_factory)), "--thumbnail", str(png))
    assert rc == 1  # no tissue is an error, but the asked-for thumbnail is written
    img = cv2.imread(str(png)).astype(int)
    assert img.shape[:2] == (768, 1024)
    assert not ((img[..., 1] > 120) & (img[..., 2] < 60)).any()
    assert np.abs(img - img.mean(axis=(0, 1))).max() < 40
