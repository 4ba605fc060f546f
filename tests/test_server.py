"""The server around the protocol: the page, /health, model loading, /twilio, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import threading
import types
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import bargein.chat
import bargein.server
from bargein.cli import main as cli_main
from bargein.conversation import Conversation, build_llm_input
from bargein.providers.llamacpp import transcript_prompt
from bargein.providers.offloaded import OffloadedRecognizer
from bargein.providers.pocketsphinx import PocketSphinxRecognizer
from bargein.providers.scripted import ScriptedLLM
from bargein.server import LONG_REPLIES_PROMPT, WEB_DIR, create_app, serve_in_background
from bargein.transports.stack import AgentStack
from tests.doubles import WordTTS
from tests.test_websocket import make_stack, open_client, refusal


def test_health_reports_sessions_and_models() -> None:
    with TestClient(create_app(make_stack())) as client:
        response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"ok": True, "sessions": 0, "models_loaded": True}


async def test_models_load_once_in_the_background_while_health_answers() -> None:
    release = threading.Event()
    calls: list[int] = []

    def slow_factory() -> AgentStack:
        calls.append(1)
        release.wait(10)
        return make_stack()

    with serve_in_background(create_app(slow_factory)) as url:
        health = httpx.get(f"{url}/health", timeout=2).json()
        assert health == {"ok": True, "sessions": 0, "models_loaded": False}
        async with connect(url.replace("http", "ws", 1) + "/ws") as early:
            await early.send(json.dumps({"type": "hello"}))
            with pytest.raises(TimeoutError):  # no ready before the models are in
                await asyncio.wait_for(early.recv(), 0.3)
            release.set()
            assert json.loads(await asyncio.wait_for(early.recv(), 5))["type"] == "ready"
            late, _ = await open_client(url)
            assert httpx.get(f"{url}/health").json() == {
                "ok": True,
                "sessions": 2,
                "models_loaded": True,
            }
            await late.close()
    assert calls == [1]


async def test_a_failed_load_shows_in_health_and_refuses_sessions() -> None:
    def broken() -> AgentStack:
        raise RuntimeError("no voice installed")

    with serve_in_background(create_app(broken)) as url:
        async with connect(url.replace("http", "ws", 1) + "/ws") as ws:
            await ws.send(json.dumps({"type": "hello"}))
            error = json.loads(await asyncio.wait_for(ws.recv(), 5))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
        assert error == {
            "type": "error",
            "message": "the agent is unavailable: no voice installed",
        }
        assert ws.close_code == 1011
        health = httpx.get(f"{url}/health").json()
    assert health["ok"] is False
    assert health["error"] == "RuntimeError: no voice installed"


# -- the page ----------------------------------------------------------------------------


def test_the_page_and_its_scripts_are_served() -> None:
    with TestClient(create_app(make_stack())) as client:
        page = client.get("/")
        scripts = {
            name: client.get(f"/static/{name}")
            for name in ("app.js", "mic-worklet.js", "player-worklet.js")
        }
        style = client.get("/static/style.css")
        missing = client.get("/static/nothing.js")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="static/app.js">' in page.text
    assert re.search(r'<button id="start"[^>]*>Start</button>', page.text)
    assert '<label for="token">' in page.text
    for response in scripts.values():
        assert response.status_code == 200
        assert "javascript" in response.headers["content-type"]
        assert response.headers["cache-control"] == "no-cache"  # never a stale worklet
    assert style.status_code == 200
    assert missing.status_code == 404
    # The page loads the worklets by the names they register under.
    app = scripts["app.js"].text
    for name, processor in (
        ("mic-worklet.js", "mic-capture"),
        ("player-worklet.js", "agent-player"),
    ):
        assert f'addModule("static/{name}")' in app
        assert f'"{processor}"' in app
        assert f'registerProcessor("{processor}"' in scripts[name].text


def test_the_page_uses_every_control_message_of_the_protocol() -> None:
    app = (WEB_DIR / "app.js").read_text()
    player = (WEB_DIR / "player-worklet.js").read_text()
    for kind in ("pause", "resume", "duck", "clear"):
        assert f'case "{kind}":' in app
        assert f'case "{kind}":' in player
    for kind in ("ready", "state", "user", "agent", "interruption", "error"):
        assert f'case "{kind}":' in app
    assert 'type: "playout"' in app
    assert "echoCancellation: true" in app


# -- /twilio -----------------------------------------------------------------------------


def test_twilio_closes_with_an_error_when_the_bridge_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "bargein.transports.twilio", None)  # import fails
    with (
        TestClient(create_app(make_stack())) as client,
        client.websocket_connect("/twilio") as ws,
        pytest.raises(WebSocketDisconnect) as closed,
    ):
        ws.receive_text()
    assert closed.value.code == 1011


def test_twilio_hands_the_socket_to_the_bridge(monkeypatch: pytest.MonkeyPatch) -> None:
    stack = make_stack()
    seen: list[tuple[AgentStack, str | None, bool]] = []

    async def twilio_endpoint(
        websocket: WebSocket, stack: AgentStack, *, token: str | None, bench: bool
    ) -> None:
        seen.append((stack, token, bench))
        await websocket.accept()
        await websocket.send_text("bridged")
        await websocket.close()

    bridge = types.ModuleType("bargein.transports.twilio")
    bridge.twilio_endpoint = twilio_endpoint  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bargein.transports.twilio", bridge)
    app = create_app(stack, token="t", bench=True)
    with TestClient(app) as client, client.websocket_connect("/twilio") as ws:
        assert ws.receive_text() == "bridged"
    assert seen == [(stack, "t", True)]


# -- the commands ------------------------------------------------------------------------


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Captures what ``bargein serve``/``demo`` would run, and pretends it started."""
    runs: list[dict[str, Any]] = []

    def run_server(app: Any, host: str, port: int, **options: Any) -> None:
        runs.append({"app": app, "host": host, "port": port, **options})
        options["on_started"](f"http://{host}:{port}")

    monkeypatch.setattr(bargein.server, "run_server", run_server)
    monkeypatch.delenv("BARGEIN_TOKEN", raising=False)
    return runs


async def test_serve_builds_the_stack_lazily_from_its_options(
    served: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    built: list[tuple[str, str | None, str | None, bool, str | None, int]] = []

    def default_stack(
        llm: str,
        model: str | None,
        api_key: str | None,
        *,
        transcripts: bool,
        spotter: str | None,
        recognizer_processes: int,
    ) -> AgentStack:
        built.append((llm, model, api_key, transcripts, spotter, recognizer_processes))
        return make_stack()

    monkeypatch.setattr(bargein.server, "default_stack", default_stack)
    argv = ["serve", "--port", "9000", "--bench", "--llm", "http://x/v1", "--model", "m"]
    argv += ["--no-transcripts", "--spotter", "phrases", "--recognizer-processes", "3"]
    assert cli_main(argv) == 0
    assert built == []  # nothing loads before the server runs
    (run,) = served
    assert (run["host"], run["port"]) == ("127.0.0.1", 9000)
    assert "serving on http://127.0.0.1:9000/" in capsys.readouterr().err
    with serve_in_background(run["app"]) as url:
        client, ready = await open_client(url)
        assert ready["bench"] is True
        await client.close()
    assert built == [("http://x/v1", "m", None, False, "phrases", 3)]


async def test_serve_takes_the_token_from_the_environment(
    served: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BARGEIN_TOKEN", "from-env")
    monkeypatch.setattr(bargein.server, "default_stack", lambda *a, **k: make_stack())
    assert cli_main(["serve"]) == 0
    with serve_in_background(served[0]["app"]) as url:
        received, code = await refusal(url, {"type": "hello", "token": "wrong"})
        assert (code, received[0]["type"]) == (4401, "error")
        client, _ = await open_client(url, token="from-env")
        await client.close()


def test_serve_refuses_an_llm_that_is_neither_local_nor_a_url(
    served: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["serve", "--llm", "gpt"]) == 2
    assert served == []
    assert "--llm must be 'local' or an http(s):// URL" in capsys.readouterr().err


def test_demo_opens_the_page_unless_told_not_to(
    served: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    assert cli_main(["demo", "--port", "8800", "--token", "abc"]) == 0
    assert opened == ["http://127.0.0.1:8800/?token=abc"]
    assert cli_main(["demo", "--no-browser"]) == 0
    assert cli_main(["serve"]) == 0
    assert opened == ["http://127.0.0.1:8800/?token=abc"]
    assert len(served) == 3


def test_the_default_agent_is_asked_for_long_replies(monkeypatch: pytest.MonkeyPatch) -> None:

    llm = ScriptedLLM(["..."])
    monkeypatch.setattr(bargein.chat, "make_llm", lambda *args: llm)
    monkeypatch.setattr(
        AgentStack, "default", classmethod(lambda cls, llm, transcripts: cls(llm, WordTTS()))
    )
    stack = bargein.server.default_stack(spotter="off", recognizer_processes=0)
    assert stack.llm is llm and stack.spotter_factory is None
    assert isinstance(stack.recognizer_factory(), PocketSphinxRecognizer)  # on the loop
    assert stack.config.system_prompt == LONG_REPLIES_PROMPT
    # The embedded base model reads it as the note on the call it continues.
    conversation = Conversation(system_prompt=LONG_REPLIES_PROMPT)
    conversation.add_user("Tell me about whales.")
    prompt = transcript_prompt(build_llm_input(conversation, "turn"))
    assert f"(About this call: {LONG_REPLIES_PROMPT})" in prompt


def test_the_default_server_decodes_speech_in_worker_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        AgentStack, "default", classmethod(lambda cls, llm, transcripts: cls(llm, WordTTS()))
    )
    monkeypatch.setattr(bargein.chat, "make_llm", lambda *args: ScriptedLLM(["..."]))
    stack = bargein.server.default_stack(spotter="off", recognizer_processes=1)
    one, two = stack.recognizer_factory(), stack.recognizer_factory()
    assert isinstance(one, OffloadedRecognizer) and isinstance(two, OffloadedRecognizer)
    assert one.pid == two.pid != os.getpid()  # one worker, a stream for each session
    one.start()
    assert one.finish() == ()
    stack = bargein.server.default_stack(spotter="phrases", recognizer_processes=1)
    spotter = stack.spotter_factory() if stack.spotter_factory else None
    assert isinstance(spotter, OffloadedRecognizer) and spotter.pid != os.getpid()


def test_serve_with_workers_hands_each_a_picklable_app_factory(
    served: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import pickle

    import bargein.workers

    calls: list[tuple[Any, int]] = []

    def run_workers(factory: Any, sock: Any, workers: int, **options: Any) -> int:
        calls.append((factory, workers))
        options["on_started"]([])
        return 0

    monkeypatch.setattr(bargein.workers, "run_workers", run_workers)
    assert cli_main(["serve", "--port", "0", "--workers", "2", "--spotter", "whisper"]) == 0
    assert served == []  # not the one-process server
    ((factory, workers),) = calls
    assert workers == 2
    # Each worker process gets the factory pickled: it must survive the trip.
    copy = pickle.loads(pickle.dumps(factory))
    assert copy.func is bargein.server.default_app
    assert copy.keywords["spotter"] == "whisper" and copy.keywords["bench"] is False
    assert "serving on http://127.0.0.1:" in capsys.readouterr().err

    assert cli_main(["serve", "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_whisper_is_tier_2s_second_opinion_unless_told_otherwise() -> None:
    from bargein.cli import build_parser

    parser = build_parser()
    for command in (["serve"], ["demo"], ["bench", "somewhere"]):
        assert parser.parse_args(command).spotter == "whisper"
        assert parser.parse_args([*command, "--spotter", "off"]).spotter == "off"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--spotter", "loud"])
