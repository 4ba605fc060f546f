"""What a server shares between its sessions, and what each session gets of its own.

Models are expensive to load and safe to share: the LLM (llama.cpp serialises its
generations behind a lock), the TTS and the transcriber. Detectors carry per-stream
state (Silero's RNN state, pocketsphinx's utterance), so every session gets fresh ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from bargein.decider import Decider
from bargein.providers.base import (
    LanguageModel,
    StreamingRecognizer,
    TextToSpeech,
    Transcriber,
    VoiceActivityDetector,
)
from bargein.session import AudioSink, Session, SessionConfig

DEFAULT_FALLBACK = "Sorry, I lost my train of thought. Could you say that again?"


def _silero() -> VoiceActivityDetector:
    from bargein.providers.silero import SileroVAD

    return SileroVAD()


def _pocketsphinx() -> StreamingRecognizer:
    from bargein.providers.pocketsphinx import PocketSphinxRecognizer

    return PocketSphinxRecognizer()


RECOGNIZER_PROCESSES = min(4, os.cpu_count() or 1)
"""Worker processes for the streaming recogniser of a server's sessions: one per core,
up to four. PocketSphinx decodes at about a third of real time, so each keeps up with
two or three users talking at once."""


def offloaded_recognizer(
    processes: int = RECOGNIZER_PROCESSES,
    factory: Callable[[], StreamingRecognizer] | None = None,
) -> Callable[[], StreamingRecognizer]:
    """PocketSphinx (or what ``factory``, a module-level callable, builds) in worker
    processes, as a ``recognizer_factory``: each session gets a stream on one of them
    (:mod:`bargein.providers.offloaded` says why). The workers start now, which takes a
    second or so; call it where the models load."""
    from bargein.providers.offloaded import RecognizerProcesses
    from bargein.providers.pocketsphinx import PocketSphinxRecognizer

    return RecognizerProcesses(factory or PocketSphinxRecognizer, processes).start().stream


def offloaded_phrase_spotter(
    processes: int = RECOGNIZER_PROCESSES,
) -> Callable[[], StreamingRecognizer]:
    """The closed-set phrase spotter in worker processes, as a ``spotter_factory``: it is
    PocketSphinx too, and holds the interpreter lock while it decodes."""
    from bargein.providers.phrases import PocketSphinxPhraseSpotter

    return offloaded_recognizer(processes, PocketSphinxPhraseSpotter)


SpotterName = Literal["whisper", "phrases", "off"]
"""Tier 2's second opinion: Whisper reading each overlap as one of the rule's phrases,
PocketSphinx's closed-set phrase spotter, or none (docs/tier2.md)."""

DEFAULT_SPOTTER: SpotterName = "whisper"
"""Whisper: on the built-in set it takes a quarter as many backchannels for bids for the
floor as the rule alone, with no interruption missed (BENCHMARKS.md)."""


def phrase_spotter() -> StreamingRecognizer:
    """The closed-set phrase spotter, as a ``spotter_factory``."""
    from bargein.providers.phrases import PocketSphinxPhraseSpotter

    return PocketSphinxPhraseSpotter()


def whisper_reader(transcriber: Transcriber | None = None) -> Callable[[], StreamingRecognizer]:
    """Whisper reading each overlap as one of tier 2's phrases, as a ``spotter_factory``.

    One model serves every session (the transcriber's, when it is Whisper); each session
    gets its own stream over it.
    """
    from bargein.providers.whisper import WhisperTranscriber
    from bargein.providers.whisper_phrases import WhisperPhraseReader

    shared = transcriber.loaded_model if isinstance(transcriber, WhisperTranscriber) else None
    reader = WhisperPhraseReader(shared=shared)
    return reader.stream


@dataclass
class AgentStack:
    llm: LanguageModel
    tts: TextToSpeech
    transcriber: Transcriber | None = None
    config: SessionConfig = field(
        default_factory=lambda: SessionConfig(fallback_line=DEFAULT_FALLBACK)
    )
    vad_factory: Callable[[], VoiceActivityDetector] = _silero
    recognizer_factory: Callable[[], StreamingRecognizer] = _pocketsphinx
    decider_factory: Callable[[], Decider] | None = None
    spotter_factory: Callable[[], StreamingRecognizer] | None = None
    """A second opinion for tier 2 on each overlap (:func:`phrase_spotter` or
    :func:`whisper_reader`); None: the rule alone."""

    def session(
        self, sink: AudioSink, *, llm: LanguageModel | None = None, narrowband: bool = False
    ) -> Session:
        """A new session on ``sink`` with fresh detectors; ``llm`` overrides the shared one.

        ``narrowband``: the microphone is phone audio (8 kHz, upsampled). The second opinion
        is left out there: on Media Streams the phrase spotter took "Stop" for "got it" and
        made tier 2 miss a third of the short commands (BENCHMARKS.md); the Whisper reader
        is not yet measured on phone audio.
        """
        return Session(
            vad=self.vad_factory(),
            recognizer=self.recognizer_factory(),
            llm=llm or self.llm,
            tts=self.tts,
            sink=sink,
            config=replace(self.config),
            decider=self.decider_factory() if self.decider_factory else None,
            transcriber=self.transcriber,
            second_opinion=(
                self.spotter_factory() if self.spotter_factory and not narrowband else None
            ),
        )

    @classmethod
    def default(cls, llm: LanguageModel | None = None, *, transcripts: bool = True) -> AgentStack:
        """The embedded default: Gemma 3 270M, Piper's joe voice, Whisper transcripts."""
        from bargein.providers.llamacpp import LlamaCppLLM
        from bargein.providers.piper import PiperTTS

        transcriber: Transcriber | None = None
        if transcripts:
            from bargein.providers.whisper import WhisperTranscriber

            transcriber = WhisperTranscriber()
        return cls(llm=llm or LlamaCppLLM(), tts=PiperTTS(), transcriber=transcriber)
