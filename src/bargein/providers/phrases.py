"""A closed-set phrase spotter for tier-2 decisions, on PocketSphinx 5.

Why not the general recogniser: tier 2 only has to tell a backchannel ("yeah", "mm-hmm",
"okay") from an interrupting command ("stop", "wait", "hold on"). A large-vocabulary decode
of a half-second utterance has tens of thousands of words to choose from and picks wrong
ones often enough to matter ("yeah" -> "yet", "sure" -> "sheriff", "okay" -> "look i"), and
every wrong word that is not a backchannel makes the agent stop. Here the search can only
produce one of the phrases tier 2 cares about, so a near miss still lands on the right
phrase, or nothing at all.

How:

* One JSGF grammar: any single phrase, the same phrase said twice ("stop stop", "no no",
  "okay okay") and a few longer command forms ("wait a second"). Free loops over the
  phrases (``<phrase>+``) were measured 5-20x slower in PocketSphinx's FSG search, and a
  phone-loop garbage model inside the grammar slower still, so the grammar stays a flat
  list of alternatives.
* Each phrase is one dictionary token ("got it" -> ``got_it``, pronunciations the
  combinations of its words'). With the words as separate grammar tokens, PocketSphinx
  returned paths that stopped inside a phrase ("got" for "Stop.") because at the end of
  an utterance it falls back to the best path even when that path has not reached the
  grammar's final state.
* Noise and unrelated speech must be able to come out empty. The grammar has a garbage
  alternative made of PocketSphinx's own speech and noise filler models (``+SPN+``,
  ``+NSN+``); a hypothesis that is only garbage, fillers or silence is empty. (Neither JSGF
  weights on that alternative nor ``fillprob`` changed a single result when measured, so
  the garbage branch competes on acoustics alone.)
* Forced into a closed set, long speech still picks *some* phrase, so every hypothesis also
  has to pass an acoustic confidence check. With ``compallsen`` every senone is scored in
  every frame, so PocketSphinx's per-frame score normalisation is relative to the best
  senone of the whole model; a phrase's acoustic score per frame is then how far the phrase
  is from the best unconstrained match of the same audio. Real phrases score around -1 to
  -7 (natural log per frame) and most forced matches of longer sentences -10 to -130, but
  some sentences still fit a phrase well ("wait a minute" at -4), so the check removes only
  part of them.
* Words missing from CMUdict, or spoken differently from its entries in conversation
  ("mm", "hmm", "mhm", "uh"), get pronunciations built from the model's phone set.

The decoder is built once, with no language model and a dictionary holding only the words
of the phrases, which loads in a fraction of the general recogniser's time.

It is not the session's default source of tier-2 words. It cannot transcribe the user's
turn, and on the built-in set it hears every backchannel right but takes one short
command for a backchannel and misses another (``scripts/tier2_words.py`` prints both
sources' confusion), which the default rule would turn into missed interruptions.
Pair it with the general recogniser, or let a trained decider weigh both.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

from pocketsphinx import Decoder, get_model_path

from bargein.decider import BACKCHANNEL_PHRASES, INTERRUPT_PHRASES
from bargein.providers.base import ProviderError
from bargein.providers.pocketsphinx import PocketSphinxStream

__all__ = [
    "DEFAULT_CMNINIT",
    "DEFAULT_EXTRA_COMMANDS",
    "EXTRA_PRONUNCIATIONS",
    "PocketSphinxPhraseSpotter",
]

DEFAULT_CMNINIT: Final = "50,-3,-5"
"""Starting cepstral mean for live CMN, roughly where it settles after a few utterances.

PocketSphinx's own default (``40,3,-1``) is far from the mean of real speech at ordinary
levels (c0 settles between 47 and 54 over Piper and eSpeak voices), and live CMN only
updates after an utterance, so the first one or two decodes of a fresh decoder ran on badly
normalised features: Piper's "Stop." came out "got it" until the decoder had heard
something else. Starting near the settled value removes that cold-start error.
"""

DEFAULT_EXTRA_COMMANDS: Final[tuple[str, ...]] = (
    "wait a second",
    "wait a minute",
    "hold on a second",
    "sorry what",
)
"""Longer commands that are common enough to deserve their own path in the grammar.

Each contains an interrupting phrase, so the decider needs no change to act on them; without
them "wait a second" has to squeeze into "wait wait" or into garbage.
"""

EXTRA_PRONUNCIATIONS: Final[Mapping[str, tuple[str, ...]]] = {
    "mm": ("M M", "AH M"),
    "hmm": ("HH AH M", "HH M M"),
    "hm": ("HH AH M",),
    "mhm": ("M HH M", "AH M HH M"),
    "uh": ("AH",),
    "huh": ("HH AH",),
    "okay": ("K EY",),
    "oh": ("HH OW", "OW W"),
}
"""Conversational pronunciations that CMUdict lacks (its "mm" is a lone ``M``).

The breathy and glided "oh" variants were measured to pull a clipped "mm-hmm" to "oh oh"
instead of to "no no", which would stop the agent. "stop" without its ``S``: a soft
initial fricative is easily taken for silence, and the rest of the word then decoded as
"got" (measured on Piper's deterministic "Stop.").
"""

_GARBAGE_PHONES: Final[tuple[str, ...]] = ("+SPN+", "+NSN+")
_GARBAGE_PREFIX: Final = "garbage-"
_ALTERNATE: Final = re.compile(r"\(\d+\)$")
_TOKEN: Final = re.compile(r"^[a-z][a-z'_]*$")
_TOKEN_JOIN: Final = "_"
_MAX_VARIANTS: Final = 16
"""Pronunciation variants per phrase; products of per-word variants are cut off here."""
_LN_FLOOR: Final = -745.0
"""Natural log of the smallest positive double: a word score that underflowed to zero."""


def _phrase_words(phrase: str) -> tuple[str, ...]:
    """Lower-case words of a phrase; hyphens split ("uh-huh" -> uh, huh) like the decider."""
    words = tuple(w for w in re.split(r"[^a-z']+", phrase.lower()) if w)
    if not words:
        raise ValueError(f"empty phrase: {phrase!r}")
    return words


def _read_pronunciations(dictionary: Path, wanted: Iterable[str]) -> dict[str, list[str]]:
    """Every pronunciation CMUdict-format ``dictionary`` has for the ``wanted`` words."""
    found: dict[str, list[str]] = {w: [] for w in wanted}
    with dictionary.open(encoding="utf-8") as lines:
        for line in lines:
            head, _, phones = line.partition(" ")
            word = _ALTERNATE.sub("", head)
            if word in found:
                found[word].append(" ".join(phones.split()))
    return found


def _combine(prons: Mapping[str, Sequence[str]], words: Sequence[str]) -> list[str]:
    """Pronunciations of a phrase: every combination of its words' variants, capped."""
    variants = [" ".join(parts) for parts in itertools.product(*(prons[w] for w in words))]
    return variants[:_MAX_VARIANTS]


class PocketSphinxPhraseSpotter(PocketSphinxStream):
    """Recognises only a closed set of short phrases on 16 kHz audio, or nothing.

    Implements :class:`~bargein.providers.base.StreamingRecognizer`: ``start`` opens an
    utterance, ``feed`` returns the words of the current best phrase (empty while nothing
    passes the confidence check) and ``finish`` closes the utterance and returns the final
    words. The words are those of the phrase as given, lower-cased, so a backchannel comes
    out as words :func:`bargein.decider.only_backchannel` accepts and a command as words the
    decider's interrupt list finds.

    ``min_score`` is the acoustic confidence threshold: the mean natural-log acoustic score
    per frame of the phrase's words, relative to the best senone in each frame. Lower it to
    accept more (and more wrong) matches.
    """

    def __init__(
        self,
        backchannels: Sequence[str] = BACKCHANNEL_PHRASES,
        commands: Sequence[str] = INTERRUPT_PHRASES + DEFAULT_EXTRA_COMMANDS,
        *,
        repeats: bool = True,
        min_score: float = -9.0,
        pronunciations: Mapping[str, Sequence[str]] | None = None,
        hmm: str | Path | None = None,
        dictionary: str | Path | None = None,
        fillprob: float = 1e-2,
        cmninit: str = DEFAULT_CMNINIT,
    ) -> None:
        phrases: list[tuple[str, ...]] = []
        for phrase in (*commands, *backchannels):
            words = _phrase_words(phrase)
            if words not in phrases:
                phrases.append(words)
        if not phrases:
            raise ValueError("PocketSphinxPhraseSpotter needs at least one phrase")
        # One dictionary token per phrase ("got it" -> got_it): a multi-word phrase is then
        # one word of the grammar, so the search can never end halfway through it.
        self._tokens = {_TOKEN_JOIN.join(p): p for p in phrases}
        alternatives: list[tuple[str, ...]] = [(t,) for t in self._tokens]
        if repeats:
            alternatives += [(t, t) for t in self._tokens if len(self._tokens[t]) <= 2]
        self.phrases: tuple[tuple[str, ...], ...] = tuple(phrases)
        self._complete = frozenset(alternatives)
        self.min_score = min_score

        model = Path(get_model_path())
        hmm_path = Path(hmm).expanduser() if hmm is not None else model / "en-us" / "en-us"
        dict_path = (
            Path(dictionary).expanduser()
            if dictionary is not None
            else model / "en-us" / "cmudict-en-us.dict"
        )
        for name, path in (("hmm", hmm_path), ("dictionary", dict_path)):
            if not path.exists():
                raise ProviderError(f"PocketSphinx {name} not found: {path}")

        vocabulary = sorted({w for p in phrases for w in p})
        prons = _read_pronunciations(dict_path, vocabulary)
        extra = {**EXTRA_PRONUNCIATIONS, **(pronunciations or {})}
        for word in vocabulary:
            for pron in extra.get(word, ()):
                normal = " ".join(pron.upper().split())
                if normal not in prons[word]:
                    prons[word].append(normal)
        missing = [w for w in vocabulary if not prons[w]]
        if missing:
            raise ProviderError(
                "no pronunciation for "
                + ", ".join(repr(w) for w in missing)
                + "; pass them in pronunciations={word: ['PH O N E S']}"
            )

        try:
            # No language model and no dictionary: only the grammar's words are needed, and
            # loading the 130k-word dictionary would triple the start-up time.
            self._decoder = Decoder(
                hmm=str(hmm_path),
                lm=None,
                dict=None,
                samprate=self.sample_rate,
                compallsen=True,
                fillprob=fillprob,
                cmninit=cmninit,
                loglevel="FATAL",
            )
            for token, words in self._tokens.items():
                for i, pron in enumerate(_combine(prons, words)):
                    self._decoder.add_word(token if i == 0 else f"{token}({i + 1})", pron, False)
            for i, phone in enumerate(_GARBAGE_PHONES):
                self._decoder.add_word(f"{_GARBAGE_PREFIX}{i}", phone, False)
            self._decoder.add_jsgf_string("phrases", self._grammar(alternatives))
            self._decoder.activate_search("phrases")
        except ProviderError:
            raise
        except Exception as exc:  # the binding raises RuntimeError/ValueError
            raise ProviderError(f"could not create PocketSphinx phrase spotter: {exc}") from exc
        self._in_utterance = False

    @staticmethod
    def _grammar(alternatives: Sequence[tuple[str, ...]]) -> str:
        for tokens in alternatives:
            for token in tokens:
                if not _TOKEN.match(token):  # JSGF tokens; quotes would end the rule early
                    raise ValueError(f"phrase {token!r} is not made of plain lower-case words")
        garbage = " | ".join(f"{_GARBAGE_PREFIX}{i}" for i in range(len(_GARBAGE_PHONES)))
        body = " | ".join("(" + " ".join(words) + ")" for words in alternatives)
        return (
            "#JSGF V1.0;\ngrammar phrases;\n"
            f"public <utterance> = <phrase> | <garbage>;\n"
            f"<phrase> = {body};\n"
            f"<garbage> = ({garbage}) [{garbage}] [{garbage}];\n"
        )

    def score(self) -> float | None:
        """Confidence of the current hypothesis (see ``min_score``); None when there is none.

        Exposed so callers can log it and tune the threshold on their own audio.
        """
        words = self._segments()
        return self._score(words) if words else None

    @staticmethod
    def _score(words: Sequence[tuple[str, int, int, float]]) -> float:
        frames = 0
        total = 0.0
        for _word, first, last, ascore in words:
            frames += last - first + 1
            total += math.log(ascore) if ascore > 0.0 else _LN_FLOOR
        return total / max(frames, 1)

    def _segments(self) -> list[tuple[str, int, int, float]]:
        """The hypothesis' phrase words with frames and acoustic score; [] if garbage."""
        segments = self._decoder.seg()
        if segments is None:
            return []
        words: list[tuple[str, int, int, float]] = []
        for seg in segments:
            token = str(seg.word)
            if token.startswith(_GARBAGE_PREFIX):
                return []
            if token.startswith(("<", "[", "+")):
                continue
            words.append(
                (_ALTERNATE.sub("", token), int(seg.start_frame), int(seg.end_frame), seg.ascore)
            )
        return words

    def _current_words(self) -> list[str]:
        if self._decoder.hyp() is None:
            return []
        words = self._segments()
        if not words:
            return []
        spoken = tuple(w for w, _first, _last, _ascore in words)
        while spoken and spoken not in self._complete:
            # A path that has not reached the grammar's end: keep the complete part.
            spoken = spoken[:-1]
            words = words[:-1]
        if not spoken:
            return []
        confidence = self._score(words)
        if confidence < self.min_score:
            return []
        return [word for token in spoken for word in self._tokens[token]]
