"""``bargein chat``: the text chat on the virtual clock, the command end to end.

The scripted LLM streams on the loop's clock (first token after 0.15 s, then 30 tokens a
second), so on the virtual clock every token time is exact and a line can be made to
arrive between two given tokens.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from bargein import chat as chat_module
from bargein import cli
from bargein.audio_device import DeviceProbe, SoundDeviceSink
from bargein.chat import (
    DEFAULT_FALLBACK,
    SpokenReplies,
    TranscriptPrinter,
    chat_text,
    describe_llm_error,
    make_llm,
    split_sentences,
)
from bargein.clock import run, sleep_until
from bargein.conversation import DEFAULT_SYSTEM_PROMPT, Conversation
from bargein.playout import PlayoutTracker
from bargein.providers.base import ChatMessage, LLMError, ToolCall, ToolSpec
from bargein.providers.scripted import ScriptedLLM
from bargein.session import Reply
from tests.doubles import TTS_RATE, WORD_SAMPLES, WordTTS
from tests.llm_servers import closed_port

ROOT = Path(__file__).resolve().parents[1]
STORY = "One two three four five six seven eight nine ten."
SURE = "Sure, I will stop."


async def lines_at(
    script: Sequence[tuple[float, str]], arrived: list[float] | None = None
) -> AsyncIterator[str]:
    """Yield each line at its clock time; lines due at once arrive together, as a pipe's do."""
    loop = asyncio.get_running_loop()
    for at, line in script:
        if at > loop.time():
            await sleep_until(at)
        if arrived is not None:
            arrived.append(loop.time())
        yield line


def chat(
    llm: Any,
    script: Sequence[tuple[float, str]],
    **options: Any,
) -> tuple[Conversation, str, str, float, list[float]]:
    """Run a text chat on the virtual clock; returns (conversation, out, err, end, arrivals)."""
    out, err = io.StringIO(), io.StringIO()
    arrived: list[float] = []

    async def main() -> tuple[Conversation, float]:
        conversation = await chat_text(llm, lines_at(script, arrived), out, err=err, **options)
        return conversation, asyncio.get_running_loop().time()

    conversation, end = run(main(), "virtual")
    return conversation, out.getvalue(), err.getvalue(), end, arrived


def token_time(index: int, llm: ScriptedLLM, start: float = 0.0) -> float:
    """When the scripted LLM emits its ``index``-th token (0-based)."""
    return start + llm.first_token_s + index / llm.tokens_per_s


def test_a_two_turn_chat_prints_and_records_both_replies_exactly() -> None:
    llm = ScriptedLLM(["Hello there. How can I help?", "It is noon."])
    conversation, out, err, _, _ = chat(llm, [(0.0, "hi"), (5.0, "what time is it")])
    assert out == "agent> Hello there. How can I help?\nagent> It is noon.\n"
    assert err == ""
    assert conversation.messages == [
        ChatMessage("user", "hi"),
        ChatMessage("assistant", "Hello there. How can I help?"),
        ChatMessage("user", "what time is it"),
        ChatMessage("assistant", "It is noon."),
    ]
    # Plain turns: the model saw the history and no interruption note.
    assert llm.calls[1] == [
        ChatMessage("system", DEFAULT_SYSTEM_PROMPT),
        *conversation.messages[:3],
    ]
    assert all(stream.closed for stream in llm.streams)  # closed at once, not at collection


def test_lines_already_waiting_do_not_interrupt_so_piped_input_is_a_conversation() -> None:
    llm = ScriptedLLM(["Hello there.", "It is noon."])
    conversation, out, _, _, _ = chat(
        llm, [(0.0, "hi"), (0.0, ""), (0.0, "what time is it")], echo=True
    )
    assert out == "you> hi\nagent> Hello there.\nyou> what time is it\nagent> It is noon.\n"
    assert [m.interrupted for m in conversation.messages] == [False] * 4
    assert len(llm.calls) == 2  # the empty line was ignored


def test_a_line_typed_mid_reply_closes_the_stream_and_the_next_reply_responds() -> None:
    llm = ScriptedLLM([STORY, SURE])
    cut_at = (token_time(4, llm) + token_time(5, llm)) / 2  # after "five", before "six"
    conversation, out, err, _, arrived = chat(llm, [(0.0, "tell me a story"), (cut_at, "stop")])
    heard = "One two three four five"
    assert out == f"agent> {heard} [interrupted]\nagent> {SURE}\n"
    assert err == ""
    first = llm.streams[0]
    assert first.closed  # aclose() reached the provider
    assert first.tokens_after(arrived[1]) == 0  # nothing generated after the cut
    assert len(first.emitted_at) == 5
    assert conversation.messages == [
        ChatMessage("user", "tell me a story"),
        ChatMessage("assistant", heard, interrupted=True),
        ChatMessage("user", "stop"),
        ChatMessage("assistant", SURE),
    ]
    *history, note = llm.calls[1]
    assert history == [ChatMessage("system", DEFAULT_SYSTEM_PROMPT), *conversation.messages[:3]]
    assert note.role == "system"
    assert "The user interrupted your previous reply" in note.content
    assert f'They heard only: "{heard}"' in note.content
    assert len(llm.calls[1]) == 5


def test_the_respond_note_is_for_the_next_reply_only() -> None:
    llm = ScriptedLLM([STORY, SURE, "Noon."])
    cut_at = (token_time(1, llm) + token_time(2, llm)) / 2
    chat(llm, [(0.0, "story"), (cut_at, "stop"), (5.0, "time?")])
    assert llm.calls[1][-1].role == "system"
    assert [m.role for m in llm.calls[2]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]


def test_a_line_before_the_first_word_joins_the_users_turn() -> None:
    llm = ScriptedLLM([STORY, SURE])
    conversation, out, _, _, _ = chat(llm, [(0.0, "what is"), (0.1, "the time")])
    assert llm.streams[0].closed and llm.streams[0].emitted_at == []
    assert out == f"agent> {SURE}\n"
    assert conversation.messages == [
        ChatMessage("user", "what is the time"),
        ChatMessage("assistant", SURE),
    ]
    assert llm.calls[1][-1] == ChatMessage("user", "what is the time")  # a plain turn


def test_end_of_input_waits_for_the_reply_in_progress() -> None:
    llm = ScriptedLLM([STORY])
    conversation, out, _, end, _ = chat(llm, [(0.0, "tell me a story")])
    assert out == f"agent> {STORY}\n"
    assert conversation.messages[-1] == ChatMessage("assistant", STORY)
    last_token = llm.streams[0].emitted_at[-1]
    assert last_token == pytest.approx(token_time(len(STORY.split()) - 1, llm))
    assert end >= last_token


def test_a_failing_llm_prints_the_error_and_the_fallback_and_the_chat_goes_on() -> None:
    llm = ScriptedLLM([STORY, SURE], fail_after=2)
    conversation, out, err, _, _ = chat(llm, [(0.0, "story"), (5.0, "are you there")])
    assert err == (
        "error: RuntimeError: scripted failure after 2 tokens\n"
        "error: RuntimeError: scripted failure after 2 tokens\n"
    )
    assert out == (
        f"agent> One two\nagent> {DEFAULT_FALLBACK}\nagent> Sure, I\nagent> {DEFAULT_FALLBACK}\n"
    )
    # Only what was printed is kept, marked cut; the fallback is not the model's words.
    assert conversation.messages == [
        ChatMessage("user", "story"),
        ChatMessage("assistant", "One two", interrupted=True),
        ChatMessage("user", "are you there"),
        ChatMessage("assistant", "Sure, I", interrupted=True),
    ]
    assert len(llm.calls) == 2 and llm.calls[1][1:] == conversation.messages[:3]
    assert all(stream.closed for stream in llm.streams)


class DownLLM:
    """An LLM whose server is down for the first ``failures`` calls."""

    def __init__(self, failures: int, then: ScriptedLLM) -> None:
        self.failures = failures
        self.then = then
        self.calls: list[list[ChatMessage]] = []

    def stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[str | ToolCall]:
        self.calls.append(list(messages))
        if len(self.calls) <= self.failures:
            return self._refuse()
        return self.then.stream(messages, tools)

    async def _refuse(self) -> AsyncIterator[str | ToolCall]:
        await asyncio.sleep(0.05)
        raise LLMError("could not connect to http://127.0.0.1:9/v1/chat/completions")
        yield ""  # an async generator, like a real streaming client


@pytest.mark.parametrize("silent", [False, True])
def test_an_unreachable_server_costs_one_reply(silent: bool) -> None:
    llm = DownLLM(1, ScriptedLLM(["Here now."]))
    options: dict[str, Any] = {"fallback": None} if silent else {}
    conversation, out, err, _, _ = chat(llm, [(0.0, "hello"), (1.0, "hello?")], **options)
    assert err == "error: could not connect to http://127.0.0.1:9/v1/chat/completions\n"
    fallback = "" if silent else f"agent> {DEFAULT_FALLBACK}\n"
    assert out == fallback + "agent> Here now.\n"
    # The failed reply added nothing; the retry joined the unanswered turn.
    assert conversation.messages == [
        ChatMessage("user", "hello hello?"),
        ChatMessage("assistant", "Here now."),
    ]


def test_custom_fallback_text_is_printed() -> None:
    llm = ScriptedLLM([STORY], fail_after=0)
    _, out, err, _, _ = chat(llm, [(0.0, "hi")], fallback="Hmm?")
    assert out == "agent> Hmm?\n" and err.startswith("error: ")


class ToolThenText:
    """Calls a tool mid-stream: the chat offers none, so the call must not break it."""

    def stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[str | ToolCall]:
        async def pieces() -> AsyncIterator[str | ToolCall]:
            script: list[str | ToolCall] = ["\n  Hi", ToolCall("1", "clock"), " there."]
            for piece in script:
                await asyncio.sleep(0.01)
                yield piece

        return pieces()


def test_leading_whitespace_and_tool_calls_are_not_printed() -> None:
    conversation, out, _, _, _ = chat(ToolThenText(), [(0.0, "hi")])
    assert out == "agent> Hi there.\n"
    assert conversation.messages[-1] == ChatMessage("assistant", "Hi there.")


def test_a_reply_is_printed_as_it_streams() -> None:
    llm = ScriptedLLM([STORY])
    out = io.StringIO()
    seen: list[tuple[float, str]] = []

    async def watch() -> None:
        for n in range(1, 60):
            await sleep_until(n * 0.01 + 0.001)
            seen.append((n * 0.01, out.getvalue()))

    async def main() -> None:
        watcher = asyncio.create_task(watch())
        await chat_text(llm, lines_at([(0.0, "go")]), out, err=io.StringIO())
        await watcher

    run(main(), "virtual")
    at_quarter = next(text for t, text in seen if t >= 0.25 - 1e-9)
    assert at_quarter == "agent> One two three four"  # 0.15, 0.183, 0.217, 0.25


# -- speaking in text mode --------------------------------------------------------------


def spoken_chat(
    llm: ScriptedLLM, script: Sequence[tuple[float, str]]
) -> tuple[Conversation, str, SoundDeviceSink, list[int], dict[int, float]]:
    """A text chat with a voice: WordTTS into a SoundDeviceSink on a fake 10 ms device.

    Returns the conversation, stdout, the sink, the reply 1 cursor at each flush, and
    when each reply was heard to its last sample.
    """
    sink = SoundDeviceSink(TTS_RATE)
    cleared: list[int] = []
    original_clear = sink.clear

    def clear() -> None:
        cleared.append(sink.heard(1))
        original_clear()

    sink.clear = clear  # type: ignore[method-assign]
    heard_all: dict[int, float] = {}
    out = io.StringIO()

    async def device(stop: asyncio.Event) -> None:
        t = 0.0
        while not stop.is_set():
            t += 0.01
            await sleep_until(t)
            sink.fill(TTS_RATE // 100)
            for reply_id in (1, 2):
                if sink.heard(reply_id) and sink.idle:
                    heard_all.setdefault(reply_id, t)

    async def main() -> Conversation:
        stop = asyncio.Event()
        task = asyncio.create_task(device(stop))
        voice = SpokenReplies(WordTTS(), sink)
        conversation = await chat_text(llm, lines_at(script), out, err=io.StringIO(), voice=voice)
        stop.set()
        await task
        return conversation

    conversation = run(main(), "virtual")
    return conversation, out.getvalue(), sink, cleared, heard_all


def test_spoken_replies_are_heard_whole_before_the_next_queued_line() -> None:
    llm = ScriptedLLM(["One two. Three four.", "Five six."])
    conversation, out, sink, cleared, heard_all = spoken_chat(llm, [(0.0, "a"), (0.0, "b")])
    assert out == "agent> One two. Three four.\nagent> Five six.\n"
    assert cleared == []
    assert sink.heard(1) == 4 * WORD_SAMPLES and sink.heard(2) == 2 * WORD_SAMPLES
    # The second reply was requested only once the first had been heard to the end.
    first_token = llm.streams[1].emitted_at[0]
    assert heard_all[1] + llm.first_token_s <= first_token <= heard_all[1] + 0.2
    assert [m.interrupted for m in conversation.messages] == [False] * 4


LONG = STORY + " Eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen."


def test_an_interrupting_line_also_flushes_the_audio() -> None:
    llm = ScriptedLLM([LONG, SURE])
    cut_at = 0.6  # the first sentence is being said; the text is still streaming
    conversation, out, sink, cleared, _ = spoken_chat(llm, [(0.0, "story"), (cut_at, "stop")])
    assert len(cleared) == 1
    assert 0 < cleared[0] < 10 * WORD_SAMPLES
    assert sink.heard(1) == cleared[0]  # nothing of reply 1 played after the flush
    printed = " ".join(LONG.split()[:14])  # tokens at 0.15 + k/30 up to 0.6
    assert out.startswith(f"agent> {printed} [interrupted]\n")
    assert conversation.messages[1] == ChatMessage("assistant", printed, interrupted=True)


def test_a_line_while_the_last_words_are_still_spoken_flushes_but_keeps_the_text() -> None:
    llm = ScriptedLLM([STORY, SURE])
    cut_at = 0.7  # all ten words printed by 0.45; the audio runs until 0.45 + 1.0 s
    conversation, out, _, cleared, _ = spoken_chat(llm, [(0.0, "story"), (cut_at, "stop")])
    assert len(cleared) == 1 and cleared[0] < 10 * WORD_SAMPLES
    assert out == f"agent> {STORY}\nagent> {SURE}\n"
    # Every word was on the screen, so the reply counts as said, and there is no note.
    assert conversation.messages[1] == ChatMessage("assistant", STORY)
    assert llm.calls[1][-1] == ChatMessage("user", "stop")


def test_a_voice_needs_the_sinks_sample_rate() -> None:
    with pytest.raises(ValueError, match="22050 Hz but the TTS speaks 8000 Hz"):
        SpokenReplies(WordTTS(), SoundDeviceSink(22050))


def test_split_sentences_keeps_the_unfinished_rest() -> None:
    assert split_sentences("Hi there. How are") == (["Hi there."], "How are")
    assert split_sentences('He said "stop!" Then left. ') == (['He said "stop!"', "Then left."], "")
    assert split_sentences("3.5 apples") == ([], "3.5 apples")


def test_describe_llm_error_prefers_the_providers_own_words() -> None:
    assert describe_llm_error(LLMError("HTTP 404 from http://x/v1: no such model")) == (
        "HTTP 404 from http://x/v1: no such model"
    )
    group = ExceptionGroup("reply", [ValueError("bad\njson")])
    assert describe_llm_error(group) == "ValueError: bad json"


# -- voice mode's transcript ------------------------------------------------------------


def test_the_transcript_shows_turns_streamed_text_and_what_was_heard() -> None:
    out, err = io.StringIO(), io.StringIO()
    printer = TranscriptPrinter(out, err)
    conversation = Conversation()
    replies: dict[int, Reply] = {}

    conversation.add_user("tell me a story")
    replies[1] = Reply(1, PlayoutTracker(TTS_RATE))
    printer.update(conversation.messages, replies)
    replies[1].text = "Once upon"
    printer.update(conversation.messages, replies)
    replies[1].text = "Once upon a time there"
    conversation.add_assistant("Once upon a", interrupted=True)
    printer.update(conversation.messages, replies)
    conversation.add_user("wait")
    replies[2] = Reply(2, PlayoutTracker(TTS_RATE))
    printer.update(conversation.messages, replies)
    conversation.extend_last_user("what time is it")  # the session merged more words
    replies[2].text = " It is noon."
    printer.update(conversation.messages, replies, ["recogniser: boom"])
    conversation.add_assistant("It is noon.")
    printer.update(conversation.messages, replies, ["recogniser: boom"])

    assert out.getvalue() == (
        "you> tell me a story\n"
        'agent> Once upon a time there [interrupted; heard up to "Once upon a"]\n'
        "you> wait\n"
        "you> wait what time is it\n"
        "agent> It is noon.\n"
    )
    assert err.getvalue() == "error: recogniser: boom\n"


def test_the_transcript_reports_a_failed_reply_once() -> None:
    out, err = io.StringIO(), io.StringIO()
    printer = TranscriptPrinter(out, err)
    replies = {1: Reply(1, PlayoutTracker(TTS_RATE), error="LLMError: refused")}
    printer.update([ChatMessage("user", "hi")], replies)
    printer.update([ChatMessage("user", "hi")], replies)
    assert out.getvalue() == "you> hi\n"
    assert err.getvalue() == "error: reply 1: LLMError: refused\n"


# -- the command --------------------------------------------------------------------------


def test_make_llm_refuses_an_unknown_llm() -> None:
    with pytest.raises(chat_module.ChatSetupError, match="'local' or an http"):
        make_llm("ftp://example")


def test_without_a_sound_device_the_command_falls_back_to_text(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        chat_module, "probe_devices", lambda: DeviceProbe(False, False, "no sound device found")
    )
    made: list[tuple[str, str | None, str | None]] = []

    def fake_llm(llm: str, model: str | None = None, api_key: str | None = None) -> ScriptedLLM:
        made.append((llm, model, api_key))
        return ScriptedLLM(["Hello.", "Noon."], first_token_s=0.001, tokens_per_s=1000.0)

    monkeypatch.setattr(chat_module, "make_llm", fake_llm)
    voiced: list[DeviceProbe] = []
    monkeypatch.setattr(chat_module, "_text_voice", lambda probe: voiced.append(probe))
    script = tmp_path / "lines.txt"
    script.write_text("hi\n\nwhat time is it\n")
    with script.open() as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        code = cli.main(["chat", "--model", "m.gguf", "--system", "Be brief."])
    captured = capsys.readouterr()
    assert code == 0
    assert made == [("local", "m.gguf", None)]
    assert voiced == [DeviceProbe(False, False, "no sound device found")]
    assert captured.out == "you> hi\nagent> Hello.\nyou> what time is it\nagent> Noon.\n"
    assert "no sound device found; chatting in text mode" in captured.err


def test_the_command_reports_a_bad_llm_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["chat", "--text", "--llm", "gopher://x"]) == 2
    assert "error: --llm must be 'local' or an http(s):// URL" in capsys.readouterr().err


def test_fallback_and_silent_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["chat", "--fallback", "x", "--silent-on-error"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("silent", [False, True])
def test_the_command_survives_a_server_that_is_not_there(silent: bool) -> None:
    port = closed_port()
    url = f"http://127.0.0.1:{port}/v1"
    command = [sys.executable, "-m", "bargein.cli", "chat", "--text", "--llm", url, "--model", "x"]
    if silent:
        command.append("--silent-on-error")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BARGEIN_LLM"))}
    result = subprocess.run(
        command,
        input="hello\nare you there\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2
    assert all(f"127.0.0.1:{port}" in line for line in errors)
    assert "Traceback" not in result.stderr
    replies = [] if silent else [f"agent> {DEFAULT_FALLBACK}"] * 2
    assert result.stdout.splitlines() == [
        "you> hello",
        *replies[:1],
        "you> are you there",
        *replies[1:],
    ]


def test_stdin_lines_reads_a_pipe_as_it_is_written() -> None:
    read_fd, write_fd = os.pipe()

    async def main() -> list[str]:
        lines = chat_module.stdin_lines(read_fd)
        os.write(write_fd, b"one\ntwo\r\nthr")
        got = [await anext(lines), await anext(lines)]  # the partial line is held back
        os.write(write_fd, "ee\n\u00e9t\u00e9".encode())
        os.close(write_fd)
        got.extend([line async for line in lines])  # a last line without a newline counts
        return got

    try:
        got = run(main())
    finally:
        os.close(read_fd)
    assert got == ["one", "two", "three", "\u00e9t\u00e9"]


def test_a_voice_sink_is_closed_with_the_chat(monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[bool] = []

    class Sink(SoundDeviceSink):
        def close(self) -> None:
            closed.append(True)

    voice = SpokenReplies(WordTTS(), Sink(TTS_RATE))
    monkeypatch.setattr(chat_module, "_text_voice", lambda probe: voice)
    monkeypatch.setattr(chat_module, "stdin_lines", lambda: lines_at([]))
    args = cli.build_parser().parse_args(["chat", "--text"])
    conversation = run(chat_module._text_main(ScriptedLLM(["x"]), args, DeviceProbe(True, True)))
    assert conversation.messages == [] and closed == [True]


def test_a_piped_chat_with_the_embedded_model_answers_every_line() -> None:
    # The whole local default: Gemma 3 270M in process, no server, no sound device.
    result = subprocess.run(
        [sys.executable, "-m", "bargein.cli", "chat", "--text"],
        input="hello there\nwhat is a good name for a cat\n",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "error" not in result.stderr
    lines = result.stdout.splitlines()
    assert [line for line in lines if line.startswith("you> ")] == [
        "you> hello there",
        "you> what is a good name for a cat",
    ]
    replies = [line.removeprefix("agent> ") for line in lines if line.startswith("agent> ")]
    assert len(replies) == 2 and all(len(reply.split()) >= 2 for reply in replies)
