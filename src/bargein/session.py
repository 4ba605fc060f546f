"""A voice session: microphone in, agent audio out, the floor policy in between.

The pipeline is VAD -> recogniser -> policy -> LLM -> TTS -> sink. The session owns the
providers and carries out what the policy decides; it never decides anything itself.

Structured cancellation: each reply is one task running an ``asyncio.TaskGroup`` of the
LLM stream and the TTS/output feed. Cancelling the reply cancels the group, so the LLM
and the TTS stop together or not at all, and every reply task is owned by the session's
own task group, so nothing outlives the session.

Playout is the truth: the transport reports how many samples of a reply its listener
has played (:meth:`Session.playout`), and that cursor, mapped to words by the reply's
:class:`~bargein.playout.PlayoutTracker`, is what the conversation records.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Final, Protocol, runtime_checkable

import numpy as np

from bargein.clock import run_blocking
from bargein.conversation import Conversation, InterruptedReply, build_llm_input
from bargein.decider import Decider
from bargein.echo import EchoControl, EchoMode
from bargein.playout import PlayoutTracker, final_mark
from bargein.policy import (
    Action,
    CancelReply,
    DuckOutput,
    EchoCancelled,
    Event,
    FirstToken,
    Floor,
    FloorPolicy,
    FlushOutput,
    InterruptionRecord,
    PauseOutput,
    Playout,
    PolicyConfig,
    Reading,
    ReadingStarted,
    ReleaseOutput,
    ReplyFailed,
    ReplyFinished,
    ReplyMode,
    RequestReply,
    ResumeOutput,
    SpeechEnded,
    SpeechStarted,
    StartReply,
    Tick,
    Truncate,
    TurnEndProbability,
    VoiceActivity,
    Words,
)
from bargein.providers.base import (
    ChatMessage,
    ChosenWords,
    FloatAudio,
    LanguageModel,
    StreamingRecognizer,
    TextToSpeech,
    TooClose,
    ToolCall,
    Transcriber,
    VoiceActivityDetector,
)
from bargein.tier2 import DeciderKind, frame_features, make_decider
from bargein.tools import CANCELLED_RESULT, PENDING_RESULT, Tool
from bargein.turn_end import TurnEndDetector, WordTurnEndDetector
from bargein.vad import LoudnessGate, SpeechSegmenter

log = logging.getLogger("bargein.session")
timeline_log = logging.getLogger("bargein.timeline")

_PEEK_FIRST_S: Final = 0.3
"""How long an overlap runs before a second opinion that can read it so far is asked to;
then again every ``_PEEK_EVERY_S`` (one reading at a time), so that two readings in a row
can name a command well before the rule's 0.8 s duration commit. Each reading is a
Whisper pass of 60-200 ms on a busy core; much more often and the readings would run back
to back, a core taken for as long as the overlap lasts."""
_PEEK_EVERY_S: Final = 0.15
_OVERLAP_END_SILENCE_S: Final = 0.15
"""The segmenter's hangover while tier 2 decides (five 32 ms frames, 160 ms), instead of its
usual 0.25 s (eight, 256 ms): the agent is paused meanwhile, so every millisecond of it is
silence inserted into the agent's speech when the sound was an "uh-huh". Ending sooner may
split "Wait, ..." at its comma; the rest is then a new onset, and tier 1 pauses the agent
again."""
_MIC_GAP_S: Final = 0.25
"""Microphone audio arriving this much later than its capture clock says, for
``_MIC_GAP_HOLD_S``, was not late but missing: the capture clock starts again from its
arrival."""
_MIC_GAP_HOLD_S: Final = 2.0
"""How long audio must keep arriving a gap late before the capture clock gives up on it.
A loaded machine (three sessions on two cores) falls behind by half a second for a few
hundred milliseconds at a time and then catches up; taken for gaps, each time moved the
microphone against the echo reference by that half second, and the agent's echo, out of
the gate's reach, interrupted it."""
_MIC_GAP_STEADY_S: Final = 0.1
"""A gap's lateness moves by less than this over the hold: audio after it arrives at the
rate it is captured. An overloaded machine's moves by more (up to 1.7 s seen)."""


class AudioFormatError(ValueError):
    """Audio pushed into a session is not in the format the session expects."""


@runtime_checkable
class AudioSink(Protocol):
    """Where the agent's audio goes. The transport reports playback via ``Session.playout``.

    ``pause`` must hold the exact sample position so ``resume`` continues without losing
    or repeating a sample; ``clear`` drops everything queued and not yet played and leaves
    the sink playing at full volume, ready for the next reply.
    """

    sample_rate: int

    def write(self, reply_id: int, audio: FloatAudio) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def duck(self, gain: float) -> None: ...

    def clear(self) -> None: ...


@runtime_checkable
class TokenLedger(Protocol):
    """A token stream that can tell how many tokens its LLM produced after a given time."""

    def tokens_after(self, t: float) -> int: ...


_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s")


@dataclass
class Reply:
    reply_id: int
    tracker: PlayoutTracker
    text: str = ""
    tokens: int = 0
    tokens_after_cancel: int = 0
    generated: bool = False
    played: int = 0
    cancelled_at: float | None = None
    error: str | None = None
    task: asyncio.Task[None] | None = None
    parts: list[asyncio.Task[None]] = field(default_factory=list)
    """The reply's LLM and TTS tasks, in :attr:`task`'s task group."""
    streams: list[AsyncIterator[str | ToolCall]] = field(default_factory=list)
    """One LLM stream per round; a reply that calls tools has several."""
    settled: bool = False
    """The reply's tasks have unwound after a cancel and its tokens are counted."""
    released: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the reply may be heard; a preemptive reply waits for the turn end."""
    held: list[FloatAudio] = field(default_factory=list)
    """Audio of a preemptive reply made before its release."""
    user_turn: tuple[ReplyMode, str] | None = None
    """The user's words this reply answers, not yet in the conversation."""
    cut: tuple[int | None, int] | None = None
    """After a truncation: the index of the recorded message (None: nothing was heard)
    and the cursor it was cut at."""
    turn_message: tuple[int, str] | None = None
    """Where the user's turn went in the conversation: message index, text before it."""
    transcript: asyncio.Task[None] | None = None
    """Correcting the user's turn with the transcriber's text (owned by the session)."""


@dataclass
class SessionConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    duck_gain: float = 0.1
    preroll_s: float = 0.3
    """Audio kept before a speech start, so the recogniser hears the first syllable."""
    loudness_onset: bool = True
    """Let a sudden loud sound pause the agent before the VAD has confirmed a voice."""
    system_prompt: str | None = None
    tools: Sequence[Tool] = ()
    max_tool_rounds: int = 3
    """LLM calls that may follow tool results within one reply."""
    fallback_line: str | None = None
    """Said when the LLM fails (unreachable, an HTTP error, a broken stream); None: silence."""
    transcript_wait_s: float = 3.0
    """How long a reply waits for the transcriber before answering the recogniser's words."""
    decider: DeciderKind = "rule"
    """Tier 2 when no ``decider`` is passed: the ``rule`` (bargein.decider.RuleDecider)
    or the trained ``model`` (bargein.tier2.ModelDecider; docs/tier2.md says why it is
    not yet the default)."""
    echo: EchoMode = "auto"
    """What keeps the agent's own voice, heard back through the microphone, from
    interrupting it: ``auto`` (the gate, and the canceller too in a room the gate cannot
    explain), ``gate``, ``aec``, ``both`` or ``off`` (see :mod:`bargein.echo`)."""


class Session:
    """One conversation. Use as ``async with Session(...) as session:``."""

    sample_rate = 16000

    def __init__(
        self,
        *,
        vad: VoiceActivityDetector,
        recognizer: StreamingRecognizer,
        llm: LanguageModel,
        tts: TextToSpeech,
        sink: AudioSink,
        config: SessionConfig | None = None,
        decider: Decider | None = None,
        segmenter: SpeechSegmenter | None = None,
        transcriber: Transcriber | None = None,
        second_opinion: StreamingRecognizer | None = None,
        turn_end: TurnEndDetector | None = None,
    ) -> None:
        self.config = config or SessionConfig()
        if vad.sample_rate != self.sample_rate or recognizer.sample_rate != self.sample_rate:
            raise ValueError(f"VAD and recogniser must run at {self.sample_rate} Hz")
        if sink.sample_rate != tts.sample_rate:
            raise ValueError(
                f"sink plays {sink.sample_rate} Hz but the TTS speaks {tts.sample_rate} Hz"
            )
        if transcriber is not None and transcriber.sample_rate != self.sample_rate:
            raise ValueError(f"the transcriber must run at {self.sample_rate} Hz")
        self.vad = vad
        self._two_cuts: Callable[[FloatAudio], tuple[float, float | None]] | None = getattr(
            vad, "probability_two_cuts", None
        )
        self.recognizer = recognizer
        self.transcriber = transcriber
        self.second_opinion = second_opinion
        """A second recogniser for sound over the agent's voice, usually a closed-set phrase
        spotter (:class:`bargein.providers.phrases.PocketSphinxPhraseSpotter`): its reading
        reaches tier 2 with the final words, for the rule to weigh."""
        self._spotting = False
        self._pending_final: _PendingFinal | None = None
        self._partial_words: tuple[str, ...] = ()
        """The recogniser's latest words of the utterance under way."""
        self._spot_started_at = 0.0
        """When the audio the second opinion holds (or is about to) began: the sound's
        onset, or the canceller's start if it took over since. Readings are timed from it,
        and it names that audio, so that a reading of audio since dropped is known as
        such."""
        self._peeked_at: float | None = None
        """When the in-flight reading of an overlap so far started (None: none runs)."""
        self._last_peek = float("-inf")
        if turn_end is None and self.config.policy.turn_end == "semantic":
            turn_end = WordTurnEndDetector()
        self.turn_end = turn_end
        """Judges, at each pause, whether the user's turn is complete (semantic turn end)."""
        self.llm = llm
        self.tts = tts
        self.sink = sink
        if decider is None:
            decider = make_decider(self.config.decider)
        self.policy = FloorPolicy(self.config.policy, decider)
        self._features = bool(getattr(decider, "uses_frames", True))
        self.segmenter = segmenter or SpeechSegmenter(frame_s=vad.frame_samples / self.sample_rate)
        self.gate = LoudnessGate(self.sample_rate) if self.config.loudness_onset else None
        self.echo = (
            EchoControl(self.config.echo, sink.sample_rate, self.sample_rate)
            if self.config.echo != "off"
            else None
        )
        self._mic_origin: float | None = None  # clock time of the microphone's sample 0
        self._mic_samples = 0
        # Since when audio has arrived a gap late, and by how much at least and at most.
        self._mic_late_since: float | None = None
        self._mic_late_range = (0.0, 0.0)
        self.conversation = Conversation()
        if self.config.system_prompt is not None:
            self.conversation.system_prompt = self.config.system_prompt
        self.replies: dict[int, Reply] = {}
        self.recorded: dict[int, str] = {}
        """What the conversation recorded for each reply (cut to what was heard)."""
        self.errors: list[str] = []
        self._tools = {t.name: t for t in self.config.tools}
        self._interrupted: dict[int, InterruptedReply] = {}
        self._pending = np.zeros(0, dtype=np.float32)
        frames = max(1, round(self.config.preroll_s * self.sample_rate / vad.frame_samples))
        self._preroll: deque[FloatAudio] = deque(maxlen=frames)
        self._backlog: list[FloatAudio] | None = None
        """Pre-roll the recogniser has yet to hear, just after a speech start."""
        self._group: asyncio.TaskGroup | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._floor = float("-inf")
        # Utterances are numbered like the policy numbers them: one per SpeechStarted.
        self._utterance = 0
        self._utterance_audio: dict[int, list[FloatAudio]] = {}
        self._transcripts: dict[int, asyncio.Task[str | None]] = {}
        self._transcribing = asyncio.Lock()  # one Whisper run at a time: it takes the CPU

    # -- lifetime -----------------------------------------------------------------------

    async def __aenter__(self) -> Session:
        self._loop = asyncio.get_running_loop()
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._backlog = None  # a catch-up still scheduled finds nothing to do
        for reply in self.replies.values():
            if reply.task is not None:
                reply.task.cancel()
        assert self._group is not None
        await self._group.__aexit__(exc_type, exc, tb)

    @property
    def timeline(self) -> list[InterruptionRecord]:
        return self.policy.interruptions

    def now(self) -> float:
        assert self._loop is not None, "use the session inside 'async with'"
        # Never earlier than a timer deadline already handled (see _on_timer).
        self._floor = max(self._floor, self._loop.time())
        return self._floor

    # -- inputs -------------------------------------------------------------------------

    def request_reply(self) -> None:
        """Reply now, as if the user's turn had just ended."""
        self._handle(RequestReply(self.now()))

    def push_audio(self, audio: FloatAudio | bytes, sample_rate: int = 16000) -> None:
        """Feed microphone audio: 16 kHz mono, float32 in [-1, 1] or 16-bit PCM bytes.

        Any length is accepted; it is cut into VAD frames internally. Audio in another
        format is refused with an error naming the expected one: nothing is resampled
        here, so a wrong rate cannot silently shift every timestamp.
        """
        samples = self._validate(audio, sample_rate)
        captured = self._captured(len(samples))
        if self.echo is not None:
            cancelling = self.echo.canceller is not None
            samples = self.echo.process(samples, captured)
            if not cancelling and self.echo.canceller is not None:
                self._echo_cancelled()
        loud = self.gate is not None and self.gate.push(samples)
        if loud and (self.echo is None or not self.echo.cancelling(captured)):
            # (A room's echo, cancelled, leaves a residue in sudden bursts: over it, the
            # VAD alone says when a voice starts.)
            start = self.segmenter.push_loud(self.now())
            if start is not None:
                self._speech_started(start)
        self._pending = np.concatenate([self._pending, samples])
        size = self.vad.frame_samples
        while len(self._pending) >= size:
            frame, self._pending = self._pending[:size], self._pending[size:]
            self._process_frame(frame)

    def _echo_cancelled(self) -> None:
        """The canceller has just taken over: what was heard until now was the agent's echo.

        Silero's state is of that echo, and so is the audio the Whisper reader and the
        turn's transcript hold: each starts afresh on the cancelled audio. Read together
        with the echo, the canceller's first residue ("the pay" for "the pancakes") can
        look like a bid; read alone, the cancelled audio is what the user said, if
        anything. (The streaming recogniser goes on: ending its utterance costs a final
        search, a fifth of a second on the event loop. Tier 2 drops the words it had.)
        """
        now = self.now()
        self.vad.reset()
        self._handle(EchoCancelled(now))
        if not self.segmenter.active:
            return
        if self._utterance in self._utterance_audio:
            self._utterance_audio[self._utterance] = []
        self._spot_started_at, self._last_peek = now, float("-inf")
        if self._backlog is not None:
            self._backlog = []  # the recognisers start after this, on the cancelled audio
            return
        if self._spotting and self.second_opinion is not None:
            self._recognize(self.second_opinion.start)

    def _captured(self, n: int) -> float:
        """When the end of these ``n`` new samples was captured: the microphone's own clock.

        Audio arrives late by a varying amount (a busy event loop, a network), but it was
        captured at a steady rate. The echo control lines the microphone up with what the
        sink played to a fraction of a sample, so it needs the capture time: stamped on
        arrival, an echo would seem to move by each push's lateness, and no echo path
        explains that. The clock is anchored on the earliest arrival (audio cannot arrive
        before it was captured). Audio that keeps arriving much later than its capture
        clock says, by the same amount, for much longer than a busy machine takes to
        catch up, was lost or withheld (a gap): the clock is then anchored afresh. An
        overloaded machine's lateness grows and shrinks; a gap's stays what it was.
        """
        now = self.now()
        self._mic_samples += n
        span = self._mic_samples / self.sample_rate
        if self._mic_origin is None:
            self._mic_origin = now - span
        late = now - (self._mic_origin + span)
        if late <= _MIC_GAP_S:
            self._mic_late_since = None
        else:
            low, high = self._mic_late_range
            low, high = min(low, late), max(high, late)
            if self._mic_late_since is None or high - low > _MIC_GAP_STEADY_S:
                # Lateness that moves is a machine or a network falling behind and
                # catching up, not a gap: watch afresh from here.
                self._mic_late_since, low, high = now, late, late
            self._mic_late_range = (low, high)
        if late < 0.0 or (
            self._mic_late_since is not None and now - self._mic_late_since >= _MIC_GAP_HOLD_S
        ):
            self._mic_origin, self._mic_late_since = now - span, None
            return now
        return self._mic_origin + span

    def playout(self, reply_id: int, played: int) -> None:
        """The sink's cursor: ``played`` samples of ``reply_id`` have reached the ear."""
        reply = self.replies.get(reply_id)
        if reply is None:
            raise ValueError(f"playout report for unknown reply {reply_id}")
        reply.played = played
        if self.echo is not None:
            self.echo.played(reply_id, played, self.now())
        if reply.cut is not None and played > reply.cut[1]:
            self._recut(reply, played)
        complete = reply.generated and played >= reply.tracker.total_samples
        self._handle(Playout(self.now(), reply_id, played, complete))

    def _validate(self, audio: FloatAudio | bytes, sample_rate: int) -> FloatAudio:
        expected = f"mono audio at {self.sample_rate} Hz (float32 samples or 16-bit PCM bytes)"
        if sample_rate != self.sample_rate:
            raise AudioFormatError(f"got audio at {sample_rate} Hz; expected {expected}")
        if isinstance(audio, bytes | bytearray | memoryview):
            raw = bytes(audio)
            if len(raw) % 2:
                raise AudioFormatError(
                    f"got {len(raw)} bytes, not a whole number of 16-bit samples; "
                    f"expected {expected}"
                )
            return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
        if not isinstance(audio, np.ndarray):
            raise AudioFormatError(f"got {type(audio).__name__}; expected {expected}")
        if audio.ndim != 1:
            raise AudioFormatError(f"got an array of shape {audio.shape}; expected {expected}")
        if audio.dtype == np.int16:
            return audio.astype(np.float32) / 32768.0
        if audio.dtype != np.float32:
            raise AudioFormatError(f"got {audio.dtype} samples; expected {expected}")
        if not np.isfinite(audio).all():
            raise AudioFormatError(f"got NaN or infinite samples; expected {expected}")
        return audio

    def _process_frame(self, frame: FloatAudio) -> None:
        at = self.now()
        self._preroll.append(frame)
        if self._two_cuts is not None:
            probability, second_cut = self._two_cuts(frame)
        else:
            probability, second_cut = self.vad.probability(frame), None
        overlap = self.policy.overlap_open
        change = self.segmenter.push(at, probability, _OVERLAP_END_SILENCE_S if overlap else None)
        features = frame_features(frame) if self._features else None
        self._handle(VoiceActivity(at, probability, features, second_cut))
        if isinstance(change, SpeechStarted):
            self._speech_started(change)
        elif self.segmenter.active or isinstance(change, SpeechEnded):
            if self._utterance in self._utterance_audio:
                self._utterance_audio[self._utterance].append(frame)
            if self._backlog is not None and not isinstance(change, SpeechEnded):
                self._backlog.append(frame)  # heard in order, by the catch-up
            else:
                self._catch_up(at)
                self._partial_words = tuple(self._recognize(self.recognizer.feed, frame))
                self._spot(frame, at)
                self._handle(Words(at, self._partial_words))
        if isinstance(change, SpeechEnded):
            own = self._finish_own()
            confirmed = self.segmenter.confirmed
            own_later = own if callable(own) and confirmed else None
            if not confirmed:
                final: tuple[str, ...] = ()  # loud but never a voice: whatever was made of it
            else:
                final = self._partial_words if callable(own) else tuple(own)
            reading = self._spotting and self.second_opinion is not None
            later = getattr(self.second_opinion, "finish_later", None) if reading else None
            self._handle(change)
            second: Sequence[str] | None = None
            second_later: Callable[[], Sequence[str]] | None = None
            if reading and not confirmed:
                self._spotting, second = False, ()  # no voice: nothing to read
            elif later is not None and self._group is not None:
                # A slow second reading (a Whisper pass) runs off the audio path, and the
                # final words reach the policy together with it; tier 2 waits for them
                # as for any final words, up to its own limit.
                self._spotting = False
                work = self._recognize(later)
                second_later = work if callable(work) else None
            elif reading:
                second = self._spotted()
            words = Words(at, final, final=True)
            if own_later is None and second_later is None:
                self._final_words(_with_reading(words, second))
                return
            assert self._group is not None
            pending = self._pending_final = _PendingFinal(
                words, own=own_later is not None, reading=second_later is not None, heard=second
            )
            # Tier 2 waits for the words on their way as for a reading, up to its limit.
            self._handle(ReadingStarted(at, self.policy.utterance))
            if second_later is not None:
                self._group.create_task(self._second_reading(pending, second_later))
            if own_later is not None:
                self._group.create_task(self._own_final(pending, own_later))

    def _finish_own(self) -> Sequence[str] | Callable[[], Sequence[str]]:
        """Close the recogniser's utterance: its final words, or work that waits for them
        off the loop, from a recogniser that decodes elsewhere (``finish_later``)."""
        later = getattr(self.recognizer, "finish_later", None)
        if later is not None and self._group is not None:
            work = self._recognize(later)
            return work if callable(work) else ()
        return tuple(self._recognize(self.recognizer.finish))

    async def _second_reading(
        self, pending: _PendingFinal, work: Callable[[], Sequence[str]]
    ) -> None:
        try:
            heard: Sequence[str] | None = await run_blocking(work)
        except Exception as exc:
            self._recogniser_failed(exc)
            heard = None
        if pending.reading:  # (not dropped meanwhile)
            pending.reading, pending.heard = False, heard
            self._deliver_final(pending)

    async def _own_final(self, pending: _PendingFinal, work: Callable[[], Sequence[str]]) -> None:
        try:
            words = tuple(await run_blocking(work))
        except Exception as exc:
            self._recogniser_failed(exc)  # the last partial words stand
        else:
            pending.words = replace(pending.words, words=words)
            if self._pending_final is pending and pending.reading:
                # Final words wait for the reading; meanwhile tier 2 has the recogniser's
                # latest, should it decide without the reading.
                self._partial_words = words
                self._handle(Words(self.now(), words))
        pending.own = False
        self._deliver_final(pending)

    def _deliver_final(self, pending: _PendingFinal) -> None:
        if self._pending_final is pending and not pending.own and not pending.reading:
            self._pending_final = None
            self._final_words(_with_reading(replace(pending.words, at=self.now()), pending.heard))

    def _flush_final(self, at: float, *, user_went_on: bool = True) -> None:
        """Stop waiting for a second reading: the user spoke again (at ``at``), and the
        policy must hear one utterance's end before the next start; or tier 2 decided
        without the reading (it waits only so long). A reading whose answer nobody reads
        would only hold up the model that the turn's transcript and other sessions'
        readings share. The final words go now, or, when tier 2 decided and the
        recogniser's own final words are still on their way, as soon as they come: the
        user's turn waits for them (its transcript starts with them)."""
        pending = self._pending_final
        if pending is None:
            return
        if pending.reading:
            pending.reading, pending.heard = False, None
            drop = getattr(self.second_opinion, "drop_later", None)
            if drop is not None:
                self._recognize(drop)
        if pending.own and not user_went_on:
            return
        self._pending_final = None
        words = replace(pending.words, at=at, user_went_on=user_went_on)
        self._final_words(_with_reading(words, pending.heard))

    def _final_words(self, words: Words) -> None:
        self._handle(words)
        self._estimate_turn_end()
        user_turn = (Floor.LISTENING, Floor.YIELDED, Floor.PREPARING)
        if self.transcriber is not None and self.policy.state in user_turn:
            # Part of a user turn: transcribe now, while the turn-end silence runs.
            # An overlap that tier 2 may still resume from waits until it is needed.
            self._utterance_transcript(self._utterance)

    def _estimate_turn_end(self) -> None:
        """The user paused: ask the turn-end detector, off the audio path, about the turn.

        The answer reaches the policy as an event whenever it is ready; until then, or if
        the detector fails, the policy's fixed silence stands.
        """
        detector, policy = self.turn_end, self.policy
        if detector is None or self._group is None or policy.user_speaking:
            return
        if policy.state not in (Floor.LISTENING, Floor.YIELDED, Floor.PREPARING):
            return
        words = policy.turn_words
        if not words:
            return
        last = self.conversation.last_assistant()
        context = last.content if last is not None else ""
        self._group.create_task(
            self._turn_end_probability(detector, policy.utterance, words, context)
        )

    async def _turn_end_probability(
        self, detector: TurnEndDetector, utterance: int, words: tuple[str, ...], context: str
    ) -> None:
        try:
            probability = await run_blocking(lambda: detector.probability_complete(words, context))
        except Exception as exc:
            message = f"turn-end detector: {describe_error(exc)}"
            if not self.errors or self.errors[-1] != message:
                self.errors.append(message)
                log.warning("%s", message)
            return
        self._handle(TurnEndProbability(self.now(), utterance, float(probability)))

    def _speech_started(self, start: SpeechStarted) -> None:
        self._flush_final(start.at)
        self._utterance += 1
        if self.transcriber is not None:
            self._utterance_audio[self._utterance] = list(self._preroll)
            for old in [u for u in self._utterance_audio if u < self._utterance - 20]:
                del self._utterance_audio[old]  # a turn never spans that many
        over_echo = self.echo is not None and self.echo.removing(start.at)
        self._handle(
            replace(
                start,
                context=self._agent_context(),
                over_echo=over_echo,
                after_question_s=self._after_question(),
            )
        )
        # Tier 1 has acted. The recogniser's catch-up on the pre-roll costs tens of
        # milliseconds of CPU, so it waits one turn of the event loop: the transport
        # sends the pause first, instead of after the recogniser.
        self._backlog = list(self._preroll)
        # Readings are timed from the onset, not from the catch-up: on a busy loop that
        # runs up to a tenth of a second late.
        self._spot_started_at = start.at
        assert self._loop is not None
        self._loop.call_soon(self._catch_up)

    def _catch_up(self, at: float | None = None) -> None:
        """Start the recogniser on the utterance's pre-roll, if that is still to do.

        Runs one loop turn after a speech start, with any frames that came meanwhile, or
        at once when the utterance ends sooner, so the words follow the audio's order.
        """
        backlog, self._backlog = self._backlog, None
        if backlog is None:
            return
        self._recognize(self.recognizer.start)
        words: Sequence[str] = ()
        for past in backlog:
            words = self._recognize(self.recognizer.feed, past)
        self._partial_words = tuple(words)
        # Inside a frame's processing, its timestamp: the policy's clock never runs back.
        now = self.now() if at is None else at
        if self.second_opinion is not None and self.policy.state is Floor.TENTATIVE:
            # Only sound over the agent's voice needs the second reading: tier 2 is
            # deciding about it.
            self._spotting = self._recognize(self.second_opinion.start) is None
            self._last_peek = float("-inf")
            for past in backlog:
                self._spot(past, now)
        self._handle(Words(now, self._partial_words))

    def _spot(self, frame: FloatAudio, at: float) -> None:
        if not self._spotting or self.second_opinion is None:
            return
        if not self.policy.overlap_open:
            # Decided already: the reading is no longer wanted. Close the utterance
            # without doing a slow reader's work.
            self._spotting = False
            later = getattr(self.second_opinion, "finish_later", None)
            self._recognize(later if later is not None else self.second_opinion.finish)
            return
        self._recognize(self.second_opinion.feed, frame)
        self._peek(at)

    def _peek(self, now: float) -> None:
        """Start a reading of the overlap so far, if the second opinion offers one and it
        is time: a command can then commit before the user has finished saying it, and a
        long backchannel is known as one before the duration rule would take it for a bid.
        One reading at a time, from ``_PEEK_FIRST_S`` after the start and then every
        ``_PEEK_EVERY_S``."""
        peek = getattr(self.second_opinion, "peek_later", None)
        if peek is None or self._group is None or self._peeked_at is not None:
            return
        if now < self._spot_started_at + _PEEK_FIRST_S or now < self._last_peek + _PEEK_EVERY_S:
            return
        voiced_at = self.policy.overlap_voiced_at
        if voiced_at is None or voiced_at < now:
            # Not voice now: the sound may be over, and its final reading, which would
            # queue behind this one, is due within the segmenter's hangover.
            return
        work = self._recognize(peek)
        if callable(work):
            self._peeked_at = self._last_peek = now
            self._handle(ReadingStarted(now, self.policy.utterance))
            self._group.create_task(
                self._early_reading(self.policy.utterance, self._spot_started_at, work)
            )

    async def _early_reading(
        self, utterance: int, since: float, work: Callable[[], Sequence[str]]
    ) -> None:
        try:
            heard = await run_blocking(work)
        except Exception as exc:
            self._recogniser_failed(exc)
            return
        finally:
            self._peeked_at = None
        if since != self._spot_started_at:
            return  # a reading of audio the reader has since dropped (the echo's)
        chosen = isinstance(heard, ChosenWords)
        self._handle(Reading(self.now(), utterance, tuple(heard), chosen))

    def _spotted(self) -> Sequence[str] | None:
        """Close the second recogniser's utterance: its final words, or None if it did not run."""
        if not self._spotting or self.second_opinion is None:
            return None
        self._spotting = False
        heard: Sequence[str] = self._recognize(self.second_opinion.finish)
        return heard

    def _agent_context(self) -> str:
        """What the agent had said: the words heard, through the end of that sentence."""
        reply = self.replies.get(self.policy.reply_id or 0)
        if reply is None:
            return ""
        heard = len(reply.tracker.heard_words(reply.played))
        if heard == 0:
            return ""
        words = reply.text.split()
        end = min(heard, len(words))
        while end < len(words) and not final_mark(words[end - 1]):
            end += 1
        return " ".join(words[:end])

    def _after_question(self) -> float | None:
        """How long ago the agent's latest sentence, a question, ended in the user's ear."""
        reply = self.replies.get(self.policy.reply_id or 0)
        return None if reply is None else reply.tracker.after_question_s(reply.played)

    def _recognize(self, step: Callable[..., Any], *args: Any) -> Any:
        """Run one recogniser step; a failure costs the words, never the session.

        Without words tier 2 still decides on duration and voice, so the session keeps
        listening and says why in :attr:`errors`.
        """
        try:
            return step(*args)
        except Exception as exc:
            self._recogniser_failed(exc)
            return ()

    def _recogniser_failed(self, exc: Exception) -> None:
        message = f"recogniser: {describe_error(exc)}"
        if not self.errors or self.errors[-1] != message:
            self.errors.append(message)
            log.warning("%s", message)

    # -- the policy loop ----------------------------------------------------------------

    def _handle(self, event: Event) -> None:
        for action in self.policy.handle(event):
            self._do(action)
        pending = self._pending_final
        if pending is not None and pending.reading and not self.policy.overlap_open:
            self._flush_final(event.at, user_went_on=False)  # decided without the reading
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.policy.next_deadline()
        if deadline is not None:
            assert self._loop is not None
            self._timer = self._loop.call_at(deadline, self._on_timer, deadline)

    def _on_timer(self, deadline: float) -> None:
        self._timer = None
        # A timer may fire a hair before its deadline in floating point; the policy must
        # see the deadline reached, or it would ask for the same timer forever.
        self._floor = max(self.now(), deadline)
        self._handle(Tick(self._floor))

    def _do(self, action: Action) -> None:
        log.debug("action %s", action)
        if self.echo is not None:
            self._echo_follow(action)
        match action:
            case StartReply():
                self._start_reply(action)
            case ReleaseOutput():
                self._release(self.replies[action.reply_id])
            case PauseOutput():
                self.sink.pause()
            case DuckOutput():
                self.sink.duck(self.config.duck_gain)
            case ResumeOutput():
                self.sink.resume()
                record = self._record_for(action.reply_id)
                if record is not None:
                    self._log_record(record)
            case FlushOutput():
                self.sink.clear()
            case CancelReply():
                self._cancel(action.reply_id)
            case Truncate():
                self._truncate(action.reply_id, action.played)
            case ReplyFinished():
                text = self.replies[action.reply_id].tracker.all_text()
                self.recorded[action.reply_id] = text
                self.conversation.add_assistant(text)

    def _write(self, reply_id: int, audio: FloatAudio) -> None:
        self.sink.write(reply_id, audio)
        if self.echo is not None:
            self.echo.write(reply_id, audio)

    def _echo_follow(self, action: Action) -> None:
        """Keep the echo reference playing what the sink plays: stopped, ducked or not."""
        assert self.echo is not None
        match action:
            case PauseOutput() | FlushOutput():
                self.echo.stopped(self.now())
                self.echo.set_gain(1.0)
            case DuckOutput():
                self.echo.set_gain(self.config.duck_gain)
            case ResumeOutput():
                self.echo.set_gain(1.0)

    # -- replies ------------------------------------------------------------------------

    def _start_reply(self, action: StartReply) -> None:
        reply = Reply(action.reply_id, PlayoutTracker(self.tts.sample_rate))
        reply.user_turn = (action.mode, " ".join(action.user_words))
        self.replies[reply.reply_id] = reply
        if not action.preemptive:
            self._release(reply)
        # A preemptive reply answers a turn that may not be over: it keeps the user's
        # words to itself until the policy releases it.
        assert self._group is not None, "use the session inside 'async with'"
        if self.transcriber is not None and action.utterances:
            reply.transcript = self._group.create_task(self._correct_turn(reply, action))
        reply.task = self._group.create_task(self._run_reply(reply, action))

    def _llm_input(self, reply: Reply, action: StartReply) -> list[ChatMessage]:
        view = self.conversation
        if reply.user_turn is not None:
            view = Conversation(self.conversation.system_prompt, list(self.conversation.messages))
            _add_user_turn(view, *reply.user_turn)
        interrupted = (
            self._interrupted.get(action.after_reply) if action.after_reply is not None else None
        )
        return build_llm_input(view, action.mode, interrupted)

    # -- accurate transcripts -----------------------------------------------------------

    def _utterance_transcript(self, utterance: int) -> asyncio.Task[str | None]:
        task = self._transcripts.get(utterance)
        if task is None:
            assert self._group is not None
            audio = self._utterance_audio.pop(utterance, [])
            task = self._group.create_task(self._transcribe(utterance, audio))
            self._transcripts[utterance] = task
            for old in [u for u in self._transcripts if u < utterance - 20]:
                del self._transcripts[old]
        return task

    async def _transcribe(self, utterance: int, frames: list[FloatAudio]) -> str | None:
        """Whisper's text of one utterance; None if it failed (the recogniser's words stand)."""
        assert self.transcriber is not None
        if not frames:
            return None
        audio = np.concatenate(frames)
        transcriber = self.transcriber
        async with self._transcribing:
            try:
                return await run_blocking(lambda: transcriber.transcribe(audio))
            except Exception as exc:
                message = f"transcriber: {describe_error(exc)}"
                self.errors.append(message)
                log.warning("utterance %d: %s", utterance, message)
                return None

    async def _correct_turn(self, reply: Reply, action: StartReply) -> None:
        """Replace the recogniser's words of the user's turn with the transcriber's text.

        Owned by the session, not the reply: if the reply is cancelled meanwhile, the
        conversation still gets the better text.
        """
        texts = [await self._utterance_transcript(u) for u in action.utterances]
        if any(text is None for text in texts):
            return
        text = " ".join(t for t in texts if t).strip()
        if not text:
            return
        if reply.user_turn is not None:  # not yet in the conversation
            reply.user_turn = (reply.user_turn[0], text)
        elif reply.turn_message is not None:
            index, before = reply.turn_message
            message = self.conversation.messages[index]
            content = f"{before} {text}".strip()
            self.conversation.messages[index] = replace(message, content=content)
        self._log_event("transcript", reply.reply_id, text=text)

    def _cancel(self, reply_id: int) -> None:
        reply = self.replies[reply_id]
        if reply.cancelled_at is None:
            reply.cancelled_at = self.now()
        if reply.task is not None and not reply.task.done():
            reply.task.cancel()  # _run_reply settles the ledger once the group has unwound
            # The group would cancel its tasks only when the reply's task next runs, a
            # loop turn later: an LLM token due in that turn would still come.
            for part in reply.parts:
                part.cancel()
        else:
            self._settle_cancel(reply)

    def _release(self, reply: Reply) -> None:
        """The reply answers the user's turn for good: record the turn, play the audio."""
        if reply.user_turn is not None:
            reply.turn_message = _add_user_turn(self.conversation, *reply.user_turn)
            reply.user_turn = None
        reply.released.set()
        for audio in reply.held:
            self._write(reply.reply_id, audio)
        reply.held.clear()
        if reply.generated and reply.played >= reply.tracker.total_samples:
            self.playout(reply.reply_id, reply.played)

    def _truncate(self, reply_id: int, played: int) -> None:
        reply = self.replies[reply_id]
        if reply.user_turn is not None:  # a held reply failed: the user's words still count
            reply.turn_message = _add_user_turn(self.conversation, *reply.user_turn)
            reply.user_turn = None
        heard = reply.tracker.heard_text(played)
        self.recorded[reply_id] = heard
        index = None
        if heard:
            self.conversation.add_assistant(heard, interrupted=True)
            index = len(self.conversation.messages) - 1
        reply.cut = (index, played)
        heard_count = len(heard.split())
        unsaid = " ".join(reply.text.split()[heard_count:])
        self._interrupted[reply_id] = InterruptedReply(heard=heard, unsaid=unsaid)
        record = self._record_for(reply_id)
        if record is not None and record.decision == "commit":
            record.heard_text = heard
            last = self.conversation.last_assistant()
            record.recorded_text = last.content if last is not None and heard else ""
        if reply.error is not None:
            self.errors.append(f"reply {reply_id}: {reply.error}")
        self._complete_record(reply)

    def _recut(self, reply: Reply, played: int) -> None:
        """A report that arrives after the cut says more was heard: record that instead.

        A remote player's cursor reaches the session a report interval and a network
        delay late, and a commit can come before the report sent right after the clear;
        that report is the truth of where the audio stopped.
        """
        assert reply.cut is not None
        index, _ = reply.cut
        reply.cut = (index, played)
        heard = reply.tracker.heard_text(played)
        if index is None or heard == self.recorded.get(reply.reply_id):
            return  # nothing was recorded at the cut, or the words did not change
        self.recorded[reply.reply_id] = heard
        message = self.conversation.messages[index]
        self.conversation.messages[index] = replace(message, content=heard)
        unsaid = " ".join(reply.text.split()[len(heard.split()) :])
        self._interrupted[reply.reply_id] = InterruptedReply(heard=heard, unsaid=unsaid)
        record = self._record_for(reply.reply_id)
        if record is not None and record.decision == "commit":
            record.heard_text = record.recorded_text = heard
        self._log_event("recut", reply.reply_id, played=played, heard=heard)

    async def _run_reply(self, reply: Reply, action: StartReply) -> None:
        try:
            if reply.transcript is not None:
                # Answer what the user said, not what the streaming recogniser guessed;
                # if the transcriber is slow, answer the guess rather than keep them waiting.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        asyncio.shield(reply.transcript), self.config.transcript_wait_s
                    )
            messages = self._llm_input(reply, action)
            async with asyncio.TaskGroup() as group:
                sentences: asyncio.Queue[str | None] = asyncio.Queue()
                reply.parts = [
                    group.create_task(self._generate(reply, messages, sentences)),
                    group.create_task(self._voice(reply, sentences)),
                ]
        except asyncio.CancelledError:
            self._settle_cancel(reply)
            raise
        except Exception as exc:  # one provider failing ends its reply, not the session
            reply.error = describe_error(exc)
            log.warning("reply %d failed: %s", reply.reply_id, reply.error)
            self._handle(ReplyFailed(self.now(), reply.reply_id, reply.error))
            self._settle_cancel(reply)

    def _settle_cancel(self, reply: Reply) -> None:
        """Count what the LLM produced after the cancel, once the reply has unwound."""
        if reply.cancelled_at is None:
            return
        reply.tokens_after_cancel = sum(
            stream.tokens_after(reply.cancelled_at)
            for stream in reply.streams
            if isinstance(stream, TokenLedger)
        )
        reply.settled = True
        self._complete_record(reply)

    def _complete_record(self, reply: Reply) -> None:
        """Log a committed interruption once it is both truncated and settled."""
        record = self._record_for(reply.reply_id)
        if record is None or record.decision != "commit":
            return
        record.tokens_after_cancel = reply.tokens_after_cancel
        if reply.settled and record.heard_text is not None:
            self._log_record(record)

    async def _generate(
        self, reply: Reply, messages: Sequence[ChatMessage], sentences: asyncio.Queue[str | None]
    ) -> None:
        history = list(messages)
        for _ in range(self.config.max_tool_rounds + 1):
            calls: list[ToolCall] = []
            try:
                await self._stream_round(reply, history, sentences, calls)
            except Exception as exc:
                if self.config.fallback_line is None:
                    raise
                self._note_error(reply.reply_id, f"llm: {describe_error(exc)}")
                reply.text = f"{reply.text} {self.config.fallback_line}".strip()
                sentences.put_nowait(self.config.fallback_line)
                break
            if not calls:
                break
            history += await self._run_tools(reply, calls)
        sentences.put_nowait(None)

    async def _stream_round(
        self,
        reply: Reply,
        messages: Sequence[ChatMessage],
        sentences: asyncio.Queue[str | None],
        calls: list[ToolCall],
    ) -> None:
        """One LLM call: text goes out sentence by sentence, tool calls into ``calls``."""
        pending = ""
        stream = self.llm.stream(messages, [t.spec for t in self.config.tools])
        reply.streams.append(stream)
        try:
            async for item in stream:
                if isinstance(item, ToolCall):
                    calls.append(item)
                    continue
                if reply.tokens == 0:
                    self._handle(FirstToken(self.now(), reply.reply_id))
                reply.tokens += 1
                reply.text += item
                pending += item
                while (match := _SENTENCE_END.search(pending)) is not None:
                    sentence, pending = pending[: match.end()].strip(), pending[match.end() :]
                    sentences.put_nowait(sentence)
        finally:
            # Close the stream now, not at garbage collection: an HTTP provider must see
            # the disconnect at once so its server stops generating.
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
            # Whatever was generated before a failure is still said.
            if pending.strip():
                sentences.put_nowait(pending.strip())

    async def _run_tools(self, reply: Reply, calls: Sequence[ToolCall]) -> list[ChatMessage]:
        """Run the calls in order; their outcomes go into the conversation and the result."""
        await reply.released.wait()  # nothing with side effects before the turn is over
        self.conversation.add_tool_calls(calls, PENDING_RESULT)
        out = [ChatMessage("assistant", "", tool_calls=tuple(calls))]
        for call in calls:
            self._log_event("tool_call", reply.reply_id, name=call.name, id=call.id)
            found = self._tools.get(call.name)
            if found is None:
                result = f"error: there is no tool named {call.name!r}"
                self.conversation.set_tool_result(call.id, result)
            elif found.cancel_safe:
                try:
                    result = await self._call_tool(reply.reply_id, found, call)
                except asyncio.CancelledError:
                    self.conversation.set_tool_result(call.id, CANCELLED_RESULT)
                    self._log_event("tool_cancelled", reply.reply_id, name=call.name, id=call.id)
                    raise
            else:
                # Owned by the session, not the reply: a cancel of the reply stops waiting
                # for it, never the call itself.
                assert self._group is not None
                task = self._group.create_task(self._call_tool(reply.reply_id, found, call))
                result = await asyncio.shield(task)
            out.append(ChatMessage("tool", result, tool_call_id=call.id))
        return out

    async def _call_tool(self, reply_id: int, found: Tool, call: ToolCall) -> str:
        try:
            result = await found.call(call.arguments)
        except Exception as exc:  # the model hears about the failure; the session goes on
            result = f"error: {describe_error(exc)}"
            self._note_error(reply_id, f"tool {call.name}: {describe_error(exc)}")
        self.conversation.set_tool_result(call.id, result)
        self._log_event("tool_result", reply_id, name=call.name, id=call.id, result=result)
        return result

    def _note_error(self, reply_id: int, message: str) -> None:
        self.errors.append(f"reply {reply_id}: {message}")
        log.warning("reply %d: %s", reply_id, message)
        self._log_event("error", reply_id, error=message)

    def _log_event(self, event: str, reply_id: int, **fields: object) -> None:
        timeline_log.info(
            json.dumps({"event": event, "at": self.now(), "reply_id": reply_id, **fields})
        )

    async def _voice(self, reply: Reply, sentences: asyncio.Queue[str | None]) -> None:
        while (sentence := await sentences.get()) is not None:
            chunks = await run_blocking(lambda s=sentence: list(self.tts.synthesize(s)))
            for chunk in chunks:
                reply.tracker.add(chunk)
                if reply.released.is_set():
                    self._write(reply.reply_id, chunk.audio)
                else:
                    reply.held.append(chunk.audio)
        reply.generated = True
        if reply.released.is_set() and reply.played >= reply.tracker.total_samples:
            self.playout(reply.reply_id, reply.played)

    def _record_for(self, reply_id: int) -> InterruptionRecord | None:
        for record in reversed(self.policy.interruptions):
            if record.reply_id == reply_id:
                return record
        return None

    def _log_record(self, record: InterruptionRecord) -> None:
        timeline_log.info(json.dumps(record.as_dict()))


def _add_user_turn(
    conversation: Conversation, mode: ReplyMode, text: str
) -> tuple[int, str] | None:
    """Add the user's words; return where they went and the text they were added to."""
    if mode == "merge":
        return conversation.extend_last_user(text)
    if text:
        conversation.add_user(text)
        return len(conversation.messages) - 1, ""
    return None


def describe_error(exc: BaseException) -> str:
    """One line for an error, looking inside task-group exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


@dataclass(eq=False)
class _PendingFinal:
    """An utterance's final words on their way to the policy: they wait for the
    recogniser's own final words (``own``), for a second reading of them (``reading``),
    or for both. ``words`` holds the partial words until the recogniser's final ones come."""

    words: Words
    own: bool
    reading: bool
    heard: Sequence[str] | None = None


def _with_reading(final: Words, heard: Sequence[str] | None) -> Words:
    """The final words with the second recogniser's reading of them (None: none ran)."""
    if heard is None:
        return final
    too_close = isinstance(heard, TooClose)
    return replace(final, second_opinion=tuple(heard), second_opinion_too_close=too_close)
