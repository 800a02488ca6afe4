"""Progress over tiles: a bar on a terminal, a plain line now and then anywhere else.

A log file or CI console fed carriage-return frames fills with thousands of half-lines; when
stderr is not a terminal, :class:`Progress` prints one plain line every ``interval_s`` seconds
(and one at the end) instead.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def duration(seconds: float) -> str:
    """``95`` -> ``1 min 35 s``; ``4000`` -> ``1 h 07 min``."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Progress:
    """Tiles done out of ``total``, shown as the stream allows (see the module docstring).

    Args:
        total: tiles to do.
        desc: what is counted (``all slides``, a slide's name).
        enabled: False shows nothing (``--quiet``).
        bar_only: show this one only as a terminal bar (per-slide bars), never as lines.
        interval_s: seconds between plain lines.
    """

    def __init__(self, total: int, desc: str, enabled: bool = True, bar_only: bool = False,
                 interval_s: float = 30.0, stream: TextIO | None = None) -> None:
        self.total, self.desc, self.done = total, desc, 0
        self.stream = stream or sys.stderr
        self.t0 = self.last = time.perf_counter()
        self.interval_s = interval_s
        self._bar: Any = None
        self._lines = False
        if not enabled:
            return
        if is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="tile", desc=desc, smoothing=0.1,
                             dynamic_ncols=True, leave=not bar_only, file=self.stream)
        else:
            self._lines = not bar_only

    def add_total(self, n: int) -> None:
        """``n`` more tiles to do (a slide prepared while the run goes)."""
        self.total += n
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._lines and time.perf_counter() - self.last >= self.interval_s:
            self._line()

    def _line(self) -> None:
        now = time.perf_counter()
        self.last = now
        rate = self.done / (now - self.t0) if now > self.t0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        left = (f", about {duration((self.total - self.done) / rate)} left"
                if rate > 0 and self.done < self.total else "")
        print(f"progress ({self.desc}): {self.done:,} / {self.total:,} tiles ({pct:.1f} %), "
              f"{rate:.1f} tiles/s{left}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._lines and self.done:
            self._line()
            self._lines = False


def write(text: str, err: bool = False) -> None:
    """Print a line without breaking a bar on the terminal."""
    stream = sys.stderr if err else sys.stdout
    if is_terminal(sys.stderr):
        from tqdm import tqdm

        tqdm.write(text, file=stream)
    else:
        print(text, file=stream, flush=True)
