"""Scoring a finished prediction against ground truth, from files (``wsi-seg score``).

PRED is a ``mask.zarr`` written by a run (probability >= threshold is tumour), a
``tumor.geojson`` (every area Feature is tumour), or the slide's output folder holding the
mosaic. Both PRED and the truth are rasterised chunk by chunk (pixel centres) at one
resolution: mosaic level L of a mask.zarr, or level-0 / 2^L for a GeoJSON prediction. A PRED
made from another slide is an error, never a meaningless score (:func:`check_same_slide`,
:func:`check_mosaic_fits`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_seg.core.errors import WsiSegError
from wsi_seg.core.naming import REPORT

if TYPE_CHECKING:
    from wsi_seg.core.geometry import PixelFrame
    from wsi_seg.core.locations import SlideLocation, SlideURL
    from wsi_seg.evaluation.metrics import OverlapScore

MAX_SCORE_SIDE_PX = 16384  # default level: the finest level whose longer side fits this
MAX_REPORT_BYTES = 16 << 20
#: A mosaic's threshold when it records none (nor its model card).
DEFAULT_THRESHOLD = 0.5  # a run's report.json is a few KiB; anything huge is not one


@dataclass(frozen=True)
class FileScore:
    """A prediction scored against truth: the files, the truth classes counted as tumour,
    the level scored at, pixel counts at ``resolution_um`` µm/px, IoU and Dice (None when
    both are empty, ``empty_both``), and the probability threshold a mosaic was cut at."""

    pred: str
    truth: str
    slide: str
    truth_classes: list[str]
    level: int
    score: OverlapScore
    threshold: float | None = None  # a mosaic's; None for a GeoJSON prediction

    def to_json(self) -> dict[str, Any]:
        """Files, classes and level, then the score's counts, IoU, Dice and empty flag."""
        head = {k: v for k, v in asdict(self).items() if k != "score"}
        return {**head, **self.score.as_dict()}


def auto_level(shape_at: Callable[[int], tuple[int, ...]], n_levels: int) -> int:
    """The finest of ``n_levels`` levels whose longer side is at most
    :data:`MAX_SCORE_SIDE_PX` (``shape_at(level)`` in px), else the coarsest."""
    for level in range(n_levels):
        if max(shape_at(level)) <= MAX_SCORE_SIDE_PX:
            return level
    return n_levels - 1


def resolve_pred(pred: Path) -> Path:
    """PRED as given, or the ``mask.zarr`` inside a slide's output folder."""
    if not pred.exists():
        raise WsiSegError("no such file or folder (PRED is a mask.zarr or tumor.geojson "
                          "written by wsi-seg run)", pred)
    if pred.is_dir() and not (pred / "zarr.json").is_file() and (pred / "mask.zarr").is_dir():
        return pred / "mask.zarr"
    return pred


def run_report(pred: Path) -> dict[str, Any] | None:
    """The run's ``report.json`` beside PRED (both live in ``OUT/NAME/``), if readable."""
    path = pred.parent / REPORT
    try:
        if path.stat().st_size > MAX_REPORT_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_same_slide(pred: Path, slide_path: SlideLocation, provenance: dict[str, Any]) -> None:
    """PRED was made from this slide file: the size and header hash the run recorded in its
    report.json (a renamed or copied file passes), else the file name the mosaic recorded."""
    from wsi_seg.core.naming import slide_identity

    report = run_report(pred) or {}
    recorded = report.get("slide_identity")
    if isinstance(recorded, dict) and {"size", "head_sha256"} <= recorded.keys():
        mine = slide_identity(slide_path)
        if (mine["size"], mine["head_sha256"]) != (recorded["size"], recorded["head_sha256"]):
            raise WsiSegError(
                f"was made from {report.get('slide', 'another slide')} (says the run's "
                f"report.json), and {slide_path} is a different file; score it against its "
                "own slide (--skip-slide-check if that slide was rewritten)", pred)
        return
    name = provenance.get("slide")
    if isinstance(name, str) and name != slide_path.name:
        raise WsiSegError(f"was made from a slide named {name!r}, not {slide_path.name!r}; "
                          "score it against its own slide (--skip-slide-check if it was "
                          "renamed)", pred)


def check_mosaic_fits(mosaic: Any, bounds_x0: tuple[int, int, int, int], pred: Path,
                      slide_path: SlideLocation) -> None:
    """The mosaic covers the slide's level-0 bounds (to within one mosaic pixel, the part a
    run drops at the edge); otherwise it belongs to another slide and any score is wrong."""
    g = mosaic.geom
    f = g.level0_px_per_px
    bx, by, bw, bh = bounds_x0
    fits = (abs(g.origin_x0 - bx) < 1 and abs(g.origin_y0 - by) < 1
            and abs(g.width_px * f - bw) < f + 1 and abs(g.height_px * f - bh) < f + 1)
    if not fits:
        raise WsiSegError(
            f"covers {g.width_px * f:.0f} x {g.height_px * f:.0f} level-0 px, but slide "
            f"{slide_path.name} is {bw} x {bh} px: the mosaic was made from another slide",
            pred)


def _open_pred_mosaic(pred: Path, bounds_x0: tuple[int, int, int, int],
                      slide_path: SlideLocation) -> Any:
    """The mosaic at PRED (a folder) checked against the slide's extent; None for a file."""
    from wsi_seg.stages.mosaic import open_mosaic

    if not pred.is_dir():
        return None
    try:
        mosaic = open_mosaic(pred)
    except Exception as exc:  # zarr raises many types for a store that is not a mosaic
        raise WsiSegError(f"not a wsi-seg mask.zarr: {exc}", pred) from None
    check_mosaic_fits(mosaic, bounds_x0, pred, slide_path)
    return mosaic


def _mosaic_level(mosaic: Any, level: int | None, pred: Path) -> int:
    """The mosaic level scored: ``level``, checked, or :func:`auto_level`."""
    level = auto_level(mosaic.geom.level_shape, mosaic.n_levels) if level is None else level
    if not 0 <= level < mosaic.n_levels:
        raise WsiSegError(f"--level {level} not in the mosaic (0..{mosaic.n_levels - 1})",
                          pred)
    return level


def _geojson_frame(level: int | None, size_x0: tuple[int, int], slide_mpp: float
                   ) -> tuple[PixelFrame, int]:
    """The raster a GeoJSON prediction is scored on, level-0 / 2^``level`` (default:
    :func:`auto_level` over the halvings of the slide's level-0 size), and the level."""
    from wsi_seg.core.geometry import PixelFrame

    w, h = size_x0

    def shape_at(lv: int) -> tuple[int, int]:
        return math.ceil(h / 2**lv), math.ceil(w / 2**lv)

    level = auto_level(shape_at, 32) if level is None else level
    if level < 0:
        raise WsiSegError(f"--level must be >= 0, got {level}")
    rows, cols = shape_at(level)
    return PixelFrame(rows, cols, 0.0, 0.0, float(2**level), slide_mpp), level


def score_files(pred: str | Path, truth_path: str | Path, slide_path: str | Path | SlideURL, *,
                level: int | None = None,
                truth_classes: list[str] | None = None, threshold: float | None = None,
                mpp: float | None = None, mask_mpp: float | None = None,
                check_slide: bool = True) -> FileScore:
    """Score PRED against TRUTH on SLIDE at ``level`` (default: the finest whose longer side
    is at most :data:`MAX_SCORE_SIDE_PX`); ``threshold`` is the tumour probability of a mosaic
    (0 < p <= 1; default: the one its run drew the polygons at, recorded in the mosaic,
    :func:`~wsi_seg.stages.mosaic.mosaic_threshold`, else :data:`DEFAULT_THRESHOLD`),
    ``mpp`` the slide's level-0 µm/px override, ``mask_mpp`` the µm/px of a mask truth.

    Raises WsiSegError (one line) for a bad threshold or level, a missing or unreadable file,
    or a PRED made from another slide (see :func:`check_same_slide`, skipped when
    ``check_slide`` is false, and :func:`check_mosaic_fits`, always).
    """
    from wsi_seg.core.locations import slide_location
    from wsi_seg.evaluation.metrics import score_array, score_geometries
    from wsi_seg.evaluation.truth import rasterize_truth
    from wsi_seg.stages.slide import open_slide
    from wsi_seg.stages.vectorize import threshold_u8

    if threshold is not None:
        try:
            threshold_u8(threshold)  # the rule lives where probabilities are thresholded
        except ValueError as exc:
            raise WsiSegError(f"threshold {threshold}: {exc}") from None
    pred, truth_path = resolve_pred(Path(pred)), Path(truth_path)
    slide_path = slide_location(slide_path)  # a local file, or an s3:// object read in place
    with open_slide(slide_path, mpp=mpp) as slide:
        size, slide_mpp, bounds = slide.dimensions, slide.mpp, slide.bounds_x0
    mosaic = _open_pred_mosaic(pred, bounds, slide_path)
    if check_slide:
        check_same_slide(pred, slide_path, mosaic.provenance if mosaic is not None else {})
    if mosaic is not None:
        level = _mosaic_level(mosaic, level, pred)
        frame = mosaic.geom.frame(level)
    else:
        frame, level = _geojson_frame(level, size, slide_mpp)
    # Drawn on the scored raster as it is read: memory is that raster (compressed) and a
    # batch of polygons, however many the truth holds.
    truth = rasterize_truth(truth_path, frame, size, truth_classes, mask_mpp=mask_mpp,
                            slide_mpp=slide_mpp)
    if mosaic is not None:
        from wsi_seg.stages.mosaic import mosaic_threshold

        if threshold is None:
            threshold = mosaic_threshold(mosaic) or DEFAULT_THRESHOLD
        score = score_array(mosaic.level(level), truth, frame, fg_min=threshold_u8(threshold))
    else:
        from wsi_seg.evaluation.annotations import read_prediction_geojson

        threshold = None  # polygons are tumour as drawn
        score = score_geometries(read_prediction_geojson(pred), truth, frame)
    return FileScore(str(pred), str(truth_path), str(slide_path), list(truth.classes), level,
                     score, threshold)
