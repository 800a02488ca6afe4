"""The one exception type users see, and the rule that keeps every message on one line.

Every error that comes from bad input carries a single line naming the file and the cause,
so the CLI can print it without a traceback and a directory run can record it and go on.
File names are user data: a slide named ``"a\\nwsi-seg: done"`` must not forge an output line,
and an escape sequence in a name must not drive the terminal, so names (and any text headed
for a terminal or a log) pass through :func:`printable` first.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

# user:password@ (or a bare user@) in a URL's authority.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s\"']*@")

_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: object) -> str:
    """``text`` with every character that is not printable escaped as Python's ``repr`` would
    write it (``\\n``, ``\\t``, ``\\x1b``, ``\\u2028``, ``\\udcff``); the space and all printable
    characters, accented or not, are kept. Idempotent on its own output (backslashes stay).

    Undecodable bytes in POSIX file names arrive as lone surrogates (``\\udcXX``), which a
    UTF-8 stream cannot even encode, so they are escaped too.
    """
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() or c == " " else _escape(c) for c in s)


def hide_userinfo(text: str) -> str:
    """``text`` with any URL's ``user:password@`` shown as ``***@``: a message may quote an
    endpoint, never a password written into one.

    >>> hide_userinfo('cannot list it: "http://me:pw@host:9000/x"')
    'cannot list it: "http://***@host:9000/x"'
    """
    return _USERINFO.sub(r"\g<scheme>***@", text)


class WsiSegError(Exception):
    """A user-facing error: one line, naming the file (when there is one) and the cause.

    ``path`` keeps the real path; the message shows it, and the cause, through
    :func:`printable`. ``exit_status`` is what the command line exits with: 2 for bad input
    refused before any work.
    """

    exit_status = 2

    def __init__(self, cause: str, path: str | os.PathLike[str] | Any | None = None) -> None:
        # A local path as a Path; a slide URL (wsi_seg.core.locations.SlideURL) as itself.
        self.path: Any = (None if path is None else Path(path)
                          if isinstance(path, str | os.PathLike) else path)
        # One line, whatever the cause text held (a library's multi-line message, a name).
        # And never a password written into a URL (an endpoint a library echoes).
        self.cause = printable(hide_userinfo(" ".join(str(cause).split())))
        super().__init__(self.cause if path is None else f"{printable(path)}: {self.cause}")


class RunStopped(WsiSegError):
    """A run stopped partway (its output folder deleted or made read-only under it): some
    work was done and kept, so the command exits 1, as for a run whose slides failed."""

    exit_status = 1


class SlideError(WsiSegError):
    """A slide cannot be opened or read at the requested resolution."""


class NoTissueError(WsiSegError):
    """A slide has no tissue to process."""


class ModelError(WsiSegError):
    """A model file or its card is missing, unsafe or inconsistent."""


class AnnotationError(WsiSegError):
    """A ground-truth or annotation file cannot be parsed or does not fit the slide."""
