"""Tests for scenario loading (and the audio helpers it relies on).

The scenario format is a public contract, so each validation rule gets its own case that checks
the error names both the file and the field.
"""

from __future__ import annotations

import itertools
import json
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bargein.audio import (
    SILENCE_DBFS,
    AudioFileError,
    find_onset,
    first_audible,
    from_int16,
    last_audible,
    read_wav,
    resample,
    to_int16,
    wav_info,
    window_dbfs,
    write_wav,
)
from bargein.bench.microphone import Microphone, microphone_for, room_impulse_response
from bargein.bench.speaker import SimulatedSpeaker
from bargein.scenario import (
    Echo,
    Scenario,
    ScenarioError,
    ScenarioEvent,
    load_scenario,
    load_set,
)

SR = 16000


def tone(seconds: float, *, sr: int = SR, amp: float = 0.5, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def with_lead_silence(lead_s: float, sound_s: float = 0.3, sr: int = SR) -> np.ndarray:
    return np.concatenate([np.zeros(int(lead_s * sr), dtype=np.float32), tone(sound_s, sr=sr)])


def valid_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": "bargein-scenario/1",
        "name": "hold-on",
        "kind": "barge_in",
        "expect": "interrupt",
        "agent_text": "Your flight leaves at nine.",
        "events": [{"at_s": 1.5, "audio": "x.wav", "text": "Hold on."}],
        "echo": None,
    }
    doc.update(overrides)
    return doc


def write_doc(folder: Path, filename: str, doc: dict[str, Any] | str) -> Path:
    path = folder / filename
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


def write_raw_wav(path: Path, *, channels: int = 1, width: int = 2, frames: int = 160) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(SR)
        w.writeframes(b"\x10" * (frames * channels * width))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_wav(tmp_path / "x.wav", with_lead_silence(0.2), SR)
    return tmp_path


# --- loading valid scenarios -----------------------------------------------------------------


def test_valid_scenario_loads_with_defaults(folder: Path) -> None:
    path = write_doc(folder, "hold-on.json", valid_doc())
    scenario = load_scenario(path)
    assert isinstance(scenario, Scenario)
    assert scenario.path == path
    assert (scenario.name, scenario.kind, scenario.expect) == ("hold-on", "barge_in", "interrupt")
    assert scenario.echo is None
    (event,) = scenario.events
    assert event == ScenarioEvent(
        at_s=1.5, anchor="speech", audio_path=folder / "x.wav", text="Hold on.", onset_s=None
    )


def test_optional_fields_default(folder: Path) -> None:
    doc = valid_doc(events=[{"at_s": 0, "audio": "x.wav"}])
    del doc["echo"]
    scenario = load_scenario(write_doc(folder, "a.json", doc))
    assert scenario.echo is None
    assert scenario.events[0].text == ""
    assert scenario.events[0].anchor == "speech"
    assert scenario.events[0].at_s == 0.0


def test_reply_anchor_onset_and_echo(folder: Path) -> None:
    doc = valid_doc(
        events=[{"at_s": 0.2, "anchor": "reply", "audio": "x.wav", "onset_s": 0.05}],
        echo={"gain_db": -15, "delay_ms": 150},
    )
    scenario = load_scenario(write_doc(folder, "a.json", doc))
    assert scenario.events[0].anchor == "reply"
    assert scenario.events[0].onset_s == 0.05
    assert scenario.echo == Echo(gain_db=-15.0, delay_ms=150.0)


def test_echo_reverb_is_optional_and_defaults_to_dry(folder: Path) -> None:
    for extra, expected in (({}, 0.0), ({"reverb_s": None}, 0.0), ({"reverb_s": 0.45}, 0.45),
                            ({"reverb_s": 2}, 2.0), ({"reverb_s": 0}, 0.0)):  # fmt: skip
        echo = {"gain_db": -12, "delay_ms": 90, **extra}
        scenario = load_scenario(write_doc(folder, "a.json", valid_doc(echo=echo)))
        assert scenario.echo == Echo(-12.0, 90.0, expected)


def test_empty_events_is_a_control_scenario(folder: Path) -> None:
    scenario = load_scenario(write_doc(folder, "a.json", valid_doc(events=[], expect="continue")))
    assert scenario.events == ()


def test_unknown_fields_are_ignored(folder: Path) -> None:
    doc = valid_doc(
        comment="written by hand",
        future_field={"nested": [1, 2]},
        events=[{"at_s": 1, "audio": "x.wav", "speaker": "f3", "loudness": -20}],
        echo={"gain_db": -10, "delay_ms": 80, "room": "kitchen"},
    )
    scenario = load_scenario(write_doc(folder, "a.json", doc))
    assert scenario.name == "hold-on"
    assert scenario.echo == Echo(-10.0, 80.0)


def test_audio_path_is_relative_to_the_folder(tmp_path: Path) -> None:
    (tmp_path / "sounds").mkdir()
    write_wav(tmp_path / "sounds" / "y.wav", tone(0.1), SR)
    doc = valid_doc(events=[{"at_s": 1, "audio": "sounds/y.wav"}])
    scenario = load_scenario(write_doc(tmp_path, "a.json", doc))
    assert scenario.events[0].audio_path == tmp_path / "sounds" / "y.wav"


# --- errors: each names the file and the field -----------------------------------------------

Mutator = Callable[[dict[str, Any]], None]


def _set(key: str, value: Any) -> Mutator:
    def apply(doc: dict[str, Any]) -> None:
        doc[key] = value

    return apply


def _drop(key: str) -> Mutator:
    def apply(doc: dict[str, Any]) -> None:
        del doc[key]

    return apply


def _event(**fields: Any) -> Mutator:
    def apply(doc: dict[str, Any]) -> None:
        event = {"at_s": 1.0, "audio": "x.wav"}
        event.update(fields)
        doc["events"] = [{"at_s": 0.5, "audio": "x.wav"}, event]

    return apply


def _event_without(key: str) -> Mutator:
    def apply(doc: dict[str, Any]) -> None:
        del doc["events"][0][key]

    return apply


ERROR_CASES: list[tuple[str, Mutator, str, str]] = [
    ("format-missing", _drop("format"), "format", "bargein-scenario/1"),
    ("format-wrong", _set("format", "bargein-scenario/2"), "format", "bargein-scenario/2"),
    ("format-not-string", _set("format", 1), "format", "bargein-scenario/1"),
    ("name-missing", _drop("name"), "name", "required"),
    ("name-empty", _set("name", " "), "name", "empty"),
    ("name-not-string", _set("name", 7), "name", "string"),
    ("kind-not-string", _set("kind", ["barge_in"]), "kind", "string"),
    ("kind-missing", _drop("kind"), "kind", "required"),
    ("expect-wrong", _set("expect", "stop"), "expect", "'interrupt' or 'continue'"),
    ("expect-missing", _drop("expect"), "expect", "required"),
    ("agent-text-empty", _set("agent_text", ""), "agent_text", "empty"),
    ("agent-text-not-string", _set("agent_text", None), "agent_text", "string"),
    ("events-missing", _drop("events"), "events", "required"),
    ("events-not-list", _set("events", {"at_s": 1}), "events", "list"),
    ("event-not-object", _set("events", ["x.wav"]), "events[0]", "object"),
    ("at-missing", _event_without("at_s"), "events[0].at_s", "required"),
    ("at-negative", _event(at_s=-0.5), "events[1].at_s", ">= 0"),
    ("at-string", _event(at_s="2.5"), "events[1].at_s", "number"),
    ("at-bool", _event(at_s=True), "events[1].at_s", "number"),
    ("anchor-wrong", _event(anchor="start"), "events[1].anchor", "'speech' or 'reply'"),
    ("audio-missing", _event_without("audio"), "events[0].audio", "required"),
    ("audio-not-string", _event(audio=3), "events[1].audio", "string"),
    ("audio-not-found", _event(audio="nope.wav"), "events[1].audio", "file 'nope.wav' not found"),
    ("audio-not-wav", _event(audio="notes.txt"), "events[1].audio", "not a readable PCM WAV"),
    ("audio-stereo", _event(audio="stereo.wav"), "events[1].audio", "2 channels"),
    ("audio-8bit", _event(audio="eight.wav"), "events[1].audio", "8-bit"),
    ("audio-24bit", _event(audio="deep.wav"), "events[1].audio", "24-bit"),
    ("audio-folder", _event(audio="sub"), "events[1].audio", "not a regular file"),
    ("text-not-string", _event(text=5), "events[1].text", "string"),
    ("onset-negative", _event(onset_s=-0.1), "events[1].onset_s", ">= 0"),
    ("onset-string", _event(onset_s="0.2"), "events[1].onset_s", "number"),
    ("echo-not-object", _set("echo", -15), "echo", "object"),
    ("echo-gain-missing", _set("echo", {"delay_ms": 100}), "echo.gain_db", "required"),
    ("echo-gain-string", _set("echo", {"gain_db": "-15", "delay_ms": 1}), "echo.gain_db", "number"),
    ("echo-delay-negative", _set("echo", {"gain_db": 0, "delay_ms": -1}), "echo.delay_ms", ">= 0"),
    ("reverb-negative", _set("echo", {"gain_db": -9, "delay_ms": 50, "reverb_s": -0.1}),
     "echo.reverb_s", ">= 0"),
    ("reverb-too-long", _set("echo", {"gain_db": -9, "delay_ms": 50, "reverb_s": 2.5}),
     "echo.reverb_s", "<= 2"),
    ("reverb-string", _set("echo", {"gain_db": -9, "delay_ms": 50, "reverb_s": "0.4"}),
     "echo.reverb_s", "number"),
    ("reverb-bool", _set("echo", {"gain_db": -9, "delay_ms": 50, "reverb_s": True}),
     "echo.reverb_s", "number"),
]  # fmt: skip


@pytest.fixture
def bad_audio_folder(folder: Path) -> Path:
    (folder / "notes.txt").write_text("not audio")
    (folder / "sub").mkdir()
    write_raw_wav(folder / "stereo.wav", channels=2)
    write_raw_wav(folder / "eight.wav", width=1)
    write_raw_wav(folder / "deep.wav", width=3)
    return folder


@pytest.mark.parametrize(
    ("mutate", "field", "fragment"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_error_names_file_and_field(
    bad_audio_folder: Path, mutate: Mutator, field: str, fragment: str
) -> None:
    doc = valid_doc()
    mutate(doc)
    path = write_doc(bad_audio_folder, "broken.json", doc)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    err = info.value
    assert err.file == path
    assert err.field == field
    assert str(err).startswith(f"broken.json: field '{field}': ")
    assert fragment in str(err)


def test_missing_audio_message_matches_the_documented_shape(folder: Path) -> None:
    doc = valid_doc(events=[{"at_s": 1, "audio": "x2.wav"}])
    with pytest.raises(ScenarioError) as info:
        load_scenario(write_doc(folder, "hold-on.json", doc))
    assert str(info.value) == "hold-on.json: field 'events[0].audio': file 'x2.wav' not found"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('"scenario"', "JSON object"),
    ],
)
def test_file_level_errors_have_empty_field(folder: Path, content: str, fragment: str) -> None:
    path = write_doc(folder, "bad.json", content)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.file == path
    assert info.value.field == ""
    assert str(info.value).startswith("bad.json: ")
    assert fragment in str(info.value)


def test_non_utf8_file_is_an_error(folder: Path) -> None:
    path = folder / "latin.json"
    path.write_bytes(b'{"name": "caf\xe9"}')
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.field == ""


def test_infinite_number_is_refused(folder: Path) -> None:
    path = write_doc(folder, "inf.json", json.dumps(valid_doc()).replace("1.5", "Infinity"))
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.field == "events[0].at_s"


# --- sets ------------------------------------------------------------------------------------


def test_set_loads_all_good_files_and_reports_bad_ones(folder: Path) -> None:
    write_doc(folder, "c-good.json", valid_doc(name="c"))
    write_doc(folder, "a-good.json", valid_doc(name="a"))
    write_doc(folder, "b-bad-format.json", valid_doc(name="b", format="other"))
    write_doc(folder, "d-bad-audio.json", valid_doc(name="d", events=[{"at_s": 1, "audio": "z"}]))
    write_doc(folder, "e-not-json.json", "{")
    (folder / "notes.txt").write_text("ignored")
    (folder / "nested").mkdir()
    write_doc(folder / "nested", "inner.json", valid_doc(name="inner"))

    scenarios, errors = load_set(folder)

    assert [s.name for s in scenarios] == ["a", "c"]
    assert [(e.file.name, e.field) for e in errors] == [
        ("b-bad-format.json", "format"),
        ("d-bad-audio.json", "events[0].audio"),
        ("e-not-json.json", ""),
    ]


def test_duplicate_name_is_an_error_on_the_later_file(folder: Path) -> None:
    write_doc(folder, "1.json", valid_doc(name="same"))
    write_doc(folder, "2.json", valid_doc(name="same"))
    write_doc(folder, "3.json", valid_doc(name="other"))
    scenarios, errors = load_set(folder)
    assert [s.path.name for s in scenarios] == ["1.json", "3.json"]
    (err,) = errors
    assert (err.file.name, err.field) == ("2.json", "name")
    assert "1.json" in str(err)


def test_empty_folder_is_an_empty_set(tmp_path: Path) -> None:
    assert load_set(tmp_path) == ([], [])


def test_missing_folder_raises(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ScenarioError) as info:
        load_set(missing)
    assert info.value.file == missing
    assert info.value.field == ""


def test_folder_that_is_a_file_raises(tmp_path: Path) -> None:
    path = write_doc(tmp_path, "a.json", valid_doc())
    with pytest.raises(ScenarioError):
        load_set(path)


# --- events: onset and audio -----------------------------------------------------------------


def test_onset_found_after_leading_silence(tmp_path: Path) -> None:
    write_wav(tmp_path / "late.wav", with_lead_silence(0.25), SR)
    doc = valid_doc(events=[{"at_s": 1, "audio": "late.wav"}])
    event = load_scenario(write_doc(tmp_path, "a.json", doc)).events[0]
    assert event.onset_in_audio() == pytest.approx(0.25, abs=0.011)


def test_explicit_onset_wins(tmp_path: Path) -> None:
    write_wav(tmp_path / "late.wav", with_lead_silence(0.25), SR)
    doc = valid_doc(events=[{"at_s": 1, "audio": "late.wav", "onset_s": 0.1}])
    event = load_scenario(write_doc(tmp_path, "a.json", doc)).events[0]
    assert event.onset_in_audio() == 0.1


def test_quiet_clip_onset_defaults_to_zero(tmp_path: Path) -> None:
    write_wav(tmp_path / "quiet.wav", tone(0.3, amp=0.001), SR)
    doc = valid_doc(events=[{"at_s": 1, "audio": "quiet.wav"}])
    event = load_scenario(write_doc(tmp_path, "a.json", doc)).events[0]
    assert event.onset_in_audio() == 0.0


def test_event_load_resamples(tmp_path: Path) -> None:
    write_wav(tmp_path / "hi.wav", tone(0.5, sr=22050), 22050)
    doc = valid_doc(events=[{"at_s": 1, "audio": "hi.wav"}])
    event = load_scenario(write_doc(tmp_path, "a.json", doc)).events[0]
    audio = event.load(16000)
    assert audio.dtype == np.float32
    assert audio.size == 8000


# --- audio helpers ---------------------------------------------------------------------------


def test_wav_round_trip(tmp_path: Path) -> None:
    audio = tone(0.2)
    write_wav(tmp_path / "t.wav", audio, SR)
    back, rate = read_wav(tmp_path / "t.wav")
    assert rate == SR
    assert back.dtype == np.float32
    assert np.max(np.abs(back - audio)) < 1e-4
    assert wav_info(tmp_path / "t.wav").duration_s == pytest.approx(0.2)


def test_read_wav_errors_name_the_path(tmp_path: Path) -> None:
    write_raw_wav(tmp_path / "stereo.wav", channels=2)
    for name, fragment in (("missing.wav", "not found"), ("stereo.wav", "mono")):
        with pytest.raises(AudioFileError) as info:
            read_wav(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)
        assert fragment in str(info.value)


def test_int16_conversions_clip() -> None:
    pcm = to_int16(np.array([-2.0, -1.0, 0.0, 0.5, 2.0], dtype=np.float32))
    assert pcm.tolist() == [-32767, -32767, 0, 16384, 32767]
    assert from_int16(np.array([-32768, 16384], dtype=np.int16)).tolist() == [-1.0, 0.5]


def test_resample_lengths_and_identity() -> None:
    audio = tone(1.0, sr=22050)
    assert resample(audio, 22050, 16000).size == 16000
    assert np.array_equal(resample(audio, 22050, 22050), audio)


def test_window_levels() -> None:
    full_sine = tone(0.1, amp=1.0, freq=1000.0)
    levels = window_dbfs(full_sine, SR)
    assert levels.size == 10
    assert np.allclose(levels, -3.01, atol=0.05)
    assert window_dbfs(np.zeros(160, dtype=np.float32), SR).tolist() == [SILENCE_DBFS]
    assert window_dbfs(np.zeros(165, dtype=np.float32), SR).size == 2  # partial window kept


def test_audible_bounds() -> None:
    audio = np.concatenate(
        [np.zeros(1600, dtype=np.float32), tone(0.5), np.zeros(3200, dtype=np.float32)]
    )
    assert first_audible(audio, SR) == pytest.approx(0.1)
    assert find_onset(audio, SR) == pytest.approx(0.1)
    assert last_audible(audio, SR) == pytest.approx(0.6)
    silent = np.zeros(1000, dtype=np.float32)
    assert find_onset(silent, SR) is None
    assert last_audible(silent, SR) is None


# --- echo through a room (the ``reverb_s`` extension) ----------------------------------------

ECHO_DB = -10.0
ECHO_DELAY_S = 0.1
BURST_S = 0.5


def _speaker_after_a_burst(total_s: float = 2.0) -> SimulatedSpeaker:
    """A loudspeaker that played 0.5 s of noise at time 0 and has rendered ``total_s``."""
    speaker = SimulatedSpeaker(SR, max_s=total_s + 1.0)
    noise = 0.3 * np.random.default_rng(7).standard_normal(int(BURST_S * SR))
    speaker.write(1, noise.astype(np.float32))
    speaker.render_until(total_s)
    return speaker


def _echo_mic(speaker: SimulatedSpeaker, reverb_s: float) -> Microphone:
    return Microphone(
        events=[],
        echo_gain=10 ** (ECHO_DB / 20),
        echo_delay_s=ECHO_DELAY_S,
        speaker=speaker,
        echo=True,
        rate=SR,
        echo_reverb_s=reverb_s,
    )


def _record(mic: Microphone, frames: list[int]) -> np.ndarray:
    return np.concatenate([mic.frame(n) for n in frames])


def _db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-30))


def test_room_impulse_response_is_deterministic_and_unit_energy() -> None:
    assert room_impulse_response(0.0, SR).tolist() == [1.0]
    ir = room_impulse_response(0.5, SR)
    assert ir.size == int(0.5 * SR)
    assert float(np.sum(ir * ir)) == pytest.approx(1.0)
    assert not ir.flags.writeable
    room_impulse_response.cache_clear()
    assert np.array_equal(room_impulse_response(0.5, SR), ir)
    # The envelope falls by about 60 dB over the decay time (20 dB per third of it).
    thirds = np.array_split(ir[1:], 3)
    drops = [_db(a) - _db(b) for a, b in itertools.pairwise(thirds)]
    assert all(15.0 < d < 25.0 for d in drops), drops
    with pytest.raises(ValueError, match="reverb_s"):
        room_impulse_response(-1.0, SR)


def test_reverb_echo_rings_on_and_decays_after_the_speaker_stops() -> None:
    speaker = _speaker_after_a_burst()
    wet = _record(_echo_mic(speaker, 0.6), [512] * 60)
    dry = _record(_echo_mic(speaker, 0.0), [512] * 60)
    stop = round((BURST_S + ECHO_DELAY_S) * SR)  # where the direct echo ends
    # While the speaker plays, the room keeps the echo's level (unit-energy response).
    during = slice(round(0.2 * SR), round(0.55 * SR))
    assert abs(_db(wet[during]) - _db(dry[during])) < 2.0
    # After it stops, the dry echo is gone at once; the room's tail decays, 60 dB in 0.6 s.
    assert not np.any(dry[stop + 1 :])
    levels = [_db(wet[stop + round(t * SR) :][: SR // 20]) for t in (0.05, 0.2, 0.35, 0.5)]
    assert all(a > b for a, b in itertools.pairwise(levels)), levels
    assert levels[0] > _db(dry[during]) - 40.0
    assert 30.0 < levels[0] - levels[-1] < 60.0, levels
    # And it ends with the response (FFT rounding leaves nothing audible).
    assert float(np.max(np.abs(wet[stop + round(0.6 * SR) + 1 :]))) < 1e-6


def test_reverb_does_not_depend_on_frame_sizes() -> None:
    speaker = _speaker_after_a_burst()
    even = _record(_echo_mic(speaker, 0.4), [512] * 40)
    ragged = _record(_echo_mic(speaker, 0.4), [1, 999, 37, 4000, 160, 3, 7000, 7000, 1280])
    assert ragged.size == even.size
    np.testing.assert_allclose(ragged, even, atol=1e-6)


def test_zero_reverb_is_the_plain_echo_exactly(folder: Path) -> None:
    speaker = _speaker_after_a_burst()
    gain = 10 ** (ECHO_DB / 20)
    expected = []
    for k in range(40):
        lo, hi = k * 512, (k + 1) * 512
        t0, t1 = lo / SR - ECHO_DELAY_S, hi / SR - ECHO_DELAY_S
        expected.append(np.clip(gain * speaker.output_between(t0, t1, SR), -1.0, 1.0))
    plain = np.concatenate(expected)
    for echo in ({}, {"reverb_s": 0}, {"reverb_s": None}):
        doc = valid_doc(events=[], echo={"gain_db": ECHO_DB, "delay_ms": 100, **echo})
        mic = microphone_for(load_scenario(write_doc(folder, "e.json", doc)), speaker, SR)
        assert mic.echo_reverb_s == 0.0
        assert np.array_equal(_record(mic, [512] * 40), plain)


def test_microphone_for_takes_the_scenario_reverb(folder: Path) -> None:
    doc = valid_doc(echo={"gain_db": -12, "delay_ms": 80, "reverb_s": 0.7})
    scenario = load_scenario(write_doc(folder, "e.json", doc))
    mic = microphone_for(scenario, _speaker_after_a_burst(), SR)
    assert (mic.echo, mic.echo_reverb_s) == (True, 0.7)
