"""Tests of Whisper as tier 2's second opinion, on the packaged model and real Piper speech.

Piper runs without sampling noise, so each clip and each reading is the same on every run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from bargein.decider import normalize_words
from bargein.providers.base import ProviderError, StreamingRecognizer, TooClose
from bargein.providers.piper import PiperTTS
from bargein.providers.whisper_phrases import (
    HUMS,
    PhraseReading,
    WhisperPhraseReader,
    WhisperPhraseStream,
    _distinct,
    _Turns,
)
from tests.test_phrases import speak


@pytest.fixture(scope="module")
def tts() -> PiperTTS:
    return PiperTTS(noise_scale=0.0, noise_w_scale=0.0)


@pytest.fixture(scope="module")
def reader() -> WhisperPhraseReader:
    return WhisperPhraseReader()


@pytest.fixture(scope="module")
def wait_or_yeah() -> WhisperPhraseReader:
    """A reader with one phrase of each class: "wait" and "yeah"."""
    return WhisperPhraseReader(interrupt_phrases=("wait",), backchannel_phrases=("yeah",))


@pytest.mark.parametrize(
    ("words", "folded"),
    [
        ("stop stop stop", "stop"),
        ("wait a second wait a second wait a", "wait a second"),
        ("no no", "no"),
        ("oh okay okay", "oh okay"),
        ("i am not a fan of it", "i am not a fan of it"),
        ("", ""),
    ],
)
def test_repeats_fold_to_one_phrase(words: str, folded: str) -> None:
    assert _distinct(words.split()) == tuple(folded.split())


@pytest.mark.parametrize(("text", "expected"), [("Stop.", ("stop",)), ("Hold on.", ("hold", "on"))])
def test_commands_are_read_as_commands(
    tts: PiperTTS, reader: WhisperPhraseReader, text: str, expected: tuple[str, ...]
) -> None:
    reading = reader.read(speak(tts, text))
    assert reading.words == expected
    assert reading.how == "free"


@pytest.mark.parametrize("text", ["Yeah.", "Okay.", "Uh-huh.", "Right."])
def test_backchannels_are_read_as_backchannels(
    tts: PiperTTS, reader: WhisperPhraseReader, text: str
) -> None:
    from bargein.decider import only_backchannel

    words = reader.read(speak(tts, text)).words
    assert words and only_backchannel(words)


def test_a_sentence_is_no_phrase(tts: PiperTTS, reader: WhisperPhraseReader) -> None:
    reading = reader.read(speak(tts, "The table for tomorrow evening is fine by me."))
    assert reading.words == ()
    assert reading.how == "sentence"


@pytest.mark.parametrize(
    ("text", "opening"),
    [
        ("Could you book me a table for tomorrow evening?", ("could", "you")),
        ("What about the weekend, will it rain?", ("what", "about")),
    ],
)
def test_a_question_is_read_by_its_opening(
    tts: PiperTTS, reader: WhisperPhraseReader, text: str, opening: tuple[str, ...]
) -> None:
    """A question or request is a bid for the floor from its first words: the reading is
    the opening, which tier 2 treats as it treats a command."""
    reading = reader.read(speak(tts, text))
    assert (reading.words, reading.how) == (opening, "free")


@pytest.mark.parametrize(
    ("text", "opening"),
    [
        ("Okay, but what about Sunday?", ("but",)),
        ("Right, and how much is it?", ("and",)),
        ("Okay, can you check the price?", ("can", "you")),
        ("So which one is cheaper?", ("so",)),
    ],
)
def test_a_backchannel_that_goes_on_is_read_as_a_bid(
    tts: PiperTTS, reader: WhisperPhraseReader, text: str, opening: tuple[str, ...]
) -> None:
    """A backchannel is over in a word or two: one that goes on with a conjunction or a
    question's opening is the start of a turn, read by the words that carry it on."""
    reading = reader.read(speak(tts, text))
    assert (reading.words, reading.how) == (opening, "free")


def test_a_lone_conjunction_after_a_backchannel_is_no_bid(
    tts: PiperTTS, reader: WhisperPhraseReader
) -> None:
    from bargein.decider import only_backchannel

    words = reader.read(speak(tts, "Okay, so.")).words
    assert words and only_backchannel(words)
    # "and" opens a bid only after a backchannel: Whisper also writes a hum that way.
    reading = reader.read(speak(tts, "And also for two people, please."))
    assert (reading.words, reading.how) == ((), "sentence")


def test_the_first_words_of_a_request_are_read_while_it_goes_on(
    tts: PiperTTS, reader: WhisperPhraseReader
) -> None:
    audio = speak(tts, "Can you send that to my email instead?")
    stream = reader.stream()
    stream.start()
    stream.feed(audio[: int(0.4 * reader.sample_rate)])
    assert tuple(stream.peek_later()()) == ("can", "you")
    # Only the start counts: further in, "could you" is part of a sentence.
    later = reader.read(speak(tts, "Tomorrow morning, could you call me back?"))
    assert (later.words, later.how) == ((), "sentence")


def test_silence_is_not_read(reader: WhisperPhraseReader) -> None:
    reading = reader.read(np.zeros(16000, dtype=np.float32))
    assert (reading.words, reading.how) == ((), "silent")


def test_a_near_miss_is_scored_against_the_phrases(
    tts: PiperTTS, wait_or_yeah: WhisperPhraseReader
) -> None:
    """With only "wait" and "yeah" to choose from, a free reading that is neither ("Wade")
    is settled by forced decoding, and the phrase that sounds like it wins."""
    reading = wait_or_yeah.read(speak(tts, "Wade."))
    assert reading.how == "scored", reading
    assert reading.words == ("wait",)
    assert reading.command_score > reading.backchannel_score + wait_or_yeah.margin
    assert {phrase for phrase, _score in reading.scored} == {"wait", "yeah"}


def test_the_stream_buffers_an_overlap_and_reads_it_once(
    tts: PiperTTS, reader: WhisperPhraseReader
) -> None:
    stream = reader.stream()
    assert isinstance(stream, StreamingRecognizer)
    audio = speak(tts, "Stop.")
    stream.start()
    for i in range(0, audio.size, 320):
        assert list(stream.feed(audio[i : i + 320])) == []
    work = stream.finish_later()
    stream.start()  # the next overlap may begin before the reading runs
    stream.feed(np.zeros(320, dtype=np.float32))
    assert list(work()) == ["stop"]
    assert stream.last is not None and stream.last.words == ("stop",)


def test_the_transcriber_s_model_can_be_shared() -> None:
    from bargein.providers.whisper import WhisperTranscriber

    transcriber = WhisperTranscriber()
    shared = WhisperPhraseReader(shared=transcriber.loaded_model)
    assert shared._model is transcriber.loaded_model.model


def test_bad_options_and_models_are_refused() -> None:
    with pytest.raises(ValueError, match="window_s"):
        WhisperPhraseReader(window_s=0.1)
    with pytest.raises(ValueError, match="per_class"):
        WhisperPhraseReader(per_class=0)
    with pytest.raises(ProviderError, match="not a faster-whisper"):
        WhisperPhraseReader(shared=object())
    # A phrase always scored must be one the reader has: a typo would score nothing.
    with pytest.raises(ValueError, match=r"always_scored .*\['mmm'\]"):
        WhisperPhraseReader(always_scored=("mm", "mmm"))
    with pytest.raises(ValueError, match="always_scored"):
        WhisperPhraseReader(backchannel_phrases=("okay",), always_scored=("mm",))


def test_the_hums_are_scored_only_if_the_reader_has_them() -> None:
    model = WhisperPhraseReader._load(None, cpu_threads=1)
    assert WhisperPhraseReader(shared=model).always_scored == HUMS
    mhm = WhisperPhraseReader(shared=model, backchannel_phrases=("okay", "mhm"))
    assert mhm.always_scored == ("mhm",)
    none = WhisperPhraseReader(shared=model, backchannel_phrases=("okay", "yeah"))
    assert none.always_scored == ()


def test_a_reading_one_letter_from_a_long_phrase_is_that_phrase(
    reader: WhisperPhraseReader,
) -> None:
    from bargein.providers.whisper_phrases import _edit_distance

    assert _edit_distance("make sense", "makes sense") == 1
    assert _edit_distance("kitten", "sitting") == 3
    assert reader._spelled_like(("make", "sense")) == ("makes", "sense")
    assert reader._spelled_like(("so",)) is None  # one letter from "no", but too short
    assert reader._spelled_like(("sense", "make")) is None


def test_an_early_reading_needs_a_clear_win(
    tts: PiperTTS, wait_or_yeah: WhisperPhraseReader
) -> None:
    """Read while the user is still talking, a scored phrase counts only with a margin of
    ``early_margin`` nats, since a command read early commits at once."""
    audio = speak(tts, "Wade.")
    for early_margin, expected in ((2.0, ["wait"]), (1000.0, [])):
        stream = wait_or_yeah.stream()
        stream.early_margin = early_margin
        stream.start()
        stream.feed(audio)
        assert list(stream.peek_later()()) == expected
        assert list(stream.finish()) == ["wait"]  # the final reading keeps the usual margin


def test_a_hum_whisper_cannot_place_never_commits_early(
    tts: PiperTTS, reader: WhisperPhraseReader
) -> None:
    """Piper's "Mm-hmm." comes out as "Ememam", which Whisper scores about as close to "no"
    as to any backchannel. Which side wins, by about a nat, depends on the CPU's int8
    matrix kernels: a tie with Intel's MKL, "no" by 1.1 nats with oneDNN on an AMD CPU (a
    false interruption there, which the benchmark counts). What holds on every CPU: Whisper
    writes no command for it, and the win is too narrow for a reading taken while the user
    is still talking to act on."""
    audio = speak(tts, "Mm-hmm.")
    reading = reader.read(audio)
    assert reading.how in ("tie", "scored")
    assert reader._command_in(normalize_words(reading.free_text.split())) is None
    assert abs(reading.command_score - reading.backchannel_score) < 2.0
    stream = reader.stream()
    stream.start()
    stream.feed(audio)
    assert list(stream.peek_later()()) == []


@pytest.mark.parametrize("text", ["Mm-hmm", "Mm."])
def test_a_hum_written_as_a_made_up_word_is_scored_against_the_hums(
    tts: PiperTTS, reader: WhisperPhraseReader, text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whisper writes Piper's hums as "Emama" and "M-M"; ranked by that first token, no hum
    is among the likeliest backchannels, and without the hums scored "Mm-hmm" came out as
    "stop". Scored against the hums too, both are backchannels."""
    audio = speak(tts, text)
    reading = reader.read(audio)
    assert reading.how == "scored"
    assert reading.words in {("mm",), ("mhm",)}
    monkeypatch.setattr(reader, "always_scored", ())
    assert reader.read(audio).words not in {("mm",), ("mhm",)}


class _Watched:
    """The reader's model, with a record of the calls made to it and a hook after each."""

    def __init__(self, model: object, after: Callable[[str], None] = lambda name: None) -> None:
        self._model = model
        self._after = after
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Callable[..., object]:
        method = getattr(self._model, name)

        def call(*args: object, **kwargs: object) -> object:
            self.calls.append(name)
            result = method(*args, **kwargs)
            self._after(name)
            return result

        return call


def _watched_wade(
    tts: PiperTTS, reader: WhisperPhraseReader, monkeypatch: pytest.MonkeyPatch
) -> tuple[_Watched, WhisperPhraseStream]:
    """A stream of ``reader`` holding "Wade." (read "wait"), its model's calls watched."""
    watched = _Watched(reader._model)
    monkeypatch.setattr(reader, "_model", watched)
    stream = reader.stream()
    stream.start()
    stream.feed(speak(tts, "Wade."))
    return watched, stream


def test_a_peek_stops_once_its_final_reading_is_asked_for(
    tts: PiperTTS, wait_or_yeah: WhisperPhraseReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peek that has not begun when the utterance closes never reaches the model, and the
    final reading is made as usual."""
    watched, stream = _watched_wade(tts, wait_or_yeah, monkeypatch)
    peek = stream.peek_later()
    final = stream.finish_later()
    assert list(peek()) == []
    assert watched.calls == []
    assert list(final()) == ["wait"]
    assert watched.calls == ["encode", "generate", "align"]


def test_a_final_reading_dropped_before_it_begins_never_reaches_the_model(
    tts: PiperTTS, wait_or_yeah: WhisperPhraseReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session drops a final reading that tier 2 decided without; the next
    utterance's reading is not touched by it."""
    watched, stream = _watched_wade(tts, wait_or_yeah, monkeypatch)
    final = stream.finish_later()
    stream.drop_later()
    assert list(final()) == []
    assert watched.calls == []
    assert stream.last is not None and stream.last.how == "dropped"
    stream.start()
    stream.feed(speak(tts, "Wade."))
    assert list(stream.finish_later()()) == ["wait"]
    assert watched.calls == ["encode", "generate", "align"]


def test_a_peek_under_way_stops_before_scoring(
    tts: PiperTTS, wait_or_yeah: WhisperPhraseReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final reading is asked for while the peek's greedy decode runs: the peek skips
    its scoring, the costly step, and gives no answer; a new utterance stops it too."""
    model = wait_or_yeah._model
    audio = speak(tts, "Wade.")
    for close in ("finish_later", "start"):
        stream = wait_or_yeah.stream()
        closes: Callable[[], object] = getattr(stream, close)

        def during_decode(name: str, closes: Callable[[], object] = closes) -> None:
            if name == "generate":
                closes()

        watched = _Watched(model, during_decode)
        monkeypatch.setattr(wait_or_yeah, "_model", watched)
        stream.start()
        stream.feed(audio)
        assert list(stream.peek_later()()) == []
        assert watched.calls == ["encode", "generate"]
    stop = threading.Event()
    after_decode = _Watched(model, lambda name: stop.set() if name == "generate" else None)
    monkeypatch.setattr(wait_or_yeah, "_model", after_decode)
    reading = wait_or_yeah.read(audio, final=False, stop=stop)
    assert (reading.words, reading.how) == ((), "dropped")
    assert reading.free_text  # what the greedy decode read before the stop
    assert after_decode.calls == ["encode", "generate"]


def test_a_final_reading_goes_before_a_waiting_peek() -> None:
    turns = _Turns()
    order: list[str] = []

    def read(final: bool) -> None:
        with turns.turn(final):
            order.append("final" if final else "peek")

    with turns.turn(final=False):
        peek = threading.Thread(target=read, args=(False,))
        peek.start()
        final = threading.Thread(target=read, args=(True,))
        final.start()
        deadline = time.monotonic() + 10
        while turns._finals_waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert turns._finals_waiting == 1
    peek.join(10)
    final.join(10)
    assert order == ["final", "peek"]


def test_a_final_reading_says_when_it_was_a_tie(
    reader: WhisperPhraseReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Of the empty answers only a tie is :class:`TooClose`: a sentence or silence says
    nothing about which phrase the sound was like."""
    for how, too_close in (("tie", True), ("sentence", False), ("silent", False)):
        monkeypatch.setattr(
            reader, "read", lambda audio, how=how, stop=None: PhraseReading((), how, "")
        )
        stream = reader.stream()
        stream.start()
        stream.feed(np.zeros(320, dtype=np.float32))
        heard = stream.finish()
        assert list(heard) == [] and isinstance(heard, TooClose) is too_close
