#!/usr/bin/env bash
# Reproduce the figures of benchmarks/README.md: throughput against the model-only and read-only
# limits, stage timings and the seeds' way on 10k and 30k px synthetic slides, memory on 10k,
# 30k and 100k px slides, 1 vs 2 workers and a batch size sweep, in one `wsi-seg bench` process.
#
#   benchmarks/run_benchmarks.sh                    # everything (about 30-40 min on 2 cores,
#                                                   # plus about 25 min once to write the slides)
#   benchmarks/run_benchmarks.sh --only memory      # extra flags go to `wsi-seg bench`
#   QUICK=1 benchmarks/run_benchmarks.sh            # a 2-minute check of the machinery
#   PROFILE=simulated benchmarks/run_benchmarks.sh  # the CPU side against a simulated
#                                                   # accelerator (~3 min on 2 cores)
#   PROFILE=gpu benchmarks/run_benchmarks.sh        # the GPU workstation profile (on the
#                                                   # device machine: benchmarks/gpu_bench.sh)
#
# Environment: OUT (results folder, default benchmarks/results/<UTC date>), WSI_SEG_BENCH_CACHE
# (synthetic slides, default ~/.cache/wsi-seg/bench), SIZES, MEMORY_SIZES, REPEATS, WSI_SEG
# (the wsi-seg executable, default .venv/bin/wsi-seg). Keep the machine otherwise idle: the
# load average is recorded in bench.json, and shared cores make every figure noisy.
set -euo pipefail
cd "$(dirname "$0")/.."

WSI_SEG=${WSI_SEG:-.venv/bin/wsi-seg}
[ -x "$WSI_SEG" ] || WSI_SEG=wsi-seg
OUT=${OUT:-benchmarks/results/$(date -u +%Y-%m-%dT%H%MZ)}
CACHE=${WSI_SEG_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wsi-seg/bench}

if [ -n "${PROFILE:-}" ]; then
    exec "$WSI_SEG" bench --profile "$PROFILE" --out "$OUT" --cache "$CACHE" "$@"
fi

if [ -n "${QUICK:-}" ]; then
    exec "$WSI_SEG" bench --quick --out "$OUT" --cache "$CACHE" "$@"
fi

echo "wsi-seg bench -> $OUT (slides cached in $CACHE); load: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || uptime)"
exec "$WSI_SEG" bench \
    --sizes "${SIZES:-10000,30000}" \
    --memory-sizes "${MEMORY_SIZES:-10000,30000,100000}" \
    --seeds-size 10000 --scaling-size 10000 \
    --repeats "${REPEATS:-3}" \
    --out "$OUT" --cache "$CACHE" "$@"
