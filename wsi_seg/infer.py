"""Run a model over batches of tiles: fixed shapes, one trace, the right device.

A :class:`Predictor` wraps a loaded model and its card behind the :data:`wsi_seg.blend.PredictFn`
contract: ``(n, roi, roi, 3)`` uint8 RGB tiles in, ``(n, roi, roi)`` float32 probabilities out.
Every call is padded to the configured batch size, so the ``tf.function`` is traced once per
process and every tile sees the same kernels whatever batch it lands in (this keeps mosaics
independent of block size and task order). A patch classifier's single score is broadcast over
its patch, so both model kinds share the blending machinery.

Devices. With a GPU visible, the model runs there (``device="auto"``); mixed precision
(float16 compute, float32 outputs) is applied on GPU only, where tensor cores make it pay: on a
CPU it is slower, so it is refused with a note. One worker per GPU is arranged by the caller
(``gpu_index`` picks the card for this process). TensorFlow's CPU thread pools are sized once per
process (:func:`configure_threads`), before TensorFlow starts its runtime.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_seg.card import ModelCard, bundled_model_path, load_model
from wsi_seg.errors import ModelError

log = logging.getLogger(__name__)

# TF's C++ start-up chatter is not for users. The marker tells worker processes (which inherit
# this environment) that the level is ours to change, not the user's.
if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    os.environ["WSI_SEG_TF_LOG_DEFAULT"] = "1"


@dataclass(frozen=True)
class InferConfig:
    """How to run the model.

    Attributes:
        batch_size: tiles per model call (fixed shape; the last batch is padded).
        mixed_precision: float16 compute on GPU (outputs stay float32).
        device: ``auto`` (GPU when present), ``gpu`` (required) or ``cpu``.
        threads: TensorFlow intra-op threads per process (None: TensorFlow's default).
        gpu_index: which visible GPU this process uses; None picks one from the Dask worker's
            name (``LocalCluster`` names workers 0, 1, ...), so one worker per GPU gives each
            worker its own card.
    """

    batch_size: int = 16
    mixed_precision: bool = False
    device: str = "auto"
    threads: int | None = None
    gpu_index: int | None = None


_configured = False
_lock = threading.Lock()


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
    no_gpu = shutil.which("nvidia-smi") is None
    if device == "cpu" or no_gpu:
        if no_gpu:  # never hide a real card: another predictor in this process may want it
            os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
        if os.environ.get("WSI_SEG_TF_LOG_DEFAULT") == "1":
            # Without a GPU the only C++ "errors" are failed CUDA probes (cuInit).
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
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


def configure_threads(threads: int | None) -> None:
    """Size TensorFlow's thread pools for this process (only before its runtime starts)."""
    global _configured
    if _configured or threads is None:
        _configured = True
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    except RuntimeError:  # runtime already started: keep what it has
        log.debug("TensorFlow threads already fixed")
    _configured = True


def gpus() -> list[Any]:
    """Physical GPUs TensorFlow sees."""
    import tensorflow as tf

    return list(tf.config.list_physical_devices("GPU"))


def worker_index() -> int:
    """This process's position among Dask workers (0 outside a worker or for named workers)."""
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return 0
    try:
        return int(str(name).rsplit("-", 1)[-1])
    except ValueError:
        return 0


def _pick_device(config: InferConfig) -> str:
    import tensorflow as tf

    found = gpus()
    if config.device == "cpu" or (config.device == "auto" and not found):
        return "/CPU:0"
    if not found:
        raise ModelError("--device gpu was asked for but TensorFlow sees no GPU")
    index = config.gpu_index if config.gpu_index is not None else worker_index()
    gpu = found[index % len(found)]
    try:
        # One card per worker process: the others stay untouched (no memory grabbed on them).
        tf.config.set_visible_devices([gpu], "GPU")
        tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        log.debug("GPU visibility already fixed in this process")
    return "/GPU:0"


def _mixed_precision_clone(model: Any) -> Any:
    """The same network computing in float16, its last layer kept float32 (stable sigmoid)."""
    import keras

    last = model.layers[-1].name

    def clone(layer: Any) -> Any:
        cfg = layer.get_config()
        if layer.name != last and "dtype" in cfg:
            cfg["dtype"] = "mixed_float16"
        return layer.__class__.from_config(cfg)

    fp16 = keras.models.clone_model(model, clone_function=clone)
    fp16.set_weights(model.get_weights())
    return fp16


class Predictor:
    """A model behind the :data:`wsi_seg.blend.PredictFn` contract."""

    def __init__(self, model: Any, card: ModelCard, config: InferConfig = InferConfig(),
                 model_path: Path | None = None) -> None:
        import tensorflow as tf

        self.card = card
        self.config = config
        self.model_path = model_path
        self.device = _pick_device(config)
        if config.mixed_precision:
            if self.device.startswith("/GPU"):
                model = _mixed_precision_clone(model)
            else:
                log.warning("mixed precision needs a GPU; running float32 on the CPU")
        self.model = model
        roi, c = card.input_size_px, card.channels
        self._shape = (config.batch_size, roi, roi, c)

        @tf.function(input_signature=[tf.TensorSpec(self._shape, tf.float32)])
        def forward(x: Any) -> Any:
            return tf.cast(model(x, training=False), tf.float32)

        self._forward = forward

    @property
    def roi_px(self) -> int:
        return self.card.input_size_px

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @classmethod
    def from_path(cls, path: str | os.PathLike[str] | None, config: InferConfig = InferConfig()
                  ) -> Predictor:
        """Load ``MODEL.keras`` and its card (the bundled UNet when ``path`` is None)."""
        import_tensorflow_quietly(config.device)
        configure_threads(config.threads)
        p = Path(path) if path is not None else bundled_model_path("unet")
        model, card = load_model(p)
        return cls(model, card, config, p)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        """Probabilities ``(n, roi, roi)`` float32 for ``(n, roi, roi, 3)`` uint8 RGB tiles."""
        from wsi_seg.models import preprocess

        n = len(tiles)
        if n == 0:
            return np.zeros((0, self.roi_px, self.roi_px), np.float32)
        if n > self.batch_size:
            return np.concatenate([self(tiles[i : i + self.batch_size])
                                   for i in range(0, n, self.batch_size)])
        batch = tiles
        if n < self.batch_size:
            # Pad to the fixed shape: one trace, and identical kernels for every tile.
            batch = np.full((self.batch_size, *tiles.shape[1:]), 255, np.uint8)
            batch[:n] = tiles
        x = preprocess(batch, self.card)
        import tensorflow as tf

        with tf.device(self.device):
            y = self._forward(x).numpy()[:n]
        if self.card.kind == "unet":
            return np.ascontiguousarray(y[..., 0], dtype=np.float32)
        # Patch classifier: one score painted over the patch's footprint.
        scores = y.reshape(n, -1)[:, 0].astype(np.float32)
        return np.broadcast_to(scores[:, None, None], (n, self.roi_px, self.roi_px))


# -- one predictor per worker process --------------------------------------------------------
_cache: dict[tuple[str, str, InferConfig], Predictor] = {}


def cached_predictor(model_path: str | os.PathLike[str] | None, config: InferConfig
                     ) -> Predictor:
    """The process's predictor for a model file and config, loaded on first use and kept.

    Dask tasks call this instead of receiving the model, so a model is loaded once per
    worker process and never travels in task arguments. Keyed by the file's identity
    (path, size, modification time), so a replaced file is reloaded.
    """
    p = Path(model_path) if model_path is not None else bundled_model_path("unet")
    st = p.stat()
    key = (str(p.resolve()), f"{st.st_size}:{st.st_mtime_ns}", config)
    with _lock:
        pred = _cache.get(key)
        if pred is None:
            pred = Predictor.from_path(p, config)
            _cache[key] = pred
        return pred
