"""Stage timings: seconds added up per stage name, as reports give them."""

from __future__ import annotations

import time
from collections.abc import MutableMapping


def lap(times: MutableMapping[str, float] | None, key: str, since: float) -> float:
    """Add the seconds since ``since`` (``time.perf_counter``) to ``times[key]`` and return
    now, the start of the next lap; ``times`` None only returns now."""
    now = time.perf_counter()
    if times is not None:
        times[key] = times.get(key, 0.0) + now - since
    return now
