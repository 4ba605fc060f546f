"""How late the event loop runs what is due: the delay every session on it shares.

A server runs all its sessions' audio on one event loop (``bargein serve``, and the
benchmark's ``--jobs``), so any step that holds the loop holds every session: their
microphone frames, their VAD, tier 2's timers. The watcher sleeps a short interval again
and again and records how much later than asked it woke up. On an idle loop that is a
fraction of a millisecond; a step that runs for 300 ms shows as a 300 ms sample.

On the virtual clock the loop's time only moves when nothing is ready, so the lag is
always zero there; the benchmark measures it on the real clock only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np

__all__ = ["LoopLag", "watched"]

T = TypeVar("T")


class LoopLag:
    """Samples of the loop's lateness, in seconds, one per ``interval_s`` asked for."""

    def __init__(self, interval_s: float = 0.02) -> None:
        if not interval_s > 0.0:
            raise ValueError(f"interval_s must be positive, got {interval_s!r}")
        self.interval_s = interval_s
        self.samples: list[float] = []

    async def watch(self) -> None:
        """Record lateness until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(self.interval_s)
            self.samples.append(max(0.0, loop.time() - asked - self.interval_s))

    def summary(self) -> dict[str, float | int]:
        """Median, p95, p99 and worst lateness in milliseconds, and how many samples
        were 100 ms late or more (a tenth of a second every session lost)."""
        if not self.samples:
            return {"samples": 0}
        late = np.asarray(self.samples) * 1000.0
        return {
            "samples": int(late.size),
            "p50_ms": round(float(np.median(late)), 1),
            "p95_ms": round(float(np.percentile(late, 95)), 1),
            "p99_ms": round(float(np.percentile(late, 99)), 1),
            "max_ms": round(float(late.max()), 1),
            "over_100ms": int(np.sum(late >= 100.0)),
        }


async def watched(work: Coroutine[Any, Any, T], lag: LoopLag) -> T:
    """Run ``work`` with ``lag`` watching the loop meanwhile."""
    watcher = asyncio.create_task(lag.watch())
    try:
        return await work
    finally:
        watcher.cancel()
        await asyncio.wait([watcher])  # its end, without taking on its CancelledError
