"""``wsi-seg score``: bad values, missing files and a prediction scored against the wrong
slide are one stderr line and exit status 2, never a traceback or a meaningless score."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.model_fixtures import red_channel_unet
from wsi_seg.cli import main
from wsi_seg.tools.synth import write_synthetic_slide


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run over s.svs, and other slides beside it: ``other.svs`` (same size,
    other content) and ``big.svs`` (twice the size)."""
    root = tmp_path_factory.mktemp("score")
    write_synthetic_slide(root / "s.svs", (400, 300), seed=1)
    write_synthetic_slide(root / "other.svs", (400, 300), seed=2)
    write_synthetic_slide(root / "big.svs", (800, 600), seed=3)
    model = red_channel_unet(root / "red.keras")
    rc = main(["run", str(root / "s.svs"), "--out", str(root / "out"), "--model", str(model),
               "--scheduler", "threads", "--block", "128", "--chunk", "128",
               "--batch-size", "4", "--quiet"])
    assert rc == 0
    return root


def score(done: Path, *args: str, pred: str = "out/s/mask.zarr", slide: str = "s.svs",
          capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    argv: Sequence[str] = ["score", str(done / pred), str(done / "s.tumor.geojson"),
                           "--slide", str(done / slide), *args]
    try:
        rc = main(list(argv))
    except SystemExit as exc:  # argparse's own exit
        rc = int(exc.code or 0)
    cap = capsys.readouterr()
    return rc, cap.err.splitlines(), cap.out


def test_scores_its_own_slide(done: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err, out = score(done, capsys=capsys)
    assert rc == 0 and not err and out.startswith("IoU ")
    # The slide's output folder names its mosaic; a renamed copy of the slide is the slide.
    shutil.copy(done / "s.svs", done / "renamed.svs")
    rc, err, _ = score(done, pred="out/s", slide="renamed.svs", capsys=capsys)
    assert rc == 0 and not err
    rc, err, _ = score(done, pred="out/s/tumor.geojson", capsys=capsys)
    assert rc == 0 and not err


@pytest.mark.parametrize("bad", [["--threshold", "2"], ["--threshold", "0"],
                                 ["--threshold", "nan"], ["--level", "-1"], ["--mpp", "0"],
                                 ["--mask-mpp", "0"]], ids=" ".join)
def test_bad_value_is_one_line(bad: list[str], done: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    rc, err, _ = score(done, *bad, capsys=capsys)
    assert rc == 2 and len(err) == 1 and bad[0] in err[0]


def test_missing_prediction_is_one_line(done: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err, _ = score(done, pred="nowhere/s/mask.zarr", capsys=capsys)
    assert rc == 2 and len(err) == 1 and "nowhere" in err[0]


def test_out_in_a_missing_folder_is_one_line(done: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "missing" / "score.json"
    rc, err, _ = score(done, "--out", str(target), capsys=capsys)
    assert rc == 2 and len(err) == 1 and "--out" in err[0] and "missing" in err[0]
    assert not target.parent.exists()
    good = tmp_path / "score.json"
    rc, err, _ = score(done, "--out", str(good), capsys=capsys)
    assert rc == 0 and json.loads(good.read_text())["level"] == 0


@pytest.mark.parametrize("pred", ["out/s/mask.zarr", "out/s/tumor.geojson"])
def test_wrong_slide_of_the_same_size(pred: str, done: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The run's report.json knows the slide file (size and header hash)."""
    rc, err, _ = score(done, pred=pred, slide="other.svs", capsys=capsys)
    assert rc == 2 and len(err) == 1 and "other.svs" in err[0] and "s.svs" in err[0]


def test_wrong_slide_of_another_size(done: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for extra in ([], ["--skip-slide-check"]):  # an extent that disagrees is never scored
        rc, err, _ = score(done, *extra, slide="big.svs", capsys=capsys)
        assert rc == 2 and len(err) == 1 and "another slide" in err[0]


def test_moved_mosaic_is_checked_by_the_name_it_recorded(done: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    moved = tmp_path / "mask.zarr"  # no report.json beside it
    shutil.copytree(done / "out" / "s" / "mask.zarr", moved)
    rc, err, _ = score(done, pred=str(moved), slide="other.svs", capsys=capsys)
    assert rc == 2 and len(err) == 1 and "'s.svs'" in err[0]
    rc, err, _ = score(done, "--skip-slide-check", pred=str(moved), slide="other.svs",
                       capsys=capsys)
    assert rc == 0 and not err
    rc, err, _ = score(done, pred=str(moved), capsys=capsys)
    assert rc == 0 and not err
