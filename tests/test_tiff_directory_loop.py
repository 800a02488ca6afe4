"""A TIFF whose directory chain loops back on itself is one line naming the file and the cause,
never a hang (tifffile's page iterator walks such a loop for ever), for ``info`` and for a
directory run, in which the good slide beside it still finishes."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.model_fixtures import red_channel_unet
from wsi_seg.cli import main
from wsi_seg.tools.synth import write_synthetic_slide


def looping_tiff(path: Path) -> Path:
    """A valid two-page tiled TIFF, then its last directory's next offset pointed at the
    first directory."""
    img = np.full((512, 512, 3), 200, np.uint8)
    with tifffile.TiffWriter(path) as w:
        w.write(img, tile=(256, 256), photometric="rgb")
        w.write(img[::2, ::2], tile=(256, 256), photometric="rgb", subfiletype=1)
    data = bytearray(path.read_bytes())
    first = off = struct.unpack("<I", data[4:8])[0]
    while off:
        n = struct.unpack("<H", data[off : off + 2])[0]
        at = off + 2 + 12 * n
        off = struct.unpack("<I", data[at : at + 4])[0]
        if off == 0:
            data[at : at + 4] = struct.pack("<I", first)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.timeout(120)
def test_info_names_the_loop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = looping_tiff(tmp_path / "loop.tif")
    assert main(["info", str(path)]) != 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"wsi-seg: error: {path}: TIFF directory chain loops back on itself "
                   "(the file is corrupt)"], err


@pytest.mark.timeout(300)
def test_directory_run_goes_on_past_the_loop(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    slides = tmp_path / "slides"
    write_synthetic_slide(slides / "good.svs", (600, 500), seed=1)
    looping_tiff(slides / "loop.tif")
    model = red_channel_unet(tmp_path / "red.keras")
    rc = main(["run", str(slides), "--out", str(tmp_path / "out"), "--model", str(model),
               "--scheduler", "threads", "--quiet"])
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.startswith("wsi-seg:")]
    assert rc == 1
    assert err == [f"wsi-seg: error: {slides / 'loop.tif'}: TIFF directory chain loops back "
                   "on itself (the file is corrupt)"], err
    assert (tmp_path / "out" / "good" / "report.json").is_file()
