"""Workers load the model and compile its forward pass before the first block arrives.

The client asks every worker (:func:`warm_workers`) while it still finds tissue and plans
slides, so the framework's import, the model load and the compile overlap with that work;
workers that join later warm through :class:`wsi_seg.orchestration.cluster.ModelPlugin`.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi_seg.orchestration.cluster import ModelPlugin
from wsi_seg.stages.infer import InferConfig, cached_predictor, warm_predictor


@dataclass(frozen=True)
class WarmResult:
    """A worker's start-up: where its model runs and how long loading and compiling took
    (seconds)."""

    device: str
    backend: str
    load_s: float
    pid: int
    precision: str = "float32"  # what the model computes in there


def warm_worker(model_path: Path, infer: InferConfig) -> WarmResult:
    """Load the model and compile its forward pass on a worker ahead of the first block.

    Run while the client is still finding tissue and planning, so the framework's import, the
    model load and the compile overlap with that work instead of delaying the first block
    (a worker that already warmed, e.g. through
    :class:`wsi_seg.orchestration.cluster.ModelPlugin`, answers at once).
    """
    from wsi_seg.stages.backends import keras_backend

    load_s = warm_predictor(model_path, infer)
    predictor = cached_predictor(model_path, infer)
    return WarmResult(predictor.device, keras_backend(), load_s, os.getpid(),
                      predictor.precision)


def warm_workers(client: Any, model: Path, infer: InferConfig) -> Future[dict[str, Any]]:
    """Load the model on every worker, now and on workers that join later (the plugin), and
    ask each current worker, in the background, for its start-up report.

    Asked with ``client.run`` (no task, no worker restriction): a worker that dies while
    loading answers with an error instead of leaving a task that no worker can run.
    """
    client.register_plugin(ModelPlugin(model, infer))
    pool = ThreadPoolExecutor(1, thread_name_prefix="wsi-seg-warm-up")
    future = pool.submit(client.run, warm_worker_async, model, infer, on_error="return")
    pool.shutdown(wait=False)
    return future


async def warm_worker_async(model_path: Path, infer: InferConfig) -> Any:
    """:func:`warm_worker` off the worker's event loop (which must keep answering)."""
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, warm_worker, model_path,
                                                            infer)
