"""What pyproject.toml promises: floors no lower than what saved the bundled models, the
environment the suite runs in satisfies every declared range, and every third-party module the
package imports is declared (as a dependency or in an extra)."""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata as md
import json
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from wsi_seg.stages.card import BUNDLED, bundled_model_path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _reqs(texts: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(Requirement(t).name): Requirement(t) for t in texts}


RUNTIME = _reqs(PROJECT["dependencies"])
EXTRAS = {name: _reqs(texts) for name, texts in PROJECT["optional-dependencies"].items()}


def _floor(req: Requirement) -> Version:
    (low,) = [Version(s.version) for s in req.specifier if s.operator == ">="]
    return low


def test_keras_floor_reads_the_bundled_models() -> None:
    floor = _floor(RUNTIME["keras"])
    for kind in BUNDLED:
        with zipfile.ZipFile(bundled_model_path(kind)) as z:
            saved = Version(json.loads(z.read("metadata.json"))["keras_version"])
        assert (floor.major, floor.minor) >= (saved.major, saved.minor), (kind, saved, floor)


def test_installed_versions_satisfy_the_declared_ranges() -> None:
    for name, req in RUNTIME.items():
        version = md.version(name)
        assert req.specifier.contains(version, prereleases=True), (str(req), version)


def _imported_top_levels() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "wsi_seg").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"wsi_seg", "__future__"}


def test_every_imported_distribution_is_declared() -> None:
    declared = set(RUNTIME) | {n for reqs in EXTRAS.values() for n in reqs}
    # Parts of a declared distribution (keras-hub's keras_hub, TensorFlow's pieces) and what
    # a declared dependency installs itself count as declared.
    provided = md.packages_distributions()
    closure = set(declared)
    for name in list(declared):
        with contextlib.suppress(md.PackageNotFoundError):  # an extra not installed here
            closure |= {canonicalize_name(Requirement(r).name)
                        for r in md.distribution(name).requires or []}
    missing = []
    for module in sorted(_imported_top_levels()):
        # An extra not installed here (torch) is known by its module's own name.
        dists = {canonicalize_name(d) for d in provided.get(module, [module])}
        if not dists & closure:
            missing.append(f"{module} ({', '.join(sorted(dists)) or 'not installed'})")
    assert not missing, missing
