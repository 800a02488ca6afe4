"""Connecting like a Dask user expects: a scheduler file, ``$DASK_SCHEDULER_ADDRESS``, a
version check between client and workers, and a clear line when no worker arrives; and the
SLURM job a configuration asks for (dask-jobqueue's own job script, not a mock).

Real ``dask scheduler`` and ``dask worker`` processes on localhost. The worker with another
wsi-seg has another wsi-seg's installed metadata first on its path, as a worker whose
environment was upgraded apart from the client's has.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dask_fixtures import BIN, DaskCluster
from tests.model_fixtures import small_unet
from wsi_seg.cli import main
from wsi_seg.orchestration.cluster import ClusterConfig, version_mismatch
from wsi_seg.tools.synth import write_synthetic_slide

RUN_OPTS = ["--block", "256", "--chunk", "128", "--batch-size", "4", "--quiet"]


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("connect") / "c.svs"
    write_synthetic_slide(path, (600, 500), seed=31)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_unet(tmp_path_factory.mktemp("model") / "unet.keras")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[DaskCluster]:
    c = DaskCluster(tmp_path, n_workers=1)
    try:
        yield c
    finally:
        c.close()


def _wsi_seg(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "wsi-seg"), *args], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


def test_a_scheduler_file_is_followed(slide: Path, model: Path, cluster: DaskCluster,
                                      tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["run", str(slide), "--out", str(out), "--model", str(model),
                 "--scheduler-file", str(cluster.file), *RUN_OPTS]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["slides"][0]["status"] == "ok"
    assert run["workers"] is None  # an existing cluster's, not a local plan


def test_dask_scheduler_address_is_followed(slide: Path, model: Path, cluster: DaskCluster,
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.address)
    assert ClusterConfig().remote
    out = tmp_path / "out"
    assert main(["run", str(slide), "--out", str(out), "--model", str(model),
                 *RUN_OPTS]) == 0
    assert json.loads((out / "run.json").read_text())["workers"] is None


def test_no_worker_is_one_line_and_a_nonzero_exit(slide: Path, model: Path, cluster: DaskCluster,
                                                  tmp_path: Path) -> None:
    for worker in cluster.workers:  # a scheduler whose workers are gone
        worker.kill()
        worker.wait(timeout=30)
    got = _wsi_seg("run", str(slide), "--out", str(tmp_path / "out"), "--model", str(model),
                   "--scheduler", cluster.address, "--worker-timeout-s", "3", *RUN_OPTS)
    assert got.returncode != 0
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1, got.stderr
    assert "no Dask worker joined in 3 s" in lines[0] and cluster.address in lines[0]


def _other_wsi_seg(tmp: Path, version: str) -> Path:
    """A folder holding another wsi-seg's installed metadata (what pip leaves)."""
    info = tmp / "other" / f"wsi_seg-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: wsi-seg\nVersion: {version}\n")
    return info.parent


def test_a_worker_with_another_wsi_seg_is_refused_in_one_line(
        slide: Path, model: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(_other_wsi_seg(tmp_path, "0.0.1"))}
    scheduler = subprocess.Popen(
        [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
         "--no-dashboard", "--scheduler-file", str(tmp_path / "s.json")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    procs = [scheduler]
    try:
        from wsi_seg.orchestration.cluster import read_scheduler_file

        address = read_scheduler_file(tmp_path / "s.json")
        procs.append(subprocess.Popen(
            [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny",
             "--no-dashboard", "--host", "127.0.0.1"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env=env, start_new_session=True))
        got = _wsi_seg("run", str(slide), "--out", str(tmp_path / "out"), "--model",
                       str(model), "--scheduler", address, *RUN_OPTS)
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=30)
    assert got.returncode != 0
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1, got.stderr
    assert "wsi-seg 0.0.1 on worker tcp://127.0.0.1:" in lines[0]
    assert "must run the same dask, distributed, wsi-seg" in lines[0]


def test_version_mismatch_names_the_first_difference() -> None:
    same = {"dask": "1", "distributed": "1", "wsi-seg": "2"}
    versions = {"client": {"packages": same}, "scheduler": {"packages": same},
                "workers": {"tcp://a:1": {"packages": same}}}
    assert version_mismatch(versions) is None
    versions["scheduler"] = {"packages": {**same, "distributed": "0"}}
    assert version_mismatch(versions) == (
        "distributed 0 on the scheduler but 1 here: client, scheduler and workers must run "
        "the same dask, distributed, wsi-seg")


@pytest.mark.parametrize(("args", "said"), [
    (["--scheduler", "tcp://127.0.0.1:1", "--scheduler-file", "s.json"],
     "--scheduler tcp://127.0.0.1:1 and --scheduler-file s.json both say where"),
    (["--cluster", "slurm", "--scheduler", "tcp://127.0.0.1:1"],
     "--cluster slurm starts its own scheduler; --scheduler tcp://127.0.0.1:1 names another"),
    (["--slurm-walltime", "an hour"], "must be a SLURM time limit"),
    (["--slurm-memory", "lots"], "must be a size such as 16GB"),
])
def test_bad_cluster_options_are_one_line(args: list[str], said: str, tmp_path: Path,
                                          slide: Path) -> None:
    got = _wsi_seg("run", str(slide), "--out", str(tmp_path / "out"), *args)
    assert got.returncode == 2
    assert len(got.stderr.strip().splitlines()) == 1, got.stderr
    assert said in got.stderr
    assert not (tmp_path / "out").exists()


def test_a_missing_scheduler_file_is_one_line(tmp_path: Path) -> None:
    from wsi_seg.core.errors import WsiSegError
    from wsi_seg.orchestration.cluster import read_scheduler_file

    with pytest.raises(WsiSegError, match=r"--scheduler-file: not found after 0\.2 s"):
        read_scheduler_file(tmp_path / "none.json", wait_s=0.2)


def test_a_gpu_slurm_job_runs_a_pinned_worker_per_gpu() -> None:
    """The job script dask-jobqueue writes for 2 GPUs per job: gres, the cores SLURM
    reserves, two worker processes with the GPU resource and the pinning preload."""
    pytest.importorskip("dask_jobqueue")
    from dask_jobqueue.slurm import SLURMJob

    from wsi_seg.orchestration.slurm import slurm_job_kwargs

    config = ClusterConfig(kind="slurm", slurm_gpus=2, slurm_cores=8, slurm_memory="32GB",
                           slurm_queue="gpu", slurm_account="lab", slurm_walltime="04:00:00",
                           slurm_prologue=("module load cuda",))
    kwargs = slurm_job_kwargs(config)
    kwargs.pop("scheduler_options")
    script = SLURMJob(scheduler="tcp://127.0.0.1:8786", name="x", **kwargs).job_script()
    for line in ("#SBATCH --gres=gpu:2", "#SBATCH --cpus-per-task=8", "#SBATCH -p gpu",
                 "#SBATCH -A lab", "module load cuda", "--nworkers 2", "--nthreads 5",
                 "--resources GPU=1", "--preload-nanny wsi_seg.orchestration.slurm",
                 # Workers retire 2 x 12 min before the 4 h walltime, staggered by 12 min.
                 "#SBATCH -t 04:00:00", "--lifetime 12960s", "--lifetime-stagger 720s"):
        assert line in script, (line, script)
    assert sys.executable in script


def test_the_preload_pins_each_worker_of_a_job_to_its_card(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """dask_setup on the nannies of a job SLURM gave cards 2 and 5: one card each, in turn."""
    from distributed import Nanny

    from wsi_seg.orchestration import slurm

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    monkeypatch.setattr(slurm, "_pinned", iter(range(10)))
    nannies = [Nanny("tcp://127.0.0.1:1", env={"MALLOC_TRIM_THRESHOLD_": "65536"})
               for _ in range(2)]
    for nanny in nannies:
        slurm.dask_setup(nanny)
    assert [n.env["CUDA_VISIBLE_DEVICES"] for n in nannies] == ["2", "5"]
    assert all("MALLOC_TRIM_THRESHOLD_" not in n.env for n in nannies)
