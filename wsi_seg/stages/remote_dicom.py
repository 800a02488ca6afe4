"""DICOM whole-slide images in an object store: wsidicom reads the series over fsspec.

A DICOM object (``s3://bucket/prefix/level0.dcm``) is one file of a series; its siblings under
the same prefix that share its ``SeriesInstanceUID`` are the rest (their headers are read
through :class:`wsi_seg.stages.object_store.RemoteReader`, a few blocks each). wsidicom then
opens the series by URL through fsspec (``upath``), with the same standard credentials. A
series wsidicom refuses (the lenient local reader's cases, e.g. no ImageType) is refused in
one line: copy it to local disk.
"""

from __future__ import annotations

from typing import Any

from wsi_seg.core.errors import SlideError
from wsi_seg.core.locations import SlideURL
from wsi_seg.stages.dicom_reader import (
    VOLUME,
    WSI_SOP_CLASS_UID,
    DicomSlide,
    _one_line,
    _open_wsidicom_files,
)
from wsi_seg.stages.object_store import RemoteFile, list_prefix

#: Sibling objects whose headers are read to find a series' other files.
MAX_SERIES_OBJECTS = 256


def _header(remote: RemoteFile) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(remote.open(), stop_before_pixels=True)
    except Exception as exc:
        raise SlideError(f"DICOM header is corrupt or truncated ({_one_line(exc)})",
                         str(remote.url)) from None


def one_per_series(urls: list[SlideURL]) -> list[SlideURL]:
    """``urls`` with each DICOM WSI series kept once, by its largest level (as a local folder
    of series counts each once); objects whose header does not read stay, to fail on open."""
    best: dict[str, tuple[int, SlideURL]] = {}
    kept: list[SlideURL] = []
    for url in urls:
        try:
            ds = _header(RemoteFile(url))
        except SlideError:
            kept.append(url)
            continue
        series = str(ds.get("SeriesInstanceUID", ""))
        if str(ds.get("SOPClassUID", "")) != WSI_SOP_CLASS_UID or not series:
            kept.append(url)
            continue
        width = int(ds.get("TotalPixelMatrixColumns", 0) or 0)
        if series not in best or width > best[series][0]:
            best[series] = (width, url)
    return sorted([*kept, *(u for _, u in best.values())])


def open_remote_dicom(remote: RemoteFile) -> DicomSlide:
    """The DICOM series of which ``remote`` is one file, read by wsidicom over fsspec.

    Raises:
        SlideError: not a WSI, broken, or a series wsidicom does not read (one line).
    """
    url = remote.url
    ds = _header(remote)
    sop = str(ds.get("SOPClassUID", ""))
    if sop != WSI_SOP_CLASS_UID:
        raise SlideError(f"a DICOM file but not a whole-slide image (SOP class {sop})",
                         str(url))
    series = str(ds.get("SeriesInstanceUID", ""))
    members: list[SlideURL] = [url]
    for entry in (list_prefix(url.parent) or [])[:MAX_SERIES_OBJECTS]:
        if entry.is_dir or entry.url == url or entry.url.suffix.lower() != ".dcm":
            continue
        other = _header(RemoteFile(entry.url))
        if str(other.get("SeriesInstanceUID", "")) == series and \
                str(other.get("SOPClassUID", "")) == WSI_SOP_CLASS_UID:
            types = [str(v).upper() for v in (other.get("ImageType") or ())]
            if len(types) < 3 or types[2] == VOLUME or types[2] in ("LABEL", "OVERVIEW",
                                                                      "THUMBNAIL"):
                members.append(entry.url)
    try:
        return _open_wsidicom_files(url, [m.url for m in members])
    except SlideError:
        raise
    except Exception as exc:
        raise SlideError(f"DICOM whole-slide image wsidicom cannot read from object storage "
                         f"({_one_line(exc)}); copy it to local disk", str(url)) from None
