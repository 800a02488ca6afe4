#!/usr/bin/env bash
# Side by side on one machine at one time: `wsi-seg run` of two commits on the same slides,
# alternating (A B A B ...), so load from anything else falls on both alike.
#
#   benchmarks/compare_commits.sh OLD_COMMIT [NEW_COMMIT] [ROUNDS]
#
# Needs the project's .venv (scripts/test.sh or scripts/demo.sh makes it). Each commit is
# checked out into a temporary git worktree and run with PYTHONPATH pointing at it; the
# slides (a 12,000 x 12,000 px synthetic SVS at 0.5 µm/px, seed 21) are written once into
# $WORK/slides. Prints one line per run and writes $WORK/compare.json. Wall times include
# the local cluster's start-up, as a user sees it; "slide_s" is the slide's own time from
# its report.json (both commits report it; newer ones also split off the blocks phase).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OLD="${1:?usage: compare_commits.sh OLD_COMMIT [NEW_COMMIT] [ROUNDS]}"
NEW="${2:-HEAD}"
ROUNDS="${3:-2}"
WORK="${WORK:-/tmp/wsi-seg-compare}"
PY="$ROOT/.venv/bin/python"
mkdir -p "$WORK/slides"
for c in "$OLD" "$NEW"; do
    dir="$WORK/tree-$(git -C "$ROOT" rev-parse --short "$c")"
    [[ -d "$dir" ]] || git -C "$ROOT" worktree add -f --detach "$dir" "$c" >/dev/null
done
[[ -f "$WORK/slides/cmp.svs" ]] || "$PY" -m wsi_seg.cli synth "$WORK/slides/cmp.svs" \
    --size 12000x12000 --seed 21 2>/dev/null || \
    "$ROOT/.venv/bin/wsi-seg" synth "$WORK/slides/cmp.svs" --size 12000x12000 --seed 21
: > "$WORK/runs.jsonl"
for round in $(seq 1 "$ROUNDS"); do
    for c in "$OLD" "$NEW"; do
        short="$(git -C "$ROOT" rev-parse --short "$c")"
        for model in unet patch; do
            out="$WORK/out-$short-$model-$round"
            rm -rf "$out"
            t0=$(date +%s.%N)
            PYTHONPATH="$WORK/tree-$short" "$PY" -c \
                'import sys; from wsi_seg.cli import main; sys.exit(main(sys.argv[1:]))' \
                run "$WORK/slides" --out "$out" --model "bundled:$model" --quiet
            t1=$(date +%s.%N)
            "$PY" - "$out" "$short" "$model" "$round" "$t0" "$t1" >> "$WORK/runs.jsonl" <<'EOF'
import json, sys
out, commit, model, rnd, t0, t1 = sys.argv[1:]
rep = json.load(open(f"{out}/cmp/report.json"))
wall = float(t1) - float(t0)
print(json.dumps({"commit": commit, "model": model, "round": int(rnd), "tiles": rep["tiles"],
                  "command_s": round(wall, 2), "tiles_per_command_s": round(rep["tiles"] / wall, 2),
                  "slide_s": rep["wall_s"], "blocks_s": rep.get("blocks_wall_s"),
                  "stage_s": rep["stage_s"]}))
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
