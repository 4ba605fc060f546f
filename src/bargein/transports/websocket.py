"""The WebSocket transport: one socket is one session, spoken as in docs/protocol.md.

A connection runs four tasks and ends them all as soon as one ends:

- the *reader* feeds microphone frames and playout reports into the session and answers
  malformed messages with an ``error`` (a mistake costs the message, never the session);
- the *sender* is the socket's only writer: it drains the :class:`Outbox` in order, so
  display messages, output controls and audio reach the client in the order they
  happened;
- the *observer* looks at the session every 50 ms and turns what changed into display
  messages (:class:`SessionObserver`); the session knows nothing about the socket;
- the *watchdog* closes a client that has stopped reading (1008), because otherwise
  its audio would pile up in the server's memory for as long as the socket stays open.

Why an outbox rather than sending from the sink: the session calls its sink
synchronously on the event loop and must never wait for the network. The sink only
enqueues, and ``clear`` can then drop audio that is queued but not yet sent at once, so
a barge-in does not have to wait for seconds of stale speech to cross the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, MutableSet, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from bargein.policy import InterruptionRecord, PolicyError
from bargein.providers.base import ChatMessage, FloatAudio, LanguageModel, ToolCall, ToolSpec
from bargein.providers.scripted import ScriptedLLM
from bargein.session import Session, describe_error
from bargein.transports.stack import AgentStack

__all__ = [
    "BENCH_FOLLOW_UP",
    "CLOSE_BAD_HELLO",
    "CLOSE_BAD_TOKEN",
    "CLOSE_SERVER_ERROR",
    "CLOSE_SLOW_CLIENT",
    "INPUT_FRAME",
    "INPUT_RATE",
    "Outbox",
    "RemoteSink",
    "SessionObserver",
    "SwitchableLLM",
    "decode_audio",
    "encode_audio",
    "serve_websocket",
]

log = logging.getLogger("bargein.websocket")

INPUT_RATE = 16000
INPUT_FRAME = 320
"""Samples per microphone message: 20 ms, the packet size of WebRTC and telephony."""
FRAME_BYTES = INPUT_FRAME * 2

BENCH_FOLLOW_UP = "Of course. Let me help you with that right away."
"""What a benchmarked agent says after the scenario's reply (the local bench says the same)."""

CLOSE_BAD_HELLO = 4400
CLOSE_BAD_TOKEN = 4401
CLOSE_SLOW_CLIENT = 1008
CLOSE_SERVER_ERROR = 1011

HELLO_TIMEOUT_S = 10.0
POLL_S = 0.05
STREAM_EVERY_S = 0.2
"""How often a streaming reply's text is sent: enough to read along, not a message a token."""
AUDIO_CHUNK_S = 0.25
"""Agent audio goes out in pieces this long, so a clear can drop what is not yet sent."""
MAX_BACKLOG_S = 5.0
STALL_S = 1.0
LEAD_S = 1.0
"""Audio sent but not yet played, per reply, once the client reports its cursor. More
would only sit in socket buffers, where a pause or clear queues behind it."""
CLOSE_TIMEOUT_S = 5.0

_HEADER = struct.Struct("<I")


# ---------------------------------------------------------------------------------------
# Audio on the wire
# ---------------------------------------------------------------------------------------


def encode_audio(reply_id: int, audio: FloatAudio) -> bytes:
    """One agent-audio message: the reply id, then 16-bit little-endian PCM."""
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    return _HEADER.pack(reply_id) + pcm.tobytes()


def decode_audio(message: bytes) -> tuple[int, np.ndarray[Any, np.dtype[np.int16]]]:
    """The reply id and samples of an agent-audio message (for clients written in Python)."""
    if len(message) < _HEADER.size or (len(message) - _HEADER.size) % 2:
        raise ValueError(f"an agent-audio message of {len(message)} bytes is malformed")
    (reply_id,) = _HEADER.unpack_from(message)
    return reply_id, np.frombuffer(message, dtype="<i2", offset=_HEADER.size).astype(np.int16)


# ---------------------------------------------------------------------------------------
# Outgoing messages
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Audio:
    reply_id: int
    payload: bytes
    samples: int


class SlowClient(Exception):
    """The client stopped reading while its audio piled up."""


class Outbox:
    """Messages waiting for the socket, in order, with the audio among them measured.

    Audio is paced by the client's own cursor: once a reply's playout has been reported,
    at most ``lead_s`` of it is in flight (sent, not yet played), and the rest waits
    here, where ``clear`` drops it for free. Text messages (controls, display) never
    wait behind held audio: a ``pause`` reaches the client in one round trip whatever
    is queued.

    A client is *stalled* when more than ``max_backlog_s`` of audio waits here, the
    pacing would let it go, and the client has neither taken a message nor reported
    playing anything for ``stall_s``. Both
    conditions matter: a reply's audio arrives in bursts far longer than five seconds
    that a reading client takes in milliseconds, and a slow link that keeps taking
    messages is not a client that stopped reading.
    """

    def __init__(
        self,
        sample_rate: int,
        *,
        max_backlog_s: float = MAX_BACKLOG_S,
        stall_s: float = STALL_S,
        lead_s: float | None = LEAD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sample_rate = sample_rate
        self.max_backlog_s = max_backlog_s
        self.stall_s = stall_s
        self.lead = None if lead_s is None else round(lead_s * sample_rate)
        self._clock = clock
        self._items: deque[_Audio | str] = deque()
        self._audio_samples = 0
        self._in_flight = False
        self._busy_since = clock()
        self._wake = asyncio.Event()
        self._sent: dict[int, int] = {}
        self._played: dict[int, int] = {}

    @property
    def backlog_s(self) -> float:
        """Seconds of audio queued and not yet handed to the socket."""
        return self._audio_samples / self.sample_rate

    def put_json(self, message: dict[str, object]) -> None:
        self._put(json.dumps(message))

    def put_audio(self, reply_id: int, audio: FloatAudio) -> None:
        self._put(_Audio(reply_id, encode_audio(reply_id, audio), len(audio)))

    def drop_audio(self) -> None:
        """Forget every queued audio message; text messages keep their place."""
        self._items = deque(item for item in self._items if isinstance(item, str))
        self._audio_samples = 0

    def played(self, reply_id: int, samples: int) -> None:
        """The client's cursor: it has played ``samples`` of ``reply_id``."""
        if samples > self._played.get(reply_id, -1):
            self._played[reply_id] = samples
            self._busy_since = self._clock()  # it is reading what it was sent
            self._wake.set()

    def stalled(self) -> bool:
        """Too much audio waits and the socket has taken nothing for a while, although
        the cursor allows it: audio held by the pacing is the client listening (or
        paused while the agent decides), not a client that stopped reading."""
        waited = self._clock() - self._busy_since
        paced = bool(self._items) and self._next() is None
        return self.backlog_s > self.max_backlog_s and waited > self.stall_s and not paced

    async def get(self) -> _Audio | str:
        """The next message to send; call :meth:`sent` once the socket has taken it."""
        while (index := self._next()) is None:
            self._wake.clear()
            await self._wake.wait()
        item = self._items[index]
        del self._items[index]
        if isinstance(item, _Audio):
            self._audio_samples -= item.samples
            self._sent[item.reply_id] = self._sent.get(item.reply_id, 0) + item.samples
        self._in_flight = True
        return item

    def sent(self) -> None:
        self._in_flight = False
        self._busy_since = self._clock()

    def _next(self) -> int | None:
        """The first message that may go now: in order, except past held audio."""
        audio_held = False
        for index, item in enumerate(self._items):
            if isinstance(item, str):
                return index
            if not audio_held:
                if self._may_send(item):
                    return index
                audio_held = True  # and so is every later piece of audio
        return None

    def _may_send(self, item: _Audio) -> bool:
        played = self._played.get(item.reply_id)
        if self.lead is None or played is None:
            return True  # no cursor yet: nothing to pace by
        return self._sent.get(item.reply_id, 0) - played < self.lead

    def _put(self, item: _Audio | str) -> None:
        if not self._items and not self._in_flight:
            self._busy_since = self._clock()  # idle until now: the wait starts here
        self._items.append(item)
        if isinstance(item, _Audio):
            self._audio_samples += item.samples
        self._wake.set()


class RemoteSink:
    """The session's :class:`~bargein.session.AudioSink` on the far side of a socket.

    Pause, resume, duck and clear are messages the client carries out on its own
    player; the playback cursor comes back as ``playout`` messages.
    """

    def __init__(self, sample_rate: int, outbox: Outbox) -> None:
        self.sample_rate = sample_rate
        self.outbox = outbox
        self._chunk = max(1, round(AUDIO_CHUNK_S * sample_rate))

    def write(self, reply_id: int, audio: FloatAudio) -> None:
        for start in range(0, len(audio), self._chunk):
            self.outbox.put_audio(reply_id, audio[start : start + self._chunk])

    def pause(self) -> None:
        self.outbox.put_json({"type": "pause"})

    def resume(self) -> None:
        self.outbox.put_json({"type": "resume"})

    def duck(self, gain: float) -> None:
        self.outbox.put_json({"type": "duck", "gain": gain})

    def clear(self) -> None:
        self.outbox.drop_audio()
        self.outbox.put_json({"type": "clear"})


# ---------------------------------------------------------------------------------------
# The benchmark hook's LLM
# ---------------------------------------------------------------------------------------


class SwitchableLLM:
    """The session's LLM, which the benchmark hook can swap for a script mid-session.

    The session keeps the LLM it was built with; this indirection lets ``bench_reply``
    change what the next reply says without reaching into the session.
    """

    def __init__(self, llm: LanguageModel) -> None:
        self.current = llm

    def script(self, text: str) -> None:
        self.current = ScriptedLLM([text, BENCH_FOLLOW_UP])

    def stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[str | ToolCall]:
        return self.current.stream(messages, tools)


# ---------------------------------------------------------------------------------------
# Display messages
# ---------------------------------------------------------------------------------------


class SessionObserver:
    """Turns what changed in a session since the last look into display messages.

    Polling keeps the session ignorant of its transport: it already exposes everything a
    display needs (the floor, the conversation, each reply's text, the timeline). A
    state that lasts less than one poll may go unseen, which a display can afford.
    """

    def __init__(self, session: Session, *, origin: float) -> None:
        self.session = session
        self.origin = origin
        """Session time zero: record times are sent relative to it."""
        self._floor: str | None = None
        self._user_turns: list[str] = []
        self._streamed: dict[int, tuple[str, float]] = {}
        self._words_sent: dict[int, int] = {}
        self._finished: set[int] = set()
        self._records_sent: set[int] = set()
        self._errors_sent = 0

    def poll(self, now: float) -> list[dict[str, object]]:
        return [
            *self._floor_changes(),
            *self._user_changes(),
            *self._new_words(),  # before a final agent message, which ends the reply
            *self._agent_changes(now),
            *self._new_records(),
            *self._new_errors(),
        ]

    def _floor_changes(self) -> list[dict[str, object]]:
        floor = self.session.policy.state.value
        if floor == self._floor:
            return []
        self._floor = floor
        return [{"type": "state", "floor": floor}]

    def _user_changes(self) -> list[dict[str, object]]:
        """New user turns, and turns whose text changed (merged words, a transcript)."""
        out: list[dict[str, object]] = []
        users = [m.content for m in self.session.conversation.messages if m.role == "user"]
        for turn, text in enumerate(users):
            if turn < len(self._user_turns) and self._user_turns[turn] == text:
                continue
            if turn < len(self._user_turns):
                self._user_turns[turn] = text
            else:
                self._user_turns.append(text)
            if text:
                out.append({"type": "user", "text": text, "turn": turn})
        return out

    def _new_words(self) -> list[dict[str, object]]:
        """Where each word lies in its reply's audio, so a client can tell what it played."""
        out: list[dict[str, object]] = []
        for reply_id, reply in self.session.replies.items():
            if reply_id in self._finished or not reply.released.is_set():
                continue
            sent = self._words_sent.get(reply_id, 0)
            words = reply.tracker.words[sent:]
            if words:
                self._words_sent[reply_id] = sent + len(words)
                placed = [[w.word, w.start, w.end] for w in words]
                out.append({"type": "words", "reply": reply_id, "words": placed})
        return out

    def _agent_changes(self, now: float) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for reply_id, reply in self.session.replies.items():
            # A preemptive reply nobody has heard yet may still be discarded: not shown.
            if reply_id in self._finished or not reply.released.is_set():
                continue
            recorded = self.session.recorded.get(reply_id)
            if recorded is not None:
                self._finished.add(reply_id)
                interrupted = reply.cancelled_at is not None
                out.append(_agent(reply_id, recorded, final=True, interrupted=interrupted))
                continue
            text = reply.text.strip()
            last_text, last_at = self._streamed.get(reply_id, ("", float("-inf")))
            if text and text != last_text and now - last_at >= STREAM_EVERY_S:
                self._streamed[reply_id] = (text, now)
                out.append(_agent(reply_id, text, final=False))
        return out

    def _new_records(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for index, record in enumerate(self.session.timeline):
            if index not in self._records_sent and self._complete(record):
                self._records_sent.add(index)
                out.append({"type": "interruption", "record": self._rebased(record)})
        return out

    def _complete(self, record: InterruptionRecord) -> bool:
        """Whether the record will not change again (a commit waits for its reply to unwind)."""
        if record.decision == "resume":
            return True
        if record.decision == "commit":
            reply = self.session.replies.get(record.reply_id)
            return record.heard_text is not None and reply is not None and reply.settled
        return bool(record.reason)  # undecided with a reason: the reply failed meanwhile

    def _rebased(self, record: InterruptionRecord) -> dict[str, object]:
        fields = record.as_dict()
        for key, value in fields.items():
            if key.endswith("_at") and isinstance(value, float):
                fields[key] = round(value - self.origin, 4)
        return fields

    def _new_errors(self) -> list[dict[str, object]]:
        errors = self.session.errors[self._errors_sent :]
        self._errors_sent += len(errors)
        return [{"type": "error", "message": f"agent: {error}"} for error in errors]


def _agent(
    reply_id: int, text: str, *, final: bool, interrupted: bool | None = None
) -> dict[str, object]:
    message: dict[str, object] = {"type": "agent", "reply": reply_id, "text": text, "final": final}
    if interrupted is not None:
        message["interrupted"] = interrupted
    return message


# ---------------------------------------------------------------------------------------
# One connection
# ---------------------------------------------------------------------------------------


class ProtocolError(Exception):
    """A client message the protocol does not allow; its text goes back as an ``error``."""


class _Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


StackSource = AgentStack | Callable[[], Awaitable[AgentStack]]


async def serve_websocket(
    websocket: WebSocket,
    stack: StackSource,
    *,
    token: str | None,
    bench: bool,
    sessions: MutableSet[str] | None = None,
) -> None:
    """Serve one client until it leaves: hello, then a session, then ``ready``.

    ``stack`` may be a coroutine function, so the models can still be loading while the
    client says hello; ``sessions`` holds the ids of the sessions running (for /health).
    """
    await websocket.accept()
    try:
        await _await_hello(websocket, token)
    except _Refused as refused:
        await _refuse(websocket, refused.code, refused.message)
        return
    except WebSocketDisconnect:
        return
    try:
        agents = stack if isinstance(stack, AgentStack) else await stack()
        connection = Connection(websocket, agents, bench=bench)
    except Exception as exc:
        log.exception("no session for a client")
        await _refuse(websocket, CLOSE_SERVER_ERROR, f"the agent is unavailable: {exc}")
        return
    live = sessions if sessions is not None else set()
    live.add(connection.id)
    try:
        code = await connection.run()
    finally:
        live.discard(connection.id)
    if code is not None:
        await _close(websocket, code, connection.close_reason)


async def _await_hello(websocket: WebSocket, token: str | None) -> None:
    try:
        message = await asyncio.wait_for(websocket.receive(), HELLO_TIMEOUT_S)
    except TimeoutError:
        raise _Refused(CLOSE_BAD_HELLO, "no hello within 10 s") from None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    hello = _parse(text) if text is not None else None
    if hello is None or hello.get("type") != "hello":
        raise _Refused(CLOSE_BAD_HELLO, "the first message must be a hello")
    if token is not None:
        given = hello.get("token")
        if not isinstance(given, str) or not hmac.compare_digest(given, token):
            raise _Refused(CLOSE_BAD_TOKEN, "missing or wrong token")


def _parse(text: str) -> dict[str, Any] | None:
    try:
        message = json.loads(text)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


async def _refuse(websocket: WebSocket, code: int, message: str) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await websocket.send_json({"type": "error", "message": message})
    await _close(websocket, code, message)


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    """Close, but never wait long: a client that does not read may never take the frame."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, TimeoutError):
        await asyncio.wait_for(websocket.close(code, reason[:120]), CLOSE_TIMEOUT_S)


class Connection:
    """One client's session and the tasks that connect it to the socket."""

    def __init__(self, websocket: WebSocket, stack: AgentStack, *, bench: bool) -> None:
        self.id = secrets.token_hex(3)
        self.websocket = websocket
        self.bench = bench
        self.output_rate = stack.tts.sample_rate
        self.outbox = Outbox(self.output_rate)
        self.llm = SwitchableLLM(stack.llm)
        self.session = stack.session(RemoteSink(self.output_rate, self.outbox), llm=self.llm)
        self.close_reason = ""

    async def run(self) -> int | None:
        """Run until the client leaves or must be closed; the close code, if one is due."""
        async with self.session:
            origin = self.session.now()
            try:
                await self.websocket.send_json(self._ready())
            except WebSocketDisconnect:
                return None  # gone before it heard ready
            tasks = [
                asyncio.create_task(self._read(), name=f"{self.id} read"),
                asyncio.create_task(self._send(), name=f"{self.id} send"),
                asyncio.create_task(self._observe(origin), name=f"{self.id} observe"),
                asyncio.create_task(self._watch(), name=f"{self.id} watch"),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return self._close_code(done)

    def _ready(self) -> dict[str, object]:
        return {
            "type": "ready",
            "session": self.id,
            "input_rate": INPUT_RATE,
            "input_frame": INPUT_FRAME,
            "output_rate": self.output_rate,
            "bench": self.bench,
        }

    def _close_code(self, done: set[asyncio.Task[None]]) -> int | None:
        for task in done:
            exc = task.exception()
            if isinstance(exc, SlowClient):
                self.close_reason = str(exc)
                log.warning("session %s: %s", self.id, exc)
                return CLOSE_SLOW_CLIENT
            if exc is not None and not isinstance(exc, WebSocketDisconnect):
                self.close_reason = "internal error"
                log.error("session %s failed: %s", self.id, describe_error(exc), exc_info=exc)
                return CLOSE_SERVER_ERROR
        return None  # the client left: nothing to close

    # -- the four tasks -----------------------------------------------------------------

    async def _read(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                if (data := message.get("bytes")) is not None:
                    self._on_audio(data)
                elif (text := message.get("text")) is not None:
                    self._on_text(text)
            except ProtocolError as exc:
                self.outbox.put_json({"type": "error", "message": str(exc)})
            except Exception as exc:  # a bug handling one message must not end the call
                log.exception("session %s: handling a message failed", self.id)
                self.outbox.put_json({"type": "error", "message": describe_error(exc)})

    async def _send(self) -> None:
        while True:
            item = await self.outbox.get()
            if isinstance(item, str):
                await self.websocket.send_text(item)
            else:
                await self.websocket.send_bytes(item.payload)
            self.outbox.sent()

    async def _observe(self, origin: float) -> None:
        observer = SessionObserver(self.session, origin=origin)
        loop = asyncio.get_running_loop()
        while True:
            for message in observer.poll(loop.time()):
                self.outbox.put_json(message)
            await asyncio.sleep(POLL_S)

    async def _watch(self) -> None:
        while not self.outbox.stalled():
            await asyncio.sleep(POLL_S)
        raise SlowClient(
            f"the client stopped reading with {self.outbox.backlog_s:.1f} s of audio queued"
        )

    # -- client messages ----------------------------------------------------------------

    def _on_audio(self, data: bytes) -> None:
        if len(data) != FRAME_BYTES:
            raise ProtocolError(
                f"binary message of {len(data)} bytes; expected {FRAME_BYTES} "
                f"({INPUT_FRAME} samples)"
            )
        self.session.push_audio(data)

    def _on_text(self, text: str) -> None:
        message = _parse(text)
        if message is None:
            raise ProtocolError("a text message must be a JSON object")
        kind = message.get("type")
        if kind == "playout":
            self._on_playout(message)
        elif kind in ("bench_reply", "request_reply"):
            self._on_bench(kind, message)
        elif kind == "hello":
            raise ProtocolError("hello was already received")
        else:
            raise ProtocolError(f"unknown message type {kind!r}")

    def _on_playout(self, message: dict[str, Any]) -> None:
        reply, played = message.get("reply"), message.get("played")
        if not isinstance(reply, int) or not isinstance(played, int) or not _counts(reply, played):
            raise ProtocolError("playout needs whole numbers 'reply' and 'played'")
        try:
            self.session.playout(reply, played)
        except (ValueError, PolicyError) as exc:
            raise ProtocolError(str(exc)) from None
        self.outbox.played(reply, played)

    def _on_bench(self, kind: str, message: dict[str, Any]) -> None:
        if not self.bench:
            raise ProtocolError(f"{kind} needs a server started with --bench")
        if kind == "bench_reply":
            text = message.get("text")
            if not isinstance(text, str) or not text.strip():
                raise ProtocolError("bench_reply needs a non-empty 'text'")
            self.llm.script(text)
            return
        try:
            self.session.request_reply()
        except PolicyError as exc:
            raise ProtocolError(f"cannot start a reply now: {exc}") from None


def _counts(*values: int) -> bool:
    return all(not isinstance(v, bool) and v >= 0 for v in values)
