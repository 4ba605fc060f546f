"""A scripted HTTP server on loopback for the OpenAI-compatible provider's tests.

:class:`ScriptedServer` speaks raw HTTP/1.1 from ``asyncio.start_server`` and
answers each request with the next scripted handler, so a test controls every byte:
chunk boundaries, a status line, a stall, a connection cut half-way through a chunk. It
also notices, from its side of the socket, the moment a client disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------------------------------
# A scripted HTTP/1.1 server
# ---------------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    """Header names in lower case."""
    body: Any
    """The JSON body, parsed."""


@dataclass
class Exchange:
    """One connection as the server saw it; ``disconnected_at`` is ``time.monotonic()``."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    request: Request
    disconnected_at: float | None = None
    chunk_times: list[float] = field(default_factory=list)
    """``time.monotonic()`` after each chunk was handed to the socket."""

    async def start_stream(
        self, status: str = "200 OK", content_type: str = "text/event-stream"
    ) -> None:
        self.writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            "Transfer-Encoding: chunked\r\nCache-Control: no-store\r\n\r\n".encode()
        )
        await self.writer.drain()

    async def chunk(self, data: str | bytes) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self.writer.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
        await self.writer.drain()
        self.chunk_times.append(time.monotonic())

    async def end_stream(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()

    async def wait_disconnect(self) -> float:
        """Block until the client closes its end (EOF or reset), and return when."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(4096):
                pass
        if self.disconnected_at is None:
            self.disconnected_at = time.monotonic()
        return self.disconnected_at


Handler = Callable[[Exchange], Awaitable[None]]


class ScriptedServer:
    """Answers the n-th request with the n-th handler given to :meth:`script`."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.exchanges: list[Exchange] = []
        self.connections = 0
        self._handlers: deque[Handler] = deque()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *handlers: Handler) -> None:
        self._handlers.extend(handlers)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            request = await _read_request(reader)
            self.requests.append(request)
            exchange = Exchange(reader, writer, request)
            self.exchanges.append(exchange)
            handler = self._handlers.popleft() if self._handlers else respond(404, b"")
            await handler(exchange)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> Request:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    request_line, *header_lines = head.split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = {}
    for line in header_lines:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    raw = await reader.readexactly(length) if length else b""
    return Request(method, path, headers, json.loads(raw) if raw else None)


# -- handlers ---------------------------------------------------------------------------


def event(payload: Any) -> str:
    """One server-sent event carrying ``payload`` as JSON."""
    return f"data: {json.dumps(payload)}\n\n"


def delta(content: str | None = None, finish: str | None = None, **fields: Any) -> str:
    """A chat completion chunk event with ``delta.content`` and/or other delta fields."""
    body: dict[str, Any] = dict(fields)
    if content is not None:
        body["content"] = content
    choice = {"index": 0, "delta": body, "finish_reason": finish}
    return event({"object": "chat.completion.chunk", "choices": [choice]})


DONE = "data: [DONE]\n\n"


def sse(*parts: str | bytes | float, end: bool = True) -> Handler:
    """A 200 event stream writing each part as one HTTP chunk; a float sleeps that long."""

    async def handle(exchange: Exchange) -> None:
        await exchange.start_stream()
        for part in parts:
            if isinstance(part, float):
                await asyncio.sleep(part)
            else:
                await exchange.chunk(part)
        if end:
            await exchange.end_stream()

    return handle


def respond(status: int, body: bytes, content_type: str = "application/json") -> Handler:
    reasons = {200: "OK", 401: "Unauthorized", 404: "Not Found", 500: "Internal Server Error"}

    async def handle(exchange: Exchange) -> None:
        exchange.writer.write(
            f"HTTP/1.1 {status} {reasons.get(status, 'Status')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        await exchange.writer.drain()

    return handle


def stall(*parts: str) -> Handler:
    """Send the headers and ``parts``, then nothing at all until the client leaves."""

    async def handle(exchange: Exchange) -> None:
        await exchange.start_stream()
        for part in parts:
            await exchange.chunk(part)
        await exchange.wait_disconnect()

    return handle


def endless(interval_s: float = 0.005) -> Handler:
    """Stream tokens forever, the way a model with a huge ``max_tokens`` does, until the
    client disconnects; the exchange records when the server saw that."""

    async def handle(exchange: Exchange) -> None:
        await exchange.start_stream()
        watcher = asyncio.create_task(exchange.wait_disconnect())
        try:
            n = 0
            while not watcher.done():
                await exchange.chunk(delta(f" w{n}"))
                n += 1
                await asyncio.sleep(interval_s)
        except ConnectionError:
            if exchange.disconnected_at is None:
                exchange.disconnected_at = time.monotonic()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    return handle


def cut_mid_chunk(*parts: str) -> Handler:
    """Send ``parts``, then announce a chunk and close the socket inside it."""

    async def handle(exchange: Exchange) -> None:
        await exchange.start_stream()
        for part in parts:
            await exchange.chunk(part)
        exchange.writer.write(b'40\r\ndata: {"cho')
        await exchange.writer.drain()

    return handle


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
