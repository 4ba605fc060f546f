"""A loudspeaker for benchmark runs: it plays at real-time pace and remembers every sample.

It is the session's sink and also the benchmark's ear. Every ``tick_s`` of clock time it
takes exactly that much audio from its queue (or plays silence), writes it into a
recording indexed by clock time, and reports the reply's playback cursor to the session,
as a browser worklet or a telephony ``mark`` would. Audio still in the queue has not
been heard. Pausing holds the queue and the cursor where they are, so resuming loses and
repeats nothing.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bargein.clock import sleep_until
from bargein.providers.base import FloatAudio


@dataclass
class _Queued:
    reply_id: int
    audio: FloatAudio
    offset: int = 0


class SimulatedSpeaker:
    def __init__(self, sample_rate: int, *, tick_s: float = 0.01, max_s: float = 180.0) -> None:
        self.sample_rate = sample_rate
        self.tick_s = tick_s
        self.recording = np.zeros(int(max_s * sample_rate), dtype=np.float32)
        self.reply_at = np.zeros(len(self.recording), dtype=np.int32)
        """Which reply each recorded sample belongs to (0: silence)."""
        self.played: dict[int, int] = {}
        self.paused_s: dict[int, float] = {}
        self.ducked_s: dict[int, float] = {}
        """Per reply: how much of it played ducked (below full gain)."""
        self.on_playout: Callable[[int, int], None] | None = None
        self.first_sound_at: dict[int, float] = {}
        self.first_audible_dbfs = -45.0
        self._queue: deque[_Queued] = deque()
        self._paused = False
        self._gain = 1.0
        self._position = 0  # samples of clock time already rendered
        self.controls: list[tuple[float, str]] = []
        """Every pause, duck and clear while playing: recording time, kind."""
        self._origin: float | None = None

    # -- the AudioSink protocol ---------------------------------------------------------

    def write(self, reply_id: int, audio: FloatAudio) -> None:
        self.played.setdefault(reply_id, 0)
        if len(audio):
            self._queue.append(_Queued(reply_id, audio))

    def pause(self) -> None:
        self._note("pause")
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._gain = 1.0

    def duck(self, gain: float) -> None:
        self._note("duck")
        self._gain = gain

    def clear(self) -> None:
        self._note("clear")
        self._queue.clear()
        self._paused = False
        self._gain = 1.0

    def _note(self, kind: str) -> None:
        if self._origin is not None:
            self.controls.append((asyncio.get_running_loop().time() - self._origin, kind))

    # -- playback -----------------------------------------------------------------------

    @property
    def rendered(self) -> int:
        """Samples of clock time played so far (sound or silence)."""
        return self._position

    def render_until(self, t: float) -> None:
        """Play everything due up to clock time ``t``."""
        end = min(round(t * self.sample_rate), len(self.recording))
        count = end - self._position
        if count <= 0:
            return
        if self._paused:
            if self._queue:
                rid = self._queue[0].reply_id
                self.paused_s[rid] = self.paused_s.get(rid, 0.0) + count / self.sample_rate
            self._position = end
            return
        touched: dict[int, None] = {}
        pos = self._position
        while pos < end and self._queue:
            item = self._queue[0]
            take = min(end - pos, len(item.audio) - item.offset)
            piece = item.audio[item.offset : item.offset + take] * self._gain
            self.recording[pos : pos + take] = piece
            self.reply_at[pos : pos + take] = item.reply_id
            if item.reply_id not in self.first_sound_at and np.max(np.abs(piece)) > 10 ** (
                self.first_audible_dbfs / 20
            ):
                loud = np.flatnonzero(np.abs(piece) > 10 ** (self.first_audible_dbfs / 20))
                self.first_sound_at[item.reply_id] = (pos + int(loud[0])) / self.sample_rate
            item.offset += take
            pos += take
            self.played[item.reply_id] += take
            if self._gain < 1.0:
                ducked = self.ducked_s.get(item.reply_id, 0.0) + take / self.sample_rate
                self.ducked_s[item.reply_id] = ducked
            touched[item.reply_id] = None
            if item.offset >= len(item.audio):
                self._queue.popleft()
        self._position = end
        if self.on_playout is not None:
            for rid in touched:
                self.on_playout(rid, self.played[rid])

    async def run(self, stop: asyncio.Event, origin: float) -> None:
        """Play until ``stop``; the recording's time 0 is clock time ``origin``."""
        loop = asyncio.get_running_loop()
        self._origin = origin
        t = loop.time()
        while not stop.is_set():
            t += self.tick_s
            await sleep_until(t)
            # On a real clock a late wake-up plays what was due by now, not by schedule.
            self.render_until(loop.time() - origin)

    def output_between(self, t0: float, t1: float, rate: int) -> FloatAudio:
        """What the speaker emitted in [t0, t1), resampled to ``rate`` (for echo)."""
        n = round((t1 - t0) * rate)
        times = t0 + np.arange(n) / rate
        src = times * self.sample_rate
        limit = min(self._position, len(self.recording)) - 1
        if limit < 1:
            return np.zeros(n, dtype=np.float32)
        valid = (src >= 0) & (src < limit)
        out = np.zeros(n, dtype=np.float32)
        idx = src[valid]
        base = np.floor(idx).astype(np.int64)
        frac = (idx - base).astype(np.float32)
        out[valid] = self.recording[base] * (1 - frac) + self.recording[base + 1] * frac
        return out
