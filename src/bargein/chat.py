"""``bargein chat``: talk to an agent now, by voice or by typing.

Voice mode runs the full :class:`~bargein.session.Session` on the computer's microphone
and speakers. Text mode is the same idea with lines instead of speech, and exists so the
interruption behaviour can be tried (and scripted, and tested) anywhere, including a
machine without a sound card:

* a line typed while a reply streams interrupts it: the LLM stream is closed at once,
  the conversation keeps only what was printed, marked interrupted, and the next reply
  is built under the ``respond`` policy, so the model acknowledges the interruption
  instead of repeating itself;
* a line that was already waiting when a reply started does not interrupt that reply.
  Piped input arrives all at once, and ``printf 'hi\\nwhat time is it\\n' | bargein chat
  --text`` should be a two-turn conversation, not one reply cut off before its first
  word; input written to the pipe later (``(echo hi; sleep 1; echo stop) | ...``) still
  interrupts, exactly as typing does;
* a line typed before the reply printed anything is added to the user's turn, as the
  voice session merges words said before the agent spoke;
* an LLM failure costs one reply, never the chat: the error goes to stderr, a fallback
  line (or nothing) to stdout, and the next line is answered as usual.

The core, :func:`chat_text`, takes any async line source and any writable text stream,
so it runs on the virtual clock in tests; :func:`stdin_lines` is the terminal's source.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bargein.audio_device import AudioDeviceError, DeviceProbe, probe_devices
from bargein.clock import run_blocking
from bargein.conversation import Conversation, InterruptedReply, build_llm_input
from bargein.providers.base import (
    ChatMessage,
    FloatAudio,
    LanguageModel,
    LLMError,
    ProviderError,
    TextToSpeech,
    ToolCall,
)

__all__ = [
    "AGENT_PREFIX",
    "DEFAULT_FALLBACK",
    "USER_PREFIX",
    "ChatSetupError",
    "PlaybackSink",
    "SpokenReplies",
    "TextChat",
    "TextOut",
    "TranscriptPrinter",
    "chat_text",
    "chat_voice",
    "describe_llm_error",
    "make_llm",
    "run_chat",
    "split_sentences",
    "stdin_lines",
]

log = logging.getLogger("bargein.chat")

DEFAULT_FALLBACK = "Sorry, I lost my train of thought. Could you say that again?"
AGENT_PREFIX = "agent> "
USER_PREFIX = "you> "
INTERRUPTED_MARK = " [interrupted]"

_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*\s+")


class ChatSetupError(RuntimeError):
    """The chat could not start (bad ``--llm``, a provider that failed to load)."""


class TextOut(Protocol):
    """Where replies are printed: ``sys.stdout``, a ``StringIO``, anything with these."""

    def write(self, text: str, /) -> object: ...

    def flush(self) -> None: ...


class PlaybackSink(Protocol):
    """An audio sink that can also say when everything written has been heard.

    Text mode with a speaker waits for that before taking the next queued line, so a
    scripted conversation is spoken whole instead of each reply cutting off the last.
    """

    sample_rate: int

    def write(self, reply_id: int, audio: FloatAudio, /) -> None: ...

    def clear(self) -> None: ...

    @property
    def idle(self) -> bool: ...


def split_sentences(text: str) -> tuple[list[str], str]:
    """Complete sentences of ``text`` and the unfinished rest.

    The voice starts speaking after the first sentence rather than after the whole
    reply, and a sentence is the smallest piece Piper intones naturally.
    """
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        sentence = text[start : match.end()].strip()
        if sentence:
            sentences.append(sentence)
        start = match.end()
    return sentences, text[start:]


def describe_llm_error(exc: BaseException) -> str:
    """One line for a failed reply.

    An :class:`LLMError` is written for the user already (it names the URL or the model
    file); anything else is a bug or a surprise, so its type is kept.
    """
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = " ".join(str(exc).split())
    if isinstance(exc, LLMError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------
# Speaking text replies
# ---------------------------------------------------------------------------------------


class SpokenReplies:
    """Voices streamed reply text, sentence by sentence, through a playback sink."""

    def __init__(self, tts: TextToSpeech, sink: PlaybackSink, *, poll_s: float = 0.02) -> None:
        if sink.sample_rate != tts.sample_rate:
            raise ValueError(
                f"sink plays {sink.sample_rate} Hz but the TTS speaks {tts.sample_rate} Hz"
            )
        self.tts = tts
        self.sink = sink
        self.poll_s = poll_s

    async def speak(self, reply_id: int, sentences: asyncio.Queue[str | None]) -> None:
        """Say each sentence as it arrives (``None`` ends the reply), then wait until heard."""
        while (sentence := await sentences.get()) is not None:
            chunks = await run_blocking(lambda s=sentence: list(self.tts.synthesize(s)))
            for chunk in chunks:
                self.sink.write(reply_id, chunk.audio)
        while not self.sink.idle:
            await asyncio.sleep(self.poll_s)

    def flush(self) -> None:
        self.sink.clear()


# ---------------------------------------------------------------------------------------
# Text chat
# ---------------------------------------------------------------------------------------


@dataclass
class _Reply:
    number: int
    backlog: int
    """Lines that had arrived when this reply started: those never interrupt it."""
    task: asyncio.Task[None] | None = None
    printed: str = ""
    text_done: bool = False


class TextChat:
    """One text conversation; :func:`chat_text` is the usual way in."""

    def __init__(
        self,
        llm: LanguageModel,
        out: TextOut,
        *,
        err: TextOut | None = None,
        conversation: Conversation | None = None,
        fallback: str | None = DEFAULT_FALLBACK,
        echo: bool = False,
        voice: SpokenReplies | None = None,
    ) -> None:
        self.llm = llm
        self.out = out
        self.err: TextOut = err if err is not None else sys.stderr
        self.conversation = conversation if conversation is not None else Conversation()
        self.fallback = fallback
        self.echo = echo
        self.voice = voice
        self.errors: list[str] = []
        self._arrived = 0
        self._replies = 0
        self._reply: _Reply | None = None
        self._interrupted: InterruptedReply | None = None

    async def run(self, lines: AsyncIterable[str]) -> Conversation:
        """Answer every line of ``lines``; return once they end and the last reply is done."""
        queue: asyncio.Queue[tuple[int, str | None]] = asyncio.Queue()
        pump = asyncio.create_task(self._pump(lines, queue))
        getter: asyncio.Task[tuple[int, str | None]] | None = None
        try:
            while True:
                if getter is None:
                    getter = asyncio.create_task(queue.get())
                reply = self._reply
                if reply is not None and reply.task is not None:
                    await asyncio.wait({reply.task, getter}, return_when=asyncio.FIRST_COMPLETED)
                    if reply.task.done():  # finished first (or together): not interrupted
                        self._settle(reply, cut=False)
                        continue
                seq, line = await getter
                getter = None
                if line is None:
                    if self._reply is not None:
                        await self._finish(self._reply)
                    break
                text = line.strip()
                if not text:
                    continue
                if self._reply is not None:
                    if seq <= self._reply.backlog:
                        await self._finish(self._reply)
                    else:
                        await self._interrupt(self._reply)
                self._start(text)
        finally:
            if getter is not None:
                getter.cancel()
            pump.cancel()
            if self._reply is not None and self._reply.task is not None:
                self._reply.task.cancel()
                await asyncio.wait({self._reply.task})
                if self._reply.printed and not self._reply.text_done:
                    self._write("\n")  # leave the terminal on a fresh line
                self._reply = None
                if self.voice is not None:
                    self.voice.flush()
        await asyncio.wait({pump})
        if not pump.cancelled() and (exc := pump.exception()) is not None:
            raise exc
        return self.conversation

    async def _pump(
        self, lines: AsyncIterable[str], queue: asyncio.Queue[tuple[int, str | None]]
    ) -> None:
        try:
            async for line in lines:
                self._arrived += 1
                queue.put_nowait((self._arrived, line))
        finally:
            queue.put_nowait((self._arrived + 1, None))

    # -- one reply ----------------------------------------------------------------------

    def _start(self, text: str) -> None:
        if self.echo:
            self._write(f"{USER_PREFIX}{text}\n")
        # Joins the user's last turn when it got no recorded answer (cut before any word
        # was printed, or failed): the model then sees one turn, and chat templates that
        # insist on alternating roles stay satisfied.
        self.conversation.extend_last_user(text)
        interrupted, self._interrupted = self._interrupted, None
        if interrupted is not None:
            messages = build_llm_input(self.conversation, "respond", interrupted)
        else:
            messages = build_llm_input(self.conversation, "turn")
        self._replies += 1
        reply = _Reply(self._replies, backlog=self._arrived)
        reply.task = asyncio.create_task(self._run_reply(reply, messages))
        self._reply = reply

    async def _run_reply(self, reply: _Reply, messages: Sequence[ChatMessage]) -> None:
        if self.voice is None:
            await self._generate(reply, messages, None)
            return
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._generate(reply, messages, sentences))
            group.create_task(self.voice.speak(reply.number, sentences))

    async def _generate(
        self,
        reply: _Reply,
        messages: Sequence[ChatMessage],
        sentences: asyncio.Queue[str | None] | None,
    ) -> None:
        pending = ""
        stream = self.llm.stream(messages)
        try:
            async for piece in stream:
                if isinstance(piece, ToolCall):
                    continue  # the chat offers no tools; a model that calls one anyway
                if not reply.printed:
                    piece = piece.lstrip()
                    if not piece:
                        continue
                    self.out.write(AGENT_PREFIX)
                self.out.write(piece)
                self.out.flush()
                reply.printed += piece
                if sentences is not None:
                    done, pending = split_sentences(pending + piece)
                    for sentence in done:
                        sentences.put_nowait(sentence)
        finally:
            # Close now, not at garbage collection: a local model must stop computing and
            # an HTTP server must see the disconnect the moment the user cuts in.
            await _close_stream(stream)
        reply.text_done = True
        self._write(("" if reply.printed else AGENT_PREFIX) + "\n")
        if sentences is not None:
            if pending.strip():
                sentences.put_nowait(pending.strip())
            sentences.put_nowait(None)

    async def _finish(self, reply: _Reply) -> None:
        assert reply.task is not None
        await asyncio.wait({reply.task})
        self._settle(reply, cut=False)

    async def _interrupt(self, reply: _Reply) -> None:
        assert reply.task is not None
        reply.task.cancel()
        await asyncio.wait({reply.task})
        if self.voice is not None:
            self.voice.flush()
        self._settle(reply, cut=True)

    def _settle(self, reply: _Reply, *, cut: bool) -> None:
        """Record what the user got of a reply that has ended, however it ended."""
        self._reply = None
        assert reply.task is not None and reply.task.done()
        printed = reply.printed.rstrip()
        error = None if reply.task.cancelled() else reply.task.exception()
        if error is None and (reply.text_done or not cut):
            # Completed, or cut only while its audio was still playing: every word was
            # on the screen, so the whole reply counts as said.
            self.conversation.add_assistant(printed)
            return
        if not reply.text_done and printed:
            self._write(INTERRUPTED_MARK + "\n" if error is None else "\n")
            self.conversation.add_assistant(printed, interrupted=True)
        if error is None:
            if printed:
                # Everything generated was printed at once, so nothing went unsaid.
                self._interrupted = InterruptedReply(heard=printed, unsaid="")
            return
        message = describe_llm_error(error)
        self.errors.append(message)
        self.err.write(f"error: {message}\n")
        self.err.flush()
        if reply.text_done:
            self.conversation.add_assistant(printed)
        if self.fallback:
            self._write(f"{AGENT_PREFIX}{self.fallback}\n")

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


async def _close_stream(stream: object) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception as exc:  # a provider failing to close must not hide why it closed
        log.warning("closing the LLM stream failed: %s", describe_llm_error(exc))


async def chat_text(
    llm: LanguageModel,
    lines: AsyncIterable[str],
    out: TextOut,
    *,
    err: TextOut | None = None,
    conversation: Conversation | None = None,
    fallback: str | None = DEFAULT_FALLBACK,
    echo: bool = False,
    voice: SpokenReplies | None = None,
) -> Conversation:
    """Chat over lines of text until ``lines`` ends; returns the conversation.

    ``fallback`` is printed after a failed reply (``None``: nothing); ``echo`` prints
    each user line too, for input that the terminal did not already show (a pipe);
    ``voice`` also speaks the replies.
    """
    chat = TextChat(
        llm, out, err=err, conversation=conversation, fallback=fallback, echo=echo, voice=voice
    )
    return await chat.run(lines)


async def stdin_lines(fd: int | None = None) -> AsyncIterator[str]:
    """Lines of standard input as they arrive, without blocking the event loop.

    A daemon thread does the blocking reads, so a terminal, a pipe and a plain file all
    work (the loop's own pipe reader refuses files), and Ctrl-C is never stuck behind a
    read. Every line of one read is handed over together: lines that were already
    waiting arrive as one backlog, which is what keeps piped input from interrupting
    itself.
    """
    loop = asyncio.get_running_loop()
    source = sys.stdin.fileno() if fd is None else fd
    batches: asyncio.Queue[list[str] | None] = asyncio.Queue()

    def hand_over(batch: list[str] | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is reading
            loop.call_soon_threadsafe(batches.put_nowait, batch)

    def read() -> None:
        buffer = b""
        try:
            while chunk := os.read(source, 65536):
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                if complete:
                    hand_over([_decode(raw) for raw in complete])
            if buffer:
                hand_over([_decode(buffer)])
        except OSError as exc:
            log.warning("reading standard input failed: %s", exc)
        finally:
            hand_over(None)

    threading.Thread(target=read, name="bargein-stdin", daemon=True).start()
    while (batch := await batches.get()) is not None:
        for line in batch:
            yield line


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").rstrip("\r")


# ---------------------------------------------------------------------------------------
# Voice chat
# ---------------------------------------------------------------------------------------


class _ReplyView(Protocol):
    reply_id: int
    text: str
    error: str | None


class TranscriptPrinter:
    """Shows a voice session on the terminal while it happens.

    The user's turns come from the conversation (the text the LLM answers); the agent's
    text is shown as it is generated, and when the user cuts in the line ends with what
    the conversation recorded as heard, which is the library's whole point to see.
    """

    def __init__(self, out: TextOut, err: TextOut) -> None:
        self.out = out
        self.err = err
        self._contents: list[str] = []
        self._reply_id: int | None = None
        self._shown = 0
        self._line_open = False
        self._closed = True
        self._errors: set[str] = set()

    def update(
        self,
        messages: Sequence[ChatMessage],
        replies: Mapping[int, _ReplyView],
        errors: Sequence[str] = (),
    ) -> None:
        for index, message in enumerate(messages):
            if index < len(self._contents) and self._contents[index] == message.content:
                continue
            if index < len(self._contents):
                self._contents[index] = message.content
            else:
                self._contents.append(message.content)
            if message.role == "user":
                self._end_line()
                self._write(f"{USER_PREFIX}{message.content}\n")
            elif message.role == "assistant":
                self._assistant(message, replies)
        if replies:
            newest = max(replies)
            if newest != self._reply_id:
                self._end_line()
                self._reply_id, self._shown, self._closed = newest, 0, False
            if not self._closed:
                self._stream(replies[newest])
        found = [*errors, *(f"reply {r.reply_id}: {r.error}" for r in replies.values() if r.error)]
        for error in found:
            if error not in self._errors:
                self._errors.add(error)
                self._end_line()
                self.err.write(f"error: {error}\n")
                self.err.flush()

    def _assistant(self, message: ChatMessage, replies: Mapping[int, _ReplyView]) -> None:
        current = replies.get(self._reply_id) if self._reply_id is not None else None
        if current is None or self._closed:
            # The reply started and ended between two updates: show what was recorded.
            self._end_line()
            self._write(AGENT_PREFIX + message.content)
            self._line_open = True
            if replies:
                self._reply_id, self._closed = max(replies), True
        else:
            self._stream(current)
            self._closed = True
        if message.interrupted:
            tail = " ".join(message.content.split()[-6:])
            self._write(f' [interrupted; heard up to "{tail}"]' if tail else INTERRUPTED_MARK)
        self._end_line()

    def _stream(self, reply: _ReplyView) -> None:
        new = reply.text[self._shown :]
        self._shown = len(reply.text)
        if not self._line_open:
            new = new.lstrip()
            if not new:
                return
            self._write(AGENT_PREFIX)
            self._line_open = True
        self._write(new)

    def _end_line(self) -> None:
        if self._line_open:
            self._write("\n")
            self._line_open = False

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


async def chat_voice(
    llm: LanguageModel,
    out: TextOut,
    err: TextOut,
    *,
    system_prompt: str | None = None,
    fallback: str | None = DEFAULT_FALLBACK,
    poll_s: float = 0.05,
) -> Conversation:
    """Talk through the microphone and speakers until cancelled (Ctrl-C).

    Not exercised in this repository's tests: it needs real sound hardware. Everything
    it is made of (the session, the sink's buffer logic, the microphone hand-over, the
    transcript printer) is tested on its own.
    """
    from bargein.audio_device import Microphone, SoundDeviceSink
    from bargein.providers.piper import PiperTTS
    from bargein.providers.silero import SileroVAD
    from bargein.providers.whisper import WhisperTranscriber
    from bargein.session import Session, SessionConfig
    from bargein.transports.stack import offloaded_recognizer

    loop = asyncio.get_running_loop()
    tts = PiperTTS()
    sink = SoundDeviceSink(tts.sample_rate, loop=loop)
    session = Session(
        vad=SileroVAD(),
        # In a process of its own: decoding holds the interpreter lock, which the sound
        # card's callbacks need in time (bargein.providers.offloaded).
        recognizer=offloaded_recognizer(1)(),
        llm=llm,
        tts=tts,
        sink=sink,
        config=SessionConfig(system_prompt=system_prompt, fallback_line=fallback),
        transcriber=WhisperTranscriber(),
    )
    sink.on_playout = session.playout
    printer = TranscriptPrinter(out, err)
    async with session:
        with sink, Microphone(session.push_audio, loop):
            err.write("Listening. Speak to the agent; Ctrl-C ends the chat. ")
            err.write("(Use headphones: without echo cancellation it may hear itself.)\n")
            err.flush()
            try:
                while True:
                    await asyncio.sleep(poll_s)
                    printer.update(session.conversation.messages, session.replies, session.errors)
            finally:
                printer.update(session.conversation.messages, session.replies, session.errors)
    return session.conversation


# ---------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------


def make_llm(llm: str, model: str | None = None, api_key: str | None = None) -> LanguageModel:
    """The model ``--llm`` names: ``local`` (embedded llama.cpp) or an OpenAI-style URL."""
    if llm == "local":
        try:
            from bargein.providers.llamacpp import LlamaCppLLM
        except ImportError as exc:
            raise ChatSetupError(
                f"the local model needs llama-cpp-python ({exc}); install it, or pass "
                "--llm http://HOST:PORT/v1 to use a server"
            ) from exc
        if model is None:
            local: LanguageModel = LlamaCppLLM.default()
        else:
            local = LlamaCppLLM(Path(model).expanduser())  # the path is its first field
        return local
    if llm.startswith(("http://", "https://")):
        try:
            from bargein.providers.openai_compat import OpenAICompatLLM
        except ImportError as exc:
            raise ChatSetupError(f"the HTTP model client is unavailable ({exc})") from exc
        remote: LanguageModel = OpenAICompatLLM.from_env(base_url=llm, model=model, api_key=api_key)
        return remote
    raise ChatSetupError(f"--llm must be 'local' or an http(s):// URL, got {llm!r}")


def _text_voice(probe: DeviceProbe) -> SpokenReplies | None:
    """Piper through the speakers, when there are speakers; never fatal."""
    if not probe.has_output:
        return None
    try:
        from bargein.audio_device import SoundDeviceSink
        from bargein.providers.piper import PiperTTS

        tts = PiperTTS()
        sink = SoundDeviceSink(tts.sample_rate)
        sink.open()
    except Exception as exc:
        print(f"warning: replies will not be spoken: {exc}", file=sys.stderr)
        return None
    return SpokenReplies(tts, sink)


async def _text_main(
    llm: LanguageModel, args: argparse.Namespace, probe: DeviceProbe
) -> Conversation:
    voice = _text_voice(probe)
    try:
        return await chat_text(
            llm,
            stdin_lines(),
            sys.stdout,
            err=sys.stderr,
            conversation=_conversation(args),
            fallback=None if args.silent_on_error else (args.fallback or DEFAULT_FALLBACK),
            echo=not sys.stdin.isatty(),
            voice=voice,
        )
    finally:
        if voice is not None:
            close = getattr(voice.sink, "close", None)
            if close is not None:
                close()


def _conversation(args: argparse.Namespace) -> Conversation:
    return Conversation(system_prompt=args.system) if args.system else Conversation()


def run_chat(args: argparse.Namespace) -> int:
    """The ``bargein chat`` command; returns the exit status."""
    probe = probe_devices()
    text_mode = bool(args.text) or not probe.duplex
    if not args.text and not probe.duplex:
        print(f"bargein chat: {probe.reason}; chatting in text mode.", file=sys.stderr)
    try:
        llm = make_llm(args.llm, args.model, args.api_key)
    except (ChatSetupError, ProviderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ChatSetupError) else 1
    if text_mode and sys.stdin.isatty():
        print("Type a line and press Enter; Ctrl-D ends the chat.", file=sys.stderr)
    try:
        if text_mode:
            asyncio.run(_text_main(llm, args, probe))
        else:
            fallback = None if args.silent_on_error else (args.fallback or DEFAULT_FALLBACK)
            voice = chat_voice(
                llm, sys.stdout, sys.stderr, system_prompt=args.system or None, fallback=fallback
            )
            asyncio.run(voice)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except (ProviderError, AudioDeviceError) as exc:  # a model or a device would not start
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
