"""The small protocols every provider implements.

A session only ever talks to these. Each concrete provider lives in its own module
(``silero.py``, ``piper.py``, ``pocketsphinx.py``, ``scripted.py``) so that swapping one
is a one-line change and none of them leaks into the interruption logic.

Audio crossing these boundaries is always a 1-D ``float32`` numpy array in [-1, 1],
mono, at the sample rate the provider declares.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

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

    A detector may also offer ``probability_two_cuts(frame) -> (float, float | None)``:
    the frame's probability and that of the same stream cut half a frame earlier (None:
    no second cut). Speech is voice wherever the frames fall, a knock often at one cut
    only; the session then tells the policy both (:class:`bargein.policy.VoiceActivity`).
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

    A recogniser whose final reading is slow (a Whisper pass) or made elsewhere (a
    decoder in a worker process: :mod:`bargein.providers.offloaded`) may also offer
    ``finish_later() -> Callable[[], Sequence[str]]``: it closes the utterance at once and
    returns the reading as work that the session runs in a worker thread. A second
    opinion may also offer ``peek_later()`` of the same shape, a reading of the utterance
    so far that leaves it open, which the session asks for now and then while the
    overlap lasts; and ``drop_later()``, which stops the last final reading if it is
    still to come (tier 2 decided without it).
    A reading returned as :class:`ChosenWords` was the reader's choice among its phrases,
    not what it heard outright; a final reading returned as :class:`TooClose` heard one of
    its phrases but could not tell which.
    """

    sample_rate: int

    def start(self) -> None: ...

    def feed(self, audio: FloatAudio) -> Sequence[str]: ...

    def finish(self) -> Sequence[str]: ...


def start_afresh(recognizer: object) -> None:
    """Prepare a recogniser that is reused for a new call: one that adapts to the audio it
    decodes offers ``reset()`` (PocketSphinx's cepstral mean), and forgets the last call's
    microphone; any other is left as it is."""
    forget = getattr(recognizer, "reset", None)
    if forget is not None:
        forget()


class ChosenWords(tuple[str, ...]):
    """Words a closed-set reader chose as the nearest of its phrases to something it did
    not hear as any of them ("Come on." scored closest to "okay"): a forced choice, where
    a plain sequence of words was heard outright. Tier 2 takes the agent's floor back on
    readings it heard outright only."""

    __slots__ = ()


class TooClose(tuple[str, ...]):
    """No answer from a closed-set reader that heard something phrase-like, neither a
    sentence nor silence, but scored its best command and its best backchannel too close
    to tell apart ("Come on!" for "Cool.", "Blot it" for "Got it."). Always empty."""

    __slots__ = ()


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


class LLMError(ProviderError):
    """A language model could not be reached or answered badly.

    The message says what went wrong in terms a user can act on (the URL that refused the
    connection, the HTTP status and the server's own words, the model path that does not
    exist), because it ends up in the session's timeline and in the terminal.
    """


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call, described as OpenAI-style JSON schema."""

    name: str
    description: str
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )


@dataclass(frozen=True)
class ToolCall:
    """The model asked to call ``name``; ``arguments`` is the JSON text it wrote."""

    id: str
    name: str
    arguments: str = "{}"


@dataclass(frozen=True)
class ChatMessage:
    """One message of the conversation.

    ``role`` is ``system``, ``user``, ``assistant`` or ``tool``. An assistant message
    that called tools carries them in ``tool_calls``; each tool's result comes back as a
    ``tool`` message naming the call in ``tool_call_id``.
    """

    role: str
    content: str
    interrupted: bool = False
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@runtime_checkable
class LanguageModel(Protocol):
    """A streaming chat model.

    ``stream`` yields text pieces as they are generated and, when the model calls a
    tool, a :class:`ToolCall` once its arguments are complete. Closing the iterator
    (``aclose``) must stop generation before it returns: the session calls it the moment
    the user barges in. Failures raise :class:`LLMError`.
    """

    def stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[str | ToolCall]: ...


@runtime_checkable
class Transcriber(Protocol):
    """Final, accurate text of one whole utterance (the user's turn), after it ends.

    Slower and better than the streaming recogniser: its text is what the conversation
    records and the LLM answers, while the streaming partials only feed tier 2.
    """

    sample_rate: int

    def transcribe(self, audio: FloatAudio) -> str:
        """Text of ``audio`` (mono float32 at ``sample_rate``), or "" for no speech."""
        ...
