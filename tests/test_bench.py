"""``wsi-seg bench``: structure and internal consistency of a record from a tiny real run.

No timing thresholds here (speed goals live in benchmarks/): only that every figure is there,
positive, and consistent with the others (e.g. predictions/s = tiles/s x halo factor).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.model_fixtures import mean_red_patch, small_unet
from wsi_seg.cli import build_parser, main
from wsi_seg.tools.bench import (
    NOT_MEASURED_GPU,
    BenchConfig,
    Benchmark,
    markdown,
    memory_rows,
    rotate,
    summary,
)

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
            # total_s is rounded to 1 ms: on a tiny stage that alone moves the share by
            # 0.0005 / wall.
            share, total = st["stages"][key]["share_of_wall"], st["stages"][key]["total_s"]
            assert abs(share - total / st["wall_s"]) <= 0.05 * share + 0.0005 / st["wall_s"] \
                + 1e-3
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


# -- device profiles (wsi_seg.tools.bench) ----------------------------------------------
def test_device_helpers() -> None:
    from wsi_seg.tools.bench import UNetSpec, busy_between, simulated_busy, stats_delta

    spec = UNetSpec.parse("512,4,32")
    assert (spec.tile_px, spec.depth, spec.base_filters, spec.filters) == (512, 4, 32, "32-256")
    for bad in ("512,4", "500,4,32", "a,b,c"):
        with pytest.raises(ValueError):
            UNetSpec.parse(bad)

    samples = [(0.0, 100.0), (1.0, 50.0), (2.0, 0.0), (3.0, 100.0)]
    b = busy_between(samples, 0.5, 2.5)
    assert (b["samples"], b["mean_utilisation"], b["busy_share"], b["nonidle_share"]) == (
        2, 25.0, 0.25, 0.5)
    assert busy_between(samples, 5.0, 6.0)["busy_share"] is None

    before = {"w1": [{"id": 1, "batches": 2, "windows": 2, "padded_slots": 30,
                      "device_busy_s": 1.0}]}
    after = {"w1": [{"id": 1, "batches": 12, "windows": 302, "padded_slots": 50,
                     "device_busy_s": 11.0},
                    {"id": 2, "batches": 1, "windows": 16, "padded_slots": 0,
                     "device_busy_s": 1.0}]}
    d = stats_delta(before, after)
    assert (d["batches"], d["windows"], d["padded_slots"]) == (11, 316, 20)
    assert d["device_busy_s"] == 11.0 and d["fill"] == round(316 / 336, 4)
    assert stats_delta({}, {"w": [{"id": 3, "batches": 1, "windows": 1, "padded_slots": 0,
                                   "device_busy_s": None}]})["device_busy_s"] is None
    # Two warm-up windows (two single-window batches) are taken out of the blocks phase.
    rec = {"predictor": {"device_busy_s": 12.0, "batches": 12, "windows": 302},
           "tile_predictions": 300, "blocks_wall_s": 12.5}
    s = simulated_busy(rec)
    assert (s["warm_windows"], s["block_batches"], s["device_busy_s"]) == (2, 10, 10.0)
    assert s["busy_share"] == 0.8 and s["busy_method"] == "warm batches"
    # The two warm-up windows shared one batch: the worker's timeline shows it.
    rec["predictor"] = {"device_busy_s": 11.0, "batches": 11, "windows": 302}
    timeline = [(0.0, 0.0, 0, 0), (0.5, 0.0, 0, 0), (1.0, 1.0, 1, 2), (1.5, 1.0, 1, 2),
                (2.0, 3.0, 3, 40), (9.0, 11.0, 11, 302)]
    s = simulated_busy(rec, {"w1": timeline})
    assert (s["block_batches"], s["device_busy_s"], s["busy_method"]) == (10, 10.0, "timeline")
    assert simulated_busy(rec, {"w1": timeline, "w2": timeline})["block_batches"] == 9
    # One warm-up window rode in the first block batch: that batch ran in the blocks phase.
    late = [(0.0, 0.0, 0, 0), (1.0, 1.0, 1, 1), (2.0, 2.0, 2, 33), (9.0, 11.0, 11, 302)]
    assert simulated_busy(rec, {"w1": late})["block_batches"] == 10


def test_device_sampler_reads_nvidia_smi(tmp_path: Path) -> None:
    import time

    from wsi_seg.tools.bench import DeviceSampler, busy_between

    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 40\necho 80\n")  # two GPUs
    fake.chmod(0o755)
    sampler = DeviceSampler(0.01, exe=str(fake)).start()
    t0 = time.perf_counter()
    while len(sampler.samples) < 2:  # as long as the machine takes: no time is asserted
        time.sleep(0.01)
    samples = sampler.stop()
    assert len(samples) >= 2 and all(u == 60.0 for _, u in samples)
    assert busy_between(samples, t0 - 1, time.perf_counter())["busy_share"] == 0.6
    assert not DeviceSampler(exe="").start().stop()  # no nvidia-smi: no samples


def test_simulated_profile(tmp_path: Path, cache: Path) -> None:
    from wsi_seg.tools.bench import DeviceBenchmark, simulated_config

    # The bundled UNet's card (256 px tiles at 1 µm/px): the simulated device reads only it.
    cfg = simulated_config(tmp_path / "out", cache, synth_size=SIZE, synth_seeds=(11,),
                           batch_size=2, repeats=2, simulate_margin=2.0)
    rec = DeviceBenchmark(cfg, say=lambda s: None).run()
    assert all(st["status"] == "ok" for st in rec["steps"].values()), rec["steps"]
    assert rec["cluster"]["workers"] == 1 and rec["cluster"]["threads_per_worker"] >= 2
    sim = rec["simulated"]
    cal = sim["calibration"]
    # The device is set slower than the CPU side it was measured to be.
    assert cal["batch_s"] == cfg.calibrate_batch_s and cal["cpu_side_s_per_batch"] > 0
    assert close(sim["batch_s"], max(0.005, 2.0 * cal["cpu_side_s_per_batch"]), 0.001)
    assert len(sim["runs"]) == 2
    for r in sim["runs"]:
        assert r["batch_s"] == sim["batch_s"] and r["tiles"] > 0
        assert r["tile_predictions"] >= r["tiles"]
        # Every window went through the simulated device, in batches of 2, each S long.
        p = r["predictor"]
        assert p["windows"] >= r["tile_predictions"]
        assert r["block_batches"] >= math.ceil(r["tile_predictions"] / 2)
        assert close(r["device_busy_s"], r["block_batches"] * sim["batch_s"], 0.25)
        # Busy time inside the blocks phase cannot exceed the phase.
        assert 0 < r["busy_share"] <= 1.05
        assert close(r["busy_share"], r["device_busy_s"] / r["blocks_wall_s"], 0.01)
    assert sim["busy_share"]["n"] == 2
    for w, r in zip(sim["work_share"]["values"], sim["runs"], strict=True):
        assert close(w, r["tile_predictions"] / 2 * sim["batch_s"] / r["blocks_wall_s"], 0.01)
        assert w <= r["busy_share"] * 1.01  # padded slots only add busy time
    assert sim["device_bound_tiles_per_s"] == round(
        2 / sim["batch_s"] / (sim["tile_predictions"] / sim["tiles"]), 2)
    on_disk = json.loads((cfg.out_dir / "bench.json").read_text())
    assert on_disk["simulated"]["batch_s"] == sim["batch_s"]
    md = (cfg.out_dir / "bench.md").read_text()
    assert "Simulated accelerator" in md and "device busy share" in md
    assert not (cfg.out_dir / "runs").exists()


def test_gpu_profile_dry_run(tmp_path: Path, cache: Path) -> None:
    """The GPU workstation profile's every step at a tiny size, its models on the simulated
    device (no nvidia-smi here; the framework path is the one the other tests run)."""
    from wsi_seg.tools.bench import NOT_SAMPLED, DeviceBenchConfig, DeviceBenchmark, UNetSpec

    cfg = DeviceBenchConfig(out_dir=tmp_path / "out", cache_dir=cache, synth_size=SIZE,
                            synth_seeds=(11, 12), repeats=1, model_seconds=0.3,
                            simulate_batch_s=0.01, heavy=UNetSpec(128, 2, 4),
                            noisy=UNetSpec(128, 2, 2), noisy_size=SIZE, noisy_seed=13,
                            scratch_dir=tmp_path / "scratch")
    rec = DeviceBenchmark(cfg, say=lambda s: None).run()
    assert all(st["status"] == "ok" for st in rec["steps"].values()), rec["steps"]
    assert [Path(s["path"]).name for s in rec["slides"]] == [
        f"synth-{SIZE}-seed{s}.svs" for s in (11, 12, 13)]
    assert [s["roles"] for s in rec["slides"]] == [["main"], ["main"], ["noisy"]]
    assert rec["models"]["heavy"]["tile_px"] == 128
    assert rec["models"]["heavy"]["architecture"]["base_filters"] == 4
    assert rec["models"]["noisy"]["architecture"]["base_filters"] == 2
    assert len(list((cache / "models").glob("*.keras"))) >= 2  # built once into the cache

    # A cold run per model entry, among its warm rounds, against its model-only rate.
    for key in ("bundled", "heavy"):
        e = rec["runs"][key]
        cold = e["cold"]
        start, wall = cold["startup_s"]["median"], cold["wall_s"]["median"]
        assert cold["tiles"] == e["plan"]["tiles"] and 0 < start < wall
        (w,) = cold["startup_workers"]
        assert w["device"] == "simulated:0" and w["load_s"] >= 0
        assert close(cold["tiles_per_s_after_startup"]["median"],
                     cold["tiles"] / (wall - start))
        assert close(e["ratio_cold"], cold["tiles_per_s"]["median"]
                     / e["model_only"]["limit_tiles_per_s"]["median"])

    for key, tile in (("bundled", 256), ("heavy", 128)):
        e = rec["runs"][key]
        plan, e2e, mo, ro = e["plan"], e["e2e"], e["model_only"], e["read_only"]
        assert plan["slides"] == 2 and plan["tiles"] > 0 and plan["tile_px"] == tile
        for s in (e2e["tiles_per_s"], e2e["blocks_tiles_per_s"], mo["predictions_per_s"],
                  ro["tiles_per_s"]):
            assert s["n"] == 1 and s["median"] > 0
        assert close(mo["limit_tiles_per_s"]["median"],
                     mo["predictions_per_s"]["median"] / e["halo_factor"])
        limit = min(mo["limit_tiles_per_s"]["median"], ro["tiles_per_s"]["median"])
        assert close(e["limit_tiles_per_s"], limit)
        assert close(e["ratio"], e2e["tiles_per_s"]["median"] / limit)
        assert e["ratio_blocks"] >= e["ratio"] * 0.99
        assert e["limited_by"] in ("model", "read")
        assert mo["callers"] == rec["cluster"]["threads_per_worker"]
        assert mo["device"] == ["simulated:0"] and e["device"] == ["simulated:0"]
        assert e["device_busy_blocks"] == {"note": NOT_SAMPLED}
        assert e2e["predictor"]["windows"] >= plan["tile_predictions"]
        assert {"read", "predict", "blend", "vectorize"} <= set(e2e["stage_s"])

    n = rec["noisy"]
    assert n["tiles"] > 0 and n["wall_s"] > 0 and "vectorize" in n["stage_s"]
    assert close(n["vectorize_share"], n["vectorize_s"] / n["wall_s"], 0.01)
    shares = sorted(r["vectorize_share"] for r in n["runs"])
    assert len(shares) == cfg.repeats and n["vectorize_share"] == shares[(len(shares) - 1) // 2]
    # The simulated device outputs each cell's darkness: dense nuclei pass the threshold.
    assert n["speckle"]["components"] > 0 and n["speckle"]["mosaic_px"] > 0
    md = (cfg.out_dir / "bench.md").read_text()
    for title in ("Dry run", "As `wsi-seg run` runs it", "End to end against the limits",
                  "Stages", "Polygons of a speckled map", "## Steps"):
        assert title in md
    assert not (tmp_path / "scratch").exists()


def test_device_profile_step_timeout(tmp_path: Path) -> None:
    """A step that overruns its limit is recorded and the benchmark goes on."""
    import time

    from wsi_seg.tools.bench import DeviceBenchConfig, DeviceBenchmark

    bm = DeviceBenchmark(DeviceBenchConfig(out_dir=tmp_path, cache_dir=tmp_path,
                                           step_timeout_s=0.2), say=lambda s: None)
    assert bm.step("slow", lambda: time.sleep(5)) is None
    assert bm.step("fails", lambda: 1 / 0) is None
    assert bm.step("fine", lambda: 42) == 42
    # A process the overrunning step started (as the cold run starts a cluster) is ended.
    import subprocess

    procs: list[subprocess.Popen[bytes]] = []

    def spawn() -> None:
        procs.append(subprocess.Popen(["sleep", "60"]))
        time.sleep(5)

    assert bm.step("spawns", spawn) is None
    procs[0].wait(timeout=10)  # ended long before its 60 s (TimeoutExpired otherwise)
    steps = json.loads((tmp_path / "bench.json").read_text())["steps"]
    assert steps["slow"]["status"] == "timed out"
    assert steps["fails"]["status"] == "failed" and "ZeroDivisionError" in steps["fails"]["error"]
    assert steps["fine"]["status"] == "ok" and steps["spawns"]["status"] == "timed out"


def test_cli_device_profiles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from wsi_seg.cli.bench import build_device_config

    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--help"])
    out = capsys.readouterr().out
    for word in ("--profile", "simulated", "busy share", "--step-timeout", "--heavy"):
        assert word in out
    args = build_parser().parse_args(["bench", "--profile", "gpu", "--out", str(tmp_path),
                                      "--synth-size", "3000", "--heavy", "256,3,8",
                                      "--steps", "bundled,noisy", "--step-timeout", "60"])
    cfg = build_device_config(args)
    assert (cfg.synth_size, cfg.heavy.tile_px, cfg.steps, cfg.step_timeout_s) == (
        3000, 256, ("bundled", "noisy"), 60.0)
    assert cfg.synth_seeds == (11, 12, 13, 14)
    assert cfg.precision == "float32"  # today's results unless asked
    bf16 = build_device_config(build_parser().parse_args(
        ["bench", "--profile", "gpu", "--out", str(tmp_path), "--precision", "bfloat16"]))
    from wsi_seg.tools.bench import DeviceBenchmark

    # What the bench's runs and model-only rounds are given (cold: no cluster needed here).
    assert DeviceBenchmark(bf16, say=lambda s: None).infer(cold=True).precision == "bfloat16"
    sim = build_device_config(build_parser().parse_args(
        ["bench", "--profile", "simulated", "--out", str(tmp_path)]))
    assert (sim.profile, sim.batch_size, sim.synth_size) == ("simulated", 32, 10000)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--profile", "gpu", "--precision", "fp8"])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err
    for bad in (["--steps", "bundled,warp"], ["--heavy", "500,4,32"],
                ["--slides", str(tmp_path / "none.svs")]):
        assert main(["bench", "--profile", "gpu", "--out", str(tmp_path), *bad]) == 2
        assert capsys.readouterr().err
    assert main(["bench", "--profile", "simulated", "--out", str(tmp_path), "--steps",
                 "cold"]) == 2


def test_bench_help_shows_the_defaults_each_profile_uses(capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    """The defaults in --help are the configurations' own, per profile (the text once said 3
    and 20 s where the device profiles used 2 and 10 s)."""
    from wsi_seg.cli import main
    from wsi_seg.tools.bench.config import BenchConfig, DeviceBenchConfig

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    std = BenchConfig(out_dir=Path("."), cache_dir=Path("."))
    gpu = DeviceBenchConfig(out_dir=Path("."), cache_dir=Path("."), profile="gpu")
    assert f"interleaved rounds [{std.repeats}; --profile gpu {gpu.repeats}," in text
    assert f"device profiles {gpu.model_seconds:g}]" in text
