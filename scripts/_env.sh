# Shared by scripts/demo.sh and scripts/test.sh (sourced, not run): make sure .venv exists and
# holds an editable install of this checkout with the requested extras.
#
#   ensure_env ""     runtime only
#   ensure_env dev    runtime + pytest, ruff, mypy, ...
#
# The install is skipped when .venv/.wsi-seg-installed records the same pyproject.toml and
# extras (an editable install picks up code changes by itself). Python: $PYTHON, else
# python3.11, else python3 if it is 3.11 or newer.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.wsi-seg-installed"

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

find_python() {
    if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"; return; fi
    local c
    for c in python3.11 python3.12 python3.13 python3; do
        if command -v "$c" >/dev/null 2>&1 &&
            "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$c"; return
        fi
    done
    echo "error: Python 3.11 or newer not found (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

ensure_env() {
    local extras="$1" t0 py hash want spec
    t0="$(now)"
    if [[ ! -x "$VENV/bin/python" ]]; then
        py="$(find_python)"
        echo "==> creating $VENV with $py"
        "$py" -m venv "$VENV"
    fi
    hash="$(cat "$ROOT/pyproject.toml" "$ROOT/docker/constraints.txt" | sha256sum | cut -c1-16)"
    want="${extras:-runtime} $hash"
    # A dev install includes the runtime: either stamp serves a runtime request.
    if [[ -f "$STAMP" ]] && { grep -qx "$want" "$STAMP" ||
        { [[ -z "$extras" ]] && grep -q " $hash\$" "$STAMP"; }; }; then
        echo "==> environment up to date ($VENV)"
    else
        spec="$ROOT"
        [[ -n "$extras" ]] && spec="$ROOT[$extras]"
        echo "==> installing wsi-seg${extras:+[$extras]} into $VENV (first time: a few minutes)"
        # Some machines' pip.conf name local indexes that do not exist; pip warns once per
        # package about them. Drop those lines, keep every other message and pip's status.
        # The runtime dependencies at the versions the suite and the images are pinned to
        # (docker/constraints.txt), so a fresh clone tests what the images ship.
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec" \
            -c "$ROOT/docker/constraints.txt" \
            2> >(grep -v '^WARNING: Location .* is ignored' >&2 || true)
        # Keep the other stamp only if it was for this same pyproject.
        { grep " $hash\$" "$STAMP" 2>/dev/null | grep -vx "$want" || true; echo "$want"; } \
            > "$STAMP.tmp"
        mv "$STAMP.tmp" "$STAMP"
    fi
    echo "==> environment ready in $(since "$t0")"
    export PATH="$VENV/bin:$PATH"
}
