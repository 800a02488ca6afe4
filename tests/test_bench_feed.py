"""The dry run's "what this CPU can feed" figures: per task thread, and the block stages'
thread-milliseconds per tile against the read's, from a device profile's record."""

from __future__ import annotations

import pytest

from wsi_seg.tools.bench.device_report import device_markdown, host_feed

RECORD = {
    "profile": "gpu", "machine": {"cores": 2}, "config": {"simulate_batch_s": 0.001},
    "cluster": {"workers": 1, "threads_per_worker": 2},
    "runs": {"bundled": {
        "plan": {"tiles": 1000, "tile_predictions": 1500, "tile_px": 256},
        "e2e": {"stage_s": {"read": 0.5, "cut": 0.1, "predict": 0.2, "blend": 0.6,
                            "write": 0.8, "vectorize": 3.0},
                "blocks_tiles_per_s": {"median": 400.0}},
        "read_only": {"tiles_per_s": {"median": 3000.0}},
        "model_only": {}}},
}


def test_host_feed_per_thread_and_per_tile() -> None:
    h = host_feed(RECORD)["bundled"]
    assert h["blocks_tiles_per_s_per_thread"] == 200.0
    assert h["read_tiles_per_s_per_thread"] == 1500.0
    assert h["read_ms_per_tile"] == 0.5 and h["write_ms_per_tile"] == 0.8
    assert h["host_over_read"] == pytest.approx((0.1 + 0.2 + 0.6 + 0.8) / 0.5)


def test_dry_run_markdown_has_the_section_and_a_real_run_does_not() -> None:
    md = device_markdown(RECORD)
    assert "## What this CPU can feed" in md and "| bundled | 200 | 1500 |" in md
    assert "3.4x" in md and "assumes the blocks phase scales linearly" in md
    real = {**RECORD, "config": {"simulate_batch_s": 0}}
    assert "What this CPU can feed" not in device_markdown(real)
