"""Test doubles for session tests: deterministic, exact, and cheap.

They stand in for the real models only inside unit tests, where what matters is the
session's orchestration on a virtual clock, not the models' accuracy.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bargein.audio import write_wav
from bargein.bench.speaker import SimulatedSpeaker
from bargein.clock import sleep_until
from bargein.providers.base import FloatAudio, SpeechChunk, WordTiming
from bargein.session import Session

FRAME = 512
RATE = 16000
WORD_SAMPLES = 800
TTS_RATE = 8000


Utterance = tuple[list[tuple[float, tuple[str, ...]]], tuple[str, ...]]
"""Partial words by clock time, then the final words, for one utterance."""


class LevelVAD:
    """Speech wherever the frame is loud: the test controls speech by amplitude."""

    sample_rate = RATE
    frame_samples = FRAME

    def probability(self, frame: FloatAudio) -> float:
        return 0.95 if float(np.sqrt(np.mean(frame**2))) > 0.05 else 0.02

    def reset(self) -> None:
        pass


@dataclass
class ScriptedRecognizer:
    """Returns scripted words per utterance: partials by clock time, then a final."""

    utterances: list[Utterance]
    sample_rate: int = RATE
    index: int = -1
    open: bool = False

    def start(self) -> None:
        self.index += 1
        self.open = True

    def feed(self, audio: FloatAudio) -> Sequence[str]:
        assert self.open
        now = asyncio.get_running_loop().time()
        partials, _ = self.utterances[min(self.index, len(self.utterances) - 1)]
        words: tuple[str, ...] = ()
        for t, w in partials:
            if t <= now:
                words = w
        return words

    def finish(self) -> Sequence[str]:
        self.open = False
        return self.utterances[min(self.index, len(self.utterances) - 1)][1]


def word_audio(start_index: int, count: int) -> FloatAudio:
    """A ramp that never repeats within a reply: any lost or repeated sample shows."""
    idx = np.arange(start_index, start_index + count)
    return (0.2 + 0.6 * ((idx % 997) / 997.0)).astype(np.float32)


@dataclass
class WordTTS:
    """Every word lasts exactly WORD_SAMPLES; timings are exact by construction."""

    sample_rate: int = TTS_RATE
    fail_on: str | None = None
    spoken: list[str] = field(default_factory=list)
    _cursor: int = 0

    def synthesize(self, text: str) -> Iterator[SpeechChunk]:
        if self.fail_on is not None and self.fail_on in text:
            raise RuntimeError(f"tts cannot say {self.fail_on!r}")
        words = text.split()
        self.spoken.append(text)
        audio = word_audio(self._cursor, len(words) * WORD_SAMPLES)
        self._cursor += len(audio)
        timings = tuple(
            WordTiming(w, i * WORD_SAMPLES, (i + 1) * WORD_SAMPLES) for i, w in enumerate(words)
        )
        yield SpeechChunk(text, audio, self.sample_rate, timings)


class LoggingSpeaker(SimulatedSpeaker):
    """A simulated speaker that also logs the control calls it receives."""

    def __init__(self, log: list[str]) -> None:
        super().__init__(TTS_RATE, max_s=60.0)
        self.log = log
        self.writes: list[tuple[float, int]] = []

    def write(self, reply_id: int, audio: FloatAudio) -> None:
        self.writes.append((asyncio.get_running_loop().time(), reply_id))
        super().write(reply_id, audio)

    def pause(self) -> None:
        self.log.append("pause")
        super().pause()

    def clear(self) -> None:
        self.log.append("flush")
        super().clear()

    def resume(self) -> None:
        self.log.append("resume")
        super().resume()


def loud_noise(n: int, seed: int, rms: float = 0.3) -> FloatAudio:
    """``n`` samples of white noise at ``rms``: the tests' stand-in for a loud voice.

    Noise, not a constant: a DC step is no sound a microphone makes, and over a 40 ms
    window it correlates with smooth agent audio (the ramps of WordTTS) as an echo would.
    """
    rng = np.random.default_rng(seed)
    noise: FloatAudio = (rng.uniform(-1.0, 1.0, n) * np.sqrt(3.0) * rms).astype(np.float32)
    return noise


def user_speech(spans: Sequence[tuple[float, float]]) -> Callable[[float], FloatAudio]:
    """Microphone signal: loud noise inside the given (start, end) spans, silence elsewhere."""

    def frame_at(t_end: float) -> FloatAudio:
        t0 = t_end - FRAME / RATE
        loud = any(a < t_end and b > t0 for a, b in spans)
        return loud_noise(FRAME, seed=round(t_end * RATE)) if loud else np.zeros(FRAME, np.float32)

    return frame_at


async def drive(
    session: Session,
    speaker: SimulatedSpeaker,
    spans: Sequence[tuple[float, float]],
    until: float,
    *,
    request: bool = True,
) -> None:
    """Run a session for ``until`` seconds of clock time with the given user speech."""
    mic = user_speech(spans)
    speaker.on_playout = session.playout
    stop = asyncio.Event()
    task = asyncio.create_task(speaker.run(stop, origin=0.0))  # virtual clocks start at 0
    if request:
        session.request_reply()
    t0 = asyncio.get_running_loop().time()
    n = 0
    while n * FRAME / RATE < until:
        n += 1
        await sleep_until(t0 + n * FRAME / RATE)
        session.push_audio(mic(n * FRAME / RATE))
    stop.set()
    await task


def write_scenario(
    folder: Path,
    name: str,
    kind: str,
    expect: str,
    events: Sequence[dict[str, Any]],
    agent_text: str,
) -> None:
    """One scenario file in the public format (echo off)."""
    doc = {
        "format": "bargein-scenario/1",
        "name": name,
        "kind": kind,
        "expect": expect,
        "agent_text": agent_text,
        "events": list(events),
        "echo": None,
        "comment": "unknown fields are ignored",
    }
    (folder / f"{name}.json").write_text(json.dumps(doc))


def loud_wav(path: Path, lead_s: float, length_s: float, rate: int = 16000) -> None:
    """Silence for ``lead_s``, then a steady loud sound for ``length_s``."""
    audio = np.zeros(int((lead_s + length_s) * rate), dtype=np.float32)
    audio[int(lead_s * rate) :] = 0.3
    write_wav(path, audio, rate)
