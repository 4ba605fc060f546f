"""The Twilio Media Streams endpoint, driven through a real WebSocket in real time.

A uvicorn server with only ``/twilio`` runs on a loopback port in the test's own event
loop, so the test can look into each call's session; the far end is the benchmark's
:class:`TwilioFarEnd`, which plays and echoes marks the way Twilio does. The models are
the session tests' doubles: every word is exactly 100 ms of a ramp that never repeats,
so any lost or repeated sample shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from bargein.bench.twilio_client import TICK_S as TICK
from bargein.bench.twilio_client import FarEndRecording, Received, TwilioFarEnd
from bargein.providers.base import FloatAudio
from bargein.providers.scripted import ScriptedLLM
from bargein.transports import mulaw, twilio
from bargein.transports.stack import AgentStack
from bargein.transports.twilio import (
    FRAME_SAMPLES,
    TwilioCall,
    TwilioSink,
    parse_mark,
    twilio_endpoint,
)
from tests.doubles import (
    WORD_SAMPLES,
    LevelVAD,
    LoggingSpeaker,
    ScriptedRecognizer,
    Utterance,
    WordTTS,
    loud_noise,
    word_audio,
)

TOKEN = "sesame"
SIX = "One two three four five six."
LONG = (
    "One two three four five six seven eight nine ten. "
    "Eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty."
)
STOP: Utterance = ([(0.0, ("stop",))], ("stop",))
UH_HUH: Utterance = ([(0.0, ("uh",))], ("uh", "huh"))
ONSET = 0.8
ONSET_SENT = ONSET + 0.02
"""The user starts at 0.8 s; the far end sends those 20 ms once it has them."""


@dataclass
class Server:
    url: str
    calls: list[TwilioCall]

    def call(self, far: TwilioFarEnd) -> TwilioCall:
        [call] = [c for c in self.calls if c.start.call_sid == far.call_sid]
        return call


@contextlib.asynccontextmanager
async def serve(stack: AgentStack, *, bench: bool = True) -> AsyncIterator[Server]:
    calls: list[TwilioCall] = []

    async def endpoint(websocket: WebSocket) -> None:
        await twilio_endpoint(websocket, stack, token=TOKEN, bench=bench, on_call=calls.append)

    app = Starlette(routes=[WebSocketRoute("/twilio", endpoint)])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield Server(f"ws://127.0.0.1:{port}/twilio", calls)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def make_stack(utterance: Utterance = STOP) -> AgentStack:
    return AgentStack(
        llm=ScriptedLLM(["Shared model."]),
        tts=WordTTS(),
        vad_factory=LevelVAD,
        recognizer_factory=lambda: ScriptedRecognizer([utterance]),
    )


def bench(text: str) -> dict[str, str]:
    return {"token": TOKEN, "bench_reply": text, "request_reply": "1"}


def silence(t: float) -> FloatAudio | None:
    return None


def loud_between(start: float, end: float) -> Callable[[float], FloatAudio | None]:
    def mic(t: float) -> FloatAudio | None:
        return loud_noise(320, seed=round(t * 8000)) if start <= t < end else None

    return mic


def heard(audio: FloatAudio) -> FloatAudio:
    """What a ramp sounds like after the trip through mu-law."""
    return mulaw.decode(mulaw.encode(audio))


def media_with_marks(recording: FarEndRecording) -> list[tuple[Received, str]]:
    """Each media message with the name of the mark the server sent right after it."""
    events = [r for r in recording.received if r.event in ("media", "mark")]
    pairs = list(zip(events[::2], events[1::2], strict=True))
    assert all((m.event, k.event) == ("media", "mark") for m, k in pairs)
    return [(media, mark.name) for media, mark in pairs]


def media_by_reply(recording: FarEndRecording) -> list[tuple[Received, int]]:
    """Each media message with the reply its mark names."""
    out: list[tuple[Received, int]] = []
    for media, name in media_with_marks(recording):
        parsed = parse_mark(name)
        assert parsed is not None
        out.append((media, parsed[0]))
    return out


def confirmed_before(recording: FarEndRecording, t: float, reply_id: int) -> int:
    """The far end's last sample count of ``reply_id`` echoed as played at or before ``t``."""
    return max(played_echoes(recording, reply_id, until=t), default=0)


def played_echoes(recording: FarEndRecording, reply_id: int, until: float = math.inf) -> set[int]:
    return {
        parsed[1]
        for m in recording.marks
        if m.played and m.at <= until and (parsed := parse_mark(m.name)) and parsed[0] == reply_id
    }


def unconfirmed_at_the_ear(clear_at: float, onset_sent_at: float) -> int:
    """The most audio the far end can have played that the server could not count.

    The server has every echo sent before the loud frame that made it pause; after that,
    the far end plays on until the end of the 20 ms frame playing when the clear lands.
    """
    playing_until = math.ceil(clear_at / TICK - 1e-9) * TICK
    return round((playing_until - onset_sent_at) * 8000)


# -- the endpoint ------------------------------------------------------------------------


async def test_a_wrong_or_missing_token_is_refused_before_any_audio() -> None:
    async with serve(make_stack()) as server:
        for params in (
            {**bench(SIX), "token": "wrong"},
            {"bench_reply": SIX, "request_reply": "1"},
        ):
            async with TwilioFarEnd(server.url, parameters=params) as far:
                assert await far.wait_closed(2.0)
            assert far.recording.close_code == 4401
            assert [r.event for r in far.recording.received] == []
        assert server.calls == []


async def test_a_socket_without_a_valid_start_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(twilio, "START_TIMEOUT_S", 0.3)
    async with serve(make_stack()) as server:
        async with TwilioFarEnd(server.url, send_start=False) as silent:
            assert await silent.wait_closed(2.0)
        assert silent.recording.close_code == 4408
        async with TwilioFarEnd(server.url, send_start=False) as broken:
            await broken.send_event({"event": "start", "start": {"customParameters": {}}})
            assert await broken.wait_closed(2.0)
        assert broken.recording.close_code == 4400
        assert server.calls == []


async def test_agent_audio_arrives_as_mulaw_media_each_followed_by_its_mark() -> None:
    async with (
        serve(make_stack()) as server,
        TwilioFarEnd(server.url, parameters=bench(SIX)) as far,
    ):
        cursor: list[tuple[int, int]] = []  # (server's cursor, far end's played) per tick

        def done(recording: FarEndRecording) -> bool:
            session = server.call(far).session
            if 1 in session.replies:
                cursor.append((session.replies[1].played, len(recording.played(1))))
            return 1 in session.recorded

        recording = await far.run(silence, until_s=3.0, stop=done)
        call = server.call(far)

    total = 6 * WORD_SAMPLES
    expected = heard(word_audio(0, total))
    pairs = media_by_reply(recording)
    assert [reply for _, reply in pairs] == [1] * (total // FRAME_SAMPLES)
    assert all(len(media.payload) == FRAME_SAMPLES for media, _ in pairs)
    sent = np.concatenate([mulaw.decode(media.payload) for media, _ in pairs])
    np.testing.assert_array_equal(sent, expected)
    marks = [parse_mark(r.name) for r in recording.received if r.event == "mark"]
    assert marks == [(1, FRAME_SAMPLES * (i + 1)) for i in range(len(pairs))]
    # Played once each, in order, and every echo came after its audio had played.
    np.testing.assert_array_equal(recording.played(1), expected)
    assert all(m.played for m in recording.marks) and len(recording.marks) == len(pairs)
    # An echo simulation reads the same audio back on any clock.
    end = (recording.rendered - 1) / 8000
    np.testing.assert_array_equal(recording.output_between(0.0, end, 8000), recording.audio[:-1])
    assert np.all(recording.output_between(end + 1, end + 2, 16000) == 0)
    # The session's cursor moved with the echoes, never ahead of the far end's ear.
    assert all(server_cursor <= ear for server_cursor, ear in cursor)
    assert len({server_cursor for server_cursor, _ in cursor}) > 10
    assert call.sink.confirmed[1] == total == call.session.replies[1].played
    assert call.session.recorded[1] == SIX
    assert call.session.conversation.messages[-1].content == SIX
    assert not call.problems


async def test_a_barge_in_clears_twilio_and_the_conversation_keeps_what_the_marks_confirmed() -> (
    None
):
    async with (
        serve(make_stack(STOP)) as server,
        TwilioFarEnd(server.url, parameters=bench(LONG)) as far,
    ):
        recording = await far.run(
            loud_between(ONSET, 1.4),
            until_s=4.5,
            stop=lambda r: 2 in r.reply_at,  # the answer is playing
        )
        call = server.call(far)

    [clear_at] = recording.clears
    assert ONSET_SENT < clear_at < ONSET_SENT + 0.1  # one round trip after the loud frame
    # Nothing more of the interrupted reply was sent after the clear; the answer was.
    after = [reply for media, reply in media_by_reply(recording) if media.at > clear_at]
    assert 1 not in after and 2 in after
    # At the far end's ear the agent stopped within the frame playing at the clear.
    assert recording.last_sound_s(1) <= clear_at + TICK + 1e-9
    # The cursor is a mark the far end echoed as played, not one the clear returned;
    # it is short of what the ear heard by at most what played while the clear was on
    # its way. The conversation keeps the words that cursor covers.
    cursor = call.session.replies[1].played
    assert any(not m.played for m in recording.marks)
    assert cursor in played_echoes(recording, 1)
    assert confirmed_before(recording, ONSET_SENT, 1) <= cursor
    assert 0 < len(recording.played(1)) - cursor <= unconfirmed_at_the_ear(clear_at, ONSET_SENT)
    words = LONG.split()
    kept = [w for i, w in enumerate(words) if cursor >= (i + 0.5) * WORD_SAMPLES]
    assert 0 < len(kept) < len(words)
    assert call.session.recorded[1] == " ".join(kept)
    first = call.session.conversation.messages[0]
    assert first.interrupted and first.content.startswith(" ".join(kept))


async def test_phone_calls_leave_the_phrase_spotter_out() -> None:
    """Measured on Media Streams, the spotter took "Stop" for "got it"; calls go without."""
    stack = make_stack(STOP)
    built: list[ScriptedRecognizer] = []

    def spotter() -> ScriptedRecognizer:
        built.append(ScriptedRecognizer([STOP]))
        return built[-1]

    stack.spotter_factory = spotter
    assert stack.session(LoggingSpeaker([])).second_opinion is built[0]
    async with (
        serve(stack) as server,
        TwilioFarEnd(server.url, parameters=bench(SIX)) as far,
    ):
        await far.run(silence, until_s=0.3)
        call = server.call(far)
    assert call.session.second_opinion is None and len(built) == 1


async def test_pause_and_resume_resend_exactly_the_unconfirmed_remainder() -> None:
    async with (
        serve(make_stack(UH_HUH)) as server,
        TwilioFarEnd(server.url, parameters=bench(LONG)) as far,
    ):
        recording = await far.run(
            loud_between(ONSET, 1.0),
            until_s=5.0,
            stop=lambda r: 1 in server.call(far).session.recorded,
        )
        call = server.call(far)

    [record] = call.session.timeline
    assert record.decision == "resume"
    [clear_at] = recording.clears
    total = len(LONG.split()) * WORD_SAMPLES
    expected = heard(word_audio(0, total))
    # What was sent after the clear starts at the sample after a mark the far end
    # confirmed before the pause, and runs to the end of the reply.
    resent = [(media, name) for media, name in media_with_marks(recording) if media.at > clear_at]
    assert resent, "nothing was sent after the pause"
    first_mark = parse_mark(resent[0][1])
    assert first_mark is not None
    cursor = first_mark[1] - FRAME_SAMPLES
    assert cursor in played_echoes(recording, 1, until=clear_at)
    assert confirmed_before(recording, ONSET_SENT, 1) <= cursor < total
    np.testing.assert_array_equal(
        np.concatenate([mulaw.decode(m.payload) for m, _ in resent]), expected[cursor:]
    )
    # At the ear nothing was lost; what repeats is what played while the clear was on
    # its way (normally the one frame playing when it landed).
    played = recording.played(1)
    repeated = len(played) - total
    assert 0 <= repeated <= unconfirmed_at_the_ear(clear_at, ONSET_SENT)
    before = len(played) - (total - cursor)
    np.testing.assert_array_equal(played[:before], expected[:before])
    np.testing.assert_array_equal(played[before:], expected[cursor:])
    assert call.session.recorded[1] == LONG
    assert not call.session.conversation.messages[-1].interrupted


async def test_bad_messages_are_ignored_and_the_call_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    junk: list[str | bytes] = [
        "not json",
        "[1, 2]",
        json.dumps({"event": "bogus"}),
        json.dumps({"event": "media", "media": {"payload": "!!not base64!!"}}),
        json.dumps({"event": "media", "media": {"payload": 7}}),
        json.dumps({"event": "media", "media": {"payload": "////"}}),  # 3 silent bytes: fine
        json.dumps({"event": "mark", "mark": {"name": "r9:100:1"}}),
        json.dumps({"event": "mark"}),
        json.dumps({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": "5"}}),
        b"\x00\x01binary",
    ]
    caplog.set_level(logging.WARNING, "bargein.twilio")
    async with serve(make_stack()) as server, TwilioFarEnd(server.url, send_start=False) as far:
        # Before start: media and junk are ignored, and the call still starts.
        await far.send_media(bytes([mulaw.SILENCE_BYTE]) * FRAME_SAMPLES)
        await far.send_raw("{{{")
        await far.start(bench(SIX))
        for message in junk:
            await far.send_raw(message)
        await far.start(bench(SIX))  # a second start
        recording = await far.run(
            silence, until_s=3.0, stop=lambda r: 1 in server.call(far).session.recorded
        )
        call = server.call(far)
        assert not far.closed

    assert call.session.recorded[1] == SIX
    np.testing.assert_array_equal(recording.played(1), heard(word_audio(0, 6 * WORD_SAMPLES)))
    assert call.problems == {
        "json": 2,
        "event": 1,
        "base64": 1,
        "media": 1,
        "mark": 2,
        "binary": 1,
        "repeat": 1,
    }
    assert call.dtmf == ["5"]
    assert "before start" in caplog.text and "not base64" in caplog.text


async def test_bench_parameters_are_ignored_without_bench(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "bargein.twilio")
    async with (
        serve(make_stack(), bench=False) as server,
        TwilioFarEnd(server.url, parameters=bench(SIX)) as far,
    ):
        recording = await far.run(silence, until_s=0.5)
        call = server.call(far)
    assert [r for r in recording.received if r.event == "media"] == []
    assert call.session.replies == {}
    assert "bench parameters ignored" in caplog.text


async def test_a_vanished_caller_ends_only_its_own_call() -> None:
    async with (
        serve(make_stack()) as server,
        TwilioFarEnd(server.url, parameters=bench(LONG)) as gone,
        TwilioFarEnd(server.url, parameters=bench(SIX)) as stays,
    ):
        await gone.run(silence, until_s=0.4)
        gone.abort()
        recording = await stays.run(
            silence, until_s=3.0, stop=lambda r: 1 in server.call(stays).session.recorded
        )
        lost, kept = server.call(gone), server.call(stays)
        # The lost call has ended and its session has shut down; the other plays on.
        assert lost.ended_by == "disconnect"
        assert lost.session.replies[1].task is not None and lost.session.replies[1].task.done()
        assert 1 not in lost.session.recorded  # it never finished playing
        assert not stays.closed and kept.ended_by == ""

    assert kept.session.recorded[1] == SIX
    # Both calls share one TTS, so which ramp each got depends on timing: compare with
    # what was sent.
    sent = [mulaw.decode(m.payload) for m, reply in media_by_reply(recording) if reply == 1]
    assert sum(len(a) for a in sent) == 6 * WORD_SAMPLES
    np.testing.assert_array_equal(recording.played(1), np.concatenate(sent))


# -- the sink on its own -------------------------------------------------------------------


class Wire:
    """Collects what a sink's pump sends."""

    def __init__(self) -> None:
        self.messages: list[dict[str, object]] = []

    async def send(self, text: str) -> None:
        self.messages.append(json.loads(text))

    def take(self) -> list[dict[str, object]]:
        out, self.messages = self.messages, []
        return out


def media_and_marks(messages: list[dict[str, object]]) -> list[tuple[FloatAudio, str]]:
    media = [m for m in messages if m["event"] == "media"]
    marks = [m for m in messages if m["event"] == "mark"]
    assert len(media) == len(marks)
    import base64

    return [
        (
            mulaw.decode(base64.b64decode(m["media"]["payload"])),  # type: ignore[index]
            k["mark"]["name"],  # type: ignore[index]
        )
        for m, k in zip(media, marks, strict=True)
    ]


@contextlib.asynccontextmanager
async def pumping(sink: TwilioSink, wire: Wire) -> AsyncIterator[None]:
    task = asyncio.create_task(sink.pump(wire.send))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_marks_count_tts_samples_exactly_through_resampling() -> None:
    sink, wire = TwilioSink(22050, "MZ1", lead_s=60.0), Wire()
    async with pumping(sink, wire):
        sink.write(1, np.full(22050, 0.1, dtype=np.float32))
        sink.write(1, np.full(1001, 0.1, dtype=np.float32))
        await asyncio.sleep(0.05)
    sent = media_and_marks(wire.take())
    counts = [parse_mark(name) for _, name in sent]
    ends = [c[1] for c in counts if c is not None]
    assert len(ends) == len(sent) and all(c is not None and c[0] == 1 for c in counts)
    assert ends == sorted(set(ends)) and 22050 in ends and ends[-1] == 23051
    assert all(len(audio) <= FRAME_SAMPLES for audio, _ in sent)
    # Each write is resampled on its own (TTS writes are whole sentences).
    assert sum(len(audio) for audio, _ in sent) == 8000 + math.ceil(1001 * 8000 / 22050)


async def test_duck_resends_the_unconfirmed_audio_at_the_new_gain() -> None:
    sink, wire = TwilioSink(8000, "MZ1", lead_s=60.0), Wire()
    async with pumping(sink, wire):
        sink.write(1, np.full(8 * FRAME_SAMPLES, 0.5, dtype=np.float32))
        await asyncio.sleep(0.02)
        first = media_and_marks(wire.take())
        assert sink.on_mark(first[2][1]) == [(1, 3 * FRAME_SAMPLES)]  # confirms three frames
        sink.duck(0.1)
        await asyncio.sleep(0.02)
        again = wire.take()
    assert again[0] == {"event": "clear", "streamSid": "MZ1"}
    resent = media_and_marks(again[1:])
    assert [parse_mark(name) for _, name in resent] == [(1, FRAME_SAMPLES * k) for k in range(4, 9)]
    assert all(abs(float(np.mean(audio)) - 0.05) < 0.002 for audio, _ in resent)
    assert sink.on_mark(first[3][1]) == []  # discarded by the clear, not played
    assert sink.confirmed[1] == 3 * FRAME_SAMPLES
    assert sink.on_mark(resent[0][1]) == [(1, 4 * FRAME_SAMPLES)]


async def test_clear_drops_everything_unsent_and_ignores_the_returned_marks() -> None:
    sink, wire = TwilioSink(8000, "MZ1", lead_s=0.1), Wire()
    async with pumping(sink, wire):
        sink.write(1, np.full(50 * FRAME_SAMPLES, 0.5, dtype=np.float32))
        await asyncio.sleep(0.01)
        sent = media_and_marks(wire.take())
        sink.clear()
        await asyncio.sleep(0.15)
        after = wire.take()
    assert 0 < len(sent) < 50  # paced: only the lead went out
    assert after == [{"event": "clear", "streamSid": "MZ1"}]
    assert all(sink.on_mark(name) == [] for _, name in sent)
    assert sink.confirmed == {}
    assert sink.on_mark("r1:160:999") is None  # never sent


async def test_audio_is_sent_no_further_ahead_than_the_lead() -> None:
    sink, wire = TwilioSink(8000, "MZ1", lead_s=0.1), Wire()
    async with pumping(sink, wire):
        sink.write(1, np.zeros(8000, dtype=np.float32))
        await asyncio.sleep(0.3)
    frames = len(media_and_marks(wire.take()))
    # 0.3 s played plus 0.1 s ahead, 20 ms each; a loaded machine may lag, never lead.
    assert 12 <= frames <= (0.3 + 0.1) / 0.02 + 1
