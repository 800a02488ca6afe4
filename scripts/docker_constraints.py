"""Print docker/constraints.txt from this environment: every distribution wsi-seg's runtime
dependencies pull in (extras aside), at the version installed here. Run it in an environment
the suite has passed in (``.venv`` after ``scripts/test.sh``)."""

from __future__ import annotations

import importlib.metadata as md
import re

from packaging.markers import default_environment
from packaging.requirements import Requirement

HEADER = """\
# Exact versions the images install (pip install -c docker/constraints.txt): the
# runtime dependencies of wsi-seg and everything they pull in, as installed and tested
# together by the suite (.ci/run) on 2026-12-07, Python 3.11. Regenerate from a tested
# environment with: python scripts/docker_constraints.py > docker/constraints.txt
# The GPU image's CUDA wheels (tensorflow[and-cuda]) follow TensorFlow's own pins."""


def closure(root: str = "wsi-seg") -> dict[str, str]:
    """Normalised name -> installed version of ``root``'s runtime dependency closure."""
    seen: dict[str, str] = {}
    env = {**default_environment(), "extra": ""}

    def walk(name: str) -> None:
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            return
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            return
        seen[key] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(env):
                walk(req.name)

    walk(root)
    for key in (root, "setuptools", "wheel"):
        seen.pop(key, None)
    return seen


if __name__ == "__main__":
    print(HEADER)
    for name, version in sorted(closure().items()):
        print(f"{name}=={version}")
