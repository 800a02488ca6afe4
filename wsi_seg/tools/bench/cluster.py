"""The benchmark's local Dask clusters, sized as ``wsi-seg run`` sizes them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsi_seg.tools.bench import worker


@dataclass
class Bench:
    """A live local cluster and the facts the measurements share."""

    client: Any
    cluster: Any
    workers: int
    threads_per_worker: int
    tf_threads: int
    gpus: int
    devices: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return str(self.cluster.scheduler_address)

    def worker_addresses(self) -> list[str]:
        return list(self.client.scheduler_info().get("workers", {}))

    def infer(self, batch_size: int, mixed_precision: bool = False) -> Any:
        """An InferConfig of this cluster's framework threads."""
        from wsi_seg.stages.infer import InferConfig

        return InferConfig(batch_size=batch_size, mixed_precision=mixed_precision,
                           threads=self.tf_threads)

    def on_each_worker(self, fn: Any, *args: Any) -> list[Any]:
        """``fn(*args)`` as one task pinned to each worker; their results."""
        futs = [self.client.submit(fn, *args, pure=False, workers=[a],
                                   allow_other_workers=False)
                for a in self.worker_addresses()]
        return [f.result() for f in futs]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        with contextlib.suppress(Exception):
            self.cluster.close()


def _plan(workers: int | None, threads_per_worker: int | None) -> Any:
    from wsi_seg.orchestration.cluster import ClusterConfig, plan_local_workers

    return plan_local_workers(ClusterConfig(workers=workers,
                                            threads_per_worker=threads_per_worker))


def _connect(cluster: Any, plan: Any) -> Bench:
    from distributed import Client

    client = Client(cluster)
    client.wait_for_workers(plan.workers)
    return Bench(client, cluster, plan.workers, plan.threads_per_worker, plan.tf_threads,
                 plan.gpus)


@contextlib.contextmanager
def cluster_session(workers: int | None = None, threads_per_worker: int | None = None
                    ) -> Iterator[Bench]:
    """:func:`start_device_cluster`, closed on leaving (the standard profile's cluster)."""
    bench = start_device_cluster(workers, threads_per_worker)
    try:
        yield bench
    finally:
        bench.close()


def start_device_cluster(workers: int | None, threads_per_worker: int | None) -> Bench:
    """A local cluster exactly as :func:`wsi_seg.orchestration.cluster.connect` starts one for
    ``wsi-seg run`` (:func:`~wsi_seg.orchestration.cluster.start_local_cluster`: worker
    processes on localhost, GPU workers pinned to their card, the same allocator settings):
    every profile's cluster."""
    from wsi_seg.orchestration.cluster import ClusterConfig, start_local_cluster

    plan = _plan(workers, threads_per_worker)
    config = ClusterConfig(workers=workers, threads_per_worker=threads_per_worker,
                           dashboard=False)
    return _connect(start_local_cluster(config, plan), plan)


def warm(bench: Bench, model_path: Path, infer: Any) -> list[dict[str, Any]]:
    """Load and trace the model on every worker; what each reports (its ``device`` among it).
    The devices are added to ``bench.devices``."""
    got = bench.on_each_worker(worker.warm, str(model_path), infer)
    bench.devices = sorted({w["device"] for w in got} | set(bench.devices))
    return got
