"""Training the IDC-style patch classifier (:func:`train_patch`): a patient split, class
balancing, the shared loop, then per-patient evaluation of the held-out patients."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_seg.core.errors import WsiSegError
from wsi_seg.stages.card import ModelCard, load_model
from wsi_seg.stages.models import build_model
from wsi_seg.training.config import TrainConfig, TrainResult
from wsi_seg.training.fit_loop import fit, update_card
from wsi_seg.training.idc_data import (
    IdcPatch,
    PatientSplit,
    balance_indices,
    patch_dataset,
    scan_idc,
    split_patients,
)
from wsi_seg.training.patients import (
    PatientScore,
    evaluate_patients,
    summarise_patients,
    write_patient_csv,
)

SPLITS = ("train", "val", "test")


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
        normalisation: input normalisation (card).
        threshold: output threshold written to the card.
        overlays: write one overlay PNG per evaluated patient.
        trained_on: the card's ``trained_on`` text (empty: describes the data).
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

    def spec(self) -> dict[str, Any]:
        """Model kind and builder arguments; WsiSegError for an architecture that cannot be
        built."""
        args = dict(
            input_size_px=self.input_size_px, channels=self.channels, filters=list(self.filters),
            kernel_size=self.kernel_size, dense_units=self.dense_units, dropout=self.dropout,
        )
        try:
            build_model("patch", **args)
        except ValueError as exc:
            raise WsiSegError(f"bad patch-model options: {exc}") from None
        return {"kind": "patch", "args": args}


def train_patch(opts: PatchOptions, cfg: TrainConfig) -> tuple[TrainResult, list[PatientScore]]:
    """Train the IDC-style classifier with a patient split, then evaluate per patient.

    The held-out test patients are evaluated (the validation patients when there are none);
    per-patient scores go to ``patients.csv`` and the card's ``validation``.
    """
    cfg.check()
    split, by_split = _split(opts, cfg.seed)
    train = by_split["train"]
    labels = np.array([p.label for p in train])
    if len(set(labels.tolist())) < 2:
        raise WsiSegError(
            "the training patients hold only one class; change the split", opts.data_dir
        )
    idx = balance_indices(labels, opts.balance, cfg.seed)
    spec = opts.spec()
    steps = cfg.steps_per_epoch or max(1, math.ceil(len(idx) / cfg.batch_size))
    train_ds = patch_dataset(
        [train[i].path for i in idx], labels[idx], opts.input_size_px, opts.channels,
        opts.normalisation, cfg.batch_size, aug=cfg.augment, shuffle_seed=cfg.data_seed(),
        repeat=True,
    )
    val = by_split["val"]
    val_ds = patch_dataset(
        [p.path for p in val], [p.label for p in val], opts.input_size_px, opts.channels,
        opts.normalisation, cfg.batch_size,
    )
    card = _card(opts, cfg, spec, steps, split, by_split, len(idx))
    result = fit(spec, card, train_ds, steps, val_ds, cfg)
    return _evaluate_held_out(opts, cfg, result, split, by_split)


def _split(opts: PatchOptions, seed: int
           ) -> tuple[PatientSplit, dict[str, list[IdcPatch]]]:
    """The patient split and the patches of each part (``train``, ``val``, ``test``)."""
    patches = scan_idc(opts.data_dir)
    split = split_patients(
        [p.patient for p in patches], opts.val_fraction, opts.test_fraction, seed,
        opts.val_patients, opts.test_patients,
    )
    by_split = {name: [p for p in patches if p.patient in set(getattr(split, name))]
                for name in SPLITS}
    return split, by_split


def _card(opts: PatchOptions, cfg: TrainConfig, spec: dict[str, Any], steps: int,
          split: PatientSplit, by_split: dict[str, list[IdcPatch]], balanced: int
          ) -> ModelCard:
    """The card template :func:`~wsi_seg.training.fit_loop.fit` fills with scores."""
    counts = {name: {"patients": len(getattr(split, name)), "patches": len(ps),
                     "tumour_patches": sum(p.label for p in ps)} for name, ps in by_split.items()}
    trained_on = opts.trained_on or (
        f"IDC-layout patches from {opts.data_dir} at {opts.mpp:g} µm/px: "
        f"{counts['train']['patches']} patches of {counts['train']['patients']} patients"
    )
    return ModelCard(
        kind="patch", input_size_px=opts.input_size_px, channels=opts.channels, mpp=opts.mpp,
        normalisation=opts.normalisation, threshold=opts.threshold, trained_on=trained_on,
        architecture={"builder": "build_patch_cnn", **spec["args"]},
        training=cfg.card_training(steps, extra={
            "balance": opts.balance, "balanced_train_patches": balanced,
            "split": {k: list(getattr(split, k)) for k in SPLITS},
            "counts": counts,
        }),
        name=cfg.out.stem,
    )


def _evaluate_held_out(opts: PatchOptions, cfg: TrainConfig, result: TrainResult,
                       split: PatientSplit, by_split: dict[str, list[IdcPatch]]
                       ) -> tuple[TrainResult, list[PatientScore]]:
    """Score the saved model per test patient (validation patients when there are none):
    ``patients.csv``, overlays, and the card's ``validation``."""
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
        f"({', '.join(getattr(split, eval_name))}); IoU of tumour-patch footprints, undefined "
        "(null; left out of the mean, counted in empty_both) when a patient has neither true "
        "nor predicted tumour patches; val_* pool all patches of the validation patients "
        "(val_loss: their batch mean), used for model selection",
    })
    return dataclasses.replace(result, card=card), scores
