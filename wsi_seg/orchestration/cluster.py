"""Where the block tasks run: a local Dask cluster by default, or an existing one by address.

* ``scheduler=None``: a local cluster of worker **processes** on this machine, listening on
  localhost only. On a GPU workstation there is one worker per GPU, pinned to its card by
  ``CUDA_VISIBLE_DEVICES`` (dask-cuda's convention: the worker sees its card as device 0),
  declaring the worker resource ``GPU=1`` and running one task thread more than the
  machine has cores per card: many blocks are read, cut and blended at once while the
  worker's one predictor (:class:`wsi_seg.stages.infer.Predictor`) batches their windows on the
  card.
  On a CPU machine the cores are shared between workers and TensorFlow's thread pools are sized
  to match.
* ``scheduler="tcp://host:port"``: an existing dask.distributed cluster (``dask scheduler`` +
  ``dask worker``, dask-jobqueue, Kubernetes). Workers must see the same paths (slides, model,
  output folder). Start one worker process per GPU, each with its own card, e.g.
  ``CUDA_VISIBLE_DEVICES=1 dask worker ADDR --nthreads 16 --resources GPU=1``, and pass
  ``--gpu-resource`` so block tasks go only to GPU workers. A block asks for
  :data:`BLOCK_GPU_SHARE` of a card, so a card's worker runs many blocks at once.

Every worker loads the model when it starts, through :class:`ModelPlugin`, so workers that join
later are warmed too, and the model never travels with a task.
* ``scheduler="threads"``: workers as threads in this process (no start-up cost; for small
  jobs, debugging and tests).
* ``kind="slurm"``: workers as SLURM jobs through dask-jobqueue
  (:mod:`wsi_seg.orchestration.slurm`), the scheduler in this process.
* ``scheduler_file``: the JSON a scheduler writes with ``--scheduler-file`` (how SLURM and MPI
  launchers publish one); ``$DASK_SCHEDULER_ADDRESS`` when neither is given.

An existing or SLURM cluster is asked, before any block, for at least one worker within
``worker_timeout_s`` and for the same dask, distributed and wsi-seg versions everywhere
(:func:`check_versions`); either failing is one line.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from wsi_seg.core.errors import WsiSegError
from wsi_seg.core.params import (
    ConfigError,
    Limits,
    Rule,
    check_params,
    coerce_paths,
    coerce_tuples,
    param,
)

log = logging.getLogger(__name__)


def scheduler_problem(value: str) -> str | None:
    """What is wrong with a scheduler address, or None (``threads``, or ``tcp://HOST:PORT``)."""
    if not value.strip() or any(c.isspace() for c in value):
        return "must be 'threads' or a scheduler address such as tcp://HOST:8786"
    return None


#: Where workers come from: this machine (or an existing scheduler), or SLURM jobs.
CLUSTER_KINDS = ("local", "slurm")


def _word_problem(value: str) -> str | None:
    if not value.strip() or any(c.isspace() for c in value):
        return "must be one word (no spaces)"
    return None


def _walltime_problem(value: str) -> str | None:
    from wsi_seg.orchestration.slurm import walltime_problem

    return walltime_problem(value)


def _memory_problem(value: str) -> str | None:
    from wsi_seg.orchestration.slurm import memory_problem

    return memory_problem(value)


@dataclass(frozen=True)
class ClusterConfig:
    """How to get workers.

    Attributes:
        scheduler: None (local processes), ``threads`` or a scheduler address.
        workers: local worker processes (default: one per GPU, else one per two cores).
        threads_per_worker: task threads per worker (2 lets reading overlap prediction).
        gpu_resource: require the ``GPU`` worker resource for block tasks (default: when the
            local machine has GPUs; for a remote cluster, pass it explicitly).
        dashboard: serve the Dask dashboard (localhost only) for local clusters.
        kind, scheduler_file, worker_timeout_s, slurm_*: see each field's comment; the
            options' help (:mod:`wsi_seg.orchestration.options`) says the same with units.
    """

    scheduler: str | None = param(None, Rule("str", check=scheduler_problem))
    workers: int | None = param(None, Rule("int", Limits(1, 1024)))
    threads_per_worker: int | None = param(None, Rule("int", Limits(1, 1024)))
    gpu_resource: bool | None = param(None, Rule("bool"))
    dashboard: bool = param(True, Rule("bool"))
    #: ``local`` (a local cluster, ``scheduler`` or ``scheduler_file``) or ``slurm``.
    kind: str = param("local", Rule("str", choices=CLUSTER_KINDS))
    #: A dask scheduler file (JSON with its ``address``), instead of ``scheduler``.
    scheduler_file: Path | None = param(None, Rule("path"))  # noqa: RUF009 (a field())
    #: Seconds an existing or SLURM cluster may take to show its first worker (a SLURM queue
    #: may hold the first job a while: raise it there).
    worker_timeout_s: float = param(600.0, Rule("float", Limits(0, lo_open=True)))
    # SLURM jobs (kind="slurm"), each one dask-jobqueue job.
    slurm_queue: str | None = param(None, Rule("str", check=_word_problem))
    slurm_account: str | None = param(None, Rule("str", check=_word_problem))
    slurm_walltime: str = param("01:00:00", Rule("str", check=_walltime_problem))
    slurm_cores: int = param(4, Rule("int", Limits(1, 1024)))
    slurm_memory: str = param("16GB", Rule("str", check=_memory_problem))
    slurm_gpus: int = param(0, Rule("int", Limits(0, 64)))
    slurm_jobs: int = param(4, Rule("int", Limits(1, 10000)))
    slurm_prologue: tuple[str, ...] = param((), Rule("strs"))
    slurm_interface: str | None = param(None, Rule("str", check=_word_problem))
    slurm_log_dir: Path | None = param(None, Rule("path"))  # noqa: RUF009

    def __post_init__(self) -> None:
        coerce_paths(self, "scheduler_file", "slurm_log_dir")
        coerce_tuples(self, "slurm_prologue")
        check_params(self)
        if self.scheduler is not None and self.scheduler_file is not None:
            raise ConfigError("{scheduler} and {scheduler_file} both say where the scheduler "
                              "is: give one", {"scheduler": self.scheduler,
                                               "scheduler_file": self.scheduler_file})
        if self.kind == "slurm" and (self.scheduler is not None
                                     or self.scheduler_file is not None):
            given = "scheduler" if self.scheduler is not None else "scheduler_file"
            raise ConfigError(f"{{kind}} starts its own scheduler; {{{given}}} names another: "
                              "give one", {"kind": self.kind, given: getattr(self, given)})

    @property
    def remote(self) -> bool:
        """Whether the workers are not this machine's processes (their devices are theirs)."""
        return (self.kind == "slurm" or self.scheduler_file is not None
                or remote_address(self) is not None)


def cpu_count() -> int:
    """CPUs this process may use (respects affinity masks and containers' cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def local_gpu_count() -> int:
    """GPUs on this machine, asked of ``nvidia-smi`` (importing TensorFlow here would cost
    seconds in the client and grab the cards)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return 0
    exe = shutil.which("nvidia-smi")
    if not exe:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


#: The share of a worker's ``GPU`` resource one block task asks for: a power of two (exact in
#: floating point), small enough that a card's worker runs as many blocks as it has threads.
#: The resource only routes blocks to GPU workers; the predictor, not the resource, owns the card.
BLOCK_GPU_SHARE = 1 / 64


@dataclass(frozen=True)
class WorkerPlan:
    """The sizing of a local cluster."""

    workers: int
    threads_per_worker: int
    tf_threads: int
    gpus: int


def device_worker_threads(cores: int) -> int:
    """Task threads of a worker that feeds one device: one more than its cores, at least 3.

    Blocks end together now and then, each blending and writing its last rows while queuing
    nothing; with as many threads as cores the device then waits (a simulated device on two
    cores was busy 82-87 % of the blocks phase with two threads, 96 % with three). The extra
    thread mostly waits for predictions, so it costs memory (one block), not cores.
    """
    return max(3, cores + 1)


def plan_local_workers(config: ClusterConfig, cpus: int | None = None, gpus: int | None = None
                       ) -> WorkerPlan:
    """Size a local cluster: one worker per GPU, else one per two cores (at least one).

    A GPU worker runs one task thread more than it has cores per card
    (:func:`device_worker_threads`): its blocks read, cut, blend and write on the CPU while
    its predictor keeps the card busy. A
    CPU worker runs two task threads, so blocks are read and blended while the model computes,
    and TensorFlow gets the worker's share of the cores for its intra-op pool.
    """
    cpus = cpu_count() if cpus is None else cpus
    gpus = local_gpu_count() if gpus is None else gpus
    workers = config.workers or (gpus if gpus else max(1, cpus // 2))
    per_worker = max(1, cpus // workers)
    threads = config.threads_per_worker or (device_worker_threads(per_worker) if gpus else 2)
    return WorkerPlan(workers, threads, per_worker, gpus)


def visible_gpus(count: int) -> list[str]:
    """The card ids local workers are pinned to: those ``CUDA_VISIBLE_DEVICES`` already lists
    (a user may reserve cards for us), else ``0 .. count-1``."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [c.strip() for c in listed.split(",") if c.strip()][:count]
    return [str(i) for i in range(count)]


def worker_specs(plan: WorkerPlan, silence: int) -> dict[str, dict[str, Any]]:
    """Local worker processes (Nannies on localhost), each GPU worker pinned to one card."""
    from distributed import Nanny

    cards = visible_gpus(plan.gpus) if plan.gpus else []
    specs: dict[str, dict[str, Any]] = {}
    for i in range(plan.workers):
        options: dict[str, Any] = {"nthreads": plan.threads_per_worker, "host": "127.0.0.1",
                                   "silence_logs": silence}
        if cards:
            # Workers beyond the cards (an explicit --workers) share them round-robin.
            options["env"] = {"CUDA_VISIBLE_DEVICES": cards[i % len(cards)]}
            options["resources"] = {"GPU": 1}
        specs[f"wsi-seg-{i}"] = {"cls": Nanny, "options": options}
    return specs


class StoragePlugin(WorkerPlugin):
    """Worker state: the run's ``[storage]`` options (endpoint, region, profile, anonymous;
    never credentials, which each worker takes from its own environment or AWS files) laid
    over the worker's fsspec configuration, so that the slides it reads and the results it
    writes reach the store the client reaches. Set on every worker, including workers that
    join later; registered by every run under one name, so a run without options puts an
    existing cluster's workers back on their own configuration."""

    name = "wsi-seg-storage"

    def __init__(self, storage: Any) -> None:
        self.storage = storage

    def setup(self, worker: Any = None) -> None:
        from wsi_seg.stages.object_store import apply_storage

        apply_storage(self.storage)


def share_storage(client: Any, storage: Any) -> None:
    """The run's ``[storage]`` options on every worker, before any task (workers open s3://
    URLs themselves); later workers get them as they join (:class:`StoragePlugin`)."""
    client.register_plugin(StoragePlugin(storage))


class ModelPlugin(WorkerPlugin):
    """Worker state: loads the model on every worker, including workers that join later.

    ``setup`` starts the load in a background thread and returns at once, so the worker keeps
    answering the scheduler while the framework imports and the model compiles; block tasks
    that arrive early wait for the same load (:func:`wsi_seg.stages.infer.cached_predictor`).
    Registered with ``client.register_plugin``.
    """

    name = "wsi-seg-model"

    def __init__(self, model_path: Any, infer: Any) -> None:
        self.model_path = model_path
        self.infer = infer

    def setup(self, worker: Any = None) -> None:
        def load() -> None:
            from wsi_seg.stages.infer import warm_predictor

            try:
                warm_predictor(self.model_path, self.infer)
            except Exception as exc:  # the warm-up task reports it in one line
                log.debug("model warm-up failed: %s", exc)

        threading.Thread(target=load, daemon=True, name="wsi-seg-warm-up").start()




def start_local_cluster(config: ClusterConfig, plan: WorkerPlan) -> Any:
    """A local cluster sized by ``plan``: worker processes (GPU workers pinned to their
    cards), or one thread worker in this process for ``scheduler="threads"``."""
    from distributed import LocalCluster, Scheduler, SpecCluster

    silence = logging.DEBUG if os.environ.get("WSI_SEG_DEBUG") else logging.CRITICAL
    cluster: Any
    if config.scheduler == "threads":
        # Workers as threads in this process: no start-up cost, no GPU pinning.
        cluster = LocalCluster(n_workers=1, threads_per_worker=plan.threads_per_worker,
                               processes=False,
                               dashboard_address="127.0.0.1:0" if config.dashboard else None,
                               silence_logs=silence)
        if not os.environ.get("WSI_SEG_DEBUG"):
            logging.getLogger("distributed.worker").setLevel(logging.CRITICAL)
    else:
        # Processes listen on localhost only (never on the network by accident). Task failures
        # are caught and reported per slide in one line; distributed's own tracebacks for them
        # would only bury that line (WSI_SEG_DEBUG=1 shows them).
        import dask

        # distributed's Nanny sets MALLOC_TRIM_THRESHOLD_ in its workers (to hand freed memory
        # back to the OS); setting it also freezes glibc's mmap threshold, so every array over
        # 128 KiB is a fresh mmap with page faults. Tracing a noisy map's polygons took 4.2-4.9 s
        # in such a worker against 3.5-3.6 s without it. Our tasks hold bounded, block-sized
        # arrays, so the default allocator is kept.
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_":
                              None}):
            cluster = SpecCluster(
                workers=worker_specs(plan, silence),
                scheduler={"cls": Scheduler, "options": {
                    "host": "127.0.0.1", "dashboard": config.dashboard,
                    "dashboard_address": "127.0.0.1:0"}},
                silence_logs=silence,
            )
    return cluster


#: Seconds a scheduler's address may take to accept a connection and greet.
PROBE_TIMEOUT_S = 10.0


def probe_scheduler(address: str, timeout_s: float | None = None) -> None:
    """WsiSegError in one line unless ``tcp://HOST:PORT`` greets like a Dask scheduler.

    A Dask comm sends its handshake as soon as it accepts a connection: an 8-byte length,
    an 8-byte frame count, then the frames. Reading those 16 bytes with a deadline, before
    distributed's client does, tells apart what is not a scheduler without trusting it: a
    server that accepts and stays silent (an HTTP server waits for a request) and one that
    answers with other bytes. distributed's own client would wait, or take those bytes for a
    frame length and try to allocate exabytes. Other schemes (``tls://``, ...) are left to the
    client.
    """
    import socket
    import struct
    from urllib.parse import urlsplit

    if not address.startswith("tcp://"):
        return
    timeout_s = PROBE_TIMEOUT_S if timeout_s is None else timeout_s
    url = urlsplit(address)
    if url.hostname is None or url.port is None:
        raise WsiSegError("a scheduler address is tcp://HOST:PORT", address)
    try:
        with socket.create_connection((url.hostname, url.port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            head = b""
            while len(head) < 16:
                data = sock.recv(16 - len(head))
                if not data:
                    raise WsiSegError("closed the connection without a word: not a Dask "
                                      "scheduler", address)
                head += data
    except TimeoutError:
        raise WsiSegError(f"accepts connections but said nothing in {timeout_s:g} s: not a "
                          "Dask scheduler (an HTTP or other server?)", address) from None
    except OSError as exc:
        raise WsiSegError(f"cannot reach the Dask scheduler ({exc.strerror or exc})",
                          address) from None
    total, n_frames = struct.unpack("<QQ", head)
    if not (0 < total < (1 << 20) and 0 < n_frames < 64):
        shown = head[:12].decode("ascii", "replace")
        raise WsiSegError(f"answers, but not in Dask's protocol (first bytes {shown!r}): not "
                          "a Dask scheduler", address)


#: Seconds a scheduler file may take to appear (a launcher starts the scheduler and the
#: client together; the scheduler writes its file once it listens).
SCHEDULER_FILE_WAIT_S = 60.0


def read_scheduler_file(path: Path, wait_s: float = SCHEDULER_FILE_WAIT_S) -> str:
    """The ``address`` in a dask scheduler file, waiting up to ``wait_s`` seconds for the
    file to appear and be complete; one-line WsiSegError otherwise."""
    import json
    import time

    deadline = time.monotonic() + wait_s
    while True:
        try:
            address = json.loads(path.read_text(encoding="utf-8"))["address"]
            if isinstance(address, str) and address:
                return address
            problem = "has no scheduler address"
        except FileNotFoundError:
            problem = f"not found after {wait_s:g} s"
        except IsADirectoryError:
            raise WsiSegError("is a folder, not a dask scheduler file", path) from None
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            # The scheduler may be writing it right now: read again until the deadline.
            problem = "is not a dask scheduler file (JSON with an \"address\")"
        if time.monotonic() > deadline:
            raise WsiSegError(f"--scheduler-file: {problem}", path)
        time.sleep(0.2)


def remote_address(config: ClusterConfig) -> str | None:
    """The address of an existing scheduler given by ``--scheduler`` or, when neither it nor
    a scheduler file is given, by ``$DASK_SCHEDULER_ADDRESS`` (dask's own variable); None for
    a local cluster, threads, SLURM or a scheduler file (read when connecting)."""
    if config.kind != "local" or config.scheduler_file is not None:
        return None
    if config.scheduler is not None:
        return None if config.scheduler in ("threads", "local") else config.scheduler
    env = os.environ.get("DASK_SCHEDULER_ADDRESS", "").strip()
    return env or None


def wait_for_first_worker(client: Any, timeout_s: float, where: str) -> None:
    """Return once the cluster has a worker; one-line WsiSegError after ``timeout_s``."""
    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except TimeoutError:
        raise WsiSegError(f"no Dask worker joined in {timeout_s:g} s (raise "
                          "--worker-timeout-s, or check that workers start and reach the "
                          "scheduler)", where) from None


#: What client, scheduler and workers must run alike: the task graph's and the results'
#: format (dask, distributed) and the block code itself (wsi-seg).
MATCHED_PACKAGES = ("dask", "distributed", "wsi-seg")


def version_mismatch(versions: dict[str, Any]) -> str | None:
    """The first disagreement in ``Client.get_versions(packages=["wsi-seg"])``'s answer, as
    ``wsi-seg 0.3.0 on worker tcp://... but 0.4.0 here``; None when all agree. The scheduler
    needs no wsi-seg (a bare ``dask scheduler``)."""
    mine = versions["client"]["packages"]
    others: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
        ("the scheduler", versions["scheduler"]["packages"], ("dask", "distributed"))]
    others += [(f"worker {addr}", v["packages"], MATCHED_PACKAGES)
               for addr, v in sorted(versions.get("workers", {}).items())]
    for where, theirs, names in others:
        for name in names:
            key = name if name in mine else name.replace("-", "_")
            here, there = mine.get(key), theirs.get(key)
            if there != here:
                return (f"{name} {there or 'not installed'} on {where} but {here} here: "
                        f"client, scheduler and workers must run the same "
                        f"{', '.join(MATCHED_PACKAGES)}")
    return None


def check_versions(client: Any, where: str) -> None:
    """One-line WsiSegError when a worker or the scheduler runs other versions than this
    client of dask, distributed or wsi-seg (blocks would fail in ways that name neither)."""
    import warnings

    with warnings.catch_warnings():  # distributed's own multi-line table of the same
        warnings.simplefilter("ignore")
        versions = client.get_versions(packages=["wsi-seg"])
    problem = version_mismatch(versions)
    if problem:
        raise WsiSegError(problem, where)


def _connect_remote(config: ClusterConfig) -> Any:
    """A Client of the existing scheduler (``--scheduler``, ``--scheduler-file`` or
    ``$DASK_SCHEDULER_ADDRESS``), checked: it greets, has a worker, and runs our versions."""
    from distributed import Client

    if config.scheduler_file is not None:
        address = read_scheduler_file(config.scheduler_file)
        where = f"{address} (from {config.scheduler_file})"
    else:
        address = remote_address(config) or ""
        where = address if config.scheduler else f"{address} ($DASK_SCHEDULER_ADDRESS)"
    probe_scheduler(address)
    try:
        client = Client(address, timeout="20s")
    except Exception as exc:  # distributed's own errors are many kinds: one line each
        cause = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise WsiSegError(f"cannot connect to the Dask scheduler ({cause})", where) from None
    try:
        wait_for_first_worker(client, config.worker_timeout_s, where)
        check_versions(client, where)
    except BaseException:
        client.close()
        raise
    return client


@contextmanager
def _slurm(config: ClusterConfig) -> Iterator[tuple[object, WorkerPlan | None]]:
    """A SLURM cluster's client and full-scale plan; every job is cancelled on exit."""
    from distributed import Client

    from wsi_seg.orchestration.slurm import slurm_plan, start_slurm_cluster

    cluster = start_slurm_cluster(config)
    try:
        client = Client(cluster)
        try:
            where = f"SLURM jobs of {cluster.scheduler_address}"
            wait_for_first_worker(client, config.worker_timeout_s, where)
            check_versions(client, where)
            yield client, slurm_plan(config)
        finally:
            client.close()
    finally:
        cluster.close()  # scancels the jobs still queued or running


@contextmanager
def connect(config: ClusterConfig) -> Iterator[tuple[object, WorkerPlan | None]]:
    """Yield ``(client, plan)``: a dask.distributed Client and the sizing (None for an
    existing cluster, the full-scale sizing for SLURM).

    A local or SLURM cluster is shut down on exit; an existing one is only disconnected from.
    """
    from distributed import Client

    if config.kind == "slurm":
        with _slurm(config) as connected:
            yield connected
        return
    if config.scheduler_file is not None or remote_address(config) is not None:
        client = _connect_remote(config)
        try:
            yield client, None
        finally:
            client.close()
        return
    plan = plan_local_workers(config)
    try:
        cluster = start_local_cluster(config, plan)
    except (RuntimeError, OSError, TimeoutError) as exc:
        # A worker killed while starting (out of memory, say): one line, not a traceback.
        cause = " ".join(str(exc).split()) or type(exc).__name__
        raise WsiSegError(f"could not start the local Dask workers ({cause})") from None
    client = Client(cluster)
    try:
        yield client, plan
    finally:
        client.close()
        cluster.close()
