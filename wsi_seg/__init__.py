"""wsi-seg: tumour segmentation of gigapixel whole-slide images.

Stages, one module each, data flowing one way:
``slide`` -> ``tissue`` -> ``tiling`` -> ``infer`` + ``blend`` -> ``mosaic`` -> ``vectorize``
-> ``geojson`` -> ``metrics``; ``pipeline`` and ``cluster`` orchestrate them and ``cli`` is a
thin shell over the library.

The public Python API is the names in :data:`__all__`, importable from here; they load on
first use, so ``import wsi_seg`` stays cheap (no TensorFlow, no Dask)::

    import wsi_seg

    config = wsi_seg.RunConfig(out_dir="results", threshold=0.6)
    result = wsi_seg.run_slides("slides/", config)
    for s in result.slides:
        print(s.name, s.status, s.report.tumour_mm2 if s.report else s.error)

Every configuration type checks its own values: ``wsi_seg.RunConfig(out_dir="o",
block_px=1000)`` raises :class:`ConfigError` (a :class:`WsiSegError`) in one line naming
``block_px`` and ``chunk_px``; the command line gives the same refusal in its flags' words.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_PUBLIC: dict[str, str] = {
    "run_slides": "wsi_seg.orchestration.runner",
    "RunResult": "wsi_seg.orchestration.runner",
    "SlideResult": "wsi_seg.orchestration.runner",
    "RunConfig": "wsi_seg.orchestration.job",
    "InferConfig": "wsi_seg.stages.infer",
    "TissueConfig": "wsi_seg.stages.tissue",
    "ClusterConfig": "wsi_seg.orchestration.cluster",
    "StorageOptions": "wsi_seg.core.storage",
    "use_storage": "wsi_seg.stages.object_store",
    "SlideReport": "wsi_seg.orchestration.report",
    "open_slide": "wsi_seg.stages.slide",
    "find_slides": "wsi_seg.stages.slide",
    "Slide": "wsi_seg.stages.slide",
    "score_files": "wsi_seg.evaluation.score",
    "FileScore": "wsi_seg.evaluation.score",
    "OverlapScore": "wsi_seg.evaluation.metrics",
    "read_card": "wsi_seg.stages.card",
    "ModelCard": "wsi_seg.stages.card",
    "WsiSegError": "wsi_seg.core.errors",
    "ConfigError": "wsi_seg.core.params",
}

__all__ = [
    "ClusterConfig",
    "ConfigError",
    "FileScore",
    "InferConfig",
    "ModelCard",
    "OverlapScore",
    "RunConfig",
    "RunResult",
    "Slide",
    "SlideReport",
    "SlideResult",
    "StorageOptions",
    "TissueConfig",
    "WsiSegError",
    "__version__",
    "find_slides",
    "open_slide",
    "read_card",
    "run_slides",
    "score_files",
    "use_storage",
]

if TYPE_CHECKING:
    from wsi_seg.core.errors import WsiSegError
    from wsi_seg.core.params import ConfigError
    from wsi_seg.core.storage import StorageOptions
    from wsi_seg.evaluation.metrics import OverlapScore
    from wsi_seg.evaluation.score import FileScore, score_files
    from wsi_seg.orchestration.cluster import ClusterConfig
    from wsi_seg.orchestration.job import RunConfig
    from wsi_seg.orchestration.report import SlideReport
    from wsi_seg.orchestration.runner import RunResult, SlideResult, run_slides
    from wsi_seg.stages.card import ModelCard, read_card
    from wsi_seg.stages.infer import InferConfig
    from wsi_seg.stages.object_store import use_storage
    from wsi_seg.stages.slide import Slide, find_slides, open_slide
    from wsi_seg.stages.tissue import TissueConfig


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'wsi_seg' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
