"""Several server processes on one port, so that one machine's cores serve more sessions.

A session's audio path (VAD, policy, echo gate, playout, WebSocket frames) is Python on
an event loop, and one Python process runs its event loop on one core at a time. With
``--workers N`` the server binds its port once and starts N worker processes that all
accept connections from that one socket; each runs its own event loop and loads its own
models, and a connection (one call) lives in the worker that accepted it. The kernel
wakes every worker on a new connection and the first to ask takes it, so a busy worker,
slower to ask, takes fewer: the sharing follows the load without a balancer in front.

Workers are started with ``spawn``, not ``fork``: the models' thread pools (ONNX Runtime,
llama.cpp) do not survive a fork, so each worker imports and loads on its own. The app
factory handed to :func:`run_workers` is therefore pickled: a module-level function, or a
:func:`functools.partial` of one.

A worker that dies is replaced, and the others keep serving; the calls it held end (their
clients see the connection close). A worker that cannot start at all stops the server
rather than being restarted forever. Each worker watches its parent and leaves when the
parent is gone, so no worker outlives the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType

from starlette.types import ASGIApp

__all__ = ["WorkerFailed", "WorkerInfo", "listening_socket", "run_workers", "socket_address"]

log = logging.getLogger("bargein.workers")

START_TIMEOUT_S = 300.0
"""How long a worker may take to import, build its app and start listening."""
STOP_GRACE_S = 10.0
"""How long a worker may take to close its calls once asked to stop."""
PARENT_CHECK_S = 1.0


@dataclass(frozen=True)
class WorkerInfo:
    """A worker that is serving: its process and, if asked for, its own address."""

    pid: int
    own_address: str | None
    """``http://host:port`` that reaches this worker alone (its ``/health``, a benchmark's
    per-process figures); None unless :func:`run_workers` was asked for one."""


def listening_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A TCP socket listening on ``host:port`` (0: any free port), to share between workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=backlog)
    sock.set_inheritable(True)
    return sock


def socket_address(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_workers(
    app_factory: Callable[[], ASGIApp],
    sock: socket.socket,
    workers: int,
    *,
    log_level: str = "warning",
    own_addresses: bool = False,
    on_started: Callable[[list[WorkerInfo]], None] | None = None,
    max_quick_deaths: int = 3,
) -> int:
    """Serve ``sock`` from ``workers`` processes until interrupted or terminated.

    ``on_started`` is called once every worker is serving. With ``own_addresses`` each
    worker also listens on a port of its own (on ``sock``'s host), given in its
    :class:`WorkerInfo`. Returns 0 after a requested stop, 1 if workers kept dying as
    they started (``max_quick_deaths`` in a row, each within a minute of its start);
    raises :class:`WorkerFailed` if one of the first ``workers`` cannot start.
    """
    if workers < 1:
        raise ValueError(f"need at least one worker, got {workers}")
    context = multiprocessing.get_context("spawn")
    running: dict[int, tuple[BaseProcess, float]] = {}  # sentinel -> (process, started at)
    quick_deaths = 0

    def start_one() -> WorkerInfo:
        receive, send = context.Pipe(duplex=False)
        job = _Job(app_factory, sock, log_level, os.getpid(), send, own_addresses)
        process = context.Process(
            target=_worker_main,
            args=(job,),
            name="bargein-worker",
            daemon=True,
        )
        process.start()
        send.close()
        running[process.sentinel] = (process, time.monotonic())  # stopped in `finally`
        try:
            return _await_ready(receive, process)
        except WorkerFailed:
            running.pop(process.sentinel)
            raise
        finally:
            receive.close()

    with _terminated_as_interrupt():
        try:
            infos = [start_one() for _ in range(workers)]
            if on_started is not None:
                on_started(infos)
            while True:
                for sentinel in wait(list(running)):
                    assert isinstance(sentinel, int)
                    process, started = running.pop(sentinel)
                    process.join()
                    lived = time.monotonic() - started
                    log.error(
                        "worker %s ended (exit code %s) after %.0f s; starting another",
                        process.pid,
                        process.exitcode,
                        lived,
                    )
                    quick_deaths = quick_deaths + 1 if lived < 60 else 0
                    while quick_deaths < max_quick_deaths:
                        try:
                            start_one()
                            break
                        except WorkerFailed as exc:
                            log.error("%s", exc)
                            quick_deaths += 1
                    if quick_deaths >= max_quick_deaths:
                        log.error("workers keep dying as they start; stopping the server")
                        return 1
        except KeyboardInterrupt:
            return 0
        finally:
            _stop_all([process for process, _ in running.values()])


class WorkerFailed(RuntimeError):
    """A worker ended before it served."""


def _await_ready(receive: Connection, process: BaseProcess) -> WorkerInfo:
    """The worker's ``(pid, own address)`` once it serves; raises if it dies first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        ready = wait([receive, process.sentinel], timeout=deadline - time.monotonic())
        if receive in ready:
            with contextlib.suppress(EOFError):  # closed unsaid: the worker is ending
                pid, own = receive.recv()
                return WorkerInfo(int(pid), own)
            process.join(STOP_GRACE_S)
        if receive in ready or process.sentinel in ready:
            process.join()
            raise WorkerFailed(f"a worker ended before serving (exit code {process.exitcode})")
    process.kill()
    process.join()
    raise WorkerFailed(f"a worker did not start serving within {START_TIMEOUT_S:g} s")


def _stop_all(processes: list[BaseProcess]) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()  # SIGTERM: uvicorn closes its connections and exits
    deadline = time.monotonic() + STOP_GRACE_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


@contextlib.contextmanager
def _terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM to the parent stops it as Ctrl-C does (and so stops its workers)."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals to whoever owns them
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- in the worker ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """What a worker process is given (pickled by ``spawn``)."""

    app_factory: Callable[[], ASGIApp]
    sock: socket.socket
    log_level: str
    parent_pid: int
    ready: Connection
    own_address: bool


def _worker_main(job: _Job) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")
    # Ctrl-C in a terminal reaches every process of the group; the parent decides, and
    # stops the workers with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_serve(job, job.app_factory()))


async def _serve(job: _Job, app: ASGIApp) -> None:
    import uvicorn

    from bargein.server import uvicorn_config

    sockets = [job.sock]
    if job.own_address:
        sockets.append(listening_socket(job.sock.getsockname()[0], 0, backlog=64))

    class WorkerServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn would also stop on SIGINT; a worker leaves that to its parent.
            previous = signal.signal(signal.SIGTERM, self.handle_exit)
            try:
                yield
            finally:
                signal.signal(signal.SIGTERM, previous)

    server = WorkerServer(uvicorn_config(app, log_level=job.log_level))
    serving = asyncio.create_task(server.serve(sockets=sockets))
    while not server.started and not serving.done():
        await asyncio.sleep(0.05)
    if server.started:
        own = socket_address(sockets[1]) if job.own_address else None
        job.ready.send((os.getpid(), own))
    job.ready.close()

    async def watch_parent() -> None:
        while os.getppid() == job.parent_pid:
            await asyncio.sleep(PARENT_CHECK_S)
        server.should_exit = True

    watcher = asyncio.create_task(watch_parent())
    try:
        await serving
    finally:
        watcher.cancel()
