"""Pipecat as a peer: its own pipeline, VAD and user-turn strategies, bargein's ear.

The pipeline is the usual voice bot, run by Pipecat's own worker and runner::

    microphone -> STT -> user aggregator -> LLM -> TTS -> loudspeaker -> assistant aggregator

The user aggregator carries Pipecat's bundled Silero VAD analyser and its default
user-turn strategies (a turn starts on voice activity or a transcript; the Smart Turn
model ends it), or, as ``minwords2``, the word-count start strategy its documentation
offers against false interruptions. Only the edges and the three services are ours: the
microphone plays the scenario in real time, the loudspeaker consumes audio at playback
pace (and drops what it holds on an interruption, as a telephony transport's ``clear``
does), and the services are minimal subclasses of Pipecat's base classes that stream
the scenario's text, voice it with bargein's Piper and transcribe it by script.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from importlib.metadata import version
from typing import Any

from loguru import logger
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMRunFrame,
    OutputAudioRawFrame,
    StartFrame,
    TranscriptionFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings, STTSettings, TTSSettings
from pipecat.services.stt_service import STTService
from pipecat.services.tts_service import TTSService
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import TransportParams
from pipecat.turns.user_start import MinWordsUserTurnStartStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.workers.runner import WorkerRunner

from bargein.bench.peers.harness import MIC_RATE, PeerRun, PeerRunOptions
from bargein.providers.base import TextToSpeech
from bargein.scenario import Scenario

__all__ = ["CONFIGS", "PACKAGE", "run_scenario", "system"]

PACKAGE = "pipecat-ai"
CONFIGS = ("default", "minwords2")
SYSTEM_PROMPT = "You are a helpful voice assistant."


def system(config: str, stt: str) -> dict[str, Any]:
    return {
        "peer": "pipecat",
        "package": PACKAGE,
        "version": version(PACKAGE),
        "config": config,
        "stt": stt,
    }


def quiet() -> None:
    """Pipecat logs every frame's journey at DEBUG to stderr; keep only its warnings."""
    logger.remove()
    logger.add(
        lambda message: print(message, end="", file=__import__("sys").stderr), level="WARNING"
    )


# -- the edges ------------------------------------------------------------------------------


class Microphone(BaseInputTransport):
    """20 ms frames of the scenario's microphone signal, in real time."""

    def __init__(self, run: PeerRun, params: TransportParams) -> None:
        super().__init__(params)
        self._run = run
        self._feed: asyncio.Task[None] | None = None

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    def begin(self) -> None:
        self._feed = self.create_task(self._run.user.feed(self._push), "mic")

    async def _push(self, pcm: bytes) -> None:
        await self.push_audio_frame(
            InputAudioRawFrame(audio=pcm, sample_rate=MIC_RATE, num_channels=1)
        )

    async def _end_feed(self) -> None:
        if self._feed is not None:
            await self.cancel_task(self._feed)
            self._feed = None

    async def stop(self, frame: EndFrame) -> None:
        await self._end_feed()
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame) -> None:
        await self._end_feed()
        await super().cancel(frame)


class Loudspeaker(BaseOutputTransport):
    """Takes each audio frame when the device has room for it, as a sound card does."""

    def __init__(self, run: PeerRun, params: TransportParams) -> None:
        super().__init__(params)
        self._run = run

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, InterruptionFrame):
            # The bot was cut off: drop what the device holds (a transport's "clear").
            self._run.ear.clear()
            self._run.mark_cut()
        await super().process_frame(frame, direction)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        await self._run.ear.play(frame.audio)
        return True


# -- the services ---------------------------------------------------------------------------


class ScriptedLLMService(LLMService):
    """Streams the scenario's reply (then the follow-up) at bargein's scripted pace."""

    def __init__(self, run: PeerRun) -> None:
        super().__init__(
            settings=LLMSettings(
                model="scripted",
                system_instruction=None,
                temperature=None,
                max_tokens=None,
                top_p=None,
                top_k=None,
                frequency_penalty=None,
                presence_penalty=None,
                seed=None,
                filter_incomplete_user_turns=False,
                user_turn_completion_config=None,
            )
        )
        self._run = run

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if not isinstance(frame, LLMContextFrame):
            await self.push_frame(frame, direction)
            return
        script = self._run.script
        reply = script.start_reply()
        await self.push_frame(LLMFullResponseStartFrame())
        async for token in script.tokens(reply):
            await self._push_llm_text(token)
        await self.push_frame(LLMFullResponseEndFrame())


class PiperVoiceService(TTSService):
    """bargein's Piper voice behind Pipecat's TTS service (as its own Piper service is)."""

    def __init__(self, run: PeerRun) -> None:
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            sample_rate=run.voice.sample_rate,
            settings=TTSSettings(model=None, voice=None, language=None),
        )
        self._run = run

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        chunks = await self._run.voice.speak(text)

        async def audio() -> Any:
            for pcm in chunks:
                yield pcm

        async for frame in self._stream_audio_frames_from_iterator(
            audio(), in_sample_rate=self._run.voice.sample_rate, context_id=context_id
        ):
            yield frame


class ScriptedSTTService(STTService):
    """The user's words, as the scenario says them, a fixed lag after they are said."""

    def __init__(self, run: PeerRun) -> None:
        super().__init__(
            sample_rate=MIC_RATE,
            ttfs_p99_latency=0.35,
            settings=STTSettings(model=None, language=None),
        )
        self._run = run
        self._task: asyncio.Task[None] | None = None

    def begin(self) -> None:
        self._task = self.create_task(self._script(), "stt-script")

    async def _script(self) -> None:
        async for text, final in self._run.user.transcripts(self._run.options.stt):
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            if final:
                await self.push_frame(
                    TranscriptionFrame(text=text, user_id="user", timestamp=stamp, finalized=True)
                )
            else:
                await self.push_frame(
                    InterimTranscriptionFrame(text=text, user_id="user", timestamp=stamp)
                )

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        # Transcripts come from the script; the audio itself is not recognised.
        return
        yield

    async def _end(self) -> None:
        if self._task is not None:
            await self.cancel_task(self._task)
            self._task = None

    async def stop(self, frame: EndFrame) -> None:
        await self._end()
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame) -> None:
        await self._end()
        await super().cancel(frame)


# -- one scenario ---------------------------------------------------------------------------


def _user_params(config: str) -> LLMUserAggregatorParams:
    if config == "default":
        return LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer())
    if config == "minwords2":
        return LLMUserAggregatorParams(
            vad_analyzer=SileroVADAnalyzer(),
            user_turn_strategies=UserTurnStrategies(
                start=[MinWordsUserTurnStartStrategy(min_words=2)]
            ),
        )
    raise ValueError(f"unknown pipecat config {config!r}: expected one of {CONFIGS}")


def _message_text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _said(context: LLMContext, role: str, index: int) -> str:
    said = [
        _message_text(m)
        for m in context.get_messages()
        if isinstance(m, dict) and m.get("role") == role
    ]
    return said[index] if said and -len(said) <= index < len(said) else ""


async def run_scenario(
    scenario: Scenario, tts: TextToSpeech, options: PeerRunOptions, config: str
) -> dict[str, Any]:
    run = PeerRun(scenario, tts, options)
    rate = run.voice.sample_rate
    params = TransportParams(
        audio_in_enabled=True,
        audio_out_enabled=True,
        audio_in_sample_rate=MIC_RATE,
        audio_out_sample_rate=rate,
    )
    mic = Microphone(run, params)
    speaker = Loudspeaker(run, params)
    stt = ScriptedSTTService(run)
    context = LLMContext([{"role": "system", "content": SYSTEM_PROMPT}])
    aggregators = LLMContextAggregatorPair(context, user_params=_user_params(config))
    pipeline = Pipeline(
        [
            mic,
            stt,
            aggregators.user(),
            ScriptedLLMService(run),
            PiperVoiceService(run),
            speaker,
            aggregators.assistant(),
        ]
    )
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=MIC_RATE, audio_out_sample_rate=rate),
        cancel_on_idle_timeout=False,
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")  # type: ignore[untyped-decorator]
    async def _started(_worker: PipelineWorker, _frame: Frame) -> None:
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(started.wait(), 30.0)

        def start() -> None:
            mic.begin()
            stt.begin()
            asyncio.get_running_loop().create_task(worker.queue_frames([LLMRunFrame()]))

        await run.drive(start)
    finally:
        await worker.queue_frame(CancelFrame())
        try:
            await asyncio.wait_for(running, 10.0)
        except Exception as exc:  # a peer that will not shut down must not stop the set
            run.errors.append(f"pipecat did not stop cleanly: {exc!r}")
            running.cancel()
    return run.measure(
        _said(context, "assistant", 0), _said(context, "user", -1), system(config, options.stt)
    )
