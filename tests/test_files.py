"""wsi_seg.core.files: atomic writes and reads with a ceiling."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from wsi_seg.core.errors import AnnotationError, WsiSegError
from wsi_seg.core.files import (
    atomic_path,
    decode_json,
    gunzip_capped,
    read_capped,
    size_text,
    write_atomic,
)


def test_atomic_path_keeps_every_suffix_and_renames(tmp_path: Path) -> None:
    """Keras wants `.keras` / `.weights.h5` at the end of the name it writes to."""
    final = tmp_path / "checkpoint.weights.h5"
    with atomic_path(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".checkpoint.")
        assert tmp.name.endswith(".tmp.weights.h5")
        tmp.write_bytes(b"new")
        assert not final.exists()  # nothing under the final name until the block ends
    assert final.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


def test_atomic_path_leaves_the_old_file_on_failure(tmp_path: Path) -> None:
    final = write_atomic(tmp_path / "report.json", "old")
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer died")
    assert final.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_read_capped(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_bytes(b"x" * 100)
    assert read_capped(path, 100) == b"x" * 100
    with pytest.raises(AnnotationError, match=r"a\.json: truth is 100 bytes, more than the 99 "
                                              r"bytes allowed"):
        read_capped(path, 99, AnnotationError, "truth")
    with pytest.raises(WsiSegError, match="missing: no such file"):
        read_capped(tmp_path / "missing", 10)
    with pytest.raises(WsiSegError, match="is a folder, not a file"):
        read_capped(tmp_path, 10)


def test_gunzip_capped(tmp_path: Path) -> None:
    path = tmp_path / "a.gz"
    path.write_bytes(gzip.compress(b"ab" * 1000) + gzip.compress(b"c"))  # two members
    assert gunzip_capped(path, 2001) == b"ab" * 1000 + b"c"
    with pytest.raises(WsiSegError, match=r"inflates to more than the 1\.95 KiB allowed"):
        gunzip_capped(path, 2000)
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(WsiSegError, match="truncated or corrupt gzip"):
        gunzip_capped(path, 10_000)


@pytest.mark.parametrize(("text", "said"), [
    ("[" * 100_000, "nested too deeply"),
    ("{nope", "malformed JSON: Expecting property name"),
    (b"\xff\xfe\xfa", "not UTF-8"),
])
def test_decode_json_errors_are_one_line(text: str | bytes, said: str) -> None:
    with pytest.raises(WsiSegError, match=said) as info:
        decode_json(text, Path("x.json"))
    assert "\n" not in str(info.value) and str(info.value).startswith("x.json: ")


def test_size_text() -> None:
    assert [size_text(n) for n in (512, 1536, 64 << 20, 1 << 30)] == [
        "512 bytes", "1.5 KiB", "64 MiB", "1 GiB"]
