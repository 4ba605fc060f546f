"""llama-cpp-python's own OpenAI-compatible server, in process, with every decode logged.

The benchmark and the tests use it to prove from the server's side that generation
stops when the client drops the stream: the model's ``eval`` is wrapped so each decode
step is timestamped in a :class:`DecodeLog`, instead of inferring the stop from the
client having stopped reading. It needs the server extra
(``pip install 'llama-cpp-python[server]'``), a development dependency.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class DecodeLog:
    """``time.monotonic()`` at the end of every decode step the model ran.

    A decode is one ``Llama.eval`` call: the prompt once, then one per generated token.
    Calling the log returns a snapshot, so it can be passed as ``server_decodes``.
    """

    times: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self) -> None:
        with self._lock:
            self.times.append(time.monotonic())

    def __call__(self) -> Sequence[float]:
        with self._lock:
            return list(self.times)

    def after(self, t: float) -> list[float]:
        return [x for x in self() if x > t]

    def step_s(self, since: float) -> float:
        """Median time between consecutive decodes after ``since``: one token's cost."""
        times = self.after(since)
        gaps = sorted(b - a for a, b in itertools.pairwise(times))
        return gaps[len(gaps) // 2] if gaps else 0.0


class LlamaServer:
    """llama-cpp-python's server on a loopback port, on its own thread and event loop.

    The app keeps its model in a module-level proxy; the model's ``eval`` is wrapped on
    the instance so each decode is logged. ``interrupt_requests`` is off, so a second
    request cannot end the first one on the server's initiative: only the client's
    disconnect can stop a reply, which is what the tests need to isolate.

    One thread by default: llama.cpp's threads meet at a barrier after every operation,
    and on a CI machine busy with other work a descheduled thread holds the others up,
    so two threads ran several times slower there than one, and far less evenly.
    """

    def __init__(self, model_path: str, *, n_ctx: int = 1024, n_threads: int = 1) -> None:
        import llama_cpp.server.app as server_app
        import uvicorn
        from llama_cpp.server.settings import ModelSettings, ServerSettings

        app = server_app.create_app(
            server_settings=ServerSettings(interrupt_requests=False),
            model_settings=[
                ModelSettings(
                    model=model_path,
                    model_alias="gemma-3-270m",
                    n_ctx=n_ctx,
                    n_threads=n_threads,
                    n_threads_batch=n_threads,
                    chat_format="gemma",
                    verbose=False,
                )
            ],
        )
        proxy = server_app._llama_proxy
        assert proxy is not None
        llama = proxy()
        self.decodes = DecodeLog()
        evaluate = llama.eval

        def logged_eval(tokens: Sequence[int]) -> None:
            evaluate(tokens)
            self.decodes.record()

        llama.eval = logged_eval  # type: ignore[method-assign]
        self._llama = llama
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 30.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the llama.cpp server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()
        self._llama.close()
