"""The training script's recording decider (scripts/train_tier2.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

from bargein.decider import FrameInfo, Overlap
from bargein.tier2 import frame_features

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "train_tier2.py"


def _script() -> ModuleType:
    name = "train_tier2_under_test"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up by name
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_each_overlap_gets_its_own_rows_even_at_a_reused_address() -> None:
    recorder = _script().RecordingDecider("backchannel")
    audio = np.random.default_rng(0).uniform(-0.1, 0.1, 512).astype(np.float32)
    features = frame_features(audio)
    for n in range(5):
        # The policy drops each overlap once decided; CPython then mostly allocates the
        # next one at the same address, which an id()-keyed recorder took for the same.
        overlap = Overlap(onset_at=10.0 * n, agent_audible=True)
        overlap.frames = [FrameInfo(overlap.onset_at + 0.032, 0.9, features)]
        overlap.last_voiced_at = overlap.onset_at
        recorder.decide(overlap, overlap.onset_at + 0.1)
        del overlap
    assert [index for index, _, _ in recorder.rows] == [0, 1, 2]  # max_overlaps = 3


def test_no_rows_where_the_model_would_wait_for_a_reading() -> None:
    """The model never decides while a reading is under way (up to its wait), so the rows
    it learns from and the replay that sets its thresholds leave those frames out."""
    script = _script()
    recorder = script.RecordingDecider("backchannel")
    audio = np.random.default_rng(0).uniform(-0.1, 0.1, 512).astype(np.float32)
    overlap = Overlap(onset_at=1.0, agent_audible=True, last_voiced_at=1.0)
    overlap.frames = [
        FrameInfo(1.0 + 0.032 * (i + 1), 0.9, frame_features(audio)) for i in range(30)
    ]
    overlap.reading_since = 1.3
    for frame in overlap.frames:
        recorder.decide(overlap, frame.at)
    times = [round(t, 3) for _, t, _ in recorder.rows]
    assert times and all(t < 0.3 or t >= 0.7 for t in times)  # the wait: 0.4 s from 0.3
    assert any(0.3 <= t < 0.7 for t in (f.at - 1.0 for f in overlap.frames))


def test_a_users_thinking_scenarios_are_labelled_by_what_they_expect() -> None:
    """The built-in set's ``thinking`` scenarios are bids and backchannels alike, told
    apart by ``expect``; a user's set may be too."""
    label_of = _script().label_of
    assert label_of("thinking", "interrupt", True) == "floor"
    assert label_of("thinking", "continue", True) == "backchannel"
    assert label_of("thinking", "continue", False) == "noise"
    assert label_of("thinking_backchannel", "continue", True) == "backchannel"
    assert label_of("short_command", "interrupt", True) == "floor"
