"""Per-patient evaluation of a patch classifier: each held-out patient's patches are put
back at their ``(x, y)``, predicted, and scored by patch accuracy and by the IoU of the
tumour-patch footprints; ``patients.csv`` and one overlay PNG per patient record it. A patient
with neither true nor predicted tumour patches has no IoU (the empty-vs-empty rule of
:mod:`wsi_seg.evaluation.metrics`: None, ``n/a`` in the CSV, left out of the mean, counted in
``empty_both``)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import cv2
import numpy as np

from wsi_seg.core.files import write_atomic
from wsi_seg.core.scores import format_score, mean_score
from wsi_seg.stages.card import ModelCard
from wsi_seg.stages.slide import BACKGROUND_RGB
from wsi_seg.training.idc_data import IdcPatch, read_patch
from wsi_seg.training.image_evaluation import overlap_scores
from wsi_seg.training.tile_prediction import predict_with, tile_engine

PATCH_BATCH = 64  # patches per model call


@dataclass(frozen=True)
class PatientScore:
    """Per-patient evaluation: patch accuracy and IoU of the tumour patch footprints."""

    patient: str
    patches: int
    tumour_patches: int
    predicted_patches: int
    accuracy: float
    iou: float | None  # None (undefined) when neither truth nor prediction has a tumour patch


def evaluate_patients(
    model: Any, card: ModelCard, patches: Sequence[IdcPatch], workdir: Path | None
) -> list[PatientScore]:
    """Per patient (sorted by id): predict every patch at the card's threshold, score patch
    accuracy and tumour IoU, and (with ``workdir``) write ``workdir/overlays/<patient>.png``."""
    by_patient: dict[str, list[IdcPatch]] = {}
    for p in patches:
        by_patient.setdefault(p.patient, []).append(p)
    engine = tile_engine(model, card, PATCH_BATCH)
    s = card.window_px
    scores = []
    for patient, ps in sorted(by_patient.items()):
        rgb = np.stack([read_patch(p.path, s) for p in ps])
        prob = predict_with(engine, card, rgb, PATCH_BATCH)
        pred = (prob >= card.threshold).astype(np.uint8)
        truth = np.array([p.label for p in ps], np.uint8)
        _, iou, accuracy = overlap_scores(pred, truth)
        scores.append(PatientScore(
            patient, len(ps), int(truth.sum()), int(pred.sum()), accuracy, iou))
        if workdir is not None:
            image, truth_mask, pred_mask = rebuild_patient(ps, rgb, pred, s)
            out = workdir / "overlays"
            out.mkdir(parents=True, exist_ok=True)
            write_overlay(image, pred_mask, truth_mask, out / f"{patient}.png")
    return scores


def rebuild_patient(
    patches: Sequence[IdcPatch], rgb: np.ndarray, pred: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste ``size`` px patches at their ``(x, y)`` (px) into one glass-white image, with
    0/1 truth and prediction masks of the same shape."""
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
    """Overlay on the RGB image: prediction only red, truth only blue, both purple; shrunk
    to at most ``max_side`` px."""
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


class PatientSummary(TypedDict):
    """:func:`summarise_patients`: counts, and means that are None with nothing to average."""

    patients: float
    mean_accuracy: float | None
    mean_iou: float | None
    empty_both: float  # patients without an IoU (empty vs empty), left out of mean_iou


def summarise_patients(scores: Sequence[PatientScore]) -> PatientSummary:
    """Means over patients (4 decimals; None with nothing to average); the IoU mean leaves
    out the empty-vs-empty patients, counted in ``empty_both``."""
    accuracy = mean_score(s.accuracy for s in scores).mean
    iou = mean_score(s.iou for s in scores)
    return {
        "patients": float(len(scores)),
        "mean_accuracy": None if accuracy is None else round(accuracy, 4),
        "mean_iou": None if iou.mean is None else round(iou.mean, 4),
        "empty_both": float(iou.n_undefined),
    }


def write_patient_csv(scores: Sequence[PatientScore], path: Path) -> None:
    """One row per patient, then the means (:func:`summarise_patients`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["patient", "patches", "tumour_patches", "predicted_patches", "accuracy", "iou"])
    for s in scores:
        w.writerow([s.patient, s.patches, s.tumour_patches, s.predicted_patches,
                    f"{s.accuracy:.4f}", format_score(s.iou)])
    summary = summarise_patients(scores)
    w.writerow(["mean", sum(s.patches for s in scores), "", "",
                format_score(summary["mean_accuracy"]), format_score(summary["mean_iou"])])
    write_atomic(path, buf.getvalue())
