"""The WebSocket protocol (docs/protocol.md), spoken by a real client over loopback.

The server runs in a thread on a free port with test doubles for the models: a level
VAD (loud frames are speech), a scripted recogniser, a word-per-800-samples TTS at
8 kHz and a scripted LLM, so each test is about the transport, in real time, fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bargein.providers.scripted import ScriptedLLM
from bargein.server import create_app, serve_in_background
from bargein.transports.stack import AgentStack
from bargein.transports.websocket import (
    BENCH_FOLLOW_UP,
    Outbox,
    RemoteSink,
    decode_audio,
    encode_audio,
)
from tests.doubles import TTS_RATE, WORD_SAMPLES, LevelVAD, ScriptedRecognizer, WordTTS, loud_noise

REPLY = "One two three four five six seven eight. Nine ten eleven twelve thirteen fourteen."
LOUD = (np.clip(loud_noise(320, seed=1), -1, 1) * 32767).astype("<i2").tobytes()
QUIET = bytes(640)

Utterances = list[tuple[list[tuple[float, tuple[str, ...]]], tuple[str, ...]]]


def said(*words: str) -> tuple[list[tuple[float, tuple[str, ...]]], tuple[str, ...]]:
    """An utterance whose words the recogniser knows from its first frame."""
    return [(0.0, words)], words


def make_stack(
    script: str | list[str] = REPLY,
    utterances: Utterances | None = None,
    *,
    tokens_per_s: float = 200.0,
) -> AgentStack:
    heard = utterances or [said("stop")]
    return AgentStack(
        llm=ScriptedLLM(
            [script] if isinstance(script, str) else script,
            first_token_s=0.02,
            tokens_per_s=tokens_per_s,
        ),
        tts=WordTTS(),
        vad_factory=LevelVAD,
        recognizer_factory=lambda: ScriptedRecognizer(list(heard)),
    )


@contextmanager
def server(stack: AgentStack | None = None, **options: Any) -> Iterator[str]:
    with serve_in_background(create_app(stack or make_stack(), **options)) as url:
        yield url


class Client:
    """One connection, read continuously in the background, as a browser would."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.audio: dict[int, int] = {}
        self.done = False
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    reply, samples = decode_audio(message)
                    self.audio[reply] = self.audio.get(reply, 0) + len(samples)
                    self.messages.append({"type": "audio", "reply": reply})
                else:
                    self.messages.append(json.loads(message))
                self._changed.set()
        except ConnectionClosed:
            pass  # an abnormal close: ``until`` reports it
        finally:
            self.done = True
            self._changed.set()

    async def send(self, message: dict[str, Any] | bytes) -> None:
        await self.ws.send(message if isinstance(message, bytes) else json.dumps(message))

    async def until(self, check: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Wait until ``check()`` is truthy; return its value."""
        async with asyncio.timeout(timeout):
            while not (value := check()):
                if self.done:
                    raise AssertionError(f"connection closed with {self.ws.close_code}")
                self._changed.clear()
                await self._changed.wait()
            return value

    async def next(self, kind: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        """The first message of ``kind`` (with these field values) received so far or next."""

        def find() -> dict[str, Any] | None:
            for message in self.messages:
                if message["type"] == kind and all(message.get(k) == v for k, v in fields.items()):
                    return message
            return None

        found: dict[str, Any] = await self.until(find, timeout)
        return found

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    async def speak(self, frames: int, *, loud: bool = True) -> None:
        """Microphone frames at real-time pace: the session timestamps them on arrival."""
        for _ in range(frames):
            await self.send(LOUD if loud else QUIET)
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait_for(self._reader, 5)


async def open_client(url: str, token: str | None = None) -> tuple[Client, dict[str, Any]]:
    ws = await connect(url.replace("http", "ws", 1) + "/ws")
    client = Client(ws)
    await client.send({"type": "hello", "client": "test/1"} | ({"token": token} if token else {}))
    ready = await client.next("ready")
    return client, ready


async def refusal(url: str, first: dict[str, Any] | bytes) -> tuple[list[Any], int | None]:
    """Send ``first`` as the opening message; what came back and the close code."""
    async with connect(url.replace("http", "ws", 1) + "/ws") as ws:
        await ws.send(first if isinstance(first, bytes) else json.dumps(first))
        received: list[Any] = []
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                received.append(json.loads(message))
        return received, ws.close_code


def sessions(url: str) -> int:
    count: int = httpx.get(f"{url}/health").json()["sessions"]
    return count


async def wait_sessions(url: str, count: int, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while await asyncio.to_thread(sessions, url) != count:
            await asyncio.sleep(0.05)


# -- opening -----------------------------------------------------------------------------


async def test_hello_gets_ready_with_the_audio_formats() -> None:
    with server() as url:
        client, ready = await open_client(url)
        assert ready == {
            "type": "ready",
            "session": ready["session"],
            "input_rate": 16000,
            "input_frame": 320,
            "output_rate": TTS_RATE,
            "bench": False,
        }
        assert len(ready["session"]) == 6
        assert (await client.next("state"))["floor"] == "listening"
        await client.close()


async def test_a_token_is_checked_before_anything_else() -> None:
    with server(token="s3cret") as url:
        for hello in ({"type": "hello"}, {"type": "hello", "token": "guess"}):
            received, code = await refusal(url, hello)
            assert code == 4401
            assert received == [{"type": "error", "message": "missing or wrong token"}]
        client, ready = await open_client(url, token="s3cret")
        assert ready["type"] == "ready"
        await client.close()


async def test_anything_before_hello_closes_with_4400() -> None:
    with server() as url:
        for first in (QUIET, {"type": "playout", "reply": 1, "played": 0}, {"hello": 1}):
            received, code = await refusal(url, first)
            assert code == 4400
            assert received[0]["type"] == "error"
            assert "hello" in received[0]["message"]
            assert len(received) == 1  # no ready, no audio


# -- the conversation --------------------------------------------------------------------


async def test_speech_becomes_a_user_turn_and_gets_an_answer() -> None:
    with server(make_stack(utterances=[said("what", "time", "is", "it")])) as url:
        client, _ = await open_client(url)
        await client.speak(15)
        await client.speak(40, loud=False)  # the turn ends after half a second of silence
        user = await client.next("user")
        assert user == {"type": "user", "text": "what time is it", "turn": 0}
        await client.until(lambda: client.audio.get(1, 0) >= 14 * WORD_SAMPLES)
        streamed = await client.next("agent", reply=1)
        assert streamed["final"] is False
        assert REPLY.startswith(streamed["text"])
        # Played to the end: the whole reply is recorded, not interrupted.
        await client.send({"type": "playout", "reply": 1, "played": client.audio[1]})
        final = await client.next("agent", reply=1, final=True)
        assert final["text"] == REPLY
        assert final["interrupted"] is False
        await client.close()


async def test_a_barge_in_clears_the_output_and_cuts_the_reply_to_what_was_played() -> None:
    with server(bench=True) as url:
        client, _ = await open_client(url)
        await client.send({"type": "request_reply"})
        await client.until(lambda: client.audio.get(1, 0) >= 3 * WORD_SAMPLES)
        await client.send({"type": "playout", "reply": 1, "played": 3 * WORD_SAMPLES})
        await client.next("state", floor="speaking")
        await client.speak(10)  # "stop", over the agent
        await client.next("clear")
        kinds = [m["type"] for m in client.messages]
        assert kinds.index("pause") < kinds.index("clear")  # tier 1 first, then the flush
        final = await client.next("agent", reply=1, final=True)
        assert final == {
            "type": "agent",
            "reply": 1,
            "text": "One two three",
            "final": True,
            "interrupted": True,
        }
        words = [w for m in client.of("words") if m["reply"] == 1 for w in m["words"]]
        assert words[:3] == [["One", 0, 800], ["two", 800, 1600], ["three", 1600, 2400]]
        assert kinds.index("words") < client.messages.index(final)
        record = (await client.next("interruption"))["record"]
        assert record["decision"] == "commit"
        assert record["reason"] == "word:stop"
        assert record["heard_text"] == "One two three"
        assert record["played_at_decision"] == 3 * WORD_SAMPLES
        assert 0.0 < record["onset_at"] <= record["decided_at"] < 5.0  # from session start
        assert record["tokens_after_cancel"] == 0
        await client.close()


async def test_audio_queued_for_a_cleared_reply_is_never_sent() -> None:
    outbox = Outbox(TTS_RATE)
    sink = RemoteSink(TTS_RATE, outbox)
    sink.write(1, np.full(2 * TTS_RATE, 0.5, dtype=np.float32))  # 8 pieces of 0.25 s
    first = await outbox.get()
    outbox.sent()
    sink.clear()
    sink.write(2, np.full(100, 0.5, dtype=np.float32))
    rest = [await outbox.get() for _ in range(2)]
    assert not isinstance(first, str)
    assert first.reply_id == 1 and first.samples == TTS_RATE // 4
    assert rest[0] == '{"type": "clear"}'
    assert not isinstance(rest[1], str) and rest[1].reply_id == 2
    assert outbox.backlog_s == 0.0


async def test_audio_is_paced_by_the_clients_cursor_and_controls_never_wait() -> None:
    now = [0.0]
    outbox = Outbox(TTS_RATE, lead_s=0.5, clock=lambda: now[0])
    sink = RemoteSink(TTS_RATE, outbox)
    sink.write(1, np.full(2 * TTS_RATE, 0.5, dtype=np.float32))  # 8 pieces of 0.25 s
    # Before any report there is no cursor to pace by: audio flows.
    first = await outbox.get()
    outbox.sent()
    outbox.played(1, 0)
    second = await outbox.get()
    outbox.sent()
    assert not isinstance(first, str) and not isinstance(second, str)
    # 0.5 s in flight, none played: the next piece waits, but a pause goes at once.
    sink.pause()
    assert await asyncio.wait_for(outbox.get(), 0.1) == '{"type": "pause"}'
    outbox.sent()
    waiting = asyncio.ensure_future(outbox.get())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    # The client plays a quarter second: one more piece may go.
    now[0] = 3.0
    outbox.played(1, TTS_RATE // 4)
    third = await asyncio.wait_for(waiting, 0.1)
    assert not isinstance(third, str) and third.reply_id == 1
    outbox.sent()
    # Held audio is not a stalled client, even paused for long; a clear drops it.
    sink.write(1, np.full(5 * TTS_RATE, 0.5, dtype=np.float32))
    now[0] = 10.0
    assert outbox.backlog_s == 6.25 and not outbox.stalled()
    sink.clear()
    assert await asyncio.wait_for(outbox.get(), 0.1) == '{"type": "clear"}'
    assert outbox.backlog_s == 0.0


def test_agent_audio_is_the_reply_id_then_pcm16() -> None:
    message = encode_audio(7, np.array([0.0, 0.5, -1.0, 2.0], dtype=np.float32))
    assert message[:4] == b"\x07\x00\x00\x00"
    reply, samples = decode_audio(message)
    assert reply == 7
    assert samples.tolist() == [0, 16384, -32767, 32767]
    with pytest.raises(ValueError, match="malformed"):
        decode_audio(b"\x07\x00\x00\x00\x01")


# -- mistakes cost a message, not the session --------------------------------------------


async def test_bad_messages_get_errors_and_the_session_goes_on() -> None:
    with server(bench=True) as url:
        client, _ = await open_client(url)
        for bad in (
            b"\x00" * 100,
            "{not json",
            {"type": "dance"},
            {"type": "playout", "reply": 9, "played": 0},
            {"type": "playout", "reply": "1", "played": -1},
            {"type": "hello"},
        ):
            await client.ws.send(bad if isinstance(bad, bytes | str) else json.dumps(bad))
        errors = await client.until(lambda: len(client.of("error")) >= 6 and client.of("error"))
        assert [e["message"] for e in errors] == [
            "binary message of 100 bytes; expected 640 (320 samples)",
            "a text message must be a JSON object",
            "unknown message type 'dance'",
            "playout report for unknown reply 9",
            "playout needs whole numbers 'reply' and 'played'",
            "hello was already received",
        ]
        await client.send({"type": "bench_reply", "text": "Still here. All good."})
        await client.send({"type": "request_reply"})
        await client.until(lambda: client.audio.get(1, 0) == 4 * WORD_SAMPLES)
        await client.close()


async def test_the_bench_hook_needs_bench_mode() -> None:
    with server() as url:
        client, ready = await open_client(url)
        assert ready["bench"] is False
        await client.send({"type": "bench_reply", "text": "Say this."})
        await client.send({"type": "request_reply"})
        errors = await client.until(lambda: len(client.of("error")) == 2 and client.of("error"))
        assert [e["message"] for e in errors] == [
            "bench_reply needs a server started with --bench",
            "request_reply needs a server started with --bench",
        ]
        await asyncio.sleep(0.3)
        assert client.audio == {}
        await client.close()


async def test_bench_reply_scripts_the_next_reply_then_a_follow_up() -> None:
    stack = make_stack(utterances=[said("stop"), said("go", "on")])
    with server(stack, bench=True) as url:
        client, ready = await open_client(url)
        assert ready["bench"] is True
        await client.send({"type": "bench_reply", "text": "Alpha beta gamma delta."})
        await client.send({"type": "request_reply"})
        await client.until(lambda: client.audio.get(1) == 4 * WORD_SAMPLES)
        await client.send({"type": "request_reply"})  # busy: refused, nothing breaks
        busy = await client.next("error")
        assert busy["message"].startswith("cannot start a reply now")
        await client.send({"type": "playout", "reply": 1, "played": 4 * WORD_SAMPLES})
        first = await client.next("agent", reply=1, final=True)
        assert first["text"] == "Alpha beta gamma delta."
        await client.send({"type": "request_reply"})
        await client.until(lambda: client.audio.get(2, 0) > 0)
        second = await client.next("agent", reply=2)
        assert BENCH_FOLLOW_UP.startswith(second["text"])
        await client.close()


# -- many sessions -----------------------------------------------------------------------


async def test_a_vanished_client_ends_only_its_own_session() -> None:
    long_reply = " ".join(["Here is a sentence of several words."] * 40)
    with server(make_stack(long_reply, tokens_per_s=50), bench=True) as url:
        leaving, _ = await open_client(url)
        staying, _ = await open_client(url)
        assert await asyncio.to_thread(sessions, url) == 2
        await leaving.send({"type": "request_reply"})
        await leaving.until(lambda: leaving.audio.get(1, 0) > 0)
        leaving.ws.transport.abort()  # mid-reply, no closing handshake
        await wait_sessions(url, 1)
        await staying.send({"type": "request_reply"})
        await staying.until(lambda: staying.audio.get(1, 0) >= 8 * WORD_SAMPLES)
        await staying.send({"type": "playout", "reply": 1, "played": 8 * WORD_SAMPLES})
        await staying.next("state", floor="speaking")
        await staying.close()
        await wait_sessions(url, 0)


async def test_a_client_that_stops_reading_is_closed_with_1008() -> None:
    # Ten minutes of speech, generated as fast as possible, to a client that reads nothing.
    flood = " ".join(["One two three four five six seven eight nine ten."] * 600)
    with server(make_stack(flood, tokens_per_s=20000), bench=True) as url:
        async with connect(url.replace("http", "ws", 1) + "/ws", max_queue=1) as ws:
            await ws.send(json.dumps({"type": "hello"}))
            await ws.recv()  # ready
            await ws.send(json.dumps({"type": "request_reply"}))
            await wait_sessions(url, 0, timeout=20)  # the server gave up on the session
            with pytest.raises(ConnectionClosed):
                while True:
                    await ws.recv()
            assert ws.close_code == 1008
        assert (await asyncio.to_thread(httpx.get, f"{url}/health")).json()["ok"] is True
