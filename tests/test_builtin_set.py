"""Tests for the generated built-in scenario set.

The whole set takes about a minute to synthesise, so most properties are checked on the
generator's plan (names, kinds, voices, timings, tags: no audio needed), and the audio itself
on a sample of the plan that spans every kind, both engines, new and old noises and echoes with
and without a room. The sample is generated once per module; a second generation (into a
folder holding a stale set) checks cleanup and byte-for-byte reproducibility together.
Set ``BARGEIN_TEST_FULL_SET=1`` to also generate and load the full set.
"""

from __future__ import annotations

import json
import re
import time
import wave
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bargein import builtin_set
from bargein.audio import find_onset, first_audible, read_wav, wav_info, window_dbfs
from bargein.builtin_set import (
    AGENT_REPLIES,
    FRESH_GENERATOR_VERSION,
    GENERATOR_VERSION,
    HELDOUT_NOISES,
    HELDOUT_VOICES,
    QUESTION_REPLIES,
    STAMP_NAME,
    EspeakStyle,
    generate_builtin_set,
    main,
)
from bargein.espeak import Espeak, EspeakError
from bargein.scenario import MAX_REVERB_S, Scenario, load_set

MIN_COUNTS = {
    "barge_in": 25,
    "short_command": 15,
    "backchannel": 20,
    "noise": 15,
    "echo": 12,
    "thinking": 8,
    "near_end": 4,
    "silence": 3,
}
EXPECTS = {
    "barge_in": {"interrupt"},
    "short_command": {"interrupt"},
    "backchannel": {"continue"},
    "noise": {"continue"},
    "echo": {"interrupt", "continue"},
    "thinking": {"interrupt", "continue"},
    "near_end": {"continue"},
    "silence": {"continue"},
}
SPEECH_KINDS = {"barge_in", "short_command", "backchannel", "thinking", "near_end"}

PLAN = builtin_set._specs()


def _sample() -> list[builtin_set._Spec]:
    """About a fifth of the plan: the first of each kind and expect, then every 5th scenario
    not spoken by Piper (the slow engine), so both generations take seconds, not minutes."""
    seen: set[tuple[str, str]] = set()
    chosen = []
    for index, spec in enumerate(PLAN):
        key = (spec.kind, spec.expect)
        piper = builtin_set._tags(spec)["engine"] == "piper"
        if key not in seen or (index % 5 == 0 and not piper):
            chosen.append(spec)
        seen.add(key)
    return chosen


SAMPLE = _sample()


@pytest.fixture(scope="module")
def sample_plan() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builtin_set, "_specs", _sample)
        yield


@pytest.fixture(scope="module")
def generated(sample_plan: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
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
def documents(set_dir: Path) -> dict[str, dict[str, object]]:
    docs = (json.loads(p.read_text(encoding="utf-8")) for p in set_dir.glob("*.json"))
    return {doc["name"]: doc for doc in docs}


@pytest.fixture(scope="module")
def regenerated(sample_plan: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second generation into a folder that holds an older generator's output."""
    dest = tmp_path_factory.mktemp("builtin-again")
    (dest / STAMP_NAME).write_text("bargein-builtin-set/0\n")
    (dest / "stale-scenario.json").write_text("{}")
    (dest / "stale-scenario.wav").write_bytes(b"")
    generate_builtin_set(dest)
    return dest


# --- the plan ---------------------------------------------------------------------------------


def test_plan_covers_every_standard_kind_in_the_wanted_amounts() -> None:
    counts = Counter(s.kind for s in PLAN)
    assert set(counts) == set(MIN_COUNTS)
    for kind, least in MIN_COUNTS.items():
        assert counts[kind] >= least, kind
    assert len(PLAN) >= 100
    assert len({s.name for s in PLAN}) == len(PLAN)
    for s in PLAN:
        assert s.expect in EXPECTS[s.kind], s.name


def test_echo_scenarios_are_half_echo_only_half_barge_in() -> None:
    echoes = [s for s in PLAN if s.kind == "echo"]
    assert all(s.echo is not None for s in echoes)
    assert all(s.echo is None for s in PLAN if s.kind != "echo")
    only = [s for s in echoes if s.expect == "continue"]
    barge = [s for s in echoes if s.expect == "interrupt"]
    assert len(only) == len(barge) == len(echoes) // 2
    assert all(s.name.startswith("echo-only-") and s.sound is None for s in only)
    assert all(s.name.startswith("echo-barge-in-") and s.sound for s in barge)
    rooms = []
    for s in echoes:
        assert s.echo is not None
        gain_db, delay_ms, reverb_s = s.echo
        assert -25.0 <= gain_db <= -8.0 and 40.0 <= delay_ms <= 300.0, s.name
        assert 0.0 <= reverb_s <= MAX_REVERB_S
        rooms.append(reverb_s > 0)
    # Dry and reverberant echoes, in both halves.
    for half in (only, barge):
        assert {s.echo[2] > 0 for s in half if s.echo} == {True, False}
    assert sum(rooms) >= len(echoes) // 2


def test_thinking_has_interruptions_and_backchannels() -> None:
    thinking = [s for s in PLAN if s.kind == "thinking"]
    expects = Counter(s.expect for s in thinking)
    assert expects["interrupt"] >= 4 and expects["continue"] >= 2
    for s in thinking:
        assert s.anchor == "reply" and 0.05 <= s.at_s <= 0.4, s.name
        assert s.name.startswith("thinking-backchannel-") == (s.expect == "continue")


def test_timing_lands_inside_the_reply() -> None:
    for s in PLAN:
        words = len(AGENT_REPLIES[s.reply].split())
        if s.kind == "thinking" or s.sound is None:
            continue
        assert s.anchor == "speech", s.name
        if s.kind == "near_end":
            assert s.after_end and 0.05 <= s.at_s <= 0.5, s.name
            continue
        assert not s.after_end
        # Every voice here speaks under four words a second: at least 1.5 s of reply is left.
        assert 1.0 <= s.at_s <= words / 4.0 - 1.5, s.name
    barge_at = [s.at_s for s in PLAN if s.kind == "barge_in"]
    assert min(barge_at) <= 2.0 and max(barge_at) >= 15.0


def test_agent_replies_are_tts_friendly_and_vary_in_length() -> None:
    used = {s.reply for s in PLAN}
    assert used == set(AGENT_REPLIES)
    lengths = [len(text.split()) for text in AGENT_REPLIES.values()]
    assert min(lengths) <= 30 and max(lengths) >= 90
    for text in AGENT_REPLIES.values():
        assert not re.search(r"[0-9]", text)
        assert "-" not in text
        assert not re.search(r"\b(Dr|Mr|Mrs|Ms|St|No|etc|e\.g|i\.e)\.", text)
        assert 20 <= len(text.split()) <= 110


def test_voices_and_noises_vary() -> None:
    speech = [s for s in PLAN if s.style is not None]
    engines = Counter(builtin_set._tags(s)["engine"] for s in speech)
    assert engines["piper"] >= 25 and engines["espeak"] >= 40
    styles = {s.style for s in speech}
    assert len(styles) >= 35
    assert styles == set(builtin_set._STYLES)  # every style is used
    for s in speech:
        assert s.style is not None and s.name.endswith(s.style), s.name
    espeak_voices = {
        style.voice for style in builtin_set._STYLES.values() if hasattr(style, "voice")
    }
    assert len({v.split("+")[0] for v in espeak_voices}) >= 7  # accents
    assert len({v.split("+")[1] for v in espeak_voices}) >= 20  # variants
    noises = [s.sound for s in PLAN if s.kind == "noise"]
    assert len(set(noises)) >= 14
    assert set(noises) == set(builtin_set._NOISES)


def test_held_out_voices_and_noises_are_tagged_and_never_trained_on() -> None:
    tags = {s.name: builtin_set._tags(s) for s in PLAN}
    held = [s for s in PLAN if tags[s.name]["split"] == "heldout"]
    train = [s for s in PLAN if tags[s.name]["split"] == "train"]
    assert 0.1 * len(PLAN) <= len(held) <= 0.25 * len(PLAN)
    assert {tags[s.name]["voice"] for s in held} - {None} == set(HELDOUT_VOICES)
    assert {tags[s.name]["noise"] for s in held} - {None} == set(HELDOUT_NOISES)
    for s in train:
        assert tags[s.name]["voice"] not in HELDOUT_VOICES
        assert tags[s.name]["noise"] not in HELDOUT_NOISES
    # Held-out voices speak barge-ins, short commands and backchannels alike.
    assert {"barge_in", "short_command", "backchannel", "noise"} <= {s.kind for s in held}
    for s in PLAN:
        t = tags[s.name]
        assert t["engine"] == ("procedural" if s.kind == "noise" else t["engine"])
        assert (t["voice"] is None) == (s.style is None)
        assert (t["noise"] is None) == (s.kind != "noise")


# --- the generated sample ---------------------------------------------------------------------


def test_sample_spans_the_plan() -> None:
    assert {s.kind for s in SAMPLE} == set(MIN_COUNTS)
    assert {(s.kind, s.expect) for s in SAMPLE} == {(s.kind, s.expect) for s in PLAN}
    engines = {builtin_set._tags(s)["engine"] for s in SAMPLE}
    assert engines == {"piper", "espeak", "procedural", None}
    assert any(s.echo and s.echo[2] > 0 for s in SAMPLE)
    assert any(builtin_set._tags(s)["split"] == "heldout" for s in SAMPLE)


def test_generation_is_fast_enough(generated: tuple[Path, float]) -> None:
    assert generated[1] < 60.0


def test_set_loads_without_errors(set_dir: Path, scenarios: list[Scenario]) -> None:
    assert sorted(s.name for s in scenarios) == sorted(s.name for s in SAMPLE)
    assert sorted(p.stem for p in set_dir.glob("*.json")) == sorted(s.name for s in scenarios)
    by_name = {s.name: s for s in SAMPLE}
    for s in scenarios:
        spec = by_name[s.name]
        assert (s.kind, s.expect, s.agent_text) == (
            spec.kind,
            spec.expect,
            AGENT_REPLIES[spec.reply],
        )
        assert len(s.events) == (0 if spec.sound is None else 1), s.name
        if spec.echo is None:
            assert s.echo is None
        else:
            assert s.echo is not None
            assert (s.echo.gain_db, s.echo.delay_ms, s.echo.reverb_s) == spec.echo


def test_files_carry_tags_and_dry_echoes_stay_plain(
    documents: dict[str, dict[str, object]],
) -> None:
    for spec in SAMPLE:
        doc = documents[spec.name]
        assert doc["tags"] == builtin_set._tags(spec)
        echo = doc["echo"]
        if isinstance(echo, dict):
            assert ("reverb_s" in echo) == (echo.get("reverb_s", 0) != 0)


def test_all_wavs_are_mono_16_bit(set_dir: Path) -> None:
    rates = set()
    wavs = sorted(set_dir.glob("*.wav"))
    assert len(wavs) == sum(1 for s in SAMPLE if s.sound is not None)
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
        if s.kind not in SPEECH_KINDS and not s.name.startswith("echo-barge-in-"):
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


def test_near_end_lands_just_after_the_reply(scenarios: list[Scenario]) -> None:
    near = [s for s in scenarios if s.kind == "near_end"]
    assert near
    for s in near:
        words = len(s.agent_text.split())
        # The agent voice speaks about 3.3 to 4 words a second.
        assert words / 4.2 < s.events[0].at_s < words / 3.0 + 0.5, s.name


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


# -- the fresh check set -------------------------------------------------------------------

FRESH = builtin_set._fresh_specs()


def test_the_fresh_set_shares_no_sentence_voice_or_room_with_the_built_in_set() -> None:
    assert len(FRESH) == 79 and len({s.name for s in FRESH}) == len(FRESH)
    said = {s.sound for s in PLAN if s.style is not None}
    assert not said & {s.sound for s in FRESH if s.style is not None}
    fresh_styles = {s.style for s in FRESH if s.style is not None}
    assert fresh_styles == set(builtin_set._FRESH_STYLES)  # every fresh voice is used
    assert not fresh_styles & set(builtin_set._STYLES)
    espeak = {v.voice for v in builtin_set._STYLES.values() if isinstance(v, EspeakStyle)}
    for tag in fresh_styles:
        style = builtin_set._FRESH_STYLES[tag]
        if isinstance(style, EspeakStyle):
            assert style.voice not in espeak, tag
    assert not {s.echo for s in FRESH if s.echo} & {s.echo for s in PLAN if s.echo}
    assert {builtin_set._tags(s)["split"] for s in FRESH} == {"fresh"}
    kinds = Counter(s.kind for s in FRESH)
    assert kinds == {
        "barge_in": 23,
        "short_command": 10,
        "backchannel": 24,
        "noise": 8,
        "echo": 6,
        "answer": 8,
    }


def test_the_fresh_set_s_sounds_land_inside_the_reply() -> None:
    for s in FRESH:
        if s.sound is not None and not s.after_question:
            words = len(AGENT_REPLIES[s.reply].split())
            assert 1.0 <= s.at_s <= words / 4.0 - 1.5, s.name


def test_the_fresh_set_s_answers_follow_the_agent_s_question() -> None:
    """A yes within a second of the question's end is an answer that takes the floor; two
    seconds on, over the next sentence, the same kind of word is a backchannel."""
    timed = [s for s in FRESH if s.after_question]
    assert {s.reply for s in timed} == set(QUESTION_REPLIES)
    for s in timed:
        rest = QUESTION_REPLIES[s.reply].split("? ", 1)[1]
        # The sound lands inside the reply: after the question, under four words a second.
        assert len(rest.split()) / 4.0 >= s.at_s + 1.0, s.name
        if s.kind == "answer":
            assert s.expect == "interrupt" and -0.2 <= s.at_s <= 0.9, s.name
        else:
            assert s.kind == "backchannel" and s.expect == "continue", s.name
            assert s.name.startswith("backchannel-after-question-") and s.at_s >= 2.0, s.name
    for text in QUESTION_REPLIES.values():
        assert "?" not in text.split("? ", 1)[1] and not re.search(r"[0-9-]", text)
        assert 20 <= len(text.split()) <= 110


def test_the_fresh_set_generates_and_loads(tmp_path: Path) -> None:
    dest = tmp_path / "fresh"
    assert main([str(dest), "--fresh"]) == 0
    assert (dest / STAMP_NAME).read_text().strip() == FRESH_GENERATOR_VERSION
    loaded, errors = load_set(dest)
    assert errors == [] and len(loaded) == len(FRESH)
    # Each answer's onset sits its offset after the question's end, one end per reply.
    question_end: dict[str, list[float]] = {}
    specs = {s.name: s for s in FRESH}
    for scenario in loaded:
        spec = specs[scenario.name]
        if spec.after_question:
            event = scenario.events[0]
            end = event.at_s + event.onset_in_audio() - spec.at_s
            question_end.setdefault(spec.reply, []).append(end)
    assert set(question_end) == set(QUESTION_REPLIES)
    for reply, ends in question_end.items():
        # Within a 10 ms window: an onset the file does not state is found by its level.
        assert max(ends) - min(ends) <= 0.011 and 1.5 <= min(ends) <= 4.0, (reply, ends)
    for scenario in loaded:
        for event in scenario.events:
            audio, _ = read_wav(event.audio_path)
            # No silent or broken clip (a noise once came out NaN at 22.05 kHz).
            assert np.isfinite(audio).all() and float(np.max(np.abs(audio))) > 0.01, scenario.name
