"""Reading and writing files safely: atomic writes, and reads with a ceiling.

Writes: every output is written under a temporary name in the same folder and renamed into
place (atomic on POSIX filesystems), so a crash leaves either the old file or the new one, never
a truncated file under the final name. :func:`write_atomic` takes the bytes; :func:`atomic_path`
lends a temporary path to a writer that wants a file name (Keras, tifffile, h5py).

Reads: user files are read with a byte ceiling (:func:`read_capped`, :func:`gunzip_capped`), so
a huge file or a decompression bomb (a 1 MB ``.gz`` that inflates to 1 GiB) is refused with one
line instead of filling memory, and JSON is parsed by :func:`decode_json`, which turns every
parse failure (nesting too deep included) into that same kind of line.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import stat
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from wsi_seg.core.errors import WsiSegError
from wsi_seg.core.locations import SlideURL

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
_CHUNK = 1 * MiB  # read and inflate step: the most a refused bomb ever holds at once


def _temp_path(p: Path) -> Path:
    """A hidden temporary name beside ``p`` that keeps ``p``'s suffixes (``.keras``,
    ``.weights.h5``, ``.tif``), since some writers pick the format from the name.

    pid + thread: concurrent writers of the same file (threads of one worker) never share it.
    """
    stem, dot, suffixes = p.name.partition(".")
    return p.with_name(f".{stem}.{os.getpid()}.{threading.get_ident()}.tmp{dot}{suffixes}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path for a writer that wants a file name; renamed to ``path`` when the block
    ends without an exception, removed otherwise.

    Example: ``with atomic_path(out / "x.keras") as tmp: model.save(tmp)``.
    """
    p = Path(path)
    tmp = _temp_path(p)
    try:
        yield tmp
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; return the path."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(raw)
    return Path(path)


def write_output(path: str | os.PathLike[str] | SlideURL, data: bytes | str) -> None:
    """Write an output file atomically, on local disk (:func:`write_atomic`) or as one object
    in a store (a PUT is atomic: the object appears whole or not at all)."""
    if not isinstance(path, SlideURL):
        write_atomic(path, data)
        return
    from wsi_seg.stages.result_store import put_bytes  # fsspec only where a store is used

    put_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)


def read_output_text(path: Path | SlideURL) -> str | None:
    """An output file's text (a report, a stamp), or None when it does not exist; from a
    store, asked of the store itself (never a cached listing).

    Raises:
        OSError: a local file that exists but cannot be read.
    """
    if not isinstance(path, SlideURL):
        if not path.is_file():
            return None
        return path.read_text(encoding="utf-8")
    from wsi_seg.stages.result_store import read_bytes

    raw = read_bytes(path)
    return None if raw is None else raw.decode("utf-8", errors="replace")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path | SlideURL):
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
    return write_atomic(path, json_text(obj))


def json_text(obj: Any) -> str:
    """``obj`` as the indented JSON :func:`write_json_atomic` writes."""
    return json.dumps(obj, indent=2, default=_json_default) + "\n"


def nested_json_text(obj: Any, depth: int) -> str:
    """``obj`` as :func:`json_text` writes it ``depth`` containers deep inside a larger
    document (its lines after the first indented to match, no final newline): a part that can
    be serialised once and spliced into that document's text as often as it is rewritten.
    JSON strings hold no raw newline, so every newline is a line of the layout."""
    return json.dumps(obj, indent=2, default=_json_default).replace("\n", "\n" + "  " * depth)


def write_json_output(path: str | os.PathLike[str] | SlideURL, obj: Any) -> None:
    """:func:`write_json_atomic`, to local disk or a store (:func:`write_output`)."""
    write_output(path, json_text(obj))


# ------------------------------------------------------------------------------- reading

def size_text(n_bytes: int) -> str:
    """``n_bytes`` for a message: ``"1.0 GiB"``, ``"64 MiB"``, ``"512 bytes"``."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n_bytes >= size:
            return f"{n_bytes / size:.3g} {unit}"
    return f"{n_bytes} bytes"


def check_regular(path: str | os.PathLike[str], error: type[WsiSegError] = WsiSegError,
                  what: str = "file") -> Path:
    """``path`` if it is a regular file (or a link to one), else one line: a FIFO, socket or
    device would block or never end when opened and read, a folder is not a file."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise error(f"no such {what}", p) from None
    except OSError as exc:
        raise error(f"cannot read {what} ({exc.strerror or exc})", p) from None
    if stat.S_ISDIR(mode):
        raise error(f"{what} is a folder, not a file", p)
    if not stat.S_ISREG(mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket"
                if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or
                stat.S_ISBLK(mode) else "not a regular file")
        raise error(f"{what} is {kind}, not a regular file", p)
    return p


def read_capped(path: str | os.PathLike[str], max_bytes: int,
                error: type[WsiSegError] = WsiSegError, what: str = "file") -> bytes:
    """The bytes of ``path``, refusing a file of more than ``max_bytes`` bytes.

    The size is checked before reading and again while reading (a file can grow, or be a pipe
    whose size ``stat`` does not know), so at most ``max_bytes + 1`` bytes are ever held.

    Raises:
        error: the file is too large or cannot be read (one line naming the file).
    """
    p = check_regular(path, error, what)
    try:
        with open(p, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > max_bytes:
                raise error(f"{what} is {size_text(size)}, more than the "
                            f"{size_text(max_bytes)} allowed", p)
            # Ask for what stat says (+1 to see growth): read(max_bytes + 1) allocates that
            # much up front, 256 MiB for every small annotation file.
            raw = fh.read(size + 1)
            if len(raw) > size:  # grew, or a size stat does not know: read on to the cap
                raw += fh.read(max_bytes + 1 - len(raw))
    except OSError as exc:
        raise error(f"cannot read {what} ({exc.strerror or exc})", p) from None
    if len(raw) > max_bytes:
        raise error(f"{what} is more than the {size_text(max_bytes)} allowed", p)
    return raw


def _inflated_size(path: Path, max_bytes: int) -> int:
    """Bytes a gzip file inflates to, counting up to ``max_bytes + 1`` (then stopping) and
    keeping nothing: memory stays one chunk whatever the file holds."""
    total = 0
    with gzip.open(path, "rb") as fh:
        while total <= max_bytes:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            total += len(chunk)
    return total


def gunzip_capped(path: str | os.PathLike[str], max_bytes: int,
                  error: type[WsiSegError] = WsiSegError, what: str = "file") -> bytes:
    """The inflated content of a gzip file (every member), refusing more than ``max_bytes``.

    The file is inflated twice: first only counting, so a bomb is refused having held one
    1 MiB chunk, never its output; then for real. Inflating is fast (hundreds of MB/s), so the
    second pass costs little next to parsing what it returns.

    Raises:
        error: it inflates to more than ``max_bytes``, or is truncated or corrupt.
    """
    p = Path(path)
    try:
        if _inflated_size(p, max_bytes) > max_bytes:
            raise error(f"{what} inflates to more than the {size_text(max_bytes)} allowed "
                        "(refused unread: a decompression bomb, or far larger than any "
                        f"real {what})", p)
        with gzip.open(p, "rb") as fh:
            return fh.read(max_bytes + 1)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise error(f"truncated or corrupt gzip: {exc or type(exc).__name__}", p) from None
    except OSError as exc:
        raise error(f"cannot read {what} ({exc.strerror or exc})", p) from None


def decode_json(raw: bytes | str, path: str | Path | None = None,
                error: type[WsiSegError] = WsiSegError, what: str = "JSON") -> Any:
    """Parse JSON text, turning every failure into one ``error`` line naming ``path``.

    ``json.loads`` raises RecursionError, not a parse error, on input nested deeper than
    Python's recursion limit (``"[" * 100000`` is 100 kB): that is bad input too.
    """
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise error(f"malformed {what}: {exc.msg} at line {exc.lineno} column {exc.colno}",
                    path) from None
    except UnicodeDecodeError:
        raise error(f"malformed {what}: not UTF-8 text", path) from None
    except RecursionError:
        raise error(f"malformed {what}: nested too deeply to parse", path) from None
