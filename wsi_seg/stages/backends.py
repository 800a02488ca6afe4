"""One compiled, fixed-shape forward pass per Keras backend, on the device it was asked for.

An :class:`Engine` turns a ``(batch, roi, roi, 3)`` **uint8** batch into float32 probabilities:
``(batch, roi, roi)`` for a UNet, ``(batch,)`` for a patch classifier, with a last axis of the
tumour probability and each class's for a model whose card keeps class maps. The cast to
float, greyscale conversion and normalisation happen inside the compiled graph
(:func:`wsi_seg.stages.models.preprocess_ops`), and so do the card's activation for a logits
head and the tumour probability of several tumour classes (:func:`_head`): only bytes cross to
the device, and only what is kept comes back.

Work is split in two calls so the caller can overlap them: :meth:`Engine.launch` sends a batch
and starts the computation without waiting for it (JAX and TensorFlow on a GPU dispatch
asynchronously; PyTorch with pinned memory and ``non_blocking`` copies), and
:meth:`Engine.fetch` waits for one launched batch and copies its result to the host.

* TensorFlow (the default backend): a ``tf.function`` with a fixed input signature, placed with
  ``tf.device``; the one GPU this process sees is used (one worker per card is arranged by
  ``CUDA_VISIBLE_DEVICES``, see :mod:`wsi_seg.orchestration.cluster`).
* JAX: ``jax.jit`` over ``model.stateless_call`` with the weights put on the device once.
* PyTorch: the model moved to the device, run under ``torch.inference_mode``.
* :class:`SimulatedEngine`: no model at all; a stand-in accelerator that holds one device lock
  for a fixed time per batch (sleeping, so Python threads run meanwhile). Tests and benchmarks
  use it to show that the CPU side keeps a device busy on machines without one.

The backend is Keras' own (``KERAS_BACKEND``, default ``tensorflow``); it is fixed when Keras
is first imported in a process.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

# numcodecs first: TensorFlow's shared libraries export their own zstd, and a numcodecs loaded
# after them binds to it and compresses mosaic chunks to other (valid) bytes. Mosaics must be
# byte-identical whichever process wrote them, so every process loads numcodecs' own first.
import numcodecs.zstd  # noqa: F401
import numpy as np

from wsi_seg.core.errors import ModelError
from wsi_seg.stages.card import ModelCard

log = logging.getLogger(__name__)

DEVICES = ("auto", "gpu", "cpu")
BACKENDS = ("tensorflow", "jax", "torch")

# TF's C++ start-up chatter is not for users. The marker tells worker processes (which inherit
# this environment) that the level is ours to change, not the user's.
if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    os.environ["WSI_SEG_TF_LOG_DEFAULT"] = "1"


class Engine(Protocol):
    """A compiled forward pass on one device (see the module docstring)."""

    device: str
    precision: str  # what it computes in (:func:`resolve_precision`)

    def launch(self, batch_u8: np.ndarray) -> Any: ...

    def fetch(self, handle: Any) -> np.ndarray: ...

    def warm(self) -> None:
        """Compile the forward pass now, so the first block does not wait for it."""
        ...


def _warm_by_one_batch(engine: Engine, shape: tuple[int, int, int, int]) -> None:
    """Warm an engine by running one batch (the first run is where a framework compiles, and
    where a GPU picks its kernels); its pixels do not matter."""
    engine.fetch(engine.launch(np.zeros(shape, np.uint8)))


def keras_backend() -> str:
    """The Keras backend of this process, from ``KERAS_BACKEND`` (without importing Keras
    when it is not yet imported)."""
    if "keras" in sys.modules:
        import keras

        return str(keras.backend.backend())
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def has_nvidia_driver() -> bool:
    return shutil.which("nvidia-smi") is not None


def import_tensorflow_quietly(device: str = "auto") -> None:
    """Import TensorFlow without its start-up chatter on machines without a GPU.

    On a CPU-only machine TensorFlow prints CUDA-stub and cuInit lines from C++ before any
    log setting applies; every worker process would repeat them. Hiding the GPUs from CUDA
    (when there is no ``nvidia-smi`` or the CPU was asked for) and muting file descriptor 2
    during the import alone keeps the terminal for the user. ``WSI_SEG_TF_VERBOSE=1`` shows
    everything; Python errors from the import still raise as usual.
    """
    if "tensorflow" in sys.modules or os.environ.get("WSI_SEG_TF_VERBOSE") == "1":
        return
    no_gpu = not has_nvidia_driver()
    if device == "cpu" or no_gpu:
        if no_gpu:  # never hide a real card: another predictor in this process may want it
            os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
        if os.environ.get("WSI_SEG_TF_LOG_DEFAULT") == "1":
            # Without a GPU the only C++ "errors" are failed CUDA probes (cuInit).
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        if not _may_mute_stderr():
            import tensorflow
            return
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            sys.stderr.flush()
            os.dup2(devnull, 2)
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


def _may_mute_stderr() -> bool:
    """Whether muting file descriptor 2 for a moment hides only our own import: in a worker
    process or on the main thread. In the client's process (``--scheduler threads``) other
    threads may be printing the user's error lines at that very moment."""
    import multiprocessing
    import threading

    return (multiprocessing.parent_process() is not None
            or threading.current_thread() is threading.main_thread())


_threads_fixed = False


def configure_cpu_threads(threads: int | None) -> None:
    """Size TensorFlow's CPU thread pools for this process (only before its runtime starts).

    Other backends size their pools themselves (XLA and PyTorch use the process's cores)."""
    global _threads_fixed
    if _threads_fixed or threads is None or keras_backend() != "tensorflow":
        _threads_fixed = True
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    except RuntimeError:  # runtime already started: keep what it has
        log.debug("TensorFlow threads already fixed")
    _threads_fixed = True


#: What ``--precision`` takes: ``float32`` (today's results, the default), ``bfloat16`` and
#: ``float16`` (mixed: reduced-precision compute, float32 weights and outputs), and ``auto``
#: (float16 on a GPU, bfloat16 on a CPU that has bfloat16 units, float32 elsewhere).
PRECISIONS = ("float32", "bfloat16", "float16", "auto")


def cpu_has_bfloat16(flags: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16), read from
    ``/proc/cpuinfo``'s flags (``flags``: that text, for tests); never assumed: elsewhere
    bfloat16 is emulated and slower than float32.

    >>> cpu_has_bfloat16("flags : fpu sse2 avx512f avx512_bf16")
    True
    >>> cpu_has_bfloat16("flags : fpu sse2 avx2")
    False
    """
    if flags is None:
        try:
            flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    words = set(flags.split())
    return bool(words & {"avx512_bf16", "amx_bf16"})


def resolve_precision(asked: str, mixed_precision: bool, on_gpu: bool, card: ModelCard,
                      bf16_cpu: bool | None = None) -> str:
    """The precision a model runs in: what was asked (``--mixed-precision`` is
    ``float16``), where the device can run it; a card that says ``float32`` always gets it.
    Each fallback is logged once, so a run never silently runs otherwise than asked.

    >>> from wsi_seg.stages.card import ModelCard
    >>> card = ModelCard(kind="unet", input_size_px=64, channels=3, mpp=1.0)
    >>> [resolve_precision(p, False, False, card, bf16_cpu=True) for p in PRECISIONS]
    ['float32', 'bfloat16', 'float32', 'bfloat16']
    >>> [resolve_precision(p, False, True, card) for p in PRECISIONS]
    ['float32', 'bfloat16', 'float16', 'float16']
    >>> resolve_precision("float32", True, True, card)  # --mixed-precision
    'float16'
    """
    if asked not in PRECISIONS:
        raise ModelError(f"unknown precision {asked!r}; use one of {', '.join(PRECISIONS)}")
    if mixed_precision and asked == "float32":
        asked = "float16"
    has_bf16 = on_gpu or (cpu_has_bfloat16() if bf16_cpu is None else bf16_cpu)
    if asked == "auto":
        asked = "float16" if on_gpu else ("bfloat16" if has_bf16 else "float32")
    if asked != "float32" and card.precision == "float32":
        log.warning("the model card says %s runs in float32 only; %s not used",
                    card.name or "this model", asked)
        return "float32"
    if asked == "float16" and not on_gpu:
        log.warning("float16 needs a GPU; running float32 on the CPU")
        return "float32"
    if asked == "bfloat16" and not has_bf16:
        log.warning("this CPU has no bfloat16 units (avx512_bf16, amx_bf16); running float32")
        return "float32"
    return asked


def mixed_precision_clone(model: Any, precision: str = "float16") -> Any:
    """The same network computing in ``precision`` (``float16`` or ``bfloat16``) with float32
    weights, its last layer kept float32 (a stable sigmoid or softmax)."""
    import keras

    last = model.layers[-1].name
    policy = f"mixed_{precision}"

    def clone(layer: Any) -> Any:
        cfg = layer.get_config()
        if layer.name != last and "dtype" in cfg:
            cfg["dtype"] = policy
        return layer.__class__.from_config(cfg)

    reduced = keras.models.clone_model(model, clone_function=clone)
    reduced.set_weights(model.get_weights())
    return reduced


def _head(y: Any, card: ModelCard) -> Any:
    """What is kept of the model's output (float32): the tumour probability per pixel
    (``(n, h, w)``; ``(n,)`` for a patch model), and, when the card keeps class maps, every
    class's probability after it (``(n, h, w, 1 + C)``; ``(n, 1 + C)``).

    Logits get the card's activation here, inside the compiled pass. The tumour probability is
    the sum of the tumour classes' probabilities when classes are exclusive (softmax), the
    largest of them when they are not (independent sigmoids). A one-channel model keeps
    channel 0 as it is: the same operations as before classes existed, the same bytes.
    """
    import keras

    ops = keras.ops
    y = ops.cast(y, "float32")
    if card.kind != "unet":
        y = ops.reshape(y, (y.shape[0], -1))
    if card.activation == "sigmoid":
        y = ops.sigmoid(y)
    elif card.activation == "softmax":
        y = ops.softmax(y, axis=-1)
    first, *rest = card.tumour_indices
    tumour = y[..., first]
    for i in rest:
        tumour = tumour + y[..., i] if card.exclusive else ops.maximum(tumour, y[..., i])
    if not card.class_maps:
        return tumour
    return ops.concatenate([ops.expand_dims(tumour, -1), y], axis=-1)


def _want_gpu(device: str, found: int, backend: str) -> bool:
    if device not in DEVICES:
        raise ModelError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if device == "gpu" and not found:
        raise ModelError(f"--device gpu was asked for but {backend} sees no GPU")
    return device != "cpu" and found > 0


def _in_precision(model: Any, precision: str) -> Any:
    return model if precision == "float32" else mixed_precision_clone(model, precision)


# -- TensorFlow -------------------------------------------------------------------------------
class TensorFlowEngine:
    """``tf.function`` with a fixed uint8 signature; GPU work is asynchronous until fetched."""

    def __init__(self, model: Any, card: ModelCard, batch_size: int, device: str = "auto",
                 precision: str = "float32", mixed_precision: bool = False) -> None:
        import tensorflow as tf

        from wsi_seg.stages.models import preprocess_ops

        found = tf.config.list_physical_devices("GPU")
        on_gpu = _want_gpu(device, len(found), "TensorFlow")
        if on_gpu:
            try:
                # This process's card is the first it sees (CUDA_VISIBLE_DEVICES pins one per
                # worker); the others, if any are visible, stay untouched.
                tf.config.set_visible_devices([found[0]], "GPU")
                tf.config.experimental.set_memory_growth(found[0], True)
            except RuntimeError:
                log.debug("GPU visibility already fixed in this process")
        self.device = "/GPU:0" if on_gpu else "/CPU:0"
        self.precision = resolve_precision(precision, mixed_precision, on_gpu, card)
        model = _in_precision(model, self.precision)
        roi, norm = card.window_px, card.input_norm
        shape = (batch_size, roi, roi, 3)

        @tf.function(input_signature=[tf.TensorSpec(shape, tf.uint8)])
        def forward(x: Any) -> Any:
            return _head(model(preprocess_ops(x, norm), training=False), card)

        self._forward = forward
        self._shape = shape
        self._on_gpu = on_gpu

    def warm(self) -> None:
        """On a CPU, trace the graph only: the first real batch after it costs what any batch
        does, so running a batch of padding as well would only add a batch's time to
        start-up (0.8-1.2 s for a 4-level 16-128 filter UNet here). On a GPU the first run
        also picks the kernels, so one batch runs."""
        if self._on_gpu:
            _warm_by_one_batch(self, self._shape)
        else:
            self._forward.get_concrete_function()

    def launch(self, batch_u8: np.ndarray) -> Any:
        import tensorflow as tf

        with tf.device(self.device):
            return self._forward(tf.constant(batch_u8))

    def fetch(self, handle: Any) -> np.ndarray:
        return np.asarray(handle.numpy(), dtype=np.float32)


# -- JAX --------------------------------------------------------------------------------------
class JaxEngine:
    """``jax.jit`` over the model's stateless call; weights live on the device."""

    def __init__(self, model: Any, card: ModelCard, batch_size: int, device: str = "auto",
                 precision: str = "float32", mixed_precision: bool = False) -> None:
        import jax

        from wsi_seg.stages.models import preprocess_ops

        try:
            gpus = jax.devices("gpu")
        except RuntimeError:  # no GPU platform in this jaxlib
            gpus = []
        on_gpu = _want_gpu(device, len(gpus), "JAX")
        self._device = gpus[0] if on_gpu else jax.devices("cpu")[0]
        self.device = f"{self._device.platform}:{self._device.id}"
        self.precision = resolve_precision(precision, mixed_precision, on_gpu, card)
        model = _in_precision(model, self.precision)
        self._tv = [jax.device_put(v.value, self._device) for v in model.trainable_variables]
        self._ntv = [jax.device_put(v.value, self._device)
                     for v in model.non_trainable_variables]
        norm = card.input_norm

        def forward(tv: Any, ntv: Any, x: Any) -> Any:
            y, _ = model.stateless_call(tv, ntv, preprocess_ops(x, norm), training=False)
            return _head(y, card)

        self._forward = jax.jit(forward)
        self._shape = (batch_size, card.window_px, card.window_px, 3)

    def warm(self) -> None:
        # jit compiles on the first call of a shape (an ahead-of-time ``lower().compile()``
        # would not fill the cache that calls use).
        _warm_by_one_batch(self, self._shape)

    def launch(self, batch_u8: np.ndarray) -> Any:
        import jax

        return self._forward(self._tv, self._ntv, jax.device_put(batch_u8, self._device))

    def fetch(self, handle: Any) -> np.ndarray:
        return np.asarray(handle, dtype=np.float32)


# -- PyTorch ----------------------------------------------------------------------------------
class TorchEngine:
    """The Keras model as a ``torch.nn.Module`` on the device, under inference mode."""

    def __init__(self, model: Any, card: ModelCard, batch_size: int, device: str = "auto",
                 precision: str = "float32", mixed_precision: bool = False) -> None:
        import torch

        from wsi_seg.stages.models import preprocess_ops

        on_gpu = _want_gpu(device, int(torch.cuda.is_available()), "PyTorch")
        self._device = torch.device("cuda:0" if on_gpu else "cpu")
        self.device = str(self._device)
        self.precision = resolve_precision(precision, mixed_precision, on_gpu, card)
        model = _in_precision(model, self.precision)
        model.to(self._device)
        self._model, self._card = model, card
        self._pin = on_gpu
        self._preprocess = preprocess_ops
        self._shape = (batch_size, card.window_px, card.window_px, 3)

    def warm(self) -> None:
        _warm_by_one_batch(self, self._shape)

    def launch(self, batch_u8: np.ndarray) -> Any:
        import torch

        x = torch.from_numpy(batch_u8)
        if self._pin:
            x = x.pin_memory()
        with torch.inference_mode():
            x = x.to(self._device, non_blocking=True)
            c = self._card
            y = self._model(self._preprocess(x, c.input_norm), training=False)
            return _head(y, c)

    def fetch(self, handle: Any) -> np.ndarray:
        return np.asarray(handle.detach().cpu().numpy(), dtype=np.float32)


# -- a stand-in accelerator -------------------------------------------------------------------
#: The simulated device's maps are constant over cells of this many pixels.
SIMULATED_CELL_PX = 8


def simulated_output(batch_u8: np.ndarray, card: ModelCard) -> np.ndarray:
    """The simulated device's maps for a ``(n, roi, roi, 3)`` uint8 batch: the darkness in
    red, ``1 - r / 255`` (glass ~0, stain above it, dense nuclei over 0.5), of the first pixel
    of each :data:`SIMULATED_CELL_PX` px cell, held over the cell, for a UNet (a trained
    model's maps are smooth, not pixel noise), and of the window's mean for a patch model,
    split evenly over the maps of a multi-map model; float32 in
    :meth:`ModelCard.kept_shape`. One sample per cell keeps the host's share of a dry run
    small (a real device does this work itself).

    Zeros would leave the host's real work out of a dry run: every chunk all fill, so
    nothing is encoded, and no region traced.
    """
    n, h, w = batch_u8.shape[:3]
    c, k = SIMULATED_CELL_PX, np.float32(1 / 255)
    maps = max(card.n_maps, 1)
    scale = np.float32(1 / maps)
    if card.kind != "unet":
        dark = 1 - batch_u8[..., 0].mean(axis=(1, 2), dtype=np.float32) * k
        base = dark * scale
    elif h % c == 0 and w % c == 0:
        cells = (1 - batch_u8[:, ::c, ::c, 0].astype(np.float32) * k) * scale
        base = np.empty((n, h // c, c, w // c, c), np.float32)
        base[:] = cells[:, :, None, :, None]
        base = base.reshape(n, h, w)
    else:
        base = (1 - batch_u8[..., 0].astype(np.float32) * k) * scale
    out = base if card.n_maps <= 1 else np.repeat(base[..., None], card.n_maps, axis=-1)
    assert out.shape == card.kept_shape(n), (out.shape, card.kept_shape(n))
    return out


class SimulatedEngine:
    """A device that takes ``seconds_per_batch`` per batch, one batch at a time.

    Launching copies the batch (the host-to-device copy) and queues it on the device's single
    stream; the stream holds the device lock while it "computes" by sleeping, which frees the
    GIL exactly as a real kernel launch does. Outputs look like a model's
    (:func:`simulated_output`), so the host does the blending, writing and tracing a real
    model's maps cost it. :meth:`busy_s` is the time the device spent computing, the
    numerator of its busy share.
    """

    device = "simulated:0"
    precision = "float32"

    def __init__(self, card: ModelCard, batch_size: int, seconds_per_batch: float) -> None:
        if seconds_per_batch <= 0:
            raise ModelError("the simulated device needs a positive time per batch")
        self._card = card
        self._s = seconds_per_batch
        self._stream = ThreadPoolExecutor(1, thread_name_prefix="wsi-seg-simulated-device")
        self._lock = threading.Lock()
        self._busy_s = 0.0

    def _compute(self, batch_u8: np.ndarray) -> np.ndarray:
        with self._lock:
            t = time.perf_counter()
            time.sleep(self._s)
            out = simulated_output(batch_u8, self._card)
            self._busy_s += time.perf_counter() - t
        return out

    def launch(self, batch_u8: np.ndarray) -> Future[np.ndarray]:
        return self._stream.submit(self._compute, batch_u8.copy())

    def fetch(self, handle: Future[np.ndarray]) -> np.ndarray:
        return handle.result()

    def busy_s(self) -> float:
        with self._lock:
            return self._busy_s

    def warm(self) -> None:
        """Nothing to compile."""


ENGINES: dict[str, type[TensorFlowEngine] | type[JaxEngine] | type[TorchEngine]] = {
    "tensorflow": TensorFlowEngine,
    "jax": JaxEngine,
    "torch": TorchEngine,
}


def make_engine(model: Any, card: ModelCard, batch_size: int, device: str = "auto",
                precision: str = "float32", mixed_precision: bool = False) -> Engine:
    """The compiled forward pass of this process's Keras backend."""
    backend = keras_backend()
    try:
        cls = ENGINES[backend]
    except KeyError:
        raise ModelError(f"Keras backend {backend!r} is not supported; use one of "
                         f"{', '.join(BACKENDS)}") from None
    return cls(model, card, batch_size, device, precision, mixed_precision)
