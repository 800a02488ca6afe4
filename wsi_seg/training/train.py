"""Training, one import away: the public names of the training modules, for code that
imported them from here before the package was split. New code imports from the module that
defines the name:

* :mod:`~wsi_seg.training.losses`, :mod:`~wsi_seg.training.epoch_scores`: what is optimised
  and what is scored per epoch;
* :mod:`~wsi_seg.training.config`: the run's configuration, resumable state and result;
* :mod:`~wsi_seg.training.fit_loop`: the loop, checkpoints, ``--resume``, the CSV (and the
  list of files a run writes); :mod:`~wsi_seg.training.curves`: the learning-curve PNG;
* :mod:`~wsi_seg.training.unet_task`, :mod:`~wsi_seg.training.patch_task`: the two model
  kinds; :mod:`~wsi_seg.training.patients`: per-patient evaluation of a patch model;
* :mod:`~wsi_seg.training.image_evaluation`: ``wsi-seg evaluate`` on image/mask folders;
  :mod:`~wsi_seg.training.tile_prediction`: model outputs for many tiles.
"""

from __future__ import annotations

from wsi_seg.training.config import MONITORS, TrainConfig, TrainResult, TrainState
from wsi_seg.training.curves import draw_learning_curves
from wsi_seg.training.epoch_scores import SCORES, score_metrics
from wsi_seg.training.fit_loop import fit, update_card
from wsi_seg.training.image_evaluation import (
    ImageScore,
    WindowOptions,
    evaluate_folder,
    overlap_scores,
    predict_image,
    summarise_images,
)
from wsi_seg.training.losses import LOSS_FUNCTIONS, LOSSES, bce, bce_dice, dice_loss, focal
from wsi_seg.training.patch_task import PatchOptions, train_patch
from wsi_seg.training.patients import (
    PatientScore,
    evaluate_patients,
    rebuild_patient,
    summarise_patients,
    write_overlay,
    write_patient_csv,
)
from wsi_seg.training.tile_prediction import predict_tiles
from wsi_seg.training.unet_task import UnetOptions, train_unet

__all__ = [
    "LOSSES", "LOSS_FUNCTIONS", "MONITORS", "SCORES", "ImageScore", "PatchOptions",
    "PatientScore", "TrainConfig", "TrainResult", "TrainState", "UnetOptions", "WindowOptions",
    "bce", "bce_dice", "dice_loss", "draw_learning_curves", "evaluate_folder",
    "evaluate_patients", "fit", "focal", "overlap_scores", "predict_image", "predict_tiles",
    "rebuild_patient", "score_metrics", "summarise_images", "summarise_patients", "train_patch",
    "train_unet", "update_card", "write_overlay", "write_patient_csv",
]
