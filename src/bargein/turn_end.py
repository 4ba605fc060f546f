"""Semantic end of turn: is what the user said so far a finished thought?

A fixed silence timeout makes every answer wait the same, and still cuts off a user who
pauses mid-sentence for longer than the timeout. A detector instead looks at the words
the streaming recogniser has heard and says how likely the turn is complete; the policy
then asks for a short silence after a likely-complete turn ("What time does my flight
leave?") and a long one after a likely-unfinished one ("I want to fly to, um").

Two detectors share one small protocol, :class:`TurnEndDetector`:

* :class:`WordTurnEndDetector` (the default): a logistic regression over the last few
  words, trained by ``scripts/train_turn_end.py`` on the streaming recogniser's own
  output for synthesised complete and trailing-off turns (the shipped weights are a few
  kilobytes of JSON). Pure Python, microseconds a call, so it can run inline;
* :class:`LlamaTurnEndDetector`: the local LLM's probability that the caller's line ends
  here, read from one forward pass over the turn's tokens after the cached transcript
  preamble. Slower (tens of milliseconds) and, measured on the turn set, no better on the
  recogniser's words; kept for comparison and for users with better recognisers.

:class:`SilenceRule` maps a probability to the silence the policy waits for.
Everything in this module is free of I/O at call time except loading the weights.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

__all__ = [
    "DEFAULT_WEIGHTS",
    "LlamaTurnEndDetector",
    "SilenceRule",
    "TurnEndDetector",
    "WordTurnEndDetector",
    "features",
]

DEFAULT_WEIGHTS: Final = Path(__file__).with_name("models") / "turn_end_words.json"


@runtime_checkable
class TurnEndDetector(Protocol):
    """Says how likely the user's turn is over, from the words heard so far."""

    def probability_complete(self, words: Sequence[str], context: str = "") -> float:
        """Probability in [0, 1] that ``words`` are a whole turn.

        ``context`` is what the agent said last, if anything (a question changes what
        counts as a whole answer: "Boston." is complete after "Where to?").
        """
        ...


@dataclass(frozen=True)
class SilenceRule:
    """From a completeness probability to the silence that ends the turn.

    Silences count from the segmenter's speech end, like ``turn_end_silence_s`` (the
    segmenter itself already waited its own 0.25 s of quiet before saying so).
    """

    complete_above: float = 0.5
    complete_silence_s: float = 0.0
    incomplete_below: float = 0.35
    incomplete_silence_s: float = 1.5

    def silence(self, probability: float, default_s: float) -> float:
        if not math.isfinite(probability):
            return default_s
        if probability >= self.complete_above:
            return self.complete_silence_s
        if probability <= self.incomplete_below:
            return self.incomplete_silence_s
        return default_s


# ---------------------------------------------------------------------------------------
# Words


def _word_set(text: str) -> frozenset[str]:
    return frozenset(text.split())


_FUNCTION_WORDS: Final = _word_set(
    "a an the to of for in on at by with from into about than and or but so because if "
    "that which who whose when where while as my your our their his her its this these "
    "those some any is are was were be been am i we you he she they it me us them "
    "would could should can will shall do does did have has had not no very really "
    "just like then also"
)
_FILLERS: Final = _word_set("um uh er erm ah hmm mm uhm")
_QUESTION_STARTS: Final = _word_set(
    "what when where who why how which is are can could would do does did will should"
)
_CLOSERS: Final = _word_set(
    "please thanks thank you bye goodbye okay ok yes yeah no right sure all it today "
    "tonight now tomorrow"
)
_WORD: Final = re.compile(r"[a-z']+")


def _clean(words: Iterable[str]) -> list[str]:
    out: list[str] = []
    for word in words:
        out.extend(_WORD.findall(word.lower()))
    return out


def features(words: Sequence[str]) -> dict[str, float]:
    """Sparse features of a turn's words for the linear model (names to values)."""
    w = _clean(words)
    f: dict[str, float] = {"bias": 1.0}
    if not w:
        f["empty"] = 1.0
        return f
    last = w[-1]
    f[f"last={last}"] = 1.0
    f[f"prev={w[-2] if len(w) > 1 else '<s>'}"] = 1.0
    f[f"last2={w[-2] if len(w) > 1 else '<s>'}_{last}"] = 1.0
    f[f"first={w[0]}"] = 1.0
    f["last_function"] = float(last in _FUNCTION_WORDS)
    f["last_filler"] = float(last in _FILLERS)
    f["last_closer"] = float(last in _CLOSERS)
    f["prev_function"] = float(len(w) > 1 and w[-2] in _FUNCTION_WORDS)
    f["question_start"] = float(w[0] in _QUESTION_STARTS)
    f["function_share_last3"] = sum(x in _FUNCTION_WORDS for x in w[-3:]) / min(3, len(w))
    f[f"length={min(len(w), 8)}"] = 1.0
    return f


@cache
def _load(path: Path) -> dict[str, float]:
    document = json.loads(path.read_text(encoding="utf-8"))
    weights = document["weights"]
    if not isinstance(weights, dict):
        raise ValueError(f"{path}: 'weights' is not a mapping")
    return {str(k): float(v) for k, v in weights.items()}


class WordTurnEndDetector:
    """Logistic regression over the last words of the turn (see :func:`features`)."""

    def __init__(
        self, weights: Mapping[str, float] | None = None, path: Path | str | None = None
    ) -> None:
        self.weights: Mapping[str, float] = (
            weights if weights is not None else _load(Path(path or DEFAULT_WEIGHTS))
        )

    def probability_complete(self, words: Sequence[str], context: str = "") -> float:
        score = sum(self.weights.get(name, 0.0) * value for name, value in features(words).items())
        return 1.0 / (1.0 + math.exp(-max(-40.0, min(40.0, score))))


# ---------------------------------------------------------------------------------------
# The local LLM


class LlamaTurnEndDetector:
    """The local LLM's probability that the caller's line ends after ``words``.

    The prompt is the call transcript the LLM provider builds (its preamble is evaluated
    once and reused from llama.cpp's prompt cache), ending in ``Caller: <words>``; the
    probability of a complete turn is the next-token mass on the end of the line and on
    sentence-final punctuation. One forward pass over the few new tokens per call.
    """

    def __init__(self, model: Any = None) -> None:
        from bargein.providers.llamacpp import TRANSCRIPT_PREAMBLE, LlamaCppLLM

        self._llm = model if model is not None else LlamaCppLLM(max_tokens=1)
        self._preamble = TRANSCRIPT_PREAMBLE
        llama = self._llm._llama
        vocab = {piece: llama.tokenize(piece.encode(), add_bos=False) for piece in _ENDINGS}
        self._end_ids = sorted({ids[0] for ids in vocab.values() if len(ids) == 1})

    def probability_complete(self, words: Sequence[str], context: str = "") -> float:
        import numpy as np
        from llama_cpp import Llama

        llama = self._llm._llama
        text = " ".join(_clean(words))
        lines = [self._preamble]
        if context.strip():
            lines.append(f"Agent: {' '.join(context.split())}")
        lines.append(f"Caller: {text}")
        tokens = llama.tokenize("\n".join(lines).encode(), add_bos=True)
        with self._llm._lock:
            # Reuse the evaluated prefix (the preamble at least) and run only the rest;
            # eval() drops the cache past n_tokens first.
            keep = Llama.longest_token_prefix(llama._input_ids.tolist(), tokens)
            llama.n_tokens = min(keep, len(tokens) - 1)
            llama.eval(tokens[llama.n_tokens :])
            row = llama._ctx.get_logits()
            logits = np.ctypeslib.as_array(row, shape=(llama.n_vocab(),)).astype(np.float64)
        logits -= logits.max()
        probs = np.exp(logits)
        probs /= probs.sum()
        return float(probs[self._end_ids].sum())


_ENDINGS: Final = ("\n", ".", "?", "!")
