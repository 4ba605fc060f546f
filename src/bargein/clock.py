"""Real and virtual time for the runtime.

Everything in the runtime reads time from the running event loop (``loop.time()``) and
waits with ``asyncio.sleep``. The real clock is therefore just asyncio's own loop. The
virtual clock is an event loop whose ``time()`` only moves when every task is waiting:
instead of blocking in ``select`` until the next timer is due, it jumps straight to it.
Processing time never advances a virtual clock, so a run measures the algorithm's own
latency, exactly and repeatably, and a ten-second scenario runs as fast as the CPU
allows.

Blocking work (a TTS call, a recogniser step) must go through :func:`run_blocking`: on a
real clock it runs in a worker thread so the audio path keeps moving; on a virtual clock
it runs inline, because time must not jump ahead while a thread is still computing.
Work wrapped in :class:`Lagged` says how long it would take on a real machine; the
virtual clock then gives its answer that much later.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")

ClockKind = Literal["real", "virtual"]


class _JumpingSelector(selectors.BaseSelector):
    """Wraps the loop's selector: a wait for the next timer becomes a jump in time."""

    def __init__(self, inner: selectors.BaseSelector, loop: VirtualEventLoop) -> None:
        self._inner = inner
        self._loop = loop

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._inner.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            # Nothing is scheduled: only real I/O (or another thread) can wake us.
            return self._inner.select(None)
        self._loop.advance(timeout)
        return []

    def close(self) -> None:
        self._inner.close()

    def get_map(self) -> Any:
        return self._inner.get_map()


class VirtualEventLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on virtual time, starting at 0.0."""

    def __init__(self) -> None:
        super().__init__()
        self._virtual_now = 0.0
        self._selector: selectors.BaseSelector = _JumpingSelector(self._selector, self)

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._virtual_now += seconds


def is_virtual() -> bool:
    """True when the running loop is on virtual time."""
    return isinstance(asyncio.get_running_loop(), VirtualEventLoop)


def now() -> float:
    return asyncio.get_running_loop().time()


async def sleep_until(deadline: float) -> None:
    delay = deadline - now()
    await asyncio.sleep(max(0.0, delay))


@dataclass(frozen=True)
class Lagged(Generic[T]):
    """Work whose answer, on the virtual clock, comes ``seconds`` after it was asked for.

    The virtual clock runs work at once, and its answer comes before the next frame; on a
    busy machine a reading that takes 0.3 s lets 0.3 s of audio and decisions go by first.
    On the real clock this is plain work: it takes what it takes.
    """

    work: Callable[[], T]
    seconds: float

    def __call__(self) -> T:
        return self.work()


async def run_blocking(fn: Callable[..., T], *args: Any) -> T:
    """Run CPU-bound provider work without stalling a real-time audio path."""
    if is_virtual():
        result = fn(*args)
        if isinstance(fn, Lagged) and fn.seconds > 0:
            await asyncio.sleep(fn.seconds)
        return result
    return await asyncio.to_thread(fn, *args)


def run(coro: Coroutine[Any, Any, T], clock: ClockKind = "real") -> T:
    """Run ``coro`` to completion on the chosen clock."""
    if clock == "virtual":
        with asyncio.Runner(loop_factory=VirtualEventLoop) as runner:
            return runner.run(coro)
    if clock == "real":
        return asyncio.run(coro)
    raise ValueError(f"unknown clock {clock!r}: expected 'real' or 'virtual'")
