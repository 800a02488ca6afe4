"""Level pixels of TIFF-family slides decoded straight from their tiles (tifffile + imagecodecs).

For JPEG tiles this decodes about 4-5x faster per thread than OpenSlide's ``read_region``
(measured on this project's synthetic SVS and CMU-1-Small-Region.svs, same pixels), whose
compositing through cairo and RGBA conversions cost more than the JPEG decode itself.

It is used for a level only where it gives exactly OpenSlide's pixels:

* the slide is one OpenSlide reads as ``aperio`` or ``generic-tiff`` and the level is a tiled,
  8-bit RGB TIFF page of the level's size;
* the level's downsample is an integer: at a fractional downsample (``4.000195`` on real
  Aperio slides) OpenSlide's level coordinates fall between pixels and it interpolates, so
  there are no plain tile pixels to match;
* at open time, a sample of tiles (the richest, the edge corner, a region across four tiles
  and a missing tile if there is one) decodes to exactly OpenSlide's pixels. JPEG 2000 in
  YCbCr, for one, differs by a grey level (OpenSlide converts colours itself), and such
  levels stay with OpenSlide.

A level that fails any check is read by OpenSlide, silently: only speed differs.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import tifffile

from wsi_seg.stages.slide_files import MAX_TIFF_PAGES

log = logging.getLogger(__name__)

#: OpenSlide vendors whose levels are plain TIFF pages (one tiled page per level).
TIFF_VENDORS = frozenset({"aperio", "generic-tiff"})
#: ``$WSI_SEG_TIFF_READER=0`` reads everything through OpenSlide.
ENV = "WSI_SEG_TIFF_READER"
BACKGROUND_RGB = 255
#: Decoded tiles kept per slide, bytes (OpenSlide's own default cache is 32 MiB too). The blur
#: margin of a resampled read spills into the next column of tiles; the read to its right
#: needs that column again, so it is decoded once instead of twice.
TILE_CACHE_BYTES = 32 << 20

#: Levels found identical to OpenSlide, by (path, size, mtime): verify each file once a process.
_verified: dict[tuple[str, int, int], frozenset[int]] = {}
_verified_lock = threading.Lock()


@dataclass(frozen=True)
class TiledLevel:
    """Where one level's tiles lie in the file and how to decode them."""

    width: int
    height: int
    tile_w: int
    tile_h: int
    offsets: np.ndarray
    bytecounts: np.ndarray
    jpegtables: bytes | None
    decode: Callable[..., Any]

    @property
    def tiles_across(self) -> int:
        return -(-self.width // self.tile_w)

    @property
    def tiles_down(self) -> int:
        return -(-self.height // self.tile_h)


class TiffLevels:
    """Reads rectangles of some pyramid levels from the tiles of one TIFF file.

    Thread-safe: tiles are read with ``os.pread`` on one descriptor (or, for a slide in an
    object store, with ``read_range(offset, count)``, which must be thread-safe too) and
    decoded by imagecodecs, which releases the GIL; the cache of decoded tiles has a lock.
    """

    def __init__(self, path: Path | object, tif: tifffile.TiffFile,
                 levels: dict[int, TiledLevel],
                 read_range: Callable[[int, int], bytes] | None = None) -> None:
        self.path = path
        self._tif = tif
        self._levels = levels
        self._fd = os.open(path, os.O_RDONLY) if read_range is None else -1  # type: ignore[arg-type]
        self._read_range = read_range
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._cache_lock = threading.Lock()

    @property
    def levels(self) -> frozenset[int]:
        return frozenset(self._levels)

    def keep_only(self, levels: frozenset[int]) -> None:
        self._levels = {k: v for k, v in self._levels.items() if k in levels}

    def read(self, level: int, xl: int, yl: int, w: int, h: int) -> np.ndarray:
        """RGB of level pixels ``[xl, xl + w) x [yl, yl + h)``, which must lie in the level."""
        lv = self._levels[level]
        if xl < 0 or yl < 0 or xl + w > lv.width or yl + h > lv.height or w <= 0 or h <= 0:
            raise ValueError(f"region {xl},{yl} {w}x{h} is not inside level {level}")
        out = np.empty((h, w, 3), dtype=np.uint8)
        for tx, ty in _tiles_over(lv, xl, yl, w, h):
            tile = self._cached_tile(level, lv, tx, ty)
            # Overlap of this tile with the region, in level coordinates.
            tx0, ty0 = tx * lv.tile_w, ty * lv.tile_h
            x0, y0 = max(xl, tx0), max(yl, ty0)
            x1, y1 = min(xl + w, tx0 + lv.tile_w), min(yl + h, ty0 + lv.tile_h)
            out[y0 - yl : y1 - yl, x0 - xl : x1 - xl] = tile[y0 - ty0 : y1 - ty0,
                                                            x0 - tx0 : x1 - tx0]
        return out

    def _cached_tile(self, level: int, lv: TiledLevel, tx: int, ty: int) -> np.ndarray:
        key = (level, ty * lv.tiles_across + tx)
        with self._cache_lock:
            tile = self._cache.get(key)
            if tile is not None:
                self._cache.move_to_end(key)
                return tile
        tile = self._tile(lv, tx, ty)
        tile.setflags(write=False)  # shared by every read that hits it
        with self._cache_lock:
            if key not in self._cache:
                self._cache[key] = tile
                self._cache_bytes += tile.nbytes
            while self._cache_bytes > TILE_CACHE_BYTES and self._cache:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.nbytes
        return tile

    def _tile(self, lv: TiledLevel, tx: int, ty: int) -> np.ndarray:
        i = ty * lv.tiles_across + tx
        count = int(lv.bytecounts[i])
        if count == 0:
            # A tile the scanner never wrote: OpenSlide leaves it transparent, which reads as
            # glass once flattened on white.
            return np.full((lv.tile_h, lv.tile_w, 3), BACKGROUND_RGB, dtype=np.uint8)
        data = (os.pread(self._fd, count, int(lv.offsets[i])) if self._read_range is None
                else self._read_range(int(lv.offsets[i]), count))
        tile, _, _ = lv.decode(data, i, jpegtables=lv.jpegtables)
        return np.asarray(tile).reshape(tile.shape[-3:])

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._tif.close()


def _tiles_over(lv: TiledLevel, xl: int, yl: int, w: int, h: int) -> Iterator[tuple[int, int]]:
    for ty in range(yl // lv.tile_h, (yl + h - 1) // lv.tile_h + 1):
        for tx in range(xl // lv.tile_w, (xl + w - 1) // lv.tile_w + 1):
            yield tx, ty


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip() not in ("0", "false", "no", "off")


def open_tiff_levels(path: Path, osr: openslide.AbstractSlide,
                     read_openslide: Callable[[int, int, int, int, int], np.ndarray]
                     ) -> TiffLevels | None:
    """A :class:`TiffLevels` for the levels of ``osr`` it reads exactly as OpenSlide, or None.

    ``read_openslide(level, xl, yl, w, h)`` is the reference: OpenSlide's RGB (flattened on
    white) of a rectangle inside a level. Never raises: any doubt means None (OpenSlide).
    """
    if not enabled() or not isinstance(osr, openslide.OpenSlide):
        return None
    if osr.properties.get(openslide.PROPERTY_NAME_VENDOR) not in TIFF_VENDORS:
        return None
    try:
        tif = tifffile.TiffFile(path)
    except Exception:  # tifffile cannot parse it: OpenSlide can, and that is enough
        return None
    try:
        levels = _matching_levels(tif, osr)
        if not levels:
            tif.close()
            return None
        reader = TiffLevels(path, tif, levels)
    except Exception:
        tif.close()
        return None
    key = _file_key(path)
    with _verified_lock:
        known = _verified.get(key)
    if known is None:
        known = frozenset(lv for lv in reader.levels if _agrees(reader, lv, read_openslide))
        with _verified_lock:
            _verified[key] = known
        log.debug("%s: tifffile reads levels %s", path.name, sorted(known))
    reader.keep_only(known)
    if not reader.levels:
        reader.close()
        return None
    return reader


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _matching_levels(tif: tifffile.TiffFile, osr: openslide.AbstractSlide
                     ) -> dict[int, TiledLevel]:
    """OpenSlide levels with an integer downsample and exactly one tiled RGB page of their size."""
    # By index and bounded: tifffile's page iterator walks a looping directory chain for
    # ever (such a file is refused before this, by slide_files.tiff_damage; this is a guard).
    every = [tif.pages[i] for i in range(min(len(tif.pages), MAX_TIFF_PAGES))]
    pages = [p for p in every if isinstance(p, tifffile.TiffPage) and p.is_tiled
             and p.samplesperpixel == 3 and p.bitspersample == 8 and p.dtype == np.uint8
             and p.planarconfig == 1 and p.imagedepth == 1]
    found: dict[int, TiledLevel] = {}
    for level, ((w, h), d) in enumerate(zip(osr.level_dimensions, osr.level_downsamples,
                                            strict=True)):
        if float(d) != round(float(d)):
            continue
        same = [p for p in pages if (p.imagewidth, p.imagelength) == (w, h)]
        if len(same) != 1:
            continue
        p = same[0]
        found[level] = TiledLevel(
            width=w, height=h, tile_w=int(p.tilewidth), tile_h=int(p.tilelength),
            offsets=np.asarray(p.dataoffsets, dtype=np.int64),
            bytecounts=np.asarray(p.databytecounts, dtype=np.int64),
            jpegtables=p.jpegtables, decode=p.decode)
    return found


def _agrees(reader: TiffLevels, level: int,
            read_openslide: Callable[[int, int, int, int, int], np.ndarray]) -> bool:
    """Whether sample regions of ``level`` decode to exactly OpenSlide's pixels."""
    lv = reader._levels[level]
    try:
        for xl, yl, w, h in _sample_regions(lv):
            if not np.array_equal(reader.read(level, xl, yl, w, h),
                                  read_openslide(level, xl, yl, w, h)):
                return False
    except Exception:  # an undecodable tile, an unknown codec: leave the level to OpenSlide
        return False
    return True


def _sample_regions(lv: TiledLevel) -> list[tuple[int, int, int, int]]:
    """Regions worth comparing: the largest (most detailed) tiles, the last partial tile, one
    across four tiles (what the assembly of tiles must get right) and a missing tile if any."""
    nx, ny = lv.tiles_across, lv.tiles_down
    richest = np.argsort(lv.bytecounts, kind="stable")[::-1][:3]
    out = []
    for i in richest:
        ty, tx = divmod(int(i), nx)
        out.append(_clip(lv, tx * lv.tile_w, ty * lv.tile_h, lv.tile_w, lv.tile_h))
    out.append(_clip(lv, (nx - 1) * lv.tile_w, (ny - 1) * lv.tile_h, lv.tile_w, lv.tile_h))
    cx, cy = (nx // 2) * lv.tile_w, (ny // 2) * lv.tile_h
    out.append(_clip(lv, cx - lv.tile_w // 2 - 3, cy - lv.tile_h // 2 - 5, lv.tile_w + 7,
                     lv.tile_h + 9))
    empty = np.flatnonzero(lv.bytecounts == 0)
    if len(empty):  # whether OpenSlide also reads a missing tile as glass
        ty, tx = divmod(int(empty[0]), nx)
        out.append(_clip(lv, tx * lv.tile_w, ty * lv.tile_h, lv.tile_w, lv.tile_h))
    return [r for r in out if r[2] > 0 and r[3] > 0]


def _clip(lv: TiledLevel, x: int, y: int, w: int, h: int) -> tuple[int, int, int, int]:
    x0, y0 = max(0, x), max(0, y)
    return x0, y0, min(lv.width, x + w) - x0, min(lv.height, y + h) - y0
