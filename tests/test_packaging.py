"""What pyproject.toml promises: floors no lower than what saved the bundled models, the
environment the suite runs in satisfies every declared range, and every third-party module the
package imports is declared by name (as a dependency or in an extra), not merely installed by
something else."""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from wsi_seg.stages.card import BUNDLED, bundled_model_path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _reqs(texts: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(Requirement(t).name): Requirement(t) for t in texts}


RUNTIME = _reqs(PROJECT["dependencies"])
EXTRAS = {name: _reqs(texts) for name, texts in PROJECT["optional-dependencies"].items()}


def _floor(req: Requirement) -> Version:
    (low,) = [Version(s.version) for s in req.specifier if s.operator == ">="]
    return low


def _installed(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


@pytest.mark.parametrize("kind", sorted(BUNDLED))
def test_keras_floor_reads_the_bundled_models(kind: str) -> None:
    """The Keras that saved a bundled model (its archive's metadata.json and its card) is no
    newer, by major.minor, than the declared floor."""
    floor = _floor(RUNTIME["keras"])
    path = bundled_model_path(kind)
    with zipfile.ZipFile(path) as z:
        archive = Version(json.loads(z.read("metadata.json"))["keras_version"])
    card = Version(json.loads(path.with_suffix(".json").read_text())["versions"]["keras"])
    assert card == archive, (kind, card, archive)
    assert (floor.major, floor.minor) >= (card.major, card.minor), (kind, card, floor)


def test_every_dependency_has_a_floor() -> None:
    for name, req in RUNTIME.items():
        assert [s for s in req.specifier if s.operator == ">="], f"{name}: no floor"
    assert any(s.operator == "<" for s in RUNTIME["zarr"].specifier), "zarr: no upper bound"


def test_installed_versions_satisfy_the_declared_ranges() -> None:
    """The environment the suite runs in is inside every range pyproject declares: runtime
    dependencies (all installed) and those of the extras that are installed here."""
    for name, req in RUNTIME.items():
        version = _installed(name)
        assert version is not None, f"{name} is declared but not installed"
        assert req.specifier.contains(version, prereleases=True), (str(req), version)
    for extra, reqs in EXTRAS.items():
        for name, req in reqs.items():
            version = _installed(name)
            if version is not None:  # torch and the CUDA wheels are not installed here
                assert req.specifier.contains(version, prereleases=True), (extra, str(req),
                                                                            version)


def test_build_backend_floor_is_what_builds_the_metadata() -> None:
    """PEP 639 license metadata (license = "...", license-files) needs setuptools 77."""
    (backend,) = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]
                  if Requirement(r).name == "setuptools"]
    assert _floor(backend) >= Version("77")


def _imported_top_levels() -> dict[str, str]:
    """Top-level module -> one file of wsi_seg that imports it (absolute imports only)."""
    names: dict[str, str] = {}
    for path in sorted((ROOT / "wsi_seg").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                names.setdefault(mod.split(".")[0], str(path.relative_to(ROOT)))
    for skip in [*sys.stdlib_module_names, "wsi_seg", "__future__"]:
        names.pop(skip, None)
    return names


def test_every_imported_distribution_is_declared() -> None:
    """Each third-party module wsi_seg imports belongs to a distribution pyproject names
    itself (a dependency or an extra): h5py arriving with keras, or numcodecs with zarr, does
    not count, since either may stop pulling it in."""
    declared = set(RUNTIME) | {n for reqs in EXTRAS.values() for n in reqs}
    provided = md.packages_distributions()
    missing = []
    imported = _imported_top_levels()
    assert {"numpy", "keras", "zarr"} <= imported.keys()  # the walk sees the package
    for module, where in sorted(imported.items()):
        # An extra not installed here (torch) is known by its module's own name.
        dists = {canonicalize_name(d) for d in provided.get(module, [module])}
        if not dists & declared:
            missing.append(f"{module} ({', '.join(sorted(dists))}; imported in {where})")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
