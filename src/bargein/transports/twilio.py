"""Phone calls through Twilio Media Streams (bidirectional ``<Connect><Stream>``).

Twilio opens a WebSocket to us per call and speaks JSON text messages: ``connected``,
``start`` (the stream's ids and the TwiML ``<Parameter>`` values), ``media`` (20 ms of
the caller's voice as base64 mu-law at 8 kHz), ``mark``, ``dtmf`` and ``stop``. We send
``media`` (the agent's voice, same format), ``mark`` and ``clear``. docs/twilio.md has
the TwiML and the setup.

Playout is the truth, and on a phone line the only truth is the ``mark`` echo: Twilio
sends a mark back once the audio before it has been played to the caller. So every
20 ms frame we send is followed by a mark naming its reply and the reply's cumulative
TTS-rate sample count at the frame's end (``r3:44100:17``: reply 3, 44100 samples, the
call's 17th mark), and an echo becomes ``session.playout(3, 44100)``.

A ``clear`` makes Twilio drop the audio it holds and send back every mark still pending
at once (Twilio's Media Streams documentation, "Send a clear message"). Those echoes
say "discarded", not "played", so once we have sent a clear, the echoes of the marks
sent before it are dropped: the cursor stays at the last mark confirmed before the clear.
That under-reports what the caller heard by the audio played while the clear was in
flight, which is the safe side for truncation.

Twilio has no pause, so :meth:`TwilioSink.pause` is a clear that keeps the audio
from the sample after the last confirmed mark and sends it again on resume: nothing
is lost, and what is repeated is at most what played while the clear was on its way
(one frame plus a network trip). Ducking rewinds the same way so the caller hears
the new level within a round trip rather than after the audio already sent ahead.

Audio is sent ahead of real time by at most ``lead_s`` (Twilio buffers it), which
rides out network jitter and bounds what a clear has to discard.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import re
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from bargein import audio
from bargein.providers.base import FloatAudio
from bargein.transports import mulaw

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

    from bargein.providers.base import LanguageModel
    from bargein.session import Session
    from bargein.transports.stack import AgentStack

__all__ = [
    "DEFAULT_LEAD_S",
    "FRAME_SAMPLES",
    "WIRE_RATE",
    "StreamStart",
    "TwilioCall",
    "TwilioSink",
    "clear_message",
    "mark_message",
    "media_message",
    "parse_mark",
    "twilio_endpoint",
]

log = logging.getLogger("bargein.twilio")

WIRE_RATE = 8000
"""Media Streams audio is always mu-law, 8 kHz, mono."""
FRAME_SAMPLES = 160
"""20 ms at 8 kHz: the frame Twilio sends and the granularity of our marks."""
DEFAULT_LEAD_S = 0.5
"""How far ahead of real time we keep Twilio's buffer filled."""

CLOSE_BAD_TOKEN = 4401
CLOSE_PROTOCOL = 4400
CLOSE_NO_START = 4408
CLOSE_INTERNAL = 1011

START_TIMEOUT_S = 10.0
"""Twilio sends ``start`` right after ``connected``; a socket that never does is closed."""
MAX_BEFORE_START = 100
MAX_PAYLOAD_BYTES = 2 * WIRE_RATE
"""Two seconds of mu-law; Twilio sends 20 ms, so anything bigger is not Twilio."""
_LOGGED_PER_KIND = 3
_CLEARED_MEMORY = 10_000

_MARK = re.compile(r"r(\d+):(\d+)(?::\d+)?")


# -- wire messages ---------------------------------------------------------------------


def media_message(stream_sid: str, payload: bytes) -> str:
    """Agent audio for Twilio to play: ``payload`` is mu-law at 8 kHz."""
    body = {"payload": base64.b64encode(payload).decode("ascii")}
    return json.dumps({"event": "media", "streamSid": stream_sid, "media": body})


def mark_message(stream_sid: str, name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str) -> str:
    return json.dumps({"event": "clear", "streamSid": stream_sid})


def parse_mark(name: str) -> tuple[int, int] | None:
    """A mark name's reply id and TTS-rate sample count; None if it is not one of ours."""
    match = _MARK.fullmatch(name)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


# -- the sink --------------------------------------------------------------------------


@dataclass
class _Frame:
    reply_id: int
    tts_end: int
    """The reply's cumulative TTS-rate sample count at the end of this frame."""
    samples: FloatAudio
    """At 8 kHz, before any gain: a rewind after a duck resends at the new gain."""
    mark: str = ""


class TwilioSink:
    """The session's :class:`~bargein.session.AudioSink` for one call.

    The sink's methods are synchronous, as the protocol requires; they only change
    state. :meth:`pump` is the one task that writes to the socket, so a ``clear`` can
    never overtake or be overtaken by the media around it.
    """

    def __init__(self, sample_rate: int, stream_sid: str, *, lead_s: float = DEFAULT_LEAD_S):
        if lead_s <= 0:
            raise ValueError(f"lead_s must be positive, got {lead_s}")
        self.sample_rate = sample_rate
        self.stream_sid = stream_sid
        self.lead_s = lead_s
        self.confirmed: dict[int, int] = {}
        """Per reply, the TTS-rate samples Twilio has confirmed played."""
        self.media_sent = 0
        self.clears_sent = 0
        self._written: dict[int, int] = {}
        self._queue: deque[_Frame] = deque()  # not sent yet
        self._inflight: deque[_Frame] = deque()  # sent, mark not echoed yet
        self._control: deque[str] = deque()  # clears, sent before any further media
        self._cleared: dict[str, None] = {}  # marks whose echo means "discarded"
        self._paused = False
        self._gain = 1.0
        self._play_end = float("-inf")  # when Twilio will have played all we sent
        self._marks = 0
        self._wake = asyncio.Event()

    # -- the AudioSink protocol ---------------------------------------------------------

    def write(self, reply_id: int, audio_in: FloatAudio) -> None:
        start = self._written.setdefault(reply_id, 0)
        if len(audio_in) == 0:
            return
        wire = audio.resample(audio_in, self.sample_rate, WIRE_RATE)
        end = start + len(audio_in)
        self._written[reply_id] = end
        # Marks count TTS samples; inside a chunk the two rates map linearly, and the
        # chunk's last frame lands exactly on its end, so a finished reply reports
        # exactly its length and the session sees it complete.
        for first in range(0, len(wire), FRAME_SAMPLES):
            last = min(first + FRAME_SAMPLES, len(wire))
            tts_end = start + round(last * len(audio_in) / len(wire))
            self._queue.append(_Frame(reply_id, tts_end, wire[first:last]))
        self._wake.set()

    def pause(self) -> None:
        self._paused = True
        self._rewind()

    def resume(self) -> None:
        self._paused = False
        if self._gain != 1.0:
            self._gain = 1.0
            self._rewind()
        self._wake.set()

    def duck(self, gain: float) -> None:
        if gain != self._gain:
            self._gain = gain
            self._rewind()

    def clear(self) -> None:
        self._forget_inflight()
        self._queue.clear()
        self._paused = False
        self._gain = 1.0

    # -- marks ----------------------------------------------------------------------------

    def on_mark(self, name: str) -> list[tuple[int, int]] | None:
        """Handle an echoed mark: the playout reports it confirms, or None if unknown.

        Twilio plays in order, so a mark confirms every frame sent before it too; should
        an echo ever be lost, the next one still moves every reply's cursor.
        """
        if name in self._cleared:
            del self._cleared[name]
            return []
        index = next((i for i, f in enumerate(self._inflight) if f.mark == name), None)
        if index is None:
            return None
        reports: dict[int, int] = {}
        for _ in range(index + 1):
            frame = self._inflight.popleft()
            if frame.tts_end > self.confirmed.get(frame.reply_id, 0):
                self.confirmed[frame.reply_id] = frame.tts_end
                reports[frame.reply_id] = frame.tts_end
        return list(reports.items())

    # -- sending --------------------------------------------------------------------------

    async def pump(self, send: Callable[[str], Awaitable[None]]) -> None:
        """Send control messages at once and audio up to ``lead_s`` ahead; runs until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()  # before looking, so a change made while we wait wakes us
            if self._control:
                self.clears_sent += 1
                await send(self._control.popleft())
                continue
            if self._paused or not self._queue:
                await self._wake.wait()
                continue
            ahead = self._play_end - loop.time()
            if ahead >= self.lead_s:
                # A timer sets the same event a state change does: one plain wait, so a
                # pause wakes this task on the next loop turn (wait_for would add a task
                # and a turn, behind whatever else the loop has queued meanwhile).
                timer = loop.call_later(ahead - self.lead_s, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    timer.cancel()
                continue
            frame = self._queue.popleft()
            self._marks += 1
            name = f"r{frame.reply_id}:{frame.tts_end}:{self._marks}"
            frame.mark = name
            # In flight before the first await: a clear arriving mid-send covers it.
            self._inflight.append(frame)
            self._play_end = max(self._play_end, loop.time()) + len(frame.samples) / WIRE_RATE
            payload = mulaw.encode(frame.samples * np.float32(self._gain))
            self.media_sent += 1
            await send(media_message(self.stream_sid, payload))
            await send(mark_message(self.stream_sid, name))

    def _rewind(self) -> None:
        """Clear Twilio's buffer and queue what it held again, from the last confirmed mark."""
        inflight = list(self._inflight)
        self._forget_inflight()
        self._queue.extendleft(reversed(inflight))

    def _forget_inflight(self) -> None:
        if not self._inflight:
            return  # everything sent has been played: Twilio holds nothing to clear
        for frame in self._inflight:
            self._cleared[frame.mark] = None
        while len(self._cleared) > _CLEARED_MEMORY:  # a far end that never echoes them
            del self._cleared[next(iter(self._cleared))]
        self._inflight.clear()
        self._control.append(clear_message(self.stream_sid))
        self._play_end = float("-inf")
        self._wake.set()


# -- one call --------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamStart:
    """What Twilio's ``start`` message told us about the call."""

    stream_sid: str
    call_sid: str
    account_sid: str
    parameters: Mapping[str, str]
    """The TwiML ``<Parameter>`` values (Twilio's ``customParameters``)."""


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class TwilioCall:
    """One call: its sink, its session, and what went wrong with its input."""

    websocket: WebSocket
    stack: AgentStack
    start: StreamStart
    bench: bool = False
    lead_s: float = DEFAULT_LEAD_S
    problems: Counter[str] = field(default_factory=Counter)
    """Messages ignored, by kind (``json``, ``base64``, ``event``, ``mark``...)."""
    ended_by: str = ""
    """``stop``, ``disconnect``, or ``error: ...``."""
    dtmf: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sink = TwilioSink(
            self.stack.tts.sample_rate, self.start.stream_sid, lead_s=self.lead_s
        )
        llm, self._request_reply = self._bench_hook()
        self.session: Session = self.stack.session(self.sink, llm=llm, narrowband=True)
        self._upsampler = mulaw.Upsampler2x()

    def _bench_hook(self) -> tuple[LanguageModel | None, bool]:
        params = self.start.parameters
        text = params.get("bench_reply")
        request = params.get("request_reply", "").lower() in ("1", "true", "yes")
        if not self.bench:
            if text is not None or request:
                log.warning(
                    "call %s: bench parameters ignored (the server was not started for bench)",
                    self.start.call_sid,
                )
            return None, False
        if text is None:
            return None, request
        from bargein.bench.runner import FOLLOW_UP
        from bargein.providers.scripted import ScriptedLLM

        return ScriptedLLM([text, FOLLOW_UP]), request

    async def run(self) -> None:
        """Serve the call until Twilio stops it, the socket goes, or something breaks."""
        log.info("call %s: stream %s started", self.start.call_sid, self.start.stream_sid)
        async with self.session:
            if self._request_reply:
                self.session.request_reply()
            receiver = asyncio.create_task(self._receive())
            pump = asyncio.create_task(self.sink.pump(self.websocket.send_text))
            try:
                done, _ = await asyncio.wait({receiver, pump}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (receiver, pump):
                    task.cancel()
                await asyncio.gather(receiver, pump, return_exceptions=True)
            for task in done:
                if not task.cancelled() and (exc := task.exception()) is not None:
                    self._end_with(exc)
        log.info("call %s: ended (%s)", self.start.call_sid, self.ended_by)

    def _end_with(self, exc: BaseException) -> None:
        if self.ended_by:
            return
        if _is_disconnect(exc):
            self.ended_by = "disconnect"
        else:
            self.ended_by = f"error: {type(exc).__name__}: {exc}"
            log.error("call %s: %s", self.start.call_sid, self.ended_by, exc_info=exc)

    async def _receive(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                self.ended_by = "disconnect"
                return
            text = message.get("text")
            if text is None:
                self._problem("binary", "a binary message (Media Streams sends only text)")
                continue
            event = self._parse(text)
            if event is None:
                continue
            kind = event.get("event")
            if kind == "stop":
                self.ended_by = "stop"
                return
            self._handle(kind, event)

    def _parse(self, text: str) -> dict[str, Any] | None:
        try:
            event = json.loads(text)
        except ValueError:
            self._problem("json", f"malformed JSON: {text[:80]!r}")
            return None
        if not isinstance(event, dict):
            self._problem("json", f"not a JSON object: {text[:80]!r}")
            return None
        return event

    def _handle(self, kind: object, event: dict[str, Any]) -> None:
        match kind:
            case "media":
                self._on_media(event.get("media"))
            case "mark":
                self._on_mark(event.get("mark"))
            case "dtmf":
                body = event.get("dtmf")
                digit = body.get("digit") if isinstance(body, dict) else None
                if isinstance(digit, str):
                    self.dtmf.append(digit)
                    log.info("call %s: dtmf %s", self.start.call_sid, digit)
            case "connected" | "start":
                self._problem("repeat", f"a second {kind!r} message")
            case _:
                self._problem("event", f"unknown event {kind!r}")

    def _on_media(self, body: object) -> None:
        payload = body.get("payload") if isinstance(body, dict) else None
        if not isinstance(payload, str):
            self._problem("media", "a media message without a string payload")
            return
        if isinstance(body, dict) and body.get("track", "inbound") != "inbound":
            self._problem("media", f"media on track {body.get('track')!r}")
            return
        if len(payload) > MAX_PAYLOAD_BYTES * 4 // 3 + 4:
            self._problem("media", f"a payload of {len(payload)} characters")
            return
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            self._problem("base64", "a media payload that is not base64")
            return
        if raw:
            self.session.push_audio(self._upsampler.process(mulaw.decode(raw)))

    def _on_mark(self, body: object) -> None:
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str):
            self._problem("mark", "a mark message without a name")
            return
        reports = self.sink.on_mark(name)
        if reports is None:
            self._problem("mark", f"an echo of mark {name[:40]!r}, which we never sent")
            return
        for reply_id, played in reports:
            self.session.playout(reply_id, played)

    def _problem(self, kind: str, detail: str) -> None:
        """Count a message we ignore; log the first few of each kind, not a flood."""
        self.problems[kind] += 1
        count = self.problems[kind]
        if count <= _LOGGED_PER_KIND:
            log.warning("call %s: ignored %s", self.start.call_sid, detail)
        elif count == _LOGGED_PER_KIND + 1:
            log.warning("call %s: ignoring more %r problems quietly", self.start.call_sid, kind)


def _is_disconnect(exc: BaseException) -> bool:
    """Whether ``exc`` is the socket going away (uvicorn and Starlette raise several kinds)."""
    from starlette.websockets import WebSocketDisconnect

    return isinstance(exc, WebSocketDisconnect | OSError) or type(exc).__name__ in (
        "ClientDisconnected",
        "ConnectionClosed",
        "ConnectionClosedError",
        "ConnectionClosedOK",
    )


# -- the endpoint ------------------------------------------------------------------------


async def _await_start(websocket: WebSocket) -> StreamStart | None:
    """Read up to ``start``; None if the socket went away first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    ignored = 0
    for _ in range(MAX_BEFORE_START):
        try:
            message = await asyncio.wait_for(websocket.receive(), deadline - loop.time())
        except TimeoutError:
            raise _Refused(CLOSE_NO_START, "no start message") from None
        if message["type"] == "websocket.disconnect":
            return None
        try:
            event = json.loads(message.get("text") or "")
        except ValueError:
            event = None
        kind = event.get("event") if isinstance(event, dict) else None
        if kind == "start":
            assert isinstance(event, dict)
            return _parse_start(event)
        if kind != "connected":
            ignored += 1
            if ignored <= _LOGGED_PER_KIND:
                log.warning("ignored a %s message before start", kind or "malformed")
    raise _Refused(CLOSE_PROTOCOL, "no start message")


def _parse_start(event: dict[str, Any]) -> StreamStart:
    body = event.get("start")
    if not isinstance(body, dict):
        raise _Refused(CLOSE_PROTOCOL, "start without a start object")
    stream_sid = body.get("streamSid") or event.get("streamSid")
    if not isinstance(stream_sid, str) or not stream_sid:
        raise _Refused(CLOSE_PROTOCOL, "start without a streamSid")
    media_format = body.get("mediaFormat")
    if isinstance(media_format, dict):
        expected = {"encoding": "audio/x-mulaw", "sampleRate": WIRE_RATE, "channels": 1}
        found = {k: media_format.get(k, v) for k, v in expected.items()}
        if found != expected:
            raise _Refused(CLOSE_PROTOCOL, f"unsupported media format {media_format}")
    raw_params = body.get("customParameters")
    params = {str(k): str(v) for k, v in raw_params.items()} if isinstance(raw_params, dict) else {}
    return StreamStart(
        stream_sid=stream_sid,
        call_sid=str(body.get("callSid", "")),
        account_sid=str(body.get("accountSid", "")),
        parameters=params,
    )


async def twilio_endpoint(
    websocket: WebSocket,
    stack: AgentStack,
    *,
    token: str | None,
    bench: bool,
    lead_s: float = DEFAULT_LEAD_S,
    on_call: Callable[[TwilioCall], None] | None = None,
) -> None:
    """Serve one Media Streams WebSocket: one call, one session.

    ``token``: when set, the ``start`` message must carry it as the custom parameter
    ``token`` (Twilio cannot send our headers); otherwise the socket is closed with
    4401 before any audio flows. ``bench`` allows the ``bench_reply`` and
    ``request_reply`` parameters. ``lead_s`` is how far ahead of real time the agent's
    audio is sent. ``on_call`` sees each call once it has started (tests, monitoring).

    Nothing a caller sends can raise out of here: bad input is logged and ignored, and
    a failure inside the call ends that call only.
    """
    try:
        await websocket.accept()
    except Exception as exc:  # gone before the handshake finished
        log.info("twilio stream lost before it was accepted: %s", exc)
        return
    try:
        start = await _await_start(websocket)
        if start is None:
            return
        given = start.parameters.get("token", "")
        if token is not None and not hmac.compare_digest(given.encode(), token.encode()):
            raise _Refused(CLOSE_BAD_TOKEN, "bad or missing token")
    except _Refused as refused:
        log.warning("twilio stream refused: %s", refused.reason)
        await _close(websocket, refused.code, refused.reason)
        return
    try:
        call = TwilioCall(websocket, stack, start, bench=bench, lead_s=lead_s)
    except Exception:
        log.exception("call %s: could not start a session", start.call_sid)
        await _close(websocket, CLOSE_INTERNAL, "could not start a session")
        return
    if on_call is not None:
        on_call(call)
    try:
        await call.run()
    except Exception as exc:  # a failure in one call must not reach the server
        call._end_with(exc)
    if call.ended_by != "disconnect":
        await _close(websocket, CLOSE_INTERNAL if call.ended_by.startswith("error") else 1000)


async def _close(websocket: WebSocket, code: int, reason: str = "") -> None:
    with contextlib.suppress(Exception):  # the far end may already be gone
        await websocket.close(code, reason)
