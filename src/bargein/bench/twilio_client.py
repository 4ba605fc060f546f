"""A stand-in for Twilio's side of a Media Stream, to test and benchmark ``/twilio``.

It speaks the same JSON as Twilio and keeps Twilio's timing: every 20 ms it sends the
microphone's last 20 ms and plays the next 20 ms of what the agent sent; it echoes a
mark only once all audio received before the mark has finished playing, and on a
``clear`` it drops what it holds and echoes every pending mark at once, as Twilio's
documentation says Twilio does. What it plays is recorded on its own clock, so a
benchmark measures the stop latency at the caller's ear, not at the server.

Playback is modelled as a device that takes 20 ms at a time: a frame taken at a tick
plays to its end even if a ``clear`` comes during it, and its mark is echoed at the
next tick. Received audio waits for the next tick. Both make the recording slightly
pessimistic (by up to 20 ms), never optimistic.

One clock for everything: seconds since the WebSocket connected. Recorded sample ``i``
played at ``i / 8000`` on it; message arrival times, echo times, the ``mic(t)``
argument and ``run``'s ``until_s`` are all on it too.

Usage::

    async with TwilioFarEnd("ws://127.0.0.1:8000/twilio", parameters={"token": "s"}) as far:
        recording = await far.run(lambda t: None, until_s=5.0)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import math
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from bargein.audio import last_audible
from bargein.bench.far_end import (
    CannotConnect,
    FarEndOptions,
    ScenarioAborted,
    TargetError,
    settle_heard_text,
)
from bargein.bench.metrics import audible_after_ms
from bargein.bench.microphone import Microphone, microphone_for, reply_stop_metrics
from bargein.bench.speaker import SimulatedSpeaker
from bargein.clock import sleep_until
from bargein.providers.base import FloatAudio
from bargein.scenario import Scenario
from bargein.session import describe_error
from bargein.transports import mulaw
from bargein.transports.twilio import FRAME_SAMPLES, WIRE_RATE, parse_mark

__all__ = [
    "MIC_RATE",
    "UNOBSERVABLE",
    "EchoedMark",
    "FarEndRecording",
    "Mic",
    "Received",
    "TwilioFarEnd",
    "measure_twilio_call",
    "run_twilio_call",
    "run_twilio_scenario",
]

MIC_RATE = 16000
TICK_S = FRAME_SAMPLES / WIRE_RATE

Mic = Callable[[float], FloatAudio | None]
"""``mic(t)``: the caller's audio for the 20 ms starting at ``t``, as float32 at 16 kHz
(320 samples); None for silence."""


@dataclass(frozen=True)
class Received:
    """One message from the server and when it arrived."""

    at: float
    event: str
    payload: bytes = b""
    """The mu-law bytes of a ``media`` message."""
    name: str = ""
    """The name of a ``mark``."""


@dataclass(frozen=True)
class EchoedMark:
    at: float
    name: str
    played: bool
    """False when echoed because a ``clear`` discarded the audio before it."""


@dataclass
class FarEndRecording:
    """What the far end heard, received and echoed."""

    sample_rate: int = WIRE_RATE
    rendered: int = 0
    """Samples of time played so far (sound or silence)."""
    received: list[Received] = field(default_factory=list)
    marks: list[EchoedMark] = field(default_factory=list)
    clears: list[float] = field(default_factory=list)
    close_code: int | None = None
    closed_at: float | None = None
    _audio: FloatAudio = field(
        init=False, repr=False, default_factory=lambda: np.zeros(0, dtype=np.float32)
    )
    _reply: np.ndarray = field(
        init=False, repr=False, default_factory=lambda: np.zeros(0, dtype=np.int32)
    )

    @property
    def audio(self) -> FloatAudio:
        """Everything played: sample ``i`` played at ``i / 8000`` seconds."""
        return self._audio[: self.rendered]

    @property
    def reply_at(self) -> np.ndarray:
        """The reply each played sample belongs to, from the mark after it (0: silence)."""
        return self._reply[: self.rendered]

    def played(self, reply_id: int) -> FloatAudio:
        """The samples of one reply, in the order they were played."""
        selected: FloatAudio = self.audio[self.reply_at == reply_id]
        return selected

    def last_sound_s(self, reply_id: int | None = None, threshold_dbfs: float = -45.0) -> float:
        """When the last audible sample (of ``reply_id``, or of anything) ended; 0 if none."""
        audio = self.audio
        if reply_id is not None:
            audio = np.where(self.reply_at == reply_id, audio, np.float32(0))
        end = last_audible(audio, self.sample_rate, threshold_dbfs)
        return 0.0 if end is None else end

    def output_between(self, t0: float, t1: float, rate: int) -> FloatAudio:
        """What played in ``[t0, t1)`` at ``rate`` (linear interpolation): an echo's source.

        Time not yet played is silence, so a microphone simulating echo can call this
        for the 20 ms it is about to send.
        """
        n = max(0, round((t1 - t0) * rate))
        src = (t0 + np.arange(n) / rate) * self.sample_rate
        out = np.zeros(n, dtype=np.float32)
        valid = (src >= 0) & (src < self.rendered - 1)
        base = np.floor(src[valid]).astype(np.int64)
        frac = (src[valid] - base).astype(np.float32)
        out[valid] = self._audio[base] * (1 - frac) + self._audio[base + 1] * frac
        return out

    def _allocate(self, samples: int) -> None:
        if samples > len(self._audio):
            grow = samples - len(self._audio)
            self._audio = np.concatenate([self._audio, np.zeros(grow, dtype=np.float32)])
            self._reply = np.concatenate([self._reply, np.zeros(grow, dtype=np.int32)])

    def _render(self, at_sample: int, samples: FloatAudio, replies: np.ndarray) -> None:
        self._allocate(at_sample + len(samples))
        self._audio[at_sample : at_sample + len(samples)] = samples
        self._reply[at_sample : at_sample + len(samples)] = replies
        self.rendered = at_sample + len(samples)


@dataclass
class _Queued:
    samples: FloatAudio
    reply_id: int | None = None  # known once the mark after it arrives
    offset: int = 0
    pieces: list[tuple[int, int]] = field(default_factory=list)
    """Where it was recorded before its reply was known: (sample index, length)."""


class TwilioFarEnd:
    """One simulated call to a Media Streams server. Use as ``async with``.

    ``parameters`` become the ``start`` message's ``customParameters`` (the TwiML
    ``<Parameter>`` values: ``token``, ``bench_reply``, ``request_reply``).
    ``send_start=False`` leaves ``start`` to the caller (see :meth:`start`), for tests
    of what a server does before it.
    """

    def __init__(
        self,
        url: str,
        *,
        parameters: Mapping[str, str] | None = None,
        send_start: bool = True,
    ) -> None:
        self.url = url
        self.parameters = dict(parameters or {})
        self.send_start = send_start
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.call_sid = "CA" + uuid.uuid4().hex
        self.account_sid = "AC" + uuid.uuid4().hex
        self.recording = FarEndRecording()
        self._ws: ClientConnection | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._origin = 0.0
        self._sequence = 0
        self._chunk = 0
        self._queue: deque[_Queued] = deque()
        # Positions count received samples; a clear counts its dropped samples as taken.
        self._received = 0
        self._taken = 0  # handed to the "device"
        self._finished = 0  # done playing
        self._pending: deque[tuple[int, str]] = deque()  # (position, mark name)
        self._closed = asyncio.Event()
        self._outbox: deque[dict[str, Any]] = deque()  # mark echoes not yet sent
        self._unlabelled: list[_Queued] = []  # audio received since the last mark
        self._downsampler = mulaw.Downsampler2x()

    # -- connection -------------------------------------------------------------------------

    async def __aenter__(self) -> TwilioFarEnd:
        self._ws = await connect(self.url)
        self._origin = asyncio.get_running_loop().time()
        self._receiver = asyncio.create_task(self._receive())
        await self.send_event({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        if self.send_start:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ws is not None and not self._closed.is_set():
            stop = {"accountSid": self.account_sid, "callSid": self.call_sid}
            with contextlib.suppress(ConnectionClosed):
                await self.send_event({"event": "stop", "streamSid": self.stream_sid, "stop": stop})
            await self._ws.close()
        if self._receiver is not None:
            await asyncio.wait({self._receiver}, timeout=5.0)
            self._receiver.cancel()

    async def start(self, parameters: Mapping[str, str] | None = None) -> None:
        """Send ``start``; ``parameters`` replace the ones given to the constructor."""
        if parameters is not None:
            self.parameters = dict(parameters)
        body = {
            "accountSid": self.account_sid,
            "streamSid": self.stream_sid,
            "callSid": self.call_sid,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": WIRE_RATE, "channels": 1},
            "customParameters": self.parameters,
        }
        await self.send_event({"event": "start", "streamSid": self.stream_sid, "start": body})

    async def send_event(self, event: dict[str, Any]) -> None:
        """Send one message, numbered the way Twilio numbers its own."""
        self._sequence += 1
        await self.send_raw(json.dumps({**event, "sequenceNumber": str(self._sequence)}))

    async def send_raw(self, data: str | bytes) -> None:
        """Send anything at all, well-formed or not."""
        assert self._ws is not None, "use TwilioFarEnd inside 'async with'"
        await self._ws.send(data)

    async def send_media(self, payload: bytes) -> None:
        """Send mu-law bytes as the caller's audio."""
        self._chunk += 1
        media = {
            "track": "inbound",
            "chunk": str(self._chunk),
            "timestamp": str(round(self.now() * 1000)),
            "payload": base64.b64encode(payload).decode("ascii"),
        }
        await self.send_event({"event": "media", "streamSid": self.stream_sid, "media": media})

    def abort(self) -> None:
        """Vanish without a closing handshake, like a dropped network."""
        assert self._ws is not None, "use TwilioFarEnd inside 'async with'"
        self._ws.transport.abort()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def idle(self) -> bool:
        """Nothing received is left to play, and every mark has been echoed."""
        return not self._queue and not self._pending

    async def wait_closed(self, timeout: float) -> bool:
        """Wait for the server to close the socket; False if it has not within ``timeout``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), timeout)
        return self._closed.is_set()

    def now(self) -> float:
        """Seconds since the connection opened: the recording's clock."""
        return asyncio.get_running_loop().time() - self._origin

    # -- the call -------------------------------------------------------------------------

    async def run(
        self,
        mic: Mic,
        until_s: float,
        *,
        stop: Callable[[FarEndRecording], bool] | None = None,
    ) -> FarEndRecording:
        """Talk and listen in real time until ``until_s`` on the recording's clock.

        Ends early when the server closes the socket or ``stop(recording)`` (asked every
        20 ms) returns True. May be called again to go on with the same call.
        """
        first = math.ceil(self.now() / TICK_S - 1e-9)
        tick = first
        self.recording._render(self.recording.rendered, *self._silence(first))
        while tick * TICK_S < until_s:
            await sleep_until(self._origin + tick * TICK_S)
            if self._closed.is_set() or (stop is not None and stop(self.recording)):
                break
            t = tick * TICK_S
            self._finish_playing(t)
            self._play_next_frame(tick)
            await self._drain()
            if tick > first:  # the microphone's last 20 ms, now that they are captured
                with contextlib.suppress(ConnectionClosed):
                    await self._send_mic(mic(t - TICK_S))
            tick += 1
        return self.recording

    def _silence(self, ticks: int) -> tuple[FloatAudio, np.ndarray]:
        n = max(0, ticks * FRAME_SAMPLES - self.recording.rendered)
        return np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.int32)

    async def _send_mic(self, audio16: FloatAudio | None) -> None:
        if audio16 is None:
            audio16 = np.zeros(2 * FRAME_SAMPLES, dtype=np.float32)
        await self.send_media(mulaw.encode(self._downsampler.process(audio16)))

    # -- playback -------------------------------------------------------------------------

    def _finish_playing(self, t: float) -> None:
        """The frame taken at the previous tick has played out: echo the marks it ends."""
        self._finished = self._taken
        while self._pending and self._pending[0][0] <= self._finished:
            self._echo(self._pending.popleft()[1], played=True, at=t)

    def _play_next_frame(self, tick: int) -> None:
        samples = np.zeros(FRAME_SAMPLES, dtype=np.float32)
        replies = np.zeros(FRAME_SAMPLES, dtype=np.int32)
        filled = 0
        while filled < FRAME_SAMPLES and self._queue:
            item = self._queue[0]
            n = min(FRAME_SAMPLES - filled, len(item.samples) - item.offset)
            samples[filled : filled + n] = item.samples[item.offset : item.offset + n]
            if item.reply_id is None:
                item.pieces.append((tick * FRAME_SAMPLES + filled, n))
            replies[filled : filled + n] = item.reply_id or 0
            item.offset += n
            filled += n
            if item.offset == len(item.samples):
                self._queue.popleft()
        self._taken += filled
        self.recording._render(tick * FRAME_SAMPLES, samples, replies)

    def _echo(self, name: str, *, played: bool, at: float) -> None:
        self.recording.marks.append(EchoedMark(at, name, played))
        self._outbox.append({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    async def _drain(self) -> None:
        """Send the echoes decided so far, in order, before anything else goes out."""
        with contextlib.suppress(ConnectionClosed):
            while self._outbox:
                await self.send_event(self._outbox.popleft())

    # -- receiving --------------------------------------------------------------------------

    async def _receive(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                if isinstance(message, str):
                    self._on_message(message)
                    await self._drain()
        except ConnectionClosed:
            pass
        finally:
            self.recording.close_code = self._ws.close_code
            self.recording.closed_at = self.now()
            self._closed.set()

    def _on_message(self, text: str) -> None:
        try:
            event = json.loads(text)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        at = self.now()
        kind = event.get("event")
        if kind == "media":
            body = event.get("media")
            payload = body.get("payload") if isinstance(body, dict) else None
            try:
                raw = base64.b64decode(payload if isinstance(payload, str) else "", validate=True)
            except (binascii.Error, ValueError):
                return
            self.recording.received.append(Received(at, "media", payload=raw))
            if raw:
                item = _Queued(mulaw.decode(raw))
                self._queue.append(item)
                self._unlabelled.append(item)
                self._received += len(raw)
        elif kind == "mark":
            body = event.get("mark")
            name = body.get("name") if isinstance(body, dict) else None
            if isinstance(name, str):
                self.recording.received.append(Received(at, "mark", name=name))
                self._on_mark(name, at)
        elif kind == "clear":
            self.recording.received.append(Received(at, "clear"))
            self.recording.clears.append(at)
            self._queue.clear()
            self._taken = self._received
            while self._pending:
                self._echo(self._pending.popleft()[1], played=False, at=at)

    def _on_mark(self, name: str, at: float) -> None:
        # The audio that came since the previous mark is this mark's reply's, including
        # any of it that already played (a tick may fall between a media and its mark).
        parsed = parse_mark(name)
        reply_id = parsed[0] if parsed is not None else 0
        for item in self._unlabelled:
            item.reply_id = reply_id
            for index, n in item.pieces:
                self.recording._reply[index : index + n] = reply_id
        self._unlabelled.clear()
        if self._received <= self._finished:
            self._echo(name, played=True, at=at)
        else:
            self._pending.append((self._received, name))


# -- the benchmark over a phone line ----------------------------------------------------

AUDIBLE = 10 ** (-45.0 / 20)
"""The first sound of a reply is its first sample above -45 dBFS, as on the other ears."""

UNOBSERVABLE = {
    "recorded_text": "Media Streams carries no transcripts: the conversation is not visible",
    "state_word_errors": "needs recorded_text",
    "decision": "the server's decision is not on the wire; only its clears are",
    "decision_ms": "a pause and a cut look alike (a clear); see first_clear_ms",
    "llm_tokens_after_cancel": "the server's LLM is not visible",
    "user_turn_text": "no transcripts of the caller come back over Media Streams",
    "timeline": "the server's records are not sent over Media Streams",
    "cursor_lag_ms": "the server's playout cursor is not sent over Media Streams",
}
"""What a caller cannot know, and why: each result carries this instead of a guess."""


class _EchoSource(SimulatedSpeaker):
    """Lets the shared :class:`Microphone` take its echo from what the phone played."""

    def __init__(self, recording: FarEndRecording) -> None:
        super().__init__(WIRE_RATE, max_s=0.0)
        self._played = recording

    def output_between(self, t0: float, t1: float, rate: int) -> FloatAudio:
        return self._played.output_between(t0, t1, rate)


@dataclass
class _Watch:
    """What the call has shown so far, kept up to date every 20 ms for the stop rule.

    Without transcripts the only sign of a cut is on the wire: a ``clear`` after which
    no more of reply 1 came (a pause is a clear too, but its audio is sent again on
    resume). A clear only counts while no later reply has started, since the answer
    to an interruption may be cleared in its own turn.
    """

    recording: FarEndRecording
    seen: int = 0
    scanned: int = 0
    last_mark: dict[int, float] = field(default_factory=dict)
    last_mark_name: dict[int, str] = field(default_factory=dict)
    later_reply_at: float | None = None
    cut_at: float | None = None
    first_sound: dict[int, float] = field(default_factory=dict)

    def update(self) -> None:
        rec = self.recording
        for item in rec.received[self.seen :]:
            if item.event == "mark":
                parsed = parse_mark(item.name)
                rid = parsed[0] if parsed is not None else 0
                self.last_mark[rid] = item.at
                self.last_mark_name[rid] = item.name
                if rid > 1 and self.later_reply_at is None:
                    self.later_reply_at = item.at
                if rid == 1:
                    self.cut_at = None  # the reply goes on: that clear was a pause
            elif item.event == "clear" and 1 in self.last_mark and self.later_reply_at is None:
                self.cut_at = item.at
        self.seen = len(rec.received)
        # Rescan a little: played audio is labelled with its reply once its mark arrives.
        start = max(0, self.scanned - 2 * FRAME_SAMPLES)
        audio, replies = rec.audio[start:], rec.reply_at[start:]
        for index in np.flatnonzero((np.abs(audio) > AUDIBLE) & (replies > 0)):
            rid = int(replies[index])
            at = (start + int(index)) / rec.sample_rate
            if at < self.first_sound.get(rid, math.inf):
                self.first_sound[rid] = at
        self.scanned = rec.rendered

    def answer_at(self) -> float | None:
        """When the first later reply (the answer to an interruption) was first heard."""
        later = [at for rid, at in self.first_sound.items() if rid > 1]
        return min(later) if later else None


def _paused_ms(recording: FarEndRecording) -> float:
    """Silence inside reply 1 that a ``clear`` caused: what a pause is on a phone line.

    Gaps where the phone had nothing of reply 1 to play, between its first and last
    played sample, count when a clear arrived just before or during them (an underrun
    of a slow server is not a pause).
    """
    ours = np.flatnonzero(recording.reply_at == 1)
    if len(ours) == 0 or not recording.clears:
        return 0.0
    rate = recording.sample_rate
    gaps = np.flatnonzero(recording.reply_at[ours[0] : ours[-1]] != 1) + ours[0]
    if len(gaps) == 0:
        return 0.0
    breaks = np.flatnonzero(np.diff(gaps) > 1)
    starts = np.concatenate([[gaps[0]], gaps[breaks + 1]])
    ends = np.concatenate([gaps[breaks], [gaps[-1]]]) + 1
    total = 0
    for a, b in zip(starts, ends, strict=True):
        if any(a / rate - 2 * TICK_S <= c <= b / rate for c in recording.clears):
            total += int(b - a)
    return total / rate * 1000


async def run_twilio_call(
    scenario: Scenario, url: str, *, token: str | None, options: FarEndOptions
) -> tuple[FarEndRecording, Microphone, _Watch]:
    """Play one scenario as a phone caller against ``url`` (``ws://.../twilio``), unmeasured.

    The reply is requested at the ``start`` message, so the recording's clock (from
    the connection) is the microphone's timeline too, give or take a few milliseconds.
    Raises :class:`TargetError` for a refused token or a server that never speaks
    (not run with ``--bench``), :class:`CannotConnect` and :class:`ScenarioAborted`.
    """
    parameters = {"bench_reply": scenario.agent_text, "request_reply": "1"}
    if token is not None:
        parameters["token"] = token
    far = TwilioFarEnd(url, parameters=parameters)
    try:
        await asyncio.wait_for(far.__aenter__(), options.open_timeout_s)
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
        raise CannotConnect(f"cannot connect to {url}: {describe_error(exc)}") from exc
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_exit(far)
        recording = far.recording
        mic = microphone_for(scenario, _EchoSource(recording), MIC_RATE)
        watch = _Watch(recording)
        frame = 2 * FRAME_SAMPLES

        def speak(t: float) -> FloatAudio:
            watch.update()
            mic.place(watch.first_sound.get(1))
            behind = round(t * mic.rate) - mic.position
            if behind > 0:  # the first frame starts after time 0: skip to it
                mic.frame(behind)
            return mic.frame(frame)

        def settled(rec: FarEndRecording) -> bool:
            watch.update()
            t = far.now()
            last = mic.last_end()
            answer = watch.answer_at()
            if answer is not None:
                return t >= answer + options.linger_s
            if watch.cut_at is not None:
                return last is not None and t >= last and t - watch.cut_at > options.answer_wait_s
            if 1 not in watch.last_mark:
                if not rec.received and t > options.open_timeout_s:
                    raise TargetError(
                        f"{url} sent no audio within {options.open_timeout_s:g} s of "
                        "request_reply: the server must run with --bench"
                    )
                return False
            quiet = t - watch.last_mark[1] >= options.settle_s and far.idle
            return quiet and last is not None and t >= last + options.settle_s

        await far.run(speak, until_s=options.max_s, stop=settled)
        watch.update()
        if far.closed:
            if recording.close_code == 4401:
                raise TargetError(f"{url} refused the token (give it with --token)")
            raise ScenarioAborted(
                f"the server closed the call mid-scenario at {recording.closed_at or 0:.2f} s: "
                f"code {recording.close_code}"
            )
    return recording, mic, watch


def measure_twilio_call(
    scenario: Scenario, target: str, recording: FarEndRecording, mic: Microphone, watch: _Watch
) -> dict[str, Any]:
    """The scenario's results entry at the caller's ear; unknowables are None (see
    :data:`UNOBSERVABLE`, which the entry carries as ``unobservable``)."""
    onset = mic.onset()
    interrupted = watch.cut_at is not None
    expect_interrupt = scenario.expect == "interrupt"
    ours = np.where(recording.reply_at == 1, recording.audio, np.float32(0))
    stop = reply_stop_metrics(
        ours,
        recording.sample_rate,
        onset,
        expect_interrupt=expect_interrupt,
        interrupted=interrupted,
        controls=recording.clears,
    )
    played = len(recording.played(1))
    last_name = watch.last_mark_name.get(1)
    # Complete: the reply's last mark was echoed as played, not dropped by a clear.
    complete = not interrupted and any(
        m.name == last_name and m.played for m in recording.marks if last_name is not None
    )
    answer = watch.answer_at() if interrupted else None
    speech_end = mic.speech_end()
    response_ms = None
    if answer is not None and speech_end is not None:
        response_ms = (answer - speech_end) * 1000
    first_clear = next((c for c in recording.clears if onset is not None and c >= onset), None)
    first_clear_ms = None
    if first_clear is not None and onset is not None:
        first_clear_ms = (first_clear - onset) * 1000
    result: dict[str, Any] = {
        "name": scenario.name,
        "kind": scenario.kind,
        "expect": scenario.expect,
        "onset_s": onset,
        "stop_latency_ms": stop.stop_latency_ms,
        "missed": stop.missed,
        "interrupted": interrupted,
        "false_interruption": scenario.expect == "continue" and interrupted,
        "cut_early": stop.cut_early,
        "paused_ms": _paused_ms(recording) if not expect_interrupt else None,
        "heard_text": "",
        "recorded_text": None,
        "state_word_errors": None,
        "llm_tokens_after_cancel": None,
        "decision": None,
        "decision_reason": None,
        "decision_ms": None,
        "first_clear_ms": first_clear_ms,
        # A pause on a phone line is a clear, and so is the flush.
        "after_tier1_ms": audible_after_ms(
            ours,
            recording.sample_rate,
            [c for c in recording.clears if c >= onset] if interrupted and onset else None,
        ),
        "response_ms": response_ms,
        "llm_calls": None,
        "preemptive_calls": None,
        "preemptive_discarded": None,
        "user_turn_text": None,
        "user_turn_words": None,
        "user_turn_word_errors": None,
        "timeline": [],
        "timeline_clock": None,
        "errors": [],
        "target": target,
        "heard_text_method": "estimate",
        "agent_played_s": played / recording.sample_rate,
        "agent_full_s": played / recording.sample_rate if complete else None,
        "cursor_lag_ms": None,
        "unobservable": dict(UNOBSERVABLE),
    }
    settle_heard_text([result], {scenario.name: scenario.agent_text})
    return result


async def run_twilio_scenario(
    scenario: Scenario,
    target: str,
    *,
    token: str | None = None,
    options: FarEndOptions | None = None,
) -> dict[str, Any]:
    """One scenario's results entry for a ``twilio+ws(s)://`` target, measured at the
    caller's ear (the far end's dispatch calls this for ``bargein bench --target``)."""
    url = target.split("+", 1)[1] if target.lower().startswith("twilio+") else target
    recording, mic, watch = await run_twilio_call(
        scenario, url, token=token, options=options or FarEndOptions()
    )
    return measure_twilio_call(scenario, target, recording, mic, watch)
