"""The floor policy: who holds the floor, and what happens when the user talks over the agent.

Rules of this module:

1. Everything that decides who has the floor lives in this file. The tier-2 judgement
   (real bid for the floor, or backchannel/noise) is delegated to a
   :class:`~bargein.decider.Decider`, but *acting* on it happens only here.
2. No I/O, no clock. Every event carries its own timestamp ``at`` (seconds, any origin,
   non-decreasing). :meth:`FloorPolicy.handle` returns the actions the runtime must
   carry out, in order.
3. Timers belong to the caller: ask :meth:`FloorPolicy.next_deadline` and send
   :class:`Tick` when it passes. A tick early or late is harmless.
4. An event the current state cannot receive raises :class:`PolicyError`. The one
   exception is a report about a reply that is no longer current (a late playout
   report after a cancel, say): real transports deliver those, so they are ignored.
5. Every state change goes through :data:`TRANSITIONS`; the docs' diagram is drawn from
   the same table (``python -m bargein.policy``).

The six steps of an interruption, all in :meth:`FloorPolicy._on_speech_started`,
:meth:`FloorPolicy._decide` and :meth:`FloorPolicy._commit`:

1. detect: user speech starts while the agent is THINKING or SPEAKING;
2. tier 1: pause (or duck) the agent's audio on the same frame (state TENTATIVE); a
   duck becomes a pause if tier 2 is still undecided at ``duck_limit_s``;
3. tier 2: ask the decider until it commits or resumes. A sound the VAD voiced at one
   cut of its frames only (a knock, whose score depends on where the frames fall) does
   not commit: the decision waits for voice at both, or for the user to go on, and
   resumes if neither comes;
4. commit: flush output, cancel the reply (LLM and TTS together), truncate the assistant
   message to what was played; then 6. yield the floor (YIELDED) until the user's turn
   ends, and start the next reply under the session's restart policy;
5. resume: continue the paused audio from the exact sample it stopped at. A resume while
   the sound still goes on (the decider heard an "okay" in it) keeps listening to it: if
   the sound turns out to be more, tier 1 pauses again and tier 2 decides on all of it.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from bargein.decider import Decider, Decision, FeatureVector, FrameInfo, Overlap, RuleDecider
from bargein.turn_end import SilenceRule

RestartPolicy = Literal["restart", "respond", "resume"]
ReplyMode = Literal["turn", "restart", "respond", "resume", "merge"]
Tier1 = Literal["pause", "duck"]


class PolicyError(RuntimeError):
    """An event arrived that the policy's current state cannot receive."""


class Floor(enum.Enum):
    LISTENING = "listening"  # no reply in flight; the user may be talking
    PREPARING = "preparing"  # user paused; a reply is generated early, its output held
    THINKING = "thinking"  # reply requested, nothing played yet
    SPEAKING = "speaking"  # the agent's audio is playing
    TENTATIVE = "tentative"  # user speech over the agent; output paused/ducked; tier 2 deciding
    YIELDED = "yielded"  # interruption committed; listening until the user's turn ends


# ---------------------------------------------------------------------------------------
# Events (inputs)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeechStarted:
    """User sound began. ``voiced`` is False when only loudness, not the VAD, saw it."""

    at: float
    voiced: bool = True
    context: str = ""
    """What the agent had said by then (see :attr:`~bargein.decider.Overlap.agent_context`)."""
    over_echo: bool = False
    """An echo canceller was removing the agent's echo then (see
    :attr:`~bargein.decider.Overlap.over_echo`)."""
    after_question_s: float | None = None
    """How long after the end of the agent's question the sound began (see
    :attr:`~bargein.decider.Overlap.after_question_s`)."""


@dataclass(frozen=True)
class SpeechEnded:
    at: float


@dataclass(frozen=True)
class VoiceActivity:
    """The VAD's speech probability for one frame (timestamped at the frame's end)."""

    at: float
    probability: float
    features: FeatureVector | None = None
    """The frame's acoustic features for tier 2 (:func:`bargein.tier2.frame_features`)."""
    second_cut: float | None = None
    """The probability of the same stream cut half a frame earlier, from a VAD that
    scores two cuts (None: one cut, and the frame's probability stands alone)."""


@dataclass(frozen=True)
class Words:
    """Recogniser output for the user's current utterance."""

    at: float
    words: tuple[str, ...]
    final: bool = False
    second_opinion: tuple[str, ...] | None = None
    """With a final: a second recogniser's reading of an overlap (None: none ran)."""
    second_opinion_too_close: bool = False
    """With a final: the second reading heard one of its phrases but could not tell a
    command from a backchannel (:class:`~bargein.providers.base.TooClose`)."""
    user_went_on: bool = False
    """With a final: the user spoke again while the second reading was under way, and the
    session gave up on it; the next sound starts at this instant."""


@dataclass(frozen=True)
class RequestReply:
    """Ask for a reply now, as if the user's turn had just ended (API, tests, benchmark)."""

    at: float


@dataclass(frozen=True)
class FirstToken:
    at: float
    reply_id: int


@dataclass(frozen=True)
class Playout:
    """The sink's playback cursor for a reply: samples actually played.

    ``complete`` is true once the reply is fully generated and every sample of it played.
    """

    at: float
    reply_id: int
    played: int
    complete: bool = False


@dataclass(frozen=True)
class ReplyFailed:
    at: float
    reply_id: int
    error: str


@dataclass(frozen=True)
class Tick:
    at: float


@dataclass(frozen=True)
class ReadingStarted:
    """A second recogniser began reading the overlap (the sound so far, or all of it at
    its end); its answer comes later as :class:`Reading` or with the final :class:`Words`.
    Also sent at a sound's end when only the final :class:`Words` are still to come, from
    a recogniser that decodes in another process.

    Tier 2 may wait a little for a reading under way rather than decide without it.
    """

    at: float
    utterance: int


@dataclass(frozen=True)
class Reading:
    """A second recogniser's reading of an overlap so far, while the user still talks.

    Counts only while ``utterance`` is the overlap tier 2 is deciding about; a reading
    that comes back after the decision, or after the sound ended, is ignored.
    """

    at: float
    utterance: int
    words: tuple[str, ...]
    chosen: bool = False
    """The reader chose ``words`` as the nearest of its phrases; it did not hear them
    outright (:class:`~bargein.providers.base.ChosenWords`)."""


@dataclass(frozen=True)
class EchoCancelled:
    """The echo control has started cancelling an echo of the agent it had let through
    (``bargein.echo``'s ``auto`` mode finding a room its gate cannot explain).

    An overlap under way may have begun on that echo: the voice the VAD heard in it until
    now, and the words made of it, were the agent's own. They stop counting; voice heard
    from here on, through the canceller, counts as before.
    """

    at: float


@dataclass(frozen=True)
class TurnEndProbability:
    """How likely the user's turn is complete, judged on the words up to ``utterance``.

    Only counts while that utterance is the last one and the user is silent; a late
    answer (the turn already ended, or the user went on) is ignored.
    """

    at: float
    utterance: int
    probability: float


Event = (
    SpeechStarted
    | SpeechEnded
    | VoiceActivity
    | Words
    | ReadingStarted
    | Reading
    | EchoCancelled
    | RequestReply
    | FirstToken
    | Playout
    | ReplyFailed
    | Tick
    | TurnEndProbability
)


# ---------------------------------------------------------------------------------------
# Actions (outputs)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartReply:
    reply_id: int
    mode: ReplyMode
    user_words: tuple[str, ...]
    after_reply: int | None = None
    """The interrupted reply this one follows, if any."""
    preemptive: bool = False
    """Started before the turn end was certain: hold its output until ReleaseOutput."""
    utterances: tuple[int, ...] = ()
    """The user's utterances this turn is made of, numbered from 1 in the order of their
    SpeechStarted events, so the runtime can fetch an accurate transcript of each."""


@dataclass(frozen=True)
class ReleaseOutput:
    """The user's turn really ended: let a preemptive reply be heard (and recorded)."""

    reply_id: int


@dataclass(frozen=True)
class PauseOutput:
    reply_id: int


@dataclass(frozen=True)
class DuckOutput:
    reply_id: int


@dataclass(frozen=True)
class ResumeOutput:
    reply_id: int


@dataclass(frozen=True)
class FlushOutput:
    reply_id: int


@dataclass(frozen=True)
class CancelReply:
    reply_id: int


@dataclass(frozen=True)
class Truncate:
    """Cut the reply's assistant message to the first ``played`` samples, mark it interrupted."""

    reply_id: int
    played: int


@dataclass(frozen=True)
class ReplyFinished:
    """The reply played to its end: record it whole."""

    reply_id: int


Action = (
    StartReply
    | ReleaseOutput
    | PauseOutput
    | DuckOutput
    | ResumeOutput
    | FlushOutput
    | CancelReply
    | Truncate
    | ReplyFinished
)


# ---------------------------------------------------------------------------------------
# The timeline of one interruption
# ---------------------------------------------------------------------------------------


@dataclass
class InterruptionRecord:
    """Everything measured about one overlap; the runtime fills in the last four fields."""

    reply_id: int
    onset_at: float
    tier1: Tier1 | Literal["hold"]
    tier1_at: float
    decision: Literal["commit", "resume"] | None = None
    reason: str = ""
    decided_at: float | None = None
    flushed_at: float | None = None
    cancelled_at: float | None = None
    resumed_at: float | None = None
    paused_at: float | None = None
    """After a duck: when the undecided sound outlasted ``duck_limit_s`` and the agent
    paused."""
    played_at_decision: int = 0
    user_words: tuple[str, ...] = ()
    readings: tuple[str, ...] = ()
    """The second opinion's readings of the sound so far when tier 2 decided, oldest
    first, and its final reading last if it had come (``final: ...``): what the decision
    had to go on besides the open recogniser's :attr:`user_words`."""
    tokens_after_cancel: int | None = None
    heard_text: str | None = None
    recorded_text: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def _readings(overlap: Overlap) -> tuple[str, ...]:
    early = tuple(" ".join(r) for r in overlap.early_readings)
    if overlap.second_opinion is None:
        return early
    return (*early, "final: " + " ".join(overlap.second_opinion))


# ---------------------------------------------------------------------------------------
# Transitions
# ---------------------------------------------------------------------------------------

TRANSITIONS: dict[tuple[Floor, str], Floor] = {
    (Floor.LISTENING, "reply requested"): Floor.THINKING,
    (Floor.LISTENING, "user turn ended"): Floor.THINKING,
    (Floor.LISTENING, "user paused"): Floor.PREPARING,
    (Floor.PREPARING, "user turn ended"): Floor.THINKING,
    (Floor.PREPARING, "user went on"): Floor.LISTENING,
    (Floor.PREPARING, "user went on after barging in"): Floor.YIELDED,
    (Floor.PREPARING, "reply failed"): Floor.LISTENING,
    (Floor.THINKING, "first audio played"): Floor.SPEAKING,
    (Floor.THINKING, "user speech"): Floor.TENTATIVE,
    (Floor.THINKING, "reply failed"): Floor.LISTENING,
    (Floor.SPEAKING, "user speech"): Floor.TENTATIVE,
    (Floor.SPEAKING, "reply complete"): Floor.LISTENING,
    (Floor.SPEAKING, "reply failed"): Floor.LISTENING,
    (Floor.TENTATIVE, "resume"): Floor.SPEAKING,
    (Floor.TENTATIVE, "resume before audio"): Floor.THINKING,
    (Floor.TENTATIVE, "commit"): Floor.YIELDED,
    (Floor.TENTATIVE, "reply complete"): Floor.LISTENING,
    (Floor.TENTATIVE, "reply failed"): Floor.LISTENING,
    (Floor.YIELDED, "user turn ended"): Floor.THINKING,
    (Floor.YIELDED, "user paused"): Floor.PREPARING,
}


def mermaid_diagram() -> str:
    """The state diagram, drawn from :data:`TRANSITIONS`."""
    lines = ["stateDiagram-v2", "    [*] --> listening"]
    for (src, trigger), dst in TRANSITIONS.items():
        lines.append(f"    {src.value} --> {dst.value}: {trigger}")
    return "\n".join(lines)


@dataclass
class PolicyConfig:
    restart_policy: RestartPolicy = "respond"
    tier1: Tier1 = "pause"
    duck_limit_s: float | None = None
    """With ``tier1="duck"``: how long the agent talks on, ducked, under a sound tier 2
    has not judged yet, before it pauses until the judgement (None: ducked until then).
    A backchannel judged within the limit costs the listener no silence; a real
    interruption is silenced by the limit at the latest."""
    turn_end_silence_s: float = 0.5
    """Silence after the user's speech ends before their turn counts as over (with
    ``turn_end="semantic"``: until a completeness probability arrives, or without one)."""
    final_wait_s: float = 0.5
    """How long a turn end waits for the recogniser's final words."""
    voiced_threshold: float = 0.5
    """A frame at or above this speech probability counts as voiced for tier 2."""
    one_cut_hold_s: float = 0.4
    """How long the agent stays paused after a sound the VAD voiced at one cut of its
    frames only would have committed, for the user to go on (then tier 2 decides on the
    whole), before it resumes (:meth:`FloorPolicy._heard_at_both_cuts`)."""
    preemptive: bool = True
    """Start the reply as soon as the user pauses with final words, before the turn end
    is certain; if they go on, the early reply is cancelled and started again."""
    turn_end: Literal["fixed", "semantic"] = "semantic"
    """``semantic``: a :class:`TurnEndProbability` for the pause sets its silence through
    ``turn_end_rule`` (short after a finished thought, long after an unfinished one)."""
    turn_end_rule: SilenceRule = field(default_factory=SilenceRule)

    def __post_init__(self) -> None:
        if self.duck_limit_s is not None and not self.duck_limit_s >= 0.0:
            raise ValueError(f"duck_limit_s must be zero or more, not {self.duck_limit_s!r}")


@dataclass
class _UserTurn:
    words: list[str] = field(default_factory=list)
    speaking: bool = False
    ended_at: float | None = None
    awaiting_final: bool = False
    utterance_words: tuple[str, ...] = ()
    utterances: list[int] = field(default_factory=list)
    completeness: float | None = None
    """The turn-end probability for the current pause, if one arrived in time."""


@dataclass(frozen=True)
class _Preemption:
    """What to restore if the user goes on after a preemptive start."""

    came_from: Floor
    pending_mode: ReplyMode
    interrupted_reply: int | None


class FloorPolicy:
    """The interruption state machine. Feed it events; carry out the actions it returns."""

    def __init__(self, config: PolicyConfig | None = None, decider: Decider | None = None) -> None:
        self.config = config or PolicyConfig()
        self.decider: Decider = decider or RuleDecider()
        self.state = Floor.LISTENING
        self.reply_id: int | None = None
        self.interruptions: list[InterruptionRecord] = []
        self._next_reply_id = 1
        self._played = 0
        self._overlap: Overlap | None = None
        """The overlap whose evidence still counts: tier 2's while TENTATIVE; in SPEAKING or
        THINKING, one it resumed from while the sound went on (since its ``resumed_at``)."""
        self._record: InterruptionRecord | None = None
        self._turn = _UserTurn()
        self._pending_mode: ReplyMode = "turn"
        self._interrupted_reply: int | None = None
        self._preemption: _Preemption | None = None
        self._utterance = 0
        self.preemptions: dict[int, Literal["held", "released", "discarded"]] = {}
        """Every preemptive reply and what became of it (the wasted-call count)."""
        self._now = float("-inf")
        self._recent: deque[FrameInfo] = deque(maxlen=8)
        """The latest frames with features: an overlap starts with the ones at its onset."""
        self._last_voiced: tuple[float, bool] = (float("-inf"), True)
        """The latest voiced frame's time, and whether it was voiced at both of the VAD's
        cuts (see :meth:`_heard_at_both_cuts`)."""

    # -- public -------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        if event.at < self._now:
            raise PolicyError(f"time went backwards: {event!r} after t={self._now}")
        self._now = event.at
        match event:
            case SpeechStarted():
                return self._on_speech_started(event)
            case SpeechEnded():
                return self._on_speech_ended(event)
            case VoiceActivity():
                return self._on_voice(event)
            case Words():
                return self._on_words(event)
            case ReadingStarted():
                return self._on_reading_started(event)
            case Reading():
                return self._on_reading(event)
            case EchoCancelled():
                return self._on_echo_cancelled()
            case RequestReply():
                if self.state is not Floor.LISTENING:
                    raise PolicyError(f"reply requested while {self.state.value}")
                return self._start_reply("reply requested", "turn", ())
            case FirstToken():
                self._check_reply(event.reply_id)
                return []
            case Playout():
                return self._on_playout(event)
            case ReplyFailed():
                return self._on_failed(event)
            case Tick():
                return self._on_tick(event.at)
            case TurnEndProbability():
                return self._on_turn_end_probability(event)
        raise PolicyError(f"unknown event {event!r}")

    def next_deadline(self) -> float | None:
        """When the caller should send a :class:`Tick` even if nothing else happens."""
        if self._overlap is not None:
            due = self.decider.deadline(self._overlap, self._now)
            held = self._overlap.one_cut_until
            if held is not None and self._now < held and (due is None or held < due):
                due = held
            limit = self._duck_limit_at()
            if limit is not None and (due is None or limit < due):
                return limit
            return due
        if self.state is Floor.PREPARING and self._turn.ended_at is not None:
            return self._turn.ended_at + self._turn_silence()
        if self.state in (Floor.LISTENING, Floor.YIELDED) and self._turn.ended_at is not None:
            if self._turn.awaiting_final:
                return self._turn.ended_at + self.config.final_wait_s
            return self._turn.ended_at + self._turn_silence()
        return None

    @property
    def overlap_open(self) -> bool:
        """Whether evidence about a sound over the agent still counts: tier 2 is deciding
        about it, or watching one it resumed over while it went on."""
        return self._overlap is not None

    @property
    def overlap_voiced_at(self) -> float | None:
        """When the VAD last scored the open overlap's sound as voice (None: no overlap
        is open, or it never did)."""
        if self._overlap is None or self._overlap.last_voiced_at == float("-inf"):
            return None
        return self._overlap.last_voiced_at

    @property
    def user_speaking(self) -> bool:
        return self._turn.speaking

    @property
    def turn_words(self) -> tuple[str, ...]:
        """The user's words so far in the turn being listened to."""
        return (*self._turn.words, *self._turn.utterance_words)

    @property
    def utterance(self) -> int:
        """The number of the user's latest utterance (one per SpeechStarted)."""
        return self._utterance

    # -- state changes ------------------------------------------------------------------

    def _go(self, trigger: str) -> None:
        try:
            self.state = TRANSITIONS[(self.state, trigger)]
        except KeyError:
            raise PolicyError(f"no transition from {self.state.value} on {trigger!r}") from None

    def _check_reply(self, reply_id: int) -> bool:
        """True if the event is about the current reply; False if about a past one."""
        if reply_id == self.reply_id:
            return True
        if 0 < reply_id < self._next_reply_id:
            return False
        raise PolicyError(f"event for reply {reply_id}, which was never started")

    def _start_reply(
        self, trigger: str, mode: ReplyMode, words: tuple[str, ...], preemptive: bool = False
    ) -> list[Action]:
        utterances = tuple(self._turn.utterances)
        if preemptive:
            self._preemption = _Preemption(self.state, self._pending_mode, self._interrupted_reply)
        self._go(trigger)
        reply_id = self._next_reply_id
        self._next_reply_id += 1
        self.reply_id = reply_id
        self._played = 0
        after = self._interrupted_reply if mode != "turn" else None
        self._interrupted_reply = None
        if preemptive:
            self.preemptions[reply_id] = "held"  # the turn stays open until released
        else:
            self._turn = _UserTurn()
        return [StartReply(reply_id, mode, words, after, preemptive, utterances)]

    # -- step 1 and 2: detect, then pause/duck on the same frame ------------------------

    def _on_speech_started(self, event: SpeechStarted) -> list[Action]:
        if self._turn.speaking:
            raise PolicyError("speech started twice without ending")
        self._utterance += 1
        self._turn.utterances.append(self._utterance)
        self._turn.speaking = True
        self._turn.ended_at = None
        self._turn.completeness = None
        self._turn.awaiting_final = False
        if self.state is Floor.TENTATIVE and self._overlap is not None:
            overlap = self._overlap
            overlap.speech_active = True
            overlap.speech_ended_at = None
            overlap.one_cut_until = None
            actions = self._decide(event.at)  # a command in the sound before commits
            if self.state is Floor.TENTATIVE and overlap.sound_at == event.at:
                # The final words given just now, as the user went on (``_on_words``):
                # the sound before ended undecided, its reading given up. Its words
                # become history, and this sound's own words, readings and length
                # decide.
                if overlap.final_words is not None:
                    overlap.partials.append((event.at, overlap.final_words))
                overlap.final_words = None
            return actions
        self._overlap = None  # a watched sound ended before this one: a new onset
        if self.state is Floor.PREPARING:
            return self._user_went_on()
        if self.state not in (Floor.THINKING, Floor.SPEAKING):
            return []
        assert self.reply_id is not None
        audible = self.state is Floor.SPEAKING
        self._go("user speech")
        # The VAD frame that opened the sound came just before, at the same time.
        last = self._last_voiced
        onset_frame = last if event.voiced and last[0] >= event.at else None
        self._overlap = Overlap(
            onset_at=event.at,
            agent_audible=audible,
            last_voiced_at=event.at if event.voiced else float("-inf"),
            voiced_at_both_cuts=onset_frame is not None and onset_frame[1],
            voiced_at_one_cut=onset_frame is not None and not onset_frame[1],
            frames=[f for f in self._recent if f.at > event.at - 0.07],
            agent_context=event.context,
            over_echo=event.over_echo,
            after_question_s=event.after_question_s,
        )
        tier1: Tier1 | Literal["hold"] = self.config.tier1 if audible else "hold"
        self._record = InterruptionRecord(self.reply_id, event.at, tier1, event.at)
        self.interruptions.append(self._record)
        action: Action = (
            DuckOutput(self.reply_id) if tier1 == "duck" else PauseOutput(self.reply_id)
        )
        return [action, *self._decide(event.at)]

    def _on_speech_ended(self, event: SpeechEnded) -> list[Action]:
        if not self._turn.speaking:
            raise PolicyError("speech ended without having started")
        self._turn.speaking = False
        self._turn.ended_at = event.at
        self._turn.awaiting_final = True
        if self._overlap is not None:
            self._overlap.speech_active = False
            self._overlap.speech_ended_at = event.at
            return self._decide(event.at)
        return []

    def _on_voice(self, event: VoiceActivity) -> list[Action]:
        if event.features is not None:
            frame = FrameInfo(event.at, event.probability, event.features)
            self._recent.append(frame)
            if self._overlap is not None:
                self._overlap.frames.append(frame)
        threshold = self.config.voiced_threshold
        voiced = event.probability >= threshold
        if voiced:
            both = event.second_cut is None or event.second_cut >= threshold
            self._last_voiced = (event.at, both)
        if self._overlap is None:
            return []
        if voiced:
            self._overlap.last_voiced_at = event.at
            if both:
                self._overlap.voiced_at_both_cuts = True
            else:
                self._overlap.voiced_at_one_cut = True
        return self._decide(event.at)

    def _on_words(self, event: Words) -> list[Action]:
        # Words heard before the echo canceller took over were the agent's own.
        words = event.words[self._overlap.echo_words :] if self._overlap else event.words
        if event.final:
            self._turn.words.extend(words)
            self._turn.utterance_words = ()
            self._turn.awaiting_final = False
        else:
            self._turn.utterance_words = words
        if self._overlap is not None:
            if event.final:
                self._overlap.final_words = words
                self._overlap.second_opinion = event.second_opinion
                self._overlap.second_opinion_too_close = event.second_opinion_too_close
                self._overlap.reading_since = None
                if event.user_went_on and self.state is Floor.TENTATIVE:
                    # "Oh, | really?": the reading that would have told "oh" from the
                    # open recogniser's "bull" is gone. The next sound starts now and is
                    # read afresh; tier 2 decides on it rather than on "bull".
                    self._overlap.sound_at = event.at
                    return []
            else:
                self._overlap.partials.append((event.at, words))
            if self.state is not Floor.TENTATIVE:
                self._forget_overlap_words()
            return self._decide(event.at)
        if self.state in (Floor.LISTENING, Floor.YIELDED):
            return self._maybe_turn_end(event.at)
        if self.state is Floor.PREPARING:
            return []  # the turn's words are already in the held reply
        # THINKING or SPEAKING: the words belong to an overlap tier 2 already resumed
        # from; they are not the user's turn.
        self._forget_overlap_words()
        return []

    def _forget_overlap_words(self) -> None:
        self._turn.words.clear()
        self._turn.utterance_words = ()
        self._turn.utterances.clear()

    def _on_reading_started(self, event: ReadingStarted) -> list[Action]:
        overlap = self._reading_overlap(event.utterance)
        if overlap is not None:
            overlap.reading_since = event.at
        return []

    def _on_reading(self, event: Reading) -> list[Action]:
        overlap = self._reading_overlap(event.utterance)
        if overlap is None or not overlap.speech_active:
            return []  # decided, another utterance, or the sound ended: its final reading counts
        if overlap.reading_since is not None:
            overlap.last_read_took = event.at - overlap.reading_since
        overlap.reading_since = None
        overlap.early_readings.append(event.words)
        overlap.early_chosen.append(event.chosen)
        return self._decide(event.at)

    def _on_echo_cancelled(self) -> list[Action]:
        if self.state is Floor.TENTATIVE and self._overlap is not None:
            overlap = self._overlap
            overlap.last_voiced_at = float("-inf")
            overlap.voiced_at_both_cuts = overlap.voiced_at_one_cut = False
            overlap.over_echo = True
            overlap.echo_words += len(overlap.latest_words)
            overlap.partials.clear()
            overlap.early_readings.clear()
            overlap.early_chosen.clear()
            overlap.reading_since = None  # the session drops a reading under way of the echo
        return []

    def _reading_overlap(self, utterance: int) -> Overlap | None:
        """The overlap tier 2 is deciding about or watching, if a reading of ``utterance``
        concerns it."""
        if utterance != self._utterance:
            return None
        return self._overlap

    def _on_tick(self, now: float) -> list[Action]:
        if self._overlap is not None:
            return self._decide(now)
        if self.state in (Floor.LISTENING, Floor.YIELDED, Floor.PREPARING):
            return self._maybe_turn_end(now)
        return []

    # -- step 3: tier 2 -----------------------------------------------------------------

    def _decide(self, now: float) -> list[Action]:
        assert self._overlap is not None
        decision = self._heard_at_both_cuts(now, self.decider.decide(self._overlap, now))
        if self.state is not Floor.TENTATIVE:
            return self._recheck(now, decision)
        assert self._record is not None
        if decision is None:
            return self._pause_if_ducked_too_long(now)
        record = self._record
        record.decision = decision.kind
        record.reason = decision.reason
        record.decided_at = now
        record.played_at_decision = self._played
        record.user_words = self._overlap.latest_words
        record.readings = _readings(self._overlap)
        overlap = self._overlap
        self._overlap = None
        self._record = None
        if decision.kind == "commit":
            return self._commit(now, record, overlap)
        if overlap.speech_active:
            # Resumed while the sound goes on ("okay" heard in it): keep listening to it.
            self._overlap, overlap.resumed_at = overlap, now
        return self._resume(now, record)

    def _heard_at_both_cuts(self, now: float, decision: Decision | None) -> Decision | None:
        """Hold back a commit on a sound the VAD voiced at one cut of its frames only.

        Silero scores a short, sharp sound voice or not depending on where its 512-sample
        frames fall: the same door knock at most 0.07 at one cut, twelve frames over 0.5
        at another. Once voiced, the recognisers make words of it ("sorry", "and the
        dead"), which commit. Speech is voiced at both cuts, a knock at one at most; so,
        now and then, is a soft first word ("Stop," "Wait,") said before the rest of the
        sentence. So such a commit waits: for a frame voiced at both, or, once the sound
        has ended, for ``one_cut_hold_s`` with the agent still paused, in which the user
        going on decides on the whole; only then does the agent resume. (A watched sound,
        the agent playing over it, just goes on being watched.) Resuming over a sound
        with no voice stays with the first cut alone.
        """
        overlap = self._overlap
        assert overlap is not None
        if decision is None or decision.kind != "commit" or overlap.voiced_at_both_cuts:
            return decision
        if not overlap.voiced_at_one_cut:
            return decision  # no VAD frames at all: the runtime decides on other evidence
        if overlap.speech_active:
            return None
        if overlap.one_cut_until is None:
            overlap.one_cut_until = now + self.config.one_cut_hold_s
        if now < overlap.one_cut_until:
            return None
        return Decision("resume", "one cut:" + decision.reason)

    def _duck_limit_at(self) -> float | None:
        """When a ducked agent pauses for a sound still undecided (None: no such limit)."""
        record, limit = self._record, self.config.duck_limit_s
        if self.state is not Floor.TENTATIVE or record is None or limit is None:
            return None
        if record.tier1 != "duck" or record.paused_at is not None:
            return None
        return record.tier1_at + limit

    def _pause_if_ducked_too_long(self, now: float) -> list[Action]:
        limit = self._duck_limit_at()
        if limit is None or now < limit:
            return []
        assert self._record is not None and self.reply_id is not None
        self._record.paused_at = now
        return [PauseOutput(self.reply_id)]

    def _recheck(self, now: float, decision: Decision | None) -> list[Action]:
        """A watched sound brought new evidence; the agent is playing meanwhile.

        The sound ending as the decider said closes the watch. Voice going on that the
        decider is no longer sure of, or a commit, is a new tier 1: the agent pauses again,
        and tier 2 decides on the whole sound as at any onset.
        """
        overlap = self._overlap
        assert overlap is not None and overlap.resumed_at is not None
        assert self.reply_id is not None
        if decision is not None and decision.kind == "resume":
            if not overlap.speech_active:
                self._overlap = None
            return []
        if decision is None and (
            not overlap.speech_active or overlap.last_voiced_at <= overlap.resumed_at
        ):
            return []  # over and its final words awaited, or no voice since the resume
        overlap.resumed_at = None
        audible = self.state is Floor.SPEAKING
        self._go("user speech")
        tier1: Tier1 | Literal["hold"] = self.config.tier1 if audible else "hold"
        self._record = InterruptionRecord(self.reply_id, overlap.onset_at, tier1, now)
        self.interruptions.append(self._record)
        action: Action = (
            DuckOutput(self.reply_id) if tier1 == "duck" else PauseOutput(self.reply_id)
        )
        return [action, *self._decide(now)]

    # -- step 4 and 6: commit, then yield the floor -------------------------------------

    def _commit(self, now: float, record: InterruptionRecord, overlap: Overlap) -> list[Action]:
        assert self.reply_id is not None
        reply_id = self.reply_id
        record.flushed_at = now
        record.cancelled_at = now
        self._go("commit")
        heard_nothing = self._played == 0
        if heard_nothing:
            # Thinking-time interruption: nothing reached the user, so this is one turn
            # that kept going; the new words join the user's previous message.
            self._pending_mode = "merge"
        else:
            self._pending_mode = self.config.restart_policy
        self._interrupted_reply = reply_id
        self.reply_id = None
        # The utterance in progress belongs to the user's new turn.
        self._turn = _UserTurn(
            words=[],
            speaking=overlap.speech_active,
            ended_at=overlap.speech_ended_at,
            awaiting_final=overlap.speech_ended_at is not None and overlap.final_words is None,
            utterance_words=overlap.latest_words if overlap.final_words is None else (),
            utterances=[self._utterance],
        )
        if overlap.final_words is not None:
            self._turn.words.extend(overlap.final_words)
        return [
            FlushOutput(reply_id),
            CancelReply(reply_id),
            Truncate(reply_id, self._played),
            *self._maybe_turn_end(now),
        ]

    # -- step 5: resume from the exact sample -------------------------------------------

    def _resume(self, now: float, record: InterruptionRecord) -> list[Action]:
        assert self.reply_id is not None
        record.resumed_at = now
        self._go("resume" if self._played > 0 else "resume before audio")
        # The overlapping sound was not a turn: forget its words.
        self._turn = _UserTurn(speaking=self._turn.speaking)
        return [ResumeOutput(self.reply_id)]

    # -- reply lifecycle ----------------------------------------------------------------

    def _on_playout(self, event: Playout) -> list[Action]:
        if not self._check_reply(event.reply_id):
            return []
        if event.played < self._played:
            raise PolicyError(
                f"playout cursor went backwards for reply {event.reply_id}: "
                f"{event.played} < {self._played}"
            )
        self._played = event.played
        if self.state is Floor.THINKING and event.played > 0:
            self._go("first audio played")
        if event.complete:
            return self._finish()
        return []

    def _finish(self) -> list[Action]:
        assert self.reply_id is not None
        reply_id = self.reply_id
        if self.state is Floor.THINKING:
            self._go("first audio played")
        if self.state is Floor.TENTATIVE and self._record is not None:
            # A ducked reply played out under the user's speech: no decision was needed.
            self._record.decision = "resume"
            self._record.reason = "reply-finished"
            self._record.decided_at = self._now
            self._record = None
        self._overlap = None  # a watched sound, if any, outlived the reply
        self._go("reply complete")
        self.reply_id = None
        return [ReplyFinished(reply_id)]

    def _on_failed(self, event: ReplyFailed) -> list[Action]:
        if not self._check_reply(event.reply_id):
            return []
        if self.state is Floor.PREPARING:
            self._turn = _UserTurn()
            self._preemption = None
            self.preemptions[event.reply_id] = "released"  # it stood for the whole turn
        self._go("reply failed")
        self.reply_id = None
        self._overlap = None
        if self._record is not None:
            self._record.reason = f"reply-failed: {event.error}"
            self._record = None
        return [
            FlushOutput(event.reply_id),
            CancelReply(event.reply_id),
            Truncate(event.reply_id, self._played),
        ]

    # -- the user's turn ----------------------------------------------------------------

    def _maybe_turn_end(self, now: float) -> list[Action]:
        turn = self._turn
        if turn.speaking or turn.ended_at is None:
            return []
        if self.state is Floor.PREPARING:
            if now < turn.ended_at + self._turn_silence():
                return []
            return self._release()
        if turn.awaiting_final and now < turn.ended_at + self.config.final_wait_s:
            return []
        words = (*turn.words, *turn.utterance_words)
        if now < turn.ended_at + self._turn_silence():
            if self.config.preemptive and words and not turn.awaiting_final:
                mode = self._pending_mode if self.state is Floor.YIELDED else "turn"
                return self._start_reply("user paused", mode, words, preemptive=True)
            return []
        if self.state is Floor.YIELDED:
            return self._start_reply("user turn ended", self._pending_mode, words)
        if not words:
            # A sound with no words is not a turn: keep listening.
            self._turn = _UserTurn()
            return []
        return self._start_reply("user turn ended", "turn", words)

    def _turn_silence(self) -> float:
        """The silence that ends this turn: fixed, or set by its completeness."""
        fixed = self.config.turn_end_silence_s
        if self.config.turn_end != "semantic" or self._turn.completeness is None:
            return fixed
        return self.config.turn_end_rule.silence(self._turn.completeness, fixed)

    def _on_turn_end_probability(self, event: TurnEndProbability) -> list[Action]:
        turn = self._turn
        if event.utterance != self._utterance or turn.speaking or turn.ended_at is None:
            return []  # about an utterance the user has since gone on from
        if self.state not in (Floor.LISTENING, Floor.YIELDED, Floor.PREPARING):
            return []  # the turn already ended on the fixed silence
        turn.completeness = event.probability
        return self._maybe_turn_end(event.at)

    # -- preemptive generation ----------------------------------------------------------

    def _release(self) -> list[Action]:
        """The pause lasted: the held reply is the answer to the whole turn."""
        assert self.reply_id is not None
        self._go("user turn ended")
        self._turn = _UserTurn()
        self._preemption = None
        self.preemptions[self.reply_id] = "released"
        return [ReleaseOutput(self.reply_id)]

    def _user_went_on(self) -> list[Action]:
        """The pause was not the end: drop the held reply; the turn keeps its words."""
        assert self.reply_id is not None and self._preemption is not None
        reply_id, before = self.reply_id, self._preemption
        if before.came_from is Floor.LISTENING:
            self._go("user went on")
        else:
            self._go("user went on after barging in")
        self.reply_id = None
        self._preemption = None
        self._pending_mode = before.pending_mode
        self._interrupted_reply = before.interrupted_reply
        self.preemptions[reply_id] = "discarded"
        return [CancelReply(reply_id)]


if __name__ == "__main__":
    print(mermaid_diagram())
