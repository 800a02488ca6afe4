"""The JSON record of a benchmark: summaries of repeated measurements, the interleaving order,
and writing ``bench.json`` with its ``bench.md`` beside it."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from wsi_seg.core.files import write_atomic
from wsi_seg.tools.bench.machine import machine_info


def summary(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """Median, min, max and the values of repeated measurements (rounded to ``digits``)."""
    vals = [float(v) for v in values]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {"median": round(statistics.median(vals), digits), "min": round(min(vals), digits),
            "max": round(max(vals), digits), "n": len(vals),
            "values": [round(v, digits) for v in vals]}


def rotate(items: Sequence[Any], k: int) -> list[Any]:
    """``items`` rotated left by ``k`` (interleaving order of round ``k``: each measurement
    takes every place in turn, so a slow spell of a shared machine is spread over them)."""
    if not items:
        return []
    k %= len(items)
    return list(items[k:]) + list(items[:k])


def interleaved(items: Sequence[Any], repeats: int,
                measure: Callable[[Any, int], dict[str, Any] | None],
                on_value: Callable[[dict[Any, list[dict[str, Any]]]], None] | None = None
                ) -> dict[Any, list[dict[str, Any]]]:
    """``measure(item, round)`` for every item in ``repeats`` rounds, the order rotating from
    round to round (:func:`rotate`); each item's values (a None value is left out). After each
    value ``on_value`` gets what was measured so far."""
    got: dict[Any, list[dict[str, Any]]] = {it: [] for it in items}
    for r in range(repeats):
        for it in rotate(items, r):
            value = measure(it, r)
            if value is not None:
                got[it].append(value)
                if on_value is not None:
                    on_value(got)
    return got


def jsonable(obj: Any) -> Any:
    """``obj`` with paths as strings, numpy scalars as Python numbers and keys as strings."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def new_record(fmt: str, cfg: Any, head: dict[str, Any] | None = None, **fields: Any
               ) -> dict[str, Any]:
    """A record's opening, keys in this order: its format, ``head``, the machine, the
    configuration (a dataclass), ``fields``, an empty list of notes."""
    return {"format": fmt, **(head or {}), "machine": machine_info(),
            "config": jsonable(asdict(cfg)), **fields, "notes": []}


def close_record(record: dict[str, Any], t0: float) -> None:
    """Stamp the end: the load average then and the seconds since ``t0`` (perf_counter)."""
    record["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    record["total_s"] = round(time.perf_counter() - t0, 1)


def write_outputs(record: dict[str, Any], out_dir: Path,
                  markdown_fn: Callable[[dict[str, Any]], str]) -> tuple[Path, Path]:
    """Write ``bench.json`` and ``bench.md`` (atomically: a killed run leaves whole files) into
    ``out_dir``; ``markdown_fn`` renders the markdown (the profile's report)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = markdown_fn(record)
    json_path = write_atomic(out_dir / "bench.json",
                             json.dumps(jsonable(record), indent=2) + "\n")
    md_path = write_atomic(out_dir / "bench.md", md)
    return json_path, md_path
