"""A second opinion whose readings take time on the virtual clock, as they do on a real one.

On the virtual clock a Whisper pass runs at once, so every reading comes back the instant
it is asked for. On the 2-core machines a reading takes 0.1-0.5 s, and tier 2 meanwhile
decides on the readings it already has: fewer of them, of the sound as it was when they
began. :class:`LaggedReader` wraps a second opinion that reads later (``peek_later`` and
``finish_later``, see :class:`~bargein.providers.base.StreamingRecognizer`) so that each
reading's answer comes that long after it was asked for, in virtual time
(:class:`~bargein.clock.Lagged`): the benchmark and the training data then see the
readings' timing of a busy machine, exactly and repeatably.

Each reading's lag is drawn between ``low_s`` and ``high_s`` from the seed, the audio of
the utterance so far and whether the reading is the final one: a scenario gets the same
lags whichever worker plays it and whatever it played before, and two scenarios get
different ones. On the real clock the
wrapper changes nothing: a reading takes the time it takes.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bargein.clock import Lagged
from bargein.providers.base import FloatAudio


class LaggedReader:
    """``inner``'s readings, each answered ``low_s``..``high_s`` of virtual time later."""

    def __init__(
        self, inner: Any, low_s: float, high_s: float | None = None, *, seed: int = 0
    ) -> None:
        high = low_s if high_s is None else high_s
        if not 0.0 <= low_s <= high:
            raise ValueError(f"reading lag must be 0 <= low <= high seconds, got {low_s}-{high}")
        for method in ("peek_later", "finish_later"):
            if not callable(getattr(inner, method, None)):
                raise TypeError(f"{type(inner).__name__} does not read later (no {method})")
        self.inner = inner
        self.low_s, self.high_s, self.seed = low_s, high, seed
        self.sample_rate: int = inner.sample_rate
        self._heard = 0

    def lag(self, *, final: bool) -> float:
        """The lag of a reading asked for now."""
        if self.high_s == self.low_s:
            return self.low_s
        u = float(np.random.default_rng([self.seed, self._heard, int(final)]).random())
        return self.low_s + (self.high_s - self.low_s) * u

    def start(self) -> None:
        self._heard = 0
        self.inner.start()

    def feed(self, audio: FloatAudio) -> Sequence[str]:
        self._heard = zlib.crc32(np.ascontiguousarray(audio).tobytes(), self._heard)
        words: Sequence[str] = self.inner.feed(audio)
        return words

    def finish(self) -> Sequence[str]:
        words: Sequence[str] = self.inner.finish()
        return words

    def peek_later(self) -> Callable[[], Sequence[str]]:
        return Lagged(self.inner.peek_later(), self.lag(final=False))

    def finish_later(self) -> Callable[[], Sequence[str]]:
        return Lagged(self.inner.finish_later(), self.lag(final=True))

    def __getattr__(self, name: str) -> Any:
        # What else the session or the benchmark asks of the reader is the inner one's,
        # or missing as there: ``drop_later``, ``reset`` (see
        # :func:`~bargein.providers.base.start_afresh`), its ``reader``, its ``last``.
        return getattr(self.inner, name)


def parse_lag(text: str) -> tuple[float, float]:
    """``0.3`` or ``0.1-0.5`` (seconds) as (low, high)."""
    low, _, high = text.partition("-")
    try:
        bounds = (float(low), float(high) if high else float(low))
    except ValueError:
        raise ValueError(f"not a lag in seconds (0.3 or 0.1-0.5): {text!r}") from None
    if not 0.0 <= bounds[0] <= bounds[1] < float("inf"):
        raise ValueError(f"a lag needs 0 <= low <= high seconds: {text!r}")
    return bounds
