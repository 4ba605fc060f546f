"""What every peer adapter shares: the scripted user, the scripted replies, and the ear.

A peer framework runs its own pipeline (its VAD, its turn logic, its queues); only its
LLM, STT and TTS are replaced, and only by things that do exactly what bargein's own
runner does: the LLM streams the scenario's ``agent_text`` at the same pace as
:class:`~bargein.providers.scripted.ScriptedLLM`, the TTS is bargein's Piper voice, and the
STT hands over the words the user said, a fixed delay after they said them. The
microphone carries the scenario's sounds (and the echo) in real time, placed by the same
:class:`~bargein.bench.microphone.Microphone` as in ``bargein bench``, and the peer's
audio output plays into a :class:`~bargein.bench.speaker.SimulatedSpeaker` at playback
pace, so the figures come from the same ear and the same code as bargein's own.

The ear does not trust the peer about what it played: every frame the peer's output
writes is looked up in the audio the TTS produced for each reply, so it knows which reply
(and which sample of it) reached the loudspeaker, and which words were heard.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from bargein.audio import from_int16, last_audible, to_int16
from bargein.bench.metrics import AUDIBLE_DBFS, state_word_errors, words_of
from bargein.bench.microphone import (
    Microphone,
    ear_fields,
    microphone_for,
    stop_metrics,
    user_turn_fields,
)
from bargein.bench.speaker import SimulatedSpeaker
from bargein.clock import run_blocking, sleep_until
from bargein.playout import PlayoutTracker
from bargein.providers.base import SpeechChunk, TextToSpeech
from bargein.providers.scripted import tokenize
from bargein.scenario import Scenario

__all__ = [
    "FOLLOW_UP",
    "MIC_FRAME",
    "MIC_RATE",
    "STT_DELAY_S",
    "UNKNOWN_REPLY",
    "PeerRun",
    "PeerRunOptions",
    "SttMode",
]

SttMode = Literal["final", "interim"]

MIC_RATE = 16000
MIC_FRAME = 320
"""The microphone delivers 20 ms at a time, as telephony and WebRTC transports do."""
STT_DELAY_S = 0.3
"""The scripted recogniser's final transcript comes this long after the sound ends."""
DEVICE_AHEAD_S = 0.08
"""The loudspeaker takes a new frame once less than this much is left to play: a sound
card's buffer, enough that a busy event loop does not starve it. Both peers drop it on a
stop (Pipecat's interruption, LiveKit's pause or clear), so it adds nothing to a stop."""
FOLLOW_UP = "Of course. Let me help you with that right away."
UNKNOWN_REPLY = 99
"""Reply id of audible output that matches no reply the TTS voiced (it never should)."""
_SILENT_PEAK = 33
"""Frames whose samples all stay below this (about -60 dBFS) are silence."""


@dataclass
class PeerRunOptions:
    first_token_s: float = 0.15
    tokens_per_s: float = 30.0
    """The same pace as bargein's own runner (:class:`bargein.bench.runner.RunOptions`)."""
    settle_s: float = 1.0
    """How long to keep listening after the last event ends, when the agent carried on."""
    answer_wait_s: float = 10.0
    """After a cut, how long to wait for the agent's answer before giving up on it."""
    stall_s: float = 6.0
    """Give up on a reply that neither plays nor is abandoned for this long."""
    max_s: float = 90.0
    stt: SttMode = "final"


# -- the replies ----------------------------------------------------------------------------


@dataclass
class VoicedReply:
    """One reply's audio in the order the TTS produced it, with its words' positions."""

    tracker: PlayoutTracker
    pcm: bytearray = field(default_factory=bytearray)


@dataclass
class ReplyScript:
    """What the peer's LLM streams: ``agent_text`` first, the follow-up after."""

    texts: list[str]
    options: PeerRunOptions
    calls: int = 0
    emitted: dict[int, list[float]] = field(default_factory=dict)
    cancelled_at: dict[int, float] = field(default_factory=dict)
    finished: set[int] = field(default_factory=set)
    current: int = 0
    """The reply being generated (1 for ``agent_text``); the TTS files its audio under it."""

    def start_reply(self) -> int:
        self.calls += 1
        self.current = self.calls
        self.emitted[self.current] = []
        return self.current

    async def tokens(self, reply: int) -> AsyncIterator[str]:
        """The reply's tokens at the scripted pace; a cancel is recorded, not swallowed."""
        text = self.texts[min(reply, len(self.texts)) - 1]
        loop = asyncio.get_running_loop()
        try:
            for i, token in enumerate(tokenize(text)):
                delay = self.options.first_token_s if i == 0 else 1.0 / self.options.tokens_per_s
                await asyncio.sleep(delay)
                self.emitted[reply].append(loop.time())
                yield token
            self.finished.add(reply)
        except (asyncio.CancelledError, GeneratorExit):
            self.cancel(reply)
            raise

    def cancel(self, reply: int) -> None:
        if reply not in self.finished:
            self.cancelled_at.setdefault(reply, asyncio.get_running_loop().time())

    def tokens_after_cancel(self, reply: int) -> int:
        at = self.cancelled_at.get(reply)
        if at is None:
            return 0
        return sum(1 for t in self.emitted.get(reply, []) if t > at)


class Voice:
    """bargein's TTS for a peer: the audio of the text the peer asks for, as int16 PCM,
    filed under the reply being generated so the ear can recognise it when it plays."""

    def __init__(self, tts: TextToSpeech, script: ReplyScript) -> None:
        self.tts = tts
        self.sample_rate = tts.sample_rate
        self.script = script
        self.replies: dict[int, VoicedReply] = {}
        self._prepared: list[list[SpeechChunk]] = []

    def prepare(self, texts: list[str]) -> None:
        """Synthesise whole replies ahead of the run, one chunk per Piper sentence."""
        for text in texts:
            self._prepared.append(list(self.tts.synthesize(text)))

    def _prepared_run(self, text: str) -> list[SpeechChunk] | None:
        """The prepared sentences that together say exactly ``text``, if any do."""
        wanted = text.split()
        for chunks in self._prepared:
            for first in range(len(chunks)):
                words: list[str] = []
                for last in range(first, len(chunks)):
                    words += [w.word for w in chunks[last].words]
                    if words == wanted:
                        return chunks[first : last + 1]
                    if words != wanted[: len(words)]:
                        break
        return None

    async def speak(self, text: str) -> list[bytes]:
        """The audio of ``text`` (a peer asks sentence by sentence), filed under the reply."""
        reply = max(self.script.current, 1)
        chunks = self._prepared_run(text)
        if chunks is None:
            chunks = await run_blocking(lambda: list(self.tts.synthesize(text)))
        voiced = self.replies.setdefault(reply, VoicedReply(PlayoutTracker(self.sample_rate)))
        out: list[bytes] = []
        for chunk in chunks:
            pcm = to_int16(chunk.audio).astype("<i2").tobytes()
            voiced.tracker.add(chunk)
            voiced.pcm += pcm
            out.append(pcm)
        return out


# -- the ear --------------------------------------------------------------------------------


class Ear:
    """The peer's loudspeaker: plays at real-time pace and knows what each sample was."""

    def __init__(self, voice: Voice, max_s: float) -> None:
        self.voice = voice
        self.sample_rate = voice.sample_rate
        self.speaker = SimulatedSpeaker(voice.sample_rate, max_s=max_s + 5)
        self._written: dict[int, int] = {}
        self._marks: dict[int, list[tuple[int, int, int, int]]] = {}
        """Per reply and frame: its samples written before it, then :meth:`_find`'s span."""
        self._cursor: dict[int, int] = {}
        self.unmatched_samples = 0
        self._paused = False
        self.cleared_at: list[float] = []
        self.paused_at: list[float] = []
        self.resumed_at: list[float] = []

    # what a frame is

    def _find(self, data: bytes) -> tuple[int, int, int, int]:
        """Where a frame comes from: ``(reply, lead, start, end)``, its reply (0: silence),
        the zeros before its content, and the content's span in the reply's samples."""
        pcm = np.frombuffer(data, dtype="<i2")
        if pcm.size == 0:
            return 0, 0, 0, 0
        # Most frames continue a reply where the last one ended, quiet ones included.
        for reply, voiced in self.voice.replies.items():
            at = self._cursor.get(reply, 0) * 2
            if voiced.pcm[at : at + len(data)] == data:
                end = (at + len(data)) // 2
                self._cursor[reply] = end
                return reply, 0, at // 2, end
        if int(np.abs(pcm.astype(np.int32)).max()) < _SILENT_PEAK:
            return 0, 0, 0, 0
        # A framework pads a reply's last frame with zeros: match what is inside them.
        loud = np.flatnonzero(pcm)
        lead = int(loud[0])
        core = pcm[lead : int(loud[-1]) + 1].tobytes()
        for reply, voiced in sorted(self.voice.replies.items(), reverse=True):
            at = self._cursor.get(reply, 0) * 2
            if voiced.pcm[at : at + len(core)] == core:
                found = at
            else:
                found = voiced.pcm.find(core)
                while found != -1 and found % 2:
                    found = voiced.pcm.find(core, found + 1)
            if found != -1:
                start, end = found // 2, (found + len(core)) // 2
                self._cursor[reply] = end
                return reply, lead, start, end
        return UNKNOWN_REPLY, 0, 0, 0

    def write(self, data: bytes) -> None:
        reply, lead, start, end = self._find(data)
        audio = from_int16(np.frombuffer(data, dtype="<i2"))
        if reply == UNKNOWN_REPLY:
            self.unmatched_samples += len(audio)
        before = self._written.get(reply, 0)
        self._written[reply] = before + len(audio)
        if reply not in (0, UNKNOWN_REPLY):
            self._marks.setdefault(reply, []).append((before, lead, start, end))
        self.speaker.write(reply, audio)

    def queued(self) -> int:
        played = self.speaker.played
        return sum(n - played.get(r, 0) for r, n in self._written.items())

    async def play(self, data: bytes) -> None:
        """Hand a frame to the loudspeaker; return once it is nearly played (back-pressure)."""
        self.write(data)
        ahead = int(DEVICE_AHEAD_S * self.sample_rate)
        while self.queued() > ahead:
            await asyncio.sleep(0.005)

    async def wait_room(self) -> None:
        """Wait until the loudspeaker wants another frame."""
        ahead = int(DEVICE_AHEAD_S * self.sample_rate)
        while self.queued() > ahead:
            await asyncio.sleep(0.005)

    def pause(self) -> None:
        if not self._paused:
            self._paused = True
            self.paused_at.append(asyncio.get_running_loop().time())
            self.speaker.pause()

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self.resumed_at.append(asyncio.get_running_loop().time())
            self.speaker.resume()

    def clear(self) -> None:
        self.cleared_at.append(asyncio.get_running_loop().time())
        self._paused = False
        self.speaker.clear()
        for reply in self._written:
            self._written[reply] = self.speaker.played.get(reply, 0)

    # what was heard

    def reached(self, reply: int) -> int:
        """How far into the reply's own audio the loudspeaker has played (samples)."""
        played = self.speaker.played.get(reply, 0)
        reached = 0
        for before, lead, start, end in self._marks.get(reply, []):
            if before >= played:
                break
            reached = max(reached, min(end, start + max(0, played - before - lead)))
        return reached

    def heard_text(self, reply: int) -> str:
        voiced = self.voice.replies.get(reply)
        return voiced.tracker.heard_text(self.reached(reply)) if voiced else ""

    def last_sound(self, reply: int) -> float | None:
        """Recording time (s) of the last audible sample of ``reply`` so far."""
        end = self.speaker.rendered
        mask = self.speaker.reply_at[:end] == reply
        if not mask.any():
            return None
        loud = np.flatnonzero(
            mask & (np.abs(self.speaker.recording[:end]) > 10 ** (AUDIBLE_DBFS / 20))
        )
        return float(loud[-1]) / self.sample_rate if len(loud) else None


# -- the user -------------------------------------------------------------------------------


Push = Callable[[bytes], Awaitable[None] | None]


class ScriptedUser:
    """The microphone in real time, and the recogniser's transcripts of the user's words."""

    def __init__(self, scenario: Scenario, speaker: SimulatedSpeaker) -> None:
        self.scenario = scenario
        self.mic: Microphone = microphone_for(scenario, speaker, MIC_RATE)
        self.speaker = speaker
        self.origin = 0.0
        """Loop time of the reply request: sample 0 of the microphone (set by the run)."""

    async def feed(self, push: Push) -> None:
        """Send 20 ms frames forever (the caller cancels); a late wake-up catches up."""
        loop = asyncio.get_running_loop()
        origin = self.origin
        n = 0
        while True:
            n += 1
            await sleep_until(origin + n * MIC_FRAME / MIC_RATE)
            t = loop.time() - origin
            while self.mic.position + MIC_FRAME <= t * MIC_RATE:
                self.mic.place(self.speaker.first_sound_at.get(1))
                frame = to_int16(self.mic.frame(MIC_FRAME)).astype("<i2").tobytes()
                result = push(frame)
                if inspect.isawaitable(result):
                    await result

    async def transcripts(self, mode: SttMode) -> AsyncIterator[tuple[str, bool]]:
        """``(text, is_final)`` as a streaming recogniser with a fixed lag would give them.

        ``final``: the event's text once, ``STT_DELAY_S`` after its sound ends;
        ``interim``: before that, the first k of its N words at k/N of the sound, plus
        the same lag. Sounds without words give nothing.
        """
        for index, ev in enumerate(self.mic.events):
            text = self.scenario.events[index].text.strip()
            while ev.start is None:
                await asyncio.sleep(0.01)
            if not text:
                continue
            start = ev.start / MIC_RATE
            onset = start + ev.onset_s
            end_in_audio = last_audible(ev.audio, MIC_RATE)
            end = start + (end_in_audio if end_in_audio is not None else len(ev.audio) / MIC_RATE)
            words = text.split()
            schedule: list[tuple[float, str, bool]] = []
            if mode == "interim":
                for k in range(1, len(words)):
                    at = onset + (end - onset) * k / len(words) + STT_DELAY_S
                    schedule.append((at, " ".join(words[:k]), False))
            schedule.append((end + STT_DELAY_S, text, True))
            for at, said, final in schedule:
                await sleep_until(self.origin + at)
                yield said, final


# -- one run --------------------------------------------------------------------------------


class PeerRun:
    """One scenario through one peer: the shared parts, the end rule and the measurement."""

    def __init__(self, scenario: Scenario, tts: TextToSpeech, options: PeerRunOptions) -> None:
        self.scenario = scenario
        self.options = options
        self.script = ReplyScript([scenario.agent_text, FOLLOW_UP], options)
        self.voice = Voice(tts, self.script)
        self.voice.prepare(self.script.texts)
        self.ear = Ear(self.voice, options.max_s)
        self.user = ScriptedUser(scenario, self.ear.speaker)
        self.origin = 0.0
        self.cut_at: float | None = None
        """When the peer abandoned reply 1 (its own signal: a flush, a cancel)."""
        self.decision: str | None = None
        self.completed_at: float | None = None
        self.decided_at: float | None = None
        self.errors: list[str] = []
        self.notes: dict[str, Any] = {}

    def now(self) -> float:
        return asyncio.get_running_loop().time() - self.origin

    def mark_cut(self) -> None:
        """The peer abandoned the reply being played (reply 1 unless it was done)."""
        if self.cut_at is None and not self.complete(1):
            self.cut_at = self.now()
            self.script.cancel(1)
            self.decide("commit")

    def decide(self, decision: str) -> None:
        if self.decided_at is None and self.user.mic.onset() is not None:
            self.decision, self.decided_at = decision, self.now()

    def complete(self, reply: int) -> bool:
        """Every word the LLM streamed for the reply was voiced and heard."""
        voiced = self.voice.replies.get(reply)
        if reply not in self.script.finished or voiced is None:
            return False
        text = self.script.texts[min(reply, len(self.script.texts)) - 1]
        heard = words_of(self.ear.heard_text(reply))
        return heard == words_of(voiced.tracker.all_text()) and len(heard) >= len(words_of(text))

    async def drive(self, start: Callable[[], None]) -> None:
        """Start the loudspeaker, request the reply (``start``) and wait until the run is over."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        self.origin = self.user.origin = loop.time()
        speaker = asyncio.create_task(self.ear.speaker.run(stop, self.origin))
        try:
            start()
            while not self._finished(self.now()):
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            await speaker

    def _finished(self, t: float) -> bool:
        o = self.options
        if t >= o.max_s:
            self.errors.append(f"gave up after {o.max_s:g} s")
            return True
        last = self.user.mic.last_end()
        if self.complete(1):
            # Linger: the peer files the reply in its chat context after the audio ends.
            if self.completed_at is None:
                self.completed_at = t
            return last is not None and t >= max(last, self.completed_at) + o.settle_s
        if self.cut_at is not None:
            answered = any(r > 1 for r in self.ear.speaker.first_sound_at)
            if answered:
                return True
            return last is not None and t >= last and t - self.cut_at > o.answer_wait_s
        sound = self.ear.last_sound(1)
        if sound is not None and last is not None and t >= last + o.settle_s:
            return t - sound > o.stall_s
        return False

    def measure(self, recorded: str, user_turn: str, system: dict[str, Any]) -> dict[str, Any]:
        """The results entry: SCENARIOS.md's metrics, read at the ear as ``bargein bench``
        reads them, plus what the peer's own chat context holds."""
        scenario, ear, mic = self.scenario, self.ear, self.user.mic
        onset = mic.onset()
        interrupted = not self.complete(1)
        expect_interrupt = scenario.expect == "interrupt"
        stop = stop_metrics(
            ear.speaker, 1, onset, expect_interrupt=expect_interrupt, interrupted=interrupted
        )
        heard = ear.heard_text(1)
        response_ms = None
        speech_end = mic.speech_end()
        later = [r for r in ear.speaker.first_sound_at if r > 1]
        if interrupted and later and speech_end is not None:
            response_ms = (ear.speaker.first_sound_at[min(later)] - speech_end) * 1000
        decision_ms = None
        if self.decided_at is not None and onset is not None:
            decision_ms = (self.decided_at - onset) * 1000
        voiced = self.voice.replies.get(1)
        return {
            **ear_fields(scenario, onset, stop, interrupted, self._inserted_silence_s()),
            "heard_text": heard,
            "recorded_text": recorded,
            "state_word_errors": state_word_errors(heard, recorded),
            "llm_tokens_after_cancel": self.script.tokens_after_cancel(1),
            "decision": self.decision,
            "decision_reason": None,
            "decision_ms": decision_ms,
            "response_ms": response_ms,
            "llm_calls": self.script.calls,
            "preemptive_calls": None,
            "preemptive_discarded": None,
            **user_turn_fields(scenario, user_turn, interrupted),
            "timeline": [],
            "errors": list(self.errors),
            "system": system,
            "voiced_text": voiced.tracker.all_text() if voiced else "",
            "unmatched_ms": ear.unmatched_samples / ear.sample_rate * 1000,
            "cut_at": self.cut_at,
            "paused_at": [t - self.origin for t in ear.paused_at],
            "resumed_at": [t - self.origin for t in ear.resumed_at],
            **self.notes,
        }

    def _inserted_silence_s(self) -> float:
        """Silence inside reply 1 at the ear: time between its first and last sample when
        none of it played (a pause, or the peer stalling)."""
        speaker = self.ear.speaker
        end = speaker.rendered
        ours = np.flatnonzero(speaker.reply_at[:end] == 1)
        if len(ours) == 0:
            return 0.0
        span = int(ours[-1]) - int(ours[0]) + 1
        return (span - len(ours)) / speaker.sample_rate
