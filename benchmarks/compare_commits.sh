#!/usr/bin/env bash
# Side by side on one machine at one time: `wsi-seg run` of two commits on the same slides,
# alternating (A B A B ...), so load from anything else falls on both alike.
#
#   benchmarks/compare_commits.sh OLD_COMMIT [NEW_COMMIT] [ROUNDS]
#
# Needs the project's .venv (scripts/test.sh or scripts/demo.sh makes it). Each commit is
# checked out into a temporary git worktree and run with PYTHONPATH pointing at it. Slides:
# $SLIDES (a folder), else a 12,000 x 12,000 px synthetic SVS at 0.5 µm/px (seed 21) written
# once into $WORK/slides. Prints one line per run and writes $WORK/compare.json. Wall times include
# the local cluster's start-up, as a user sees it; "slide_s" is the slide's own time from
# its report.json (both commits report it; newer ones also split off the blocks phase).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OLD="${1:?usage: compare_commits.sh OLD_COMMIT [NEW_COMMIT] [ROUNDS]}"
NEW="${2:-HEAD}"
ROUNDS="${3:-2}"
WORK="${WORK:-/tmp/wsi-seg-compare}"
PY="$ROOT/.venv/bin/python"
SLIDES="${SLIDES:-$WORK/slides}"
mkdir -p "$SLIDES"
for c in "$OLD" "$NEW"; do
    dir="$WORK/tree-$(git -C "$ROOT" rev-parse --short "$c")"
    [[ -d "$dir" ]] || git -C "$ROOT" worktree add -f --detach "$dir" "$c" >/dev/null
done
if [[ -z "$(ls "$SLIDES")" ]]; then
    "$ROOT/.venv/bin/wsi-seg" synth "$SLIDES/cmp.svs" --size 12000x12000 --seed 21
fi
: > "$WORK/runs.jsonl"
for round in $(seq 1 "$ROUNDS"); do
    for c in "$OLD" "$NEW"; do
        short="$(git -C "$ROOT" rev-parse --short "$c")"
        for model in unet patch; do
            out="$WORK/out-$short-$model-$round"
            rm -rf "$out"
            t0=$(date +%s.%N)
            # From inside the worktree: `python -c` puts the current folder first on sys.path,
            # so running from this checkout would import this checkout's code for both.
            (cd "$WORK/tree-$short" && PYTHONPATH="$WORK/tree-$short" "$PY" -c \
                'import sys; from wsi_seg.cli import main; sys.exit(main(sys.argv[1:]))' \
                run "$SLIDES" --out "$out" --model "bundled:$model" --quiet)
            t1=$(date +%s.%N)
            "$PY" - "$out" "$short" "$model" "$round" "$t0" "$t1" >> "$WORK/runs.jsonl" <<'EOF'
import json, sys
out, commit, model, rnd, t0, t1 = sys.argv[1:]
import glob
reps = [json.load(open(p)) for p in sorted(glob.glob(f"{out}/*/report.json"))]
wall = float(t1) - float(t0)
tiles = sum(r["tiles"] for r in reps)
print(json.dumps({"commit": commit, "model": model, "round": int(rnd), "slides": len(reps),
                  "tiles": tiles, "command_s": round(wall, 2),
                  "tiles_per_command_s": round(tiles / wall, 2),
                  "slide_s": [r["wall_s"] for r in reps]}))
EOF
            tail -1 "$WORK/runs.jsonl"
        done
    done
done
"$PY" - "$WORK/runs.jsonl" "$WORK/compare.json" <<'EOF'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
summary = {}
for r in runs:
    summary.setdefault(r["model"], {}).setdefault(r["commit"], []).append(r["tiles_per_command_s"])
table = {m: {c: round(statistics.median(v), 2) for c, v in by.items()} for m, by in summary.items()}
json.dump({"runs": runs, "median_tiles_per_s": table}, open(sys.argv[2], "w"), indent=1)
print(json.dumps(table))
EOF
