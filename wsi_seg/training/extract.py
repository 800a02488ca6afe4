"""Training data from a slide and its tumour annotation.

``extract_training_data`` cuts a slide, read at a chosen resolution (µm/px), into square tiles
on ``run``'s window grid over the working-resolution image
(:func:`wsi_seg.stages.tiling.window_starts`: every ``stride`` pixels, the last tile of each row
and column moved back inside the slide), keeps those on tissue, and writes them in one of the
two layouts that :mod:`wsi_seg.training.unet_task` and :mod:`wsi_seg.training.patch_task` read:

* ``unet``: ``OUT/images/<stem>_x<XW>_y<YW>.png`` and ``OUT/masks/<same>.png`` (0/255);
* ``idc``: ``OUT/<patient>/<0|1>/<patient>_idx5_x<XW>_y<YW>_class<C>.png``, a patch labelled 1
  when at least ``tumour_fraction`` of it is tumour.

``XW, YW`` are the tile's top-left corner in working-resolution pixels at ``mpp`` (the IDC
convention: coordinates at the patch resolution), so IDC patches of one slide rebuild the
slide's image. Tiles are read in blocks of about ``block_px`` (one ``read_region`` per block),
and the truth polygons are rasterised per block with the pixel-centre rule of
:func:`wsi_seg.evaluation.metrics.rasterize_window`. A ``extract_<stem>.json`` manifest records
the source slide, truth, resolution and counts.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from shapely.geometry.base import BaseGeometry

from wsi_seg import __version__
from wsi_seg.core.errors import WsiSegError
from wsi_seg.core.files import write_json_atomic
from wsi_seg.core.geometry import PixelFrame
from wsi_seg.evaluation.annotations import check_truth_fits, read_truth
from wsi_seg.evaluation.metrics import rasterize_window
from wsi_seg.stages.slide import Slide, open_slide
from wsi_seg.stages.tiling import window_starts
from wsi_seg.stages.tissue import TissueMask, find_tissue

LAYOUTS = ("unet", "idc")
DEFAULT_TILE_PX = {"unet": 256, "idc": 50}


@dataclass(frozen=True)
class ExtractOptions:
    """How to cut a slide into training tiles.

    Attributes:
        mpp: working resolution, µm/px (the model's ``mpp``; IDC patches are about 4.0).
        layout: ``unet`` (image + mask pairs) or ``idc`` (class-labelled patches).
        tile_px: tile side in working pixels (default 256 for unet, 50 for idc).
        stride_px: grid step in working pixels (default: ``tile_px``: tiles overlap only where
            the last one of a row or column is moved back inside the slide).
        min_tissue: smallest tissue fraction (0..1) of a tile to keep it.
        tumour_fraction: (idc) smallest tumour fraction of a patch to label it 1.
        max_tiles: keep at most this many tiles, drawn at random (seeded); None keeps all.
        seed: random seed for ``max_tiles``.
        name: file-name prefix / IDC patient id (default: the slide's stem).
        slide_mpp: level-0 µm/px for slides without MPP metadata (``--slide-mpp``).
        classes: annotation classes that count as tumour (None: the default tumour names).
        block_px: side of the blocks read at once, working pixels.
    """

    mpp: float
    layout: str = "unet"
    tile_px: int | None = None
    stride_px: int | None = None
    min_tissue: float = 0.5
    tumour_fraction: float = 0.5
    max_tiles: int | None = None
    seed: int = 0
    name: str | None = None
    slide_mpp: float | None = None
    classes: tuple[str, ...] | None = None
    block_px: int = 2048

    @property
    def tile(self) -> int:
        return self.tile_px or DEFAULT_TILE_PX.get(self.layout, 256)

    @property
    def stride(self) -> int:
        return self.stride_px or self.tile

    def check(self) -> None:
        if self.layout not in LAYOUTS:
            raise WsiSegError(f"unknown layout {self.layout!r}; use unet or idc")
        if self.tile < 8 or self.stride < 1:
            raise WsiSegError("tile size must be >= 8 px and stride >= 1 px")
        if not 0.0 <= self.min_tissue <= 1.0 or not 0.0 < self.tumour_fraction <= 1.0:
            raise WsiSegError("--min-tissue must lie in [0, 1] and --tumour-fraction in (0, 1]")
        if self.max_tiles is not None and self.max_tiles < 1:
            raise WsiSegError("--max-tiles must be at least 1")
        if self.name is not None and (not self.name or "/" in self.name or "_idx5_" in self.name):
            raise WsiSegError(f"bad name {self.name!r}: no '/', no '_idx5_'")


@dataclass(frozen=True)
class ExtractResult:
    """What one extraction wrote."""

    out: Path
    name: str
    layout: str
    mpp: float
    tile_px: int
    tiles: int
    tumour_tiles: int  # unet: tiles with any tumour pixel; idc: patches of class 1
    tumour_px_fraction: float  # share of tumour pixels over all written tiles
    seconds: float


def _tissue_fractions(tissue: TissueMask, corners_x0: np.ndarray, side0: float) -> np.ndarray:
    """Tissue fraction of level-0 squares (``(n, 2)`` top-left corners ``(x, y)``, side
    ``side0``) in the tissue view: the share of the view pixels they touch that are tissue
    (summed-area table, vectorised)."""
    frame = tissue.frame
    ii = tissue.integral
    rows, cols = tissue.mask.shape
    lo = np.floor(frame.points_from_level0(corners_x0))
    hi = np.ceil(frame.points_from_level0(corners_x0 + side0))
    c0, c1 = (np.clip(v[:, 0], 0, cols).astype(int) for v in (lo, hi))
    r0, r1 = (np.clip(v[:, 1], 0, rows).astype(int) for v in (lo, hi))
    area = np.maximum((c1 - c0) * (r1 - r0), 1)
    inside = ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]
    return np.where((c1 > c0) & (r1 > r0), inside / area, 0.0)


def _working_frame(slide: Slide, mpp: float) -> PixelFrame:
    """Where the working-resolution image at ``mpp`` µm/px lies on the slide (tiles are cut
    from it; working pixel ``(0, 0)`` starts at the bounds offset)."""
    w_px, h_px = slide.size_w(mpp)
    return PixelFrame(h_px, w_px, slide.origin_x0, slide.origin_y0,
                      slide.level0_px_per_px(mpp), slide.mpp)


def extract_training_data(
    slide_path: str | os.PathLike[str],
    truth_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    opts: ExtractOptions,
) -> ExtractResult:
    """Cut tiles (and masks, or IDC labels) from a slide at ``opts.mpp``; see module doc.

    Raises:
        WsiSegError (SlideError, AnnotationError): unreadable slide or truth, truth outside the
            slide, a resolution the slide cannot serve, a slide smaller than one tile, or no
            tissue tile.
    """
    opts.check()
    start = time.perf_counter()
    out = Path(out)
    with open_slide(slide_path, mpp=opts.slide_mpp) as slide:
        truth = check_truth_fits(read_truth(Path(truth_path), opts.classes), slide.dimensions)
        slide.choose_level(opts.mpp)  # SlideError now if the slide cannot serve this mpp
        name = opts.name or slide.stem
        tiles_xy = _tissue_tiles(slide, opts)
        truth_w = _working_frame(slide, opts.mpp).from_level0(truth.geometry)
        written, tumour_tiles, tumour_px = _write_blocks(
            slide, truth_w, tiles_xy, out, name, opts
        )
    total_px = max(1, written * opts.tile * opts.tile)
    result = ExtractResult(
        out, name, opts.layout, opts.mpp, opts.tile, written, tumour_tiles, tumour_px / total_px,
        time.perf_counter() - start,
    )
    manifest = {
        "wsi_seg": __version__,
        "slide": str(Path(slide_path)),
        "truth": str(Path(truth_path)),
        "truth_classes": list(truth.classes),
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()},
        "stride_px": opts.stride,
        "min_tissue": opts.min_tissue,
        "tumour_fraction": opts.tumour_fraction if opts.layout == "idc" else None,
        "max_tiles": opts.max_tiles,
        "seed": opts.seed,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / f"extract_{name}.json", manifest)
    return result


def _tissue_tiles(slide: Slide, opts: ExtractOptions) -> list[tuple[int, int]]:
    """Top-left corners (working px) of the grid's tiles with ``opts.min_tissue`` tissue, at
    most ``opts.max_tiles`` of them (a seeded draw, kept in grid order)."""
    frame = _working_frame(slide, opts.mpp)
    w_px, h_px = frame.width_px, frame.height_px
    tile, stride = opts.tile, opts.stride
    if w_px < tile or h_px < tile:
        raise WsiSegError(
            f"slide is {w_px}x{h_px} px at {opts.mpp:g} µm/px, smaller than one {tile} px tile",
            slide.path,
        )
    tissue = find_tissue(slide)
    # run's window grid: the last tile of a row or column is moved back inside, so tissue
    # at the right and bottom borders is extracted too (the slide is at least one tile).
    grid_x, grid_y = np.meshgrid(window_starts(w_px, tile, stride),
                                 window_starts(h_px, tile, stride))
    gx, gy = grid_x.ravel(), grid_y.ravel()
    corners_x0 = frame.points_to_level0(np.stack([gx, gy], axis=1))
    frac = _tissue_fractions(tissue, corners_x0, tile * frame.px_x0)
    keep = np.flatnonzero(frac >= max(opts.min_tissue, 1e-9))
    if keep.size == 0:
        raise WsiSegError(
            f"no tile of {tile} px at {opts.mpp:g} µm/px has {opts.min_tissue:.0%} tissue",
            slide.path,
        )
    if opts.max_tiles is not None and keep.size > opts.max_tiles:
        rng = np.random.default_rng(opts.seed)
        keep = np.sort(rng.choice(keep, opts.max_tiles, replace=False))
    return list(zip(gx[keep].tolist(), gy[keep].tolist(), strict=True))


def _write_blocks(
    slide: Slide,
    truth_w: BaseGeometry,
    tiles_xy: list[tuple[int, int]],
    out: Path,
    name: str,
    opts: ExtractOptions,
) -> tuple[int, int, int]:
    """Read the tiles block by block, rasterise truth per block, write PNGs; return the
    counts ``(tiles, tumour tiles, tumour px)``."""
    tile = opts.tile
    block = max(tile, (opts.block_px // opts.stride) * opts.stride)
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for x, y in tiles_xy:
        groups.setdefault((x // block, y // block), []).append((x, y))
    if opts.layout == "unet":
        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "masks").mkdir(parents=True, exist_ok=True)
    written = tumour_tiles = tumour_px = 0
    for members in groups.values():
        bx = min(x for x, _ in members)
        by = min(y for _, y in members)
        bw = max(x for x, _ in members) + tile - bx
        bh = max(y for _, y in members) + tile - by
        rgb = slide.read_w(bx, by, bw, bh, opts.mpp)
        mask = rasterize_window(truth_w, by, bx, bh, bw).astype(np.uint8)
        for x, y in members:
            img = rgb[y - by : y - by + tile, x - bx : x - bx + tile]
            m = mask[y - by : y - by + tile, x - bx : x - bx + tile]
            n_tumour = int(m.sum())
            tumour_px += n_tumour
            tumour_tiles += _write_tile(img, m, n_tumour, x, y, out, name, opts)
            written += 1
    return written, tumour_tiles, tumour_px


def _write_tile(img: np.ndarray, mask: np.ndarray, n_tumour: int, x: int, y: int, out: Path,
                name: str, opts: ExtractOptions) -> int:
    """Write one tile at working px ``(x, y)`` in ``opts.layout``; 1 if it counts as a tumour
    tile (unet: any tumour pixel; idc: labelled 1), else 0."""
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if opts.layout == "unet":
        stem = f"{name}_x{x}_y{y}"
        _imwrite(out / "images" / f"{stem}.png", bgr)
        _imwrite(out / "masks" / f"{stem}.png", mask * 255)
        return int(n_tumour > 0)
    label = int(n_tumour >= math.ceil(opts.tumour_fraction * opts.tile * opts.tile))
    folder = out / name / str(label)
    folder.mkdir(parents=True, exist_ok=True)
    _imwrite(folder / f"{name}_idx5_x{x}_y{y}_class{label}.png", bgr)
    return label


def _imwrite(path: Path, img: np.ndarray) -> None:
    if not cv2.imwrite(str(path), img):
        raise WsiSegError("cannot write image", path)
