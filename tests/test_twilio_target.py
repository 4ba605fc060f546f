"""``bargein bench --target twilio+ws://...``: the benchmark as a phone caller, end to end.

The real server app (``create_app(..., bench=True)``, its ``/twilio`` endpoint) runs in
a thread around the session tests' doubles: every agent word lasts 100 ms and speech
is wherever the microphone is loud, so a barge-in must cut the reply at the caller's
ear within a known bound, and a call without one must play the reply to its end. The
far end runs in real time, so the scenarios are a couple of seconds each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bargein.audio import write_wav
from bargein.bench.far_end import FarEndOptions, run_target_set
from bargein.bench.metrics import format_table
from bargein.providers.scripted import ScriptedLLM
from bargein.server import create_app, serve_in_background
from bargein.transports.stack import AgentStack
from tests.doubles import LevelVAD, ScriptedRecognizer, WordTTS, loud_noise, write_scenario

TOKEN = "sesame"
WORDS = ["apple", "river", "paper", "summer", "window"]
AGENT = " ".join(f"{w}." if i % 5 == 4 else w for i, w in enumerate(WORDS * 4))
"""Twenty words of 100 ms each: a two-second reply."""


def scenario(folder: Path, name: str, kind: str, expect: str, events: list[Any]) -> None:
    write_scenario(folder, name, kind, expect, events, AGENT)


def test_a_phone_caller_barges_in_and_a_quiet_call_plays_to_the_end(tmp_path: Path) -> None:
    # "hold on": 0.1 s of silence, then 0.6 s of loud sound, 0.5 s into the agent's speech.
    audio = np.zeros(int(0.7 * 16000), dtype=np.float32)
    audio[1600:] = loud_noise(len(audio) - 1600, seed=1)
    write_wav(tmp_path / "hold-on.wav", audio, 16000)
    scenario(
        tmp_path,
        "barge",
        "barge_in",
        "interrupt",
        [{"at_s": 0.5, "audio": "hold-on.wav", "text": "hold on"}],
    )
    scenario(tmp_path, "quiet", "silence", "continue", [])
    stack = AgentStack(
        llm=ScriptedLLM(["not used: the bench hook scripts every reply"]),
        tts=WordTTS(),
        vad_factory=LevelVAD,
        recognizer_factory=lambda: ScriptedRecognizer([([(0.0, ("hold", "on"))], ("hold", "on"))]),
    )
    with serve_in_background(create_app(stack, token=TOKEN, bench=True)) as base:
        target = base.replace("http://", "twilio+ws://") + "/twilio"
        results = run_target_set(
            tmp_path, target, token=TOKEN, options=FarEndOptions(settle_s=0.3), progress=False
        )

    assert results["errors"] == []
    by_name = {s["name"]: s for s in results["scenarios"]}
    barge, quiet = by_name["barge"], by_name["quiet"]
    assert barge["errors"] == [] and quiet["errors"] == []

    # The onset is the sound's own: 0.1 s into the event, 0.5 s after the agent's first sound.
    assert 0.6 <= barge["onset_s"] <= 1.2
    assert barge["interrupted"] and not barge["missed"] and not barge["false_interruption"]
    # VAD frames, the clear's trip and the 20 ms frame already playing: well under 200 ms.
    assert 0 <= barge["stop_latency_ms"] <= 200
    assert barge["first_clear_ms"] is not None and barge["first_clear_ms"] <= 200
    # The clear is tier 1 on a phone line: at most the 20 ms frame playing outlives it.
    assert barge["after_tier1_ms"] is not None and barge["after_tier1_ms"] <= 40
    assert quiet["after_tier1_ms"] is None
    assert barge["response_ms"] is not None and barge["response_ms"] > 0
    # About 0.5-0.7 s of the 2 s reply reached the ear, and nothing of it was complete.
    assert 0.4 <= barge["agent_played_s"] <= 1.0 and barge["agent_full_s"] is None

    assert not quiet["interrupted"] and not quiet["false_interruption"] and not quiet["missed"]
    assert quiet["stop_latency_ms"] is None and quiet["paused_ms"] == 0.0
    assert quiet["agent_full_s"] is not None and 1.9 <= quiet["agent_full_s"] <= 2.2

    # Heard text is estimated from the complete run of the same text; the rest is unknown.
    for entry in (barge, quiet):
        assert entry["heard_text_method"] == "same_text_length"
        assert entry["recorded_text"] is None and entry["state_word_errors"] is None
        assert entry["timeline"] == [] and "timeline" in entry["unobservable"]
    assert quiet["heard_text"] == AGENT
    assert barge["heard_text"] and AGENT.startswith(barge["heard_text"])
    assert barge["heard_text"] != AGENT

    summary = results["summary"]["all"]
    assert summary["state_word_errors"] is None and summary["llm_tokens_after_cancel"] is None
    assert summary["missed"] == 0 and summary["false_interruptions"] == 0
    assert "all" in format_table(results["summary"])
