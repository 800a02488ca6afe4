"""The probability mosaic: a multiscale OME-Zarr 0.5 (Zarr v3) store of uint8 tumour probability.

Layout of ``mask.zarr``::

    zarr.json            group; attributes ``ome`` (NGFF 0.5 multiscales) and ``wsi_seg``
    0/                   working resolution (the model's MPP), probability * 255, chunked
    1/, 2/, ...          each a 2x mean of the level above, computed chunk by chunk
    classes/             only for a model with class maps: an OME-Zarr image of its own,
      zarr.json          axes (c, y, x), channel labels and colours in ``omero``
      0/, 1/, ...        (C, rows, cols) class probability * 255, the same levels and chunks

The tumour image stays 2-D whatever the model, so every reader of a binary mosaic reads a
multi-class one the same way; the classes are a second image in the same store (open
``mask.zarr/classes`` in napari or any OME-Zarr reader).

Frames. Mosaic pixel ``(row, col)`` of level ``L`` covers the level-0 rectangle whose top-left
corner is ``(origin_x0 + col * s, origin_y0 + row * s)`` with ``s = level0_px_per_px * 2**L``
(pixel edges, not centres). ``origin_*`` is the slide's ``openslide.bounds-*`` offset.
In micrometres, NGFF ``scale`` is ``mpp * 2**L`` and ``translation`` puts each level's pixel
centres where they belong, so napari overlays the levels exactly.

Writers own whole chunks (blocks are chunk-aligned), so no locks are needed; chunks that are
never written hold the fill value 0 and are not stored at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
import zarr.abc.store
import zarr.storage

from wsi_seg.core.geometry import PixelFrame
from wsi_seg.core.locations import OutputLocation, SlideURL

NGFF_VERSION = "0.5"


@dataclass(frozen=True)
class MosaicGeometry:
    """Where the mosaic sits on the slide.

    Attributes:
        height_px, width_px: level-0 mosaic size in working-resolution pixels.
        mpp: working resolution, micrometres per mosaic pixel at mosaic level 0.
        origin_x0, origin_y0: level-0 slide pixel of the top-left corner of mosaic pixel (0, 0).
        level0_px_per_px: level-0 slide pixels per mosaic pixel at mosaic level 0.
        chunk_px: chunk edge in pixels (same for every level).
    """

    height_px: int
    width_px: int
    mpp: float
    origin_x0: float
    origin_y0: float
    level0_px_per_px: float
    chunk_px: int = 1024

    def frame(self, level: int = 0) -> PixelFrame:
        """Where pyramid level ``level`` lies on the slide (chunked as stored)."""
        return PixelFrame(self.height_px, self.width_px, self.origin_x0, self.origin_y0,
                          self.level0_px_per_px, self.mpp / self.level0_px_per_px,
                          self.chunk_px).halved(level)

    def level_shape(self, level: int) -> tuple[int, int]:
        """Shape (rows, cols) of pyramid level ``level``: ceil-halved once per level."""
        frame = self.frame(level)
        return frame.height_px, frame.width_px

    def level_scale(self, level: int) -> float:
        """Level-0 slide pixels per pixel of pyramid level ``level``."""
        return self.frame(level).px_x0


def n_levels_for(geom: MosaicGeometry, min_size_px: int = 256) -> int:
    """Pyramid depth: halve until the longer side fits ``min_size_px`` (at least one level)."""
    n = 1
    while max(geom.level_shape(n - 1)) > min_size_px:
        n += 1
    return n


#: The class image's sub-group inside ``mask.zarr``.
CLASSES = "classes"


@dataclass(frozen=True)
class MosaicClass:
    """One channel of the class image: its name (QuPath class) and colour ``(r, g, b)``."""

    name: str
    color: tuple[int, int, int]


def _ome_attrs(geom: MosaicGeometry, n_levels: int, name: str, channels: bool = False
               ) -> dict[str, Any]:
    """NGFF 0.5 multiscales of a ``(y, x)`` image, or of a ``(c, y, x)`` one (the channel
    axis takes scale 1 and no shift)."""
    datasets = []
    for level in range(n_levels):
        scale_um = geom.mpp * 2**level
        shift_um = (2**level - 1) / 2 * geom.mpp  # centre of a 2^L block of level-0 pixels
        scale, shift = [scale_um, scale_um], [shift_um, shift_um]
        if channels:
            scale, shift = [1.0, *scale], [0.0, *shift]
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": shift},
                ],
            }
        )
    axes: list[dict[str, str]] = [
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    if channels:
        axes.insert(0, {"name": "c", "type": "channel"})
    return {
        "version": NGFF_VERSION,
        "multiscales": [
            {
                "name": name,
                "axes": axes,
                "datasets": datasets,
                "type": "mean",
            }
        ],
    }


def _omero(classes: tuple[MosaicClass, ...]) -> dict[str, Any]:
    """The transitional ``omero`` block: what napari-ome-zarr and other viewers read for
    channel labels and colours (NGFF has no core field for them)."""
    return {"channels": [
        {"label": c.name, "color": "{:02X}{:02X}{:02X}".format(*c.color), "active": True,
         "coefficient": 1.0, "family": "linear", "inverted": False,
         "window": {"min": 0.0, "max": 255.0, "start": 0.0, "end": 255.0}}
        for c in classes]}


def mosaic_store(path: str | Path | SlideURL, read_only: bool = False) -> zarr.abc.store.Store:
    """The zarr store of a mosaic: a folder on local disk, or a prefix in an object store
    written through fsspec (chunk by chunk, each a PUT: the same bytes as on disk)."""
    if isinstance(path, SlideURL):
        return zarr.storage.FsspecStore.from_url(path.url, read_only=read_only)
    return zarr.storage.LocalStore(str(path), read_only=read_only)


def create_mosaic(
    path: str | Path | SlideURL,
    geom: MosaicGeometry,
    *,
    provenance: dict[str, Any] | None = None,
    name: str = "tumour probability",
    n_levels: int | None = None,
    classes: tuple[MosaicClass, ...] = (),
) -> zarr.Group:
    """Create an empty mosaic store (all levels, fill value 0) and return its group.

    ``provenance`` is stored under the ``wsi_seg`` attribute beside the geometry. With
    ``classes``, the store also holds the class image (``classes/``, one channel each).
    Overwrites whatever was at ``path``.
    """
    n = n_levels or n_levels_for(geom)
    group = zarr.open_group(store=mosaic_store(path), mode="w", zarr_format=3)
    for level in range(n):
        group.create_array(
            name=str(level),
            shape=geom.level_shape(level),
            chunks=(geom.chunk_px, geom.chunk_px),
            dtype="uint8",
            fill_value=0,
            dimension_names=("y", "x"),
        )
    meta: dict[str, Any] = {"geometry": asdict(geom), "n_levels": n, **(provenance or {})}
    if classes:
        # Where the class image is: NGFF links nothing but labels from an image.
        meta["class_image"] = CLASSES
        meta["classes"] = [asdict(c) for c in classes]
        _create_class_image(group, geom, n, classes)
    group.attrs.update({"ome": _ome_attrs(geom, n, name), "wsi_seg": meta})
    return group


def _create_class_image(group: zarr.Group, geom: MosaicGeometry, n: int,
                        classes: tuple[MosaicClass, ...]) -> None:
    sub = group.create_group(CLASSES)
    for level in range(n):
        sub.create_array(
            name=str(level),
            shape=(len(classes), *geom.level_shape(level)),
            chunks=(1, geom.chunk_px, geom.chunk_px),
            dtype="uint8",
            fill_value=0,
            dimension_names=("c", "y", "x"),
        )
    ome = _ome_attrs(geom, n, "class probability", channels=True)
    sub.attrs.update({"ome": {**ome, "omero": _omero(classes)}})


@dataclass(frozen=True)
class Mosaic:
    """An opened mosaic store: its group, geometry and provenance."""

    path: OutputLocation
    group: zarr.Group
    geom: MosaicGeometry
    n_levels: int
    provenance: dict[str, Any]
    classes: tuple[MosaicClass, ...] = ()

    def level(self, level: int) -> zarr.Array:
        """The uint8 probability array of pyramid level ``level`` (0 = working resolution)."""
        arr = self.group[str(level)]
        assert isinstance(arr, zarr.Array)
        return arr

    def class_level(self, level: int) -> zarr.Array:
        """The ``(C, rows, cols)`` uint8 class probabilities of pyramid level ``level``."""
        arr = self.group[f"{CLASSES}/{level}"]
        assert isinstance(arr, zarr.Array)
        return arr

    def class_map(self, level: int, index: int) -> ChannelView:
        """Class ``index``'s probabilities at ``level`` as a 2-D array-like (for tracing
        and scoring, which read it in bands)."""
        return ChannelView(self.class_level(level), index)

    def chunks(self, level: int) -> Iterator[tuple[int, int, int, int]]:
        """Chunk windows ``(row0, col0, rows, cols)`` of a level, in mosaic pixels."""
        rows, cols = self.geom.level_shape(level)
        c = self.geom.chunk_px
        for row0 in range(0, rows, c):
            for col0 in range(0, cols, c):
                yield row0, col0, min(c, rows - row0), min(c, cols - col0)


@dataclass(frozen=True)
class ChannelView:
    """One channel of a ``(C, rows, cols)`` array, read as a 2-D array (a zarr array has no
    views): ``view[rows, cols]`` reads only that channel's chunks."""

    array: Any
    index: int

    @property
    def shape(self) -> tuple[int, int]:
        _, rows, cols = self.array.shape
        return int(rows), int(cols)

    def __getitem__(self, key: Any) -> np.ndarray:
        rows, cols = key
        return np.asarray(self.array[self.index, rows, cols])


def open_mosaic(path: str | Path | SlideURL, mode: Literal["r", "r+"] = "r") -> Mosaic:
    """Open a mosaic written by :func:`create_mosaic` (on local disk or in a store)."""
    group = zarr.open_group(store=mosaic_store(path, read_only=mode == "r"),
                            mode=mode, zarr_format=3)
    meta: dict[str, Any] = dict(group.attrs["wsi_seg"])  # type: ignore[arg-type]
    geom = MosaicGeometry(**meta.pop("geometry"))
    n = int(meta.pop("n_levels"))
    classes = tuple(MosaicClass(str(c["name"]), (int(c["color"][0]), int(c["color"][1]),
                                                 int(c["color"][2])))
                    for c in meta.get("classes", ()))
    return Mosaic(path if isinstance(path, SlideURL) else Path(path), group, geom, n, meta,
                  classes)


def record_threshold(mosaic: Mosaic, threshold: float) -> None:
    """Record in the mosaic's provenance the tumour probability its polygons were drawn at
    (``wsi_seg.threshold``), so that scoring the mosaic later uses the same one."""
    meta = dict(mosaic.group.attrs["wsi_seg"])  # type: ignore[arg-type]
    meta["threshold"] = threshold
    mosaic.group.attrs["wsi_seg"] = meta
    mosaic.provenance["threshold"] = threshold


def mosaic_threshold(mosaic: Mosaic) -> float | None:
    """The threshold a run drew this mosaic's polygons at: its provenance's, else (a mosaic
    written before it was recorded) its model card's; None when neither says."""
    for value in (mosaic.provenance.get("threshold"),
                  (mosaic.provenance.get("model") or {}).get("card", {}).get("threshold")):
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1:
            return float(value)
    return None


def downsample2_mean(block: np.ndarray) -> np.ndarray:
    """2x2 mean of a uint8 array, rounding half up; an odd last row/column averages what exists.

    This is the pyramid rule: an output pixel is the mean of the (up to four) input pixels it
    covers, so each level equals a direct 2^L-mean of level 0 up to rounding.
    """
    h, w = block.shape
    if h % 2 == 0 and w % 2 == 0:
        # Fast path (every full chunk): four strided views summed in uint16, (s + 2) >> 2 is
        # the same half-up rounding as below with a count of 4.
        # In place in one uint16 buffer (no temporary per addition).
        s = block[0::2, 0::2].astype(np.uint16)
        s += block[1::2, 0::2]
        s += block[0::2, 1::2]
        s += block[1::2, 1::2]
        s += 2
        s >>= 2
        return s.astype(np.uint8)
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    total = np.zeros((h2 * 2, w2 * 2), dtype=np.uint32)
    count = np.zeros_like(total, dtype=np.uint8)
    total[:h, :w] = block
    count[:h, :w] = 1
    sums = total.reshape(h2, 2, w2, 2).sum(axis=(1, 3))
    counts = count.reshape(h2, 2, w2, 2).sum(axis=(1, 3), dtype=np.uint32)
    return ((sums * 2 + counts) // (2 * counts)).astype(np.uint8)


def build_level(mosaic: Mosaic, level: int) -> None:
    """Compute pyramid level ``level`` (>= 1) from ``level - 1``, one output chunk at a time.

    Memory is one 2x2-chunk window of the finer level. Output chunks whose source is all zero
    are skipped (they stay at the fill value), which keeps sparse slides cheap.
    """
    pairs: list[tuple[Any, Any]] = [(mosaic.level(level - 1), mosaic.level(level))]
    if mosaic.classes:
        src, dst = mosaic.class_level(level - 1), mosaic.class_level(level)
        pairs += [(ChannelView(src, c), _ChannelWriter(dst, c))
                  for c in range(len(mosaic.classes))]
    for src, dst in pairs:
        for row0, col0, rows, cols in mosaic.chunks(level):
            window = np.asarray(src[2 * row0 : 2 * (row0 + rows),
                                    2 * col0 : 2 * (col0 + cols)])
            if not window.any():
                continue
            dst[row0 : row0 + rows, col0 : col0 + cols] = downsample2_mean(window)


@dataclass(frozen=True)
class _ChannelWriter:
    """Writes one channel of a ``(C, rows, cols)`` zarr array through 2-D indices."""

    array: Any
    index: int

    def __setitem__(self, key: Any, values: np.ndarray) -> None:
        rows, cols = key
        self.array[self.index, rows, cols] = values


def block_levels(geom: MosaicGeometry, n_levels: int, block_px: int) -> int:
    """How many pyramid levels above 0 a block task can write by itself.

    Level ``L`` of a block is chunk-aligned (so no other block writes its chunks) while
    ``block_px / 2**L`` is a multiple of the chunk edge; beyond that levels are left to
    :func:`build_pyramid`.
    """
    levels = 0
    while levels + 1 < n_levels and block_px % (geom.chunk_px * 2 ** (levels + 1)) == 0:
        levels += 1
    return levels


def write_block(mosaic: Mosaic, yw: int, xw: int, values: np.ndarray, levels: int) -> None:
    """Write a chunk-aligned block to level 0 and its own part of levels 1..``levels``.

    ``values`` is ``(h, w)`` uint8 tumour probability, or ``(h, w, 1 + C)`` with the class
    probabilities after it (a mosaic with classes). Uses the pyramid rule
    (:func:`downsample2_mean`) on the block alone, which equals what :func:`build_level`
    computes, because the block's 2x2 groups never straddle its border.
    """
    if values.ndim == 3:
        if values.shape[2] != 1 + len(mosaic.classes):
            raise ValueError(f"{values.shape[2]} maps for a mosaic of "
                             f"{len(mosaic.classes)} classes")
        _write_levels(mosaic.class_level, yw, xw, np.moveaxis(values[..., 1:], -1, 0), levels)
        values = values[..., 0]
    _write_levels(mosaic.level, yw, xw, values, levels)


def _write_levels(array_of: Any, yw: int, xw: int, values: np.ndarray, levels: int) -> None:
    """``values`` (``(h, w)``, or ``(C, h, w)``) into level 0 and levels 1..``levels``."""
    for level in range(levels + 1):
        if level:
            values = (downsample2_mean(values) if values.ndim == 2 else
                      np.stack([downsample2_mean(v) for v in values]))
        _write_chunks(array_of(level), yw >> level, xw >> level, values)


def _write_chunks(array: zarr.Array, y: int, x: int, values: np.ndarray) -> None:
    """``values`` at chunk-aligned ``(y, x)``, leaving out the chunks that are all zero (the
    fill value), as zarr itself would; each run of non-empty chunks along a chunk row is
    one write (zarr encodes a call's chunks concurrently, and each call has its overhead).

    Zarr decides emptiness itself by comparing each chunk with a full array of the fill
    value, which cost ~70 % of a block's write time (``np.array_equal``, with an allocation
    per chunk); ``any()`` decides the same without either, so zarr is told not to check
    again. The chunk files are the same: a chunk is written exactly when it holds a non-zero
    value. A redone block (resume) writes the same values, so a chunk left out was never
    written.
    """
    fast = array.with_config({"write_empty_chunks": True})
    edge = array.chunks[-1]
    h, w = values.shape[-2:]
    for index in np.ndindex(values.shape[:-2]):  # each channel of a (C, h, w) block
        plane = values[index]
        for r0 in range(0, h, edge):
            band = plane[r0 : r0 + edge]
            full = [bool(band[:, c0 : c0 + edge].any()) for c0 in range(0, w, edge)]
            for start, stop in _runs(full):
                c0, c1 = start * edge, min(stop * edge, w)
                fast[(*index, slice(y + r0, y + r0 + band.shape[0]),
                      slice(x + c0, x + c1))] = band[:, c0:c1]


def _runs(flags: list[bool]) -> list[tuple[int, int]]:
    """``[start, stop)`` of each run of True in ``flags``: ``_runs([1, 1, 0, 1])`` is
    ``[(0, 2), (3, 4)]``."""
    runs: list[tuple[int, int]] = []
    start = None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i))
            start = None
    return runs


def build_pyramid(mosaic: Mosaic, start_level: int = 1) -> None:
    """Fill levels ``start_level``..n-1 from the level below, chunk by chunk (bounded memory)."""
    for level in range(max(1, start_level), mosaic.n_levels):
        build_level(mosaic, level)
