"""``bargein serve``: the demo page, the WebSocket protocol and the phone bridge, one process.

Routes: ``/`` (the page), ``/static/...`` (its scripts), ``/ws`` (docs/protocol.md),
``/twilio`` (Twilio Media Streams, from :mod:`bargein.transports.twilio` when it is
installed) and ``/health``.

The models are loaded once and shared by every session; each connection gets a session
of its own with fresh detectors (:class:`~bargein.transports.stack.AgentStack`).
Loading takes seconds, so it starts in a worker thread as the server starts: ``/health``
answers at once and says whether the models are in, and a client that says hello
meanwhile simply gets its ``ready`` when they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from contextlib import asynccontextmanager, contextmanager
from os import PathLike
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Scope
from starlette.websockets import WebSocket

from bargein.transports.stack import (
    DEFAULT_SPOTTER,
    RECOGNIZER_PROCESSES,
    AgentStack,
    SpotterName,
    offloaded_recognizer,
)
from bargein.transports.websocket import CLOSE_SERVER_ERROR, serve_websocket

__all__ = [
    "LONG_REPLIES_PROMPT",
    "WEB_DIR",
    "StackLoader",
    "create_app",
    "default_app",
    "default_stack",
    "run_server",
    "serve_in_background",
    "uvicorn_config",
]

log = logging.getLogger("bargein.server")

WEB_DIR = Path(__file__).parent / "web"

LONG_REPLIES_PROMPT = (
    "A long, relaxed call. The caller wants every detail, so each of the agent's answers "
    "runs to eight or ten sentences: an overview, some history, three examples and a "
    "short story."
)
"""The demo agent talks at length, so that there is something to interrupt."""
REPLY_TOKENS = 400
"""The embedded model's token budget per reply: a ceiling (two minutes of speech); the
model usually ends its line well before it."""

MAX_MESSAGE_BYTES = 1 << 16
"""Clients send 640-byte frames and small JSON; anything this big is not the protocol."""

StackFactory = Callable[[], AgentStack]


def default_stack(
    llm: str = "local",
    model: str | None = None,
    api_key: str | None = None,
    *,
    transcripts: bool = True,
    spotter: SpotterName = DEFAULT_SPOTTER,
    recognizer_processes: int = RECOGNIZER_PROCESSES,
) -> AgentStack:
    """The embedded stack (or another LLM), told to answer at length.

    The note asks a small base model for more than its usual two sentences (on Gemma 3
    270M it roughly doubles the length of a reply); an instruction-tuned model follows it.
    The streaming recogniser, and the phrase spotter if it is the second reading, run in
    ``recognizer_processes`` worker processes each (0: on the server's own event loop).
    """
    from bargein.chat import make_llm
    from bargein.providers.llamacpp import LlamaCppLLM

    language = make_llm(llm, model, api_key)
    if isinstance(language, LlamaCppLLM):
        language.max_tokens = REPLY_TOKENS
    stack = AgentStack.default(language, transcripts=transcripts)
    stack.config.system_prompt = LONG_REPLIES_PROMPT
    if recognizer_processes > 0:
        stack.recognizer_factory = offloaded_recognizer(recognizer_processes)
    if spotter == "phrases":
        from bargein.transports.stack import offloaded_phrase_spotter, phrase_spotter

        stack.spotter_factory = (
            offloaded_phrase_spotter(recognizer_processes)
            if recognizer_processes > 0
            else phrase_spotter
        )
    elif spotter == "whisper":
        from bargein.transports.stack import whisper_reader

        stack.spotter_factory = whisper_reader(stack.transcriber)
    return stack


def default_app(
    llm: str = "local",
    model: str | None = None,
    api_key: str | None = None,
    *,
    transcripts: bool = True,
    spotter: SpotterName = DEFAULT_SPOTTER,
    token: str | None = None,
    bench: bool = False,
    recognizer_processes: int = RECOGNIZER_PROCESSES,
) -> Starlette:
    """``bargein serve``'s application: :func:`default_stack`, loaded as the server starts.

    A module-level function of plain arguments, so that ``--workers`` can hand it to each
    worker process (:mod:`bargein.workers`).
    """
    stack = functools.partial(
        default_stack,
        llm,
        model,
        api_key,
        transcripts=transcripts,
        spotter=spotter,
        recognizer_processes=recognizer_processes,
    )
    return create_app(stack, token=token, bench=bench)


class _RevalidatedFiles(StaticFiles):
    """The page's scripts, which the browser must check again on every load.

    A worklet module cached from an older version of the package would talk an older
    protocol; revalidating costs one 304 per file.
    """

    def file_response(
        self,
        full_path: PathLike[str] | str,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        return response


class StackLoader:
    """Builds the stack once, in a worker thread, whichever loop or request asks first.

    A concurrent future rather than an asyncio task, so it does not belong to one event
    loop (tests run apps on several).
    """

    def __init__(self, source: AgentStack | StackFactory) -> None:
        self._future: Future[AgentStack] = Future()
        self._factory: StackFactory | None = None
        self._lock = threading.Lock()
        if isinstance(source, AgentStack):
            self._future.set_result(source)
        else:
            self._factory = source

    def start(self) -> None:
        with self._lock:
            factory, self._factory = self._factory, None
        if factory is not None:
            threading.Thread(target=self._load, args=(factory,), name="bargein-load").start()

    @property
    def loaded(self) -> bool:
        return self._future.done() and self._future.exception() is None

    @property
    def error(self) -> str | None:
        if not self._future.done() or (exc := self._future.exception()) is None:
            return None
        return f"{type(exc).__name__}: {exc}"

    async def get(self) -> AgentStack:
        self.start()
        if not self._future.done():
            # Not asyncio.wrap_future: cancelling one waiter would cancel the shared load.
            loop = asyncio.get_running_loop()
            loaded: asyncio.Future[None] = loop.create_future()

            def settle() -> None:
                if not loaded.done():
                    loaded.set_result(None)

            def wake(_: Future[AgentStack]) -> None:
                with contextlib.suppress(RuntimeError):  # that loop has closed meanwhile
                    loop.call_soon_threadsafe(settle)

            self._future.add_done_callback(wake)
            await loaded
        return self._future.result()

    def _load(self, factory: StackFactory) -> None:
        try:
            stack = factory()
        except Exception as exc:
            log.error("the models failed to load: %s", exc)
            self._future.set_exception(exc)
        else:
            log.info("models loaded")
            self._future.set_result(stack)


def create_app(
    stack: AgentStack | StackFactory, *, token: str | None = None, bench: bool = False
) -> Starlette:
    """The server's application; ``stack`` may be a factory, called once in a thread."""
    loader = StackLoader(stack)
    sessions: set[str] = set()

    async def page(request: Request) -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def health(request: Request) -> JSONResponse:
        body: dict[str, object] = {
            "ok": loader.error is None,
            "sessions": len(sessions),
            "models_loaded": loader.loaded,
        }
        if loader.error is not None:
            body["error"] = loader.error
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def ws(websocket: WebSocket) -> None:
        await serve_websocket(websocket, loader.get, token=token, bench=bench, sessions=sessions)

    async def twilio(websocket: WebSocket) -> None:
        # Imported per connection (cached after the first) so the page and /ws work
        # whether or not the phone bridge is installed.
        try:
            endpoint = importlib.import_module("bargein.transports.twilio").twilio_endpoint
            agents = await loader.get()
        except Exception as exc:
            log.error("/twilio is unavailable: %s", exc)
            await websocket.accept()
            await websocket.close(CLOSE_SERVER_ERROR, "the Twilio bridge is unavailable")
            return
        key = f"twilio-{secrets.token_hex(3)}"
        sessions.add(key)
        try:
            await endpoint(websocket, agents, token=token, bench=bench)
        finally:
            sessions.discard(key)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loader.start()  # the first caller does not wait for the whole load
        yield

    return Starlette(
        routes=[
            Route("/", page),
            Route("/health", health),
            WebSocketRoute("/ws", ws),
            WebSocketRoute("/twilio", twilio),
            Mount("/static", _RevalidatedFiles(directory=WEB_DIR), name="static"),
        ],
        lifespan=lifespan,
    )


def uvicorn_config(
    app: ASGIApp, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning"
) -> uvicorn.Config:
    """How every bargein server runs uvicorn (``host`` and ``port`` unused with sockets)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        ws_max_size=MAX_MESSAGE_BYTES,
        # Speech PCM hardly compresses; deflating it would cost CPU on the audio path.
        ws_per_message_deflate=False,
    )


def _address(server: uvicorn.Server) -> str:
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_server(
    app: Starlette,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    on_started: Callable[[str], None] | None = None,
    log_level: str = "warning",
) -> None:
    """Serve until interrupted; ``on_started`` gets the base URL once the port is open."""
    server = uvicorn.Server(uvicorn_config(app, host, port, log_level=log_level))

    async def serve() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started and on_started is not None:
            on_started(_address(server))
        await task

    asyncio.run(serve())


@contextmanager
def serve_in_background(
    app: Starlette, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning"
) -> Iterator[str]:
    """Run ``app`` in a thread while the block runs; yields its base URL (tests, notebooks)."""
    server = uvicorn.Server(uvicorn_config(app, host, port, log_level=log_level))
    thread = threading.Thread(target=server.run, name="bargein-server", daemon=True)
    thread.start()
    for _ in range(400):
        if server.started or not thread.is_alive():
            break
        time.sleep(0.025)
    if not server.started:
        server.should_exit = True
        raise RuntimeError(f"the server did not start on {host}:{port}")
    try:
        yield _address(server)
    finally:
        server.should_exit = True
        thread.join(10)
