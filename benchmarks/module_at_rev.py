"""Import one wsi-seg module as it was at a git revision, for before/after benchmarks.

The package was split into subpackages (``wsi_seg/stages/slide.py`` was ``wsi_seg/slide.py``);
a module taken from an older revision imports its neighbours by their old names, so those are
pointed at today's modules (only module names moved, not the functions an old module uses).
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def _alias_old_names() -> None:
    import wsi_seg

    root = Path(wsi_seg.__file__).parent
    # Modules (wsi_seg/stages/slide.py) and packages (wsi_seg/tools/bench/, once bench.py).
    found = [(p.parent.name, p.stem) for p in root.glob("*/*.py") if p.stem != "__init__"]
    found += [(p.parent.parent.name, p.parent.name) for p in root.glob("*/*/__init__.py")]
    for package, name in found:
        old = f"wsi_seg.{name}"
        if package != "cli" and old not in sys.modules:
            sys.modules[old] = importlib.import_module(f"wsi_seg.{package}.{name}")


def module_at(rev: str, package: str, name: str) -> ModuleType:
    """``wsi_seg/<package>/<name>.py`` (or, before the split, ``wsi_seg/<name>.py``) as it was
    at ``rev``, imported as the module ``<name>_at_rev``."""
    source = None
    for rel in (f"wsi_seg/{package}/{name}.py", f"wsi_seg/{name}.py"):
        done = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{rel}"],
                              capture_output=True, text=True)
        if done.returncode == 0:
            source = done.stdout
            break
    if source is None:
        raise SystemExit(f"{name}.py not found at {rev}")
    _alias_old_names()
    path = Path(tempfile.mkdtemp()) / f"{name}_at_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
