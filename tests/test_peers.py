"""The peer adapters: Pipecat and LiveKit Agents run scenarios through bargein's ear.

The runs are real: each framework's own pipeline and bundled Silero VAD, in real time,
with speech synthesised here by Piper. They are kept few and short (about 40 s in all).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bargein.audio import resample, to_int16, write_wav
from bargein.bench.metrics import words_of
from bargein.bench.peers import PeerNotInstalled, load_peer, run_peer_set
from bargein.bench.peers.harness import UNKNOWN_REPLY, Ear, PeerRunOptions, ReplyScript, Voice
from bargein.cli import main
from bargein.providers.base import SpeechChunk, WordTiming
from bargein.providers.piper import CachedTTS, PiperTTS
from tests.doubles import write_scenario

AGENT_TEXT = (
    "Sure. Your flight to Boston leaves at nine fifteen tomorrow morning from gate twenty "
    "two. I have also booked you a window seat near the front of the plane, and your bag "
    "allowance is one checked bag."
)
# LiveKit ignores interruptions for the first 3 s of speech (its echo-cancellation
# warm-up), so the user speaks after that.
AT_S = 3.4


@pytest.fixture(scope="module")
def voice() -> CachedTTS:
    return CachedTTS(PiperTTS.repeatable())


@pytest.fixture(scope="module")
def scenario_dir(tmp_path_factory: pytest.TempPathFactory, voice: CachedTTS) -> Path:
    folder = tmp_path_factory.mktemp("peer-set")
    tts = voice.inner
    for name, kind, expect, text in (
        ("hold-on", "barge_in", "interrupt", "Hold on, what was the price?"),
        ("okay", "backchannel", "continue", "Okay."),
    ):
        chunks = list(tts.synthesize(text))
        audio = np.concatenate([c.audio for c in chunks])
        speech = np.concatenate(
            [np.zeros(1600, np.float32), resample(audio, tts.sample_rate, 16000)]
        )
        write_wav(folder / f"{name}.wav", speech, 16000)
        write_scenario(
            folder,
            name,
            kind,
            expect,
            [{"at_s": AT_S, "audio": f"{name}.wav", "text": text}],
            AGENT_TEXT,
        )
    return folder


def _prefix_of_agent_text(text: str) -> bool:
    words = words_of(text)
    return bool(words) and words == words_of(AGENT_TEXT)[: len(words)]


def _check_barge_in(result: dict[str, Any]) -> None:
    assert result["interrupted"] is True
    assert result["missed"] is False
    latency = result["stop_latency_ms"]
    assert latency is not None and 0 < latency < 1500
    assert _prefix_of_agent_text(result["heard_text"])
    assert len(words_of(result["heard_text"])) < len(words_of(AGENT_TEXT))
    # The peer's own record of the cut reply: its first words, however it cuts them.
    assert _prefix_of_agent_text(result["recorded_text"])
    assert result["state_word_errors"] >= 0
    assert result["unmatched_ms"] == 0
    assert result["llm_calls"] >= 2  # the user's turn was answered
    assert result["user_turn_text"] == "Hold on, what was the price?"


@pytest.mark.parametrize("peer", ["pipecat", "livekit"])
def test_a_barge_in_stops_the_peer(peer: str, scenario_dir: Path, voice: CachedTTS) -> None:
    results = run_peer_set(scenario_dir, peer, only=["barge_in"], progress=False, tts=voice)
    results = json.loads(json.dumps(results))  # what --out writes
    system = results["system"]
    assert system["peer"] == peer and system["config"] == "default" and system["stt"] == "final"
    assert system["version"] == {"pipecat": "1.14.0", "livekit": "1.8.9"}[peer]
    assert results["clock"] == "real" and results["errors"] == []
    (result,) = results["scenarios"]
    _check_barge_in(result)
    summary = results["summary"]["barge_in"]
    assert summary["count"] == 1 and summary["missed"] == 0
    assert summary["stop_latency_ms"]["p50"] == result["stop_latency_ms"]


def test_two_words_minimum_lets_a_backchannel_through_livekit(
    scenario_dir: Path, voice: CachedTTS
) -> None:
    results = run_peer_set(
        scenario_dir, "livekit", config="minwords2", only=["backchannel"], progress=False, tts=voice
    )
    assert results["errors"] == []
    (result,) = results["scenarios"]
    assert result["expect"] == "continue"
    assert result["interrupted"] is False and result["false_interruption"] is False
    assert words_of(result["heard_text"]) == words_of(AGENT_TEXT)
    assert words_of(result["recorded_text"]) == words_of(AGENT_TEXT)
    assert result["state_word_errors"] == 0
    # Whether LiveKit paused meanwhile depends on its VAD's timing; the ear says how long.
    assert isinstance(result["paused_ms"], float) and result["paused_ms"] >= 0
    assert results["system"]["config"] == "minwords2"


def test_a_missing_framework_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delitem(sys.modules, "bargein.bench.peers.pipecat", raising=False)
    for name in [n for n in sys.modules if n == "pipecat" or n.startswith("pipecat.")]:
        monkeypatch.setitem(sys.modules, name, None)  # importing it now fails
    monkeypatch.setitem(sys.modules, "pipecat", None)
    with pytest.raises(PeerNotInstalled):
        load_peer("pipecat")
    code = main(["bench", str(tmp_path), "--clock", "real", "--peer", "pipecat"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "bargein bench: --peer pipecat needs the peers extra: pip install 'bargein[peers]'"
    ]


def test_peers_need_the_real_clock(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["bench", str(tmp_path), "--peer", "livekit"]) == 2
    assert "--clock real" in capsys.readouterr().err


class _FixedTTS:
    """Two words of known samples, for the ear's bookkeeping."""

    sample_rate = 1000

    def synthesize(self, text: str) -> Any:
        audio = (np.arange(1, 401, dtype=np.float32) / 1000.0).astype(np.float32)
        yield SpeechChunk(
            text, audio, self.sample_rate, (WordTiming("one", 0, 200), WordTiming("two", 200, 400))
        )


async def test_the_ear_recognises_what_the_peer_plays() -> None:
    script = ReplyScript(["one two"], PeerRunOptions())
    voice = Voice(_FixedTTS(), script)
    script.start_reply()
    (pcm,) = await voice.speak("one two")
    ear = Ear(voice, max_s=5.0)
    # The peer re-chunks the audio and pads the last frame with zeros.
    ear.write(pcm[:240])
    ear.write(pcm[240:] + bytes(200))
    ear.write(bytes(100))  # silence
    noise = to_int16(np.full(50, 0.5, dtype=np.float32)).astype("<i2").tobytes()
    ear.write(noise)  # nothing the TTS said
    assert ear.unmatched_samples == 50
    ear.speaker.render_until(0.09)  # 90 samples played: not half of "one"
    assert ear.heard_text(1) == ""
    ear.speaker.render_until(0.35)  # 350: all of "one", most of "two"
    assert ear.heard_text(1) == "one two"
    assert UNKNOWN_REPLY in ear.speaker.played
