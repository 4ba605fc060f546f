"""The embedded llama.cpp LLM, with the real packaged Gemma 3 270M model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bargein.providers.base import ChatMessage, LLMError, ToolSpec
from bargein.providers.llamacpp import (
    TRANSCRIPT_PREAMBLE,
    LlamaCppLLM,
    default_model_path,
    transcript_prompt,
)

QUESTION = [
    ChatMessage("system", "You are a helpful voice assistant."),
    ChatMessage("user", "Can you tell me how a bicycle works?"),
]


@pytest.fixture(scope="module")
def llm() -> Iterator[LlamaCppLLM]:
    yield LlamaCppLLM(max_tokens=60)


def test_the_packaged_model_is_joined_once_and_rejoined_if_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BARGEIN_CACHE", str(tmp_path))
    path = default_model_path()
    assert path.is_relative_to(tmp_path) and path.stat().st_size > 100_000_000
    stamp = path.stat().st_mtime_ns
    assert default_model_path() == path and path.stat().st_mtime_ns == stamp  # reused
    with path.open("r+b") as f:  # a damaged file is not trusted
        f.truncate(1000)
    assert default_model_path() == path and path.stat().st_size > 100_000_000
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial left behind


def test_the_transcript_marks_cuts_and_tool_results() -> None:
    prompt = transcript_prompt(
        [
            ChatMessage("system", "You work for Acme Air."),
            ChatMessage("user", "When is my flight?"),
            ChatMessage("assistant", "Your flight leaves at", interrupted=True),
            ChatMessage("user", "Wait,   which gate?"),
            ChatMessage("tool", '{"gate": 22}', tool_call_id="c1"),
        ]
    )
    assert prompt.startswith(TRANSCRIPT_PREAMBLE)  # the cached part comes first, whatever the call
    assert prompt.endswith(
        "(About this call: You work for Acme Air.)\n"
        "Caller: When is my flight?\nAgent: Your flight leaves at -\n"
        'Caller: Wait, which gate?\n[result: {"gate": 22}]\nAgent:'
    )


async def test_a_reply_is_one_line_of_several_words(llm: LlamaCppLLM) -> None:
    stream = llm.stream(QUESTION)
    text = "".join([piece async for piece in stream if isinstance(piece, str)])
    assert len(text.split()) >= 5
    assert "\n" not in text and "Caller:" not in text
    assert text == text.strip()
    assert 0 < len(stream.emitted_at) <= 60


async def test_cancel_stops_between_two_decode_steps(llm: LlamaCppLLM) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(3):
        stream = LlamaCppLLM.stream(llm, QUESTION)
        seen = 0
        async for _piece in stream:
            seen += 1
            if seen == 6:
                break
        await stream.aclose()
        returned = loop.time()
        assert stream.closed_at is not None and stream.stopped_at is not None
        # No decode step began after the cancel, and none after aclose returned.
        assert stream.tokens_after(stream.closed_at) == 0
        assert stream.tokens_after(returned) == 0
        # The step that was running when the cancel came was aborted, not finished.
        steps = np.diff(stream.emitted_at)
        assert llm._abort.active
        assert stream.stopped_at - stream.closed_at < min(0.02, float(np.median(steps)))
        count = len(stream.emitted_at)
        await asyncio.sleep(0.2)
        assert len(stream.emitted_at) == count  # and it stays stopped


async def test_generation_leaves_the_event_loop_free(llm: LlamaCppLLM) -> None:
    loop = asyncio.get_running_loop()
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = loop.time()
        while not done.is_set():
            await asyncio.sleep(0.01)
            gaps.append(loop.time() - last)
            last = loop.time()

    task = asyncio.create_task(ticker())
    pieces = [piece async for piece in llm.stream(QUESTION)]
    done.set()
    await task
    assert len(pieces) > 5 and len(gaps) > 10
    # 10 ms audio ticks keep coming while the model generates (generous for a loaded CI).
    assert float(np.percentile(gaps, 95)) < 0.1


def test_a_missing_model_or_tools_on_a_base_model_are_clear_errors(
    llm: LlamaCppLLM, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(LLMError, match=r"no GGUF model at .*nope\.gguf"):
        LlamaCppLLM(missing)
    with pytest.raises(LLMError, match="cannot call tools"):
        llm.stream(QUESTION, [ToolSpec("book", "Book a table.")])


async def test_the_chat_template_path_streams_and_cancels_too() -> None:
    # The base model makes poor chat, but the path (template, streaming chunks, the
    # same worker and stop flag) is what an instruction-tuned GGUF would use.
    chat = LlamaCppLLM(prompt_format="chat", chat_format="gemma", temperature=0.0)
    stream = chat.stream([ChatMessage("user", "Tell me a long story about a dragon.")])
    pieces = []
    async for piece in stream:
        pieces.append(piece)
        if len(pieces) == 5:
            break
    await stream.aclose()
    assert all(isinstance(p, str) and p for p in pieces)
    assert stream.closed_at is not None
    assert stream.tokens_after(stream.closed_at) == 0


async def test_without_the_native_abort_a_cancel_waits_for_one_step_at_most() -> None:
    between = LlamaCppLLM(max_tokens=60, abort_mid_step=False)
    assert not between._abort.active
    stream = between.stream(QUESTION)
    seen = 0
    async for _piece in stream:
        seen += 1
        if seen == 6:
            break
    await stream.aclose()
    assert stream.closed_at is not None and stream.stopped_at is not None
    assert stream.tokens_after(stream.closed_at) == 0
    steps = np.diff(stream.emitted_at)
    assert stream.stopped_at - stream.closed_at <= float(steps.max()) + 0.02
