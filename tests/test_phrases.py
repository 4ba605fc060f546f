"""Tests of the closed-set phrase spotter on real PocketSphinx and real Piper speech.

Piper runs with its noise turned off so every clip, and hence every decode, is the same
on every run; the speech is resampled to the spotter's 16 kHz.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from bargein.audio import resample
from bargein.decider import INTERRUPT_PHRASES, normalize_words, only_backchannel
from bargein.providers.base import FloatAudio, ProviderError, StreamingRecognizer
from bargein.providers.phrases import PocketSphinxPhraseSpotter
from bargein.providers.piper import PiperTTS


@pytest.fixture(scope="module")
def tts() -> PiperTTS:
    return PiperTTS(noise_scale=0.0, noise_w_scale=0.0)


@pytest.fixture(scope="module")
def spotter() -> PocketSphinxPhraseSpotter:
    return PocketSphinxPhraseSpotter()


def speak(tts: PiperTTS, text: str) -> FloatAudio:
    """``text`` as 16 kHz audio with a quarter second of silence either side, as a VAD cuts it."""
    audio = np.concatenate([chunk.audio for chunk in tts.synthesize(text)])
    speech = resample(audio, tts.sample_rate, 16000).astype(np.float32)
    pad = np.zeros(4000, dtype=np.float32)
    return np.concatenate([pad, speech, pad]).astype(np.float32)


def decode(spotter: PocketSphinxPhraseSpotter, audio: FloatAudio) -> Sequence[str]:
    """Feed in 20 ms chunks, as the session does, and return the final words."""
    spotter.start()
    for i in range(0, audio.size, 320):
        spotter.feed(audio[i : i + 320])
    return spotter.finish()


def test_spotter_is_a_streaming_recognizer(spotter: PocketSphinxPhraseSpotter) -> None:
    assert isinstance(spotter, StreamingRecognizer)
    assert spotter.sample_rate == 16000


def test_stop_is_a_command(tts: PiperTTS, spotter: PocketSphinxPhraseSpotter) -> None:
    words = decode(spotter, speak(tts, "Stop."))
    assert "stop" in words


def test_hold_on_is_a_command(tts: PiperTTS, spotter: PocketSphinxPhraseSpotter) -> None:
    words = normalize_words(decode(spotter, speak(tts, "Hold on.")))
    assert " hold on " in " " + " ".join(words) + " "


@pytest.mark.parametrize("text", ["Yeah.", "Okay.", "Right."])
def test_backchannels_are_backchannels(
    tts: PiperTTS, spotter: PocketSphinxPhraseSpotter, text: str
) -> None:
    words = normalize_words(decode(spotter, speak(tts, text)))
    assert words, f"{text!r} came out empty"
    assert only_backchannel(words), f"{text!r} -> {words}"
    assert not set(words) & set(INTERRUPT_PHRASES)


def test_silence_is_empty(spotter: PocketSphinxPhraseSpotter) -> None:
    assert list(decode(spotter, np.zeros(16000, dtype=np.float32))) == []


def test_white_noise_is_empty(spotter: PocketSphinxPhraseSpotter) -> None:
    noise = np.random.default_rng(3).standard_normal(16000).astype(np.float32) * 0.01
    assert list(decode(spotter, noise)) == []


def test_score_is_reported_for_a_phrase(tts: PiperTTS, spotter: PocketSphinxPhraseSpotter) -> None:
    decode(spotter, speak(tts, "Stop."))
    score = spotter.score()
    assert score is not None and score >= spotter.min_score


def test_an_impossible_threshold_rejects_everything(tts: PiperTTS) -> None:
    strict = PocketSphinxPhraseSpotter(min_score=0.5)
    assert list(decode(strict, speak(tts, "Stop."))) == []


def test_custom_phrases_come_out_as_given(tts: PiperTTS) -> None:
    spotter = PocketSphinxPhraseSpotter(backchannels=["uh-huh"], commands=["stop"])
    assert spotter.phrases == (("stop",), ("uh", "huh"))
    assert list(decode(spotter, speak(tts, "Stop."))) == ["stop"]


def test_feed_and_finish_before_start_raise(spotter: PocketSphinxPhraseSpotter) -> None:
    fresh = PocketSphinxPhraseSpotter(backchannels=["yeah"], commands=["stop"])
    with pytest.raises(RuntimeError):
        fresh.feed(np.zeros(320, dtype=np.float32))
    with pytest.raises(RuntimeError):
        fresh.finish()


def test_start_twice_discards_the_open_utterance(
    tts: PiperTTS, spotter: PocketSphinxPhraseSpotter
) -> None:
    spotter.start()
    spotter.feed(speak(tts, "Yeah."))
    assert "stop" in decode(spotter, speak(tts, "Stop."))


def test_words_without_a_pronunciation_are_refused() -> None:
    with pytest.raises(ProviderError, match="zzyzx"):
        PocketSphinxPhraseSpotter(backchannels=["zzyzx"], commands=["stop"])


def test_a_given_pronunciation_makes_a_new_word_usable() -> None:
    spotter = PocketSphinxPhraseSpotter(
        backchannels=["zzyzx"], commands=["stop"], pronunciations={"zzyzx": ["Z AY Z IH K S"]}
    )
    assert ("zzyzx",) in spotter.phrases


def test_empty_phrase_is_refused() -> None:
    with pytest.raises(ValueError):
        PocketSphinxPhraseSpotter(backchannels=["  "], commands=["stop"])
