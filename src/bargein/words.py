"""Comparing words: what a listener would call the same words, and how many differ.

Used for the word error rate of transcripts (the transcriber against the scenarios'
known text) and, in the benchmark, for how far the conversation's record of a turn is
from what was said.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence

_APOSTROPHES = re.compile(r"['’ʼ`´]")
_DIGIT_GROUPING = re.compile(r"(?<=\d),(?=\d{3}\b)")
_TOKEN = re.compile(r"\d+(?:\.\d+)+|[^\W_]+")


def normalize_for_wer(text: str) -> list[str]:
    """The words of ``text`` as a WER compares them: case, punctuation and spacing ignored.

    Transcripts differ from references in ways no listener would call an error ("Stop!"
    vs "stop.", "Mm-hmm" vs "mm hmm", "don't" vs "dont"), and counting those would bury
    real mistakes. So: Unicode NFKC and case folding; apostrophes vanish inside words;
    any other punctuation separates words, except a decimal point or a thousands comma
    between digits ("3.5", "1,000" -> "1000"). Numbers are not converted between digits
    and words: "2" and "two" are different words, as they are to a reader of the log.
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    folded = _DIGIT_GROUPING.sub("", _APOSTROPHES.sub("", folded))
    return _TOKEN.findall(folded)


def word_edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Fewest word substitutions, deletions and insertions turning one into the other."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, start=1):
            current.append(
                min(
                    previous[j] + 1,  # reference word deleted
                    current[j - 1] + 1,  # hypothesis word inserted
                    previous[j - 1] + (ref_word != hyp_word),  # kept or substituted
                )
            )
        previous = current
    return previous[-1]


def word_error_rate(reference: str | Sequence[str], hypothesis: str | Sequence[str]) -> float:
    """Word edit distance divided by the number of reference words.

    Strings are normalised with :func:`normalize_for_wer`; sequences are taken as words
    already. It can exceed 1 (insertions). An empty reference gives 0.0 against an empty
    hypothesis and ``math.inf`` against any words, since no rate relative to nothing
    describes them; to pool clips, sum :func:`word_edit_distance` and reference lengths.
    """
    ref = normalize_for_wer(reference) if isinstance(reference, str) else list(reference)
    hyp = normalize_for_wer(hypothesis) if isinstance(hypothesis, str) else list(hypothesis)
    if not ref:
        return 0.0 if not hyp else math.inf
    return word_edit_distance(ref, hyp) / len(ref)
