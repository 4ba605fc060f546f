"""The small protocols every provider implements.

A session only ever talks to these. Each concrete provider lives in its own module
(``silero.py``, ``piper.py``, ``pocketsphinx.py``, ``scripted.py``) so that swapping one
is a one-line change and none of them leaks into the interruption logic.

Audio crossing these boundaries is always a 1-D ``float32`` numpy array in [-1, 1],
mono, at the sample rate the provider declares.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

FloatAudio = npt.NDArray[np.float32]


class ProviderError(RuntimeError):
    """A provider failed in a way the session should record and survive."""


@runtime_checkable
class VoiceActivityDetector(Protocol):
    """Scores fixed-size frames of microphone audio.

    Stateful across calls (Silero carries an RNN state), so one instance serves one
    stream; ``reset`` starts a new stream.
    """

    sample_rate: int
    frame_samples: int

    def probability(self, frame: FloatAudio) -> float:
        """Speech probability of exactly ``frame_samples`` samples."""
        ...

    def reset(self) -> None: ...


@runtime_checkable
class StreamingRecognizer(Protocol):
    """Incremental speech-to-text for tier-2 decisions.

    ``feed`` returns the current partial hypothesis (lower-case words, may change on
    every call); ``finish`` closes the utterance and returns the final words.
    """

    sample_rate: int

    def start(self) -> None: ...

    def feed(self, audio: FloatAudio) -> Sequence[str]: ...

    def finish(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class WordTiming:
    """One word of the synthesised text and where its audio lies inside the chunk.

    ``start`` and ``end`` are sample offsets from the start of the chunk's audio.
    """

    word: str
    start: int
    end: int


@dataclass(frozen=True)
class SpeechChunk:
    """Audio for one piece of text, with word timings covering every word of it."""

    text: str
    audio: FloatAudio
    sample_rate: int
    words: tuple[WordTiming, ...] = field(default_factory=tuple)
    timings_exact: bool = True
    """False when word timings are an estimate rather than the engine's alignment."""


@runtime_checkable
class TextToSpeech(Protocol):
    sample_rate: int

    def synthesize(self, text: str) -> Iterator[SpeechChunk]:
        """Yield audio for ``text``; word timings cover every whitespace word in order."""
        ...


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str
    interrupted: bool = False


@runtime_checkable
class LanguageModel(Protocol):
    """A streaming chat model. Cancelling the iteration must stop generation."""

    def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]: ...
