"""LiveKit Agents as a peer: its own ``AgentSession``, Silero plugin and turn handling.

The session runs as in a room, with its interruption defaults (VAD-based interruption
after 0.5 s of speech, pausing the audio and resuming it after a false interruption,
the echo-cancellation warm-up at the start of a call), or, as ``minwords2``, with the
``min_words`` interruption setting its documentation offers against false
interruptions. The session's audio input is the scenario's microphone in real time; its
audio output is a loudspeaker that plays at playback pace and can pause, so
``resume_false_interruption`` is in force as it is with a room's output. The LLM, STT
and TTS are minimal subclasses of LiveKit's base classes: the scenario's text at
bargein's scripted pace, bargein's Piper voice behind a non-streaming TTS (so the session
splits the text into sentences with its own stream adapter), and the user's words by
script.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from importlib.metadata import version
from typing import Any, Literal

from livekit import rtc
from livekit.agents import Agent, AgentSession, utils
from livekit.agents import llm as lk_llm
from livekit.agents import stt as lk_stt
from livekit.agents import tts as lk_tts
from livekit.agents import vad as lk_vad
from livekit.agents.language import LanguageCode
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)
from livekit.agents.voice import io
from livekit.agents.voice.transcription.synchronizer import TranscriptSynchronizer
from livekit.agents.voice.turn import TurnHandlingOptions
from livekit.plugins import silero

from bargein.bench.peers.harness import MIC_RATE, PeerRun, PeerRunOptions
from bargein.providers.base import TextToSpeech
from bargein.scenario import Scenario

__all__ = ["CONFIGS", "PACKAGE", "run_scenario", "system"]

PACKAGE = "livekit-agents"
CONFIGS = ("default", "minwords2")
INSTRUCTIONS = "You are a helpful voice assistant."
STEP_S = 0.02
"""The loudspeaker plays its buffer in 20 ms steps."""


def system(config: str, stt: str) -> dict[str, Any]:
    return {
        "peer": "livekit",
        "package": PACKAGE,
        "version": version(PACKAGE),
        "silero_plugin": version("livekit-plugins-silero"),
        "config": config,
        "stt": stt,
    }


# -- the edges ------------------------------------------------------------------------------


class Microphone(io.AudioInput):
    def __init__(self) -> None:
        super().__init__(label="bargein-microphone")
        self._frames: asyncio.Queue[rtc.AudioFrame] = asyncio.Queue()

    async def __anext__(self) -> rtc.AudioFrame:
        return await self._frames.get()

    def push(self, pcm: bytes) -> None:
        self._frames.put_nowait(
            rtc.AudioFrame(
                data=pcm, sample_rate=MIC_RATE, num_channels=1, samples_per_channel=len(pcm) // 2
            )
        )


class Loudspeaker(io.AudioOutput):
    """Holds each segment the session captures and plays it at playback pace; it can
    pause (holding its place) and clear, and reports each segment's playout."""

    def __init__(self, run: PeerRun) -> None:
        super().__init__(
            label="bargein-loudspeaker",
            capabilities=io.AudioOutputCapabilities(pause=True),
            sample_rate=run.voice.sample_rate,
        )
        self._run = run
        self._rate = run.voice.sample_rate
        self._buffer = bytearray()
        self._open = False
        self._flushed = False
        self._paused = False
        self._started = False
        self._segment_samples = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._play())

    async def aclose(self) -> None:
        if self._task is not None:
            await utils.aio.cancel_and_wait(self._task)

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if not self._open:
            self._open, self._flushed, self._started = True, False, False
            self._segment_samples = 0
        self._buffer += bytes(frame.data.cast("B"))
        self._wake.set()

    def flush(self) -> None:
        super().flush()
        if self._open:
            self._flushed = True
            self._wake.set()

    def clear_buffer(self) -> None:
        self._buffer.clear()
        # What the device still held is lost too: the reply stops now.
        position = self._segment_samples - self._run.ear.queued()
        self._run.ear.clear()
        self._run.mark_cut()
        if self._open:
            self._finish(position, interrupted=True)

    def pause(self) -> None:
        super().pause()
        self._paused = True
        self._run.ear.pause()

    def resume(self) -> None:
        super().resume()
        self._paused = False
        self._run.ear.resume()
        self._wake.set()

    def _finish(self, samples: int, *, interrupted: bool) -> None:
        self._open = self._flushed = False
        self.on_playback_finished(
            playback_position=max(samples, 0) / self._rate, interrupted=interrupted
        )

    async def _play(self) -> None:
        ear, step = self._run.ear, int(STEP_S * self._rate) * 2
        while True:
            if self._open and not self._paused and self._buffer:
                await ear.wait_room()
                if not (self._open and not self._paused and self._buffer):
                    continue
                chunk = bytes(self._buffer[:step])
                del self._buffer[:step]
                if not self._started:
                    self._started = True
                    self.on_playback_started(created_at=time.time())
                ear.write(chunk)
                self._segment_samples += len(chunk) // 2
                continue
            if self._open and self._flushed and not self._buffer and not self._paused:
                while ear.queued() > 0 and self._open:
                    await asyncio.sleep(0.005)
                if self._open and self._flushed and not self._buffer:
                    self._finish(self._segment_samples, interrupted=False)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.01)


# -- the services ---------------------------------------------------------------------------


class ScriptedLLM(lk_llm.LLM[Literal["none"]]):
    def __init__(self, run: PeerRun) -> None:
        super().__init__()
        self._run = run

    def chat(
        self,
        *,
        chat_ctx: lk_llm.ChatContext,
        tools: list[lk_llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[lk_llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> lk_llm.LLMStream:
        return ScriptedLLMStream(
            self, self._run, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options
        )


class ScriptedLLMStream(lk_llm.LLMStream):
    def __init__(
        self,
        llm: ScriptedLLM,
        run: PeerRun,
        *,
        chat_ctx: lk_llm.ChatContext,
        tools: list[lk_llm.Tool],
        conn_options: APIConnectOptions,
    ) -> None:
        # Set before the base class starts the stream's task.
        self._bargein_run = run
        super().__init__(llm, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)

    async def _run(self) -> None:
        script = self._bargein_run.script
        reply = script.start_reply()
        async for token in script.tokens(reply):
            self._event_ch.send_nowait(
                lk_llm.ChatChunk(
                    id=f"reply-{reply}",
                    delta=lk_llm.ChoiceDelta(role="assistant", content=token),
                )
            )


class PiperVoiceTTS(lk_tts.TTS[Literal["none"]]):
    """bargein's Piper voice as a non-streaming TTS, like most HTTP voices."""

    def __init__(self, run: PeerRun) -> None:
        super().__init__(
            capabilities=lk_tts.TTSCapabilities(streaming=False),
            sample_rate=run.voice.sample_rate,
            num_channels=1,
        )
        self.bargein_run = run

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> lk_tts.ChunkedStream:
        return PiperChunkedStream(tts=self, input_text=text, conn_options=conn_options)


class PiperChunkedStream(lk_tts.ChunkedStream):
    async def _run(self, output_emitter: lk_tts.AudioEmitter) -> None:
        assert isinstance(self._tts, PiperVoiceTTS)
        voice = self._tts.bargein_run.voice
        output_emitter.initialize(
            request_id=utils.shortuuid("piper_"),
            sample_rate=voice.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
            frame_size_ms=20,
        )
        for pcm in await voice.speak(self._input_text):
            output_emitter.push(pcm)
        output_emitter.flush()


class ScriptedSTT(lk_stt.STT[Literal["none"]]):
    """Hands over the user's words by script; with ``interim`` also the partial words."""

    def __init__(self, run: PeerRun) -> None:
        super().__init__(
            capabilities=lk_stt.STTCapabilities(
                streaming=True, interim_results=run.options.stt == "interim"
            )
        )
        self.bargein_run = run

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> lk_stt.SpeechEvent:
        raise NotImplementedError("the scripted recogniser only streams")

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> lk_stt.RecognizeStream:
        return ScriptedRecognizeStream(stt=self, conn_options=conn_options)


class ScriptedRecognizeStream(lk_stt.RecognizeStream):
    async def _run(self) -> None:
        assert isinstance(self._stt, ScriptedSTT)
        run = self._stt.bargein_run

        async def ignore_audio() -> None:
            async for _ in self._input_ch:
                pass

        listening = asyncio.create_task(ignore_audio())
        try:
            async for text, final in run.user.transcripts(run.options.stt):
                kind = (
                    lk_stt.SpeechEventType.FINAL_TRANSCRIPT
                    if final
                    else lk_stt.SpeechEventType.INTERIM_TRANSCRIPT
                )
                self._event_ch.send_nowait(
                    lk_stt.SpeechEvent(
                        type=kind,
                        alternatives=[lk_stt.SpeechData(language=LanguageCode("en"), text=text)],
                    )
                )
            await listening
        finally:
            await utils.aio.cancel_and_wait(listening)


# -- one scenario ---------------------------------------------------------------------------

_vad: lk_vad.VAD | None = None


def _silero() -> lk_vad.VAD:
    """The plugin's VAD with its defaults, loaded once (as a worker's prewarm does)."""
    global _vad
    if _vad is None:
        _vad = silero.VAD.load()
    return _vad


def _turn_handling(config: str) -> NotGivenOr[TurnHandlingOptions]:
    if config == "default":
        return NOT_GIVEN
    if config == "minwords2":
        return {"interruption": {"min_words": 2}}
    raise ValueError(f"unknown livekit config {config!r}: expected one of {CONFIGS}")


def _said(session: AgentSession[Any], role: str, index: int) -> str:
    said = [
        item.text_content or ""
        for item in session.history.items
        if isinstance(item, lk_llm.ChatMessage) and item.role == role
    ]
    return said[index] if said and -len(said) <= index < len(said) else ""


async def run_scenario(
    scenario: Scenario, tts: TextToSpeech, options: PeerRunOptions, config: str
) -> dict[str, Any]:
    run = PeerRun(scenario, tts, options)
    handling = _turn_handling(config)
    session: AgentSession[Any] = AgentSession(
        vad=_silero(),
        stt=ScriptedSTT(run),
        llm=ScriptedLLM(run),
        tts=PiperVoiceTTS(run),
        turn_handling=handling,
    )
    mic = Microphone()
    speaker = Loudspeaker(run)
    # As a room's output does by default: the transcript follows the audio's playout, and
    # an interrupted reply is recorded as far as it played.
    synchronizer = TranscriptSynchronizer(next_in_chain_audio=speaker, next_in_chain_text=None)
    session.input.audio = mic
    session.output.audio = synchronizer.audio_output
    session.output.transcription = synchronizer.text_output

    def false_interruption(event: Any) -> None:
        if getattr(event, "resumed", False):
            run.decide("resume")

    session.on("agent_false_interruption", false_interruption)
    speaker.start()
    feed: asyncio.Task[None] | None = None
    try:
        await session.start(Agent(instructions=INSTRUCTIONS), record=False)

        def start() -> None:
            nonlocal feed
            feed = asyncio.create_task(run.user.feed(mic.push))
            session.generate_reply()

        await run.drive(start)
    finally:
        if feed is not None:
            await utils.aio.cancel_and_wait(feed)
        try:
            await asyncio.wait_for(session.aclose(), 10.0)
        except Exception as exc:  # a peer that will not shut down must not stop the set
            run.errors.append(f"livekit did not stop cleanly: {exc!r}")
        await synchronizer.aclose()
        await speaker.aclose()
    return run.measure(
        _said(session, "assistant", 0), _said(session, "user", -1), system(config, options.stt)
    )
