"""DICOM whole-slide images (VL Whole Slide Microscopy Image Storage), by folder or by file.

Archives deliver a DICOM slide as a *series*: one file per pyramid level (and per label,
overview or thumbnail), all sharing a ``SeriesInstanceUID``, in one folder. A slide opens by
that folder or by any one of its files (its siblings in the same folder are found by the
series UID). :func:`wsi_seg.stages.slide.open_slide` gives the series to OpenSlide first; where
OpenSlide refuses it, :func:`open_dicom` reads it here, behind the ``openslide.AbstractSlide``
interface that :class:`wsi_seg.stages.slide.Slide` wraps:

* **wsidicom** reads series that follow the standard (tiled full or sparse, JPEG, JPEG 2000,
  uncompressed; labels, overviews and thumbnails as associated images);
* a **lenient tiled reader** (pydicom headers, imagecodecs decode) reads what wsidicom turns
  away for a missing attribute a converter forgot, as long as the pixels are unambiguous: one
  frame per tile in row-major order (``TILED_FULL``, the only layout with no per-frame
  positions), one focal plane, one optical path. The real TCGA DICOM slide this project is
  tested on states no ``ImageType``, no ``DimensionOrganizationType`` and no pixel spacing,
  and neither OpenSlide nor wsidicom opens it.

What is not a WSI (a CT image, a DICOMDIR) or is broken (truncated) is refused with one
:class:`SlideError` line naming the file and the cause.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import openslide
from PIL import Image

from wsi_seg.core.errors import SlideError

log = logging.getLogger(__name__)

#: SOP class UID of VL Whole Slide Microscopy Image Storage (DICOM PS3.4).
WSI_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.77.1.6"
#: Bytes before the ``DICM`` magic of a DICOM Part 10 file (the preamble).
PREAMBLE_BYTES = 128
#: Headers read to find a folder's series (a folder of a whole archive is refused beyond it).
MAX_SERIES_FILES = 4096
#: Decoded frames kept per slide by the lenient reader, bytes (as the TIFF reader's cache).
FRAME_CACHE_BYTES = 32 << 20
#: ImageType value 3 (flavour) of pyramid levels.
VOLUME = "VOLUME"
ASSOCIATED_FLAVOURS = {"LABEL": "label", "OVERVIEW": "macro", "THUMBNAIL": "thumbnail"}

#: ``$WSI_SEG_DICOM_READER=wsidicom`` skips OpenSlide for DICOM (to compare the readers, or
#: where OpenSlide misreads a file); any other value, or none, tries OpenSlide first.
ENV = "WSI_SEG_DICOM_READER"

_JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
_JPEG_2000 = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
_NATIVE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


def is_dicom(path: Path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as f:
            head = f.read(PREAMBLE_BYTES + 4)
    except OSError:
        return False
    return head[PREAMBLE_BYTES:] == b"DICM"


@dataclass(frozen=True)
class DicomHeader:
    """What finding and grouping a series needs of one file's header."""

    path: Path
    sop_class_uid: str
    sop_class_name: str
    series_uid: str
    #: ImageType values, upper case; empty when the file states none
    image_type: tuple[str, ...]
    #: TotalPixelMatrixColumns x TotalPixelMatrixRows, pixels (0 when absent)
    width_px: int
    height_px: int

    @property
    def is_wsi(self) -> bool:
        return self.sop_class_uid == WSI_SOP_CLASS_UID

    @property
    def flavour(self) -> str:
        """VOLUME, LABEL, OVERVIEW, THUMBNAIL; VOLUME when the file states no ImageType."""
        return self.image_type[2] if len(self.image_type) > 2 else VOLUME


def _pydicom() -> Any:
    """pydicom, set to read values that break the standard's length rules without a warning
    per file: real archives' files do (a TCGA slide's 65-character UIDs), and a reader that
    only reads has nothing to fix (a process-wide pydicom setting, set once)."""
    import pydicom

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    return pydicom


def read_header(path: Path) -> DicomHeader:
    """The header of a DICOM file (pixel data not read).

    Raises:
        SlideError: not a DICOM file, or its header is truncated or corrupt (one line).
    """
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as exc:
        raise SlideError(f"not a DICOM file ({exc})", path) from None
    except Exception as exc:  # pydicom raises anything from struct.error to EOFError here
        raise SlideError(f"DICOM header is corrupt or truncated ({_one_line(exc)})",
                         path) from None
    sop = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    try:
        name = pydicom.uid.UID(sop).name
    except Exception:
        name = sop
    return DicomHeader(
        path=path, sop_class_uid=sop, sop_class_name=name or "unknown",
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        image_type=tuple(str(v).upper() for v in (ds.get("ImageType") or ())),
        width_px=int(ds.get("TotalPixelMatrixColumns", 0) or 0),
        height_px=int(ds.get("TotalPixelMatrixRows", 0) or 0))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _dicom_files_in(folder: Path) -> list[Path]:
    """Regular, non-hidden files of ``folder`` that are DICOM, sorted by name."""
    try:
        children = sorted(folder.iterdir())
    except OSError as exc:
        raise SlideError(f"cannot list folder ({exc.strerror or exc})", folder) from None
    files = [c for c in children if not c.name.startswith(".") and c.is_file()]
    return [c for c in files[:MAX_SERIES_FILES] if is_dicom(c)]


def series_in(files: list[Path]) -> tuple[dict[str, list[DicomHeader]], list[Path]]:
    """Group DICOM files into WSI series by ``SeriesInstanceUID``.

    Returns the series (UID -> headers, largest image first) and the files that are not part
    of one: not WSIs, or with a header that cannot be read (their errors surface on open).
    """
    series: dict[str, list[DicomHeader]] = {}
    others: list[Path] = []
    for f in files:
        try:
            h = read_header(f)
        except SlideError:
            others.append(f)
            continue
        if h.is_wsi and h.series_uid:
            series.setdefault(h.series_uid, []).append(h)
        else:
            others.append(f)
    for headers in series.values():
        headers.sort(key=lambda h: (h.flavour != VOLUME, -h.width_px, h.path.name))
    return series, others


def is_dicom_folder(folder: Path) -> bool:
    """Whether ``folder`` holds DICOM files (then it is read as one series)."""
    return bool(_dicom_files_in(folder))


def series_files(path: Path) -> list[DicomHeader]:
    """The WSI files of the series at ``path``: a folder holding one series, or one file of it
    (the series is then gathered from its folder). Levels come first, largest first.

    Raises:
        SlideError: not a WSI (SOP class named), no series, or more than one in a folder.
    """
    if path.is_dir():
        series, _ = series_in(_dicom_files_in(path))
        if not series:
            raise SlideError("folder holds no DICOM whole-slide image", path)
        if len(series) > 1:
            raise SlideError(f"folder holds {len(series)} DICOM whole-slide series; give one "
                             "file of the one to read", path)
        return next(iter(series.values()))
    mine = read_header(path)
    if not mine.is_wsi:
        raise SlideError(f"a DICOM file but not a whole-slide image (SOP class "
                         f"{mine.sop_class_name})", path)
    siblings = [f for f in _dicom_files_in(path.parent) if f.resolve() != path.resolve()]
    series, _ = series_in(siblings)
    headers = [mine, *series.get(mine.series_uid, [])] if mine.series_uid else [mine]
    headers.sort(key=lambda h: (h.flavour != VOLUME, -h.width_px, h.path.name))
    return headers


# -- the slide ----------------------------------------------------------------------------------
class DicomSlide(openslide.AbstractSlide):
    """A DICOM WSI series read by wsidicom or the lenient reader, as OpenSlide's interface.

    ``read_region`` takes level-0 coordinates and returns RGBA, as OpenSlide's does;
    :meth:`read_rgb` is the fast path :class:`wsi_seg.stages.slide.Slide` uses (level
    coordinates, RGB, no conversions). Thread-safe for reads.
    """

    def __init__(self, path: Path, levels: LevelSource,
                 associated: Mapping[str, Image.Image], properties: Mapping[str, str]) -> None:
        self._path = path
        self._levels = levels
        self._associated = dict(associated)
        self._properties = dict(properties)

    @classmethod
    def detect_format(cls, filename: Any) -> str | None:
        return "dicom" if is_dicom(Path(filename)) else None

    @property
    def level_count(self) -> int:
        return len(self._levels.sizes_px)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._levels.sizes_px

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        w0, h0 = self._levels.sizes_px[0]
        # As OpenSlide computes them: the mean of the two axes' ratios.
        return tuple((w0 / w + h0 / h) / 2 for w, h in self._levels.sizes_px)

    @property
    def properties(self) -> Mapping[str, str]:
        return self._properties

    @property
    def associated_images(self) -> Mapping[str, Image.Image]:
        return self._associated

    def get_best_level_for_downsample(self, downsample: float) -> int:
        fine = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * 1.0001]
        return max(fine) if fine else 0

    def read_rgb(self, level: int, xl: int, yl: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 ``(h, w, 3)`` of level pixels ``[xl, xl + w) x [yl, yl + h)`` (inside)."""
        try:
            return self._levels.read(level, xl, yl, w, h)
        except SlideError:
            raise
        except Exception as exc:  # a corrupt frame: one line, as OpenSlide's errors
            raise SlideError(f"cannot read pixels ({_one_line(exc)})", self._path) from None

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]
                    ) -> Image.Image:
        """OpenSlide's contract: level-0 ``location``, ``size`` at ``level``, RGBA, clear
        outside the level."""
        d = self.level_downsamples[level]
        xl, yl = round(location[0] / d), round(location[1] / d)
        w, h = size
        lw, lh = self.level_dimensions[level]
        out = np.zeros((h, w, 4), np.uint8)
        cx0, cy0, cx1, cy1 = max(xl, 0), max(yl, 0), min(xl + w, lw), min(yl + h, lh)
        if cx1 > cx0 and cy1 > cy0:
            out[cy0 - yl : cy1 - yl, cx0 - xl : cx1 - xl, :3] = self.read_rgb(
                level, cx0, cy0, cx1 - cx0, cy1 - cy0)
            out[cy0 - yl : cy1 - yl, cx0 - xl : cx1 - xl, 3] = 255
        return Image.fromarray(out, "RGBA")

    def close(self) -> None:
        self._levels.close()


class LevelSource:
    """Pyramid levels of one series: sizes and decoded rectangles (subclasses read them)."""

    sizes_px: tuple[tuple[int, int], ...]

    def read(self, level: int, xl: int, yl: int, w: int, h: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class WsidicomLevels(LevelSource):
    """Levels read by wsidicom (``WsiDicom.read_region`` at each level's pyramid index)."""

    def __init__(self, wsi: Any) -> None:
        self._wsi = wsi
        levels = list(wsi.levels)
        self._level_ids = [int(lv.level) for lv in levels]
        self.sizes_px = tuple((int(lv.size.width), int(lv.size.height)) for lv in levels)

    def read(self, level: int, xl: int, yl: int, w: int, h: int) -> np.ndarray:
        arr = self._wsi.read_region((xl, yl), self._level_ids[level], (w, h), as_array=True)
        return np.ascontiguousarray(np.asarray(arr)[..., :3], dtype=np.uint8)

    def close(self) -> None:
        self._wsi.close()


def open_dicom_series(path: Path) -> openslide.AbstractSlide:
    """A DICOM series (its folder or one file of it): OpenSlide where it opens it, else
    :func:`open_dicom` (wsidicom, or the lenient reader).

    Raises:
        SlideError: not a WSI, broken, or no reader reads it (one line).
    """
    headers = series_files(path)  # one line for what is not a WSI or has a broken header
    if os.environ.get(ENV, "").strip().lower() == "wsidicom":
        return open_dicom(path, headers)
    try:
        # OpenSlide finds the rest of the series beside the file it is given; the largest
        # level is the file it expects.
        return openslide.OpenSlide(str(headers[0].path))
    except openslide.OpenSlideError as exc:  # e.g. "Couldn't get image flavor": no ImageType
        log.debug("%s: OpenSlide cannot open it (%s)", path, exc)
    return open_dicom(path, headers)


def open_dicom(path: Path, headers: list[DicomHeader]) -> DicomSlide:
    """Read the series ``headers`` (from :func:`series_files`) with wsidicom, or leniently.

    Raises:
        SlideError: neither reader can read it (one line: wsidicom's reason and the lenient
            reader's).
    """
    try:
        return _open_wsidicom(path, headers)
    except Exception as exc:
        why = _one_line(exc)
        log.debug("%s: wsidicom cannot read it (%s); trying the lenient reader", path, why)
    try:
        return _open_lenient(path, headers)
    except SlideError as exc:
        raise SlideError(f"DICOM whole-slide image that cannot be read ({exc.cause}; "
                         f"wsidicom: {why})", path) from None


def _open_wsidicom(path: Path, headers: list[DicomHeader]) -> DicomSlide:
    return _open_wsidicom_files(path, [h.path for h in headers])


def _open_wsidicom_files(path: Any, files: list[Any]) -> DicomSlide:
    """wsidicom's reading of ``files`` (paths, or ``s3://`` URLs it opens through fsspec),
    as a :class:`DicomSlide` named ``path``."""
    from wsidicom import WsiDicom

    wsi = WsiDicom.open(files)
    try:
        levels = WsidicomLevels(wsi)
        props = {openslide.PROPERTY_NAME_VENDOR: "dicom", "dicom.reader": "wsidicom"}
        spacing = wsi.levels[0].pixel_spacing  # mm per pixel (width, height)
        if spacing is not None and spacing.width > 0 and spacing.height > 0:
            props[openslide.PROPERTY_NAME_MPP_X] = repr(float(spacing.width) * 1000)
            props[openslide.PROPERTY_NAME_MPP_Y] = repr(float(spacing.height) * 1000)
        power = _objective_power(wsi)
        if power is not None:
            props[openslide.PROPERTY_NAME_OBJECTIVE_POWER] = repr(power)
        associated: dict[str, Image.Image] = {}
        for name, reader in (("label", wsi.read_label), ("macro", wsi.read_overview),
                             ("thumbnail", wsi.read_thumbnail)):
            try:
                associated[name] = reader().convert("RGB")
            except Exception:  # the series has none of that kind
                continue
        # Read one frame now: a truncated file fails here, at open, not mid-run.
        w, h = levels.sizes_px[-1]
        levels.read(len(levels.sizes_px) - 1, 0, 0, min(w, 64), min(h, 64))
    except Exception:
        wsi.close()
        raise
    return DicomSlide(path, levels, associated, props)


def _objective_power(wsi: Any) -> float | None:
    try:
        for optical_path in wsi.metadata.optical_paths:
            lens = optical_path.objective.objective_power
            if lens:
                return float(lens)
    except Exception:  # metadata the converter left out
        return None
    return None


# -- the lenient reader -------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameLevel:
    """One level in one file: its size, tile size, where each frame's bytes lie, the codec."""

    path: Path
    width_px: int
    height_px: int
    tile_w_px: int
    tile_h_px: int
    #: absolute file offset and length of each frame's bytes, row-major tiles
    offsets: np.ndarray
    lengths: np.ndarray
    decode: Callable[[bytes], np.ndarray]

    @property
    def tiles_across(self) -> int:
        return -(-self.width_px // self.tile_w_px)


class FrameLevels(LevelSource):
    """Levels of ``TILED_FULL`` files read frame by frame (``os.pread`` + imagecodecs, which
    releases the GIL: thread-safe; decoded frames cached, as the TIFF reader does)."""

    def __init__(self, levels: list[FrameLevel]) -> None:
        self._levels = levels
        self.sizes_px = tuple((lv.width_px, lv.height_px) for lv in levels)
        self._fds = {lv.path: os.open(lv.path, os.O_RDONLY) for lv in levels}
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._lock = threading.Lock()

    def read(self, level: int, xl: int, yl: int, w: int, h: int) -> np.ndarray:
        lv = self._levels[level]
        if xl < 0 or yl < 0 or xl + w > lv.width_px or yl + h > lv.height_px or w <= 0 or h <= 0:
            raise ValueError(f"region {xl},{yl} {w}x{h} is not inside level {level}")
        out = np.empty((h, w, 3), np.uint8)
        for ty in range(yl // lv.tile_h_px, (yl + h - 1) // lv.tile_h_px + 1):
            for tx in range(xl // lv.tile_w_px, (xl + w - 1) // lv.tile_w_px + 1):
                tile = self._frame(level, ty * lv.tiles_across + tx)
                tx0, ty0 = tx * lv.tile_w_px, ty * lv.tile_h_px
                x0, y0 = max(xl, tx0), max(yl, ty0)
                x1, y1 = min(xl + w, tx0 + lv.tile_w_px), min(yl + h, ty0 + lv.tile_h_px)
                out[y0 - yl : y1 - yl, x0 - xl : x1 - xl] = tile[y0 - ty0 : y1 - ty0,
                                                                x0 - tx0 : x1 - tx0]
        return out

    def _frame(self, level: int, i: int) -> np.ndarray:
        key = (level, i)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        lv = self._levels[level]
        data = os.pread(self._fds[lv.path], int(lv.lengths[i]), int(lv.offsets[i]))
        if len(data) != int(lv.lengths[i]):
            raise SlideError(f"file is truncated: frame {i} of level {level} runs past its "
                             "end", lv.path)
        tile = np.asarray(lv.decode(data), np.uint8).reshape(lv.tile_h_px, lv.tile_w_px, -1)
        tile = tile[..., :3] if tile.shape[2] >= 3 else np.repeat(tile, 3, axis=2)
        tile.setflags(write=False)  # shared by every read that hits it
        with self._lock:
            if key not in self._cache:
                self._cache[key] = tile
                self._cache_bytes += tile.nbytes
            while self._cache_bytes > FRAME_CACHE_BYTES and self._cache:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.nbytes
        return tile

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


def _open_lenient(path: Path, headers: list[DicomHeader]) -> DicomSlide:
    levels = [_frame_level(h.path) for h in headers if h.flavour == VOLUME]
    if not levels:
        raise SlideError("the series has no pyramid level", path)
    base = levels[0]
    # Levels of one pyramid cover the base's area: the same aspect, give or take a level
    # pixel of rounding on each axis (|w W' - h H'| <= W + H).
    W, H = base.width_px, base.height_px
    pyramid = [lv for lv in levels if abs(lv.width_px * H - lv.height_px * W) <= W + H]
    source = FrameLevels(pyramid)
    try:
        w, h = source.sizes_px[-1]
        source.read(len(pyramid) - 1, 0, 0, min(w, 64), min(h, 64))
        w0, h0 = source.sizes_px[0]
        source.read(0, max(0, w0 - 64), max(0, h0 - 64), min(w0, 64), min(h0, 64))
    except SlideError:
        source.close()
        raise
    except Exception as exc:
        source.close()
        raise SlideError(f"slide data is corrupt or truncated ({_one_line(exc)})",
                         path) from None
    props = {openslide.PROPERTY_NAME_VENDOR: "dicom", "dicom.reader": "lenient"}
    mpp = _pixel_spacing_um(base.path)
    if mpp is not None:
        props[openslide.PROPERTY_NAME_MPP_X], props[openslide.PROPERTY_NAME_MPP_Y] = (
            repr(mpp[0]), repr(mpp[1]))
    return DicomSlide(path, source, {}, props)


def _frame_level(path: Path) -> FrameLevel:
    """Where the frames of a single-focal-plane ``TILED_FULL`` file lie, or SlideError."""
    pydicom = _pydicom()
    from pydicom.encaps import parse_basic_offsets, parse_fragments

    with open(path, "rb") as f:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as exc:
            raise SlideError(f"DICOM header is corrupt or truncated ({_one_line(exc)})",
                             path) from None
        syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
        cols, rows = int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0)
        w, h = int(ds.get("TotalPixelMatrixColumns", 0) or 0), \
            int(ds.get("TotalPixelMatrixRows", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if min(cols, rows, w, h) <= 0:
            raise SlideError("DICOM image states no tile or total pixel matrix size", path)
        tiles = math.ceil(w / cols) * math.ceil(h / rows)
        organisation = str(ds.get("DimensionOrganizationType", "TILED_FULL") or "TILED_FULL")
        if organisation != "TILED_FULL" or frames != tiles:
            raise SlideError(f"{frames} frames for {tiles} tiles ({organisation}): several "
                             "focal planes or sparse tiles need metadata this file lacks",
                             path)
        if int(ds.get("SamplesPerPixel", 3)) not in (1, 3) or int(ds.get("BitsAllocated", 8)) \
                != 8:
            raise SlideError("pixels are not 8-bit RGB or grey", path)
        decode: Callable[[bytes], np.ndarray]
        start = f.tell()
        header = f.read(12)  # pixel data tag, VR (explicit) or length (implicit)
        if header[:4] != b"\xe0\x7f\x10\x00":
            raise SlideError("file is truncated: it has no pixel data", path)
        if syntax == _JPEG_BASELINE or syntax in _JPEG_2000:
            f.seek(start + 12)
            parse_basic_offsets(f)  # steps over the basic offset table to the first fragment
            n, positions = parse_fragments(f)
            if n != frames:
                raise SlideError(f"{n} pixel data fragments for {frames} frames (truncated, "
                                 "or frames split into fragments)", path)
            # Each fragment: item tag (4) + length (4) + bytes.
            item_at = np.asarray(positions, np.int64)
            lengths = np.empty(n, np.int64)
            for i, pos in enumerate(positions):
                f.seek(pos + 4)
                lengths[i] = int.from_bytes(f.read(4), "little")
            offsets = item_at + 8
            decode = _decode_jpeg if syntax == _JPEG_BASELINE else _decode_j2k
        elif syntax in _NATIVE:
            spp = int(ds.get("SamplesPerPixel", 3))
            frame_bytes = cols * rows * spp
            explicit = syntax != _NATIVE[0]
            data_at = start + (12 if explicit else 8)
            offsets = data_at + frame_bytes * np.arange(frames, dtype=np.int64)
            lengths = np.full(frames, frame_bytes, np.int64)
            decode = _decode_native(rows, cols, spp)
        else:
            raise SlideError(f"transfer syntax {syntax} is not read", path)
        size = os.fstat(f.fileno()).st_size
    if int(offsets[-1] + lengths[-1]) > size:
        raise SlideError(f"file is truncated: its frames run to byte "
                         f"{int(offsets[-1] + lengths[-1])} but the file has {size}", path)
    return FrameLevel(path, w, h, cols, rows, offsets, lengths, decode)


def _decode_jpeg(data: bytes) -> np.ndarray:
    return np.asarray(imagecodecs.jpeg8_decode(data))


def _decode_native(rows: int, cols: int, spp: int) -> Callable[[bytes], np.ndarray]:
    def decode(data: bytes) -> np.ndarray:
        return np.frombuffer(data, np.uint8).reshape(rows, cols, spp)
    return decode


def _decode_j2k(data: bytes) -> np.ndarray:
    return np.asarray(imagecodecs.jpeg2k_decode(data))


def _pixel_spacing_um(path: Path) -> tuple[float, float] | None:
    """``(x, y)`` µm/px from the shared functional groups' PixelSpacing (mm, row first)."""
    pydicom = _pydicom()

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    try:
        measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        row_mm, col_mm = (float(v) for v in measures.PixelSpacing)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None
    if row_mm <= 0 or col_mm <= 0:
        return None
    return col_mm * 1000, row_mm * 1000
