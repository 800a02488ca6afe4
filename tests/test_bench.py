"""``wsi-seg bench``: structure and internal consistency of a record from a tiny real run.

No timing thresholds here (speed goals live in benchmarks/): only that every figure is there,
positive, and consistent with the others (e.g. predictions/s = tiles/s x halo factor).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.model_fixtures import mean_red_patch, small_unet
from wsi_seg.bench import (
    NOT_MEASURED_GPU,
    BenchConfig,
    Benchmark,
    markdown,
    memory_rows,
    rotate,
    summary,
)
from wsi_seg.cli import build_parser, main

SIZE = 2000


def close(a: float, b: float, rel: float = 0.02) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b)) + 1e-3


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bench-models")
    return {"unet": small_unet(d / "unet.keras", roi=64, mpp=1.0),
            "patch": mean_red_patch(d / "patch.keras", roi=50, mpp=4.0)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-cache")


def config(out: Path, cache: Path, paths: dict[str, Path], **kw: object) -> BenchConfig:
    base = dict(out_dir=out, cache_dir=cache, sizes=(SIZE,), repeats=2, model_paths=paths,
                model_seconds=0.5, seeds_seconds=0.5,
                batch_sizes={"unet": (4, 8), "patch": (64,)})
    base.update(kw)
    return BenchConfig(**base)  # type: ignore[arg-type]


def test_summary_and_rotate() -> None:
    s = summary([3.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 3)
    assert summary([])["median"] is None
    assert rotate([1, 2, 3], 1) == [2, 3, 1] and rotate([1, 2, 3], 3) == [1, 2, 3]


def test_memory_rows_relative_to_smallest() -> None:
    rows = memory_rows([
        {"model": "unet", "size_px": 30000, "worker_peak_rss_mib": [900.0],
         "client_peak_rss_mib": 220.0},
        {"model": "unet", "size_px": 10000, "worker_peak_rss_mib": [800.0, 850.0],
         "client_peak_rss_mib": 200.0},
        {"model": "unet", "size_px": 100000, "error": "failed"},
    ])
    assert rows[1]["worker_peak_vs_smallest"] == 1.0
    assert rows[0]["worker_peak_vs_smallest"] == round(900 / 850, 3)
    assert rows[0]["client_peak_vs_smallest"] == 1.1
    assert "worker_peak_vs_smallest" not in rows[2]


def test_throughput_and_seeds_record(tmp_path: Path, cache: Path,
                                     models: dict[str, Path]) -> None:
    cfg = config(tmp_path / "out", cache, models, parts=("throughput", "seeds"))
    rec = Benchmark(cfg, say=lambda s: None).run()

    m = rec["machine"]
    assert m["cores"] >= 1 and m["ram_gib"] > 0 and m["date"] and m["wsi_seg_version"]
    assert m["versions"]["tensorflow"]
    assert rec["cluster"]["devices"]
    assert rec["slides"][str(SIZE)]["size_px"] == SIZE

    assert [e["model"] for e in rec["throughput"]] == ["unet", "patch"]
    for e in rec["throughput"]:
        assert e["tiles"] > 0 and e["tile_predictions"] >= e["tiles"]
        assert close(e["halo_factor"], e["tile_predictions"] / e["tiles"], 1e-3)
        e2e, mo, ro = e["e2e"], e["model_only"], e["read_only"]
        for s in (e2e["tiles_per_s"], e2e["blocks_tiles_per_s"], e2e["predictions_per_s"],
                  mo["predictions_per_s"], mo["limit_tiles_per_s"], ro["tiles_per_s"],
                  e["ratio"]):
            assert s["n"] == 2 and s["min"] > 0 and s["min"] <= s["median"] <= s["max"]
        # Each round's figures are tied together exactly.
        for t, p in zip(e2e["tiles_per_s"]["values"], e2e["predictions_per_s"]["values"],
                        strict=True):
            assert close(p, t * e["halo_factor"])
        for lim, mp in zip(mo["limit_tiles_per_s"]["values"],
                           mo["predictions_per_s"]["values"], strict=True):
            assert close(lim, mp / e["halo_factor"])
        for r, t, lim, rd in zip(e["ratio"]["values"], e2e["tiles_per_s"]["values"],
                                 mo["limit_tiles_per_s"]["values"],
                                 ro["tiles_per_s"]["values"], strict=True):
            assert close(r, t / min(lim, rd))
        # The blocks phase is part of the run, so its rate is at least the run's.
        for rb, r in zip(e["ratio_blocks"]["values"], e["ratio"]["values"], strict=True):
            assert rb >= r * 0.99
        assert e["limited_by"] in ("model", "read")
        st = e["stages"]
        for key in ("read", "predict", "blend", "write", "pyramid", "vectorize", "geojson",
                    "score"):
            assert st["stages"][key]["total_s"] >= 0
            assert close(st["stages"][key]["share_of_wall"],
                         st["stages"][key]["total_s"] / st["wall_s"], 0.05)
        assert st["stages"]["predict"]["total_s"] > 0
        assert 0 < st["blocks_wall_s"] <= st["wall_s"]
        assert e2e["score"] is not None  # the synthetic truth was found and scored
        b = e["budget"]
        terms = ("model_distinct_s", "halo_duplicates_s", "batch_padding_s",
                 "blocks_not_hidden_s", "finish_s", "other_s")
        assert close(sum(b[k] for k in terms), b["wall_s"])
        assert b["model_distinct_s"] > 0 and b["halo_duplicates_s"] >= 0
        assert b["padded_predictions"] >= 0
        assert e2e["cold_wall_s"] > 0  # the smallest size also gets a cold `wsi-seg run`

    for s in rec["seeds_way"]:
        assert s["seeds_tiles_per_s"]["min"] > 0 and min(s["seeds_tiles_done"]) >= 1
        for sp, w, sd in zip(s["speedup"]["values"], s["wsi_seg_tiles_per_s"]["values"],
                             s["seeds_tiles_per_s"]["values"], strict=True):
            assert close(sp, w / sd, 0.05)

    on_disk = json.loads((cfg.out_dir / "bench.json").read_text())
    assert on_disk["throughput"][0]["tiles"] == rec["throughput"][0]["tiles"]
    md = (cfg.out_dir / "bench.md").read_text()
    assert "## Throughput against the limits" in md and "seeds' way" in md
    assert "## Where the wall time goes" in md
    assert not (cfg.out_dir / "runs").exists()  # scratch runs are removed


def test_memory_and_scaling_record(tmp_path: Path, cache: Path,
                                   models: dict[str, Path]) -> None:
    cfg = config(tmp_path / "out", cache, models, parts=("memory", "scaling"), repeats=1,
                 models=("unet",), memory_sizes=(SIZE,))
    rec = Benchmark(cfg, say=lambda s: None).run()
    (row,) = rec["memory"]
    assert row["model"] == "unet" and row["tiles"] > 0
    assert row["workers"] == len(row["worker_peak_rss_mib"]) >= 1
    assert min(row["worker_peak_rss_mib"]) > 0 and row["client_peak_rss_mib"] > 0
    assert row["worker_peak_vs_smallest"] == 1.0
    sc = rec["scaling"]
    assert sorted(r["workers"] for r in sc["workers"]) == [1, 2]
    for r in sc["workers"]:
        assert r["e2e_tiles_per_s"]["median"] > 0
        assert r["model_only_predictions_per_s"]["median"] > 0
    assert [r["batch_size"] for r in sc["batch_size"]] == [4, 8]
    if not rec["machine"]["gpus"]:
        assert sc["mixed_precision"] == {"measured": False, "note": NOT_MEASURED_GPU}
        assert sc["gpu_idle_share"]["note"] == NOT_MEASURED_GPU
    md = markdown(rec)
    assert "## Peak memory" in md and "## Scaling" in md


def test_cli_help_explains_figures(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--help"])
    out = capsys.readouterr().out
    for word in ("e2e tiles/s", "model-only", "read-only", "ratio", "seeds' way", "memory",
                 "scaling", "--sizes", "--repeats", "--quick"):
        assert word in out


def test_cli_rejects_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--out", str(tmp_path), "--models", "unet,resnet"]) == 2
    assert "resnet" in capsys.readouterr().err
    assert main(["bench", "--out", str(tmp_path), "--unet", str(tmp_path / "no.keras")]) == 2
    assert "not found" in capsys.readouterr().err
