#!/usr/bin/env bash
# The whole check, from a fresh clone with only Python 3.11: set up .venv with the dev extras
# (first run only), then ruff, mypy and the test suite (inference tests on TensorFlow and again
# on JAX). Arguments go to pytest.
# Tests that need ../shared/data skip without it; WSI_SEG_REQUIRE_DATA=1 (set by .ci/run)
# turns those skips into failures. tests/test_slurm.py installs (apt, as root) and starts a
# single-node SLURM (scripts/slurm/start.sh) and skips where it cannot; WSI_SEG_REQUIRE_SERVICES=1
# (also set by .ci/run) makes that a failure.
# The same variable covers the S3 server tests/s3_fixtures.py starts (moto, a dev extra).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
T0="$(now)"
ensure_env dev

status=0
step() {
    local name="$1" t
    shift
    t="$(now)"
    echo "==> $name"
    if "$@"; then
        echo "==> $name: ok ($(since "$t"))"
    else
        echo "==> $name: FAILED ($(since "$t"))"
        status=1
    fi
}
step "ruff" ruff check .
step "mypy" mypy
step "pytest" pytest -q "$@"
# The inference tests again on the other Keras backend CI can run (CPU JAX): the same .keras
# models and the same guarantees (batch-independent predictions, block-size-independent mosaics).
step "pytest (KERAS_BACKEND=jax)" env KERAS_BACKEND=jax pytest -q -p no:cacheprovider \
    tests/test_preprocess.py tests/test_card_classes.py tests/test_classes.py tests/test_infer.py \
    tests/test_pipeline.py "$@"
echo "==> total $(since "$T0"): $([[ $status == 0 ]] && echo PASSED || echo FAILED)"
exit $status
