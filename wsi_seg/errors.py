"""The one exception type users see.

Every error that comes from bad input carries a single line naming the file and the cause,
so the CLI can print it without a traceback and a directory run can record it and go on.
"""

from __future__ import annotations

from pathlib import Path


class WsiSegError(Exception):
    """A user-facing error: one line, naming the file (when there is one) and the cause."""

    def __init__(self, cause: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.cause = " ".join(str(cause).split())  # one line, whatever the cause text held
        super().__init__(self.cause if path is None else f"{path}: {self.cause}")


class SlideError(WsiSegError):
    """A slide cannot be opened or read at the requested resolution."""


class NoTissueError(WsiSegError):
    """A slide has no tissue to process."""


class ModelError(WsiSegError):
    """A model file or its card is missing, unsafe or inconsistent."""


class AnnotationError(WsiSegError):
    """A ground-truth or annotation file cannot be parsed or does not fit the slide."""
