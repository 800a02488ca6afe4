"""Results written to an object store (``--out s3://bucket/prefix``) through fsspec (s3fs).

An object store has no rename, so a slide's outputs cannot be published by renaming a
finished work folder as on local disk. Instead:

* **The work happens in place**: a slide's mosaic chunks, GeoJSON and overlay are written
  straight to ``OUT/NAME/`` (each PUT is atomic: an object appears whole or not at all), its
  block markers to ``OUT/NAME/blocks/`` and its configuration stamp to
  ``OUT/NAME/config.json`` (the same names as in a local work folder). Memory and disk stay
  bounded by one block, and workers that share no disk write through the store alone.
* **``report.json`` is the completion marker**: written last, after the work objects are
  removed; deleted first whenever the slide's prefix is cleared. Every reader of "finished"
  (resume, :func:`~wsi_seg.orchestration.job.finished_report`, the listing
  :func:`finished_names`) asks for it first and never from a cached listing, so a slide
  without it is never taken for finished, whatever else its prefix holds.
* **Locks are leases**: ``OUT/.NAME.lock.json`` created with a conditional PUT
  (``If-None-Match: *``), so of two runs that ask at once exactly one gets it. The holder
  renews it every :data:`LEASE_RENEW_S`; a lease not renewed for :data:`LEASE_TTL_S`, or held
  by a process of this host that no longer exists (killed with SIGKILL), is stale and is taken
  over with ``If-Match`` on its ETag (again exactly one taker wins).

Credentials come from where every AWS tool looks (see :mod:`wsi_seg.stages.object_store`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from wsi_seg.core.errors import WsiSegError
from wsi_seg.core.locations import SlideURL
from wsi_seg.stages.object_store import _cause, check_access, filesystem

#: A lease not renewed for this long is stale (its holder is gone or cut off).
LEASE_TTL_S = 120.0
#: How often a holder renews its lease (well inside the TTL: a slow store must not lose it).
LEASE_RENEW_S = 20.0
LOCK_SUFFIX = ".lock.json"


def put_bytes(url: SlideURL, data: bytes) -> None:
    """Write one object (a PUT: it appears whole or not at all, so no temporary is needed).

    Raises:
        WsiSegError: the store refuses, in one line naming the object.
    """
    fs = filesystem(url)
    try:
        fs.pipe_file(url.key_path, data)
    except Exception as exc:
        raise WsiSegError(f"cannot write it ({_cause(exc)})", str(url)) from None


def read_bytes(url: SlideURL) -> bytes | None:
    """The object's bytes, or None when there is none. A GET, never a cached listing: whether
    a marker exists must be asked of the store itself each time."""
    fs = filesystem(url)
    try:
        return bytes(fs.cat_file(url.key_path))
    except FileNotFoundError:
        return None


def _fresh_info(url: SlideURL) -> dict[str, Any] | None:
    """The object's info asked of the store, not of fsspec's cached listing; None when
    absent."""
    fs = filesystem(url)
    fs.invalidate_cache(url.key_path)
    try:
        return dict(fs.info(url.key_path))
    except FileNotFoundError:
        return None


def exists(url: SlideURL) -> bool:
    """Whether the object exists (asked of the store, not of a cached listing)."""
    info = _fresh_info(url)
    return info is not None and info.get("type") != "directory"


def stamp(url: SlideURL) -> tuple[str, int] | None:
    """The object's (ETag, size): what changes when it is rewritten; None when absent."""
    info = _fresh_info(url)
    return None if info is None else (str(info.get("ETag") or ""), int(info.get("size") or 0))


def delete(url: SlideURL) -> None:
    """Remove one object (nothing when it is absent)."""
    fs = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(url.key_path)
    fs.invalidate_cache(url.key_path)


def names_under(url: SlideURL) -> list[str]:
    """Names of the objects and sub-prefixes directly under ``url`` (none when absent)."""
    fs = filesystem(url)
    try:
        listed = fs.ls(url.key_path, detail=False, refresh=True)
    except FileNotFoundError:
        return []
    return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in listed)


def remove_tree(url: SlideURL) -> None:
    """Remove every object under ``url`` (batched deletes; nothing when there is none)."""
    fs = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(url.key_path, recursive=True)
    fs.invalidate_cache(url.key_path)


def clear_prefix(url: SlideURL, marker: str) -> None:
    """Remove everything under ``url``, its completion marker ``marker`` first: killed at any
    point after that, what is left is unfinished, never a finished slide missing parts."""
    delete(url / marker)
    remove_tree(url)


def finished_names(out: SlideURL, marker: str) -> list[str]:
    """The output folders under ``out`` that hold their completion marker: the listing of
    finished slides. The marker is asked of each, so a folder still being written (chunks,
    GeoJSON, overlay, but no marker yet) is never listed."""
    return [name for name in names_under(out)
            if not name.startswith(".") and exists(out / name / marker)]


def check_writable(out: SlideURL) -> None:
    """List the bucket and write then remove a probe object, so that wrong credentials, a
    missing bucket or a read-only key fail in one line before any work."""
    check_access(out)
    probe = out / f".wsi-seg-write-test-{os.getpid()}"
    try:
        put_bytes(probe, b"")
    except WsiSegError as exc:
        raise WsiSegError(f"output prefix is not writable: {exc}") from None
    delete(probe)


# -- leases -----------------------------------------------------------------------------------
def lease_url(out: SlideURL, name: str) -> SlideURL:
    """``OUT/.<name>.lock.json``: the lease on slide ``name``'s outputs."""
    return out / f".{name}{LOCK_SUFFIX}"


def _lease_body() -> bytes:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "renewed_unix_s": time.time()}).encode()


def _is_stale(data: dict[str, Any], now_unix_s: float) -> bool:
    """A lease whose holder is gone: a process of this host that no longer exists, or one not
    renewed for :data:`LEASE_TTL_S` (a holder on another host, killed or cut off)."""
    if data.get("host") == socket.gethostname():
        try:
            os.kill(int(data["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, TypeError, ValueError):
            pass  # alive (another user's), or unreadable: the age decides
    renewed = data.get("renewed_unix_s")
    return not isinstance(renewed, int | float) or now_unix_s - renewed > LEASE_TTL_S


def _precondition_failed(exc: BaseException) -> bool:
    """Whether the store refused a conditional PUT because its condition did not hold (412:
    the object exists, or changed). s3fs turns botocore's error into an OSError, keeping the
    original as its cause."""
    for err in (exc, exc.__cause__):
        response = getattr(err, "response", None)
        if isinstance(response, dict) and response.get("Error", {}).get("Code") in (
                "PreconditionFailed", "ConditionalRequestConflict", "412"):
            return True
    text = str(exc).lower()
    return "pre-condition" in text or "precondition" in text


def _conditional_put(url: SlideURL, body: bytes, **condition: str) -> str | None:
    """PUT under a condition (``IfNoneMatch="*"`` or ``IfMatch=etag``): the new ETag, or None
    when the condition failed (another run got there first)."""
    fs = filesystem(url)
    bucket, key = url.key_path.split("/", 1)
    try:
        out = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, **condition)
    except Exception as exc:
        if _precondition_failed(exc):
            return None
        raise WsiSegError(f"cannot write the lease ({_cause(exc)})", str(url)) from None
    return str(out.get("ETag", ""))


async def _get_with_etag(fs: Any, bucket: str, key: str) -> tuple[bytes, str]:
    """One GET: the body and the ETag of the very version read (a read then a HEAD could see
    two different versions)."""
    got = await fs._call_s3("get_object", Bucket=bucket, Key=key)
    body = await got["Body"].read()
    return bytes(body), str(got.get("ETag", ""))


def _read_lease(url: SlideURL) -> tuple[dict[str, Any], str] | None:
    """The lease's content and ETag (None: no lease, or it went meanwhile)."""
    from fsspec.asyn import sync

    fs = filesystem(url)
    bucket, key = url.key_path.split("/", 1)
    try:
        body, etag = sync(fs.loop, _get_with_etag, fs, bucket, key)
    except FileNotFoundError:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        data = {}
    return (data if isinstance(data, dict) else {}), etag


@dataclass
class StoreLease:
    """A held lease on one slide's outputs in a store, renewed by a daemon thread until
    :meth:`release` (or the process's end: then it goes stale)."""

    url: SlideURL
    etag: str
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start_renewing(self) -> None:
        self._thread = threading.Thread(target=self._renew, daemon=True,
                                        name=f"lease {self.url.name}")
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_RENEW_S):
            try:
                etag = _conditional_put(self.url, _lease_body(), IfMatch=self.etag)
            except WsiSegError:
                continue  # the store hiccuped: the next renewal tries again, within the TTL
            if etag is None:
                return  # taken over (we were stale): the new holder owns the slide now
            self.etag = etag

    def release(self) -> None:
        """Free the slide for other runs (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        held = _read_lease(self.url)
        if held is not None and held[1] == self.etag:  # still ours: never drop another's
            with contextlib.suppress(Exception):
                delete(self.url)


def try_lease(out: SlideURL, name: str) -> StoreLease | None:
    """Take slide ``name``'s lease without waiting: the held lease, or None when another live
    run holds it (see :func:`lease_holder`).

    Raises:
        WsiSegError: the store refuses the write (one line).
    """
    url = lease_url(out, name)
    etag = _conditional_put(url, _lease_body(), IfNoneMatch="*")
    if etag is None:
        held = _read_lease(url)
        if held is None:  # released meanwhile: ask once more
            etag = _conditional_put(url, _lease_body(), IfNoneMatch="*")
        elif _is_stale(held[0], time.time()):
            etag = _conditional_put(url, _lease_body(), IfMatch=held[1])
    if etag is None:
        return None
    lease = StoreLease(url, etag)
    lease.start_renewing()
    return lease


def lease_holder(out: SlideURL, name: str) -> str:
    """Who holds a slide's lease, in words (``process 123 on node7 since ...``); ``another
    run`` when that is unknown."""
    held = _read_lease(lease_url(out, name))
    try:
        assert held is not None
        data = held[0]
        return f"process {int(data['pid'])} on {data['host']} since {data['since']}"
    except (AssertionError, KeyError, TypeError, ValueError):
        return "another run"
