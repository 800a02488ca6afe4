"""Model outputs for many tiles at once, through the compiled forward pass ``run`` uses.

The engine (:func:`wsi_seg.stages.backends.make_engine`) takes uint8 RGB tiles, preprocesses
them on the device and keeps one value per output; it is compiled for one batch shape, so
the last batch is padded and every call reuses the one trace, on any Keras backend.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wsi_seg.stages.backends import Engine, make_engine
from wsi_seg.stages.card import ModelCard


def tile_engine(model: Any, card: ModelCard, batch_size: int = 16) -> Engine:
    """The compiled forward pass of ``model`` for batches of ``batch_size`` tiles."""
    return make_engine(model, card, batch_size)


def predict_with(engine: Engine, card: ModelCard, rgb: np.ndarray, batch_size: int
                 ) -> np.ndarray:
    """Probabilities for RGB uint8 tiles ``(n, s, s, 3)`` through ``engine`` (compiled for
    ``batch_size``): ``(n, s, s)`` float32 for a UNet, ``(n,)`` for a patch model."""
    s = card.window_px
    outs = []
    for i in range(0, len(rgb), batch_size):
        x = np.ascontiguousarray(rgb[i : i + batch_size], np.uint8)
        k = len(x)
        if k < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - k, *x.shape[1:]), np.uint8)])
        outs.append(engine.fetch(engine.launch(x))[:k])
    if not outs:
        return np.zeros((0, s, s) if card.kind == "unet" else (0,), np.float32)
    return np.concatenate(outs).astype(np.float32)


def predict_tiles(model: Any, card: ModelCard, rgb: np.ndarray, batch_size: int = 16
                  ) -> np.ndarray:
    """Probabilities for RGB uint8 tiles ``(n, s, s, 3)``: ``(n, s, s)`` float32 for a UNet,
    ``(n,)`` for a patch model (one compile per call; :func:`predict_with` reuses one)."""
    return predict_with(tile_engine(model, card, batch_size), card, rgb, batch_size)
