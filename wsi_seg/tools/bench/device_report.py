"""``bench.md`` of a device profile's record, one function per section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsi_seg.tools.bench.report import commit_suffix, markdown_end, med, pct


def _header(record: dict[str, Any]) -> list[str]:
    m = record.get("machine", {})
    be = m.get("backend", {})
    cl = record.get("cluster", {})
    prof = record.get("profile")
    conf = record.get("config", {})
    lines = [
        f"# wsi-seg bench --profile {prof}", "",
        f"{m.get('date')} · {m.get('cores')} cores ({m.get('cpu')}), {m.get('ram_gib')} GiB RAM"
        f" · {'GPUs: ' + '; '.join(m['gpus']) if m.get('gpus') else 'no GPU'}"
        f" · Keras backend {be.get('keras_backend')}"
        f"{' (jax ' + be['jax'] + ')' if be.get('jax') else ''}"
        f" · precision asked {conf.get('precision', 'float32')}"
        f" · wsi-seg {m.get('wsi_seg_version')}{commit_suffix(m)}"
        f" · load avg {m.get('load_avg')} -> {m.get('load_avg_end')}", "",
    ]
    if prof == "gpu" and conf.get("simulate_batch_s"):
        lines += [f"**Dry run**: every model ran on the simulated device "
                  f"({conf['simulate_batch_s']} s per batch; out, each 8 px cell's red "
                  "darkness, a map the host blends, writes and traces as a model's); only "
                  "the machinery is measured.", ""]
    if cl:
        lines += [f"Cluster: {cl.get('workers')} worker(s) x {cl.get('threads_per_worker')} "
                  f"task threads ({cl.get('gpus')} GPU(s)). Figures: median (min–max) of "
                  f"{conf.get('repeats')} interleaved rounds.", ""]
    slides = record.get("slides") or []
    if slides:
        lines += ["Slides: " + ", ".join(Path(s["path"]).name for s in slides) + ".", ""]
    return lines


def _cold(runs: dict[str, Any]) -> list[str]:
    """Each model's cold runs (interleaved with its warm rounds), against its model-only
    rate of the same rounds."""
    rows = [(key, e) for key, e in runs.items() if e.get("cold")]
    if not rows:
        return []
    lines = ["## As `wsi-seg run` runs it (fresh local cluster, start-up included)", "",
             "Ratio = cold tiles/s / the model-only limit of the same rounds.", "",
             "| model | tiles | wall s | tiles/s | start-up s | tiles/s after start-up | "
             "blocks-phase tiles/s | ratio to model limit |", "|---|---|---|---|---|---|---|---|"]
    for key, e in rows:
        c = e["cold"]
        lines.append(f"| {key} | {c['tiles']} | {med(c['wall_s'])} | {med(c['tiles_per_s'])} | "
                     f"{med(c['startup_s'])} | {med(c['tiles_per_s_after_startup'])} | "
                     f"{med(c['blocks_tiles_per_s'])} | {e.get('ratio_cold', 'n/a')} |")
    lines.append("")
    for key, e in rows:
        for w in e["cold"].get("startup_workers") or []:
            lines.append(f"- {key}, start-up worker pid {w.get('pid')}: {w.get('backend')} on "
                         f"{w.get('device')}, model load + compile {w.get('load_s', 0):.1f} s")
    return [*lines, ""]


def _runs_row(key: str, e: dict[str, Any]) -> str:
    plan = e.get("plan", {})
    e2e = e.get("e2e", {})
    mo = e.get("model_only", {})
    ro = e.get("read_only", {})
    busy = e.get("device_busy_blocks", {})
    busy_s = busy.get("note") if "note" in busy else med(busy, "{:.2f}")
    return (f"| {key} ({plan.get('tile_px')} px, batch {mo.get('batch_size', '?')}) | "
            f"{plan.get('tiles')} ({plan.get('tile_predictions')}) | "
            f"{med(e2e.get('tiles_per_s'))} | {med(e2e.get('blocks_tiles_per_s'))} | "
            f"{med(mo.get('predictions_per_s'))} | {med(mo.get('limit_tiles_per_s'))} | "
            f"{med(ro.get('tiles_per_s'))} | {e.get('limited_by', 'n/a')} | "
            f"{e.get('ratio', 'n/a')} | {e.get('ratio_blocks', 'n/a')} | {busy_s} |")


def _runs(runs: dict[str, Any]) -> list[str]:
    return ["## End to end against the limits (warm cluster)", "",
            "e2e = `run_slides` over all slides on a warm cluster sized as `wsi-seg run`; "
            "model-only = full batches of random tiles through the workers' predictor "
            "from as many threads as task threads (as distinct tiles: / halo factor); "
            "read-only = the blocks' kept-window boxes read by block tasks. "
            "Ratio = e2e / min(model-only limit, read-only).", "",
            "| model | tiles (predictions) | e2e tiles/s | blocks-phase tiles/s | "
            "model-only predictions/s | model limit tiles/s | read-only tiles/s | "
            "limited by | ratio | ratio blocks | device busy in blocks phase |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *(_runs_row(key, e) for key, e in runs.items())]


def _run_stages(runs: dict[str, Any]) -> list[str]:
    e2es = [e.get("e2e", {}) for e in runs.values()]
    lines = ["", "### Stages (median seconds over rounds, summed over slides; block "
             "stages are task-thread seconds)", "",
             "| stage | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for k in dict.fromkeys(k for e in e2es for k in e.get("stage_s", {})):
        lines.append(f"| {k} | " + " | ".join(
            str(e.get("stage_s", {}).get(k, "–")) for e in e2es) + " |")
    lines.append("| **run wall** | " + " | ".join(
        med(e.get("wall_s"), "{:.2f}") for e in e2es) + " |")
    lines.append("| blocks phase | " + " | ".join(
        med(e.get("blocks_wall_s"), "{:.2f}") for e in e2es) + " |")
    lines.append("")
    for key, e in runs.items():
        p = e.get("e2e", {}).get("predictor")
        ran_in = sorted({w.get("precision", "float32")
                         for w in e.get("warm", {}).get("workers", [])})
        if p:
            lines.append(f"- {key}: last run's predictor: {p['batches']} batches, "
                         f"{p['windows']} windows, fill {pct(p['fill'])}; warm-up "
                         f"{e.get('warm', {}).get('seconds')} s on "
                         f"{', '.join(e.get('device', []))} in "
                         f"{', '.join(ran_in) or 'n/a'}")
    return [*lines, ""]


#: The block stages, as ``report.json``'s ``stage_s`` names them; ``read`` is the reference.
BLOCK_STAGES = ("read", "cut", "predict", "blend", "write")


def host_feed(record: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per model of a dry run: blocks-phase and read-only tiles/s per task thread, and the
    block stages' task-thread milliseconds per tile, with the host's (cut, predict's host
    side, blend, write) over the read's.

    With the device simulated, every second of the blocks phase is the host's: this is what
    the CPU can feed a device, whatever device is bought.
    """
    cl = record.get("cluster", {})
    threads = max(1, int(cl.get("workers", 1) or 1) * int(cl.get("threads_per_worker", 1) or 1))
    out: dict[str, dict[str, float | None]] = {}
    for key, e in (record.get("runs") or {}).items():
        tiles = e.get("plan", {}).get("tiles") or 0
        stage_s = e.get("e2e", {}).get("stage_s", {})
        ms = {k: (1000 * float(stage_s[k]) / tiles if tiles and k in stage_s else None)
              for k in BLOCK_STAGES}
        host = [v for k, v in ms.items() if k != "read" and v is not None]
        blocks = (e.get("e2e", {}).get("blocks_tiles_per_s") or {}).get("median")
        read = (e.get("read_only", {}).get("tiles_per_s") or {}).get("median")
        out[key] = {
            "threads": threads,
            "blocks_tiles_per_s_per_thread": blocks / threads if blocks else None,
            "read_tiles_per_s_per_thread": read / threads if read else None,
            **{f"{k}_ms_per_tile": v for k, v in ms.items()},
            "host_over_read": (sum(host) / ms["read"]) if host and ms["read"] else None,
        }
    return out


def _host_feed(record: dict[str, Any]) -> list[str]:
    def f(v: float | None, spec: str = "{:.2f}") -> str:
        return "–" if v is None else spec.format(v)

    feed = host_feed(record)
    lines = ["## What this CPU can feed (dry run: the device is simulated, the host is real)",
             "", "| model | blocks-phase tiles/s per task thread | read-only tiles/s per task "
             "thread | " + " | ".join(f"{k} ms/tile" for k in BLOCK_STAGES)
             + " | host / read |", "|---|---|---|" + "---|" * len(BLOCK_STAGES) + "---|"]
    for key, h in feed.items():
        lines.append(f"| {key} | {f(h['blocks_tiles_per_s_per_thread'], '{:.0f}')} | "
                     f"{f(h['read_tiles_per_s_per_thread'], '{:.0f}')} | "
                     + " | ".join(f(h[f"{k}_ms_per_tile"]) for k in BLOCK_STAGES)
                     + f" | {f(h['host_over_read'], '{:.1f}x')} |")
    lines += ["", "Stage times are task-thread milliseconds per tile of the blocks phase "
              "(predict: the host's side of the device, waiting included). Projection: a "
              "machine with N task threads feeds a device up to N x the per-thread figure. "
              "That assumes the blocks phase scales linearly with task threads (blocks are "
              "independent; they share memory bandwidth, the page cache and the store's "
              "filesystem), the same slides and the same model window; the slides' "
              "finishing (pyramid tail, polygons, overlay) comes on top, overlapping later "
              "slides' blocks.", ""]
    return lines


def _noisy(noisy: dict[str, Any]) -> list[str]:
    return ["## Polygons of a speckled map (random-weight UNet)", "",
            "| slide | model | tiles | foreground components (share of predicted px) | "
            "run wall s | vectorize s | vectorize share (goal < 10 %) | tumour regions "
            "kept |", "|---|---|---|---|---|---|---|---|",
            f"| {Path(noisy['slide']).name} | {noisy['model']} | {noisy['tiles']} | "
            f"{noisy['speckle']['components']} "
            f"({pct(noisy['speckle']['foreground_share'])}) | "
            f"{noisy['wall_s']} | {noisy['vectorize_s']:.2f} | "
            f"{pct(noisy['vectorize_share'])}{_spread(noisy)} | {noisy['tumour_regions']} |",
            "", "The run with the median share of "
            f"{len(noisy.get('runs') or [noisy])} (range in brackets).", ""]


def _spread(noisy: dict[str, Any]) -> str:
    """`` (lo–hi)`` of the runs' vectorize shares, when there were several."""
    shares = [r["vectorize_share"] for r in noisy.get("runs") or []
              if r.get("vectorize_share") is not None]
    return f" ({pct(min(shares))}–{pct(max(shares))})" if len(shares) > 1 else ""


def _simulated(sim: dict[str, Any]) -> list[str]:
    cal = sim.get("calibration")
    lines = ["## Simulated accelerator: is the device kept busy?", ""]
    if cal:
        lines += [f"CPU side (a run with S = {cal['batch_s']} s per batch): blocks "
                  f"phase {cal['blocks_wall_s']} s for {cal['tile_predictions']} "
                  f"predictions = {cal['cpu_side_s_per_batch']} s per batch of "
                  f"{sim['batch_size']}; S = {sim['margin']} x that.", ""]
    return [*lines,
            "| S per batch | batch | tiles (predictions) | blocks phase s | e2e tiles/s | "
            "blocks-phase tiles/s | device-bound tiles/s | batch fill | "
            "device busy share (goal >= 90 %) | work share |",
            "|---|---|---|---|---|---|---|---|---|---|",
            f"| {sim['batch_s']} s | {sim['batch_size']} | {sim['tiles']} "
            f"({sim['tile_predictions']}) | {med(sim['blocks_wall_s'], '{:.2f}')} | "
            f"{med(sim['tiles_per_s'])} | {med(sim['blocks_tiles_per_s'])} | "
            f"{sim['device_bound_tiles_per_s']} | {med(sim['fill'], '{:.3f}')} | "
            f"{med(sim['busy_share'], '{:.3f}')} | {med(sim['work_share'], '{:.3f}')} |",
            "", "Work share = the device time the windows need in full batches / the "
            "blocks phase (the busy share without padded slots).", ""]


def _steps(steps: dict[str, Any]) -> list[str]:
    lines = ["## Steps", "", "| step | status | seconds |", "|---|---|---|"]
    for name, st in steps.items():
        err = f": {st['error']}" if st.get("error") else ""
        lines.append(f"| {name} | {st['status']}{err} | {st['seconds']} |")
    return [*lines, ""]


def device_markdown(record: dict[str, Any]) -> str:
    """A device profile's record as markdown."""
    lines = _header(record)
    runs = record.get("runs") or {}
    lines += _cold(runs)
    if runs and any("e2e" in e for e in runs.values()):
        lines += _runs(runs) + _run_stages(runs)
        if record.get("config", {}).get("simulate_batch_s"):
            lines += _host_feed(record)
    if record.get("noisy"):
        lines += _noisy(record["noisy"])
    sim = record.get("simulated")
    if sim and sim.get("runs"):
        lines += _simulated(sim)
    if record.get("steps"):
        lines += _steps(record["steps"])
    return markdown_end(record, lines)
