"""The same .keras model and card on every Keras backend: TensorFlow (default) and JAX.

The JAX run is a real ``wsi-seg run --backend jax`` in a subprocess (Keras fixes its backend
per process); its mosaic must equal the TensorFlow mosaic within one grey level (1/255).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.model_fixtures import small_unet
from wsi_seg.cli import main
from wsi_seg.stages.mosaic import open_mosaic
from wsi_seg.tools.synth import write_synthetic_slide

BIN = Path(sys.executable).parent
OPTS = ["--block", "256", "--chunk", "128", "--batch-size", "4", "--quiet",
        "--scheduler", "threads"]


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("backends")
    write_synthetic_slide(d / "slides" / "b.svs", (1600, 1200), seed=21)
    return d / "slides", small_unet(d / "unet.keras")


def _run(backend: str, slides: Path, model: Path, out: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    return subprocess.run(
        [str(BIN / "wsi-seg"), "run", str(slides), "--out", str(out), "--model", str(model),
         "--backend", backend, *OPTS], capture_output=True, text=True, env=env, timeout=600)


def test_jax_gives_the_tensorflow_mosaic_within_one_grey_level(case: tuple[Path, Path],
                                                               tmp_path: Path) -> None:
    slides, model = case
    tf_out, jax_out = tmp_path / "tf", tmp_path / "jax"
    done = _run("jax", slides, model, jax_out)
    assert done.returncode == 0, done.stderr
    if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        assert main(["run", str(slides), "--out", str(tf_out), "--model", str(model),
                     *OPTS]) == 0
    else:
        done = _run("tensorflow", slides, model, tf_out)
        assert done.returncode == 0, done.stderr
    a = np.asarray(open_mosaic(tf_out / "b" / "mask.zarr").level(0)[:]).astype(int)
    b = np.asarray(open_mosaic(jax_out / "b" / "mask.zarr").level(0)[:]).astype(int)
    assert a.shape == b.shape and a.any()
    assert np.abs(a - b).max() <= 1
    import json

    run = json.loads((jax_out / "run.json").read_text())
    assert {w["backend"] for w in run["startup_workers"]} == {"jax"}


def test_a_backend_that_is_not_installed_is_one_line(case: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed here: nothing to refuse")
    slides, model = case
    done = _run("torch", slides, model, tmp_path / "t")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "torch is not installed" in lines[0]
