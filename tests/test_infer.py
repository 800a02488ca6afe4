"""The predictor: fixed shapes, batch-independent results, patch broadcast, devices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.model_fixtures import mean_red_patch, small_unet
from wsi_seg.card import load_model
from wsi_seg.errors import ModelError
from wsi_seg.infer import InferConfig, Predictor, _mixed_precision_clone, cached_predictor


@pytest.fixture(scope="module")
def unet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_unet(tmp_path_factory.mktemp("m") / "u.keras")


@pytest.fixture(scope="module")
def patch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mean_red_patch(tmp_path_factory.mktemp("m") / "p.keras")


def tiles(n: int, roi: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, roi, roi, 3), dtype=np.uint8)


def test_a_tile_gets_the_same_output_in_any_batch(unet: Path) -> None:
    pred = Predictor.from_path(unet, InferConfig(batch_size=4, device="cpu"))
    t = tiles(7, 64)
    together = pred(t)  # 4 + a padded batch of 3
    alone = np.stack([pred(t[i : i + 1])[0] for i in range(7)])  # each padded with 3 blanks
    assert together.shape == (7, 64, 64) and together.dtype == np.float32
    assert np.array_equal(together, alone)
    assert pred(t[:0]).shape == (0, 64, 64)


def test_patch_scores_are_painted_over_the_patch(patch: Path) -> None:
    pred = Predictor.from_path(patch, InferConfig(batch_size=8, device="cpu"))
    t = tiles(3, 50, seed=1)
    out = pred(t)
    assert out.shape == (3, 50, 50)
    expect = t[..., 0].reshape(3, -1).mean(axis=1) / 255.0
    for i in range(3):
        assert np.all(out[i] == out[i, 0, 0])
        assert out[i, 0, 0] == pytest.approx(expect[i], abs=1e-5)


def test_model_is_loaded_once_per_process(unet: Path) -> None:
    cfg = InferConfig(batch_size=2, device="cpu")
    assert cached_predictor(unet, cfg) is cached_predictor(unet, cfg)
    assert cached_predictor(unet, InferConfig(batch_size=3, device="cpu")) is not \
        cached_predictor(unet, cfg)


def test_device_choice(unet: Path) -> None:
    import tensorflow as tf

    assert Predictor.from_path(unet, InferConfig(device="cpu")).device == "/CPU:0"
    if tf.config.list_physical_devices("GPU"):
        assert Predictor.from_path(unet, InferConfig(device="gpu")).device == "/GPU:0"
        assert Predictor.from_path(unet, InferConfig(device="auto")).device == "/GPU:0"
    else:  # asking for a GPU that is not there is one clear error
        with pytest.raises(ModelError, match="sees no GPU"):
            Predictor.from_path(unet, InferConfig(device="gpu"))
        assert Predictor.from_path(unet, InferConfig(device="auto")).device == "/CPU:0"


def test_mixed_precision_clone_computes_in_float16_and_returns_float32(unet: Path) -> None:
    # Mixed precision is only applied on a GPU (none here); the clone itself is checked on CPU.
    model, _ = load_model(unet)
    fp16 = _mixed_precision_clone(model)
    assert any(layer.dtype_policy.name == "mixed_float16" for layer in fp16.layers)
    x = (tiles(2, 64, seed=3) / 255.0).astype(np.float32)
    y32 = np.asarray(model(x))
    y16 = np.asarray(fp16(x))
    assert y16.dtype == np.float32
    assert np.abs(y16 - y32).max() < 2e-2
