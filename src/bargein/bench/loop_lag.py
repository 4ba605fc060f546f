"""How late the event loop runs what is due: the delay every session on it shares.

A server runs all its sessions' audio on one event loop (``bargein serve``, the load
test's server, and the benchmark's ``--jobs``), so any step that holds the loop holds
every session: their microphone frames, their VAD, tier 2's timers, a playout report or
a ``clear``. The monitor sleeps a short period again and again and records how much later
than asked it woke up. On an idle loop that is a fraction of a millisecond; a step that
runs for 300 ms shows as a 300 ms sample.

On the virtual clock the loop's time only moves when nothing is ready, so the lateness is
always zero there; the benchmark measures it on the real clock only.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np

__all__ = ["LagMonitor", "watched"]

T = TypeVar("T")


class LagMonitor:
    """Samples of the loop's lateness in seconds, one per ``period_s`` asked for (the
    latest ``keep``)."""

    def __init__(self, period_s: float = 0.02, keep: int = 100_000) -> None:
        if not period_s > 0.0:
            raise ValueError(f"period_s must be positive, got {period_s!r}")
        self.period_s = period_s
        self.samples: deque[float] = deque(maxlen=keep)

    async def run(self) -> None:
        """Record lateness until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.period_s)
            self.samples.append(max(0.0, loop.time() - before - self.period_s))

    def report(self, *, reset: bool = False) -> dict[str, float | None]:
        """The load test's figures: median, nearest-rank p95 and worst, in milliseconds
        (None before any sample); ``reset`` starts the next report afresh."""
        late = sorted(self.samples)
        if reset:
            self.samples.clear()
        if not late:
            return {"lag_p50_ms": None, "lag_p95_ms": None, "lag_max_ms": None}
        return {
            "lag_p50_ms": 1000 * float(np.median(late)),
            "lag_p95_ms": 1000 * late[min(len(late) - 1, int(0.95 * len(late)))],
            "lag_max_ms": 1000 * late[-1],
        }

    def summary(self) -> dict[str, float | int]:
        """The benchmark's figures: median, p95, p99 and worst lateness in milliseconds,
        and how many samples were 100 ms late or more (a tenth of a second every session
        lost)."""
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


async def watched(work: Coroutine[Any, Any, T], lag: LagMonitor) -> T:
    """Run ``work`` with ``lag`` watching the loop meanwhile."""
    watcher = asyncio.create_task(lag.run())
    try:
        return await work
    finally:
        watcher.cancel()
        await asyncio.wait([watcher])  # its end, without taking on its CancelledError
