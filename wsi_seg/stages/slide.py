"""Read whole-slide images by microns per pixel.

Every read names its coordinate space and its resolution:

* :meth:`Slide.read_x0` takes a region in **level-0 pixels** (``x0, y0, w0, h0``);
* :meth:`Slide.read_w` takes a region in **working-resolution pixels** (``xw, yw, w_px, h_px``)
  of the image the slide would be at ``mpp`` micrometres per pixel.

The working-resolution image starts at the slide's ``openslide.bounds-x/-y`` offset (the
scanned area; level 0 when absent) and working pixel ``xw`` covers the level-0 interval
``[origin_x0 + xw * f, origin_x0 + (xw + 1) * f)`` with ``f = mpp / slide_mpp``. The reader
picks the coarsest pyramid level whose resolution is not coarser than the request and resizes
the remainder (box mean for integer factors, antialiased bilinear otherwise), so the value of a
working pixel depends only on its position, never on the region it was read with: that is what
makes block-wise inference equal to one in-memory pass. Large regions are read as tiles of
about :data:`TILE_SRC_PX` source pixels, concurrently (:mod:`wsi_seg.stages.read_pool`);
position-exactness makes the tiles join without seams. Levels of TIFF-family slides are decoded
by tifffile where that gives exactly OpenSlide's pixels (:mod:`wsi_seg.stages.tiff_reader`).
Level choice and the tile grid are arithmetic in :mod:`wsi_seg.stages.slide_levels`; finding
slide files, their MPP and damage checks live in :mod:`wsi_seg.stages.slide_files`.

Regions past the slide's edge, and transparent (unscanned) areas inside it, are filled with
white (255, 255, 255), the colour of empty glass, so tissue detection and models see background.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import cv2
import numpy as np
import openslide
from PIL import Image

from wsi_seg.core.errors import SlideError
from wsi_seg.core.files import check_regular
from wsi_seg.core.locations import SlideLocation, SlideURL, slide_location
from wsi_seg.core.naming import slide_stem
from wsi_seg.stages.dicom_reader import DicomSlide, is_dicom, is_dicom_folder, open_dicom_series
from wsi_seg.stages.read_pool import run_jobs
from wsi_seg.stages.slide_files import (
    MPP_RANGE_UM,
    SLIDE_SUFFIXES,
    MissingMppError,
    check_mpp,
    describe_file,
    find_slides,
    mpp_from_properties,
    tiff_damage,
)
from wsi_seg.stages.slide_levels import (
    EXACT_TOL,
    REMAP_SUBPX,
    TILE_SRC_PX,
    UPSAMPLE_TOL,
    LevelChoice,
    choose_level,
    grid_cuts,
    on_remap_grid,
    tile_step_px,
)
from wsi_seg.stages.tiff_reader import TiffLevels, open_tiff_levels

# Names other modules import from here; their code lives in slide_levels and slide_files.
__all__ = [
    "BACKGROUND_RGB", "EXACT_TOL", "MPP_RANGE_UM", "PLAIN_IMAGE_SUFFIXES", "REMAP_SUBPX",
    "SLIDE_SUFFIXES", "TILE_SRC_PX", "UPSAMPLE_TOL", "LevelChoice", "MissingMppError",
    "RowsRead", "Slide", "check_mpp", "choose_level", "describe_file", "find_slides",
    "grid_cuts", "on_remap_grid", "open_slide", "tile_step_px",
]

PLAIN_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
BACKGROUND_RGB = 255

Image.MAX_IMAGE_PIXELS = None  # plain images are opened on purpose; their size is the user's choice


class Slide:
    """A whole-slide image (anything OpenSlide opens, or a plain PNG/JPEG/TIFF image).

    Use :func:`open_slide` to construct. Thread-safe for reads (OpenSlide handles are, since
    OpenSlide 3.3.1); ``close`` must wait until no read is in flight.
    """

    def __init__(self, path: SlideLocation, osr: openslide.AbstractSlide, mpp: float) -> None:
        self.path = path
        self._osr = osr
        self.mpp = mpp
        props = osr.properties
        w, h = osr.dimensions
        self.dimensions: tuple[int, int] = (int(w), int(h))
        bx = int(props.get(openslide.PROPERTY_NAME_BOUNDS_X, 0) or 0)
        by = int(props.get(openslide.PROPERTY_NAME_BOUNDS_Y, 0) or 0)
        bw = int(props.get(openslide.PROPERTY_NAME_BOUNDS_WIDTH, w - bx) or w - bx)
        bh = int(props.get(openslide.PROPERTY_NAME_BOUNDS_HEIGHT, h - by) or h - by)
        #: level-0 rectangle that holds image data (x0, y0, w0, h0)
        self.bounds_x0: tuple[int, int, int, int] = (bx, by, bw, bh)
        #: faster decoder for the levels where it gives OpenSlide's pixels (open_slide sets it)
        self._tiff: TiffLevels | None = None

    # -- metadata -------------------------------------------------------------------------
    @property
    def origin_x0(self) -> int:
        """Level-0 x of working pixel column 0 (the bounds offset)."""
        return self.bounds_x0[0]

    @property
    def origin_y0(self) -> int:
        """Level-0 y of working pixel row 0 (the bounds offset)."""
        return self.bounds_x0[1]

    @property
    def vendor(self) -> str:
        return str(self._osr.properties.get(openslide.PROPERTY_NAME_VENDOR, "image"))

    @property
    def level_count(self) -> int:
        return int(self._osr.level_count)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(w), int(h)) for w, h in self._osr.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self._osr.level_downsamples)

    @property
    def objective_power(self) -> float | None:
        value = self._osr.properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    @property
    def properties(self) -> Mapping[str, str]:
        return self._osr.properties

    @property
    def associated_images(self) -> tuple[str, ...]:
        return tuple(sorted(self._osr.associated_images))

    @property
    def stem(self) -> str:
        """The file name without its last suffix (:func:`wsi_seg.core.naming.slide_stem`)."""
        return slide_stem(self.path)

    # -- geometry ---------------------------------------------------------------------------
    def level0_px_per_px(self, mpp: float) -> float:
        """Level-0 pixels per working pixel at ``mpp`` µm/px."""
        return mpp / self.mpp

    def size_w(self, mpp: float) -> tuple[int, int]:
        """Size ``(w_px, h_px)`` of the working-resolution image at ``mpp`` µm/px.

        Whole working pixels inside the bounds; a partial last pixel is dropped.
        """
        f = self.level0_px_per_px(mpp)
        _, _, bw, bh = self.bounds_x0
        return (max(1, int(bw / f + 1e-6)), max(1, int(bh / f + 1e-6)))

    def choose_level(self, mpp: float) -> LevelChoice:
        """The pyramid level that serves reads at ``mpp`` µm/px (see :func:`choose_level`)."""
        try:
            return choose_level(self.level_downsamples, self.level0_px_per_px(mpp))
        except ValueError:
            raise SlideError(
                f"cannot serve {mpp:g} µm/px: the finest level is {self.mpp:g} µm/px", self.path
            ) from None

    # -- reading ----------------------------------------------------------------------------
    def read_w(self, xw: int, yw: int, w_px: int, h_px: int, mpp: float,
               threads: int | None = None) -> np.ndarray:
        """Read working-resolution pixels ``[xw, xw + w_px) x [yw, yw + h_px)`` at ``mpp``.

        Returns RGB uint8 of shape ``(h_px, w_px, 3)``; outside the slide is white. Regions
        of more than one tile (:data:`TILE_SRC_PX` source pixels a side) read their tiles on up
        to ``threads`` threads (default :data:`wsi_seg.stages.read_pool.READ_THREADS`); the pixels
        are the same for any ``threads``.
        """
        if w_px <= 0 or h_px <= 0:
            raise ValueError(f"empty region {w_px}x{h_px}")
        choice = self.choose_level(mpp)
        f = self.level0_px_per_px(mpp)
        step_px = tile_step_px(choice.scale)
        cols, rows = grid_cuts(xw, w_px, step_px), grid_cuts(yw, h_px, step_px)
        if len(cols) == 1 and len(rows) == 1:
            return self._read_w_tile(choice, f, xw, yw, w_px, h_px)
        out = np.empty((h_px, w_px, 3), dtype=np.uint8)

        def job(tx: int, ty: int, tw: int, th: int) -> Callable[[], None]:
            def run() -> None:
                out[ty - yw : ty - yw + th, tx - xw : tx - xw + tw] = self._read_w_tile(
                    choice, f, tx, ty, tw, th)
            return run

        run_jobs([job(tx, ty, tw, th) for ty, th in rows for tx, tw in cols], threads)
        return out

    def read_w_rows(self, xw: int, yw: int, w_px: int, h_px: int, mpp: float) -> RowsRead:
        """:meth:`read_w` of the same region, read one band of rows at a time on demand.

        The bands are the rows of :meth:`read_w`'s own tile grid, so the pixels equal one
        :meth:`read_w` call bit for bit; work on the first rows can start (windows go to the
        device) while the last rows are still unread.
        """
        if w_px <= 0 or h_px <= 0:
            raise ValueError(f"empty region {w_px}x{h_px}")
        step_px = tile_step_px(self.choose_level(mpp).scale)

        def read_band(band_yw: int, band_h_px: int) -> np.ndarray:
            return self.read_w(xw, band_yw, w_px, band_h_px, mpp)

        return RowsRead(np.empty((h_px, w_px, 3), np.uint8), yw, grid_cuts(yw, h_px, step_px),
                        read_band)

    def _read_w_tile(self, choice: LevelChoice, f: float, xw: int, yw: int, w_px: int,
                     h_px: int) -> np.ndarray:
        """One tile of :meth:`read_w` (source small enough for one OpenSlide call)."""
        d, s = choice.downsample, choice.scale
        # Working pixel edge xw sits at level coordinate (origin + xw * f) / d.
        xl = (self.origin_x0 + xw * f) / d
        yl = (self.origin_y0 + yw * f) / d
        if s == 1.0:
            return self._read_level(choice.level, round(xl), round(yl), w_px, h_px)
        k = round(s)
        if abs(s - k) < EXACT_TOL:
            # Integer factor: box mean over k x k level pixels on a grid fixed by position.
            lx, ly = round(xl), round(yl)
            raw = self._read_level(choice.level, lx, ly, w_px * k, h_px * k)
            return cv2.resize(raw, (w_px, h_px), interpolation=cv2.INTER_AREA)
        # Sample positions from the absolute working index (xw + j), so a pixel's value is the
        # same in every region that holds it (bit for bit: block reads equal one big read).
        cols = xw + np.arange(w_px, dtype=np.float64)
        rows = yw + np.arange(h_px, dtype=np.float64)
        u = (self.origin_x0 + (cols + 0.5) * f) / d - 0.5
        v = (self.origin_y0 + (rows + 0.5) * f) / d - 0.5
        out = self._read_resampled(choice.level, u, v, s)
        # Working pixels whose footprint lies wholly outside the slide are white, exactly as
        # in the other paths (the antialiasing blur would otherwise bleed tissue into them).
        w0, h0 = self.dimensions
        out[:, (self.origin_x0 + (cols + 1) * f <= 0) | (self.origin_x0 + cols * f >= w0)] = \
            BACKGROUND_RGB
        out[(self.origin_y0 + (rows + 1) * f <= 0) | (self.origin_y0 + rows * f >= h0)] = \
            BACKGROUND_RGB
        return out

    def read_x0(self, x0: float, y0: float, w0: float, h0: float, mpp: float,
                threads: int | None = None) -> np.ndarray:
        """Read the level-0 rectangle ``(x0, y0, w0, h0)`` at ``mpp`` µm/px.

        The output has ``round(w0 / f) x round(h0 / f)`` pixels with ``f = mpp / slide_mpp``
        and its top-left pixel starts at ``(x0, y0)``.
        """
        f = self.level0_px_per_px(mpp)
        xw = (x0 - self.origin_x0) / f
        yw = (y0 - self.origin_y0) / f
        w_px, h_px = max(1, round(w0 / f)), max(1, round(h0 / f))
        if abs(xw - round(xw)) < 1e-6 and abs(yw - round(yw)) < 1e-6:
            return self.read_w(round(xw), round(yw), w_px, h_px, mpp, threads)
        choice = self.choose_level(mpp)
        d, s = choice.downsample, choice.scale
        u = (x0 + (np.arange(w_px) + 0.5) * f) / d - 0.5
        v = (y0 + (np.arange(h_px) + 0.5) * f) / d - 0.5
        step_px = tile_step_px(s)
        out = np.empty((h_px, w_px, 3), dtype=np.uint8)

        def job(c0: int, r0: int) -> Callable[[], None]:
            def run() -> None:
                out[r0 : r0 + step_px, c0 : c0 + step_px] = self._read_resampled(
                    choice.level, u[c0 : c0 + step_px], v[r0 : r0 + step_px], s)
            return run

        run_jobs([job(c0, r0) for r0 in range(0, h_px, step_px)
                  for c0 in range(0, w_px, step_px)], threads)
        return out

    def thumbnail(self, max_px: int = 1024, threads: int | None = None
                  ) -> tuple[np.ndarray, float]:
        """RGB thumbnail of the bounds whose longer side is at most ``max_px``.

        Returns the image and its scale in level-0 pixels per thumbnail pixel; thumbnail pixel
        (row, col) covers level-0 ``origin + (col, row) * scale``.
        """
        _, _, bw, bh = self.bounds_x0
        mpp = self.mpp * max(max(bw, bh) / max_px, 1.0)
        w_px, h_px = self.size_w(mpp)
        # read_w reads in tiles, so even a slide without a coarse level costs only the
        # thumbnail's memory plus one tile's source.
        return self.read_w(0, 0, w_px, h_px, mpp, threads), mpp / self.mpp

    def _read_level(self, level: int, xl: int, yl: int, w: int, h: int) -> np.ndarray:
        """Read ``w x h`` pixels of ``level`` at level coordinates ``(xl, yl)``, white-padded."""
        lw, lh = self.level_dimensions[level]
        # OpenSlide pads outside with transparency, but clamping first avoids reading (and
        # allocating) huge empty areas for regions far outside.
        cx0, cy0 = max(xl, 0), max(yl, 0)
        cx1, cy1 = min(xl + w, lw), min(yl + h, lh)
        if cx1 <= cx0 or cy1 <= cy0:
            return np.full((h, w, 3), BACKGROUND_RGB, dtype=np.uint8)
        if self._tiff is not None and level in self._tiff.levels:
            try:
                rgb = self._tiff.read(level, cx0, cy0, cx1 - cx0, cy1 - cy0)
            except Exception as exc:  # a corrupt tile: the same one-line error as OpenSlide's
                raise SlideError(f"cannot read pixels ({exc})", self.path) from None
        else:
            rgb = self._read_openslide(level, cx0, cy0, cx1 - cx0, cy1 - cy0)
        if (cx0, cy0, cx1, cy1) == (xl, yl, xl + w, yl + h):
            return rgb  # wholly inside: skip a white canvas and a copy (~15 % of a read)
        out = np.full((h, w, 3), BACKGROUND_RGB, dtype=np.uint8)
        out[cy0 - yl : cy1 - yl, cx0 - xl : cx1 - xl] = rgb
        return out

    def _read_openslide(self, level: int, xl: int, yl: int, w: int, h: int) -> np.ndarray:
        """OpenSlide's RGB of a rectangle inside ``level``, flattened on white."""
        if isinstance(self._osr, DicomSlide):  # RGB at level coordinates already: no RGBA trip
            return self._osr.read_rgb(level, xl, yl, w, h)
        d = self.level_downsamples[level]
        try:
            region = self._osr.read_region((round(xl * d), round(yl * d)), level, (w, h))
        except openslide.OpenSlideError as exc:
            raise SlideError(f"cannot read pixels ({exc})", self.path) from None
        return _flatten_on_white(np.asarray(region))

    @property
    def tiff_levels(self) -> tuple[int, ...]:
        """Levels decoded by tifffile instead of OpenSlide (same pixels; see tiff_reader)."""
        return tuple(sorted(self._tiff.levels)) if self._tiff is not None else ()

    def _read_resampled(self, level: int, u: np.ndarray, v: np.ndarray, s: float
                        ) -> np.ndarray:
        """General resampling: antialias blur, then bilinear at level coordinates.

        Output pixel ``(i, j)`` is the (blurred) level image sampled at level pixel-centre
        coordinates ``(v[i], u[j])`` rounded to 1/32 px. The blur is exact away from the read's
        border (the margin). ``cv2.remap`` weighs neighbours by the position's fraction on its
        1/32 grid; rounding in absolute coordinates first, and giving remap region-relative maps
        that float32 holds exactly, makes that fraction, and so each output pixel, independent
        of the region read. The source must stay under remap's 32767 px (see TILE_SRC_PX).
        """
        qx, qy = on_remap_grid(u), on_remap_grid(v)
        margin = math.ceil(2 * s) + 2
        rx = int(qx[0]) // REMAP_SUBPX - margin
        ry = int(qy[0]) // REMAP_SUBPX - margin
        rw = int(qx[-1]) // REMAP_SUBPX - rx + margin + 2
        rh = int(qy[-1]) // REMAP_SUBPX - ry + margin + 2
        raw = self._read_level(level, rx, ry, rw, rh)
        if s > 1:
            # Blur before decimating so fine texture does not alias; the margin keeps the
            # blurred interior identical to a blur of the whole slide.
            sigma = 0.5 * math.sqrt(s * s - 1)
            raw = cv2.GaussianBlur(raw, (0, 0), sigmaX=sigma, sigmaY=sigma,
                                   borderType=cv2.BORDER_REPLICATE)
        map_x = ((qx - rx * REMAP_SUBPX) / REMAP_SUBPX).astype(np.float32)
        map_y = ((qy - ry * REMAP_SUBPX) / REMAP_SUBPX).astype(np.float32)
        return cv2.remap(raw, np.tile(map_x, (len(map_y), 1)),
                         np.tile(map_y[:, None], (1, len(map_x))),
                         interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def close(self) -> None:
        if self._tiff is not None:
            self._tiff.close()
            self._tiff = None
        self._osr.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"Slide({self.path.name}, {w}x{h}, {self.level_count} levels, {self.mpp:g} µm/px)"


class RowsRead:
    """A region's pixels filled band by band (:meth:`Slide.read_w_rows`).

    ``image`` holds the region; rows below :attr:`rows_ready` are read. :meth:`ensure` reads
    on (in the calling thread, each band's tiles concurrently) until a row is available;
    :attr:`read_s` adds up the seconds spent reading.
    """

    def __init__(self, image: np.ndarray, yw: int, bands: list[tuple[int, int]],
                 read_band: Callable[[int, int], np.ndarray]) -> None:
        self.image = image
        self.rows_ready = 0
        self.read_s = 0.0
        self._yw = yw
        self._bands = iter(bands)
        self._read_band = read_band

    def ensure(self, rows_px: int) -> None:
        """Read bands until rows ``[0, rows_px)`` of :attr:`image` are filled."""
        t = time.perf_counter()
        while self.rows_ready < min(rows_px, self.image.shape[0]):
            band_yw, band_h_px = next(self._bands)
            row = band_yw - self._yw
            self.image[row : row + band_h_px] = self._read_band(band_yw, band_h_px)
            self.rows_ready = row + band_h_px
        self.read_s += time.perf_counter() - t


def _flatten_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite premultiplied-free RGBA from OpenSlide onto white (transparent = glass).

    Returns a new C-contiguous array (what OpenCV wants), never a view of ``rgba``.
    """
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)
    a = alpha[..., None].astype(np.uint16)
    return ((rgb.astype(np.uint16) * a + BACKGROUND_RGB * (255 - a) + 127) // 255).astype(np.uint8)


def open_slide(path: str | os.PathLike[str] | SlideURL, mpp: float | None = None) -> Slide:
    """Open a slide (any OpenSlide format, a DICOM series) or a plain image as a one-level slide.

    Args:
        path: slide file; for DICOM, the series' folder or any one of its files. An
            ``s3://`` URL (a :class:`SlideURL`) is read in place
            (:mod:`wsi_seg.stages.remote_slide`: SVS, tiled TIFF, DICOM).
        mpp: level-0 resolution in µm/px. Overrides the slide's own metadata; required for
            plain images and slides without MPP.

    Raises:
        SlideError: missing, unreadable or unsupported file, missing or implausible MPP.
    """
    loc = slide_location(path)
    if isinstance(loc, SlideURL):
        from wsi_seg.stages.remote_slide import open_remote

        return _finish_open(loc, open_remote(loc), mpp)
    p = loc
    if not p.exists():
        raise SlideError("no such file", p)
    if p.is_dir() and not is_dicom_folder(p):
        raise SlideError("is a directory, not a slide", p)
    if not p.is_dir():
        check_regular(p, SlideError, "slide")  # a FIFO or device blocks or never ends when read
        if p.stat().st_size == 0:
            raise SlideError("file is empty", p)
    if p.is_dir() or is_dicom(p):
        return _finish_open(p, open_dicom_series(p), mpp)
    osr: openslide.AbstractSlide
    try:
        fmt = openslide.OpenSlide.detect_format(str(p))
        damage = None if fmt is not None else tiff_damage(p)
        if fmt is not None:
            osr = openslide.OpenSlide(str(p))
        elif damage is not None:
            raise SlideError(damage, p)
        elif p.suffix.lower() in PLAIN_IMAGE_SUFFIXES | {".tif", ".tiff"}:
            osr = openslide.ImageSlide(str(p))
        else:
            raise SlideError(
                "not a slide OpenSlide can open and not a PNG/JPEG/TIFF image", p
            )
    except openslide.OpenSlideError as exc:
        raise SlideError(f"OpenSlide cannot open it ({exc})", p) from None
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for broken images
        raise SlideError(f"cannot read image ({exc})", p) from None
    return _finish_open(p, osr, mpp)


def _finish_open(p: SlideLocation, osr: openslide.AbstractSlide, mpp: float | None) -> Slide:
    """The MPP, a probe read and the TIFF fast path: what every opened slide goes through."""
    if mpp is not None:
        check_mpp(mpp, p, "--mpp")
        level0_mpp = mpp
    else:
        found = mpp_from_properties(osr.properties)
        if found is None:
            osr.close()
            raise MissingMppError("slide has no MPP metadata; give its level-0 µm/px (--mpp, or "
                                  "--missing-mpp for only the slides that lack it)",
                                  p)
        try:
            level0_mpp = check_mpp(found, p, "slide MPP")
        except SlideError:
            osr.close()
            raise
    slide = Slide(p, osr, level0_mpp)
    _probe(slide)
    if isinstance(p, Path):  # a slide from the store decodes its tiles with tifffile already
        slide._tiff = open_tiff_levels(p, osr, slide._read_openslide)
    return slide


def _probe(slide: Slide) -> None:
    """Decode one small region now, so a truncated file fails at open, not mid-run."""
    w, h = slide.level_dimensions[-1]
    try:
        slide._osr.read_region((0, 0), slide.level_count - 1, (min(w, 64), min(h, 64)))
        w0, h0 = slide.dimensions
        slide._osr.read_region((max(0, w0 - 64), max(0, h0 - 64)), 0, (64, 64))
    except openslide.OpenSlideError as exc:
        slide.close()
        raise SlideError(f"slide data is corrupt or truncated ({exc})", slide.path) from None
    except SlideError:  # the DICOM reader's own one line (a frame that does not decode)
        slide.close()
        raise


