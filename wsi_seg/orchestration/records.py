"""A run's records beside the slides' own: versions, and the run's scores over its slides."""

from __future__ import annotations

import functools
import platform
from typing import Any

from wsi_seg import __version__
from wsi_seg.core.scores import format_score
from wsi_seg.orchestration.report import SlideReport

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


def run_score(reports: list[SlideReport]) -> Any:
    """Micro/macro IoU and Dice over the scored slides (None when nothing was scored)."""
    from wsi_seg.evaluation.metrics import summarize_scores

    scores = [r.score for r in reports if r.score is not None]
    return summarize_scores(scores) if scores else None


def run_score_lines(reports: list[SlideReport]) -> list[str]:
    """The run's scores as summary footer lines (empty-vs-empty slides counted apart)."""
    run = run_score(reports)
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
