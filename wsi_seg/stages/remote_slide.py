"""Slides in an object store, opened in place: TIFF-family slides by tifffile over ranged reads.

OpenSlide reads local files only, so a slide at an ``s3://`` URL is read without it:

* **SVS (Aperio) and generic tiled TIFF**: the pyramid's tiled 8-bit RGB pages are the levels,
  as OpenSlide takes them (every tiled page for Aperio, in file order; for generic TIFF, the
  tiled pages largest first); the MPP and objective power come from where OpenSlide reads them
  (Aperio's ``MPP =`` and ``AppMag =`` description fields; the resolution tags of a generic
  TIFF in centimetres or inches); Aperio's untiled pages are its associated images. Tiles are
  decoded by :class:`wsi_seg.stages.tiff_reader.TiffLevels`, the same code that decodes the
  same file from local disk wherever it gives OpenSlide's pixels, so the pixels are those of
  the local run bit for bit. (Locally, a level whose tiles tifffile does not decode exactly as
  OpenSlide, such as a fractional downsample or YCbCr JPEG 2000, stays with OpenSlide; from the
  store there is no OpenSlide to defer to, so such levels may differ by a grey level.)
* **DICOM**: through :mod:`wsi_seg.stages.dicom_reader`'s readers over file objects.
* Anything else (NDPI, MRXS, SCN, ...): one line saying that only OpenSlide reads it and
  OpenSlide reads local files only.

The result is the same ``openslide.AbstractSlide`` interface :class:`wsi_seg.stages.slide.Slide`
wraps for DICOM (:class:`wsi_seg.stages.dicom_reader.DicomSlide`: levels with a ``read_rgb``).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping
from typing import IO, Any, cast

import numpy as np
import openslide
import tifffile
from PIL import Image

from wsi_seg.core.errors import SlideError
from wsi_seg.core.locations import SlideURL
from wsi_seg.stages.dicom_reader import PREAMBLE_BYTES, DicomSlide, LevelSource
from wsi_seg.stages.object_store import RemoteFile
from wsi_seg.stages.slide_files import MAX_TIFF_PAGES
from wsi_seg.stages.tiff_reader import TiffLevels, TiledLevel

log = logging.getLogger(__name__)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: TIFF ResolutionUnit values -> micrometres per unit.
_UM_PER_UNIT = {2: 25400.0, 3: 10000.0}  # inch, centimetre


def open_remote(url: SlideURL) -> openslide.AbstractSlide:
    """The slide at ``url``, read in place (see the module docstring).

    Raises:
        SlideError: empty, truncated, corrupt, or a format only OpenSlide reads (one line).
    """
    remote = RemoteFile(url)
    if remote.size_bytes == 0:
        raise SlideError("file is empty", str(url))
    head = remote.read(0, PREAMBLE_BYTES + 4)
    if head[PREAMBLE_BYTES:] == b"DICM":
        from wsi_seg.stages.remote_dicom import open_remote_dicom

        return open_remote_dicom(remote)
    if head[:4] in _TIFF_MAGIC:
        return open_remote_tiff(remote)
    raise SlideError(
        f"only OpenSlide reads this format ({url.suffix or 'no suffix'}) and OpenSlide reads "
        "local files only: copy it to local disk (SVS, tiled TIFF and DICOM are read from "
        "object storage)", str(url))


class _TiffSource(LevelSource):
    """The pyramid of a remote TIFF as the levels :class:`DicomSlide` reads."""

    def __init__(self, reader: TiffLevels, sizes_px: tuple[tuple[int, int], ...]) -> None:
        self._reader = reader
        self.sizes_px = sizes_px

    def read(self, level: int, xl: int, yl: int, w: int, h: int) -> np.ndarray:
        return self._reader.read(level, xl, yl, w, h)

    def close(self) -> None:
        self._reader.close()


def _plain_rgb_tiled(page: Any) -> bool:
    """A tiled, 8-bit, 3-sample, interleaved page: what TiffLevels decodes."""
    return (isinstance(page, tifffile.TiffPage) and page.is_tiled and page.samplesperpixel == 3
            and page.bitspersample == 8 and page.dtype == np.uint8 and page.planarconfig == 1
            and page.imagedepth == 1)


def _tiled_level(page: tifffile.TiffPage) -> TiledLevel:
    return TiledLevel(
        width=int(page.imagewidth), height=int(page.imagelength), tile_w=int(page.tilewidth),
        tile_h=int(page.tilelength), offsets=np.asarray(page.dataoffsets, dtype=np.int64),
        bytecounts=np.asarray(page.databytecounts, dtype=np.int64),
        jpegtables=page.jpegtables, decode=page.decode)


def open_remote_tiff(remote: RemoteFile) -> StoreSlide:
    """An SVS or generic tiled TIFF in the store (see the module docstring)."""
    where = str(remote.url)
    try:
        tif = tifffile.TiffFile(cast(IO[bytes], remote.open()), name=remote.url.name)
    except Exception as exc:  # any parse failure of a TIFF header is damage
        raise SlideError(f"TIFF structure is corrupt or truncated ({_one_line(exc)})",
                         where) from None
    try:
        return _tiff_slide(remote, tif)
    except Exception:
        tif.close()
        raise


def _tiff_slide(remote: RemoteFile, tif: tifffile.TiffFile) -> StoreSlide:
    where = str(remote.url)
    try:
        # By index and bounded, as slide_files.tiff_damage: a looping chain never ends.
        pages: list[Any] = [tif.pages[i] for i in range(min(len(tif.pages), MAX_TIFF_PAGES))]
    except Exception as exc:
        raise SlideError(f"TIFF structure is corrupt or truncated ({_one_line(exc)})",
                         where) from None
    end = max((int(o) + int(n) for p in pages for o, n in zip(
        getattr(p, "dataoffsets", ()), getattr(p, "databytecounts", ()), strict=False)),
        default=0)
    if end > remote.size_bytes:
        raise SlideError(f"file is truncated: its image data runs to byte {end} but the file "
                         f"has {remote.size_bytes}", where)
    first = pages[0] if pages else None
    if first is None or not _plain_rgb_tiled(first):
        raise SlideError("not a tiled 8-bit RGB TIFF pyramid: from object storage only those "
                         "(and DICOM) are read; copy it to local disk for OpenSlide", where)
    description = str(first.description or "")
    aperio = description.startswith("Aperio")
    tiled = [p for p in pages if _plain_rgb_tiled(p)]
    if not aperio:  # OpenSlide's generic-tiff: the tiled pages, largest first
        tiled.sort(key=lambda p: -int(p.imagewidth))
    w0, h0 = int(first.imagewidth), int(first.imagelength)
    # Levels of one pyramid cover the base's area (a level pixel of rounding on each axis).
    tiled = [p for p in tiled if abs(int(p.imagewidth) * h0 - int(p.imagelength) * w0)
             <= w0 + h0]
    levels = {i: _tiled_level(p) for i, p in enumerate(tiled)}
    sizes = tuple((lv.width, lv.height) for lv in levels.values())
    props = (_aperio_properties(description) if aperio
             else _generic_properties(first, description))
    props[openslide.PROPERTY_NAME_VENDOR] = "aperio" if aperio else "generic-tiff"
    props["wsi-seg.reader"] = "tifffile (object store)"
    associated = _associated(pages, set(map(id, tiled))) if aperio else {}
    source = _TiffSource(TiffLevels(remote.url, tif, levels, read_range=remote.read), sizes)
    return StoreSlide(remote.url, source, associated, props)


class StoreSlide(DicomSlide):
    """A slide read from the store: :class:`DicomSlide`'s levels-backed interface (level
    coordinates, ``read_rgb``), with associated images decoded only when asked for."""

    def __init__(self, url: SlideURL, levels: LevelSource, associated: Mapping[str, Image.Image],
                 properties: Mapping[str, str]) -> None:
        super().__init__(url, levels, {}, properties)  # type: ignore[arg-type]
        self._lazy = associated

    @property
    def associated_images(self) -> Mapping[str, Image.Image]:
        return self._lazy


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _aperio_properties(description: str) -> dict[str, str]:
    """What OpenSlide makes of an Aperio description: ``aperio.KEY`` for each ``KEY = value``
    field, the MPP and objective power from ``MPP`` and ``AppMag``."""
    props = {openslide.PROPERTY_NAME_COMMENT: description}
    for field in description.split("|")[1:]:
        key, sep, value = field.partition("=")
        if sep:
            props[f"aperio.{key.strip()}"] = value.strip()
    if "aperio.MPP" in props:
        props[openslide.PROPERTY_NAME_MPP_X] = props[openslide.PROPERTY_NAME_MPP_Y] = \
            props["aperio.MPP"]
    if "aperio.AppMag" in props:
        props[openslide.PROPERTY_NAME_OBJECTIVE_POWER] = props["aperio.AppMag"]
    return props


def _generic_properties(page: tifffile.TiffPage, description: str) -> dict[str, str]:
    """A generic TIFF's MPP from its resolution tags (pixels per centimetre or inch)."""
    props = {openslide.PROPERTY_NAME_COMMENT: description} if description else {}
    unit = page.tags.get("ResolutionUnit")
    per_um = _UM_PER_UNIT.get(int(unit.value)) if unit is not None else None
    for axis, tag in (("x", "XResolution"), ("y", "YResolution")):
        t = page.tags.get(tag)
        if per_um is None or t is None:
            continue
        num, den = t.value
        if num > 0 and den > 0:
            props[f"openslide.mpp-{axis}"] = repr(per_um * den / num)
    return props


_ASSOCIATED = re.compile(r"\b(label|macro)\b", re.IGNORECASE)


def _associated(pages: list[Any], level_ids: set[int]) -> Mapping[str, Image.Image]:
    """Aperio's untiled pages by OpenSlide's names: the one after level 0 is the thumbnail,
    others are named by their description (``label``, ``macro``). Decoded when asked for."""
    named: dict[str, Any] = {}
    for i, p in enumerate(pages):
        if id(p) in level_ids or not isinstance(p, tifffile.TiffPage):
            continue
        m = _ASSOCIATED.search(str(p.description or ""))
        name = m.group(1).lower() if m else "thumbnail" if i == 1 else None
        if name and name not in named:
            named[name] = p
    return _LazyImages(named)


class _LazyImages(Mapping[str, Image.Image]):
    """Associated images decoded on first use: listing their names reads no pixels."""

    def __init__(self, pages: dict[str, Any]) -> None:
        self._pages = pages

    def __getitem__(self, name: str) -> Image.Image:
        with contextlib.suppress(Exception):
            return Image.fromarray(np.asarray(self._pages[name].asarray())[..., :3])
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._pages)

    def __len__(self) -> int:
        return len(self._pages)
