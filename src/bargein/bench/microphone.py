"""The user's side of a benchmark run: what reaches the microphone, and what the ear measures.

Both runners (the in-process one and the far end that plays the user's device against a
server) must place a scenario's sounds and judge the agent's stop by exactly the same
rules, or their figures could not be compared. So the placement and the stop measurement
live here, once, and each runner only supplies its own loudspeaker.

The echo (the agent's own output reaching its microphone) can pass through a synthetic room
(``echo.reverb_s``, a bargein extension of the scenario format): the delayed speaker output
is convolved with :func:`room_impulse_response`, frame by frame, carrying the tail of each
frame's convolution into the next ones, so the result does not depend on the frame sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.signal import oaconvolve

from bargein.audio import last_audible
from bargein.bench.metrics import (
    MISSED_AFTER_S,
    ONSET_SLACK_S,
    audible_window_times,
    window_seconds,
)
from bargein.bench.speaker import SimulatedSpeaker
from bargein.providers.base import FloatAudio
from bargein.scenario import Scenario
from bargein.words import normalize_for_wer, word_edit_distance

_ROOM_SEED = 0x5EED
_DECAY_DB = 60.0  # RT60: the tail has decayed by 60 dB after ``reverb_s``
_DRR_REFERENCE_S = 0.25  # the decay time at which direct and reverberant energy are equal


@lru_cache(maxsize=16)
def room_impulse_response(reverb_s: float, rate: int) -> npt.NDArray[np.float64]:
    """A deterministic synthetic room: the direct path, then exponentially decaying noise.

    The noise comes from a fixed seed, and its amplitude falls by 60 dB over ``reverb_s``
    seconds, where the response ends. Longer rooms carry relatively more reverberant energy
    (equal to the direct path's at 0.25 s, 3 dB more per doubling), as a farther loudspeaker
    in a more reflective room would. The whole response has unit energy, so an echo's
    ``gain_db`` remains the level of everything that comes back. ``reverb_s`` 0 is the
    single sample ``[1.0]``. The returned array is shared: do not modify it.
    """
    if reverb_s < 0 or not math.isfinite(reverb_s):
        raise ValueError(f"reverb_s must be a finite number >= 0, got {reverb_s!r}")
    length = max(1, math.ceil(reverb_s * rate))
    ir = np.zeros(length, dtype=np.float64)
    ir[0] = 1.0
    if length > 1:
        n = np.arange(1, length, dtype=np.float64)
        decay = np.exp(-math.log(10.0) * (_DECAY_DB / 20.0) * n / (reverb_s * rate))
        tail = np.random.default_rng(_ROOM_SEED).standard_normal(length - 1) * decay
        wanted = reverb_s / _DRR_REFERENCE_S  # reverberant energy / direct energy
        ir[1:] = tail * math.sqrt(wanted / float(np.sum(tail * tail)))
    ir /= math.sqrt(float(np.sum(ir * ir)))
    ir.flags.writeable = False
    return ir


@dataclass
class PlacedEvent:
    audio: FloatAudio
    start: int | None  # microphone sample index, once the anchor is known
    onset_s: float  # where the sound starts inside the audio
    anchor: str
    at_s: float


@dataclass
class Microphone:
    """The microphone signal of one run; sample 0 is the moment the reply was requested.

    Events anchored to the agent's speech cannot be placed until the ear has heard that
    speech, so :meth:`place` is called before every frame with what is known so far.
    """

    events: list[PlacedEvent]
    echo_gain: float
    echo_delay_s: float
    speaker: SimulatedSpeaker
    echo: bool
    rate: int = 16000
    position: int = 0
    echo_reverb_s: float = 0.0
    _echo_tail: npt.NDArray[np.float64] = field(
        default_factory=lambda: np.zeros(0), init=False, repr=False
    )

    def place(self, speech_anchor: float | None) -> None:
        for ev in self.events:
            if ev.start is not None:
                continue
            base = 0.0 if ev.anchor == "reply" else speech_anchor
            if base is not None:
                ev.start = round((base + ev.at_s) * self.rate)

    def frame(self, size: int) -> FloatAudio:
        lo, hi = self.position, self.position + size
        out = np.zeros(size, dtype=np.float32)
        for ev in self.events:
            if ev.start is None:
                continue
            a, b = max(lo, ev.start), min(hi, ev.start + len(ev.audio))
            if a < b:
                out[a - lo : b - lo] += ev.audio[a - ev.start : b - ev.start]
        if self.echo:
            t0, t1 = lo / self.rate - self.echo_delay_s, hi / self.rate - self.echo_delay_s
            dry = self.speaker.output_between(t0, t1, self.rate)
            out += self.echo_gain * (self._reverberate(dry) if self.echo_reverb_s > 0 else dry)
        self.position = hi
        np.clip(out, -1.0, 1.0, out=out)
        return out

    def _reverberate(self, dry: FloatAudio) -> FloatAudio:
        """``dry`` through the room, plus what earlier frames still ring into this one."""
        ir = room_impulse_response(self.echo_reverb_s, self.rate)
        wet = np.asarray(oaconvolve(dry.astype(np.float64), ir))
        # ``wet`` is len(dry) + len(ir) - 1 long and the carried tail len(ir) - 1 (empty
        # before the first frame), so the tail always fits.
        wet[: self._echo_tail.size] += self._echo_tail
        self._echo_tail = wet[dry.size :]
        return np.asarray(wet[: dry.size], dtype=np.float32)

    def onset(self) -> float | None:
        """Ground truth: where the first event's sound starts on the shared timeline."""
        placed = [ev for ev in self.events if ev.start is not None]
        if not placed:
            return None
        first = min(placed, key=lambda ev: ev.start or 0)
        assert first.start is not None
        return first.start / self.rate + first.onset_s

    def speech_end(self) -> float | None:
        """Ground truth: where the last audible sound of the user's events ends."""
        ends = []
        for ev in self.events:
            if ev.start is None:
                return None
            end = last_audible(ev.audio, self.rate)
            if end is not None:
                ends.append(ev.start / self.rate + end)
        return max(ends, default=None)

    def last_end(self) -> float | None:
        if any(ev.start is None for ev in self.events):
            return None
        return max(
            (((ev.start or 0) + len(ev.audio)) / self.rate for ev in self.events), default=0.0
        )


def microphone_for(scenario: Scenario, speaker: SimulatedSpeaker, rate: int) -> Microphone:
    """The scenario's events, loaded at ``rate``, with its echo fed from ``speaker``."""
    return Microphone(
        events=[
            PlacedEvent(ev.load(rate), None, ev.onset_in_audio(), ev.anchor, ev.at_s)
            for ev in scenario.events
        ],
        echo_gain=10 ** (scenario.echo.gain_db / 20) if scenario.echo else 0.0,
        echo_delay_s=scenario.echo.delay_ms / 1000 if scenario.echo else 0.0,
        speaker=speaker,
        echo=scenario.echo is not None,
        rate=rate,
        echo_reverb_s=scenario.echo.reverb_s if scenario.echo else 0.0,
    )


@dataclass(frozen=True)
class StopMetrics:
    stop_latency_ms: float | None
    missed: bool
    cut_early: bool = False
    """The reply was abandoned, silenced for good by a pause, duck or clear that reached
    the ear before the user's sound began: something else (its own echo, a noise)
    interrupted it, and a stop latency of zero says nothing good. (A reply between two
    sentences when the user began is silent then too, but no control had stopped it.)"""


def stop_metrics(
    speaker: SimulatedSpeaker,
    reply_id: int,
    onset: float | None,
    *,
    expect_interrupt: bool,
    interrupted: bool,
) -> StopMetrics:
    """SCENARIOS.md's stop latency and ``missed``, from what ``speaker`` actually emitted.

    Only the reply's own samples count: the answer to the interruption is not the agent
    failing to stop.
    """
    end = speaker.rendered
    ours = np.where(speaker.reply_at[:end] == reply_id, speaker.recording[:end], 0.0)
    return reply_stop_metrics(
        ours,
        speaker.sample_rate,
        onset,
        expect_interrupt=expect_interrupt,
        interrupted=interrupted,
        controls=[t for t, _ in speaker.controls],
    )


def reply_stop_metrics(
    ours: np.ndarray,
    sample_rate: int,
    onset: float | None,
    *,
    expect_interrupt: bool,
    interrupted: bool,
    controls: Sequence[float] = (),
) -> StopMetrics:
    """:func:`stop_metrics` over the reply's own samples as an ear recorded them (zero
    where anything else played), at ``sample_rate``: a simulated loudspeaker's, or a
    phone's 8 kHz. ``controls`` are the times the ear got a pause, duck or clear."""
    if not expect_interrupt:
        return StopMetrics(None, False)
    if onset is None:
        return StopMetrics(None, not interrupted)
    audible = audible_window_times(ours.astype(np.float32), sample_rate)
    window = window_seconds(sample_rate)
    last = float(audible[-1]) + window if len(audible) else None
    latency = max(0.0, last - onset) * 1000 if last is not None else 0.0
    late = audible[audible >= onset + MISSED_AFTER_S]
    cut_early = interrupted and any(
        c < onset - ONSET_SLACK_S and not np.any(audible >= c + window) for c in controls
    )
    return StopMetrics(latency, bool(len(late)) or not interrupted, cut_early)


def ear_fields(
    scenario: Scenario, onset: float | None, stop: StopMetrics, interrupted: bool, paused_s: float
) -> dict[str, Any]:
    """The fields of a result that every runner measures the same way at its ear."""
    expect_interrupt = scenario.expect == "interrupt"
    return {
        "name": scenario.name,
        "kind": scenario.kind,
        "expect": scenario.expect,
        "onset_s": onset,
        "stop_latency_ms": stop.stop_latency_ms,
        "missed": stop.missed,
        "interrupted": interrupted,
        "false_interruption": scenario.expect == "continue" and interrupted,
        "cut_early": stop.cut_early,
        "paused_ms": paused_s * 1000 if not expect_interrupt else None,
    }


def user_turn_fields(scenario: Scenario, kept: str, interrupted: bool) -> dict[str, Any]:
    """How far the agent's record of the interrupting turn (``kept``) is from what was said."""
    said = " ".join(ev.text for ev in scenario.events if ev.text)
    words = len(normalize_for_wer(said)) if interrupted and said else 0
    errors = word_edit_distance(normalize_for_wer(said), normalize_for_wer(kept)) if words else 0
    return {
        "user_turn_text": kept if words else None,
        "user_turn_words": words,
        "user_turn_word_errors": errors,
    }
