"""A run's records beside the slides' own: versions, and the run's scores over its slides."""

from __future__ import annotations

import functools
import platform
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from wsi_seg import __version__
from wsi_seg.core.scores import format_score

if TYPE_CHECKING:  # metrics imports the geometry stack; the client needs only the type
    from wsi_seg.evaluation.metrics import OverlapScore

#: The run's record in OUT: configuration, versions, per-slide status and timings.
RUN_JSON = "run.json"


def versions() -> dict[str, str]:
    """Versions of wsi-seg, Python and the packages that decide a run's outputs (a copy:
    the caller may change it)."""
    return dict(_versions())


@functools.cache
def _versions() -> dict[str, str]:
    """Looked up once per process: ``importlib.metadata`` scans every distribution on the
    path per call (~0.2 s here), and run.json is rewritten after every slide, on the thread
    that collects blocks, while the blocks run (0.8 s of each four-slide dry run on 2 cores).
    Installed packages do not change under a running process."""
    import importlib.metadata as md

    out = {"wsi_seg": __version__, "python": platform.python_version()}
    for pkg in ("tensorflow", "keras", "openslide-python", "openslide-bin", "zarr", "dask",
                "distributed", "numpy", "shapely", "opencv-python-headless"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


def run_score(scores: Iterable[OverlapScore | None]) -> Any:
    """Micro/macro IoU and Dice over the scored slides, given each slide's score in the run's
    order (None: not scored); None when nothing was scored."""
    from wsi_seg.evaluation.metrics import summarize_scores

    scored = [s for s in scores if s is not None]
    return summarize_scores(scored) if scored else None


def run_score_lines(scores: Iterable[OverlapScore | None]) -> list[str]:
    """The run's scores as summary footer lines (empty-vs-empty slides counted apart)."""
    run = run_score(scores)
    if run is None:
        return []

    def f(v: float | None) -> str:
        return format_score(v, ".4f")

    return [
        f"Scored slides: {run.n_slides} ({run.n_empty_both} empty-vs-empty, left out of the "
        "means).",
        f"IoU micro {f(run.micro_iou)}, macro {f(run.macro_iou)}; "
        f"Dice micro {f(run.micro_dice)}, macro {f(run.macro_dice)}.",
    ]
