"""The one training loop (:func:`fit`) both model kinds share, and its ``--resume``.

Keras runs the epochs; after each one, in this order:

1. :class:`EpochBook` records the epoch (Keras' logs plus ``lr``, ``seconds``,
   ``cpu_seconds``), saves the model when the monitored value improved, and counts patience:
   the learning rate is cut on a plateau and the run stops early when patience runs out;
2. Keras' ``CSVLogger`` appends the epoch's row to ``train_metrics.csv``;
3. the book writes the checkpoint (weights and optimizer), ``state.json`` and the curves.

Keras' own ``EarlyStopping`` and ``ReduceLROnPlateau`` keep their counters in the callback
objects, which start afresh with every ``fit()`` call; here the counters live in
:class:`~wsi_seg.training.config.TrainState`, whose JSON file brings back the epoch counter,
the best score, both patience counters and the learning rate on ``--resume`` (the
optimizer's moments come back from the checkpoint).

Files written for ``--out DIR/MODEL.keras``::

    DIR/MODEL.keras, DIR/MODEL.json          best model so far (float32, no optimizer) + card
    DIR/MODEL.training/train_metrics.csv     one row per epoch: epoch (from 1), Keras' losses
                                             and scores, lr, seconds, cpu_seconds
                                             (an undefined Dice/IoU, empty vs empty: n/a)
    DIR/MODEL.training/learning_curves.png   loss and score curves
    DIR/MODEL.training/checkpoint.weights.h5 last epoch's weights and optimizer } --resume
    DIR/MODEL.training/state.json            counters, history, architecture    } reads these
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from wsi_seg.core.errors import ModelError, WsiSegError
from wsi_seg.core.files import atomic_path, write_atomic
from wsi_seg.core.scores import UNDEFINED_TEXT, defined_score
from wsi_seg.stages.card import ModelCard, card_path, load_model, save_model, sha256_file
from wsi_seg.stages.models import build_model
from wsi_seg.training.config import TrainConfig, TrainResult, TrainState
from wsi_seg.training.curves import draw_learning_curves
from wsi_seg.training.epoch_scores import SCORES, score_metrics
from wsi_seg.training.losses import LOSS_FUNCTIONS

#: Maps an epoch's logs (:func:`logged_scores`) to the card's ``validation`` entry.
Describe = Callable[[dict[str, float | None]], dict[str, float | None]]


def fit(
    spec: dict[str, Any],
    card: ModelCard,
    train_ds: Any,
    steps_per_epoch: int,
    val_ds: Any,
    cfg: TrainConfig,
    describe: Describe | None = None,
) -> TrainResult:
    """Train ``spec`` (``{"kind": ..., "args": {builder kwargs}}``) and keep the best model.

    Args:
        spec: model kind and builder arguments (stored for ``--resume``).
        card: card template for the saved model (validation scores are filled in).
        train_ds: endless ``tf.data`` dataset of ``(x, y)`` batches.
        steps_per_epoch: batches per epoch.
        val_ds: finite validation dataset.
        cfg: the training configuration.
        describe: maps an epoch's logs (:func:`logged_scores`) to the card's ``validation``
            dict (default: the ``val_*`` values without their prefix, 4 decimals, None for an
            undefined score).
    """
    import keras

    cfg.check()
    state = _starting_state(spec, cfg)
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.seed + state.epoch)  # a resumed run draws new batches
    done = state.epoch
    _set_precision(cfg.mixed_precision)
    try:
        model = _compiled_model(spec, cfg, state)
        if done < cfg.epochs and not state.stopped_early:
            book = EpochBook(cfg, state, card, describe or _val_scores)
            model.fit(
                train_ds, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs,
                initial_epoch=done, validation_data=val_ds, callbacks=book.callbacks(model),
                verbose=cfg.verbose,
                shuffle=False,  # the tf.data pipelines shuffle themselves
            )
    finally:
        _set_precision(False)
    return _result(cfg, state, done)


def _starting_state(spec: dict[str, Any], cfg: TrainConfig) -> TrainState:
    """A fresh state, or (``--resume``) the saved one after checking it fits ``spec``."""
    if not cfg.resume:
        return TrainState(lr=cfg.learning_rate, spec=spec)
    if not (cfg.state_path.is_file() and cfg.checkpoint_path.is_file()):
        raise WsiSegError(f"nothing to resume: no checkpoint in {cfg.workdir}", cfg.out)
    state = TrainState.read(cfg.state_path)
    if state.spec != spec:
        raise WsiSegError(
            "cannot resume: the checkpoint was trained with another architecture "
            f"({state.spec}); pass the same options as the first run",
            cfg.state_path,
        )
    _keep_csv_rows(cfg.csv_path, state.epoch)
    return state


def _compiled_model(spec: dict[str, Any], cfg: TrainConfig, state: TrainState) -> Any:
    """The model of ``spec``, compiled with the loss and the pooled epoch scores; on
    ``--resume`` with the checkpoint's weights and optimizer slots."""
    import keras

    model = build_model(spec["kind"], **spec["args"])
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=state.lr),
        loss=LOSS_FUNCTIONS[cfg.loss],
        metrics=score_metrics(),
        jit_compile=False,  # XLA is slower than oneDNN on CPUs
    )
    if cfg.resume:
        # The checkpoint holds the optimizer's slots too (Adam moments, step counter); they
        # load only into an optimizer that is already built. model.optimizer, not the Adam
        # above: under mixed precision Keras wraps it in a LossScaleOptimizer whose loss
        # scale is checkpointed too.
        model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(cfg.checkpoint_path)
        except (ValueError, OSError) as exc:
            raise WsiSegError(f"cannot resume: checkpoint does not load ({exc})",
                              cfg.checkpoint_path) from None
        model.optimizer.learning_rate.assign(state.lr)
    return model


def _result(cfg: TrainConfig, state: TrainState, done: int) -> TrainResult:
    """The run's result; ``done``: epochs completed before this call (a resumed run)."""
    if not cfg.out.is_file():
        raise WsiSegError(f"training produced no model (no epoch had a defined {cfg.monitor}: "
                          "NaN, or empty truth against empty prediction)", cfg.out)
    _, final_card = load_model(cfg.out)
    ran = state.history[done:]
    # The first epoch of a run includes tracing the graphs; report the steady state when
    # there is one.
    steady = ran[1:] or ran
    secs = float(np.mean([r["seconds"] for r in steady])) if steady else float("nan")
    return TrainResult(cfg.out, final_card, state.history, state.epoch, secs, state.stopped_early)


def logged_scores(logs: dict[str, Any]) -> dict[str, float | None]:
    """An epoch's Keras logs as Python numbers: a Dice or IoU under the empty-vs-empty rule
    (:func:`~wsi_seg.evaluation.metrics.defined_score`: None for an undefined one, which the
    metric gives as NaN), everything else a float."""
    return {k: defined_score(v) if k.removeprefix("val_") in SCORES else float(v)
            for k, v in logs.items()}


def _val_scores(scores: dict[str, float | None]) -> dict[str, float | None]:
    return {k[4:]: None if v is None else round(v, 4)
            for k, v in scores.items() if k.startswith("val_")}


class EpochBook:
    """The run's bookkeeping between epochs (see the module docstring for the order)."""

    def __init__(self, cfg: TrainConfig, state: TrainState, card: ModelCard,
                 describe: Describe) -> None:
        self.cfg, self.state, self.card, self.describe = cfg, state, card, describe
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()

    def callbacks(self, model: Any) -> list[Any]:
        """Keras callbacks for ``model.fit``: record and judge, write the CSV row, checkpoint."""
        import keras

        return [
            keras.callbacks.LambdaCallback(
                on_epoch_begin=lambda epoch, logs: self.start_epoch(),
                on_epoch_end=lambda epoch, logs: self.end_epoch(epoch, logs or {}, model),
            ),
            history_csv_logger_class()(self.cfg.csv_path, self.state.history,
                                       append=self.cfg.resume),
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: self.checkpoint(model)),
        ]

    def start_epoch(self) -> None:
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()

    def end_epoch(self, epoch: int, logs: dict[str, Any], model: Any) -> None:
        """Record epoch ``epoch`` (0-based, as Keras counts), keep the model if it is the best
        so far, else count patience."""
        cfg, st = self.cfg, self.state
        scores = logged_scores(logs)
        row: dict[str, float | None] = {"epoch": float(epoch + 1), **scores}
        row["lr"] = st.lr  # the rate this epoch trained with
        row["seconds"] = round(time.perf_counter() - self.t0, 2)
        # CPU seconds (all threads) tell the cost apart from waiting on a busy machine.
        row["cpu_seconds"] = round(time.process_time() - self.cpu0, 2)
        st.history.append(row)
        st.epoch = epoch + 1
        value = scores.get(cfg.monitor)
        if value is not None and _better(value, st.best, cfg.monitor, cfg.min_delta):
            st.best, st.best_epoch, st.wait, st.lr_wait = value, epoch + 1, 0, 0
            self._save_best(model, value, scores)
        else:  # an undefined (or NaN) score never improves
            self._lose_patience(model)

    def _save_best(self, model: Any, value: float, scores: dict[str, float | None]) -> None:
        st = self.state
        training = {**self.card.training, "best_epoch": st.epoch, "monitor": self.cfg.monitor,
                    "best": value}
        # Any: ModelCard types validation dict[str, float]; an undefined score is None there.
        validation: dict[str, Any] = self.describe(scores)
        card = dataclasses.replace(self.card, validation=validation, training=training)
        save_model(_export_copy(st.spec, model), card, self.cfg.out)

    def _lose_patience(self, model: Any) -> None:
        """One more epoch without improvement: cut the rate, or stop, when patience is out."""
        cfg, st = self.cfg, self.state
        st.wait += 1
        st.lr_wait += 1
        if cfg.lr_patience and st.lr_wait >= cfg.lr_patience and st.lr > cfg.min_lr:
            st.lr = max(st.lr * cfg.lr_factor, cfg.min_lr)
            model.optimizer.learning_rate.assign(st.lr)
            st.lr_wait = 0
        if cfg.early_stopping and st.wait >= cfg.early_stopping:
            st.stopped_early = True
            model.stop_training = True

    def checkpoint(self, model: Any) -> None:
        """Weights (+ optimizer slots) first, then the state that points at them; curves."""
        with atomic_path(self.cfg.checkpoint_path) as tmp:
            model.save_weights(tmp)
        self.state.write(self.cfg.state_path)
        draw_learning_curves(self.state.history, self.cfg.workdir / "learning_curves.png")


@functools.cache
def history_csv_logger_class() -> type:
    """``HistoryCsvLogger``: Keras' ``CSVLogger`` fed the run's history rows (defined on first
    use: Keras is imported only when training)."""
    import keras

    class HistoryCsvLogger(keras.callbacks.CSVLogger):
        """Writes the last row of ``history`` each epoch: epochs counted from 1 as in the
        state, the card and the curves, with ``lr``, ``seconds`` and ``cpu_seconds`` beside
        Keras' logs (an undefined Dice/IoU written ``n/a``). With ``append`` a resumed run adds
        its rows under the earlier ones."""

        def __init__(self, path: Path, history: list[dict[str, float | None]],
                     append: bool) -> None:
            super().__init__(str(path), append=append)
            self.history = history

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            row = {k: UNDEFINED_TEXT if v is None else v for k, v in self.history[-1].items()}
            super().on_epoch_end(int(row.pop("epoch")), row)

    return HistoryCsvLogger


def _keep_csv_rows(path: Path, epochs: int) -> None:
    """Drop rows after epoch ``epochs`` from a CSV a resumed run appends to: a run stopped
    between writing an epoch's row and its checkpoint repeats that epoch."""
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [r for r in rows[1:] if r and float(r[0]) <= epochs]
    if len(kept) < len(rows):
        buf = io.StringIO()
        csv.writer(buf).writerows(kept)  # Keras' dialect: csv.excel
        write_atomic(path, buf.getvalue())


def _better(value: float, best: float | None, monitor: str, min_delta: float) -> bool:
    """Whether ``value`` of ``monitor`` improves on ``best`` by more than ``min_delta`` (a NaN
    loss never does; an undefined score never gets here)."""
    if best is None or math.isnan(best):
        return not math.isnan(value)
    if monitor == "val_loss":
        return value < best - min_delta
    return value > best + min_delta


def _set_precision(mixed: bool) -> None:
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")


def _export_copy(spec: dict[str, Any], model: Any) -> Any:
    """A float32, uncompiled copy of ``model`` with its weights: what gets saved.

    Rebuilding from the builder arguments drops mixed-precision policies (slow on CPUs), the
    optimizer and the compile configuration (custom loss functions), so the saved file loads
    in safe mode anywhere.
    """
    import keras

    policy = keras.mixed_precision.global_policy().name
    try:
        _set_precision(False)
        copy = build_model(spec["kind"], **spec["args"])
    finally:
        keras.mixed_precision.set_global_policy(policy)
    copy.set_weights(model.get_weights())
    return copy


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
