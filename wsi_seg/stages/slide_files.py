"""File checks of :mod:`wsi_seg.stages.slide`: finding slide files, the MPP a slide states,
why a TIFF-looking file is damaged, and what OpenSlide tells of a slide without its MPP.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import openslide
import tifffile

from wsi_seg.core.errors import SlideError
from wsi_seg.core.files import check_regular
from wsi_seg.core.locations import SlideLocation, SlideURL, slide_location
from wsi_seg.stages.dicom_reader import is_dicom, is_dicom_folder, open_dicom_series, series_in

#: Plausible microscope resolutions, micrometres per pixel (1000x oil to 0.5x overview).
MPP_RANGE_UM = (0.05, 20.0)

def check_mpp(mpp: float, path: str | Path | SlideURL, what: str = "MPP") -> float:
    """Return ``mpp`` if it is a plausible microscope resolution, else raise SlideError."""
    lo, hi = MPP_RANGE_UM
    if not (math.isfinite(mpp) and lo <= mpp <= hi):
        raise SlideError(
            f"{what} {mpp:g} µm/px is outside the plausible range {lo:g}-{hi:g} µm/px; "
            "pass the right value with --mpp",
            path,
        )
    return mpp


def mpp_from_properties(props: Mapping[str, str]) -> float | None:
    values = []
    for key in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y):
        raw = props.get(key)
        if raw is None:
            continue
        try:
            values.append(float(raw))
        except ValueError:
            continue
    if not values:
        return None
    # Non-square pixels are rare; the mean keeps areas right to first order.
    return sum(values) / len(values)


class MissingMppError(SlideError):
    """The slide opens but says nothing of its resolution (``--mpp`` supplies it)."""


def describe_file(path: str | os.PathLike[str] | SlideURL) -> dict[str, object]:
    """What OpenSlide tells of a slide without knowing its µm/px: vendor, level sizes and
    downsamples, associated images (for describing slides :func:`open_slide` refuses for want
    of an MPP)."""
    p = slide_location(path)
    try:
        opened: openslide.AbstractSlide
        if isinstance(p, SlideURL):
            from wsi_seg.stages.remote_slide import open_remote

            opened = open_remote(p)
        else:
            opened = (open_dicom_series(p) if p.is_dir() or is_dicom(p)
                      else openslide.OpenSlide(str(p)))
        with opened as osr:
            return {
                "path": str(p),
                "vendor": osr.properties.get(openslide.PROPERTY_NAME_VENDOR, "unknown"),
                "dimensions_px": list(osr.dimensions),
                "levels": [{"level": i, "size_px": list(osr.level_dimensions[i]),
                            "downsample": round(osr.level_downsamples[i], 4), "mpp": None}
                           for i in range(osr.level_count)],
                "mpp": None,
                "associated_images": sorted(osr.associated_images),
            }
    except openslide.OpenSlideError as exc:
        raise SlideError(f"OpenSlide cannot open it ({exc})", p) from None


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def tiff_damage(p: Path) -> str | None:
    """Why a TIFF-looking file is not a slide, when the cause is truncation; else None.

    A truncated SVS loses its later pyramid directories, so OpenSlide no longer recognises
    the vendor and would report "not a slide"; naming the truncation is the useful answer.
    """
    with open(p, "rb") as f:
        if f.read(4) not in _TIFF_MAGIC:
            return None
    size = p.stat().st_size
    lost: list[str] = []

    class _Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lost.append(record.getMessage())

    log = logging.getLogger("tifffile")
    handler, propagate = _Catch(logging.WARNING), log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        with tifffile.TiffFile(p) as tif:
            # By index, a bounded number: iterating tif.pages over a directory chain that
            # loops back on itself never ends (tifffile counts the pages right, then its
            # iterator walks the loop).
            pages = [tif.pages[i] for i in range(min(len(tif.pages), MAX_TIFF_PAGES))]
            end = max((int(o) + int(n) for page in pages
                       for o, n in zip(getattr(page, "dataoffsets", ()),
                                       getattr(page, "databytecounts", ()), strict=False)),
                      default=0)
    except Exception:  # any parse failure of a TIFF header is damage
        return "TIFF structure is corrupt or truncated"
    finally:
        log.removeHandler(handler)
        log.propagate = propagate
    if any("circular reference" in m for m in lost):
        return "TIFF directory chain loops back on itself (the file is corrupt)"
    if end > size:
        return f"file is truncated: its image data runs to byte {end} but the file has {size}"
    if any("offset" in m for m in lost):
        return "file is truncated or corrupt: a TIFF directory points past the end of the file"
    return None


#: Directories a TIFF's damage check looks at (a slide's pyramid has a few dozen at most).
MAX_TIFF_PAGES = 4096

#: File suffixes taken as slides when a directory is given (OpenSlide's formats + plain TIFF).
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide",
                  ".bif", ".dcm")


def find_slides(paths: Sequence[str | os.PathLike[str] | SlideURL]) -> list[SlideLocation]:
    """Expand files and directories into a sorted, de-duplicated list of slide paths.

    Directories are searched (not recursively) for :data:`SLIDE_SUFFIXES` and DICOM files;
    files are taken as given, whatever their suffix, so their own errors surface when they
    are opened. A DICOM series is one slide (:func:`_collapse_dicom`): a folder that holds
    one series, given or inside a given folder, is the slide itself; the files of a series
    among other slides are represented by its largest level.

    An ``s3://`` URL is a prefix or an object in a store (:func:`_find_in_store`); the store
    is listed first, so a wrong credential or endpoint fails here, before any work.

    Raises:
        SlideError: a path does not exist, or a directory holds no slides.
    """
    found: list[SlideLocation] = []
    for raw in paths:
        loc = slide_location(raw)
        if isinstance(loc, SlideURL):
            found.extend(_find_in_store(loc))
            continue
        p = loc
        if p.is_dir():
            children = sorted(c for c in p.iterdir() if not c.name.startswith("."))
            inside = [c for c in children if c.is_file() and (
                c.suffix.lower() in SLIDE_SUFFIXES or (c.suffix == "" and is_dicom(c)))]
            inside = _collapse_dicom(p, inside)
            if inside != [p]:
                # Archives keep a series per folder: one level down, such a folder is a slide.
                inside += [c for c in children if c.is_dir() and is_dicom_folder(c)]
            if not inside:
                raise SlideError(
                    f"no slides found (looked for {', '.join(SLIDE_SUFFIXES)} and DICOM "
                    "series folders)", p)
            found.extend(sorted(inside))
        elif p.exists():
            found.append(check_regular(p, SlideError, "slide"))
        else:
            raise SlideError("no such file or directory", p)
    seen: set[SlideLocation] = set()
    unique: list[SlideLocation] = []
    for loc in found:
        key = loc.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(loc)
    return unique


def _find_in_store(url: SlideURL) -> list[SlideLocation]:
    """The slides at ``url``: the object itself, or the objects directly under the prefix
    whose suffix is one of :data:`SLIDE_SUFFIXES` (a store has no cheap magic-number check,
    so files without a suffix are not looked into).

    Raises:
        SlideError: the store refuses the listing (credentials, endpoint, bucket), nothing is
            at ``url``, or the prefix holds no slides (one line).
    """
    from wsi_seg.stages.object_store import check_access, list_prefix

    check_access(url)
    entries = list_prefix(url)
    if entries is None:
        return [url]
    inside: list[SlideLocation] = [e.url for e in entries if not e.is_dir
                                   and not e.url.name.startswith(".")
                                   and e.url.suffix.lower() in SLIDE_SUFFIXES]
    if not inside:
        raise SlideError(f"no slides found (looked for {', '.join(SLIDE_SUFFIXES)})", str(url))
    dicom = [u for u in inside if isinstance(u, SlideURL) and u.suffix.lower() == ".dcm"]
    if len(dicom) > 1:  # a series' objects are one slide
        from wsi_seg.stages.remote_dicom import one_per_series

        others = [u for u in inside if u not in dicom]
        inside = sorted([*others, *one_per_series(dicom)], key=str)
    return inside


def _collapse_dicom(folder: Path, files: list[Path]) -> list[Path]:
    """``files`` of ``folder`` with each DICOM WSI series counted once: ``[folder]`` when the
    files are one series and nothing else, else the series' level-0 file in place of its
    files. DICOM files that are not WSIs, or broken, stay (their error shows on open)."""
    dicom = [f for f in files if is_dicom(f)]
    if not dicom:
        return files
    series, others = series_in(dicom)
    if len(series) == 1 and len(dicom) == len(files) and not others:
        return [folder]
    dicom_set = set(dicom)
    kept = [f for f in files if f not in dicom_set] + others
    kept += [headers[0].path for headers in series.values()]
    return sorted(kept)


#: The largest slide list read (``--slides``): a million 200-character lines.
MAX_SLIDE_LIST_BYTES = 200 << 20


def read_slide_list(path: str | os.PathLike[str]) -> list[SlideLocation]:
    """The slides a list file names (``wsi-seg run --slides LIST``), for cohorts that are not
    one folder: one local path or ``s3://`` URL per line; blank lines and lines starting
    with ``#`` are skipped; a relative path is relative to the list's folder (a list works
    from any working directory). Entries are slides as given, not searched: one that is
    missing or unreadable fails alone when the run opens it, as a bad slide of a folder does.

    Raises:
        SlideError: the list cannot be read, is not UTF-8 text, or names no slide (one line).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "list.txt").write_text("# cohort A\\na.svs\\n\\n/data/b.svs\\ns3://bucket/c.svs\\n")
    >>> [str(s) for s in read_slide_list(d / "list.txt")] == [
    ...     str(d / "a.svs"), "/data/b.svs", "s3://bucket/c.svs"]
    True
    """
    from wsi_seg.core.files import read_capped

    p = Path(path)
    raw = read_capped(p, MAX_SLIDE_LIST_BYTES, SlideError, "slide list")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SlideError(f"slide list is not UTF-8 text (byte {exc.start})", p) from None
    out: list[SlideLocation] = []
    seen: set[str] = set()
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        loc = slide_location(entry)
        if isinstance(loc, Path) and not loc.is_absolute():
            loc = p.parent / loc
        if str(loc) not in seen:  # a cohort list may repeat a slide: it is run once
            seen.add(str(loc))
            out.append(loc)
    if not out:
        raise SlideError("slide list names no slide (one path or s3:// URL per line)", p)
    return out
