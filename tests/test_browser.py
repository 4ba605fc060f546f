"""The demo page in a real browser: Debian's Chromium, driven by Playwright, talking to a
real server with a fake microphone that asks a question, then barges in.

The server runs the real detectors (Silero, pocketsphinx) and the real voice (Piper);
only the LLM is scripted, so the agent's reply is long and known. The microphone is a WAV
file Chromium plays as its capture device: a question, silence while the agent answers,
then "Wait, stop." over the agent. Everything asserted is read from the page.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bargein.audio import resample, write_wav
from bargein.providers.piper import PiperTTS
from bargein.providers.scripted import ScriptedLLM
from bargein.server import create_app, serve_in_background
from bargein.transports.stack import AgentStack

CHROMIUM = shutil.which("chromium") and "/usr/lib/chromium/chromium"
ARTIFACTS = Path(__file__).parent.parent / ".cache" / "artifacts"
LONG_REPLY = (
    "Tea began in southwest China, where people first boiled the leaves as medicine. "
    "Over many centuries it became a daily drink, and merchants carried it along the "
    "old horse roads into Tibet and beyond. Sailors later brought it to Europe, where "
    "it turned into a fashion and then into a national habit in Britain. Today there "
    "are thousands of kinds, from green and white teas to black teas and smoky oolongs."
)
BARGE_IN_AT_S = 9.0


def speech(tts: PiperTTS, text: str) -> np.ndarray:
    audio = np.concatenate([chunk.audio for chunk in tts.synthesize(text)])
    return resample(audio, tts.sample_rate, 16000)


@pytest.fixture(scope="module")
def microphone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Question at 1 s, "Wait, stop." at BARGE_IN_AT_S, silence to 40 s (the file loops)."""
    tts = PiperTTS.repeatable()
    track = np.zeros(40 * 16000, dtype=np.float32)
    for at, text in ((1.0, "Tell me about the history of tea."), (BARGE_IN_AT_S, "Wait, stop.")):
        clip = speech(tts, text)
        start = int(at * 16000)
        track[start : start + len(clip)] = clip
    path = tmp_path_factory.mktemp("mic") / "mic.wav"
    write_wav(path, track, 16000)
    return path


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    stack = AgentStack(
        llm=ScriptedLLM([LONG_REPLY, "Of course, I will stop there."]),
        tts=PiperTTS.repeatable(),
    )
    with serve_in_background(create_app(stack)) as url:
        yield url


def test_a_barge_in_in_the_browser_stops_the_agent_and_keeps_what_was_heard(
    microphone: Path, server_url: str
) -> None:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "Debian's chromium is needed: make test installs it"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={microphone}",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        try:
            page = browser.new_page()
            page.goto(server_url + "/")
            page.click("#start")
            # The agent answers the question, then the barge-in lands on its reply.
            page.wait_for_selector("#conversation li.agent", timeout=20_000)
            row = page.wait_for_selector("#timeline tr", timeout=30_000)
            assert row is not None
            cells = [c.inner_text() for c in row.query_selector_all("td")]
            page.wait_for_selector("#conversation li.agent .badge", timeout=10_000)
            page.wait_for_timeout(1500)  # let the player report its final cursor
            page.screenshot(path=str(ARTIFACTS / "browser-barge-in.png"), full_page=True)
            state = page.evaluate("window.bargeinPlayout")
            agent_text = page.inner_text("#conversation li.agent .text")
            page.wait_for_timeout(1000)
            later = page.evaluate("window.bargeinPlayout")
        finally:
            browser.close()

    # The interruption is in the timeline, committed.
    assert cells[0] == "1" and cells[3].startswith("commit"), cells
    # The agent's audio stopped: the player's cursor for the cut reply no longer moves.
    played = state["played"]["1"]
    assert later["played"]["1"] == played
    words = state["wordTimings"]["1"]
    total = words[-1][2]
    assert 0 < played < total
    # The conversation keeps exactly the words whose audio was at least half played.
    heard = [w for w, start, end in words if played >= (start + end) / 2]
    assert agent_text.split() == heard
    assert 0 < len(heard) < len(LONG_REPLY.split())
