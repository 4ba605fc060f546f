"""A streaming chat model behind any OpenAI-compatible HTTP server.

OpenAI, vLLM, Ollama, the llama.cpp server, LM Studio and Groq all accept the same
``POST {base_url}/chat/completions`` request with ``"stream": true`` and answer with
server-sent events, one JSON chunk per ``data:`` line and ``data: [DONE]`` at the end.

What matters for barge-in is the end of a stream, not its start. None of these servers
has a "stop generating" call: the only way to stop a reply is to drop the connection, and
a server only notices that when the socket closes. So :meth:`OpenAICompatStream.aclose`
closes the response and the client at once instead of draining the body or leaving the
socket to garbage collection; each stream owns its client, so closing it cannot disturb
another reply, at the price of one new connection per reply (the TLS settings are built
once per :class:`OpenAICompatLLM` so that price stays a handshake, not a certificate
load).

Every failure surfaces as :class:`~bargein.providers.base.LLMError` with one line a user
can act on; no httpx exception escapes, because the session records errors as text and
the caller should not need to know which HTTP library sits underneath.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from bargein.providers.base import ChatMessage, LLMError, ToolCall, ToolSpec

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_BASE_URL",
    "MODEL_ENV",
    "URL_ENVS",
    "OpenAICompatLLM",
    "OpenAICompatStream",
    "to_openai_messages",
    "to_openai_tools",
]

URL_ENVS = ("BARGEIN_LLM_URL", "OPENAI_BASE_URL")
"""Environment variables naming the server's base URL, first one set wins."""
MODEL_ENV = "BARGEIN_LLM_MODEL"
API_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
"""Used by :meth:`OpenAICompatLLM.from_env` when no URL is given, as the OpenAI SDK does."""

_EXCERPT_CHARS = 200
_HTTPX_ERRORS = (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError)
"""Everything httpx raises; ``InvalidURL`` and ``StreamError`` are not ``HTTPError``."""
_ERROR_BODY_BYTES = 8192


# ---------------------------------------------------------------------------------------
# The request: messages and tools as OpenAI JSON
# ---------------------------------------------------------------------------------------


def to_openai_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """The conversation as the ``messages`` array of a chat completion request.

    ``interrupted`` is not sent: the session has already cut the text to what the user
    heard, and no server understands the flag.
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role in ("system", "user"):
            out.append({"role": message.role, "content": message.content})
        elif message.role == "assistant":
            item: dict[str, Any] = {"role": "assistant", "content": message.content}
            if message.tool_calls:
                item["tool_calls"] = [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                    for call in message.tool_calls
                ]
            out.append(item)
        elif message.role == "tool":
            if not message.tool_call_id:
                raise LLMError("a tool message needs the tool_call_id of the call it answers")
            out.append(
                {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
            )
        else:
            raise LLMError(f"unknown message role {message.role!r}")
    return out


def to_openai_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": dict(tool.parameters),
            },
        }
        for tool in tools
    ]


# ---------------------------------------------------------------------------------------
# The provider
# ---------------------------------------------------------------------------------------


@dataclass
class OpenAICompatLLM:
    """A :class:`~bargein.providers.base.LanguageModel` for an OpenAI-compatible server.

    ``base_url`` ends before ``/chat/completions`` (``http://127.0.0.1:8080/v1``).
    ``temperature`` and ``max_tokens`` are only sent when set, because some models
    reject parameters they do not support and every server has sensible defaults.

    ``connect_timeout_s`` bounds connecting (DNS included). ``stall_timeout_s`` bounds
    every wait for bytes: the response headers, and each gap between chunks once the
    stream flows; a server that goes quiet for that long is reported as stalled rather
    than leaving the agent silent forever.
    """

    base_url: str
    model: str
    api_key: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    connect_timeout_s: float = 5.0
    stall_timeout_s: float = 30.0
    _ssl_context: ssl.SSLContext | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not re.match(r"https?://[^/]", self.base_url):
            raise LLMError(f"LLM URL must start with http:// or https://, got {self.base_url!r}")

    @classmethod
    def from_env(
        cls,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        **options: Any,
    ) -> OpenAICompatLLM:
        """Fill what is not given from ``BARGEIN_LLM_URL`` (or ``OPENAI_BASE_URL``),
        ``BARGEIN_LLM_MODEL`` and ``OPENAI_API_KEY``; other settings pass through.

        The URL falls back to OpenAI's; the model has no fallback, since a guessed model
        name would only fail later with a less helpful 404.
        """
        if base_url is None:
            base_url = next(
                (os.environ[name] for name in URL_ENVS if os.environ.get(name)), DEFAULT_BASE_URL
            )
        if model is None:
            model = os.environ.get(MODEL_ENV) or None
        if model is None:
            raise LLMError(f"no LLM model given: pass model= or set {MODEL_ENV}")
        if api_key is None:
            api_key = os.environ.get(API_KEY_ENV) or None
        return cls(base_url=base_url, model=model, api_key=api_key, **options)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def request_body(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": to_openai_messages(messages),
            "stream": True,
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if tools:
            body["tools"] = to_openai_tools(tools)
        return body

    def stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()
    ) -> OpenAICompatStream:
        """A stream that sends the request on its first ``__anext__``, not here.

        Nothing touches the network until iteration starts, so a stream closed before
        that costs nothing; bad messages fail here, before any connection.
        """
        return OpenAICompatStream(self, self.request_body(messages, tools))

    def _client(self) -> httpx.AsyncClient:
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context()
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        timeout = httpx.Timeout(
            connect=self.connect_timeout_s,
            read=self.stall_timeout_s,
            write=self.stall_timeout_s,
            pool=self.connect_timeout_s,
        )
        return httpx.AsyncClient(headers=headers, timeout=timeout, verify=self._ssl_context)


# ---------------------------------------------------------------------------------------
# One streaming call
# ---------------------------------------------------------------------------------------


@dataclass
class _PartialToolCall:
    """A tool call whose pieces are still arriving."""

    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def add(self, fragment: Mapping[str, Any]) -> None:
        if not self.id and isinstance(fragment.get("id"), str):
            self.id = fragment["id"]
        function = fragment.get("function")
        if not isinstance(function, Mapping):
            return
        name = function.get("name")
        # OpenAI sends the whole name once; some servers repeat it in every fragment and
        # a few stream it in pieces. Appending only what differs handles all three.
        if isinstance(name, str) and name and name != self.name:
            self.name += name
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            self.arguments.append(arguments)


class OpenAICompatStream:
    """One chat completion: an async iterator of text pieces and tool calls.

    The ledger is for measuring cancellation: ``emitted_at`` holds the loop time at which
    each text piece arrived, ``closed_at`` the loop time of the first :meth:`aclose`, and
    ``finish_reason`` the server's reason when it ended the reply itself.
    """

    def __init__(self, llm: OpenAICompatLLM, body: dict[str, Any]) -> None:
        self.llm = llm
        self.body = body
        self.emitted_at: list[float] = []
        self.closed_at: float | None = None
        self.finish_reason: str | None = None
        self._client: httpx.AsyncClient | None = None
        self._response: httpx.Response | None = None
        self._lines: AsyncIterator[str] | None = None
        self._line_no = 0
        self._event: list[str] = []
        self._event_line = 0
        self._ready: deque[str | ToolCall] = deque()
        self._tool_calls: dict[int, _PartialToolCall] = {}
        self._closed = False
        self._done = False

    def __aiter__(self) -> OpenAICompatStream:
        return self

    async def __anext__(self) -> str | ToolCall:
        while not self._ready:
            if self._closed or self._done:
                raise StopAsyncIteration
            try:
                await self._pull()
            except asyncio.CancelledError:
                # A read cut in half cannot be resumed, and a caller cancelling a reply
                # wants the server to stop: close as if aclose() had been called.
                await self.aclose()
                raise
            except Exception as exc:
                if self._closed:  # aclose() shut the socket under a pending read
                    raise StopAsyncIteration from None
                # A failed stream stays failed: iterating again must not resend.
                self._done = True
                message = self._describe(exc) if isinstance(exc, _HTTPX_ERRORS) else None
                await self._shutdown()
                if message is not None:
                    raise LLMError(message) from None
                raise
        return self._ready.popleft()

    async def aclose(self) -> None:
        """Drop the connection now, so the server sees the disconnect and stops.

        Idempotent, and fine before iteration started (then nothing was ever sent).
        """
        if self.closed_at is None:
            self.closed_at = asyncio.get_running_loop().time()
        self._closed = True
        await self._shutdown()

    def tokens_after(self, t: float) -> int:
        """Text pieces received strictly after loop time ``t``."""
        return sum(1 for at in self.emitted_at if at > t)

    # -- reading ------------------------------------------------------------------------

    async def _pull(self) -> None:
        """Read one line off the wire (sending the request first if not yet sent)."""
        if self._lines is None:
            await self._open()
            if self._lines is None:  # closed while connecting
                return
        try:
            line = await anext(self._lines)
        except StopAsyncIteration:
            self._dispatch()
            self._finish()
        else:
            self._take_line(line)
        if self._done:
            await self._shutdown()

    def _take_line(self, line: str) -> None:
        self._line_no += 1
        if line == "":
            self._dispatch()
        elif line.startswith("data:"):
            if not self._event:
                self._event_line = self._line_no
            data = line[5:]
            self._event.append(data[1:] if data.startswith(" ") else data)
        # Comments (":"), "event:", "id:" and "retry:" carry nothing a chat stream needs.

    async def _open(self) -> None:
        client = self.llm._client()
        self._client = client
        response = await client.send(
            client.build_request("POST", self.llm.url, json=self.body), stream=True
        )
        self._response = response
        if self._closed:
            await self._shutdown()
            return
        if not response.is_success:
            raise LLMError(await self._http_error(response))
        content_type = response.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            excerpt = _excerpt(await _read_some(response))
            raise LLMError(
                f"{self.llm.url} answered with JSON instead of a server-sent event stream: "
                f"{excerpt}"
            )
        self._lines = response.aiter_lines()

    def _dispatch(self) -> None:
        """Handle one complete server-sent event (its ``data:`` lines joined)."""
        if not self._event:
            return
        data = "\n".join(self._event)
        self._event = []
        if data.strip() == "[DONE]":
            self._finish()
            return
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            raise LLMError(
                f"malformed JSON in server-sent event at line {self._event_line} from "
                f"{self.llm.url}: {_excerpt(data)}"
            ) from None
        if not isinstance(chunk, dict):
            raise LLMError(
                f"unexpected server-sent event at line {self._event_line} from "
                f"{self.llm.url}: {_excerpt(data)}"
            )
        if chunk.get("error"):
            raise LLMError(f"{self.llm.url} reported an error mid-stream: {_error_text(chunk)}")
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._take_choice(choice)

    def _take_choice(self, choice: Mapping[str, Any]) -> None:
        delta = choice.get("delta")
        if isinstance(delta, Mapping):
            content = delta.get("content")
            if isinstance(content, str) and content:
                self.emitted_at.append(asyncio.get_running_loop().time())
                self._ready.append(content)
            fragments = delta.get("tool_calls")
            for position, fragment in enumerate(fragments if isinstance(fragments, list) else ()):
                if isinstance(fragment, Mapping):
                    self._partial_for(fragment, position).add(fragment)
        finish_reason = choice.get("finish_reason")
        if isinstance(finish_reason, str) and finish_reason:
            self.finish_reason = finish_reason
            self._flush_tool_calls()

    def _partial_for(self, fragment: Mapping[str, Any], position: int) -> _PartialToolCall:
        index = fragment.get("index")
        if not isinstance(index, int):
            # A server that leaves out the index: a new id starts a new call, anything
            # else continues the latest one.
            new_id = fragment.get("id")
            latest = max(self._tool_calls, default=None)
            if latest is None or (new_id and new_id != self._tool_calls[latest].id):
                index = position if latest is None else latest + 1
            else:
                index = latest
        return self._tool_calls.setdefault(index, _PartialToolCall())

    def _flush_tool_calls(self) -> None:
        for index in sorted(self._tool_calls):
            partial = self._tool_calls[index]
            if not partial.name:
                raise LLMError(f"{self.llm.url} streamed a tool call without a function name")
            arguments = "".join(partial.arguments) or "{}"
            self._ready.append(ToolCall(partial.id or f"call_{index}", partial.name, arguments))
        self._tool_calls.clear()

    def _finish(self) -> None:
        """The reply is over: hand out unfinished tool calls; the socket goes next."""
        self._flush_tool_calls()
        self._done = True

    # -- closing and errors -------------------------------------------------------------

    async def _shutdown(self) -> None:
        response, client = self._response, self._client
        self._response = self._client = None
        self._lines = None
        # Errors while tearing down a connection we are abandoning say nothing useful.
        if response is not None:
            with contextlib.suppress(Exception):
                await response.aclose()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _http_error(self, response: httpx.Response) -> str:
        status = f"HTTP {response.status_code}"
        if response.reason_phrase:
            status += f" {response.reason_phrase}"
        try:
            body = await _read_some(response)
        except _HTTPX_ERRORS:
            body = b""
        text = _error_text_from_body(body)
        return f"{status} from {self.llm.url}" + (f": {text}" if text else "")

    def _describe(self, exc: Exception) -> str:
        url = self.llm.url
        if isinstance(exc, httpx.ConnectTimeout):
            return f"timed out after {self.llm.connect_timeout_s:g} s connecting to {url}"
        if isinstance(exc, httpx.ReadTimeout):
            if self._response is None or self._lines is None:
                return f"no response from {url} within {self.llm.stall_timeout_s:g} s"
            return (
                f"stalled: no data from {url} for {self.llm.stall_timeout_s:g} s "
                f"after {len(self.emitted_at)} tokens"
            )
        if isinstance(exc, httpx.TimeoutException):
            return f"timed out sending the request to {url}"
        if isinstance(exc, httpx.ConnectError):
            cause = _os_error(exc)
            if isinstance(cause, socket.gaierror):
                host = httpx.URL(url).host
                return f"cannot resolve host {host!r} of {url}: {cause.strerror or cause}"
            if cause is not None and cause.errno == errno.ECONNREFUSED:
                return f"connection refused by {url}: is the server running?"
            return f"cannot connect to {url}: {cause or exc}"
        if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
            return f"connection to {url} broke mid-response: {str(exc) or type(exc).__name__}"
        return f"request to {url} failed: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


async def _read_some(response: httpx.Response) -> bytes:
    """At most a few KB of a body: enough to quote, and an error page can be huge."""
    body = b""
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) >= _ERROR_BODY_BYTES:
            break
    return body[:_ERROR_BODY_BYTES]


def _excerpt(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT_CHARS else text[: _EXCERPT_CHARS - 1] + "…"


def _error_text(payload: Mapping[str, Any]) -> str:
    """The human part of an error body, in the shapes servers actually use.

    OpenAI, Groq and llama.cpp: ``{"error": {"message": ...}}``; Ollama:
    ``{"error": "..."}``; vLLM: ``{"message": ...}``; FastAPI apps: ``{"detail": ...}``.
    """
    error = payload.get("error")
    if isinstance(error, Mapping) and isinstance(error.get("message"), str):
        return _excerpt(error["message"])
    if isinstance(error, str):
        return _excerpt(error)
    for key in ("message", "detail"):
        if isinstance(payload.get(key), str):
            return _excerpt(payload[key])
    return _excerpt(json.dumps(payload))


def _error_text_from_body(body: bytes) -> str:
    try:
        payload = json.loads(body)
    except ValueError:
        return _excerpt(body)
    if isinstance(payload, dict):
        return _error_text(payload)
    return _excerpt(body)


def _os_error(exc: BaseException) -> OSError | None:
    """The socket error under httpx's wrapping, which is where the real reason is.

    anyio wraps the attempts at each address in a generic "All connection attempts
    failed", so the first error that carries an errno is the one worth quoting.
    """
    found = list(_os_errors(exc, set()))
    return next((e for e in found if e.errno is not None), found[0] if found else None)


def _os_errors(exc: BaseException, seen: set[int]) -> Iterator[OSError]:
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            yield current
        if isinstance(current, BaseExceptionGroup):
            for inner in current.exceptions:
                yield from _os_errors(inner, seen)
        current = current.__cause__ or current.__context__
