"""Tier 2: is the user taking the floor, or was that an "uh-huh", a cough, a noise?

The policy pauses the agent on raw voice activity (tier 1) and then asks a
:class:`Decider` until it answers. A decider sees only what the policy has gathered
about the overlapping speech (:class:`Overlap`) and the current time, and returns a
:class:`Decision` or ``None`` ("not yet"). It is the one replaceable component of the
policy: :class:`RuleDecider` is the default, and a trained classifier can take its place
without touching the state machine.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import ClassVar, Literal, Protocol

import numpy as np
import numpy.typing as npt

DecisionKind = Literal["commit", "resume"]
FeatureVector = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Decision:
    kind: DecisionKind
    reason: str


@dataclass(frozen=True)
class FrameInfo:
    """One microphone frame as the VAD scored it, timestamped at the frame's end."""

    at: float
    probability: float
    features: FeatureVector
    """The frame's acoustic features (:func:`bargein.tier2.frame_features`)."""


@dataclass
class Overlap:
    """What is known about user speech that started while the agent held the floor."""

    onset_at: float
    agent_audible: bool
    """Whether the agent's audio had started playing when the user started."""
    sound_at: float | None = None
    """When the sound under way began, if not at the onset: the user went on to it while
    the reading of the one before was under way, and that sound was left undecided."""
    speech_active: bool = True
    speech_ended_at: float | None = None
    last_voiced_at: float = float("-inf")
    """The latest frame the VAD scored as voiced; the segmenter's hangover is not voice."""
    voiced_at_both_cuts: bool = False
    """A frame of the sound was voiced at both of the VAD's cuts of the stream (always so
    for a VAD with one cut): a voice, not a sound whose score depended on where the
    frames fell."""
    voiced_at_one_cut: bool = False
    """A frame of the sound was voiced at the VAD's first cut and not at its second. The
    policy commits on no sound with such frames and none voiced at both
    (``bargein.policy``)."""
    one_cut_until: float | None = None
    """The sound voiced at one cut only ended, and would have committed: the policy holds
    the agent paused until then for the user to go on."""
    partials: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)
    final_words: tuple[str, ...] | None = None
    frames: list[FrameInfo] = field(default_factory=list)
    """The frames of the overlapping sound with their features, from just before the
    onset on; empty when the runtime computes no features (the rule needs none)."""
    agent_context: str = ""
    """What the agent had said when the user started: the words heard, through the end
    of the sentence under way ("" when nothing had been heard)."""
    after_question_s: float | None = None
    """How long after the end of the agent's latest sentence, a question, the user's
    sound began (negative: over its last word); None when that sentence was no question
    or the sound began inside it. A "yeah" just after a question answers it."""
    second_opinion: tuple[str, ...] | None = None
    """A second recogniser's final reading of the sound, when one ran: one of the
    backchannels or commands, or nothing."""
    second_opinion_too_close: bool = False
    """The second reading's nothing was a tie: it heard one of its phrases, a command and
    a backchannel about equally likely."""
    early_readings: list[tuple[str, ...]] = field(default_factory=list)
    """The same recogniser's readings of the sound so far while it goes on, oldest first."""
    early_chosen: list[bool] = field(default_factory=list)
    """For each of :attr:`early_readings`: the reader chose it as the nearest of its
    phrases rather than heard it outright."""
    last_read_took: float = 0.0
    """How long the latest of :attr:`early_readings` took: it heard the sound as it was
    that long before it came back."""
    resumed_at: float | None = None
    """When tier 2 resumed the agent while this sound went on (the policy keeps listening
    to it); None: it has not."""
    reading_since: float | None = None
    """When the reading under way began (early or final); None: none is under way."""
    over_echo: bool = False
    """The sound began over an echo of the agent that the canceller was removing, or the
    canceller took over while it went on (it began as an echo the gate could not
    explain): what the canceller leaves of the agent's voice may be all it is."""
    echo_words: int = 0
    """How many leading words of the streaming recogniser's hypotheses were heard before
    the echo canceller took over: the agent's echo, not the user (they are dropped)."""

    @property
    def early_reading(self) -> tuple[str, ...] | None:
        """The latest of :attr:`early_readings` (None: none yet)."""
        return self.early_readings[-1] if self.early_readings else None

    @property
    def latest_words(self) -> tuple[str, ...]:
        if self.final_words is not None:
            return self.final_words
        return self.partials[-1][1] if self.partials else ()


class Decider(Protocol):
    """Tier 2's one component. A decider may say it never reads :attr:`Overlap.frames`
    with a class attribute ``uses_frames = False``; the session then skips computing each
    frame's acoustic features (a quarter of a millisecond per frame, per session)."""

    def decide(self, overlap: Overlap, now: float) -> Decision | None:
        """Commit, resume, or ``None`` to wait for more evidence."""
        ...

    def deadline(self, overlap: Overlap, now: float) -> float | None:
        """The next time at which :meth:`decide` may answer without a new event."""
        ...


INTERRUPT_PHRASES: tuple[str, ...] = (
    "stop",
    "wait",
    "no",
    "nope",
    "hold on",
    "hold it",
    "hang on",
    "sorry",
    "excuse me",
    "one moment",
    "one second",
    "just a moment",
    "just a second",
    "pardon",
    "actually",
    "cancel",
    "enough",
    "quiet",
    "shut up",
)

BACKCHANNEL_PHRASES: tuple[str, ...] = (
    "uh huh",
    "mm hmm",
    "i see",
    "got it",
    "all right",
    "uh",
    "huh",
    "um",
    "hm",
    "hmm",
    "mm",
    "mhm",
    "ah",
    "aha",
    "oh",
    "yeah",
    "yes",
    "yep",
    "yup",
    "right",
    "okay",
    "ok",
    "alright",
    "sure",
    "cool",
    "great",
    "nice",
    "wow",
    "really",
    "true",
    "exactly",
    "indeed",
    "fine",
    "good",
    "sounds good",
    "makes sense",
    "of course",
    "i know",
    "ha",
)


FLOOR_OPENERS: tuple[str, ...] = (
    "can you",
    "could you",
    "would you",
    "will you",
    "can i",
    "could i",
    "may i",
    "can we",
    "could we",
    "do you",
    "did you",
    "are you",
    "is it",
    "is there",
    "what about",
    "what if",
    "what time",
    "what is",
    "what's",
    "how about",
    "how do",
    "how much",
    "how many",
    "how long",
    "where is",
    "where's",
    "when is",
    "why is",
    "tell me",
    "let me",
    "i want",
    "i need",
    "i'd like",
    "i meant",
)
"""How a question or a request to the agent begins ("Can you...", "What about..."): no
backchannel begins so. A reading of the sound so far that begins with one is a bid for the
floor, as a command is, long before the rest of the sentence is there to be read."""

FLOOR_CONTINUATIONS: tuple[str, ...] = ("and", "but", "so")
"""Words that carry an utterance on past a backchannel: "Okay, but what about Sunday?",
"Right, and how much...". A backchannel is over in a word or two; one that goes on with a
conjunction and more words is the start of a turn. A reading in which backchannels are
followed by one of these and more words is a bid, as an opener is; a lone "so" is not."""

OPENING_CONTINUATIONS: tuple[str, ...] = ("but", "so")
"""The continuations that also count at the very start of a reading ("So which one...",
the rest of "Okay, okay, so which one" after the agent resumed on its start). Not "and":
Whisper writes a hum that way ("and then" for "mm-hmm", "and now" for "uh-huh, yeah")."""


SPELLINGS: dict[str, str] = {"ok": "okay", "alright": "all right", "yup": "yep"}
"""One backchannel, two ways to write it: readings of the same "okay" alternate."""


ANSWER_PHRASES: tuple[str, ...] = (
    "yeah",
    "yes",
    "yep",
    "yup",
    "okay",
    "ok",
    "alright",
    "all right",
    "sure",
    "right",
    "fine",
    "good",
    "great",
    "cool",
    "exactly",
    "indeed",
    "of course",
    "sounds good",
)
"""Backchannels that also say yes: just after the agent's question they answer it, and
the user takes the floor ("Would you like the summary first? | Yeah"). Not the hums and
hesitations ("mm", "uh huh", "oh"), which Whisper also makes of coughs and breaths, nor
"wow", "really" or "I see", which are no answer to a question."""

HESITATIONS: tuple[str, ...] = ("uh", "um", "ah", "oh", "ha", "hm", "hmm", "mm", "huh")
"""Backchannels that also open a bid for the floor ("Oh, and...", "Um, can you..."), and
that Whisper hears in the first syllables of others ("ha" for "Hang on"): heard early,
they are not enough to resume while the sound goes on."""


def normalize_words(words: Sequence[str]) -> tuple[str, ...]:
    """Lower-case, punctuation-free tokens; hyphenated words split ("uh-huh" -> uh, huh)."""
    out: list[str] = []
    for word in words:
        out.extend(t for t in re.split(r"[^a-z']+", word.lower()) if t)
    return tuple(out)


def _find_phrase(words: tuple[str, ...], phrases: Sequence[str]) -> str | None:
    text = " " + " ".join(words) + " "
    for phrase in phrases:
        if f" {phrase} " in text:
            return phrase
    return None


def after_backchannels(
    words: tuple[str, ...], phrases: Sequence[str] = BACKCHANNEL_PHRASES
) -> tuple[str, ...]:
    """``words`` without the backchannel phrases they begin with ("okay but what" -> but,
    what), the longest phrase first."""
    by_length = sorted((tuple(p.split()) for p in phrases), key=len, reverse=True)
    i = 0
    while i < len(words):
        for phrase in by_length:
            if words[i : i + len(phrase)] == phrase:
                i += len(phrase)
                break
        else:
            break
    return words[i:]


def only_backchannel(words: tuple[str, ...], phrases: Sequence[str] = BACKCHANNEL_PHRASES) -> bool:
    """True when ``words`` can be covered entirely by backchannel phrases (or is empty)."""
    return not after_backchannels(words, phrases)


def reading_due(overlap: Overlap, while_voiced_s: float, after_end_s: float) -> float | None:
    """Until when a decision waits for the reading under way (None: none is under way).

    ``while_voiced_s`` after the reading began while the sound goes on, ``after_end_s``
    once it has ended: the final reading decides a short sound, and it may queue behind a
    reading of the sound so far. Over an echo (:attr:`Overlap.over_echo`) only the
    shorter wait (:class:`RuleDecider` says why).
    """
    since = overlap.reading_since
    if since is None:
        return None
    if overlap.speech_active or overlap.over_echo:
        return since + while_voiced_s
    return since + after_end_s


@dataclass
class RuleDecider:
    """The default tier-2 rule.

    - an interrupting word (stop, wait, no, hold on, sorry, excuse me...) commits as soon
      as the recogniser has held it in two consecutive partial hypotheses, or in the
      final one; partials flicker, and one frame of "no" inside "oh" is not a command;
    - speech still voiced ``commit_after_s`` after the onset commits (voiced within the
      last ``voiced_gap_s``: the VAD segmenter's end-of-speech hangover is silence, and
      counting it would turn every half-second "okay" into a bid for the floor); after
      the start of the sound under way (:attr:`Overlap.sound_at`) if the user went on
      to it from one whose reading was given up ("Oh, | really?" on a busy machine);
    - a sound that ended without the VAD ever scoring it as voice resumes at once;
    - speech that ended before that resumes if its final words are only backchannel or
      none at all, and commits otherwise. If the final words do not arrive within
      ``final_wait_s`` of the end, the latest partial stands in for them;
    - a second reading from a closed-set phrase spotter (:attr:`Overlap.second_opinion`),
      when the session has one, overrides the open recogniser in both directions: a
      spotted command commits, a spotted backchannel resumes over "other" words;
    - readings of the sound so far (:attr:`Overlap.early_readings`, from a second
      opinion that reads while the user talks) commit once two in a row are commands
      (one reading of the first syllables of "exactly" can be "no"), or the opening of a
      question or request (:data:`FLOOR_OPENERS`: "can you", "what about"), and a backchannel
      reading moves the duration commit out to ``backchannel_after_s``: "okay, okay" or
      a drawn-out "mm-hmm" can outlast ``commit_after_s``;
    - ``early_resume_readings`` readings in a row (0: never) that hear the same
      backchannel outright, each the one before or more of it ("right", then "right
      okay"; spelled either way, :data:`SPELLINGS`), resume while the sound still goes
      on: the agent talks on over "okay, okay" as a person would. The policy keeps
      listening to the sound, and pauses again if it turns out to be more. A reading the
      reader chose as the nearest of its phrases (:attr:`Overlap.early_chosen`) never
      counts: two such agreed on "all right" for "And also". Readings that change their
      mind ("yes", then "good", for the first words of "Can you...") are no backchannel.
      Readings that begin with a hesitation (:data:`HESITATIONS`: "oh", "um", "ha"...)
      never resume early: "Oh, and what about the weekend?" starts as one, and "Hang
      on" as "ha".
      The latest reading must have taken at most ``early_resume_fresh_s``: a slow one
      heard the sound as it was;
    - when the last reading gives no answer and the open recogniser heard one or two
      other words, an earlier reading that heard a backchannel, where none heard a
      command, resumes;
    - a backchannel that says yes (:data:`ANSWER_PHRASES`: "yeah", "sure", "okay")
      within ``answer_window_s`` of the end of the agent's question
      (:attr:`Overlap.after_question_s`), or over its last word, answers it and commits
      wherever the rule would resume on it: a person takes "Would you like the summary
      first? | Yeah" for a yes. Inside the question, before its last word, it is still
      a backchannel. ``answer_window_s=None`` never takes one for an answer;
    - a sound over an echo the canceller is removing (:attr:`Overlap.over_echo`) does
      not commit on one or two open words alone, nor does a sound whose final reading was
      a tie (:attr:`Overlap.second_opinion_too_close`): the reader heard a phrase, not a
      sentence, and could not tell which;
    - when a decision falls due while a reading is under way
      (:attr:`Overlap.reading_since`), the rule waits for it, up to ``reading_wait_s``
      after the reading began while the sound goes on, and ``final_reading_wait_s``
      once it has ended: the agent is paused meanwhile, so waiting costs silence only
      if the sound was a backchannel, and deciding without the reading would stop the
      agent for it. The final reading gets longer: it decides a short sound that the
      open recogniser's words alone would mostly get wrong, and it may queue behind a
      reading of the sound so far (on a 2-core AMD EPYC a reading takes 0.2-0.5 s).
      Not over an echo (:attr:`Overlap.over_echo`), though: there the rule without the
      reading resumes on a word or two rather than commit, and the shorter wait holds
      the agent paused less while the user may be starting to talk.
    """

    uses_frames: ClassVar[bool] = False
    commit_after_s: float = 0.8
    backchannel_after_s: float = 1.6
    voiced_gap_s: float = 0.1
    final_wait_s: float = 0.3
    reading_wait_s: float = 0.4
    final_reading_wait_s: float = 0.8
    early_resume_readings: int = 2
    early_resume_fresh_s: float = 0.25
    answer_window_s: float | None = 1.0
    interrupt_phrases: Sequence[str] = INTERRUPT_PHRASES
    backchannel_phrases: Sequence[str] = BACKCHANNEL_PHRASES
    answer_phrases: Sequence[str] = ANSWER_PHRASES

    def decide(self, overlap: Overlap, now: float) -> Decision | None:
        if not overlap.speech_active and overlap.last_voiced_at == float("-inf"):
            return Decision("resume", "no-voice")
        word = self._interrupt_word(overlap)
        if word is not None:
            return Decision("commit", f"word:{word}")
        if overlap.speech_active:
            commands = [c for r in overlap.early_readings[-2:] if (c := self._command(r))]
            if len(commands) == 2:
                return Decision("commit", "spotted:" + commands[-1])
            if self._heard_backchannel_early(overlap):
                heard = normalize_words(overlap.early_readings[-1])
                return self._acknowledged(overlap, "spotted early:", " ".join(heard))
            if (
                now >= self._duration_due(overlap)
                and now - overlap.last_voiced_at <= self.voiced_gap_s
                and not self._reading_awaited(overlap, now)
            ):
                return Decision("commit", "duration")
            return None
        ended = overlap.speech_ended_at if overlap.speech_ended_at is not None else now
        if overlap.final_words is None and (
            now < ended + self.final_wait_s or self._reading_awaited(overlap, now)
        ):
            return None
        words = normalize_words(overlap.latest_words)
        spotted = normalize_words(overlap.second_opinion or ())
        spotted_backchannel = bool(spotted) and only_backchannel(spotted, self.backchannel_phrases)
        if spotted and not spotted_backchannel:
            # The spotter can only say its phrases; one that is no backchannel is a
            # command, even where the open recogniser heard "right" or nothing.
            return Decision("commit", "spotted:" + " ".join(spotted))
        if not words:
            return Decision("resume", "no-words")
        if only_backchannel(words, self.backchannel_phrases):
            return self._acknowledged(overlap, "backchannel:", " ".join(words))
        if spotted_backchannel:
            # An open vocabulary turns "okay" into "look i" and "sure" into "sheriff";
            # the spotter, choosing among a few phrases, hears the backchannel.
            return self._acknowledged(overlap, "spotted:", " ".join(spotted))
        if not spotted and len(words) <= 2 and overlap.early_readings:
            # The last reading gave no answer ("Come on!" for "Cool."): one of the sound
            # so far that heard a backchannel, where none heard a command, outweighs the
            # open recogniser's mishearing of a word or two (more is a sentence).
            late = self._backchannel(overlap.early_readings[-1])
            if late is not None and not any(self._command(r) for r in overlap.early_readings):
                return self._acknowledged(overlap, "spotted early:", late)
        if overlap.over_echo and len(words) <= 2:
            # In a reverberant room the canceller lets bursts of the agent's voice
            # through, most of all in its first seconds, and the open recogniser makes a
            # word or two of them ("the paper" for "the pancakes"). A user's bid over the
            # agent is a command the reader spots, or a longer sentence.
            return Decision("resume", "echo residue:" + " ".join(words))
        if overlap.second_opinion_too_close and len(words) <= 2:
            # Whisper heard one of the phrases, but a command and a backchannel alike:
            # "Come on!" for "Cool.", "Blot it" for "Got it.", a made-up word for "Mm.".
            # The open recogniser's word or two for such a sound are a guess ("q", "gold
            # it", "and then"), and on the benchmark's sets most such sounds were
            # backchannels; a command the open recogniser heard has committed above.
            return Decision("resume", "too close:" + " ".join(words))
        return Decision("commit", "words:" + " ".join(words))

    def _acknowledged(self, overlap: Overlap, reason: str, heard: str) -> Decision:
        """Resume over the backchannel ``heard``, unless it answers the agent's question."""
        after, window = overlap.after_question_s, self.answer_window_s
        answered = after is not None and window is not None and after <= window
        if answered and _find_phrase(tuple(heard.split()), self.answer_phrases) is not None:
            return Decision("commit", "answer:" + heard)
        return Decision("resume", reason + heard)

    def deadline(self, overlap: Overlap, now: float) -> float | None:
        due: float | None = None
        if overlap.speech_active:
            # Past the commit time, every new VAD frame brings the next decision.
            due = self._duration_due(overlap)
        elif overlap.final_words is None and overlap.speech_ended_at is not None:
            due = overlap.speech_ended_at + self.final_wait_s
        if due is not None and now >= due:
            waited = reading_due(overlap, self.reading_wait_s, self.final_reading_wait_s)
            due = waited if waited is not None else due  # the reading's time is up
        return due if due is not None and now < due else None

    def _reading_awaited(self, overlap: Overlap, now: float) -> bool:
        due = reading_due(overlap, self.reading_wait_s, self.final_reading_wait_s)
        return due is not None and now < due

    def _command(self, reading: tuple[str, ...]) -> str | None:
        """The reading as a command ("" words or backchannels only: None)."""
        words = normalize_words(reading)
        if not words or only_backchannel(words, self.backchannel_phrases):
            return None
        return " ".join(words)

    def _heard_backchannel_early(self, overlap: Overlap) -> bool:
        """The last ``early_resume_readings`` readings all heard one backchannel, each
        the one before or more of it ("right", then "right okay"), quickly enough to say
        how the sound is now."""
        n = self.early_resume_readings
        if n < 1 or len(overlap.early_readings) < n:
            return False
        if overlap.resumed_at is None and overlap.last_read_took > self.early_resume_fresh_s:
            # A slow reading heard the sound as it was a while ago: on a busy machine
            # three readings of "Oh," came back while the user was saying "and what
            # about the weekend". (Once resumed, a slow one that still hears the
            # backchannel keeps the agent going.)
            return False
        if any(overlap.early_chosen[-n:]):
            # Forced to choose, Whisper maps anything onto the nearest phrase: "and also"
            # (for "And also for two people") came back as "all right" twice running.
            return False
        heard = [
            " ".join(SPELLINGS.get(w, w) for w in h.split()) + " "
            for r in overlap.early_readings[-n:]
            if (h := self._backchannel(r))
        ]
        if len(heard) < n or heard[0].split()[0] in HESITATIONS:
            return False
        return all(b.startswith(a) for a, b in pairwise(heard))

    def _backchannel(self, reading: tuple[str, ...]) -> str | None:
        """The reading as a backchannel (no words, or any other word: None)."""
        words = normalize_words(reading)
        if not words or not only_backchannel(words, self.backchannel_phrases):
            return None
        return " ".join(words)

    def _duration_due(self, overlap: Overlap) -> float:
        backchannel = self._backchannel(overlap.early_reading or ()) is not None
        start = overlap.onset_at if overlap.sound_at is None else overlap.sound_at
        return start + (self.backchannel_after_s if backchannel else self.commit_after_s)

    def _interrupt_word(self, overlap: Overlap) -> str | None:
        if overlap.final_words is not None:
            return _find_phrase(normalize_words(overlap.final_words), self.interrupt_phrases)
        if len(overlap.partials) < 2:
            return None
        last = _find_phrase(normalize_words(overlap.partials[-1][1]), self.interrupt_phrases)
        before = _find_phrase(normalize_words(overlap.partials[-2][1]), self.interrupt_phrases)
        return last if last is not None and last == before else None


# -- ablation baselines -------------------------------------------------------------------
# What tier 2 would be with less to go on, for the benchmark's ablation table
# (``bargein bench --decider vad|duration``). Neither is meant to run an agent.


@dataclass
class VoiceOnlyDecider:
    """Any voice over the agent takes the floor: naive VAD barge-in.

    Commits as soon as the VAD has scored one frame of the overlap as voice; a sound it
    never scored as voice resumes when it ends.
    """

    uses_frames: ClassVar[bool] = False

    def decide(self, overlap: Overlap, now: float) -> Decision | None:
        if overlap.last_voiced_at != float("-inf"):
            return Decision("commit", "voice")
        if not overlap.speech_active:
            return Decision("resume", "no-voice")
        return None

    def deadline(self, overlap: Overlap, now: float) -> float | None:
        return None


@dataclass
class DurationDecider:
    """Voice that goes on for ``commit_after_s`` takes the floor; anything shorter resumes.

    The rule's duration test without its words: "stop" and "uh-huh" look the same.
    """

    uses_frames: ClassVar[bool] = False
    commit_after_s: float = 0.8
    voiced_gap_s: float = 0.1

    def decide(self, overlap: Overlap, now: float) -> Decision | None:
        if not overlap.speech_active:
            if overlap.last_voiced_at == float("-inf"):
                return Decision("resume", "no-voice")
            return Decision("resume", "short")
        if (
            now >= overlap.onset_at + self.commit_after_s
            and now - overlap.last_voiced_at <= self.voiced_gap_s
        ):
            return Decision("commit", "duration")
        return None

    def deadline(self, overlap: Overlap, now: float) -> float | None:
        if not overlap.speech_active:
            return None
        due = overlap.onset_at + self.commit_after_s
        return due if now < due else None
