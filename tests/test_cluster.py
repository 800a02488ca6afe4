"""Where tasks run: worker sizing, one card per GPU worker, many blocks per card, worker state.

Real dask.distributed clusters of worker processes on localhost. No GPU here: the pinning is
checked through each worker's ``CUDA_VISIBLE_DEVICES`` (what CUDA reads at start-up), and the
model through the simulated accelerator (:class:`wsi_seg.stages.backends.SimulatedEngine`), which
loads only the model's card, so a worker warms in milliseconds.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.model_fixtures import small_unet
from wsi_seg.orchestration.cluster import (
    BLOCK_GPU_SHARE,
    ClusterConfig,
    ModelPlugin,
    WorkerPlan,
    plan_local_workers,
    start_local_cluster,
    visible_gpus,
)
from wsi_seg.orchestration.pipeline import OPEN_SLIDES, slide_handles
from wsi_seg.stages.infer import InferConfig
from wsi_seg.tools.synth import write_synthetic_slide


def test_worker_sizing() -> None:
    cfg = ClusterConfig()
    assert plan_local_workers(cfg, cpus=2, gpus=0) == WorkerPlan(1, 2, 2, 0)
    assert plan_local_workers(cfg, cpus=16, gpus=0) == WorkerPlan(8, 2, 2, 0)
    # A GPU worker runs one block thread more than it has cores per card (at least 3).
    assert plan_local_workers(cfg, cpus=16, gpus=1) == WorkerPlan(1, 17, 16, 1)
    assert plan_local_workers(cfg, cpus=16, gpus=2) == WorkerPlan(2, 9, 8, 2)
    assert plan_local_workers(cfg, cpus=2, gpus=2) == WorkerPlan(2, 3, 1, 2)
    assert plan_local_workers(ClusterConfig(threads_per_worker=3), cpus=16, gpus=2
                              ).threads_per_worker == 3


def test_cards_come_from_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus(2) == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5")
    assert visible_gpus(2) == ["3", "5"]


@pytest.fixture
def gpu_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Two 'GPU' workers as a two-card workstation gets them (the cards do not exist)."""
    from distributed import Client

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cluster = start_local_cluster(ClusterConfig(dashboard=False), WorkerPlan(2, 4, 1, 2))
    client = Client(cluster)
    try:
        client.wait_for_workers(2, timeout=60)
        yield client
    finally:
        client.close()
        cluster.close()


def _env() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


_barrier: threading.Barrier | None = None
_barrier_lock = threading.Lock()


def _meet(n: int) -> str:
    """Return only once ``n`` tasks are inside this function at once in this process."""
    global _barrier
    from distributed import get_worker

    with _barrier_lock:
        if _barrier is None:
            _barrier = threading.Barrier(n)
    _barrier.wait(timeout=30)
    return str(get_worker().address)


def test_each_gpu_worker_gets_its_own_card_and_runs_many_blocks(gpu_cluster: object) -> None:
    client: object = gpu_cluster
    envs = client.run(_env)  # type: ignore[attr-defined]
    assert sorted(envs.values()) == ["0", "1"]  # not both on card 0
    info = client.scheduler_info()["workers"]  # type: ignore[attr-defined]
    assert all(w["resources"] == {"GPU": 1} for w in info.values())
    # Four block-sized shares of one card run at the same time on one worker: a block does
    # not take the whole card (the barrier would time out if they ran one after another).
    addr = next(iter(info))
    futs = [client.submit(_meet, 4, pure=False, workers=[addr],  # type: ignore[attr-defined]
                          resources={"GPU": BLOCK_GPU_SHARE}) for _ in range(4)]
    assert {f.result(timeout=60) for f in futs} == {addr}


def _predictor_devices() -> list[str]:
    from wsi_seg.stages.infer import cached_predictors

    return [p.device for p in cached_predictors()]


def test_the_model_plugin_warms_workers_that_join_later(tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    model = small_unet(tmp_path / "u.keras")
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address="127.0.0.1:0")
    client = Client(cluster)
    try:
        client.register_plugin(ModelPlugin(model, InferConfig(simulate_batch_s=0.01)))
        cluster.scale(2)
        client.wait_for_workers(2, timeout=60)
        deadline = time.time() + 60
        while True:  # the plugin loads in the background: poll, never sleep blindly
            warmed = client.run(_predictor_devices)
            if all(v == ["simulated:0"] for v in warmed.values()) and len(warmed) == 2:
                break
            assert time.time() < deadline, warmed
            time.sleep(0.2)
    finally:
        client.close()
        cluster.close()


def test_a_slide_in_use_is_never_closed_by_the_handle_cache(tmp_path: Path) -> None:
    paths = [tmp_path / f"s{i}.tif" for i in range(OPEN_SLIDES + 3)]
    for i, p in enumerate(paths):
        write_synthetic_slide(p, (256, 256), seed=i)
    with slide_handles.hold(paths[0], None) as first:
        for p in paths[1:]:  # more slides than the cache keeps, opened while one is read
            with slide_handles.hold(p, None) as s:
                assert s.read_w(0, 0, 8, 8, s.mpp).shape == (8, 8, 3)
        assert slide_handles.is_open(paths[0], None)
        assert first.read_w(0, 0, 16, 16, first.mpp).shape == (16, 16, 3)  # still readable
    # Once idle, the oldest handles go: the first is the least recently used.
    with slide_handles.hold(paths[1], None):
        pass
    assert not slide_handles.is_open(paths[0], None)
    assert np.count_nonzero([slide_handles.is_open(p, None) for p in paths]) <= OPEN_SLIDES
