"""Whisper as tier 2's second opinion: which of the rule's phrases was that short sound?

Why Whisper, when the session already has two PocketSphinx readings: both of those hear
synthetic and accented voices badly at the lengths tier 2 cares about. The open recogniser
turns "okay" into "look i", and the closed-set spotter, forced to choose, takes "hang on"
for "true". Whisper ``base`` hears most of these right, but run the usual way (the clip
padded to a 30 s window) it costs about a second per call, far too slow for a decision
that should come within a few hundred milliseconds.

How it is made fast enough:

* **A short window.** The encoder runs on the overlap padded only to ``window_s`` (3 s),
  not to 30 s: about 30-50 ms of CPU instead of a second. Whisper was trained on 30 s
  windows and, given less, tends to repeat itself ("Stop Stop Stop"); repeats do not change
  which phrase was said, and the greedy decode is capped at a few tokens.
* **A free reading first.** The greedy decode is the first answer: a reading that contains
  one of the commands (``INTERRUPT_PHRASES``) is that command, one that begins as a
  question or a request does (``FLOOR_OPENERS``: "Can you...", "What about...") is that
  opening, and one made only of backchannels is a backchannel. An opening counts as a
  command: two early readings of "Can you?" commit while the user is still saying what.
  So does a backchannel that goes on ("Okay, but...", "Right, and how...": the
  ``FLOOR_CONTINUATIONS``, or an opening, after backchannels).
* **Then the phrases, scored.** Otherwise the reading is a near miss ("Chair" for "Sure.",
  "Voton" for "Hold on.") or a real sentence. Each class's likeliest phrases (ranked by the
  decoder's first-token distribution, which the greedy step computed anyway) are scored by
  forced decoding: the sum of the log probabilities Whisper gives their tokens after that
  audio. The class whose best phrase wins by ``margin`` nats is the answer. A reading of
  more than ``max_phrase_words`` distinct words is a sentence, not a phrase, and gets no
  answer; nor does a tie, though a final reading says it was one (:class:`TooClose`).
  The hums (:data:`HUMS`) are always among the scored phrases: Whisper writes a hum as a
  made-up word ("Ememam", "Emama", "Iman"), whose first token ranks no hum among the
  likeliest backchannels, and of the phrases left "no" then scores best.

The answer has the spotter's shape (:class:`bargein.providers.phrases.PocketSphinxPhraseSpotter`):
the words of one backchannel or one command, or nothing. :class:`bargein.decider.RuleDecider`
commits on a command and resumes on a backchannel; on nothing it decides on the streaming
recogniser's words as it would without a second opinion, except that after a tie it does
not commit on a word or two of them.

One :class:`WhisperPhraseReader` holds the model and is shared by every session (calls are
thread-safe); each session gets its own :meth:`WhisperPhraseReader.stream`, which buffers the
overlap's audio and reads it when the overlap ends.

**Final readings first.** A reading of the sound so far (a peek) is a chance to decide
early; the final reading is what a held-up decision waits for. So when readings wait for
the model, a final one goes before any peek, and a stream's peek still under way when its
own final reading is asked for stops at its next step (after the encoder or the greedy
decode): once the sound has ended tier 2 ignores a peek's answer anyway, and on a busy
core the peek's scoring alone took up to 0.6 s that the final reading spent waiting.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from bargein.audio import window_dbfs
from bargein.decider import (
    BACKCHANNEL_PHRASES,
    FLOOR_CONTINUATIONS,
    FLOOR_OPENERS,
    INTERRUPT_PHRASES,
    OPENING_CONTINUATIONS,
    after_backchannels,
    normalize_words,
    only_backchannel,
)
from bargein.providers.base import ChosenWords, FloatAudio, ProviderError, TooClose

__all__ = ["HUMS", "PhraseReading", "WhisperPhraseReader", "WhisperPhraseStream"]

_SAMPLE_RATE: Final = 16000
_HOP: Final = 160
"""Whisper's mel frames are 10 ms apart."""
_MAX_WINDOW_S: Final = 30.0
_FUZZY_MIN_LETTERS: Final = 5
_MAX_TOKENS: Final = 8
"""Enough for the longest phrase ("Hold on a second." is five tokens) and more words
than ``max_phrase_words``, so a sentence is still known as one. Whisper repeats itself
on a short window, so the greedy decode mostly runs to this cap: on a 2-core AMD EPYC a
reading that needs no scoring took 125 ms at the median with 8, 142 ms with 12."""
_PROMPT: Final = ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")

HUMS: Final = ("mm", "mhm")
"""Backchannels scored on every reading that reaches the scoring step (the module's
docstring says why), those of them among the reader's ``backchannel_phrases``;
``always_scored`` replaces them. Two are enough: on hums spoken by
Piper and three eSpeak voices, also scoring "mm hmm", "hmm" and "uh huh" changed no
answer, and each phrase scored adds to a reading's cost."""

_SPELLINGS: Final = {
    "uh huh": "Uh-huh",
    "mm hmm": "Mm-hmm",
    "ok": None,  # "okay" covers it
    "i see": "I see",
}
"""How Whisper writes some of the rule's phrases (None: not scored separately)."""


@dataclass(frozen=True)
class PhraseReading:
    """What the reader made of one clip, for the timeline and for tuning."""

    words: tuple[str, ...]
    """The answer: one phrase's words, or () for none."""
    how: str
    """"silent", "free" (the greedy reading decided), "scored", "sentence", "tie", or
    "dropped" (stopped before its end: no answer)."""
    free_text: str
    backchannel_score: float = -math.inf
    command_score: float = -math.inf
    scored: tuple[tuple[str, float], ...] = ()
    """The phrases scored by forced decoding, with their scores (log probability)."""


class _Turns:
    """The model's turns, one reading at a time: a final reading before any peek.

    Among waiting readings of one kind the order is the scheduler's, not strictly first
    come; a turn is one reading.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._finals_waiting = 0

    @contextlib.contextmanager
    def turn(self, final: bool) -> Iterator[None]:
        with self._cond:
            self._finals_waiting += final
            try:
                self._cond.wait_for(lambda: not self._busy and (final or not self._finals_waiting))
            finally:
                self._finals_waiting -= final
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two short strings."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return row[-1]


def _written(phrase: str) -> str | None:
    if phrase in _SPELLINGS:
        spelled = _SPELLINGS[phrase]
        return None if spelled is None else spelled + "."
    return phrase[:1].upper() + phrase[1:] + "."


def _distinct(words: Sequence[str]) -> tuple[str, ...]:
    """The words with repeats folded: "stop stop stop" -> stop, "wait a second wait a" -> wait
    a second. Whisper on a short window often repeats the phrase until the token limit cuts
    it, so a reading that is one phrase over and over (the last copy perhaps cut short) is
    that phrase once; immediate repeats inside a longer reading fold too."""
    out = list(words)
    for period in range(1, len(out)):
        if out[period:] == out[: len(out) - period]:
            out = out[:period]
            break
    changed = True
    while changed:
        changed = False
        for size in range(1, len(out) // 2 + 1):
            for i in range(len(out) - 2 * size + 1):
                if out[i : i + size] == out[i + size : i + 2 * size]:
                    del out[i + size : i + 2 * size]
                    changed = True
                    break
            if changed:
                break
    return tuple(out)


class WhisperPhraseReader:
    """Reads a short overlap as one of tier 2's phrases, with Whisper on a short window.

    ``model`` is None for the packaged ``base`` model, a CTranslate2 model directory or a
    faster-whisper model name; ``shared`` reuses an already loaded
    ``faster_whisper.WhisperModel`` (the session's transcriber's) instead of loading a second
    copy.
    """

    sample_rate: int = _SAMPLE_RATE

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        shared: Any = None,
        cpu_threads: int = 1,
        window_s: float = 3.0,
        margin: float = 0.5,
        per_class: int = 3,
        max_phrase_words: int = 3,
        silence_dbfs: float = -60.0,
        interrupt_phrases: Sequence[str] = INTERRUPT_PHRASES,
        backchannel_phrases: Sequence[str] = BACKCHANNEL_PHRASES,
        floor_openers: Sequence[str] = FLOOR_OPENERS,
        floor_continuations: Sequence[str] = FLOOR_CONTINUATIONS,
        opening_continuations: Sequence[str] = OPENING_CONTINUATIONS,
        always_scored: Sequence[str] | None = None,
    ) -> None:
        if not 0.5 <= window_s <= _MAX_WINDOW_S:
            raise ValueError(f"window_s must be within [0.5, 30], got {window_s}")
        if per_class < 1:
            raise ValueError(f"per_class must be at least 1, got {per_class}")
        if always_scored is None:
            always_scored = [hum for hum in HUMS if hum in backchannel_phrases]
        scorable = {p for p in (*interrupt_phrases, *backchannel_phrases) if _written(p)}
        unknown = [phrase for phrase in always_scored if phrase not in scorable]
        if unknown:
            raise ValueError(
                f"always_scored names phrases the reader does not score: {unknown}; "
                "each must be one of its interrupt_phrases or backchannel_phrases"
            )
        self.window_s = window_s
        self.margin = margin
        self.per_class = per_class
        self.max_phrase_words = max_phrase_words
        self.silence_dbfs = silence_dbfs
        self.interrupt_phrases = tuple(interrupt_phrases)
        self.backchannel_phrases = tuple(backchannel_phrases)
        self.floor_openers = tuple(tuple(p.split()) for p in floor_openers)
        self.floor_continuations = tuple(floor_continuations)
        self.opening_continuations = tuple(opening_continuations)
        self.always_scored = tuple(always_scored)
        whisper = shared if shared is not None else self._load(model, cpu_threads)
        try:
            self._model: Any = whisper.model
            self._features: Any = whisper.feature_extractor
            tokenizer: Any = whisper.hf_tokenizer
        except AttributeError as exc:
            raise ProviderError(f"not a faster-whisper WhisperModel: {exc}") from exc
        self._prompt = [tokenizer.token_to_id(token) for token in _PROMPT]
        if any(token is None for token in self._prompt):
            raise ProviderError("the Whisper tokenizer lacks the English transcription tokens")
        self._decode = tokenizer.decode
        self._candidates: list[tuple[str, bool, list[int]]] = []
        for phrases, is_command in ((interrupt_phrases, True), (backchannel_phrases, False)):
            for phrase in phrases:
                written = _written(phrase)
                if written is not None:
                    ids = tokenizer.encode(" " + written, add_special_tokens=False).ids
                    self._candidates.append((phrase, is_command, list(ids)))
        self._turns = _Turns()

    @staticmethod
    def _load(model: str | Path | None, cpu_threads: int) -> Any:
        from bargein.providers.whisper import default_model_dir

        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise ProviderError(
                f"WhisperPhraseReader needs faster-whisper: {sys.executable} -m pip install "
                f"faster-whisper ({exc})"
            ) from exc
        name = str(default_model_dir()) if model is None else str(model)
        try:
            return WhisperModel(name, device="cpu", compute_type="int8", cpu_threads=cpu_threads)
        except Exception as exc:
            raise ProviderError(f"could not load Whisper model {name!r}: {exc}") from exc

    def stream(self) -> WhisperPhraseStream:
        """A per-session :class:`~bargein.providers.base.StreamingRecognizer` over this reader."""
        return WhisperPhraseStream(self)

    def read(
        self, audio: FloatAudio, *, final: bool = True, stop: threading.Event | None = None
    ) -> PhraseReading:
        """The phrase heard in ``audio`` (16 kHz mono float32, the whole overlap).

        ``final=False`` marks a peek, which waits while a final reading waits; a reading
        whose ``stop`` is set before its end is "dropped", without an answer.
        """
        if stop is not None and stop.is_set():
            return PhraseReading((), "dropped", "")
        if audio.size == 0 or float(np.max(window_dbfs(audio, _SAMPLE_RATE))) < self.silence_dbfs:
            return PhraseReading((), "silent", "")
        limit = int(_MAX_WINDOW_S * _SAMPLE_RATE)
        clip = audio[-limit:]
        window = max(
            int(self.window_s * _SAMPLE_RATE), math.ceil(clip.size / _SAMPLE_RATE) * _SAMPLE_RATE
        )
        padded = np.zeros(min(window, limit), dtype=np.float32)
        padded[: clip.size] = clip
        frames = padded.size // _HOP
        try:
            import ctranslate2

            mel = self._features(padded, padding=0)[:, :frames]
            features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None]))
            with self._turns.turn(final):
                return self._read(features, min(frames, math.ceil(clip.size / _HOP)), stop)
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(f"Whisper failed to read a {clip.size}-sample clip: {exc}") from exc

    def _opening(self, words: tuple[str, ...]) -> tuple[str, ...] | None:
        """How a bid for the floor begins, if the reading begins so, at its start or after
        backchannels ("Okay, can you...", "Right, and how much..."): a floor opener, or a
        continuation with more words after it."""
        rest = after_backchannels(words, self.backchannel_phrases)
        opener = next((o for o in self.floor_openers if rest[: len(o)] == o), None)
        if opener is not None:
            return opener
        continuations = (
            self.floor_continuations if len(rest) < len(words) else self.opening_continuations
        )
        if len(rest) >= 2 and rest[0] in continuations:
            return rest[:1]
        return None

    def _read(self, features: Any, frames: int, stop: threading.Event | None) -> PhraseReading:
        import ctranslate2

        if stop is not None and stop.is_set():
            return PhraseReading((), "dropped", "")
        encoded = self._model.encode(features)
        if stop is not None and stop.is_set():
            return PhraseReading((), "dropped", "")
        result = self._model.generate(
            encoded,
            [self._prompt],
            beam_size=1,
            max_length=len(self._prompt) + _MAX_TOKENS,
            return_logits_vocab=True,
        )[0]
        tokens = result.sequences_ids[0]
        free_text = str(self._decode(tokens)).strip()
        words = normalize_words(free_text.split())
        if len(tokens) >= _MAX_TOKENS:
            words = words[:-1]  # cut off by the token limit, perhaps inside a word
        words = _distinct(words)
        command = self._command_in(words)
        if command is not None:
            return PhraseReading(command, "free", free_text)
        opening = self._opening(words)
        if opening is not None:
            return PhraseReading(opening, "free", free_text)
        if words and only_backchannel(words, self.backchannel_phrases):
            return PhraseReading(words, "free", free_text)
        near = self._spelled_like(words)
        if near is not None:
            return PhraseReading(near, "free", free_text)
        if len(words) > self.max_phrase_words:
            return PhraseReading((), "sentence", free_text)
        if stop is not None and stop.is_set():
            return PhraseReading((), "dropped", free_text)

        first = np.asarray(result.logits[0], dtype=np.float64)
        first = first[0] if first.ndim == 2 else first
        finite = np.isfinite(first)
        peak = float(np.max(first[finite]))
        log_norm = peak + math.log(float(np.sum(np.exp(first[finite] - peak))))
        ranked = sorted(
            self._candidates, key=lambda c: float(first[c[2][0]]) - log_norm, reverse=True
        )
        chosen = [c for c in ranked if c[1]][: self.per_class]
        chosen += [c for c in ranked if not c[1]][: self.per_class]
        chosen += [c for c in self._candidates if c[0] in self.always_scored and c not in chosen]
        batch = np.repeat(np.asarray(encoded), len(chosen), axis=0)
        aligned = self._model.align(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(batch)),
            self._prompt,
            [c[2] for c in chosen],
            [frames] * len(chosen),
        )
        scores = [
            float(np.sum(np.log(np.maximum(np.asarray(a.text_token_probs), 1e-12))))
            for a in aligned
        ]
        best: dict[bool, tuple[float, str]] = {}
        for (phrase, is_command, _ids), score in zip(chosen, scores, strict=True):
            if is_command not in best or score > best[is_command][0]:
                best[is_command] = (score, phrase)
        scored = tuple((c[0], s) for c, s in zip(chosen, scores, strict=True))
        command_score, command_phrase = best[True]
        backchannel_score, backchannel_phrase = best[False]
        if command_score >= backchannel_score + self.margin:
            answer = tuple(command_phrase.split())
        elif backchannel_score >= command_score + self.margin:
            answer = tuple(backchannel_phrase.split())
        else:
            answer = ()
        how = "scored" if answer else "tie"
        return PhraseReading(answer, how, free_text, backchannel_score, command_score, scored)

    def _spelled_like(self, words: tuple[str, ...]) -> tuple[str, ...] | None:
        """A phrase of five letters or more that the reading misses by one letter
        ("make sense" for "makes sense"); shorter phrases have too many neighbours
        ("so", "go" and "oh" are all one letter from "no")."""
        text = " ".join(words)
        if len(text) < _FUZZY_MIN_LETTERS - 1:
            return None
        for phrase in (*self.interrupt_phrases, *self.backchannel_phrases):
            if len(phrase) >= _FUZZY_MIN_LETTERS and _edit_distance(text, phrase) <= 1:
                return tuple(phrase.split())
        return None

    def _command_in(self, words: tuple[str, ...]) -> tuple[str, ...] | None:
        text = " " + " ".join(words) + " "
        for phrase in self.interrupt_phrases:
            if f" {phrase} " in text:
                return tuple(phrase.split())
        return None


class WhisperPhraseStream:
    """One session's use of a :class:`WhisperPhraseReader`: buffers an overlap, reads it at the end.

    ``feed`` returns no partial words: each reading is a Whisper pass, so the session asks
    for one now and then (:meth:`peek_later`) and for the last at the end (:meth:`finish_later`),
    and runs them off the event loop. Closing or restarting the utterance stops a peek
    still under way: its answer would come too late to count. :meth:`drop_later` stops a
    final reading the session no longer waits for.
    """

    sample_rate: int = _SAMPLE_RATE

    def __init__(self, reader: WhisperPhraseReader, *, early_margin: float = 2.0) -> None:
        self.reader = reader
        self.early_margin = early_margin
        self.last: PhraseReading | None = None
        self._chunks: list[FloatAudio] = []
        self._peeks_stop = threading.Event()
        self._final_stop = threading.Event()

    def _stop_peeks(self) -> None:
        self._peeks_stop.set()
        self._peeks_stop = threading.Event()

    def start(self) -> None:
        self._stop_peeks()
        self._chunks = []

    def feed(self, audio: FloatAudio) -> Sequence[str]:
        self._chunks.append(audio)
        return ()

    def finish(self) -> Sequence[str]:
        return self.finish_later()()

    def peek_later(self) -> Callable[[], Sequence[str]]:
        """A reading of the overlap so far, as work to run off the event loop; the
        utterance stays open.

        Part of a word is easy to mistake ("exa..." scores close to "no"), and a command
        read early commits at once, so a scored reading counts here only when it wins by
        ``early_margin`` nats, and comes back as :class:`ChosenWords`; one the free reading
        found counts as it is.
        """
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.float32)
        stop = self._peeks_stop

        def read() -> Sequence[str]:
            reading = self.reader.read(audio.astype(np.float32, copy=False), final=False, stop=stop)
            if reading.how == "scored":
                gap = abs(reading.backchannel_score - reading.command_score)
                return ChosenWords(reading.words if gap >= self.early_margin else ())
            return reading.words

        return read

    def finish_later(self) -> Callable[[], Sequence[str]]:
        """Close the utterance now and return the reading as work to run later, off the
        event loop (the session does): the buffer is taken here, so the next
        :meth:`start` cannot race with the reading. A tie comes back as
        :class:`TooClose`."""
        self._stop_peeks()
        chunks, self._chunks = self._chunks, []
        audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        stop = self._final_stop = threading.Event()

        def read() -> Sequence[str]:
            self.last = self.reader.read(audio.astype(np.float32, copy=False), stop=stop)
            return TooClose() if self.last.how == "tie" else self.last.words

        return read

    def drop_later(self) -> None:
        """Stop the last final reading, if it is still to come: its answer is no longer
        wanted, and the model is shared with every other reading. It stops before it
        begins, or after its encoder or greedy decode."""
        self._final_stop.set()
