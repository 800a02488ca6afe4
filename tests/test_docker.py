"""The container recipes refer to things that exist and pin what they install.

No Docker engine runs in CI (the ``docker`` client is there, no daemon), so the CPU image is
built only where ``docker info`` or ``podman info`` answers; what can be checked without one is
checked: every COPY source exists, every command the images and compose services run is an
installed console script, every ``wsi-seg`` command line in them parses, each GPU worker
reserves its own card, the base image is pinned by tag and digest, and the constraints the
images install from pin every runtime dependency at a version the suite runs with.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from wsi_seg.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent
DOCKERFILES = ["Dockerfile.cpu", "Dockerfile.gpu"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RUNTIME = [Requirement(t) for t in PYPROJECT["project"]["dependencies"]]


def _services() -> dict[str, dict]:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(compose, dict) and isinstance(compose.get("services"), dict)
    return compose["services"]


def _devices(svc: dict) -> list[dict]:
    return svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def _gpu_workers(services: dict[str, dict]) -> dict[str, dict]:
    return {k: v for k, v in services.items() if k.startswith("worker-gpu")}


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_copies_existing_files_and_runs_wsi_seg(name: str) -> None:
    text = (DOCKER / name).read_text()
    copies = re.findall(r"^COPY\s+(.+?)\s+\S+$", text, flags=re.M)
    assert copies
    for line in copies:
        for src in line.split():
            assert (ROOT / src).exists(), f"{name}: COPY {src} does not exist"
    # setuptools reads license-files = ["LICENSE"] while building the wheel.
    assert any("LICENSE" in line.split() for line in copies)
    assert 'ENTRYPOINT ["wsi-seg"]' in text
    assert (BIN / "wsi-seg").exists()
    if name.endswith("gpu"):
        assert '".[gpu]"' in text
        extras = (ROOT / "pyproject.toml").read_text()
        assert re.search(r"^gpu = \[.*tensorflow\[and-cuda\]", extras, flags=re.M)


def test_compose_services_run_installed_commands_with_valid_flags() -> None:
    services = _services()
    assert {"scheduler", "run", "worker-cpu", "run-cpu"} <= services.keys()
    sched = services["scheduler"]
    assert sched["entrypoint"] == ["dask", "scheduler"] and (BIN / "dask").exists()
    gpu = _gpu_workers(services)
    assert len(gpu) >= 2
    for worker in [*gpu.values(), services["worker-cpu"]]:
        assert worker["entrypoint"] == ["dask", "worker"]
        assert worker["command"][0] == "tcp://scheduler:8786"
        assert worker["depends_on"] == ["scheduler"]
    for worker in gpu.values():
        cmd = worker["command"]
        assert cmd[cmd.index("--resources") + 1] == "GPU=1"
    assert "--resources" not in services["worker-cpu"]["command"]
    parser = build_parser()  # the images' entry point is wsi-seg
    run = parser.parse_args(services["run"]["command"])
    assert run.command == "run" and run.scheduler == "tcp://scheduler:8786"
    assert run.gpu_resource is True
    assert set(gpu) <= set(services["run"]["depends_on"])
    run_cpu = parser.parse_args(services["run-cpu"]["command"])
    assert run_cpu.command == "run" and run_cpu.scheduler == "tcp://scheduler:8786"
    assert run_cpu.gpu_resource is False  # a CPU worker offers no GPU resource
    assert set(services["run-cpu"]["depends_on"]) == {"scheduler", "worker-cpu"}
    assert all("../data:/data" in s["volumes"] for s in services.values())


def test_compose_profiles_keep_the_variants_apart() -> None:
    """`--profile gpu` starts the scheduler, the GPU workers and `run`; `--profile cpu` the
    scheduler, `worker-cpu` and `run-cpu`; neither depends on a service it does not start, and
    each uses its own image."""
    services = _services()
    assert "profiles" not in services["scheduler"]
    images = {"gpu": "wsi-seg:gpu", "cpu": "wsi-seg:cpu"}
    dockerfiles = {"gpu": "docker/Dockerfile.gpu", "cpu": "docker/Dockerfile.cpu"}
    for name, svc in services.items():
        if name == "scheduler":
            assert svc["image"] == images["cpu"]
            continue
        (profile,) = svc["profiles"]
        assert svc["image"] == images[profile], name
        assert svc["build"]["dockerfile"] == dockerfiles[profile], name
        for dep in svc.get("depends_on", []):
            assert dep in services, (name, dep)
            assert services[dep].get("profiles", [profile]) == [profile], (name, dep)
        assert (name in _gpu_workers(services) or name == "run") == (profile == "gpu"), name
    for svc in services.values():
        assert (ROOT / "docker" / svc["build"]["context"]).resolve() == ROOT


def test_each_gpu_worker_reserves_its_own_card() -> None:
    """One service per card, by id: replicas of one service ("count: 1" each) may all be
    given GPU 0. Exactly one distinct card per GPU worker, none for any other service."""
    services = _services()
    cards: list[str] = []
    for name, svc in services.items():
        devices = _devices(svc)
        if name not in _gpu_workers(services):
            assert not devices, f"{name} reserves a device"
            assert "deploy" not in svc or "replicas" not in svc["deploy"], name
            continue
        (dev,) = devices
        assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"], name
        assert "count" not in dev, f"{name}: count leaves the card to the runtime"
        ids = dev["device_ids"]
        assert isinstance(ids, list) and len(ids) == 1, f"{name}: exactly one card, {ids}"
        (card,) = ids
        assert isinstance(card, str) and card.isdigit(), (name, card)
        assert name == f"worker-gpu{card}"
        assert svc.get("deploy", {}).get("replicas", 1) == 1, name
        cards.append(card)
    assert len(cards) == len(set(cards)), f"two services share a card: {cards}"
    assert sorted(cards, key=int) == [str(i) for i in range(len(cards))]  # 0..n-1


def _pins(name: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (DOCKER / name).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9._-]+==[0-9][0-9A-Za-z.+!-]*", line), line
            dist, version = line.split("==")
            key = canonicalize_name(dist)
            assert key not in pins, f"{name}: {dist} pinned twice"
            pins[key] = version
    return pins


def _base(name: str) -> str:
    (base,) = re.findall(r"^FROM\s+(\S+)", (DOCKER / name).read_text(), flags=re.M)
    return base


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_are_pinned(name: str) -> None:
    text = (DOCKER / name).read_text()
    base = _base(name)
    m = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-[a-z]+@sha256:[0-9a-f]{64}", base)
    assert m, f"{name}: base image not pinned by exact tag and digest: {base}"
    # The Python the suite runs on (its major.minor; the tag names the patch release).
    assert (int(m[1]), int(m[2])) == sys.version_info[:2], base
    assert base == _base("Dockerfile.cpu")  # both images on one base
    # The build backend at fixed versions within build-system.requires, no build isolation
    # (which would fetch the newest setuptools), and every dependency from the constraints.
    backend = dict(re.findall(r"\b(setuptools|wheel)==([0-9][0-9.]*)", text))
    assert backend.keys() == {"setuptools", "wheel"}, backend
    for text_req in PYPROJECT["build-system"]["requires"]:
        req = Requirement(text_req)
        assert req.specifier.contains(backend[req.name]), (text_req, backend)
    assert "--no-build-isolation -c docker/constraints.txt" in text
    assert re.search(r"^COPY docker/constraints\.txt\b", text, flags=re.M)
    if name.endswith("gpu"):
        assert "-c docker/constraints-gpu.txt" in text
        assert "constraints-gpu.txt" in re.search(r"^COPY docker/.*$", text, flags=re.M)[0]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_write_nothing_into_themselves_at_run_time(name: str) -> None:
    text = (DOCKER / name).read_text()
    env = _dockerfile_env(name)
    for var in ("HOME", "KERAS_HOME", "MPLCONFIGDIR", "XDG_CACHE_HOME"):
        assert env.get(var, "").startswith("/tmp"), f"{name}: {var}={env.get(var)}"
    # The build's own caches are dropped; the run-time user has no home in the image.
    assert re.search(r"rm -rf /tmp/\* /root/\.cache", text)
    assert "--no-create-home" in text and "--create-home" not in text
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1] not in {"root", "0"}


def test_constraints_pin_every_runtime_dependency_within_its_range() -> None:
    pins = _pins("constraints.txt")
    for req in RUNTIME:
        name = canonicalize_name(req.name)
        assert name in pins, f"docker/constraints.txt does not pin {name}"
        assert req.specifier.contains(pins[name], prereleases=True), (str(req), pins[name])
    for text in PYPROJECT["project"]["optional-dependencies"]["gpu"]:
        req = Requirement(text)
        assert req.specifier.contains(pins[canonicalize_name(req.name)]), text


def test_constraints_are_what_the_suite_runs_with() -> None:
    """Each runtime dependency is pinned at the version installed here, where the suite runs
    (regenerate with scripts/docker_constraints.py after upgrading the environment)."""
    pins = _pins("constraints.txt")
    stale = {}
    for req in RUNTIME:
        name = canonicalize_name(req.name)
        installed = md.version(name)
        if Version(installed) != Version(pins[name]):
            stale[name] = f"pinned {pins[name]}, tested {installed}"
    assert not stale, f"docker/constraints.txt differs from the tested environment: {stale}"


def test_constraints_are_a_complete_consistent_set() -> None:
    """pip can satisfy the constraints as one set: starting from pyproject's runtime
    dependencies, every distribution they pull in (markers evaluated for this Python) is
    pinned, and each pin meets the ranges its dependants declare. Dependants are read from the
    installed metadata where the installed version is the pinned one."""
    pins = _pins("constraints.txt")
    env = {**default_environment(), "extra": ""}
    todo = list(RUNTIME)
    seen: set[str] = set()
    problems: list[str] = []
    unread: list[str] = []
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        if name in {"setuptools", "wheel"}:  # installed first, at the Dockerfiles' pins
            continue
        if name not in pins:
            problems.append(f"{name} (needed as {req}) is not pinned")
            continue
        if not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{name}=={pins[name]} does not meet {req}")
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            unread.append(name)
            continue
        if Version(dist.version) != Version(pins[name]):
            unread.append(name)
            continue
        todo += [Requirement(r) for r in dist.requires or []]
    assert not problems, problems
    # Most of the set must have been checked against real metadata.
    assert len(unread) <= len(pins) // 4, f"metadata not read for {unread}"


def test_gpu_constraints_pin_every_cuda_wheel_tensorflow_asks_for() -> None:
    """The and-cuda extra of the pinned TensorFlow: each wheel pinned once, within TensorFlow's
    range, and none of them pinned again in constraints.txt."""
    pins = _pins("constraints.txt")
    gpu = _pins("constraints-gpu.txt")
    assert not gpu.keys() & pins.keys()
    if Version(md.version("tensorflow")) != Version(pins["tensorflow"]):
        pytest.skip("installed TensorFlow is not the pinned one: its and-cuda list not read")
    env = {**default_environment(), "extra": "and-cuda"}
    wanted = {}
    for text in md.requires("tensorflow") or []:
        req = Requirement(text)
        if req.marker is not None and "extra" in str(req.marker) and req.marker.evaluate(env):
            wanted[canonicalize_name(req.name)] = req
    assert wanted, "TensorFlow's metadata names no and-cuda wheels"
    assert set(wanted) == set(gpu), (sorted(wanted), sorted(gpu))
    for name, req in wanted.items():
        assert req.specifier.contains(gpu[name], prereleases=True), (str(req), gpu[name])


def _engine() -> tuple[str | None, str]:
    """A container engine that answers, or None and why not."""
    why = []
    for tool in ("docker", "podman"):
        if not shutil.which(tool):
            why.append(f"no {tool}")
            continue
        try:
            probe = subprocess.run([tool, "info"], capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            why.append(f"`{tool} info` timed out")
            continue
        if probe.returncode == 0:
            return tool, ""
        last = (probe.stderr.strip().splitlines() or ["failed"])[-1]
        why.append(f"`{tool} info`: {last[:160]}")
    return None, "; ".join(why)


@pytest.mark.timeout(1800)
def test_cpu_image_builds_and_runs_read_only_where_an_engine_answers() -> None:
    engine, why = _engine()
    if engine is None:
        pytest.skip(f"no container engine answers here ({why})")
    tag = "wsi-seg:cpu-test"
    subprocess.run([engine, "build", "-f", "docker/Dockerfile.cpu", "-t", tag, "."],
                   cwd=ROOT, check=True, timeout=1700)
    ro = [engine, "run", "--rm", "--read-only", "--tmpfs", "/tmp"]
    done = subprocess.run([*ro, tag, "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr
    # Keras and TensorFlow import and find a writable home on a read-only root, as uid 1000,
    # and the image holds the pinned versions.
    probe = ("import os, keras, tensorflow, zarr; import wsi_seg.stages.backends; "
             "print(os.getuid(), os.environ['HOME'], keras.__version__, tensorflow.__version__,"
             " zarr.__version__)")
    done = subprocess.run([*ro, "--entrypoint", "python", tag, "-c", probe],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    uid, home, keras_v, tf_v, zarr_v = done.stdout.split()
    pins = _pins("constraints.txt")
    assert (uid, home) == ("1000", "/tmp")
    assert (keras_v, tf_v, zarr_v) == (pins["keras"], pins["tensorflow"], pins["zarr"])
    listing = subprocess.run([engine, "run", "--rm", "--entrypoint", "sh", tag, "-c",
                              "ls -A /root /tmp"], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert ".cache" not in listing.stdout.split() and ".keras" not in listing.stdout.split()


def _dockerfile_env(name: str) -> dict[str, str]:
    text = (DOCKER / name).read_text()
    return dict(re.findall(r"\b([A-Z_]+)=(\S+)", " ".join(re.findall(
        r"^ENV\s+((?:.*\\\n)*.*)$", text, flags=re.M)).replace("\\\n", " ")))


def _def_sections() -> tuple[dict[str, str], dict[str, str]]:
    """The Apptainer definition's header keys and its %sections' bodies."""
    text = (DOCKER / "wsi-seg.def").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    header: dict[str, str] = {}
    sections: dict[str, str] = {}
    current = None
    for ln in lines:
        if ln.startswith("%"):
            current = ln[1:].split()[0]
            sections[current] = ""
        elif current is not None:
            sections[current] += ln.strip() + "\n"
        elif ":" in ln:
            key, value = ln.split(":", 1)
            header[key.strip()] = value.strip()
    return header, sections


def test_apptainer_definition_converts_the_image_and_writes_only_tmp() -> None:
    """HPC systems run Apptainer: the definition is the Docker image converted (one recipe),
    runs wsi-seg as the image's entry point does, keeps the image's /tmp caches even where
    Apptainer binds the user's home, and the commands its comments teach name files that
    exist (``docker save`` writes the archive its From reads)."""
    header, sections = _def_sections()
    assert header["Bootstrap"] == "docker-archive"
    text = (DOCKER / "wsi-seg.def").read_text()
    saved = re.search(r"docker save (\S+) -o (\S+)", text)
    built = re.search(r"docker build -f (\S+) -t (\S+) \.", text)
    assert saved and built and saved.group(2) == header["From"]
    assert saved.group(1) == built.group(2) and (ROOT / built.group(1)).is_file()
    assert re.search(r'^exec wsi-seg "\$@"$', sections["runscript"], flags=re.M)
    assert "wsi-seg --version" in sections["test"]
    env = dict(re.findall(r"\b([A-Z_]+)=(\S+)", sections["environment"]))
    image = _dockerfile_env("Dockerfile.gpu")
    for var in ("HOME", "KERAS_HOME", "MPLCONFIGDIR", "XDG_CACHE_HOME"):
        assert env[var] == image[var] and env[var].startswith("/tmp"), var
    assert "/root" not in "".join(sections.values())


def test_apptainer_builds_where_installed(tmp_path: Path) -> None:
    """Build and run the definition where Apptainer and a container engine both exist (it
    needs the Docker image's archive); Debian bookworm packages no Apptainer, so here it
    skips and says so."""
    apptainer = shutil.which("apptainer") or shutil.which("singularity")
    if apptainer is None:
        pytest.skip("no apptainer or singularity on PATH (Debian bookworm packages neither; "
                    "the definition's structure is checked above)")
    engine, why = _engine()
    if engine is None:
        pytest.skip(f"apptainer is here but the image archive needs an engine: {why}")
    subprocess.run([engine, "build", "-f", str(DOCKER / "Dockerfile.cpu"), "-t",
                    "wsi-seg:cpu", str(ROOT)], check=True)
    subprocess.run([engine, "save", "wsi-seg:cpu", "-o", str(tmp_path / "wsi-seg-cpu.tar")],
                   check=True)
    definition = tmp_path / "wsi-seg.def"  # the CPU image's archive: no GPU needed here
    definition.write_text((DOCKER / "wsi-seg.def").read_text().replace(
        "From: wsi-seg-gpu.tar", "From: wsi-seg-cpu.tar"))
    sif = tmp_path / "wsi-seg.sif"
    subprocess.run([apptainer, "build", str(sif), str(definition)], check=True, cwd=tmp_path)
    out = subprocess.run([apptainer, "run", str(sif), "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.startswith("wsi-seg")
