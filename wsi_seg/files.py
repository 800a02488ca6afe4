"""Writing files so that readers never see half of one.

Every output is written under a temporary name in the same folder and renamed into place
(atomic on POSIX filesystems), so a crash leaves either the old file or the new one, never a
truncated file under the final name.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; return the path."""
    p = Path(path)
    # pid + thread: concurrent writers of the same file (threads of one worker) never share
    # a temporary name.
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (paths, numpy scalars, dataclasses allowed)."""
    return write_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")
