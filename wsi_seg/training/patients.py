"""Per-patient evaluation of a patch classifier: each held-out patient's patches are put
back at their ``(x, y)``, predicted, and scored by patch accuracy and by the IoU of the
tumour-patch footprints; ``patients.csv`` and one overlay PNG per patient record it."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wsi_seg.core.files import write_atomic
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
    iou: float  # NaN when neither truth nor prediction has a tumour patch


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
    """One row per patient, then the means (:func:`summarise_patients`)."""
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
