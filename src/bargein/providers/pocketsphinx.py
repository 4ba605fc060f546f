"""PocketSphinx as the streaming recogniser behind tier-2 interruption decisions.

Why PocketSphinx:

* Tier 2 only needs a rough, *early* idea of what the user is saying ("wait", "stop",
  "hold on, what was the price") while they are still talking, so partial hypotheses
  matter more than final accuracy. PocketSphinx decodes incrementally: every
  ``process_raw`` call advances the search and ``hyp()`` returns the best path so far.
* It runs on CPU in a fraction of real time, needs no network or model download (the
  wheel ships a US-English acoustic model, language model and dictionary) and keeps
  its state inside one ``Decoder`` per stream.

Design notes:

* The decoder is created once (loading the model takes a third to half a second) and
  reused for every utterance; its live cepstral mean normalisation carries over from
  one utterance to the next.
* Log output is silenced with ``loglevel="FATAL"``: PocketSphinx 5 logs warnings to
  stderr by default (and the whole configuration plus per-utterance statistics at
  ``INFO``), which would interleave with the session's own output.
* Hypotheses are normalised to plain lower-case words: fillers such as ``<s>``,
  ``</s>``, ``<sil>``, ``[noise]`` or ``++noise++`` are dropped and alternate
  pronunciation markers such as ``(2)`` are stripped.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pocketsphinx import Decoder

from bargein.providers.base import FloatAudio, ProviderError

__all__ = ["PocketSphinxRecognizer", "normalize_hypothesis"]

_ALTERNATE = re.compile(r"\(\d+\)$")


def _is_filler(token: str) -> bool:
    return (
        (token.startswith("<") and token.endswith(">"))
        or (token.startswith("[") and token.endswith("]"))
        or (token.startswith("++") and token.endswith("++"))
    )


def normalize_hypothesis(hypstr: str | None) -> list[str]:
    """Lower-case words of a PocketSphinx hypothesis, without fillers or ``(n)`` marks."""
    if not hypstr:
        return []
    words: list[str] = []
    for token in hypstr.split():
        if _is_filler(token):
            continue
        word = _ALTERNATE.sub("", token).lower()
        if word and not _is_filler(word):
            words.append(word)
    return words


class PocketSphinxStream:
    """Utterance bookkeeping shared by every decoder-backed recogniser here.

    A subclass creates ``self._decoder`` and says what the current hypothesis means in
    :meth:`_current_words`.
    """

    sample_rate: int = 16000
    _decoder: Decoder
    _in_utterance: bool = False
    _initial_cmn: str | None = None

    def start(self) -> None:
        """Begin a new utterance, discarding one that is still open."""
        if self._initial_cmn is None:
            self._initial_cmn = self._decoder.get_cmn()
        if self._in_utterance:
            self._decoder.end_utt()
        self._decoder.start_utt()
        self._in_utterance = True

    def reset(self) -> None:
        """Forget what earlier utterances taught the decoder, as for a new caller.

        PocketSphinx adapts its cepstral mean to the audio it decodes, utterance after
        utterance: within a call that helps, but a decoder kept from one call to the next
        would start the next with the last one's microphone (and, on the benchmark, with
        whichever scenarios happened to run before)."""
        if self._in_utterance:
            self._decoder.end_utt()
            self._in_utterance = False
        if self._initial_cmn is not None:
            self._decoder.set_cmn(self._initial_cmn)

    def feed(self, audio: FloatAudio) -> Sequence[str]:
        """Decode more float32 audio in [-1, 1]; return the current words."""
        if not self._in_utterance:
            raise RuntimeError(f"{type(self).__name__}.feed() called before start()")
        samples = np.asarray(audio, dtype=np.float32).reshape(-1)
        if samples.size:
            pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
            self._decoder.process_raw(pcm.tobytes(), False, False)
        return self._current_words()

    def finish(self) -> Sequence[str]:
        """Close the utterance and return its final words."""
        if not self._in_utterance:
            raise RuntimeError(f"{type(self).__name__}.finish() called before start()")
        self._decoder.end_utt()
        self._in_utterance = False
        return self._current_words()

    def _current_words(self) -> list[str]:
        raise NotImplementedError


class PocketSphinxRecognizer(PocketSphinxStream):
    """Incremental English speech-to-text on 16 kHz audio.

    ``start`` opens an utterance, ``feed`` returns the current partial words and
    ``finish`` closes the utterance and returns the final words.
    """

    def __init__(
        self,
        *,
        hmm: str | Path | None = None,
        lm: str | Path | None = None,
        dict: str | Path | None = None,  # PocketSphinx's own option name
    ) -> None:
        options: builtins.dict[str, str | int] = {"samprate": self.sample_rate, "loglevel": "FATAL"}
        for name, value in (("hmm", hmm), ("lm", lm), ("dict", dict)):
            if value is None:
                continue
            path = Path(value).expanduser()
            if not path.exists():
                raise ProviderError(f"PocketSphinx {name} not found: {path}")
            options[name] = str(path)
        try:
            self._decoder = Decoder(**options)
        except Exception as exc:  # the binding raises RuntimeError/ValueError
            raise ProviderError(f"could not create PocketSphinx decoder: {exc}") from exc
        self._in_utterance = False

    def _current_words(self) -> list[str]:
        hyp = self._decoder.hyp()
        return normalize_hypothesis(hyp.hypstr if hyp is not None else None)
