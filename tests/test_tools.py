"""Tool calls inside replies, and what a barge-in does to them, on a virtual clock."""

from __future__ import annotations

import asyncio
import json

import pytest

from bargein.clock import run
from bargein.providers.base import ToolCall
from bargein.providers.scripted import ScriptedLLM
from bargein.session import Session, SessionConfig
from bargein.tools import CANCELLED_RESULT, Tool, ToolError, tool
from tests.doubles import LevelVAD, LoggingSpeaker, ScriptedRecognizer, Utterance, WordTTS, drive

STOP: Utterance = ([(1.2, ("stop",)), (1.3, ("stop",))], ("stop",))


def make(llm: ScriptedLLM, tools: list[Tool], **config: object) -> tuple[Session, LoggingSpeaker]:
    speaker = LoggingSpeaker([])
    session = Session(
        vad=LevelVAD(),
        recognizer=ScriptedRecognizer([STOP]),
        llm=llm,
        tts=WordTTS(),
        sink=speaker,
        config=SessionConfig(tools=tools, **config),  # type: ignore[arg-type]
    )
    return session, speaker


def test_a_tool_result_feeds_a_second_llm_call_and_stays_in_the_conversation() -> None:
    async def weather(city: str) -> dict[str, object]:
        return {"city": city, "sky": "clear"}

    call = ToolCall("call_1", "weather", json.dumps({"city": "Oslo"}))
    llm = ScriptedLLM([["Let me look.", call], "It is clear in Oslo."])
    session, speaker = make(llm, [tool(weather, description="Weather now.")])

    async def main() -> None:
        async with session:
            await drive(session, speaker, [], until=4.0)

    run(main(), "virtual")
    assert all(m.role != "tool" for m in llm.calls[0])
    second = llm.calls[1]
    assert [m.role for m in second[-2:]] == ["assistant", "tool"]
    assert second[-2].tool_calls == (call,)
    assert json.loads(second[-1].content) == {"city": "Oslo", "sky": "clear"}
    roles = [m.role for m in session.conversation.messages]
    assert roles == ["assistant", "tool", "assistant"]
    assert session.recorded[1] == "Let me look. It is clear in Oslo."


def test_an_interruption_cancels_a_safe_tool_and_records_that() -> None:
    started = asyncio.Event()
    finished: list[str] = []

    async def search(query: str) -> str:
        started.set()
        await asyncio.sleep(10.0)
        finished.append(query)
        return "results"

    call = ToolCall("c1", "search", '{"query": "flights"}')
    llm = ScriptedLLM([["One moment, I am searching.", call], "Done.", "Okay."])
    session, speaker = make(llm, [tool(search)])

    async def main() -> None:
        async with session:
            await drive(session, speaker, [(1.0, 1.6)], until=3.5)

    run(main(), "virtual")
    assert started.is_set() and finished == []
    [record] = session.timeline
    assert record.decision == "commit"
    tool_messages = [m for m in session.conversation.messages if m.role == "tool"]
    assert [m.content for m in tool_messages] == [CANCELLED_RESULT]
    # The next reply's LLM call sees the cancelled call, paired with its request.
    roles = [m.role for m in llm.calls[-1]]
    assert roles.index("tool") == roles.index("assistant") + 1


def test_an_interruption_does_not_tear_down_an_unsafe_tool() -> None:
    bookings: list[str] = []

    async def book(slot: str) -> str:
        await asyncio.sleep(3.0)  # the user cuts in, and is answered, meanwhile
        bookings.append(slot)
        return f"booked {slot}"

    call = ToolCall("c1", "book", '{"slot": "tuesday 9am"}')
    llm = ScriptedLLM([["Booking that now.", call], "All set.", "Okay."])
    session, speaker = make(llm, [tool(book, cancel_safe=False)])

    async def main() -> None:
        async with session:
            await drive(session, speaker, [(1.0, 1.6)], until=5.0)

    run(main(), "virtual")
    assert session.timeline[0].decision == "commit"
    assert session.replies[1].cancelled_at is not None
    assert bookings == ["tuesday 9am"]  # made exactly once, after the interruption
    tool_messages = [m for m in session.conversation.messages if m.role == "tool"]
    assert [m.content for m in tool_messages] == ["booked tuesday 9am"]
    # The reply to the interruption was asked while the booking was still running.
    assert len(llm.calls) == 2
    assert [m.content for m in llm.calls[1] if m.role == "tool"] == ["pending: still running"]


def test_a_failing_or_unknown_tool_is_reported_to_the_model() -> None:
    def broken() -> str:
        raise RuntimeError("backend down")

    calls = [ToolCall("a", "broken"), ToolCall("b", "missing"), ToolCall("c", "broken", "{x")]
    llm = ScriptedLLM([["Checking.", *calls], "Sorry, that did not work."])
    session, speaker = make(llm, [tool(broken)])

    async def main() -> None:
        async with session:
            await drive(session, speaker, [], until=4.0)

    run(main(), "virtual")
    results = [m.content for m in llm.calls[1] if m.role == "tool"]
    assert results[0] == "error: RuntimeError: backend down"
    assert results[1] == "error: there is no tool named 'missing'"
    assert results[2].startswith("error: ToolError: broken: arguments are not JSON")
    assert any("backend down" in e for e in session.errors)
    assert session.recorded[1] == "Checking. Sorry, that did not work."


def test_tool_arguments_must_be_a_json_object() -> None:
    t = tool(lambda: "x", name="noop")
    with pytest.raises(ToolError, match="JSON object"):
        asyncio.run(t.call("[1, 2]"))
    assert asyncio.run(t.call("")) == "x"
    assert t.spec.name == "noop"


def test_a_failed_llm_says_the_fallback_line_and_keeps_the_conversation() -> None:
    fallback = "Sorry, I lost my train of thought."
    llm = ScriptedLLM(["One two three four five six seven eight."], fail_after=3)
    session, speaker = make(llm, [], fallback_line=fallback)
    session.conversation.add_user("hello")

    async def main() -> None:
        async with session:
            await drive(session, speaker, [], until=4.0)

    run(main(), "virtual")
    assert session.recorded[1] == f"One two three {fallback}"
    assert session.replies[1].error is None  # the reply itself completed
    assert session.errors == ["reply 1: llm: RuntimeError: scripted failure after 3 tokens"]
    assert [m.content for m in session.conversation.messages] == [
        "hello",
        f"One two three {fallback}",
    ]
    assert session.policy.state.value == "listening"


def test_a_preemptive_reply_runs_no_tool_before_the_turn_is_over() -> None:
    calls_at: list[float] = []

    def book(slot: str) -> str:
        calls_at.append(asyncio.get_running_loop().time())
        return "booked"

    call = ToolCall("c1", "book", '{"slot": "9am"}')
    llm = ScriptedLLM(lambda m: "Done." if m[-1].role == "tool" else [call], first_token_s=0.05)
    first: Utterance = ([(0.6, ("book",))], ("book", "nine", "am"))
    second: Utterance = ([(1.7, ("please",))], ("please",))
    speaker = LoggingSpeaker([])
    session = Session(
        vad=LevelVAD(),
        recognizer=ScriptedRecognizer([first, second]),
        llm=llm,
        tts=WordTTS(),
        sink=speaker,
        config=SessionConfig(tools=[tool(book, cancel_safe=False)]),
    )

    async def main() -> None:
        async with session:
            await drive(session, speaker, [(0.5, 1.2), (1.6, 2.2)], until=4.0, request=False)

    run(main(), "virtual")
    assert session.policy.preemptions == {1: "discarded", 2: "released"}
    # Reply 1 asked for the booking while held, and was dropped: it never ran. Reply 2's
    # call ran once, at its release (speech end 2.2 s + 0.25 s + the 0.5 s turn end).
    assert len(calls_at) == 1
    assert calls_at[0] == pytest.approx(2.2 + 0.25 + 0.5, abs=0.04)


def test_a_dead_llm_server_costs_one_fallback_line_and_nothing_else() -> None:
    from bargein.providers.openai_compat import OpenAICompatLLM
    from tests.llm_servers import closed_port

    url = f"http://127.0.0.1:{closed_port()}/v1"
    fallback = "Sorry, I cannot think right now."
    speaker = LoggingSpeaker([])
    session = Session(
        vad=LevelVAD(),
        recognizer=ScriptedRecognizer([STOP]),
        llm=OpenAICompatLLM(base_url=url, model="any"),
        tts=WordTTS(),
        sink=speaker,
        config=SessionConfig(fallback_line=fallback),
    )
    session.conversation.add_user("hello")

    async def main() -> None:
        async with session:
            await drive(session, speaker, [], until=2.0)

    run(main(), "virtual")  # real sockets work on the virtual loop; the refusal is at once
    [error] = session.errors
    assert error.startswith("reply 1: llm: LLMError: connection refused by " + url)
    assert session.recorded[1] == fallback
    assert [m.content for m in session.conversation.messages] == ["hello", fallback]
    assert session.policy.state.value == "listening"


def test_a_tool_round_trip_over_the_openai_wire_format() -> None:
    from bargein.providers.openai_compat import OpenAICompatLLM
    from tests.llm_servers import DONE, ScriptedServer, delta, sse

    call = {"index": 0, "id": "call_1", "type": "function"}
    server = ScriptedServer()
    server.script(
        sse(
            delta("One moment."),
            delta(tool_calls=[{**call, "function": {"name": "weather", "arguments": '{"ci'}}]),
            delta(tool_calls=[{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}]),
            delta(finish="tool_calls"),
            DONE,
        ),
        sse(delta(" It is clear in Oslo."), delta(finish="stop"), DONE),
    )

    def weather(city: str) -> str:
        return f"clear in {city}"

    async def main() -> Session:
        await server.start()
        speaker = LoggingSpeaker([])
        session = Session(
            vad=LevelVAD(),
            recognizer=ScriptedRecognizer([STOP]),
            llm=OpenAICompatLLM(base_url=server.base_url, model="m"),
            tts=WordTTS(),
            sink=speaker,
            config=SessionConfig(tools=[tool(weather, description="Weather now.")]),
        )
        try:
            async with session:
                await drive(session, speaker, [], until=3.0)
        finally:
            await server.close()
        return session

    session = run(main(), "real")
    first, second = (request.body for request in server.requests)
    assert [t["function"]["name"] for t in first["tools"]] == ["weather"]
    assistant, result = second["messages"][-2:]
    assert assistant["tool_calls"][0]["function"] == {
        "name": "weather",
        "arguments": '{"city": "Oslo"}',
    }
    assert result == {"role": "tool", "content": "clear in Oslo", "tool_call_id": "call_1"}
    assert session.errors == []
