"""Tests for the generated built-in scenario set.

Generation takes a few seconds, so the set is generated once per module; a second generation
(into a folder holding a stale set) checks cleanup and byte-for-byte reproducibility together.
"""

from __future__ import annotations

import re
import time
import wave
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bargein.audio import find_onset, first_audible, read_wav, wav_info, window_dbfs
from bargein.builtin_set import (
    AGENT_REPLIES,
    GENERATOR_VERSION,
    STAMP_NAME,
    generate_builtin_set,
    main,
)
from bargein.espeak import Espeak, EspeakError
from bargein.scenario import Scenario, load_set

EXPECTED_COUNTS = {
    "barge_in": 10,
    "short_command": 8,
    "backchannel": 8,
    "noise": 6,
    "thinking": 2,
    "near_end": 2,
    "silence": 1,
}
EXPECTED_EXPECT = {
    "barge_in": "interrupt",
    "short_command": "interrupt",
    "backchannel": "continue",
    "noise": "continue",
    "thinking": "interrupt",
    "near_end": "continue",
    "silence": "continue",
}
SPEECH_KINDS = {"barge_in", "short_command", "backchannel", "thinking", "near_end"}
STANDARD_KINDS = set(EXPECTED_COUNTS) | {"echo"}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    dest = tmp_path_factory.mktemp("builtin") / "set"
    started = time.perf_counter()
    generate_builtin_set(dest)
    return dest, time.perf_counter() - started


@pytest.fixture(scope="module")
def set_dir(generated: tuple[Path, float]) -> Path:
    return generated[0]


@pytest.fixture(scope="module")
def scenarios(set_dir: Path) -> list[Scenario]:
    loaded, errors = load_set(set_dir)
    assert errors == []
    return loaded


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second generation into a folder that holds an older generator's output."""
    dest = tmp_path_factory.mktemp("builtin-again")
    (dest / STAMP_NAME).write_text("bargein-builtin-set/0\n")
    (dest / "stale-scenario.json").write_text("{}")
    (dest / "stale-scenario.wav").write_bytes(b"")
    generate_builtin_set(dest)
    return dest


def test_generation_is_fast_enough(generated: tuple[Path, float]) -> None:
    assert generated[1] < 45.0


def test_set_loads_without_errors(set_dir: Path, scenarios: list[Scenario]) -> None:
    assert len(scenarios) == sum(EXPECTED_COUNTS.values())
    assert sorted(p.stem for p in set_dir.glob("*.json")) == sorted(s.name for s in scenarios)


def test_every_standard_kind_but_echo_is_present(scenarios: list[Scenario]) -> None:
    kinds = {s.kind for s in scenarios}
    assert kinds == STANDARD_KINDS - {"echo"}


def test_counts_and_expectations_per_kind(scenarios: list[Scenario]) -> None:
    assert Counter(s.kind for s in scenarios) == Counter(EXPECTED_COUNTS)
    for s in scenarios:
        assert s.expect == EXPECTED_EXPECT[s.kind], s.name
        assert s.echo is None
        assert len(s.events) == (0 if s.kind == "silence" else 1), s.name


def test_agent_replies_are_tts_friendly(scenarios: list[Scenario]) -> None:
    texts = {s.agent_text for s in scenarios}
    assert 5 <= len(texts) <= 6
    assert texts <= set(AGENT_REPLIES.values())
    for text in texts:
        assert not re.search(r"[0-9]", text)
        assert "-" not in text
        assert not re.search(r"\b(Dr|Mr|Mrs|Ms|St|No|etc|e\.g|i\.e)\.", text)
        assert 50 <= len(text.split()) <= 75


def test_all_wavs_are_mono_16_bit(set_dir: Path) -> None:
    rates = set()
    wavs = sorted(set_dir.glob("*.wav"))
    assert len(wavs) == sum(EXPECTED_COUNTS.values()) - EXPECTED_COUNTS["silence"]
    for path in wavs:
        with wave.open(str(path), "rb") as w:
            assert w.getnchannels() == 1, path.name
            assert w.getsampwidth() == 2, path.name
            rates.add(w.getframerate())
        info = wav_info(path)
        assert 0.2 < info.duration_s < 4.0, path.name
    assert rates == {16000, 22050}


def test_speech_events_are_audible_after_their_onset(scenarios: list[Scenario]) -> None:
    for s in scenarios:
        if s.kind not in SPEECH_KINDS:
            continue
        (event,) = s.events
        assert event.text, s.name
        audio, rate = read_wav(event.audio_path)
        onset = event.onset_in_audio()
        after = audio[int(onset * rate) :]
        loud = window_dbfs(after, rate) > -40.0
        # At least 100 ms of clearly audible sound follows the onset.
        assert int(np.sum(loud)) >= 10, s.name


def test_every_event_starts_with_silence(scenarios: list[Scenario]) -> None:
    for s in scenarios:
        for event in s.events:
            audio, rate = read_wav(event.audio_path)
            start = first_audible(audio, rate, threshold_dbfs=-50.0)
            assert start is not None and 0.09 <= start <= 0.35, s.name
            assert 0.09 <= event.onset_in_audio() <= 0.35, s.name


def test_explicit_onsets_are_mixed_and_truthful(scenarios: list[Scenario]) -> None:
    events = [e for s in scenarios for e in s.events]
    explicit = [e for e in events if e.onset_s is not None]
    assert 0.3 * len(events) <= len(explicit) <= 0.7 * len(events)
    for event in explicit:
        audio, rate = read_wav(event.audio_path)
        found = find_onset(audio, rate)
        assert found is not None and event.onset_s is not None
        assert found >= event.onset_s - 0.011
        assert found - event.onset_s < 0.1


def test_noise_events_have_no_text(scenarios: list[Scenario]) -> None:
    for s in scenarios:
        if s.kind == "noise":
            assert s.events[0].text == ""
            assert s.events[0].anchor == "speech"


def test_timing_per_kind(scenarios: list[Scenario]) -> None:
    for s in scenarios:
        for event in s.events:
            if s.kind == "thinking":
                assert event.anchor == "reply"
                assert 0.05 <= event.at_s <= 0.3
            else:
                assert event.anchor == "speech"
            if s.kind in {"barge_in", "short_command", "backchannel", "noise"}:
                assert 1.5 <= event.at_s <= 6.0, s.name
            if s.kind == "near_end":
                # Just after a reply of twelve to twenty seconds.
                assert 12.0 < event.at_s < 21.0, s.name


def test_voices_vary(scenarios: list[Scenario]) -> None:
    names = [s.name for s in scenarios if s.kind in SPEECH_KINDS]
    assert sum("piper" in n for n in names) >= 8
    assert sum("espeak" in n for n in names) >= 8
    styles = set()
    for name in names:
        match = re.search(r"(piper|espeak)(-[a-z0-9]+)*$", name)
        assert match is not None, name
        styles.add(match.group(0))
    assert len(styles) >= 12


def test_second_generation_is_skipped(set_dir: Path) -> None:
    assert (set_dir / STAMP_NAME).read_text().strip() == GENERATOR_VERSION
    before = {p.name: p.stat().st_mtime_ns for p in set_dir.iterdir()}
    started = time.perf_counter()
    assert generate_builtin_set(set_dir) == set_dir
    assert time.perf_counter() - started < 1.0
    assert {p.name: p.stat().st_mtime_ns for p in set_dir.iterdir()} == before


def test_output_is_deterministic(set_dir: Path, regenerated: Path) -> None:
    first = sorted(p.name for p in set_dir.iterdir())
    second = sorted(p.name for p in regenerated.iterdir())
    assert first == second  # and the stale files of the old version are gone
    for name in first:
        assert (set_dir / name).read_bytes() == (regenerated / name).read_bytes(), name


def test_main_reports_an_up_to_date_set(set_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(set_dir)]) == 0
    assert "already up to date" in capsys.readouterr().out


def test_espeak_reports_a_missing_library(tmp_path: Path) -> None:
    missing = tmp_path / "libespeak-ng.so"
    with pytest.raises(EspeakError, match="cannot load libespeak-ng"):
        Espeak(library_path=str(missing), data_path=str(tmp_path))
