"""Run a model over tiles from many threads: one model-owning consumer per device.

A :class:`Predictor` owns a compiled forward pass (:mod:`wsi_seg.stages.backends`) and one consumer
thread. Any number of task threads :meth:`~Predictor.submit` uint8 tiles and get a future of
their float32 probabilities; the consumer gathers waiting windows, from any task, into
fixed-shape batches (padded with white when the queue runs dry), launches batch *k + 1* before
it waits for batch *k*, and hands each window's result back to its own request. So

* the device gets large batches even when each block holds few windows;
* the host-to-device copy and the next batch's assembly overlap the device's compute;
* there is one compiled shape per process, and a window's prediction does not depend on which
  batch, or which slot of it, the window lands in (every slot runs the same kernels): mosaics
  stay bit-identical across block sizes, worker counts and task order.

Calling a predictor (``predictor(tiles)``) is ``submit(tiles).result()``, which keeps the
:data:`wsi_seg.stages.blend.PredictFn` contract: ``(n, roi, roi, 3)`` uint8 RGB in,
``(n, roi, roi)`` float32 out; a patch classifier's single score is painted over its patch.

Devices: with a GPU visible the model runs there (``device="auto"``), on the first card this
process sees: one worker per card is arranged by ``CUDA_VISIBLE_DEVICES``
(:mod:`wsi_seg.orchestration.cluster`). Mixed precision (float16 compute, float32 outputs) applies
on a GPU
only. The default batch is 16 windows on a CPU and 128 on a GPU.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_seg.core.errors import ModelError
from wsi_seg.core.params import AT_LEAST_0, Limits, Rule, check_params, param
from wsi_seg.stages.backends import (
    PRECISIONS,
    Engine,
    SimulatedEngine,
    configure_cpu_threads,
    has_nvidia_driver,
    import_tensorflow_quietly,
    keras_backend,
    make_engine,
)
from wsi_seg.stages.card import ModelCard, bundled_model_path, load_model, verify_model_file
from wsi_seg.stages.slide import BACKGROUND_RGB as PAD_VALUE

log = logging.getLogger(__name__)

CPU_BATCH = 16
GPU_BATCH = 128
#: The most host memory one batch's buffers may take (the uint8 input plus the float32
#: results), bytes: a larger ``batch_size`` is refused before anything is allocated.
MAX_BATCH_BYTES = 4 << 30
#: The largest batch size taken (the buffer check above also applies, whatever the size).
MAX_BATCH = 16384
DEVICES = ("auto", "gpu", "cpu")


@dataclass(frozen=True)
class InferConfig:
    """How to run the model.

    Attributes:
        batch_size: windows per model call (fixed shape; partial batches are padded). None:
            16 on a CPU, 128 on a GPU.
        precision: ``float32`` (the default: today's results), ``bfloat16`` (a CPU with
            bfloat16 units, or a GPU), ``float16`` (a GPU) or ``auto`` (float16 on a GPU,
            bfloat16 on a CPU that has it, float32 elsewhere); reduced precision computes in
            it with float32 weights and outputs; where the device cannot, float32, logged.
            A card that says ``float32`` always runs in float32.
        mixed_precision: float16 compute on a GPU (outputs stay float32): ``precision`` =
            ``float16``, kept for configurations that say it.
        device: ``auto`` (GPU when present), ``gpu`` (required) or ``cpu``.
        threads: TensorFlow intra-op threads per process (None: TensorFlow's default).
        simulate_batch_s: when > 0, no model runs: a simulated accelerator takes this many
            seconds per batch (tests and benchmarks of the CPU side; its maps are each
            8 px cell's red darkness, :func:`~wsi_seg.stages.backends.simulated_output`).
        tile_px: the window, pixels, for a model whose input size is undefined (None: its
            card's); a fixed-input model takes only its own size
            (:meth:`~wsi_seg.stages.card.ModelCard.at_tile`).
    """

    batch_size: int | None = param(None, Rule("int", Limits(1, MAX_BATCH)))
    precision: str = param("float32", Rule("str", choices=PRECISIONS))
    mixed_precision: bool = param(False, Rule("bool"))
    device: str = param("auto", Rule("str", choices=DEVICES))
    threads: int | None = param(None, Rule("int", Limits(1, 1024)))
    simulate_batch_s: float = param(0.0, Rule("float", AT_LEAST_0))
    tile_px: int | None = param(None, Rule("int", Limits(8, 16384)))

    def __post_init__(self) -> None:
        check_params(self)


@dataclass
class _Request:
    """One submission: its tiles, its results as they arrive, and who waits for them."""

    tiles: np.ndarray
    out: np.ndarray | None  # made when the first result arrives (or a view of a batch's)
    future: Future[np.ndarray]
    n: int
    remaining: int


@dataclass
class _Launched:
    handle: Any
    slots: list[tuple[_Request, int]]
    t_launch: float


@dataclass
class PredictorStats:
    """What a predictor did so far (seconds from ``time.perf_counter``)."""

    batches: int = 0
    windows: int = 0
    padded_slots: int = 0
    first_launch: float | None = None
    last_done: float | None = None
    device_busy_s: float | None = None  # known for the simulated device only

    @property
    def fill(self) -> float | None:
        slots = self.windows + self.padded_slots
        return self.windows / slots if slots else None


class Predictor:
    """A model on one device behind a batching consumer thread (see the module docstring)."""

    def __init__(self, engine: Engine, card: ModelCard, batch_size: int,
                 model_path: Path | None = None, depth: int = 2, linger_s: float = 0.002
                 ) -> None:
        self.engine = engine
        self.card = card
        self.model_path = model_path
        self._batch = batch_size
        self._depth = max(1, depth)
        self._linger_s = linger_s
        self._waiting: deque[tuple[_Request, int]] = deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._broken: BaseException | None = None
        self._stats = PredictorStats()
        check_batch_bytes(batch_size, card, model_path)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_path(cls, path: str | os.PathLike[str] | None, config: InferConfig = InferConfig()
                  ) -> Predictor:
        """Load ``MODEL.keras`` and its card (the bundled UNet when ``path`` is None) and
        compile its forward pass for this process's backend and device."""
        p = Path(path) if path is not None else bundled_model_path("unet")
        if config.simulate_batch_s > 0:
            card = served_card(verify_model_file(p), config, p)
            batch = config.batch_size or GPU_BATCH
            return cls(SimulatedEngine(card, batch, config.simulate_batch_s), card, batch, p)
        if keras_backend() == "tensorflow":
            import_tensorflow_quietly(config.device)
            configure_cpu_threads(config.threads)
        model, card = load_model(p)
        card = served_card(card, config, p)
        batch = config.batch_size or _default_batch(config.device)
        engine = make_engine(model, card, batch, config.device, config.precision,
                             config.mixed_precision)
        return cls(engine, card, batch, p)

    # -- the contract ---------------------------------------------------------------------------
    @property
    def roi_px(self) -> int:
        return self.card.window_px

    @property
    def n_maps(self) -> int:
        """Values per pixel in results: 1 (the tumour probability, results ``(n, roi, roi)``)
        or 1 + C with class maps (``(n, roi, roi, 1 + C)``)."""
        return self.card.n_maps

    @property
    def batch_size(self) -> int:
        return self._batch

    @property
    def device(self) -> str:
        return self.engine.device

    @property
    def precision(self) -> str:
        """What the model computes in here (:func:`~wsi_seg.stages.backends.resolve_precision`)."""
        return self.engine.precision

    def submit(self, tiles: np.ndarray) -> Future[np.ndarray]:
        """Queue ``(n, roi, roi, 3)`` uint8 tiles; the future holds ``(n, roi, roi)`` float32
        (``(n, roi, roi, 1 + C)`` with class maps)."""
        roi = self.roi_px
        if tiles.ndim != 4 or tiles.shape[1:] != (roi, roi, 3):
            raise ValueError(f"tiles must be (n, {roi}, {roi}, 3), not {tiles.shape}")
        n = len(tiles)
        fut: Future[np.ndarray] = Future()
        req = _Request(np.ascontiguousarray(tiles, np.uint8), None, fut, n, n)
        if n == 0:
            fut.set_result(self._result(req))
            return fut
        with self._cv:
            if self._broken is not None:
                raise PredictorFailed(self._broken)
            if self._closed:
                raise RuntimeError("the predictor is closed")
            self._ensure_thread()
            self._waiting.extend((req, i) for i in range(n))
            self._cv.notify()
        return fut

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        """Probabilities ``(n, roi, roi)`` float32 for ``(n, roi, roi, 3)`` uint8 RGB tiles."""
        return self.submit(tiles).result()

    def close(self) -> None:
        """Finish what was submitted, then stop the consumer thread (submitting after this
        raises). Worker processes keep their predictors for life; one-off users close."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> PredictorStats:
        with self._cv:
            s = PredictorStats(**vars(self._stats))
        if isinstance(self.engine, SimulatedEngine):
            s.device_busy_s = self.engine.busy_s()
        return s

    # -- the consumer ---------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._consume, daemon=True,
                                            name="wsi-seg-predictor")
            self._thread.start()

    def _consume(self) -> None:
        launched: deque[_Launched] = deque()
        in_hand: list[tuple[_Request, int]] = []  # taken from the queue, not yet launched
        try:
            while True:
                slots = self._next_batch(bool(launched))
                if slots is None:
                    return
                if slots:
                    in_hand = slots
                    launched.append(self._launch(slots))
                    in_hand = []
                if launched and (len(launched) >= self._depth or not slots):
                    self._complete(launched.popleft())
        except BaseException as exc:  # the consumer must not die silently: all would wait
            self._fail_all(exc, [*in_hand, *(s for item in launched for s in item.slots)])

    def _fail_all(self, exc: BaseException, in_hand: list[tuple[_Request, int]]) -> None:
        """The consumer itself failed (out of memory assembling a batch, a dead device):
        every request it held or that waits gets the cause, and so do later submissions."""
        failed = PredictorFailed(exc)
        with self._cv:
            self._broken = exc
            pending = [*in_hand, *self._waiting]
            self._waiting.clear()
        for req, _ in pending:
            if not req.future.done():
                req.future.set_exception(failed)

    def _next_batch(self, busy: bool) -> list[tuple[_Request, int]] | None:
        """Windows for the next launch: a full batch, or what there is once the queue has
        been quiet for ``linger_s`` with nothing on the device; none while the device is busy
        and a full batch is not ready (finishing a launched batch comes first); None once
        closed with nothing left to do."""
        with self._cv:
            if not busy:
                while not self._waiting:
                    if self._closed:
                        return None
                    self._cv.wait()
                if len(self._waiting) < self._batch:
                    self._cv.wait_for(lambda: len(self._waiting) >= self._batch,
                                      timeout=self._linger_s)
            elif len(self._waiting) < self._batch:
                return []
            take = min(self._batch, len(self._waiting))
            return [self._waiting.popleft() for _ in range(take)]

    def _launch(self, slots: list[tuple[_Request, int]]) -> _Launched:
        roi = self.roi_px
        # Only the unused slots are padded: filling the whole batch first wrote every byte
        # of it twice (25 MB a 128-window batch of 256 px windows).
        batch = np.empty((self._batch, roi, roi, 3), np.uint8)
        batch[len(slots):] = PAD_VALUE
        for k, (req, i) in enumerate(slots):
            batch[k] = req.tiles[i]
        t = time.perf_counter()
        try:
            handle = self.engine.launch(batch)
        except Exception as exc:  # fail the requests, keep serving the others
            handle = exc
        return _Launched(handle, slots, t)

    def _complete(self, item: _Launched) -> None:
        try:
            if isinstance(item.handle, Exception):
                raise item.handle
            out = self.engine.fetch(item.handle)
        except Exception as exc:
            for req, _ in item.slots:
                if not req.future.done():
                    req.future.set_exception(exc)
            return
        now = time.perf_counter()
        with self._cv:
            st = self._stats
            st.batches += 1
            st.windows += len(item.slots)
            st.padded_slots += self._batch - len(item.slots)
            st.first_launch = item.t_launch if st.first_launch is None else st.first_launch
            st.last_done = now
        whole = _whole_requests(item.slots, out, self.card.kept_shape(1)[1:])
        for k, (req, i) in enumerate(item.slots):
            if id(req) in whole:
                # All of this request's windows are consecutive in this batch: its result is
                # a view of the batch's output (the same values, one copy fewer per window).
                req.out = out[k - i : k - i + req.n]
                req.remaining = 0
            else:
                if req.out is None:
                    req.out = np.empty(self.card.kept_shape(req.n), np.float32)
                req.out[i] = out[k]
                req.remaining -= 1
            if req.remaining == 0 and not req.future.done():
                req.future.set_result(self._result(req))

    def _result(self, req: _Request) -> np.ndarray:
        if req.out is None:  # no windows
            req.out = np.empty(self.card.kept_shape(0), np.float32)
        if self.card.kind == "unet":
            return req.out
        # Patch classifier: one score (or one per map) painted over the patch's footprint.
        roi = self.roi_px
        return np.broadcast_to(req.out[:, None, None], (len(req.out), roi, roi,
                                                        *req.out.shape[1:]))


def _whole_requests(slots: list[tuple[_Request, int]], out: np.ndarray,
                    window_shape: tuple[int, ...]) -> set[int]:
    """``id`` of each request whose windows all sit in this batch, in order and one after
    the other (slot ``k`` holds window ``k - k0``): their results can be views of ``out``.
    None when ``out`` is not float32 of ``window_shape`` per window (an engine's other
    dtype is converted by the copy)."""
    if out.dtype != np.float32 or out.shape[1:] != window_shape:
        return set()
    first: dict[int, int] = {}
    seen: dict[int, int] = {}
    n_of: dict[int, int] = {}
    broken: set[int] = set()
    for k, (req, i) in enumerate(slots):
        key = id(req)
        n_of[key] = req.n
        seen[key] = seen.get(key, 0) + 1
        if k - i != first.setdefault(key, k - i) or req.remaining != req.n:
            broken.add(key)
    return {key for key in first if key not in broken and seen[key] == n_of[key]}


class PredictorFailed(ModelError):
    """The predictor of this worker cannot run any more (its consumer failed)."""

    def __init__(self, cause: BaseException) -> None:
        text = str(cause).strip() or type(cause).__name__
        super().__init__(f"the model's predictor failed: {type(cause).__name__}: {text}")


def check_batch_bytes(batch_size: int, card: ModelCard, path: Path | None = None) -> None:
    """ModelError (one line) when one batch's buffers would exceed :data:`MAX_BATCH_BYTES`."""
    roi = card.window_px
    per_window = roi * roi * (3 + 4 * card.n_maps)
    need = batch_size * per_window
    if need > MAX_BATCH_BYTES:
        most = max(1, MAX_BATCH_BYTES // per_window)
        raise ModelError(f"a batch of {batch_size} windows of {roi} px needs "
                         f"{need / (1 << 30):.1f} GiB of buffers (at most "
                         f"{MAX_BATCH_BYTES >> 30} GiB); use --batch-size {most} or less", path)


def served_card(card: ModelCard, config: InferConfig, path: Path) -> ModelCard:
    """The card as this run serves it: with the run's window (``config.tile_px``) checked
    against the model; ModelError naming the file otherwise."""
    try:
        return card.at_tile(config.tile_px)
    except ValueError as exc:
        raise ModelError(str(exc), path) from None


def _default_batch(device: str) -> int:
    if device == "cpu":
        return CPU_BATCH
    return GPU_BATCH if _sees_gpu() else CPU_BATCH


def _sees_gpu() -> bool:
    """Whether this process's backend sees a GPU (cheap checks first)."""
    if not has_nvidia_driver() or os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    backend = keras_backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return bool(tf.config.list_physical_devices("GPU"))
        if backend == "jax":
            import jax

            return bool(jax.devices("gpu"))
        if backend == "torch":
            import torch

            return bool(torch.cuda.is_available())
    except (ImportError, RuntimeError):
        return False
    return False


# -- one predictor per worker process --------------------------------------------------------
_cache: dict[tuple[str, str, InferConfig], Predictor] = {}
_lock = threading.Lock()


def cached_predictor(model_path: str | os.PathLike[str] | None, config: InferConfig
                     ) -> Predictor:
    """The process's predictor for a model file and config, loaded on first use and kept.

    Dask tasks call this instead of receiving the model, so a model is loaded once per
    worker process (normally ahead of time, by :class:`wsi_seg.orchestration.cluster.ModelPlugin`)
    and
    never travels in task arguments. Keyed by the file's identity (path, size, modification
    time), so a replaced file is reloaded.
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


def cached_predictors() -> list[Predictor]:
    """Every predictor this process has loaded (for statistics)."""
    with _lock:
        return list(_cache.values())


def warm_predictor(model_path: str | os.PathLike[str] | None, config: InferConfig) -> float:
    """Load the model and compile its forward pass (:meth:`Engine.warm`); returns the seconds
    taken.

    The first time in a process, the objects alive then (the framework's and the model's,
    ~500,000 with TensorFlow) are moved out of the garbage collector's sight
    (:func:`gc.freeze`): every full collection later scanned them all, holding the GIL for a
    tenth of a second or more, and a slide's polygons (many short-lived objects) triggered
    several (vectorizing a noise map in a worker that loaded a UNet: 3.4-3.8 s; frozen, 3.1-3.3 s).
    """
    t = time.perf_counter()
    cached_predictor(model_path, config).engine.warm()
    _freeze_heap_once()
    return time.perf_counter() - t


_heap_frozen = False


def _freeze_heap_once() -> None:
    """:func:`gc.freeze` once per process, after collecting what is garbage already (frozen
    objects are never collected; the model lives as long as the process anyway)."""
    global _heap_frozen
    with _lock:
        if _heap_frozen:
            return
        _heap_frozen = True
    gc.collect()
    gc.freeze()
