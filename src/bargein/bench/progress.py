"""A progress line for benchmark runs that take minutes of real time.

On a terminal it is one line redrawn in place (bar, count, elapsed, estimated time left,
the scenario under way); in a log or a CI job, where carriage returns make a mess, it is
one plain line per scenario.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 24


class Progress:
    """Counts finished scenarios out of ``total`` and shows it on ``stream``."""

    def __init__(self, total: int, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.interactive = enabled and self.stream.isatty()
        self._started = time.monotonic()
        self._width = 0

    def start(self, name: str) -> None:
        """A scenario begins (several may run at once)."""
        if not self.enabled:
            return
        if self.interactive:
            self._draw(name)
        else:
            print(f"[{self.done + 1}/{self.total}] {name}", file=self.stream, flush=True)

    def finish(self, name: str) -> None:
        self.done += 1
        if self.interactive:
            self._draw(name)

    def close(self) -> None:
        if self.interactive:
            print(file=self.stream, flush=True)

    def line(self, name: str, elapsed: float) -> str:
        """The interactive line: bar, count, elapsed and estimated remaining time."""
        filled = round(BAR_WIDTH * self.done / self.total) if self.total else BAR_WIDTH
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        text = f"[{bar}] {self.done}/{self.total} {_clock(elapsed)}"
        if 0 < self.done < self.total:
            text += f" (about {_clock(elapsed / self.done * (self.total - self.done))} left)"
        return f"{text} {name}"

    def _draw(self, name: str) -> None:
        text = self.line(name, time.monotonic() - self._started)
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"
