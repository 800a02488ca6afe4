"""Training data, one import away: the names of :mod:`~wsi_seg.training.images` (readers),
:mod:`~wsi_seg.training.augment`, :mod:`~wsi_seg.training.unet_data` (image/mask folders)
and :mod:`~wsi_seg.training.idc_data` (IDC patch folders), for code that imported them from
here before the package was split. New code imports from those modules."""

from __future__ import annotations

from wsi_seg.training.augment import Augment, augment_tf
from wsi_seg.training.idc_data import (
    BALANCE_MODES,
    IDC_NAME,
    IdcPatch,
    PatientSplit,
    balance_indices,
    load_patch_tf,
    pad_bottom_right,
    patch_dataset,
    read_patch,
    scan_idc,
    split_patients,
)
from wsi_seg.training.images import IMAGE_SUFFIXES, image_files, read_mask, read_rgb
from wsi_seg.training.unet_data import (
    Pair,
    find_pairs,
    fixed_dataset,
    fixed_tiles,
    grid_tiles,
    load_pairs,
    pad_to,
    random_crops,
    resize_pair,
    unet_train_dataset,
)

__all__ = [
    "BALANCE_MODES", "IDC_NAME", "IMAGE_SUFFIXES", "Augment", "IdcPatch", "Pair",
    "PatientSplit", "augment_tf", "balance_indices", "find_pairs", "fixed_dataset",
    "fixed_tiles", "grid_tiles", "image_files", "load_pairs", "load_patch_tf", "pad_bottom_right",
    "pad_to", "patch_dataset", "random_crops", "read_mask", "read_patch", "read_rgb",
    "resize_pair", "scan_idc", "split_patients", "unet_train_dataset",
]
