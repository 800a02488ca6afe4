"""A slide's report: what ``report.json`` holds, typed, as the finishing task returns it.

The report travels from the worker that finished the slide to the client (the runner), and
is written to ``OUT/NAME/report.json`` with :func:`dataclasses.asdict`, so the file's keys are
the fields below, in this order (:data:`REPORT_KEYS`):

``slide``, ``slide_identity`` (size, mtime_ns, head_sha256 of the file), ``output_name``,
``status``, ``wsi_seg_version``, ``model`` (path, sha256, kind, name), ``mpp`` (working
µm/px), ``slide_mpp`` (level-0 µm/px), ``mosaic_shape_px`` ([rows, cols]), ``blocks``,
``tiles``, ``tile_predictions``, ``tissue_fraction``, ``tissue_mm2``, ``tumour_mm2``,
``tumour_regions``, ``threshold``, ``min_area_um2``, ``wall_s``, ``tiles_per_s``,
``blocks_wall_s``, ``blocks_tiles_per_s``, ``finish_s``, ``predict_tiles_per_thread_s``,
``stage_s`` (seconds per stage, summed over task threads), ``truth``, ``score`` (tp, fp, fn,
resolution_um, iou, dice, empty_both), ``polygons_score`` (the same for the exported
polygons), ``score_error``, ``notes``, ``classes`` (a multi-class model's classes: name,
color, area_mm2, regions, score; empty otherwise).

Two scores, because users score either: ``score`` is the mosaic thresholded at ``threshold``
(what ``wsi-seg score mask.zarr`` gives), ``polygons_score`` the regions in ``tumor.geojson``
(what ``wsi-seg score tumor.geojson`` gives), both at the level traced. They differ by what the
polygon rules changed (regions under ``min_area_um2`` dropped, holes under it filled,
outlines simplified); a note says by how much when they do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from wsi_seg.core.naming import REPORT

if TYPE_CHECKING:  # metrics imports the geometry stack: the client reads reports without it
    from wsi_seg.evaluation.metrics import OverlapScore

__all__ = ["REPORT", "REPORT_KEYS", "ClassRecord", "ModelRecord", "SlideReport", "score_from_json"]


@dataclass(frozen=True)
class ModelRecord:
    """The model a slide was run with: its file, the file's SHA-256, its kind and name."""

    path: str
    sha256: str
    kind: str
    name: str


@dataclass(frozen=True)
class ClassRecord:
    """One class of a multi-class model on one slide: its QuPath name and colour, the area
    and number of its polygons (mm², as traced), and its score where the truth draws it."""

    name: str
    color: tuple[int, int, int]
    area_mm2: float
    regions: int
    score: OverlapScore | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["score"] = self.score.as_dict() if self.score is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClassRecord:
        """The record as :meth:`to_json` wrote it."""
        return cls(data["name"], tuple(data["color"]), data["area_mm2"], data["regions"],
                   score_from_json(data.get("score")))


@dataclass(frozen=True)
class SlideReport:
    """One finished slide (``report.json``); see the module docstring for the units."""

    slide: str
    slide_identity: dict[str, Any]
    output_name: str
    status: str
    wsi_seg_version: str
    model: ModelRecord
    mpp: float
    slide_mpp: float
    mosaic_shape_px: tuple[int, int]
    blocks: int
    tiles: int
    tile_predictions: int
    tissue_fraction: float
    tissue_mm2: float
    tumour_mm2: float
    tumour_regions: int
    threshold: float
    min_area_um2: float
    # The slide's whole time (blocks, then pyramid, polygons, scores, overlay), and the
    # blocks phase alone beside it, named as such.
    wall_s: float
    tiles_per_s: float | None
    blocks_wall_s: float
    blocks_tiles_per_s: float | None
    finish_s: float
    # Predictions per second of one task thread while it predicts. Task threads predict
    # concurrently (and share the cores), so this is not the model's throughput alone:
    # `wsi-seg bench` measures that in isolation.
    predict_tiles_per_thread_s: float | None
    stage_s: dict[str, float]
    truth: str | None
    score: OverlapScore | None  # written with its IoU, Dice and empty flag (as_dict)
    polygons_score: OverlapScore | None  # tumor.geojson's regions, scored the same way
    # Set when a score was asked for (--truth) and none could be made truthfully: the run
    # reports the slide as failed (its outputs are still published).
    score_error: str | None
    notes: tuple[str, ...]
    classes: tuple[ClassRecord, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The ``report.json`` object (keys in :data:`REPORT_KEYS` order)."""
        data = asdict(self)
        data["score"] = self.score.as_dict() if self.score is not None else None
        data["polygons_score"] = (self.polygons_score.as_dict()
                                  if self.polygons_score is not None else None)
        data["classes"] = [c.to_json() for c in self.classes]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SlideReport:
        """The report as :meth:`to_json` wrote it (a ``report.json`` read back): equal to the
        one the finishing task returned."""
        return cls(**{
            **{k: data[k] for k in REPORT_KEYS if k in data},
            "model": ModelRecord(**data["model"]),
            "mosaic_shape_px": tuple(data["mosaic_shape_px"]),
            "score": score_from_json(data["score"]),
            "polygons_score": score_from_json(data["polygons_score"]),
            "notes": tuple(data["notes"]),
            "classes": tuple(ClassRecord.from_json(c) for c in data.get("classes") or ()),
        })


def score_from_json(data: dict[str, Any] | None) -> OverlapScore | None:
    """An :class:`OverlapScore` from its ``as_dict`` (None stays None)."""
    if data is None:
        return None
    from wsi_seg.evaluation.metrics import OverlapScore

    return OverlapScore(data["tp"], data["fp"], data["fn"], data["resolution_um"])


#: The keys of ``report.json``, in the order they are written.
REPORT_KEYS: tuple[str, ...] = tuple(f.name for f in fields(SlideReport))
