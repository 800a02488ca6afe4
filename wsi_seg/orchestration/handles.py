"""A worker process's open slides, shared by its task threads (a per-process cache)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from wsi_seg.core.locations import SlideLocation
from wsi_seg.stages.slide import Slide, open_slide

#: Idle slide handles a worker process keeps open (a handle in use is never closed).
OPEN_SLIDES = 8


class _SlideHandles:
    """Open slides of this process, shared by its task threads (OpenSlide handles are
    thread-safe). A handle is counted while a task holds it; only idle handles are closed, the
    least recently used first, when more than :data:`OPEN_SLIDES` are open."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, float | None], Slide] = {}
        self._users: dict[tuple[str, float | None], int] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, path: SlideLocation, mpp: float | None) -> Iterator[Slide]:
        """The slide at ``path`` (``mpp``: level-0 µm/px override), opened once per process
        and kept open while any task holds it."""
        key = (str(path), mpp)
        with self._lock:
            slide = self._open.pop(key, None)
            if slide is None:
                slide = open_slide(path, mpp=mpp)
            self._open[key] = slide  # re-inserted: most recently used last
            self._users[key] = self._users.get(key, 0) + 1
            self._close_idle()
        try:
            yield slide
        finally:
            with self._lock:
                self._users[key] -= 1
                if not self._users[key]:
                    del self._users[key]
                self._close_idle()

    def _close_idle(self) -> None:
        excess = len(self._open) - OPEN_SLIDES
        for key in [k for k in self._open if k not in self._users][:max(0, excess)]:
            self._open.pop(key).close()

    def is_open(self, path: SlideLocation, mpp: float | None) -> bool:
        with self._lock:
            return (str(path), mpp) in self._open


slide_handles = _SlideHandles()
