"""The empty-vs-empty rule's values: an undefined score is None, ``n/a`` in text.

The rule itself is stated once, in :mod:`wsi_seg.evaluation.metrics`; these helpers live here,
without the geometry stack, so that every reader of a score (the run's client, the CLI's
tables, training) applies them without importing shapely or zarr.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple, SupportsFloat

import numpy as np

__all__ = ["UNDEFINED_TEXT", "ScoreMean", "defined_score", "format_score", "mean_score"]

#: How text output (tables, CSV, console lines) writes an undefined score.
UNDEFINED_TEXT = "n/a"


def defined_score(value: SupportsFloat | None) -> float | None:
    """A score as the empty-vs-empty rule holds it: None when undefined, else a float.

    None stays None; NaN (a Keras metric's 0 / 0, or a file written before the rule) becomes
    None; anything else (a Python or numpy number, a 0-d tensor) becomes its float.
    """
    if value is None:
        return None
    v = float(value)
    return None if math.isnan(v) else v


class ScoreMean(NamedTuple):
    """A mean over the defined scores; ``n_undefined`` counts those left out."""

    mean: float | None  # None when no score is defined
    n_undefined: int


def mean_score(values: Iterable[SupportsFloat | None]) -> ScoreMean:
    """Mean of the defined values (:func:`defined_score`); the undefined ones are left out
    and counted. ``mean_score([0.5, None])`` is ``ScoreMean(0.5, 1)``."""
    scores = [defined_score(v) for v in values]
    kept = [v for v in scores if v is not None]
    return ScoreMean(float(np.mean(kept)) if kept else None, len(scores) - len(kept))


def format_score(value: SupportsFloat | None, spec: str = ".4f") -> str:
    """``value`` in ``spec`` for text output, :data:`UNDEFINED_TEXT` when undefined."""
    v = defined_score(value)
    return UNDEFINED_TEXT if v is None else format(v, spec)
