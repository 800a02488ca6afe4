"""Where a slide lives: a local path or an object-store URL. The one rule, in one place.

A slide location is either a :class:`pathlib.Path` (local disk, exactly as before) or a
:class:`SlideURL` (``s3://bucket/key``: read in place through fsspec). :func:`slide_location`
turns what a user typed into one of the two; every other module asks ``isinstance(loc,
SlideURL)`` and nothing else, so no string check of a scheme is scattered about.

:class:`SlideURL` answers the few questions the pipeline asks of a path (``name``, ``suffix``,
``parent``, ``parts``, ``resolve()``) the way a path would, so naming, output folders and truth
lookup treat both alike. It deliberately has no ``__fspath__``: handing a URL to ``open()``
would make a local file named ``s3:``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from wsi_seg.core.errors import WsiSegError

#: Object-store schemes slides are read from (fsspec protocol names).
SLIDE_URL_SCHEMES = ("s3",)

# A scheme of two letters or more then ":/" (one slash is what pathlib leaves of "s3://"), so
# a Windows drive ("C:/") is never taken for one.
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+):/(?P<rest>.*)$")


@dataclass(frozen=True, order=True)
class SlideURL:
    """A slide (a file, or a prefix that holds slides) in an object store: ``s3://bucket/key``.

    ``url`` is normalised: no doubled slashes, no trailing slash (a prefix is ``s3://b/p``).
    """

    url: str

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0]

    @property
    def bucket(self) -> str:
        return self.key_path.split("/", 1)[0]

    @property
    def key_path(self) -> str:
        """``bucket/key`` without the scheme: what fsspec's filesystems take."""
        return self.url.split("://", 1)[1]

    @property
    def name(self) -> str:
        return PurePosixPath(self.key_path).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.key_path).suffix

    @property
    def stem(self) -> str:
        return PurePosixPath(self.key_path).stem

    @property
    def parent(self) -> SlideURL:
        return SlideURL(f"{self.scheme}://{PurePosixPath(self.key_path).parent}")

    @property
    def parts(self) -> tuple[str, ...]:
        """As :attr:`pathlib.Path.parts` of an absolute path: a root, then bucket and keys
        (naming tells same-named slides apart by their parent folders)."""
        return (f"{self.scheme}://", *PurePosixPath(self.key_path).parts)

    def resolve(self) -> SlideURL:
        """Itself: a URL is already absolute (``Path.resolve`` is how callers ask for that)."""
        return self

    def child(self, name: str) -> SlideURL:
        return SlideURL(f"{self.url}/{name}")

    def __truediv__(self, name: str) -> SlideURL:
        """``url / "name"`` as ``path / "name"``: output folders are joined the same way
        whether ``--out`` is a folder or a prefix in a store."""
        return self.child(name)

    def __str__(self) -> str:
        return self.url


#: A slide's location: a local path or an object-store URL.
SlideLocation = Path | SlideURL
#: Where outputs go (``--out``): a local folder, or a prefix in an object store.
OutputLocation = Path | SlideURL


def output_location(raw: str | os.PathLike[str] | SlideURL) -> OutputLocation:
    """``--out`` as a :data:`OutputLocation`: a URL of a store results may be written to
    (``s3://bucket/prefix``, also as a ``Path`` prints it), else the local folder unchanged.

    Raises:
        WsiSegError: a URL of another scheme, or without a bucket.
    """
    if isinstance(raw, Path) and url_scheme(str(raw)) is None:
        return raw  # the very object given: local runs are untouched
    scheme = url_scheme(os.fspath(raw) if not isinstance(raw, SlideURL) else raw.url)
    if scheme is not None and scheme not in SLIDE_URL_SCHEMES:
        raise WsiSegError(f"results are written to local folders and "
                          f"{', '.join(s + '://' for s in SLIDE_URL_SCHEMES)} URLs, "
                          f"not {scheme}://")
    return slide_location(raw)


def url_scheme(text: str) -> str | None:
    """The scheme of ``text`` when it reads as a URL (``s3://...``, or ``s3:/...`` as a
    ``Path`` prints it), else None."""
    m = _URL.match(text)
    return m.group("scheme").lower() if m else None


def slide_location(raw: str | os.PathLike[str] | SlideURL) -> SlideLocation:
    """What the user typed as a slide (or folder of slides), as a :data:`SlideLocation`.

    A ``str`` is read whole (``s3://`` and ``s3:///x`` name no bucket); a ``Path`` has
    already folded ``s3://`` into ``s3:``, a local name, so the command line hands its
    arguments over as text.

    Raises:
        WsiSegError: a URL of a scheme slides are not read from, or without a bucket.
    """
    if isinstance(raw, SlideURL):
        return raw
    text = os.fspath(raw)
    scheme = url_scheme(text)
    if scheme is None:
        # A Path stays the very object given (local behaviour unchanged); one whose text
        # reads as a URL (``Path("s3://b/k")`` prints ``s3:/b/k``) is taken for the URL.
        return raw if isinstance(raw, Path) else Path(text)
    if scheme not in SLIDE_URL_SCHEMES:
        raise WsiSegError(f"slides are read from {', '.join(s + '://' for s in SLIDE_URL_SCHEMES)}"
                          f" URLs and local paths, not {scheme}://", text)
    typed = _URL.match(text).group("rest")  # type: ignore[union-attr]
    rest = "/".join(p for p in typed.split("/") if p)
    # ``s3://`` and ``s3:///key``: the bucket, the first name after the two slashes, is
    # missing (``s3:/b/k``, one slash, is how a Path prints ``s3://b/k``: its bucket is b).
    if not rest or (typed.startswith("/") and not typed[1:].split("/", 1)[0]):
        raise WsiSegError(f"the URL names no bucket ({scheme}://BUCKET/KEY)", text)
    return SlideURL(f"{scheme}://{rest}")


def is_url(loc: SlideLocation) -> bool:
    """Whether a slide lives in an object store (read through fsspec, never OpenSlide)."""
    return isinstance(loc, SlideURL)
