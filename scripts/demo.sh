#!/usr/bin/env bash
# The main job on the bundled default, from a fresh clone with only Python 3.11:
# set up .venv (first run only), then `wsi-seg demo` (sample slide, info, thumbnail, run).
# Arguments go to `wsi-seg demo`, e.g. scripts/demo.sh --size 4000x4000 --out /tmp/demo
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
T0="$(now)"
ensure_env ""

T1="$(now)"
if python -c 'import importlib.util as u, sys; sys.exit(u.find_spec("wsi_seg.cli.demo") is None)'
then
    wsi-seg demo "$@"
else
    # Before `wsi-seg demo` existed: a sample slide, its description and tissue thumbnail.
    mkdir -p demo-out
    [[ -f demo-out/sample.svs ]] || wsi-seg synth demo-out/sample.svs --size 8000x8000 --seed 1
    wsi-seg info demo-out/sample.svs --thumbnail demo-out/sample-tissue.png
fi
echo "==> demo: $(since "$T1") (total with setup $(since "$T0"))"
