"""``bench.md``: a standard record as markdown tables, one function per section, and the
formatting both profiles' reports share."""

from __future__ import annotations

import json
from typing import Any

from wsi_seg.tools.bench.config import NOT_MEASURED_GPU
from wsi_seg.tools.bench.record import jsonable


def med(x: Any, fmt: str = "{:.1f}") -> str:
    """``median (min–max)`` of a summary (just the median of one value; n/a without one)."""
    if not isinstance(x, dict) or x.get("median") is None:
        return "n/a"
    m = fmt.format(x["median"])
    if x.get("n", 0) > 1:
        return f"{m} ({fmt.format(x['min'])}–{fmt.format(x['max'])})"
    return m


def pct(x: float | None) -> str:
    """A share as a whole percentage."""
    return "n/a" if x is None else f"{100 * x:.0f} %"


def size(px: int) -> str:
    """A slide edge in px, in thousands where round (``30k``)."""
    return f"{px // 1000}k" if px % 1000 == 0 else str(px)


def commit_suffix(m: dict[str, Any]) -> str:
    return f" ({m['git_commit']})" if m.get("git_commit") else ""


def markdown_end(record: dict[str, Any], lines: list[str]) -> str:
    """The record's notes and total time after ``lines``, as one markdown text."""
    lines = [*lines, *(f"Note: {note}" for note in record.get("notes") or [])]
    if record.get("total_s") is not None:
        lines.append(f"Benchmark took {record['total_s']} s.")
    return "\n".join(lines).rstrip() + "\n"


def _header(record: dict[str, Any]) -> list[str]:
    m = record.get("machine", {})
    v = m.get("versions", {})
    cl = record.get("cluster", {})
    conf = record.get("config", {})
    return [
        "# wsi-seg bench",
        "",
        f"{m.get('date')} · {m.get('cores')} cores ({m.get('cpu')}), {m.get('ram_gib')} GiB RAM"
        f"{' · device ' + ', '.join(cl['devices']) if cl.get('devices') else ''}"
        f"{' · GPUs: ' + '; '.join(m['gpus']) if m.get('gpus') else ' · no GPU'}"
        f" · TF {v.get('tensorflow')}, wsi-seg {m.get('wsi_seg_version')}{commit_suffix(m)}"
        f" · load avg {m.get('load_avg')} -> {m.get('load_avg_end')}",
        "",
        (f"Cluster: {cl.get('workers')} worker(s) x {cl.get('threads_per_worker')} task "
         f"threads, {cl.get('tf_threads')} TF thread(s) each. " if cl else "")
        + f"Figures: median (min–max) of {conf.get('repeats')} interleaved "
        f"rounds. Synthetic slides at {conf.get('slide_mpp')} µm/px, seed "
        f"{conf.get('seed')}.",
        "",
    ]


def _throughput(tp: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Throughput against the limits",
        "",
        "tiles = distinct windows predicted; predictions = model evaluations including "
        "halo duplicates. Limit = min(model-only as tiles of this plan, read-only).",
        "",
        "| model | slide | tiles (predictions) | e2e tiles/s | blocks-phase tiles/s | "
        "model-only predictions/s | model limit tiles/s | read-only tiles/s | limited by | "
        "ratio | ratio blocks | ratio literal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in tp:
        lines.append(
            f"| {e['model']} (batch {e['batch_size']}) | {size(e['size_px'])} | "
            f"{e['tiles']} ({e['tile_predictions']}) | {med(e['e2e']['tiles_per_s'])} | "
            f"{med(e['e2e']['blocks_tiles_per_s'])} | "
            f"{med(e['model_only']['predictions_per_s'])} | "
            f"{med(e['model_only']['limit_tiles_per_s'])} | "
            f"{med(e['read_only']['tiles_per_s'])} | {e['limited_by']} | "
            f"{med(e['ratio'], '{:.2f}')} | {med(e['ratio_blocks'], '{:.2f}')} | "
            f"{med(e['ratio_literal'], '{:.2f}')} |")
    return lines


def _stages(tp: list[dict[str, Any]]) -> list[str]:
    lines = ["", "## Stage timings (median seconds; share of the run's wall time)", "",
             "Block stages are task-thread seconds summed over blocks (they run in "
             "parallel); finish stages run once, serially, after the blocks.", ""]
    keys = list(dict.fromkeys(k for e in tp for k in e["stages"]["stages"]))
    head = " | ".join(f"{e['model']} {size(e['size_px'])}" for e in tp)
    lines += [f"| stage | {head} |", "|---|" + "---|" * len(tp)]
    for k in keys:
        cells = []
        for e in tp:
            row = e["stages"]["stages"].get(k)
            cells.append(f"{row['total_s']:.2f} s ({100 * row['share_of_wall']:.0f} %)"
                         if row else "–")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("| other (prepare, scheduling) | " + " | ".join(
        f"{e['stages']['other_s']:.2f} s ({100 * e['stages']['other_share_of_wall']:.0f} %)"
        for e in tp) + " |")
    lines.append("| **run wall** | " + " | ".join(
        f"**{e['stages']['wall_s']:.2f} s** (blocks {e['stages']['blocks_wall_s']:.2f} s)"
        for e in tp) + " |")
    return [*lines, ""]


def _budget_row(e: dict[str, Any]) -> str:
    b = e.get("budget") or {}
    sh = b.get("shares", {})

    def cell(k: str) -> str:
        return f"{b.get(k + '_s', 0):.2f} s ({100 * sh.get(k, 0):.0f} %)"

    startup = e["e2e"].get("startup_s")
    return (f"| {e['model']} | {size(e['size_px'])} | {b.get('wall_s')} | "
            f"{cell('model_distinct')} | {cell('halo_duplicates')} | "
            f"{cell('batch_padding')} | {cell('blocks_not_hidden')} | {cell('finish')} | "
            f"{cell('other')} | "
            f"{'+' + format(startup, '.1f') + ' s' if startup is not None else '–'} |")


def _budget(tp: list[dict[str, Any]]) -> list[str]:
    return ["## Where the wall time goes (against the model's own pace)", "",
            "model (distinct windows) = tiles / model-only rate; the rest is what the run "
            "adds to it. The ratio is about model / wall when the model is the limit.", "",
            "| model | slide | wall s | model (distinct) | halo duplicates | batch padding "
            "| blocks phase not hidden | finish (serial) | other | cold start |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *(_budget_row(e) for e in tp), ""]


def _seeds(sw: list[dict[str, Any]]) -> list[str]:
    lines = ["## The seeds' way (read_region + model.predict per tile + one numpy array)",
             "", "| model | slide | seeds' tiles/s | wsi-seg tiles/s | speedup | "
             "seeds' windows done | seeds' array |", "|---|---|---|---|---|---|---|"]
    for s in sw:
        lines.append(
            f"| {s['model']} | {size(s['size_px'])} | {med(s['seeds_tiles_per_s'], '{:.2f}')}"
            f" | {med(s['wsi_seg_tiles_per_s'])} | {med(s['speedup'], '{:.1f}')}x | "
            f"{min(s['seeds_tiles_done'])}–{max(s['seeds_tiles_done'])} of {s['tiles']}"
            f"{' (time-capped)' if not s['seeds_complete'] else ''} | "
            f"{s['seeds_array_mib']} MiB |")
    return [*lines, ""]


def _memory(mem: list[dict[str, Any]]) -> list[str]:
    lines = ["## Peak memory (RSS, MiB; fresh processes per row)", "",
             "| model | slide | tiles | workers' peak | client peak (+ scheduler) | "
             "worker vs smallest | client vs smallest | tiles/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in mem:
        if "error" in r:
            lines.append(f"| {r['model']} | {size(r['size_px'])} | failed: {r['error']} "
                         "| | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {size(r['size_px'])} | {r['tiles']} | "
            f"{', '.join(str(x) for x in r['worker_peak_rss_mib'])} | "
            f"{r['client_peak_rss_mib']} | {r.get('worker_peak_vs_smallest')}x | "
            f"{r.get('client_peak_vs_smallest')}x | {r['tiles_per_s']} |")
    return [*lines, ""]


def _scaling(sc: dict[str, Any]) -> list[str]:
    lines = [f"## Scaling ({size(sc['size_px'])} slide)", "",
             "| model | workers x task threads (TF threads) | e2e tiles/s | "
             "model-only predictions/s |", "|---|---|---|---|"]
    for r in sc.get("workers", []):
        lines.append(f"| {r['model']} | {r['workers']} x {r['threads_per_worker']} "
                     f"({r['tf_threads']}) | {med(r['e2e_tiles_per_s'])} | "
                     f"{med(r['model_only_predictions_per_s'])} |")
    lines += ["", "| model | batch size | model-only predictions/s | e2e tiles/s |",
              "|---|---|---|---|"]
    for r in sc.get("batch_size", []):
        lines.append(f"| {r['model']} | {r['batch_size']} | "
                     f"{med(r['model_only_predictions_per_s'])} | "
                     f"{med(r['e2e_tiles_per_s'])} |")
    lines.append("")
    for key, title in (("mixed_precision", "Mixed precision"),
                       ("gpu_idle_share", "GPU idle share")):
        part = sc.get(key) or {}
        if not part.get("measured"):
            lines.append(f"{title}: {part.get('note', NOT_MEASURED_GPU)}.")
        else:
            lines += [f"{title}: {json.dumps(jsonable(r))}" for r in part["rows"]]
    return [*lines, ""]


def markdown(record: dict[str, Any]) -> str:
    """A standard record as markdown tables."""
    lines = _header(record)
    tp = record.get("throughput") or []
    if tp:
        lines += _throughput(tp) + _stages(tp) + _budget(tp)
    if record.get("seeds_way"):
        lines += _seeds(record["seeds_way"])
    if record.get("memory"):
        lines += _memory(record["memory"])
    if record.get("scaling"):
        lines += _scaling(record["scaling"])
    return markdown_end(record, lines)
