"""Names derived from slide files: stems, output folders, truth files, identities. One place.

* A slide's **stem** is its file name without the last suffix: ``TCGA-A1.01.svs`` ->
  ``TCGA-A1.01``, ``a.ome.tif`` -> ``a.ome``. Synthetic truth, truth lookup, outputs and
  summaries all use this one rule.
* A slide's **output name** (its folder under ``OUT``) is its stem, unless another slide of the
  same run has the same stem: then it is the file name (``case1.svs``, ``case1.tif``), and if
  file names collide too (``a/x.svs``, ``b/x.svs``), the file name prefixed with as many parent
  folders as it takes, joined by ``__`` (``a__x.svs``). Names are compared without case (some
  file systems ignore it), so ``A.svs`` and ``a.svs`` of one folder, which no folder tells
  apart, each get a short hash of their exact file name (``A.svs-1f2a3b4c``). So every slide of
  a run has its own folder, and the same run always gets the same names.
* A slide's **identity** (size, modification time and a hash of its first 256 KiB, where every
  format keeps its header and directory) tells a resumed run whether the file it worked on is
  still the same file.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from wsi_seg.core.errors import WsiSegError
from wsi_seg.core.files import check_regular
from wsi_seg.core.locations import SlideLocation, SlideURL

#: Truth files looked for beside a slide name, in order (``{stem}`` and ``{name}`` expand).
#: A slide's report in its output folder (written last: its presence means finished).
REPORT = "report.json"
TRUTH_PATTERNS = ("{stem}.tumor.geojson", "{stem}.geojson", "{stem}.json", "{stem}.xml",
                  "{stem}.geojson.gz")
IDENTITY_HEAD_BYTES = 256 * 1024


def slide_stem(path: str | os.PathLike[str] | SlideURL) -> str:
    """The file name without its last suffix (the whole name when it has none)."""
    p = path if isinstance(path, SlideURL) else Path(path)
    return p.name[: -len(p.suffix)] if p.suffix else p.name


def output_names(paths: Sequence[SlideLocation]) -> dict[SlideLocation, str]:
    """A distinct output folder name for each slide path (see the module docstring)."""
    names = {p: slide_stem(p) for p in paths}
    deepest = max((len(p.resolve().parts) for p in paths), default=0)
    for depth in range(deepest):
        clashes = _clashing(names)
        if not clashes:
            return names
        for p in clashes:  # the file name, then with 1, 2, ... parent folders before it
            folders = list(p.resolve().parts[1:-1])
            names[p] = "__".join([*(folders[len(folders) - depth :] if depth else []), p.name])
    # Still equal without case, with every folder: names that differ in case alone.
    for p in _clashing(names):
        digest = hashlib.sha256(p.name.encode("utf-8", "surrogateescape")).hexdigest()
        names[p] = f"{p.name}-{digest[:8]}"
    twice = _clashing(names)
    if twice:
        raise WsiSegError("the same slide file is given more than once", twice[0])
    return names


def _clashing(names: dict[SlideLocation, str]) -> list[SlideLocation]:
    by_name: dict[str, list[SlideLocation]] = defaultdict(list)
    for p, n in names.items():
        by_name[n.casefold()].append(p)  # case-insensitive file systems exist
    return [p for group in by_name.values() if len(group) > 1 for p in group]


def truth_candidates(folder: Path, slide_path: SlideLocation, output_name: str | None = None,
                     patterns: Sequence[str] = TRUTH_PATTERNS) -> list[Path]:
    """Where a slide's truth may be in ``folder``, in the order to try: each pattern for the
    slide's output name first (it tells same-stem slides apart), then for its stem."""
    stems = [s for s in dict.fromkeys([output_name, slide_stem(slide_path)]) if s]
    return [folder / pat.format(stem=stem, name=slide_path.name)
            for stem in stems for pat in patterns]


def slide_identity(path: SlideLocation) -> dict[str, object]:
    """Size, modification time and a hash of the head of a slide file; of a slide that is a
    folder (a DICOM series), the total size, latest time and a hash of each file's name and
    head; of an object in a store, its size, last-modified time, ETag and head."""
    if isinstance(path, SlideURL):
        return _object_identity(path)
    if path.is_dir():
        return _folder_identity(path)
    st = check_regular(path, WsiSegError, "slide").stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(IDENTITY_HEAD_BYTES))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "head_sha256": h.hexdigest()[:32]}


def _object_identity(url: SlideURL) -> dict[str, object]:
    """A stored object's identity: the same keys as a file's, plus its ETag (the store's
    own version stamp; an overwritten object gets a new one even at the same size)."""
    from wsi_seg.stages.object_store import RemoteFile

    remote = RemoteFile(url)
    modified = remote.mtime
    mtime_ns = int(modified.timestamp() * 1e9) if hasattr(modified, "timestamp") else 0
    head = remote.read(0, IDENTITY_HEAD_BYTES)
    return {"size": remote.size_bytes, "mtime_ns": mtime_ns, "etag": remote.etag,
            "head_sha256": hashlib.sha256(head).hexdigest()[:32]}


def _folder_identity(folder: Path) -> dict[str, object]:
    files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
    h = hashlib.sha256()
    size = mtime_ns = 0
    # The head of each file: a series' files are small headers over large pixel data, and a
    # changed file changes its header (its SOP instance UID) or its size.
    per_file = max(4096, IDENTITY_HEAD_BYTES // max(1, len(files)))
    for f in files:
        st = f.stat()
        size, mtime_ns = size + st.st_size, max(mtime_ns, st.st_mtime_ns)
        h.update(f.name.encode("utf-8", "surrogateescape") + b"\0")
        with open(f, "rb") as fh:
            h.update(fh.read(per_file))
    return {"size": size, "mtime_ns": mtime_ns, "head_sha256": h.hexdigest()[:32]}


def truth_pattern_problem(value: str) -> str | None:
    """What is wrong with a truth file pattern, or None: it names one file in the truth folder,
    with a placeholder and no folders."""
    if "{stem}" not in value and "{name}" not in value:
        return "must contain {stem} or {name}"
    if "/" in value or "\\" in value:
        return "must be a file name, without folders"
    try:
        value.format(stem="s", name="s.svs")
    except (KeyError, IndexError, ValueError):
        return "may hold only the placeholders {stem} and {name} (write {{ and }} for braces)"
    return None


def class_map_problem(value: str) -> str | None:
    """What is wrong with a ``TRUTH_CLASS=MODEL_CLASS`` entry, or None."""
    try:
        class_map_entry(value)
    except ValueError:
        return "must read TRUTH_CLASS=MODEL_CLASS"
    return None


def not_blank(value: str) -> str | None:
    """A name that is not empty or only spaces."""
    return "must not be empty" if not value.strip() else None


def class_map_entry(text: str) -> tuple[str, str]:
    """``"Tumour epithelium=Tumor"`` as ``(truth class, model class)``, stripped; ValueError
    naming the entry when it is not ``TRUTH_CLASS=MODEL_CLASS``."""
    truth_name, sep, model_name = text.partition("=")
    if not sep or not truth_name.strip() or not model_name.strip():
        raise ValueError(f"class map entry {text!r} must read TRUTH_CLASS=MODEL_CLASS")
    return truth_name.strip(), model_name.strip()
