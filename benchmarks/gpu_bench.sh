#!/usr/bin/env bash
# The GPU workstation benchmark of issue 11, ready to run on the device machine (one H100/H200,
# 16 cores, python3.12 with JAX CUDA, no TensorFlow, no network): `wsi-seg bench --profile gpu`
# on four synthetic 20,000 x 20,000 px slides (`wsi-seg synth --seed 11..14`, written in
# parallel) with the bundled UNet, a heavier random-weight UNet (512 px tiles, 32-256 filters)
# and a noisy one (16-128 filters, 16,000 px slide), on JAX. Every step has a time limit and the
# results are rewritten after each step, so whatever finished is in $OUT.
#
# Carry the wheels of what the device lacks (from the project root, once, here):
#   echo /.whl/ >> .git/info/exclude; ../shared/device/fetch-wheels.sh
# then on the device machine (the `run` tool, with .whl carried):
#   benchmarks/gpu_bench.sh                      # writes $OUT/{bench/bench.json,bench/bench.md,...}
# and try it here first on the CPU, small (same code path, JAX on the CPU):
#   PYTHON=.venv/bin/python OUT=/tmp/gpu-try GPU_BENCH_SIZE=3000 GPU_BENCH_NOISY_SIZE=3000 \
#     benchmarks/gpu_bench.sh --heavy 128,3,8 --model-seconds 2 --repeats 1
#
# If the heavier UNet runs out of GPU memory at the default batch of 128 (512 px tiles: roughly
# 25 GB of activations), add `--batch-size 64`; a failed step is recorded and the others go on.
#
# Environment: OUT (results; default gpu-bench-out), GPU_BENCH_SIZE (slide edge, 20000),
# GPU_BENCH_NOISY_SIZE (16000), GPU_BENCH_CACHE (slides and models, /tmp/wsi-seg-bench),
# GPU_BENCH_TOTAL_S (limit on the whole bench, 420), GPU_BENCH_STEP_S (limit on each step or
# measurement, 150), PYTHON (python3), KERAS_BACKEND (jax). Extra arguments go to
# `wsi-seg bench`.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
OUT=${OUT:-gpu-bench-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
SIZE=${GPU_BENCH_SIZE:-20000}
NOISY_SIZE=${GPU_BENCH_NOISY_SIZE:-16000}
CACHE=${GPU_BENCH_CACHE:-/tmp/wsi-seg-bench}
TOTAL=${GPU_BENCH_TOTAL_S:-420}
STEP=${GPU_BENCH_STEP_S:-150}
LOG="$OUT/gpu_bench.log"
log() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG" >&2; }

# 1. What the device lacks, from the carried wheels; the checkout itself comes first.
if compgen -G ".whl/*.whl" > /dev/null; then
    log "installing $(ls .whl/*.whl | wc -l) wheels into /tmp/site"
    timeout 180 "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
        >> "$LOG" 2>&1 || log "pip install failed (exit $?); going on with what is there"
    export PATH="/tmp/site/bin:$PATH"
    export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
    log "no .whl/ here: using $PY's own packages"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export KERAS_BACKEND=${KERAS_BACKEND:-jax} XLA_PYTHON_CLIENT_PREALLOCATE=false
export WSI_SEG_BENCH_CACHE="$CACHE"

# 2. The machine, as the bench will see it.
{ nvidia-smi -L && nvidia-smi; } > "$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" >> "$OUT/nvidia-smi.txt"
timeout 120 "$PY" - > "$OUT/env.json" 2>> "$LOG" <<'EOF'
import importlib.metadata as md, json, os, platform, sys
out = {"python": sys.version.split()[0], "platform": platform.platform(),
       "cores": len(os.sched_getaffinity(0)), "keras_backend": os.environ.get("KERAS_BACKEND")}
for pkg in ("jax", "jaxlib", "keras", "numpy", "openslide-python", "dask", "distributed",
            "zarr", "opencv-python-headless"):
    try:
        out[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
        out[pkg] = None
try:
    import jax
    out["jax_devices"] = [str(d) for d in jax.devices()]
except Exception as exc:  # recorded, not fatal
    out["jax_devices"] = f"{type(exc).__name__}: {exc}"
import wsi_seg
out["wsi_seg"] = wsi_seg.__file__
print(json.dumps(out, indent=2))
EOF
log "env: $(tr -d '\n ' < "$OUT/env.json" | cut -c1-400)"

# 3. The bench: slides (parallel, cached), models, bundled and heavy (each with its cold runs), noisy.
log "wsi-seg bench --profile gpu: ${SIZE} px slides, limit ${TOTAL} s (each step ${STEP} s)"
timeout -k 20 "$TOTAL" "$PY" -c 'import sys; from wsi_seg.cli import main; sys.exit(main())' \
    bench --profile gpu --out "$OUT/bench" --cache "$CACHE" --scratch /tmp/wsi-seg-bench-runs \
    --synth-size "$SIZE" --noisy-size "$NOISY_SIZE" --step-timeout "$STEP" \
    --model-seconds 5 --repeats 2 "$@" > "$OUT/bench.stdout" 2> "$OUT/bench.stderr"
rc=$?
[ "$rc" = 124 ] && log "the bench ran past ${TOTAL} s: $OUT/bench/bench.json has every step that finished"
log "bench exit $rc"
tail -n 5 "$OUT/bench.stderr" | tee -a "$LOG" >&2
rm -rf /tmp/wsi-seg-bench-runs
[ -f "$OUT/bench/bench.md" ] && cat "$OUT/bench/bench.md"
log "done in $(( $(date +%s) - T0 )) s"
exit "$rc"
