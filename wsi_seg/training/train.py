"""Training loops for both model kinds, evaluation, learning curves.

One loop (:func:`fit`) serves the UNet and the patch classifier. Its bookkeeping lives in one
callback whose whole state is a small JSON file, so ``--resume`` continues exactly where a run
stopped: the epoch counter, the best score, early-stopping and learning-rate patience counters,
the learning rate and the optimizer's moments all come back.

Files written for ``--out DIR/MODEL.keras``::

    DIR/MODEL.keras, DIR/MODEL.json          best model so far (float32, no optimizer) + card
    DIR/MODEL.training/train_metrics.csv     one row per epoch: losses, metrics, lr, seconds
    DIR/MODEL.training/learning_curves.png   loss and metric curves
    DIR/MODEL.training/checkpoint.weights.h5 last epoch's weights and optimizer } --resume
    DIR/MODEL.training/state.json            counters, history, architecture    } reads these
    DIR/MODEL.training/patients.csv, overlays/<patient>.png   (patch models) per-patient scores
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import io
import itertools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wsi_seg.core.errors import ModelError, WsiSegError
from wsi_seg.core.files import atomic_path, decode_json, write_atomic
from wsi_seg.evaluation.metrics import OverlapScore, iou_dice, summarize_scores
from wsi_seg.orchestration.pipeline import CHUNK_WINDOWS, RunConfig
from wsi_seg.stages.blend import (
    BLEND_MODES,
    BlendSpec,
    PredictFn,
    blend_mode,
    sliding_window_inference,
)
from wsi_seg.stages.card import ModelCard, card_path, load_model, save_model, sha256_file
from wsi_seg.stages.infer import InferConfig, Predictor
from wsi_seg.stages.models import build_model, preprocess
from wsi_seg.stages.slide import BACKGROUND_RGB
from wsi_seg.stages.tiling import step_for
from wsi_seg.training.datasets import (
    Augment,
    IdcPatch,
    balance_indices,
    find_pairs,
    fixed_dataset,
    fixed_tiles,
    load_pairs,
    patch_dataset,
    read_mask,
    read_patch,
    read_rgb,
    scan_idc,
    split_patients,
    unet_train_dataset,
)

LOSSES = ("bce", "dice", "bce_dice", "focal")
SMOOTH = 1.0  # soft-Dice smoothing, pixels: keeps the loss finite on tumour-free batches


# -- losses (plain functions of float32 tensors) ---------------------------------------------------
def _f32(y_true: Any, y_pred: Any) -> tuple[Any, Any]:
    import tensorflow as tf

    return tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32)


def bce(y_true: Any, y_pred: Any) -> Any:
    """Binary cross-entropy, mean over pixels (or patches)."""
    import keras
    import tensorflow as tf

    y_true, y_pred = _f32(y_true, y_pred)
    return tf.reduce_mean(keras.losses.binary_crossentropy(y_true, y_pred))


def dice_loss(y_true: Any, y_pred: Any) -> Any:
    """1 - soft Dice over the whole batch (batch-global, so empty tiles do not dominate)."""
    import tensorflow as tf

    y_true, y_pred = _f32(y_true, y_pred)
    inter = tf.reduce_sum(y_true * y_pred)
    return 1.0 - (2.0 * inter + SMOOTH) / (tf.reduce_sum(y_true) + tf.reduce_sum(y_pred) + SMOOTH)


def bce_dice(y_true: Any, y_pred: Any) -> Any:
    """BCE + soft-Dice loss: BCE's per-pixel gradients plus Dice's robustness to imbalance."""
    return bce(y_true, y_pred) + dice_loss(y_true, y_pred)


def focal(y_true: Any, y_pred: Any) -> Any:
    """Binary focal loss (gamma 2): down-weights easy pixels."""
    import keras
    import tensorflow as tf

    y_true, y_pred = _f32(y_true, y_pred)
    return tf.reduce_mean(keras.losses.binary_focal_crossentropy(y_true, y_pred, gamma=2.0))


LOSS_FUNCTIONS: dict[str, Callable[[Any, Any], Any]] = {
    "bce": bce, "dice": dice_loss, "bce_dice": bce_dice, "focal": focal,
}


# -- epoch scores (stateful Keras metrics, pooled over the epoch) ---------------------------------
#: Scores logged per epoch (``dice``, ``val_dice``, ...): what ``--monitor`` and the card use.
SCORES = ("dice", "iou", "accuracy")
_EPS = 1e-7  # Dice and IoU are 1, not NaN, when neither truth nor prediction has tumour


def score_metrics() -> list[Any]:
    """Fresh stateful Keras metrics, one per name in :data:`SCORES`, thresholding at 0.5.

    Each sums true/false positives and negatives over every batch of the epoch and scores the
    sums, so an epoch's Dice is the Dice of all its pixels (patches, for a patch model). A
    mean of per-batch Dice would weigh a batch with one tumour pixel like one full of tumour,
    and would change with the batch size.
    """
    cls = _pooled_score_class()
    return [cls(name) for name in SCORES]


@functools.cache
def _pooled_score_class() -> type:
    # Defined on first use: Keras is imported only when training.
    import keras
    from keras import ops

    class PooledScore(keras.metrics.Metric):
        """Dice, IoU or accuracy of the 0/1 counts ``(tp, fp, fn, tn)`` summed so far."""

        def __init__(self, name: str, **kwargs: Any) -> None:
            if name not in SCORES:
                raise ValueError(f"unknown score {name!r}; use one of {', '.join(SCORES)}")
            super().__init__(name=name, **kwargs)
            # float64: a float32 sum stops counting single pixels beyond 2**24 (16.7 Mpx).
            self.counts = self.add_variable(shape=(4,), initializer="zeros", dtype="float64",
                                            name="counts")

        def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
            t = ops.reshape(ops.cast(y_true, "float32") >= 0.5, (-1,))
            p = ops.reshape(ops.cast(y_pred, "float32") >= 0.5, (-1,))
            not_t, not_p = ops.logical_not(t), ops.logical_not(p)
            pairs = ((t, p), (not_t, p), (t, not_p), (not_t, not_p))
            self.counts.assign_add(ops.stack(
                [ops.sum(ops.cast(ops.logical_and(a, b), "float64")) for a, b in pairs]))

        def result(self) -> Any:
            tp, fp, fn, tn = (self.counts[i] for i in range(4))
            if self.name == "dice":
                value = (2 * tp + _EPS) / (2 * tp + fp + fn + _EPS)
            elif self.name == "iou":
                value = (tp + _EPS) / (tp + fp + fn + _EPS)
            else:
                value = (tp + tn) / ops.maximum(tp + fp + fn + tn, 1.0)
            return ops.cast(value, "float32")

        def reset_state(self) -> None:
            self.counts.assign(ops.zeros((4,), "float64"))

        def get_config(self) -> dict[str, Any]:
            return {"name": self.name}

    return PooledScore


# -- configuration ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """How to train, whatever the model kind.

    Attributes:
        out: the model file to write (``.keras``); its card and a ``.training`` folder go beside.
        epochs: total epochs (a resumed run counts the epochs already done).
        batch_size: tiles or patches per step.
        steps_per_epoch: optimizer steps per epoch (None: one pass over the training data).
        learning_rate: initial Adam learning rate.
        loss: one of ``bce``, ``dice``, ``bce_dice``, ``focal``.
        monitor: ``val_loss`` (lower is better) or ``val_dice``/``val_iou``/``val_accuracy``.
        early_stopping: stop after this many epochs without improvement (0 disables).
        lr_patience: halve (``lr_factor``) the learning rate after this many epochs without
            improvement (0 disables).
        lr_factor: factor for reduce-on-plateau.
        min_lr: floor of the learning rate.
        min_delta: smallest change of the monitor that counts as an improvement.
        resume: continue from the ``.training`` folder of a previous run of the same ``out``.
        mixed_precision: float16 compute (GPU); weights and outputs stay float32.
        seed: seeds NumPy, TensorFlow and Python's random for a reproducible run.
        augment: training augmentation.
        verbose: Keras progress output (0 silent, 1 bar, 2 one line per epoch).
    """

    out: Path
    epochs: int = 30
    batch_size: int = 16
    steps_per_epoch: int | None = None
    learning_rate: float = 1e-3
    loss: str = "bce_dice"
    monitor: str = "val_loss"
    early_stopping: int = 8
    lr_patience: int = 3
    lr_factor: float = 0.5
    min_lr: float = 1e-6
    min_delta: float = 1e-4
    resume: bool = False
    mixed_precision: bool = False
    seed: int = 0
    augment: Augment = field(default_factory=Augment)
    verbose: int = 2

    def check(self) -> None:
        if self.out.suffix != ".keras":
            raise WsiSegError("the output model must end in .keras", self.out)
        if self.loss not in LOSSES:
            raise WsiSegError(f"unknown loss {self.loss!r}; use one of {', '.join(LOSSES)}")
        if self.monitor not in ("val_loss", "val_dice", "val_iou", "val_accuracy"):
            raise WsiSegError(f"cannot monitor {self.monitor!r}; use val_loss or val_dice")
        if self.epochs < 1 or self.batch_size < 1:
            raise WsiSegError("epochs and batch size must be at least 1")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise WsiSegError("steps per epoch must be at least 1")
        if not 0 < self.lr_factor < 1:
            raise WsiSegError("the learning-rate factor must lie in (0, 1)")

    @property
    def workdir(self) -> Path:
        return self.out.with_name(self.out.stem + ".training")


@dataclass
class TrainState:
    """Everything :func:`fit` needs to continue a run (JSON round trip)."""

    epoch: int = 0  # epochs completed
    best: float | None = None
    best_epoch: int = 0
    wait: int = 0  # epochs without improvement (early stopping)
    lr_wait: int = 0  # epochs without improvement since the last LR change
    lr: float = 1e-3
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)  # model kind + builder arguments

    @classmethod
    def read(cls, path: Path) -> TrainState:
        try:
            d = decode_json(path.read_text(encoding="utf-8"), path)
            return cls(**d)
        except WsiSegError as exc:
            raise WsiSegError(f"cannot resume: unreadable training state ({exc.cause})",
                              path) from None
        except (OSError, ValueError, TypeError) as exc:
            raise WsiSegError(f"cannot resume: unreadable training state ({exc})", path) from None

    def write(self, path: Path) -> None:
        write_atomic(path, json.dumps(dataclasses.asdict(self), indent=1))


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced."""

    model_path: Path
    card: ModelCard
    history: list[dict[str, float]]
    epochs_run: int
    seconds_per_epoch: float
    stopped_early: bool


# -- the loop -------------------------------------------------------------------------------------
def _data_seed(cfg: TrainConfig) -> int:
    """Seed for the input pipeline: a resumed run continues with fresh crops and orders
    instead of replaying the first epochs' batches."""
    if cfg.resume:
        with contextlib.suppress(WsiSegError):
            return cfg.seed + TrainState.read(cfg.workdir / "state.json").epoch
    return cfg.seed


def _set_precision(mixed: bool) -> None:
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")


def _export_copy(spec: dict[str, Any], model: Any) -> Any:
    """A float32, uncompiled twin of ``model`` with its weights: what gets saved.

    Rebuilding from the builder arguments drops mixed-precision policies (slow on CPUs), the
    optimizer and the compile configuration (custom loss functions), so the saved file loads
    in safe mode anywhere.
    """
    import keras

    policy = keras.mixed_precision.global_policy().name
    try:
        _set_precision(False)
        twin = build_model(spec["kind"], **spec["args"])
    finally:
        keras.mixed_precision.set_global_policy(policy)
    twin.set_weights(model.get_weights())
    return twin


def _better(value: float, best: float | None, monitor: str, min_delta: float) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    if monitor == "val_loss":
        return value < best - min_delta
    return value > best + min_delta


class _Tracker:
    """Keras callback: checkpoint, best model, CSV, curves, early stopping, LR on plateau."""

    def __init__(
        self,
        cfg: TrainConfig,
        state: TrainState,
        card: ModelCard,
        describe: Callable[[dict[str, float]], dict[str, float]],
    ) -> None:
        import keras

        class _Cb(keras.callbacks.Callback):
            def on_epoch_begin(_cb, epoch: int, logs: Any = None) -> None:
                self.t0, self.cpu0 = time.perf_counter(), time.process_time()

            def on_epoch_end(_cb, epoch: int, logs: Any = None) -> None:
                self.epoch_end(epoch, dict(logs or {}))

        self.callback = _Cb()
        self.cfg, self.state, self.card, self.describe = cfg, state, card, describe
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()

    def epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        cfg, st = self.cfg, self.state
        model = self.callback.model
        seconds = time.perf_counter() - self.t0
        row = {"epoch": float(epoch + 1), **{k: float(v) for k, v in logs.items()}}
        row["lr"] = st.lr
        row["seconds"] = round(seconds, 2)
        # CPU seconds (all threads) tell the cost apart from waiting on a busy machine.
        row["cpu_seconds"] = round(time.process_time() - self.cpu0, 2)
        st.history.append(row)
        st.epoch = epoch + 1
        value = float(logs.get(cfg.monitor, float("nan")))
        if _better(value, st.best, cfg.monitor, cfg.min_delta):
            st.best, st.best_epoch, st.wait, st.lr_wait = value, epoch + 1, 0, 0
            training = dict(self.card.training)
            training.update(best_epoch=epoch + 1, monitor=cfg.monitor, best=value)
            card = dataclasses.replace(
                self.card, validation=self.describe(logs), training=training
            )
            save_model(_export_copy(st.spec, model), card, cfg.out)
        else:
            st.wait += 1
            st.lr_wait += 1
            if cfg.lr_patience and st.lr_wait >= cfg.lr_patience and st.lr > cfg.min_lr:
                st.lr = max(st.lr * cfg.lr_factor, cfg.min_lr)
                model.optimizer.learning_rate.assign(st.lr)
                st.lr_wait = 0
            if cfg.early_stopping and st.wait >= cfg.early_stopping:
                st.stopped_early = True
                model.stop_training = True
        # Checkpoint last: weights (+ optimizer slots), then the state that points at them.
        wd = cfg.workdir
        with atomic_path(wd / "checkpoint.weights.h5") as tmp:
            model.save_weights(tmp)
        st.write(wd / "state.json")
        write_metrics_csv(st.history, wd / "train_metrics.csv")
        draw_learning_curves(st.history, wd / "learning_curves.png")


def fit(
    spec: dict[str, Any],
    card: ModelCard,
    train_ds: Any,
    steps_per_epoch: int,
    val_ds: Any,
    cfg: TrainConfig,
    describe: Callable[[dict[str, float]], dict[str, float]] | None = None,
) -> TrainResult:
    """Train ``spec`` (``{"kind": ..., "args": {builder kwargs}}``) and keep the best model.

    Args:
        spec: model kind and builder arguments (stored for ``--resume``).
        card: card template for the saved model (validation scores are filled in).
        train_ds: endless ``tf.data`` dataset of ``(x, y)`` batches.
        steps_per_epoch: batches per epoch.
        val_ds: finite validation dataset.
        cfg: the training configuration.
        describe: maps an epoch's Keras logs to the card's ``validation`` dict.
    """
    import keras

    cfg.check()
    wd = cfg.workdir
    describe = describe or _val_scores
    if cfg.resume:
        state_path = wd / "state.json"
        if not (state_path.is_file() and (wd / "checkpoint.weights.h5").is_file()):
            raise WsiSegError(f"nothing to resume: no checkpoint in {wd}", cfg.out)
        state = TrainState.read(state_path)
        if state.spec != spec:
            raise WsiSegError(
                "cannot resume: the checkpoint was trained with another architecture "
                f"({state.spec}); pass the same options as the first run",
                state_path,
            )
    else:
        state = TrainState(lr=cfg.learning_rate, spec=spec)
    wd.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.seed + state.epoch)  # a resumed run draws new batches
    _set_precision(cfg.mixed_precision)
    try:
        model = build_model(spec["kind"], **spec["args"])
        optimizer = keras.optimizers.Adam(learning_rate=state.lr)
        model.compile(
            optimizer=optimizer,
            loss=LOSS_FUNCTIONS[cfg.loss],
            metrics=score_metrics(),
            jit_compile=False,  # XLA is slower than oneDNN on CPUs
        )
        if cfg.resume:
            # The checkpoint holds the optimizer's slots too (Adam moments, step counter);
            # they load only into an optimizer that is already built.
            # model.optimizer, not optimizer: under mixed precision Keras wraps it in a
            # LossScaleOptimizer whose loss scale is checkpointed too.
            model.optimizer.build(model.trainable_variables)
            try:
                model.load_weights(wd / "checkpoint.weights.h5")
            except (ValueError, OSError) as exc:
                raise WsiSegError(f"cannot resume: checkpoint does not load ({exc})",
                                  wd / "checkpoint.weights.h5") from None
            model.optimizer.learning_rate.assign(state.lr)
        tracker = _Tracker(cfg, state, card, describe)
        done = state.epoch
        if done < cfg.epochs and not state.stopped_early:
            model.fit(
                train_ds,
                steps_per_epoch=steps_per_epoch,
                epochs=cfg.epochs,
                initial_epoch=done,
                validation_data=val_ds,
                callbacks=[tracker.callback],
                verbose=cfg.verbose,
                shuffle=False,  # the tf.data pipelines shuffle themselves
            )
    finally:
        _set_precision(False)
    if not cfg.out.is_file():
        raise WsiSegError("training produced no model (every validation score was NaN)", cfg.out)
    _, final_card = load_model(cfg.out)
    ran = state.history[done:] if len(state.history) > done else []
    # The first epoch of a run includes tracing the graphs; report the steady state when
    # there is one.
    steady = ran[1:] or ran
    secs = float(np.mean([r["seconds"] for r in steady])) if steady else float("nan")
    return TrainResult(cfg.out, final_card, state.history, state.epoch, secs, state.stopped_early)


def _val_scores(logs: dict[str, float]) -> dict[str, float]:
    return {k[4:]: round(float(v), 4) for k, v in logs.items() if k.startswith("val_")}


# -- CSV and learning curves ----------------------------------------------------------------------
def write_metrics_csv(history: Sequence[dict[str, float]], path: Path) -> None:
    """One row per epoch, columns in first-seen order."""
    cols: list[str] = []
    for row in history:
        cols += [k for k in row if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: (int(v) if k == "epoch" else f"{v:.6g}") for k, v in row.items()})
    write_atomic(path, buf.getvalue())


_COLOURS_BGR = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148)]


def draw_learning_curves(history: Sequence[dict[str, float]], path: Path) -> None:
    """Two panels (losses; Dice/IoU/accuracy), training solid, validation dashed, drawn with
    OpenCV so no plotting library is needed."""
    panels = [
        ("loss", ["loss", "val_loss"]),
        ("scores", ["dice", "val_dice", "iou", "val_iou", "accuracy", "val_accuracy"]),
    ]
    w, h, m = 560, 380, 50
    legend_h = 30  # one row of legend entries under each panel, clear of the curves
    canvas = np.full((h + legend_h, 2 * w, 3), 255, np.uint8)
    epochs = [r["epoch"] for r in history]
    for p, (title, keys) in enumerate(panels):
        ox = p * w
        series = {k: [r.get(k, float("nan")) for r in history] for k in keys}
        series = {k: v for k, v in series.items() if any(math.isfinite(x) for x in v)}
        vals = [x for v in series.values() for x in v if math.isfinite(x)]
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
        if title == "scores":
            lo, hi = min(lo, 0.0), max(hi, 1.0)
        if hi - lo < 1e-9:
            hi = lo + 1.0
        e0, e1 = (min(epochs), max(epochs)) if epochs else (1.0, 2.0)
        if e1 == e0:
            e1 = e0 + 1

        def pt(e: float, v: float, *, _ox: int = ox, _lo: float = lo, _hi: float = hi,
               _e0: float = e0, _e1: float = e1) -> tuple[int, int]:
            x = _ox + m + (e - _e0) / (_e1 - _e0) * (w - 2 * m)
            y = h - m - (v - _lo) / (_hi - _lo) * (h - 2 * m)
            return round(x), round(y)

        cv2.rectangle(canvas, (ox + m, m), (ox + w - m, h - m), (0, 0, 0), 1)
        cv2.putText(canvas, title, (ox + m, m - 18), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1)
        for val, y in ((lo, h - m), (hi, m)):
            cv2.putText(canvas, f"{val:.3g}", (ox + 4, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (0, 0, 0), 1)
        cv2.putText(canvas, f"epoch {e0:g}..{e1:g}", (ox + w // 2 - 40, h - m + 18),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
        for i, (k, v) in enumerate(series.items()):
            colour = _COLOURS_BGR[(i // 2) % len(_COLOURS_BGR)]
            pts = [pt(e, x) for e, x in zip(epochs, v, strict=True) if math.isfinite(x)]
            dashed = k.startswith("val_")
            for a, b in itertools.pairwise(pts):
                if dashed:
                    _dashed_line(canvas, a, b, colour)
                else:
                    cv2.line(canvas, a, b, colour, 2, cv2.LINE_AA)
            for q in pts:
                cv2.circle(canvas, q, 3, colour, -1, cv2.LINE_AA)
            lx, ly = ox + 8 + 92 * i, h + 12
            if dashed:
                _dashed_line(canvas, (lx, ly - 4), (lx + 18, ly - 4), colour, dash=4)
            else:
                cv2.line(canvas, (lx, ly - 4), (lx + 18, ly - 4), colour, 2)
            cv2.putText(canvas, k, (lx + 22, ly), cv2.FONT_HERSHEY_SIMPLEX, 0.38, colour, 1)
    ok, png = cv2.imencode(".png", canvas)
    if ok:
        write_atomic(path, png.tobytes())


def _dashed_line(img: np.ndarray, a: tuple[int, int], b: tuple[int, int],
                 colour: tuple[int, int, int], dash: int = 6) -> None:
    n = max(1, int(math.hypot(b[0] - a[0], b[1] - a[1]) // dash))
    for i in range(0, n, 2):
        p = (a[0] + (b[0] - a[0]) * i // n, a[1] + (b[1] - a[1]) * i // n)
        q = (a[0] + (b[0] - a[0]) * (i + 1) // n, a[1] + (b[1] - a[1]) * (i + 1) // n)
        cv2.line(img, p, q, colour, 2, cv2.LINE_AA)


# -- UNet -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UnetOptions:
    """Data and architecture of a UNet run.

    Attributes:
        train_dir, valid_dir: folders with ``images/`` and ``masks/``.
        mpp: resolution of the training images, µm/px (written to the card; inference reads
            slides at this resolution).
        input_size_px: side of the model input, pixels.
        channels: 1 (greyscale) or 3 (RGB).
        tile_mode: ``crop`` (random crops, any image size) or ``resize`` (whole images resized).
        mask_threshold: mask grey value (0..255) at or above which a pixel is tumour.
        depth, base_filters, kernel_size, dropout, input_downsample: see
            :func:`wsi_seg.stages.models.build_unet`.
        normalisation: input normalisation (card).
        threshold: output threshold written to the card.
    """

    train_dir: Path
    valid_dir: Path
    mpp: float
    input_size_px: int = 256
    channels: int = 3
    tile_mode: str = "crop"
    mask_threshold: int = 128
    depth: int = 4
    base_filters: int = 16
    kernel_size: int = 3
    dropout: float = 0.0
    input_downsample: int = 1
    normalisation: str = "divide_255"
    threshold: float = 0.5
    trained_on: str = ""


def train_unet(opts: UnetOptions, cfg: TrainConfig) -> TrainResult:
    """Train a UNet on ``images/`` + ``masks/`` folders; see :func:`fit` for the outputs."""
    cfg.check()
    if opts.tile_mode not in ("crop", "resize"):
        raise WsiSegError(f"unknown tile mode {opts.tile_mode!r}; use crop or resize")
    train_pairs, valid_pairs = find_pairs(opts.train_dir), find_pairs(opts.valid_dir)
    images, masks = load_pairs(train_pairs, opts.mask_threshold)
    v_images, v_masks = load_pairs(valid_pairs, opts.mask_threshold)
    size = opts.input_size_px
    args = dict(
        input_size_px=size, channels=opts.channels, depth=opts.depth,
        base_filters=opts.base_filters, kernel_size=opts.kernel_size, dropout=opts.dropout,
        input_downsample=opts.input_downsample,
    )
    spec = {"kind": "unet", "args": args}
    try:
        build_model("unet", **args)  # fail fast on impossible architectures
    except ValueError as exc:
        raise WsiSegError(f"bad UNet options: {exc}") from None
    if opts.tile_mode == "crop":
        n_px = sum(m.size for m in masks)
        steps = cfg.steps_per_epoch or max(1, math.ceil(n_px / (size * size) / cfg.batch_size))
    else:
        steps = cfg.steps_per_epoch or max(1, math.ceil(len(images) / cfg.batch_size))
    train_ds = unet_train_dataset(
        images, masks, size, opts.channels, opts.normalisation, cfg.batch_size,
        opts.tile_mode, cfg.augment, _data_seed(cfg),
    )
    vx, vy = fixed_tiles(v_images, v_masks, size, opts.tile_mode)
    val_ds = fixed_dataset(vx, vy, opts.channels, opts.normalisation, cfg.batch_size)
    trained_on = opts.trained_on or (
        f"{len(train_pairs)} image/mask pairs from {opts.train_dir} at {opts.mpp:g} µm/px "
        f"({opts.tile_mode} {size} px)"
    )
    card = ModelCard(
        kind="unet", input_size_px=size, channels=opts.channels, mpp=opts.mpp,
        normalisation=opts.normalisation, threshold=opts.threshold, trained_on=trained_on,
        architecture={"builder": "build_unet", **args},
        training=_training_info(cfg, steps, extra={
            "train_images": len(train_pairs), "valid_images": len(valid_pairs),
            "valid_tiles": len(vx), "valid_dir": str(opts.valid_dir),
            "tile_mode": opts.tile_mode, "mask_threshold": opts.mask_threshold,
        }),
        name=cfg.out.stem,
        extra={"validation_note": f"dice, iou and accuracy pool all pixels of {len(vx)} fixed "
               f"tiles of {opts.valid_dir}, loss is their batch mean (used for model "
               "selection)"},
    )
    return fit(spec, card, train_ds, steps, val_ds, cfg)


def _training_info(cfg: TrainConfig, steps: int, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "loss": cfg.loss, "optimizer": "adam", "learning_rate": cfg.learning_rate,
        "batch_size": cfg.batch_size, "steps_per_epoch": steps, "max_epochs": cfg.epochs,
        "augment": dataclasses.asdict(cfg.augment), "mixed_precision": cfg.mixed_precision,
        "seed": cfg.seed, **extra,
    }


# -- patch classifier -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PatchOptions:
    """Data and architecture of a patch-classifier run.

    Attributes:
        data_dir: IDC layout ``DIR/<patient>/<0|1>/*.png``.
        mpp: resolution of the patches, µm/px (IDC: about 4.0, i.e. 2.5x).
        input_size_px: patch side, pixels (IDC: 50).
        channels: 1 or 3.
        balance: ``none``, ``oversample`` or ``undersample`` (training split only).
        val_fraction, test_fraction: fractions of patients held out (seeded shuffle).
        val_patients, test_patients: explicit held-out patients (override the fractions).
        filters, dense_units, dropout, kernel_size: see
        :func:`wsi_seg.stages.models.build_patch_cnn`.
        overlays: write one overlay PNG per evaluated patient.
    """

    data_dir: Path
    mpp: float = 4.0
    input_size_px: int = 50
    channels: int = 3
    balance: str = "none"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    val_patients: tuple[str, ...] | None = None
    test_patients: tuple[str, ...] | None = None
    filters: tuple[int, ...] = (32, 64)
    dense_units: int = 128
    dropout: float = 0.25
    kernel_size: int = 3
    normalisation: str = "divide_255"
    threshold: float = 0.5
    overlays: bool = True
    trained_on: str = ""


@dataclass(frozen=True)
class PatientScore:
    """Per-patient evaluation: patch accuracy and IoU of the tumour patch footprints."""

    patient: str
    patches: int
    tumour_patches: int
    predicted_patches: int
    accuracy: float
    iou: float  # NaN when neither truth nor prediction has a tumour patch


def train_patch(opts: PatchOptions, cfg: TrainConfig) -> tuple[TrainResult, list[PatientScore]]:
    """Train the IDC-style classifier with a patient split, then evaluate per patient.

    The held-out test patients are evaluated (the validation patients when there are none);
    per-patient scores go to ``patients.csv`` and the card's ``validation``.
    """
    cfg.check()
    patches = scan_idc(opts.data_dir)
    split = split_patients(
        [p.patient for p in patches], opts.val_fraction, opts.test_fraction, cfg.seed,
        opts.val_patients, opts.test_patients,
    )
    by_split = {name: [p for p in patches if p.patient in set(getattr(split, name))]
                for name in ("train", "val", "test")}
    train = by_split["train"]
    labels = np.array([p.label for p in train])
    if len(set(labels.tolist())) < 2:
        raise WsiSegError(
            "the training patients hold only one class; change the split", opts.data_dir
        )
    idx = balance_indices(labels, opts.balance, cfg.seed)
    size = opts.input_size_px
    args = dict(
        input_size_px=size, channels=opts.channels, filters=list(opts.filters),
        kernel_size=opts.kernel_size, dense_units=opts.dense_units, dropout=opts.dropout,
    )
    spec = {"kind": "patch", "args": args}
    try:
        build_model("patch", **args)
    except ValueError as exc:
        raise WsiSegError(f"bad patch-model options: {exc}") from None
    steps = cfg.steps_per_epoch or max(1, math.ceil(len(idx) / cfg.batch_size))
    train_ds = patch_dataset(
        [train[i].path for i in idx], labels[idx], size, opts.channels, opts.normalisation,
        cfg.batch_size, aug=cfg.augment, shuffle_seed=_data_seed(cfg), repeat=True,
    )
    val = by_split["val"]
    val_ds = patch_dataset(
        [p.path for p in val], [p.label for p in val], size, opts.channels,
        opts.normalisation, cfg.batch_size,
    )
    counts = {name: {"patients": len(getattr(split, name)), "patches": len(ps),
                     "tumour_patches": sum(p.label for p in ps)} for name, ps in by_split.items()}
    trained_on = opts.trained_on or (
        f"IDC-layout patches from {opts.data_dir} at {opts.mpp:g} µm/px: "
        f"{counts['train']['patches']} patches of {counts['train']['patients']} patients"
    )
    card = ModelCard(
        kind="patch", input_size_px=size, channels=opts.channels, mpp=opts.mpp,
        normalisation=opts.normalisation, threshold=opts.threshold, trained_on=trained_on,
        architecture={"builder": "build_patch_cnn", **args},
        training=_training_info(cfg, steps, extra={
            "balance": opts.balance, "balanced_train_patches": len(idx),
            "split": {k: list(getattr(split, k)) for k in ("train", "val", "test")},
            "counts": counts,
        }),
        name=cfg.out.stem,
    )
    result = fit(spec, card, train_ds, steps, val_ds, cfg)
    eval_name = "test" if split.test else "val"
    model, card = load_model(cfg.out)
    scores = evaluate_patients(
        model, card, by_split[eval_name], cfg.workdir if opts.overlays else None
    )
    write_patient_csv(scores, cfg.workdir / "patients.csv")
    summary = summarise_patients(scores)
    validation = {**{f"{eval_name}_{k}": v for k, v in summary.items()},
                  **{f"val_{k}": v for k, v in card.validation.items()}}
    card = update_card(cfg.out, validation=validation, extra={
        **card.extra,
        "validation_note": f"per-patient scores on the {eval_name} patients "
        f"({', '.join(getattr(split, eval_name))}); IoU of tumour-patch footprints, NaN "
        "(excluded from the mean, counted in empty_both) when a patient has neither true nor "
        "predicted tumour patches; val_* pool all patches of the validation patients "
        "(val_loss: their batch mean), used for model selection",
    })
    return dataclasses.replace(result, card=card), scores


def predict_patches(
    model: Any, card: ModelCard, rgb: np.ndarray, batch_size: int = 64
) -> np.ndarray:
    """Probabilities ``(n,)`` for RGB uint8 patches ``(n, s, s, 3)`` (fixed batch shape)."""
    return predict_tiles(model, card, rgb, batch_size)[:, 0]


def predict_tiles(model: Any, card: ModelCard, rgb: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Model outputs for RGB uint8 tiles, batches padded to one shape so TF traces once."""
    import tensorflow as tf

    n = len(rgb)
    s, c = card.input_size_px, card.channels
    fn = _predict_fn(model, batch_size, s, c)
    outs = []
    for i in range(0, n, batch_size):
        x = preprocess(rgb[i : i + batch_size], card)
        k = len(x)
        if k < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - k, *x.shape[1:]), np.float32)])
        outs.append(np.asarray(fn(tf.constant(x)))[:k])
    if not outs:
        shape = (0, s, s, 1) if card.kind == "unet" else (0, 1)
        return np.zeros(shape, np.float32)
    return np.concatenate(outs).astype(np.float32)


_FN_CACHE: dict[tuple[int, int, int, int], Any] = {}


def _predict_fn(model: Any, batch: int, s: int, c: int) -> Any:
    import tensorflow as tf

    key = (id(model), batch, s, c)
    if key not in _FN_CACHE:
        if len(_FN_CACHE) > 8:
            _FN_CACHE.clear()

        @tf.autograph.experimental.do_not_convert
        def infer(x: Any) -> Any:
            return model(x, training=False)

        # One fixed input signature: traced once, whatever the number of tiles.
        _FN_CACHE[key] = tf.function(
            infer, input_signature=[tf.TensorSpec((batch, s, s, c), tf.float32)]
        )
    return _FN_CACHE[key]


def evaluate_patients(
    model: Any, card: ModelCard, patches: Sequence[IdcPatch], workdir: Path | None
) -> list[PatientScore]:
    """Per patient: rebuild the image and tumour mask from patch coordinates, predict every
    patch, score patch accuracy and tumour IoU, and (with ``workdir``) write an overlay PNG."""
    scores = []
    by_patient: dict[str, list[IdcPatch]] = {}
    for p in patches:
        by_patient.setdefault(p.patient, []).append(p)
    s = card.input_size_px
    for patient, ps in sorted(by_patient.items()):
        rgb = np.stack([read_patch(p.path, s) for p in ps])
        prob = predict_patches(model, card, rgb)
        pred = (prob >= card.threshold).astype(np.uint8)
        truth = np.array([p.label for p in ps], np.uint8)
        scores.append(PatientScore(
            patient, len(ps), int(truth.sum()), int(pred.sum()),
            float(np.mean(pred == truth)), _nan(iou_dice(pred, truth).iou),
        ))
        if workdir is not None:
            image, truth_mask, pred_mask = rebuild_patient(ps, rgb, pred, s)
            out = workdir / "overlays"
            out.mkdir(parents=True, exist_ok=True)
            write_overlay(image, pred_mask, truth_mask, out / f"{patient}.png")
    return scores


def rebuild_patient(
    patches: Sequence[IdcPatch], rgb: np.ndarray, pred: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste patches at their ``(x, y)`` into one image with truth and prediction masks."""
    w = max(p.x for p in patches) + size
    h = max(p.y for p in patches) + size
    image = np.full((h, w, 3), BACKGROUND_RGB, np.uint8)
    truth = np.zeros((h, w), np.uint8)
    predicted = np.zeros((h, w), np.uint8)
    for p, tile, y_hat in zip(patches, rgb, pred, strict=True):
        image[p.y : p.y + size, p.x : p.x + size] = tile
        truth[p.y : p.y + size, p.x : p.x + size] = p.label
        predicted[p.y : p.y + size, p.x : p.x + size] = y_hat
    return image, truth, predicted


def write_overlay(
    image: np.ndarray, pred: np.ndarray, truth: np.ndarray, path: Path, max_side: int = 2048
) -> None:
    """Overlay on the RGB image: prediction only red, truth only blue, both purple."""
    colour = np.zeros_like(image)
    p, t = pred.astype(bool), truth.astype(bool)
    colour[p & ~t] = (255, 0, 0)
    colour[t & ~p] = (0, 0, 255)
    colour[p & t] = (160, 0, 200)
    any_ = p | t
    out = image.copy()
    out[any_] = (0.55 * image[any_] + 0.45 * colour[any_]).astype(np.uint8)
    scale = max_side / max(out.shape[:2])
    if scale < 1:
        out = cv2.resize(out, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, png = cv2.imencode(".png", cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
    if ok:
        write_atomic(path, png.tobytes())


def summarise_patients(scores: Sequence[PatientScore]) -> dict[str, float]:
    """Means over patients; IoU mean excludes the empty-vs-empty patients, counted apart."""
    ious = [s.iou for s in scores if not math.isnan(s.iou)]
    return {
        "patients": float(len(scores)),
        "mean_accuracy": round(float(np.mean([s.accuracy for s in scores])), 4)
        if scores else float("nan"),
        "mean_iou": round(float(np.mean(ious)), 4) if ious else float("nan"),
        "empty_both": float(len(scores) - len(ious)),
    }


def write_patient_csv(scores: Sequence[PatientScore], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["patient", "patches", "tumour_patches", "predicted_patches", "accuracy", "iou"])
    for s in scores:
        w.writerow([s.patient, s.patches, s.tumour_patches, s.predicted_patches,
                    f"{s.accuracy:.4f}", f"{s.iou:.4f}"])
    summary = summarise_patients(scores)
    w.writerow(["mean", sum(s.patches for s in scores), "", "",
                f"{summary['mean_accuracy']:.4f}", f"{summary['mean_iou']:.4f}"])
    write_atomic(path, buf.getvalue())


def update_card(path: Path, **changes: Any) -> ModelCard:
    """Rewrite the card of an existing model (fields in ``changes``), keeping its hash.

    Refuses when the card no longer describes the file (sha256 mismatch).
    """
    _, card = load_model(path)
    if card.sha256 != sha256_file(path):
        raise ModelError("card does not match the model file", path)
    new = dataclasses.replace(card, **changes)
    write_atomic(card_path(path), new.to_json())
    return new


# -- evaluation of images + masks (``wsi-seg evaluate``) ------------------------------------------
@dataclass(frozen=True)
class ImageScore:
    """Scores of one image at the model's threshold (NaN Dice/IoU when both masks are empty)."""

    name: str
    dice: float
    iou: float
    accuracy: float
    tumour_px: int
    predicted_px: int
    intersection_px: int


@dataclass(frozen=True)
class WindowOptions:
    """How ``wsi-seg run`` places and blends windows, so ``evaluate`` scores what ``run``
    produces. The defaults are run's (:class:`wsi_seg.orchestration.pipeline.RunConfig`).

    Attributes:
        overlap: fraction of a window shared with the next (MONAI's step rule).
        stride_px: window step in working pixels, overriding ``overlap``.
        blend: ``gaussian``, ``hann`` or ``constant``; None: run's choice for the model kind
            (:func:`wsi_seg.stages.blend.blend_mode`).
        sigma_scale: Gaussian sigma as a fraction of the window edge.
        batch_size: windows per model call; None: the device's default (16 CPU, 128 GPU).
    """

    overlap: float = RunConfig.overlap
    stride_px: int | None = RunConfig.stride_px
    blend: str | None = RunConfig.blend
    sigma_scale: float = RunConfig.sigma_scale
    batch_size: int | None = InferConfig.batch_size

    def check(self, roi_px: int | None = None) -> None:
        """WsiSegError naming the option for a value that cannot be right (``roi_px``: the
        model's window edge, which bounds the stride)."""
        if not 0 <= self.overlap < 1:
            raise WsiSegError(f"--overlap must lie in [0, 1), got {self.overlap:g}")
        if self.stride_px is not None and self.stride_px < 1:
            raise WsiSegError(f"--stride must be at least 1 px, got {self.stride_px}")
        if self.stride_px is not None and roi_px is not None and self.stride_px > roi_px:
            # Pixels between windows would be predicted by none and score as background.
            raise WsiSegError(f"--stride {self.stride_px} px is larger than the model's "
                              f"{roi_px} px window: windows would leave gaps")
        if self.blend is not None and self.blend not in BLEND_MODES:
            raise WsiSegError(f"unknown blend mode {self.blend!r}; use one of "
                              f"{', '.join(BLEND_MODES)}")
        if not (math.isfinite(self.sigma_scale) and self.sigma_scale > 0):
            raise WsiSegError(f"--sigma-scale must be positive, got {self.sigma_scale:g}")
        if self.batch_size is not None and self.batch_size < 1:
            raise WsiSegError(f"--batch-size must be at least 1, got {self.batch_size}")

    def spec(self, card: ModelCard) -> BlendSpec:
        """The blend specification ``run`` uses for this model (see ``pipeline.prepare_slide``)."""
        roi = card.input_size_px
        self.check(roi)
        step = self.stride_px or step_for(roi, self.overlap)
        return BlendSpec(roi, step, blend_mode(card.kind, self.blend), self.sigma_scale,
                         self.batch_size or CHUNK_WINDOWS)


def predict_image(image: np.ndarray, predict: PredictFn, spec: BlendSpec) -> np.ndarray:
    """Tumour probability ``(h, w)`` float32 of an RGB uint8 image at the model's resolution.

    Exactly :func:`wsi_seg.stages.blend.sliding_window_inference`, the specification the ``run``
    mosaic equals bit for bit: ``run``'s window grid, padding and importance-weighted blend.
    """
    return sliding_window_inference(
        image, predict, spec.roi_px, mode=spec.mode, sigma_scale=spec.sigma_scale,
        batch_size=spec.batch_size, step_px=spec.step_px,
    )


def overlap_scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """Dice, IoU and accuracy of two boolean masks; Dice/IoU NaN when both are empty."""
    score = iou_dice(pred, truth)  # the one IoU/Dice rule (wsi_seg.evaluation.metrics)
    acc = float(np.mean(pred.astype(bool) == truth.astype(bool)))
    return _nan(score.dice), _nan(score.iou), acc


def _nan(value: float | None) -> float:
    """An undefined (empty-vs-empty) score as NaN, as the evaluation tables write it."""
    return float("nan") if value is None else value


def evaluate_folder(
    model_path: Path,
    images_dir: Path,
    masks_dir: Path,
    threshold: float | None = None,
    mask_threshold: int = 128,
    window: WindowOptions = WindowOptions(),
) -> tuple[list[ImageScore], ModelCard]:
    """Score a model on images and masks with matching stems (images at the model's MPP).

    Each image is predicted as ``run`` predicts a slide (:func:`predict_image`) and
    thresholded at ``threshold``, the card's by default.
    """
    from wsi_seg.training.datasets import _image_files

    if threshold is not None and not 0 <= threshold <= 1:
        raise WsiSegError(f"--threshold must lie in [0, 1], got {threshold:g}")
    if not 0 <= mask_threshold <= 255:
        raise WsiSegError(f"--mask-threshold must lie in 0..255, got {mask_threshold}")
    window.check()
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise WsiSegError("folder not found", d)
    images, masks = _image_files(images_dir), _image_files(masks_dir)
    if not images:
        raise WsiSegError("no images found", images_dir)
    orphans = sorted(set(images) - set(masks))
    if orphans:
        raise WsiSegError(f"{len(orphans)} image(s) without a mask, e.g. {images[orphans[0]].name}",
                          masks_dir)
    with Predictor.from_path(model_path, InferConfig(batch_size=window.batch_size)) as predictor:
        card = predictor.card
        spec = window.spec(card)
        thr = card.threshold if threshold is None else threshold
        scores = []
        for stem in sorted(images):
            img = read_rgb(images[stem])
            truth = read_mask(masks[stem], mask_threshold)
            if truth.shape != img.shape[:2]:
                raise WsiSegError(
                    f"mask is {truth.shape[1]}x{truth.shape[0]} px, image "
                    f"{img.shape[1]}x{img.shape[0]} px",
                    masks[stem],
                )
            prob = predict_image(img, predictor, spec)
            pred = prob >= thr
            dice_, iou_, acc_ = overlap_scores(pred, truth)
            inter = int(np.sum(pred & truth.astype(bool)))
            scores.append(
                ImageScore(stem, dice_, iou_, acc_, int(truth.sum()), int(pred.sum()), inter)
            )
    return scores, card


def summarise_images(scores: Sequence[ImageScore]) -> dict[str, float]:
    """Mean Dice/IoU (over images with tumour in truth or prediction) and mean accuracy;
    pooled Dice/IoU over all pixels; the count of empty-vs-empty images."""
    # Mean = run's macro, pooled = run's micro: the same rule as `run` (wsi_seg.evaluation.metrics).
    run = summarize_scores(
        OverlapScore(s.intersection_px, s.predicted_px - s.intersection_px,
                     s.tumour_px - s.intersection_px) for s in scores)
    return {
        "images": float(len(scores)),
        "mean_dice": _nan(run.macro_dice),
        "mean_iou": _nan(run.macro_iou),
        "mean_accuracy": float(np.mean([s.accuracy for s in scores])) if scores else float("nan"),
        "empty_both": float(run.n_empty_both),
        "pooled_dice": _nan(run.micro_dice),
        "pooled_iou": _nan(run.micro_iou),
    }
