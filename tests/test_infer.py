"""The predictor: fixed shapes, batch-independent results, patch broadcast, devices."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.model_fixtures import mean_red_patch, small_unet
from wsi_seg.core.errors import ModelError
from wsi_seg.stages.backends import mixed_precision_clone as _mixed_precision_clone
from wsi_seg.stages.card import load_model
from wsi_seg.stages.card import verify_model_file as load_card
from wsi_seg.stages.infer import InferConfig, Predictor, cached_predictor


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


def test_warming_freezes_the_heap_once(unet: Path) -> None:
    # A warmed worker moves the framework's objects out of the collector's sight, so full
    # collections stop scanning them (with the GIL held) during blocks and polygons.
    import subprocess
    import sys

    code = (
        "import gc, sys\n"
        "calls = []\n"
        "freeze = gc.freeze\n"
        "gc.freeze = lambda: (calls.append(1), freeze())[1]\n"
        "from wsi_seg.stages.infer import InferConfig, warm_predictor\n"
        "assert gc.get_freeze_count() == 0\n"
        "for _ in range(2):\n"
        "    warm_predictor(sys.argv[1], InferConfig(batch_size=2, device='cpu'))\n"
        "print(len(calls), gc.get_freeze_count())\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(unet)], capture_output=True,
                         text=True, check=True).stdout.split()
    assert int(out[-2]) == 1  # once per process
    assert int(out[-1]) > 10_000  # the framework's and the model's objects


def test_device_choice(unet: Path) -> None:
    from wsi_seg.stages.infer import _sees_gpu

    cpu = Predictor.from_path(unet, InferConfig(device="cpu"))
    assert cpu.device.lower().startswith(("/cpu", "cpu"))
    assert cpu.batch_size == 16  # the CPU default
    if _sees_gpu():
        assert "gpu" in Predictor.from_path(unet, InferConfig(device="gpu")).device.lower()
    else:  # asking for a GPU that is not there is one clear error
        with pytest.raises(ModelError, match="sees no GPU"):
            Predictor.from_path(unet, InferConfig(device="gpu"))
        auto = Predictor.from_path(unet, InferConfig(device="auto"))
        assert auto.device.lower().startswith(("/cpu", "cpu"))


class _Gate:
    """A real engine whose next launch waits until the gate opens: the consumer is paused
    there, holding one batch, while the test queues windows behind it."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.device = engine, engine.device
        self.entered, self.opened = threading.Event(), threading.Event()
        self.opened.set()

    def close(self) -> None:
        self.entered.clear()
        self.opened.clear()

    def launch(self, batch: np.ndarray) -> Any:
        self.entered.set()
        assert self.opened.wait(60)
        return self.engine.launch(batch)

    def fetch(self, handle: Any) -> np.ndarray:
        return self.engine.fetch(handle)


def test_windows_from_many_threads_share_batches_and_keep_their_values(unet: Path) -> None:
    """Twelve task threads submit small requests while the consumer is busy: it then packs
    them into full batches (36 windows: 4 of 8, then the last 4), and every window's
    prediction equals its prediction alone. Deterministic: the consumer is paused, not
    raced."""
    gate = _Gate(Predictor.from_path(unet, InferConfig(batch_size=8, device="cpu")).engine)
    pred = Predictor(gate, load_card(unet), 8, linger_s=0.05)
    t = tiles(36, 64, seed=4)
    alone = np.stack([pred(t[i : i + 1])[0] for i in range(len(t))])
    gate.close()
    held = pred.submit(tiles(8, 64, seed=5))  # one full batch: the consumer takes it ...
    assert gate.entered.wait(60)  # ... and waits at the device
    before = pred.stats()
    with ThreadPoolExecutor(12) as pool:
        futs = list(pool.map(pred.submit, [t[i : i + 3] for i in range(0, 36, 3)]))
    gate.opened.set()
    together = np.concatenate([f.result() for f in futs])
    held.result()
    after = pred.stats()
    assert np.array_equal(together, alone)
    assert after.windows - before.windows == 8 + 36
    assert after.batches - before.batches == 1 + 5


def test_a_failing_batch_fails_its_requests_and_the_predictor_goes_on() -> None:
    from wsi_seg.stages.card import ModelCard

    class Flaky:
        device = "cpu"
        calls = 0

        def launch(self, batch: np.ndarray) -> np.ndarray:
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("device fault")
            return batch[..., 0].astype(np.float32) / 255

        def fetch(self, handle: np.ndarray) -> np.ndarray:
            return handle

    card = ModelCard(kind="unet", input_size_px=8, channels=3, mpp=1.0)
    pred = Predictor(Flaky(), card, 4)
    with pytest.raises(RuntimeError, match="device fault"):
        pred(tiles(2, 8))
    out = pred(tiles(2, 8, seed=1))
    assert np.array_equal(out, tiles(2, 8, seed=1)[..., 0] / np.float32(255))


def test_simulated_device_batches_concurrent_blocks(unet: Path) -> None:
    """The stand-in accelerator: a fixed time per batch under one lock, each pixel's red
    darkness out (a map the host must blend, write and trace, as a model's). Four
    submitting threads share its full batches, each batch computed once on the device. How
    busy that keeps it is a speed figure: ``wsi-seg bench --profile simulated`` measures it
    (goal >= 90 %), no test asserts it."""
    pred = Predictor.from_path(unet, InferConfig(batch_size=8, simulate_batch_s=0.05))
    assert pred.device == "simulated:0"
    t = tiles(8, 64)

    def block() -> None:
        for _ in range(5):
            out = pred(t)  # each 8 x 8 px cell's first pixel's darkness, held over the cell
            cells = 1 - t[:, ::8, ::8, 0].astype(np.float32) * np.float32(1 / 255)
            assert np.array_equal(out, np.kron(cells, np.ones((1, 8, 8), np.float32)))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: block(), range(4)))
    st = pred.stats()
    assert st.windows == 160 and st.batches == 20
    assert st.device_busy_s is not None and st.first_launch is not None
    assert st.last_done is not None
    assert st.device_busy_s >= st.batches * 0.05  # every batch took its turn on the device


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


def test_precision_bfloat16_on_this_cpu_and_float32_where_a_card_says_so(
        unet: Path, tmp_path: Path) -> None:
    """``--precision bfloat16`` computes in bfloat16 where the CPU has bfloat16 units (read
    from /proc/cpuinfo, never assumed) and falls back to float32 elsewhere; float16 needs a
    GPU; a card that says float32 is never run otherwise. Outputs stay float32 and close."""
    from wsi_seg.stages.backends import cpu_has_bfloat16
    from wsi_seg.stages.card import card_path

    t = tiles(4, 64, seed=5)
    f32 = Predictor.from_path(unet, InferConfig(batch_size=4, device="cpu"))
    bf16 = Predictor.from_path(unet, InferConfig(batch_size=4, device="cpu",
                                                 precision="bfloat16"))
    assert f32.precision == "float32"
    assert bf16.precision == ("bfloat16" if cpu_has_bfloat16() else "float32")
    y32, y16 = f32(t), bf16(t)
    assert y16.dtype == np.float32 and np.abs(y16 - y32).max() < 3e-2
    if bf16.precision == "bfloat16":
        assert not np.array_equal(y16, y32)  # it really computed otherwise
    half = Predictor.from_path(unet, InferConfig(batch_size=4, device="cpu",
                                                 precision="float16"))
    assert half.precision == "float32" and np.array_equal(half(t), y32)  # no GPU here

    pinned = tmp_path / "pinned.keras"
    pinned.write_bytes(unet.read_bytes())
    card = json.loads(card_path(unet).read_text())
    card_path(pinned).write_text(json.dumps({**card, "precision": "float32"}))
    strict = Predictor.from_path(pinned, InferConfig(batch_size=4, device="cpu",
                                                     precision="auto"))
    assert strict.precision == "float32" and np.array_equal(strict(t), y32)
