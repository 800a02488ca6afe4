"""Slides whose TIFF directory chain loops, crafted from real files wsi-seg writes (a tiled
TIFF by tifffile, an Aperio SVS and a pyramidal generic TIFF by ``wsi-seg synth``, both
BigTIFF) by pointing the last directory's next offset back at the first, a middle or itself.

Each is one line naming the file and the cause and never a hang: OpenSlide's format check
(libtiff sees the loop) answers first, then the damage check names the loop, reading pages by
index up to a bound (tifffile's page iterator walks such a chain for ever); the tiff reader's
own page walk is bounded the same way. A slide path that is not a regular file is refused by
``open_slide`` itself."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import tifffile

from tests.model_fixtures import red_channel_unet
from wsi_seg.cli import main
from wsi_seg.core.errors import SlideError
from wsi_seg.stages import tiff_reader
from wsi_seg.stages.slide import open_slide
from wsi_seg.stages.slide_files import tiff_damage
from wsi_seg.tools.synth import write_synthetic_slide

CAUSE = "TIFF directory chain loops back on itself (the file is corrupt)"


def _directories(data: bytes) -> tuple[list[tuple[int, int]], bool]:
    """(offset, offset of its next-directory field) of each directory, and BigTIFF."""
    big = data[2:4] in (b"+\x00", b"\x00+")
    assert data[:2] == b"II", "little-endian files only"
    off = struct.unpack("<Q", data[8:16])[0] if big else struct.unpack("<I", data[4:8])[0]
    out: list[tuple[int, int]] = []
    while off:
        if big:
            n = struct.unpack("<Q", data[off : off + 8])[0]
            at = off + 8 + 20 * n
            nxt = struct.unpack("<Q", data[at : at + 8])[0]
        else:
            n = struct.unpack("<H", data[off : off + 2])[0]
            at = off + 2 + 12 * n
            nxt = struct.unpack("<I", data[at : at + 4])[0]
        out.append((off, at))
        off = nxt
    return out, big


def looped(src: Path, dst: Path, to: str) -> Path:
    """``src`` with its last directory's next offset pointed at the ``first``, ``middle``
    or ``last`` (itself) directory."""
    data = bytearray(src.read_bytes())
    dirs, big = _directories(bytes(data))
    assert len(dirs) >= 2
    target = {"first": dirs[0][0], "middle": dirs[len(dirs) // 2][0], "last": dirs[-1][0]}[to]
    at = dirs[-1][1]
    data[at : at + (8 if big else 4)] = struct.pack("<Q" if big else "<I", target)
    dst.write_bytes(bytes(data))
    return dst


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiffs")
    tiled = root / "tiled.tif"
    img = np.full((512, 512, 3), 200, np.uint8)
    with tifffile.TiffWriter(tiled) as w:
        w.write(img, tile=(256, 256), photometric="rgb")
        w.write(img[::2, ::2], tile=(256, 256), photometric="rgb", subfiletype=1)
        w.write(img[::4, ::4], tile=(128, 128), photometric="rgb", subfiletype=1)
    svs = write_synthetic_slide(root / "aperio.svs", (1200, 900), seed=1).slide_path
    generic = write_synthetic_slide(root / "generic.tif", (1200, 900), seed=2).slide_path
    return {"tiled": tiled, "aperio": svs, "generic": generic}


def test_the_sources_are_slides(sources: dict[str, Path]) -> None:
    """Unlooped, the SVS and the pyramidal TIFF open (so the loop is what is refused)."""
    for name in ("aperio", "generic"):
        with open_slide(sources[name], mpp=0.5) as slide:
            assert slide.level_count >= 2
        assert tiff_damage(sources[name]) is None


@pytest.mark.timeout(120)
@pytest.mark.parametrize("to", ["first", "middle", "last"])
@pytest.mark.parametrize("kind", ["tiled", "aperio", "generic"])
def test_a_looping_directory_chain_is_one_line(kind: str, to: str, sources: dict[str, Path],
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    src = sources[kind]
    path = looped(src, tmp_path / f"loop-{to}{src.suffix}", to)
    assert tiff_damage(path) == CAUSE
    with pytest.raises(SlideError) as exc:
        open_slide(path, mpp=0.5)
    assert str(exc.value) == f"{path}: {CAUSE}"
    assert main(["info", str(path)]) != 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"wsi-seg: error: {path}: {CAUSE}"], err


@pytest.mark.timeout(120)
def test_the_tiff_readers_page_walk_is_bounded(sources: dict[str, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Were a looping file to reach the tiff reader, its page walk ends (tifffile keeps the
    pages before the loop: how many depends on where it points) and finds some of the
    file's levels; with a bound of one page it looks at one page only."""
    src = sources["aperio"]
    with open_slide(src, mpp=0.5) as slide:
        osr: Any = SimpleNamespace(level_dimensions=slide.level_dimensions,
                                   level_downsamples=slide._osr.level_downsamples)
    with tifffile.TiffFile(src) as tif:
        want = set(tiff_reader._matching_levels(tif, osr))
    assert want == {0, 1}
    for to in ("first", "middle", "last"):
        path = looped(src, tmp_path / f"loop-{to}.svs", to)
        with tifffile.TiffFile(path) as tif:
            found = set(tiff_reader._matching_levels(tif, osr))
        assert 0 in found and found <= want, (to, found)
    monkeypatch.setattr(tiff_reader, "MAX_TIFF_PAGES", 1)
    with tifffile.TiffFile(path) as tif:
        assert set(tiff_reader._matching_levels(tif, osr)) == {0}


@pytest.mark.timeout(300)
def test_a_run_goes_on_past_a_looping_svs(sources: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    write_synthetic_slide(slides / "good.svs", (600, 500), seed=1)
    bad = looped(sources["aperio"], slides / "loop.svs", "middle")
    model = red_channel_unet(tmp_path / "red.keras")
    rc = main(["run", str(slides), "--out", str(tmp_path / "out"), "--model", str(model),
               "--scheduler", "threads", "--quiet"])
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.startswith("wsi-seg:")]
    assert rc == 1
    assert err == [f"wsi-seg: error: {bad}: {CAUSE}"], err
    assert (tmp_path / "out" / "good" / "report.json").is_file()
    assert not (tmp_path / "out" / "loop").exists()


@pytest.mark.timeout(60)
def test_open_slide_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.svs"
    os.mkfifo(fifo)
    with pytest.raises(SlideError) as exc:
        open_slide(fifo, mpp=0.5)  # reading it would block until a writer came
    assert str(exc.value) == f"{fifo}: slide is a FIFO (named pipe), not a regular file"
    if Path("/dev/zero").exists():
        with pytest.raises(SlideError, match="slide is a device, not a regular file"):
            open_slide("/dev/zero", mpp=0.5)  # reading it would never end
