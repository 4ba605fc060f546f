"""Tests of the OpenAI-compatible streaming provider and of the cancellation benchmark.

Everything runs against real sockets on loopback. The protocol tests use a scripted
HTTP/1.1 server (``tests/llm_servers.py``) that controls every byte and sees, from its
own side, when the client disconnects.

The last section is the proof that matters for barge-in: llama-cpp-python's own
OpenAI-compatible server with the Gemma 3 270M model, in-process on a background thread,
its model's ``eval`` wrapped so that every decode step is timestamped. A reply of up to
400 tokens is cancelled after 10, and the decode log (not the client) shows that the
server stopped within two decode steps and stayed idle, then served the next request.
A control test leaves a stream open without closing it and sees the decodes go on, so
the stop is the close's doing and the instrument can see a server that does not stop.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest

from bargein.bench.llama_server import LlamaServer
from bargein.bench.llm_cancel import (
    DEFAULT_MESSAGES,
    CancelMeasurement,
    measure_cancel,
    run_cancel_bench,
)
from bargein.providers.base import ChatMessage, LanguageModel, LLMError, ToolCall, ToolSpec
from bargein.providers.llamacpp import default_model_path
from bargein.providers.openai_compat import DEFAULT_BASE_URL, OpenAICompatLLM, OpenAICompatStream
from bargein.providers.scripted import ScriptedLLM
from bargein.session import TokenLedger
from tests.llm_servers import (
    DONE,
    Exchange,
    ScriptedServer,
    closed_port,
    cut_mid_chunk,
    delta,
    endless,
    event,
    respond,
    sse,
    stall,
)

HI = [ChatMessage("user", "Hi")]


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    scripted = ScriptedServer()
    await scripted.start()
    yield scripted
    await scripted.close()


def llm_for(server: ScriptedServer, **options: Any) -> OpenAICompatLLM:
    return OpenAICompatLLM(base_url=server.base_url, model="test-model", **options)


async def collect(stream: OpenAICompatStream) -> list[str | ToolCall]:
    try:
        return [item async for item in stream]
    finally:
        await stream.aclose()


async def llm_error(stream: OpenAICompatStream) -> str:
    """The message of the LLMError the stream raises (and nothing else may escape)."""
    with pytest.raises(LLMError) as caught:
        await collect(stream)
    return str(caught.value)


async def disconnect_seen(exchange: Exchange, within_s: float = 2.0) -> float:
    """When the server saw the client go, waiting for it at most ``within_s``."""
    deadline = time.monotonic() + within_s
    while exchange.disconnected_at is None and time.monotonic() < deadline:
        await asyncio.sleep(0.001)
    assert exchange.disconnected_at is not None, "the server never saw the disconnect"
    return exchange.disconnected_at


# ---------------------------------------------------------------------------------------
# streaming text and the request it sends
# ---------------------------------------------------------------------------------------


async def test_streams_content_pieces_and_sends_a_minimal_request(
    server: ScriptedServer,
) -> None:
    server.script(
        sse(
            delta("", role="assistant"),
            delta("Hel"),
            delta("lo"),
            delta(" world"),
            delta(finish="stop"),
            DONE,
        )
    )
    stream = llm_for(server).stream(HI)

    assert await collect(stream) == ["Hel", "lo", " world"]
    assert stream.finish_reason == "stop"
    assert len(stream.emitted_at) == 3
    (request,) = server.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.body == {
        "model": "test-model",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
    }
    assert "authorization" not in request.headers
    assert request.headers["accept"] == "text/event-stream"


async def test_sends_key_temperature_and_max_tokens_when_set(server: ScriptedServer) -> None:
    server.script(sse(DONE))
    llm = llm_for(server, api_key="sk-test", temperature=0.2, max_tokens=50)

    assert await collect(llm.stream(HI)) == []
    (request,) = server.requests
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.body["temperature"] == 0.2
    assert request.body["max_tokens"] == 50


async def test_reads_server_sent_events_however_they_are_framed(server: ScriptedServer) -> None:
    """Comments, CRLF, no space after ``data:``, other fields, an event split across
    chunks mid-JSON, a usage chunk without choices, a second choice: only text counts."""
    piece = '{"choices": [{"index": 0, "delta": {"content": "%s"}}]}'
    server.script(
        sse(
            ": keep-alive\n\n",
            'data: {"choices": [{"index": 0, "delta": {"content": "a',
            0.02,
            'b"}}]}\n\n',
            f"data:{piece % 'c'}\r\n\r\n",
            f"event: message\nid: 7\nretry: 100\ndata: {piece % 'd'}\n\n",
            event({"choices": [], "usage": {"completion_tokens": 3}}),
            event({"choices": [{"index": 1, "delta": {"content": "other choice"}}]}),
            "data: [DONE]\r\n\r\n",
        )
    )
    assert await collect(llm_for(server).stream(HI)) == ["ab", "c", "d"]


async def test_a_stream_that_ends_without_done_just_ends(server: ScriptedServer) -> None:
    server.script(sse(delta("only")))
    assert await collect(llm_for(server).stream(HI)) == ["only"]


# ---------------------------------------------------------------------------------------
# tool calls
# ---------------------------------------------------------------------------------------


def _fragment(
    index: int, *, call_id: str | None = None, name: str | None = None, args: str = ""
) -> dict[str, object]:
    """One streamed piece of a tool call, as OpenAI sends it."""
    function: dict[str, object] = {"arguments": args}
    if name is not None:
        function["name"] = name
    fragment: dict[str, object] = {"index": index, "function": function}
    if call_id is not None:
        fragment["id"] = call_id
        fragment["type"] = "function"
    return fragment


async def test_assembles_interleaved_tool_call_fragments(server: ScriptedServer) -> None:
    split_event = delta(tool_calls=[_fragment(0, args='ty": "Par')])
    server.script(
        sse(
            delta("Let me check."),
            delta(tool_calls=[_fragment(0, call_id="call_a", name="get_weather")]),
            delta(tool_calls=[_fragment(0, args='{"ci')]),
            delta(tool_calls=[_fragment(1, call_id="call_b", name="get_time", args="{}")]),
            split_event[:30],
            0.01,
            split_event[30:],
            delta(tool_calls=[_fragment(0, args='is"}')]),
            delta(finish="tool_calls"),
            DONE,
        )
    )
    stream = llm_for(server).stream(HI)

    assert await collect(stream) == [
        "Let me check.",
        ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_b", "get_time", "{}"),
    ]
    assert stream.finish_reason == "tool_calls"


async def test_tool_calls_are_handed_out_when_the_choice_finishes(server: ScriptedServer) -> None:
    """Not held back until ``[DONE]``: this server never sends it."""
    server.script(
        stall(
            delta(tool_calls=[_fragment(0, call_id="call_a", name="hang_up", args="{}")]),
            delta(finish="tool_calls"),
        )
    )
    stream = llm_for(server, stall_timeout_s=10.0).stream(HI)
    try:
        first = await asyncio.wait_for(anext(stream), timeout=2.0)
    finally:
        await stream.aclose()
    assert first == ToolCall("call_a", "hang_up", "{}")


async def test_tool_calls_without_index_or_finish_reason(server: ScriptedServer) -> None:
    """Lenient servers: no ``index``, the name repeated in every fragment, no finish
    reason; the calls still come out whole when the stream ends."""

    def loose(call_id: str | None, args: str) -> dict[str, object]:
        fragment: dict[str, object] = {"function": {"name": "lookup", "arguments": args}}
        if call_id is not None:
            fragment["id"] = call_id
        return fragment

    server.script(
        sse(
            delta(tool_calls=[loose("c1", '{"q": ')]),
            delta(tool_calls=[loose(None, '"a"}')]),
            delta(tool_calls=[loose("c2", '{"q": "b"}')]),
        )
    )
    assert await collect(llm_for(server).stream(HI)) == [
        ToolCall("c1", "lookup", '{"q": "a"}'),
        ToolCall("c2", "lookup", '{"q": "b"}'),
    ]


async def test_sends_tool_history_and_tool_specs_as_openai_json(server: ScriptedServer) -> None:
    server.script(sse(DONE))
    call = ToolCall("call_1", "get_weather", '{"city": "Oslo"}')
    messages = [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Weather in Oslo?"),
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage("tool", "-3 C, snow", tool_call_id="call_1"),
        ChatMessage("assistant", "It is minus three and", interrupted=True),
    ]
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = [ToolSpec("get_weather", "Current weather in a city.", schema)]

    await collect(llm_for(server).stream(messages, tools))

    (request,) = server.requests
    assert request.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "-3 C, snow"},
        {"role": "assistant", "content": "It is minus three and"},
    ]
    assert request.body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city.",
                "parameters": schema,
            },
        }
    ]


async def test_bad_messages_fail_before_any_connection(server: ScriptedServer) -> None:
    llm = llm_for(server)
    with pytest.raises(LLMError, match="tool_call_id"):
        llm.stream([ChatMessage("tool", "result")])
    with pytest.raises(LLMError, match="unknown message role 'narrator'"):
        llm.stream([ChatMessage("narrator", "Once upon a time")])
    assert server.connections == 0


# ---------------------------------------------------------------------------------------
# errors: one clear LLMError each, never a raw httpx exception
# ---------------------------------------------------------------------------------------


async def test_http_401_quotes_the_openai_error_message(server: ScriptedServer) -> None:
    body = {
        "error": {
            "message": "Incorrect API key provided: sk-te****.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }
    server.script(respond(401, json.dumps(body).encode()))
    llm = llm_for(server, api_key="sk-test")

    assert await llm_error(llm.stream(HI)) == (
        f"HTTP 401 Unauthorized from {llm.url}: Incorrect API key provided: sk-te****."
    )


@pytest.mark.parametrize(
    ("status", "body", "content_type", "expected"),
    [
        (500, b"upstream model crashed\n", "text/plain", "upstream model crashed"),
        (404, b'{"error": "model \'x\' not found"}', "application/json", "model 'x' not found"),
        (400, b'{"object": "error", "message": "too long"}', "application/json", "too long"),
        (422, b'{"detail": "Field required"}', "application/json", "Field required"),
        (502, b"", "text/plain", None),
    ],
)
async def test_http_errors_quote_what_the_server_said(
    server: ScriptedServer, status: int, body: bytes, content_type: str, expected: str | None
) -> None:
    server.script(respond(status, body, content_type))
    llm = llm_for(server)
    message = await llm_error(llm.stream(HI))
    assert message.startswith(f"HTTP {status} ")
    assert f" from {llm.url}" in message
    if expected is None:
        assert message.endswith(llm.url)
    else:
        assert message.endswith(f": {expected}")


async def test_an_error_body_is_cut_to_one_short_line(server: ScriptedServer) -> None:
    server.script(respond(500, b"<html>\n" + b"x" * 50_000 + b"\n</html>", "text/html"))
    message = await llm_error(llm_for(server).stream(HI))
    assert "\n" not in message
    assert len(message) < 320
    assert message.endswith("…")


async def test_malformed_json_names_the_line(server: ScriptedServer) -> None:
    server.script(sse(delta("ok"), 'data: {"choices": [\n\n', DONE))
    llm = llm_for(server)
    stream = llm.stream(HI)

    assert await anext(stream) == "ok"
    with pytest.raises(LLMError) as caught:
        await anext(stream)
    assert str(caught.value) == (
        f'malformed JSON in server-sent event at line 3 from {llm.url}: {{"choices": ['
    )


async def test_an_error_event_mid_stream_is_reported(server: ScriptedServer) -> None:
    server.script(sse(delta("a"), event({"error": {"message": "model overloaded"}})))
    llm = llm_for(server)
    assert await llm_error(llm.stream(HI)) == (
        f"{llm.url} reported an error mid-stream: model overloaded"
    )


async def test_a_stall_mid_stream_is_reported_and_disconnects(server: ScriptedServer) -> None:
    server.script(stall(delta("a")))
    llm = llm_for(server, stall_timeout_s=0.3)
    stream = llm.stream(HI)

    assert await anext(stream) == "a"
    started = time.monotonic()
    with pytest.raises(LLMError) as caught:
        await anext(stream)
    waited = time.monotonic() - started

    assert str(caught.value) == f"stalled: no data from {llm.url} for 0.3 s after 1 tokens"
    assert 0.25 < waited < 2.0
    await disconnect_seen(server.exchanges[0])


async def test_no_response_at_all_is_a_timeout(server: ScriptedServer) -> None:
    async def never_answer(exchange: Exchange) -> None:
        await exchange.wait_disconnect()

    server.script(never_answer)
    llm = llm_for(server, stall_timeout_s=0.2)
    assert await llm_error(llm.stream(HI)) == f"no response from {llm.url} within 0.2 s"


async def test_connection_refused_names_the_url() -> None:
    llm = OpenAICompatLLM(base_url=f"http://127.0.0.1:{closed_port()}/v1", model="m")
    assert await llm_error(llm.stream(HI)) == (
        f"connection refused by {llm.url}: is the server running?"
    )


async def test_an_unknown_host_names_the_host_and_the_url() -> None:
    llm = OpenAICompatLLM(base_url="http://no-such-host.invalid/v1", model="m")
    message = await llm_error(llm.stream(HI))
    assert message.startswith(
        "cannot resolve host 'no-such-host.invalid' of "
        "http://no-such-host.invalid/v1/chat/completions: "
    )


async def test_a_connection_cut_mid_chunk_is_reported(server: ScriptedServer) -> None:
    server.script(cut_mid_chunk(delta("a")))
    llm = llm_for(server)
    stream = llm.stream(HI)
    assert await anext(stream) == "a"
    with pytest.raises(LLMError) as caught:
        await anext(stream)
    assert str(caught.value).startswith(f"connection to {llm.url} broke mid-response: ")


async def test_json_instead_of_a_stream_is_reported(server: ScriptedServer) -> None:
    server.script(respond(200, b'{"choices": [{"message": {"content": "hi"}}]}'))
    llm = llm_for(server)
    assert await llm_error(llm.stream(HI)) == (
        f"{llm.url} answered with JSON instead of a server-sent event stream: "
        '{"choices": [{"message": {"content": "hi"}}]}'
    )


def test_a_url_without_scheme_is_refused_at_once() -> None:
    with pytest.raises(LLMError, match="http:// or https://"):
        OpenAICompatLLM(base_url="localhost:8000/v1", model="m")


# ---------------------------------------------------------------------------------------
# cancellation: what the server sees
# ---------------------------------------------------------------------------------------


async def test_aclose_mid_stream_drops_the_connection_at_once(server: ScriptedServer) -> None:
    server.script(endless(interval_s=0.005))
    stream = llm_for(server).stream(HI)
    for _ in range(5):
        assert isinstance(await anext(stream), str)

    cancelled_at = time.monotonic()
    await stream.aclose()
    closed = time.monotonic() - cancelled_at
    seen = await disconnect_seen(server.exchanges[0])

    assert closed < 0.05, f"aclose() took {closed * 1e3:.1f} ms"
    assert seen - cancelled_at < 0.5, f"server saw it after {(seen - cancelled_at) * 1e3:.0f} ms"
    assert stream.closed_at is not None
    assert stream.tokens_after(stream.closed_at) == 0
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    first_close = stream.closed_at
    await stream.aclose()
    assert stream.closed_at == first_close


async def test_aclose_before_iteration_sends_nothing(server: ScriptedServer) -> None:
    stream = llm_for(server).stream(HI)
    await stream.aclose()
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    await asyncio.sleep(0.05)
    assert server.connections == 0


async def test_cancelling_a_pending_read_closes_the_stream(server: ScriptedServer) -> None:
    """A consumer task cancelled while it waits for the next token (what happens to the
    session's generate task on barge-in) leaves no connection behind."""
    server.script(endless(interval_s=1.0))
    stream = llm_for(server).stream(HI)
    assert isinstance(await anext(stream), str)
    reader = asyncio.create_task(anext(stream))
    await asyncio.sleep(0.05)

    cancelled_at = time.monotonic()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader

    assert await disconnect_seen(server.exchanges[0]) - cancelled_at < 0.5
    assert stream.closed_at is not None


async def test_aclose_from_another_task_ends_a_pending_read_quietly(
    server: ScriptedServer,
) -> None:
    server.script(endless(interval_s=1.0))
    stream = llm_for(server).stream(HI)
    assert isinstance(await anext(stream), str)
    reader = asyncio.create_task(anext(stream))
    await asyncio.sleep(0.05)

    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await reader
    await disconnect_seen(server.exchanges[0], within_s=0.5)


# ---------------------------------------------------------------------------------------
# configuration and protocols
# ---------------------------------------------------------------------------------------


def test_from_env_fills_only_what_is_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BARGEIN_LLM_URL", "http://bargein:1/v1")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://openai:2/v1")
    monkeypatch.setenv("BARGEIN_LLM_MODEL", "env-model")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")

    from_env = OpenAICompatLLM.from_env(stall_timeout_s=3.0)
    assert (from_env.base_url, from_env.model, from_env.api_key) == (
        "http://bargein:1/v1",
        "env-model",
        "sk-env",
    )
    assert from_env.stall_timeout_s == 3.0

    given = OpenAICompatLLM.from_env("http://given:3/v1", "given-model", "sk-given")
    assert (given.base_url, given.model, given.api_key) == (
        "http://given:3/v1",
        "given-model",
        "sk-given",
    )

    monkeypatch.delenv("BARGEIN_LLM_URL")
    assert OpenAICompatLLM.from_env().base_url == "http://openai:2/v1"
    monkeypatch.delenv("OPENAI_BASE_URL")
    monkeypatch.delenv("OPENAI_API_KEY")
    fallback = OpenAICompatLLM.from_env()
    assert (fallback.base_url, fallback.api_key) == (DEFAULT_BASE_URL, None)

    monkeypatch.delenv("BARGEIN_LLM_MODEL")
    with pytest.raises(LLMError, match="BARGEIN_LLM_MODEL"):
        OpenAICompatLLM.from_env()


def test_is_a_language_model_whose_streams_keep_a_ledger() -> None:
    llm = OpenAICompatLLM(base_url="http://127.0.0.1:9/v1", model="m")
    assert isinstance(llm, LanguageModel)
    assert isinstance(llm.stream(HI), TokenLedger)


# ---------------------------------------------------------------------------------------
# the cancellation benchmark, on doubles and on the scripted server
# ---------------------------------------------------------------------------------------

LONG_TEXT = " ".join(f"word{i}" for i in range(200))


class LeakyStream:
    """A stream whose ``aclose`` is slow and lets two more tokens through: what a
    provider that only stops "eventually" looks like to the benchmark."""

    def __init__(self) -> None:
        self.emitted_at: list[float] = []

    def __aiter__(self) -> LeakyStream:
        return self

    async def __anext__(self) -> str:
        await asyncio.sleep(0.001)
        self.emitted_at.append(asyncio.get_running_loop().time())
        return " tok"

    async def aclose(self) -> None:
        for _ in range(2):
            await self.__anext__()
        await asyncio.sleep(0.03)

    def tokens_after(self, t: float) -> int:
        return sum(1 for at in self.emitted_at if at > t)


class LeakyLLM:
    def stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()
    ) -> LeakyStream:
        return LeakyStream()


async def test_measure_cancel_on_the_scripted_provider() -> None:
    llm = ScriptedLLM([LONG_TEXT], first_token_s=0.001, tokens_per_s=500.0)
    measured = await measure_cancel(llm, HI, after_tokens=5)
    assert measured.tokens_before_cancel == 5
    assert measured.tokens_after_cancel == 0
    assert 0.0 <= measured.cancel_to_closed_s < 0.01
    assert measured.server_stop_after_cancel_s is None
    assert measured.server_decodes_after_cancel is None


async def test_measure_cancel_sees_a_slow_leaky_close() -> None:
    measured = await measure_cancel(LeakyLLM(), HI, after_tokens=3)
    assert measured.tokens_after_cancel == 2
    assert measured.cancel_to_closed_s >= 0.03


async def test_measure_cancel_refuses_a_reply_that_ends_first() -> None:
    llm = ScriptedLLM(["too short"], first_token_s=0.001, tokens_per_s=500.0)
    with pytest.raises(ValueError, match="ended after 2 tokens"):
        await measure_cancel(llm, HI, after_tokens=5)


async def test_measure_cancel_over_http_with_a_server_observer(server: ScriptedServer) -> None:
    server.script(endless(interval_s=0.005))

    def chunk_times() -> Sequence[float]:
        return server.exchanges[0].chunk_times

    measured = await measure_cancel(
        llm_for(server), HI, after_tokens=5, server_decodes=chunk_times, settle_s=0.2
    )
    assert measured.tokens_before_cancel == 5
    assert measured.tokens_after_cancel == 0
    assert measured.cancel_to_closed_s < 0.05
    assert measured.server_stop_after_cancel_s is not None
    assert measured.server_stop_after_cancel_s < 0.1
    assert measured.server_decodes_after_cancel is not None
    assert measured.server_decodes_after_cancel <= 3


async def test_run_cancel_bench_summarises_percentiles() -> None:
    llm = ScriptedLLM([LONG_TEXT], first_token_s=0.001, tokens_per_s=500.0)
    summary = await run_cancel_bench(llm, repeats=4, after_tokens=3)

    assert summary["repeats"] == 4
    assert summary["tokens_after_cancel_p50"] == summary["tokens_after_cancel_p95"] == 0.0
    assert 0.0 <= summary["cancel_to_closed_ms_p50"] <= summary["cancel_to_closed_ms_p95"]
    assert "server_stop_after_cancel_ms_p50" not in summary
    assert len(summary["measurements"]) == 4
    assert all(isinstance(m, CancelMeasurement) for m in summary["measurements"])
    assert len(llm.calls) == 4


# ---------------------------------------------------------------------------------------
# the real server: llama-cpp-python + Gemma 3 270M, decodes timestamped server-side
# ---------------------------------------------------------------------------------------

STORY = [
    ChatMessage("system", "You are a storyteller. Answer at length."),
    ChatMessage("user", "Tell me a long story about a dragon who learns to cook."),
]


@pytest.fixture(scope="module")
def llama_server() -> Iterator[LlamaServer]:
    model_path = default_model_path()
    server = LlamaServer(str(model_path))
    server.start()
    yield server
    server.stop()


def gemma(server: LlamaServer, max_tokens: int) -> OpenAICompatLLM:
    # Greedy decoding: the same long reply every run, never an early end.
    return OpenAICompatLLM(
        base_url=server.base_url, model="gemma-3-270m", max_tokens=max_tokens, temperature=0.0
    )


async def test_real_server_stops_decoding_when_the_stream_is_closed(
    llama_server: LlamaServer,
) -> None:
    decodes = llama_server.decodes
    requested = time.monotonic()
    measured = await measure_cancel(
        gemma(llama_server, max_tokens=400),
        STORY,
        after_tokens=10,
        server_decodes=decodes,
        settle_s=0.6,
    )
    step = decodes.step_s(since=requested)
    bound = max(0.1, 3 * step)  # one step in flight, one to notice, slack for a busy CPU
    ran = decodes.after(requested)

    assert measured.tokens_before_cancel == 10
    assert measured.cancel_to_closed_s < 0.05
    assert measured.server_decodes_after_cancel is not None
    assert measured.server_decodes_after_cancel <= 2, ran
    assert measured.server_stop_after_cancel_s is not None
    assert measured.server_stop_after_cancel_s < bound
    # The prompt, ten tokens and the odd one in flight: nowhere near the 400 asked for.
    assert len(ran) < 30
    # And idle for good: no decode in the next half second either.
    await asyncio.sleep(0.5)
    assert decodes.after(max(ran)) == []

    # The server is free: the next request is served at once, to its end.
    before_next = time.monotonic()
    stream = gemma(llama_server, max_tokens=5).stream([ChatMessage("user", "Say hello.")])
    pieces = await asyncio.wait_for(collect(stream), timeout=10.0)
    assert pieces and all(isinstance(p, str) for p in pieces)
    assert stream.finish_reason in ("length", "stop")
    assert decodes.after(before_next)[0] - before_next < 1.0


async def test_real_server_keeps_decoding_for_a_stream_left_open(
    llama_server: LlamaServer,
) -> None:
    """The control: stop reading but do not close, and the server carries on. The decode
    log therefore can see a server that does not stop, and the stop above is the close's
    doing."""
    decodes = llama_server.decodes
    stream = gemma(llama_server, max_tokens=400).stream(STORY)
    try:
        for _ in range(10):
            await anext(stream)
        stopped_reading = time.monotonic()
        deadline = stopped_reading + 10.0
        while len(decodes.after(stopped_reading)) < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert len(decodes.after(stopped_reading)) >= 10
    finally:
        await stream.aclose()
    closed = time.monotonic()
    await asyncio.sleep(0.5)
    assert len(decodes.after(closed)) <= 2


async def test_real_server_cancel_bench(llama_server: LlamaServer) -> None:
    started = time.monotonic()
    summary = await run_cancel_bench(
        gemma(llama_server, max_tokens=400),
        repeats=3,
        after_tokens=5,
        messages=DEFAULT_MESSAGES,
        server_decodes=llama_server.decodes,
        settle_s=0.4,
    )
    step_ms = llama_server.decodes.step_s(since=started) * 1e3
    print(
        f"real-server cancel bench (decode step {step_ms:.0f} ms):",
        {k: round(v, 2) for k, v in summary.items() if isinstance(v, float)},
    )
    assert summary["cancel_to_closed_ms_p95"] < 50.0
    assert summary["tokens_after_cancel_p95"] == 0.0
    assert summary["server_decodes_after_cancel_p95"] <= 2
    assert summary["server_stop_after_cancel_ms_p95"] < max(100.0, 3 * step_ms)
