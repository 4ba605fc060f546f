"""Several server processes on one port (bargein.workers), with a tiny app in each."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bargein.workers import WorkerFailed, WorkerInfo, listening_socket, run_workers

ROOT = Path(__file__).resolve().parents[1]


def pid_app() -> Starlette:
    """Answers with the process that served the request (module level: it is pickled)."""

    async def pid(request: Request) -> JSONResponse:
        return JSONResponse({"pid": os.getpid()})

    return Starlette(routes=[Route("/", pid)])


def broken_app() -> Starlette:
    raise RuntimeError("this app cannot be built")


def serve_two() -> None:
    """Run in a child process by the tests: two workers, one JSON line when serving."""
    sock = listening_socket("127.0.0.1", 0)
    host, port = sock.getsockname()[:2]

    def started(infos: list[WorkerInfo]) -> None:
        workers = [{"pid": i.pid, "own": i.own_address} for i in infos]
        print(json.dumps({"url": f"http://{host}:{port}/", "workers": workers}), flush=True)

    sys.exit(run_workers(pid_app, sock, 2, own_addresses=True, on_started=started))


def _get_pid(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:
        return int(json.loads(response.read())["pid"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def two_workers() -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    code = "from tests.test_workers import serve_two; serve_two()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"the server ended before serving (code {proc.poll()})"
        yield proc, json.loads(line)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_two_workers_share_one_port_and_replace_a_dead_one(
    two_workers: tuple[subprocess.Popen[str], dict[str, Any]],
) -> None:
    proc, said = two_workers
    first = [w["pid"] for w in said["workers"]]
    assert len(set(first)) == 2 and proc.pid not in first
    # Each worker's own address reaches that worker alone.
    assert [_get_pid(w["own"] + "/") for w in said["workers"]] == first
    # The shared port is served by the workers, not by the parent.
    assert {_get_pid(said["url"]) for _ in range(10)} <= set(first)

    # Ctrl-C reaches every process of a terminal's group: a worker leaves it to the parent.
    os.kill(first[0], signal.SIGINT)
    time.sleep(0.5)
    assert _get_pid(said["workers"][0]["own"] + "/") == first[0]

    os.kill(first[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    seen: set[int] = set()
    while time.monotonic() < deadline and not (seen - set(first)):
        seen.add(_get_pid(said["url"]))  # the other worker keeps answering meanwhile
        time.sleep(0.05)
    replacement = seen - set(first)
    assert replacement, "no worker replaced the killed one"
    assert seen <= set(first[1:]) | replacement

    # SIGTERM to the parent stops every worker, and the parent reports a clean stop.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    for pid in [first[1], *replacement]:
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), f"worker {pid} outlived the server"


@pytest.fixture
def sock() -> Iterator[socket.socket]:
    listening = listening_socket("127.0.0.1", 0)
    yield listening
    listening.close()


def test_a_worker_that_cannot_start_stops_the_server_with_a_clear_error(
    sock: socket.socket,
) -> None:
    with pytest.raises(WorkerFailed, match="ended before serving"):
        run_workers(broken_app, sock, 2)


def test_at_least_one_worker(sock: socket.socket) -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        run_workers(pid_app, sock, 0)
