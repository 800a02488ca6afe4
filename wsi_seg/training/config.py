"""What a training run is told (:class:`TrainConfig`), what it carries from epoch to epoch
(:class:`TrainState`, the ``--resume`` file) and what it hands back (:class:`TrainResult`)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsi_seg.core.errors import WsiSegError
from wsi_seg.core.files import decode_json, write_atomic
from wsi_seg.stages.card import ModelCard
from wsi_seg.training.augment import Augment
from wsi_seg.training.epoch_scores import SCORES
from wsi_seg.training.losses import LOSSES

#: Validation values ``--monitor`` may select the best epoch by (only the loss is minimised).
MONITORS = ("val_loss", *(f"val_{s}" for s in SCORES))


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
        seed: seeds NumPy, the backend and Python's random for a reproducible run.
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
        """WsiSegError for a value no run can use."""
        if self.out.suffix != ".keras":
            raise WsiSegError("the output model must end in .keras", self.out)
        if self.loss not in LOSSES:
            raise WsiSegError(f"unknown loss {self.loss!r}; use one of {', '.join(LOSSES)}")
        if self.monitor not in MONITORS:
            raise WsiSegError(f"cannot monitor {self.monitor!r}; use val_loss or val_dice")
        if self.epochs < 1 or self.batch_size < 1:
            raise WsiSegError("epochs and batch size must be at least 1")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise WsiSegError("steps per epoch must be at least 1")
        if not 0 < self.lr_factor < 1:
            raise WsiSegError("the learning-rate factor must lie in (0, 1)")

    @property
    def workdir(self) -> Path:
        """``DIR/MODEL.training`` beside ``DIR/MODEL.keras``: checkpoint, state, CSV, curves."""
        return self.out.with_name(self.out.stem + ".training")

    @property
    def state_path(self) -> Path:
        return self.workdir / "state.json"

    @property
    def checkpoint_path(self) -> Path:
        return self.workdir / "checkpoint.weights.h5"

    @property
    def csv_path(self) -> Path:
        return self.workdir / "train_metrics.csv"

    def data_seed(self) -> int:
        """Seed for the input pipeline: a resumed run continues with fresh crops and orders
        instead of replaying the first epochs' batches."""
        if self.resume:
            with contextlib.suppress(WsiSegError):
                return self.seed + TrainState.read(self.state_path).epoch
        return self.seed

    def card_training(self, steps: int, extra: dict[str, Any]) -> dict[str, Any]:
        """The card's ``training`` entry: these settings, ``steps`` per epoch and ``extra``."""
        return {
            "loss": self.loss, "optimizer": "adam", "learning_rate": self.learning_rate,
            "batch_size": self.batch_size, "steps_per_epoch": steps, "max_epochs": self.epochs,
            "augment": dataclasses.asdict(self.augment), "mixed_precision": self.mixed_precision,
            "seed": self.seed, **extra,
        }


@dataclass
class TrainState:
    """Everything :func:`wsi_seg.training.fit_loop.fit` needs to continue a run (JSON round
    trip through ``state.json``)."""

    epoch: int = 0  # epochs completed
    best: float | None = None
    best_epoch: int = 0
    wait: int = 0  # epochs without improvement (early stopping)
    lr_wait: int = 0  # epochs without improvement since the last LR change
    lr: float = 1e-3
    stopped_early: bool = False
    # None: an undefined Dice/IoU (empty vs empty), null in state.json
    history: list[dict[str, float | None]] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)  # model kind + builder arguments

    @classmethod
    def read(cls, path: Path) -> TrainState:
        """The state written by :meth:`write`; WsiSegError if it cannot be read back."""
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
    history: list[dict[str, float | None]]
    epochs_run: int
    seconds_per_epoch: float
    stopped_early: bool
