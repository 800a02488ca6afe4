"""Training both model kinds on users' data, and evaluating them.

* :mod:`~wsi_seg.training.extract`: image/mask tiles and IDC patches cut from slides;
* :mod:`~wsi_seg.training.images`, :mod:`~wsi_seg.training.augment`,
  :mod:`~wsi_seg.training.unet_data`, :mod:`~wsi_seg.training.idc_data`: the two dataset
  layouts (image/mask folders; IDC patch folders) as Keras inputs;
* :mod:`~wsi_seg.training.losses`, :mod:`~wsi_seg.training.epoch_scores`: what is optimised
  and what is scored per epoch (pooled over the epoch's pixels);
* :mod:`~wsi_seg.training.config`: the run's configuration, resumable state and result;
* :mod:`~wsi_seg.training.fit_loop`: the loop, checkpoints, ``--resume``, the CSV (and the
  list of files a run writes); :mod:`~wsi_seg.training.curves`: the learning-curve PNG;
* :mod:`~wsi_seg.training.unet_task`, :mod:`~wsi_seg.training.patch_task`: the two model
  kinds; :mod:`~wsi_seg.training.patients`: per-patient evaluation of a patch model;
* :mod:`~wsi_seg.training.image_evaluation`: ``wsi-seg evaluate`` on image/mask folders;
  :mod:`~wsi_seg.training.tile_prediction`: model outputs for many tiles.
"""
