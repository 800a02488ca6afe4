"""Slides read in place from an object store (``s3://``) through fsspec (s3fs).

* **Access** is checked once, before any work (:func:`check_access` lists the prefix): a wrong
  key, endpoint or bucket is one line naming the URL and the cause, never the credentials.
  Credentials and endpoints come from where every AWS tool looks (``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws/config`` /
  ``~/.aws/credentials``, ``AWS_ENDPOINT_URL``) and from fsspec's own configuration
  (``~/.config/fsspec/s3.json``, ``FSSPEC_S3_*`` variables); wsi-seg takes none on its
  command line, so none can reach ``run.json``. The run TOML's ``[storage]`` section
  (:class:`~wsi_seg.core.storage.StorageOptions`: endpoint, region, profile, anonymous; no
  credentials) is laid over fsspec's configuration by :func:`use_storage`, so every s3://
  filesystem of the process takes it: these reads, the results written, zarr's store and
  wsidicom's series alike.
* **Reads** are ranged: :class:`RemoteFile` fetches fixed blocks of :data:`BLOCK_BYTES` with
  one ranged GET per run of missing blocks, and keeps up to :data:`CACHE_BLOCKS` of them in
  fsspec's :class:`~fsspec.caching.BlockCache` (a slide's TIFF directories and tile tables are
  read once; neighbouring tiles share a block). Every byte fetched is counted
  (:func:`fetched`), which is how ``benchmarks/README.md`` measures reads against file size.
"""

from __future__ import annotations

import contextlib
import copy
import io
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from wsi_seg.core.errors import SlideError, WsiSegError
from wsi_seg.core.locations import SlideURL
from wsi_seg.core.storage import StorageOptions

#: Bytes fetched per block: about ten 512 px JPEG tiles, so a row of tissue tiles costs a few
#: requests while a tile in a sea of glass drags little glass along.
BLOCK_BYTES = 256 << 10
#: Blocks one open slide keeps (32 MiB: the size of the decoded-tile cache above it).
CACHE_BLOCKS = 128
#: Locks a file's blocks are striped over (reads of blocks in different stripes overlap).
LOCK_STRIPES = 16


class ObjectStoreError(SlideError):
    """The store cannot be reached, or refuses the credentials, or has no such bucket."""


# -- the [storage] options of this process ----------------------------------------------------
#: fsspec's own s3 configuration of this process before wsi-seg laid any options over it.
_fsspec_own: dict[str, Any] | None = None
_applied = StorageOptions()
_applied_lock = threading.Lock()


def apply_storage(options: StorageOptions) -> StorageOptions:
    """Make ``options`` (over fsspec's own configuration) the settings of every s3://
    filesystem this process builds from now on, whoever builds it (fsspec applies its
    configuration to each new instance, and caches instances by their settings). Returns the
    options applied before, so that a caller can put them back."""
    import fsspec.config

    global _fsspec_own, _applied
    with _applied_lock:
        if _fsspec_own is None:
            _fsspec_own = copy.deepcopy(dict(fsspec.config.conf.get("s3", {})))
        merged = {**_fsspec_own, **options.s3fs_kwargs()}
        if "client_kwargs" in options.s3fs_kwargs() and "client_kwargs" in _fsspec_own:
            merged["client_kwargs"] = {**_fsspec_own["client_kwargs"],
                                       **options.s3fs_kwargs()["client_kwargs"]}
        if merged:
            fsspec.config.conf["s3"] = merged
        else:
            fsspec.config.conf.pop("s3", None)
        before, _applied = _applied, options
    return before


@contextlib.contextmanager
def use_storage(options: StorageOptions) -> Iterator[None]:
    """``options`` applied (:func:`apply_storage`) within the block, then what was before.

    >>> from wsi_seg.core.storage import StorageOptions
    >>> with use_storage(StorageOptions(endpoint_url="http://127.0.0.1:9000")):
    ...     import fsspec.config; fsspec.config.conf["s3"]["endpoint_url"]
    'http://127.0.0.1:9000'
    """
    before = apply_storage(options)
    try:
        yield
    finally:
        apply_storage(before)


def applied_storage() -> StorageOptions:
    """The options this process's s3:// filesystems are built with now."""
    return _applied


def filesystem(url: SlideURL) -> Any:
    """The fsspec filesystem for ``url`` (one per process and protocol: fsspec caches it)."""
    import fsspec

    try:
        return fsspec.filesystem(url.scheme)
    except ImportError as exc:  # s3fs is a dependency; a trimmed install may lack it
        raise WsiSegError(f"cannot read {url.scheme}:// URLs ({exc})", str(url)) from None


def _cause(exc: BaseException) -> str:
    """A one-line cause for what the store said, without anything it echoed of the request
    (botocore's messages name the operation and the error code, never a key)."""
    code = ""
    response = getattr(exc, "response", None) or getattr(exc.__cause__, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    text = " ".join(str(exc).split()) or type(exc).__name__
    hints = {
        "InvalidAccessKeyId": "the access key is not known to the store (check "
                              "AWS_ACCESS_KEY_ID / AWS_PROFILE)",
        "SignatureDoesNotMatch": "the secret key does not match the access key (check "
                                 "AWS_SECRET_ACCESS_KEY / AWS_PROFILE)",
        "AccessDenied": "access denied (the credentials may not list or read it)",
        "NoSuchBucket": "no such bucket",
    }
    if code in hints:
        return hints[code]
    if isinstance(exc, PermissionError):
        return f"access denied ({text[:200]})"
    if isinstance(exc, FileNotFoundError):
        return "no such bucket or key"
    return text[:300]


def check_access(url: SlideURL) -> None:
    """List ``url``'s bucket prefix once, so that a wrong credential, endpoint or bucket fails
    in one line before any slide is opened.

    Raises:
        ObjectStoreError: naming the URL and the cause.
    """
    fs = filesystem(url)
    try:
        fs.ls(url.key_path if "/" in url.key_path else url.bucket, detail=False,
              refresh=True)
    except FileNotFoundError:
        # The key may be a file, not a prefix: ls of a missing prefix raises this too. The
        # bucket itself must be listable.
        try:
            fs.ls(url.bucket, detail=False, refresh=True)
        except Exception as exc:
            raise ObjectStoreError(f"cannot list the bucket: {_cause(exc)}", str(url)) \
                from None
    except Exception as exc:  # botocore/aiohttp raise anything from ClientError to OSError
        raise ObjectStoreError(f"cannot list it: {_cause(exc)}", str(url)) from None


def check_stores(urls: Iterable[SlideURL]) -> None:
    """:func:`check_access` once per bucket (the prefix of its first URL), for slides that
    are named, not listed (``--slides LIST``): a wrong credential or endpoint is one line
    before any slide is opened, not one failure per slide."""
    seen: set[str] = set()
    for url in urls:
        if url.bucket not in seen:
            seen.add(url.bucket)
            check_access(url.parent)


@dataclass(frozen=True)
class Entry:
    """One object or common prefix under a listed prefix."""

    url: SlideURL
    is_dir: bool
    size_bytes: int


def list_prefix(url: SlideURL) -> list[Entry] | None:
    """The objects and sub-prefixes directly under ``url``, sorted; None when ``url`` is an
    object (a file), not a prefix.

    Raises:
        ObjectStoreError: nothing at ``url``, or the store refuses (one line).
    """
    fs = filesystem(url)
    try:
        info = fs.info(url.key_path)
    except FileNotFoundError:
        raise ObjectStoreError("no such object or prefix", str(url)) from None
    except Exception as exc:
        raise ObjectStoreError(f"cannot read it: {_cause(exc)}", str(url)) from None
    if info.get("type") != "directory":
        return None
    try:
        listed = fs.ls(url.key_path, detail=True, refresh=True)
    except Exception as exc:
        raise ObjectStoreError(f"cannot list it: {_cause(exc)}", str(url)) from None
    out = [Entry(SlideURL(f"{url.scheme}://{d['name'].rstrip('/')}"),
                 d.get("type") == "directory", int(d.get("size") or 0)) for d in listed]
    return sorted((e for e in out if e.url != url), key=lambda e: e.url.url)


# -- ranged, cached reads ----------------------------------------------------------------------
@dataclass
class FetchCount:
    """Bytes and requests fetched from the store for one URL in this process."""

    bytes: int = 0
    requests: int = 0


_counts: dict[str, FetchCount] = {}
_counts_lock = threading.Lock()


def fetched(url: SlideURL | str) -> FetchCount:
    """What this process has fetched of ``url`` so far (a copy)."""
    with _counts_lock:
        c = _counts.get(str(url), FetchCount())
        return FetchCount(c.bytes, c.requests)


def reset_fetched() -> None:
    """Forget the counts (a benchmark measures one slide at a time)."""
    with _counts_lock:
        _counts.clear()


class RemoteFile:
    """An object read by byte ranges through fsspec's block cache. Thread-safe: a read is a
    pure function of (offset, count), with no shared file position."""

    def __init__(self, url: SlideURL, block_bytes: int = BLOCK_BYTES,
                 cache_blocks: int = CACHE_BLOCKS) -> None:
        from fsspec.caching import BlockCache

        self.url = url
        self._fs = filesystem(url)
        try:
            info = self._fs.info(url.key_path)
        except FileNotFoundError:
            raise SlideError("no such object", str(url)) from None
        except Exception as exc:
            raise ObjectStoreError(f"cannot read it: {_cause(exc)}", str(url)) from None
        if info.get("type") == "directory":
            raise SlideError("is a prefix (a folder), not a slide", str(url))
        self.size_bytes = int(info.get("size") or 0)
        #: the store's version stamp of the object (ETag), for a slide's identity
        self.etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
        self.mtime = info.get("LastModified")
        self._cache = BlockCache(block_bytes, self._fetch, self.size_bytes,
                                 maxblocks=cache_blocks)
        # Striped by block: threads reading different blocks fetch at once, two threads that
        # want the same missing block fetch it once.
        self._block_bytes = block_bytes
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]

    def _fetch(self, start: int, stop: int) -> bytes:
        """One ranged GET of ``[start, stop)``, counted."""
        try:
            data = bytes(self._fs.cat_file(self.url.key_path, start=start, end=stop))
        except Exception as exc:
            raise SlideError(f"cannot read bytes {start}-{stop} ({_cause(exc)})",
                             str(self.url)) from None
        with _counts_lock:
            c = _counts.setdefault(str(self.url), FetchCount())
            c.bytes += len(data)
            c.requests += 1
        return data

    def read(self, offset: int, count: int) -> bytes:
        """Bytes ``[offset, offset + count)`` (fewer at the end of the object)."""
        if count <= 0 or offset >= self.size_bytes:
            return b""
        stop = min(offset + count, self.size_bytes)
        stripes = sorted({b % LOCK_STRIPES for b in range(offset // self._block_bytes,
                                                          (stop - 1) // self._block_bytes + 1)})
        with contextlib.ExitStack() as held:
            for i in stripes:  # in ascending order: two readers never wait on each other
                held.enter_context(self._locks[i])
            return bytes(self._cache._fetch(offset, stop))

    def open(self) -> RemoteReader:
        """A file object over this object (its own position; for one thread's parser)."""
        return RemoteReader(self)


class RemoteReader(io.RawIOBase):
    """A seekable binary file over a :class:`RemoteFile` (tifffile and pydicom parse it)."""

    def __init__(self, remote: RemoteFile) -> None:
        super().__init__()
        self._remote = remote
        self._pos = 0
        self.name = str(remote.url)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._remote.size_bytes}
        self._pos = max(0, base[whence] + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._remote.read(self._pos, len(view))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self._remote.size_bytes - self._pos
        data = self._remote.read(self._pos, size)
        self._pos += len(data)
        return data


def iter_entries(url: SlideURL) -> Iterator[Entry]:
    """:func:`list_prefix` of a prefix (empty for an object)."""
    yield from list_prefix(url) or []
