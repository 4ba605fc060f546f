"""The benchmark's event-loop lag watcher: what it records and how it sums it up."""

from __future__ import annotations

import asyncio
import time
from collections import deque

import pytest

from bargein.bench.loop_lag import LagMonitor, watched
from bargein.clock import run


def test_a_step_that_holds_the_loop_shows_as_lag() -> None:
    lag = LagMonitor(period_s=0.01)

    async def work() -> str:
        await asyncio.sleep(0.05)
        time.sleep(0.15)  # a blocking step on the loop thread, as a recogniser's can be
        await asyncio.sleep(0.05)
        return "done"

    assert asyncio.run(watched(work(), lag)) == "done"
    summary = lag.summary()
    # time.sleep holds the loop at least that long, so one sample is at least that late.
    assert summary["max_ms"] >= 140.0
    assert summary["over_100ms"] >= 1
    assert summary["samples"] == len(lag.samples) >= 3


def test_on_the_virtual_clock_the_loop_is_never_late() -> None:
    lag = LagMonitor()

    async def work() -> None:
        await asyncio.sleep(1.0)

    run(watched(work(), lag), "virtual")
    assert len(lag.samples) >= 40
    assert lag.summary()["max_ms"] == 0.0


def test_the_watcher_stops_with_the_work_even_when_it_fails() -> None:
    lag = LagMonitor()

    async def work() -> None:
        await asyncio.sleep(0.1)
        raise RuntimeError("scenario broke")

    async def main() -> int:
        with pytest.raises(RuntimeError, match="scenario broke"):
            await watched(work(), lag)
        return len([t for t in asyncio.all_tasks() if t is not asyncio.current_task()])

    assert run(main(), "virtual") == 0


def test_summary_percentiles_and_bad_intervals() -> None:
    lag = LagMonitor()
    assert lag.summary() == {"samples": 0}
    lag.samples = deque([0.001] * 98 + [0.12, 0.5])
    summary = lag.summary()
    assert summary == {
        "samples": 100,
        "p50_ms": 1.0,
        "p95_ms": 1.0,
        "p99_ms": pytest.approx(123.8, abs=0.1),
        "max_ms": 500.0,
        "over_100ms": 2,
    }
    with pytest.raises(ValueError, match="period_s"):
        LagMonitor(period_s=0.0)
