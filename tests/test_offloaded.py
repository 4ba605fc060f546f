"""Streaming recognisers in worker processes (bargein.providers.offloaded).

The doubles below run inside the workers, so they live at module level (the workers
import them by name). Waits on the workers' replies poll with a deadline: what the test
asserts is the value that arrives, never how soon.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

from bargein.providers import offloaded
from bargein.providers.base import ChosenWords, FloatAudio, ProviderError, TooClose
from bargein.providers.offloaded import OffloadedRecognizer, RecognizerProcesses
from bargein.providers.phrases import PocketSphinxPhraseSpotter
from bargein.providers.piper import PiperTTS
from bargein.providers.pocketsphinx import PocketSphinxRecognizer

BOOM = 0.5
"""A sample value that makes :class:`Tally` fail, saying :data:`CANNOT`."""
CANNOT = "RuntimeError: cannot decode this"


def digest(*audio: FloatAudio) -> str:
    """What :class:`Tally` says of an utterance of ``audio``."""
    return hashlib.sha256(b"".join(a.astype(np.float32).tobytes() for a in audio)).hexdigest()


EMPTY = digest()
QUARTER = np.full(160, 0.25, np.float32)
"""One frame of audio that :class:`Tally` hears like any other."""


class Tally:
    """Says how much audio it has heard in the utterance, with a digest of its bytes
    (which does not depend on how the audio was cut into calls)."""

    sample_rate = 16000

    def __init__(self) -> None:
        self.samples = 0
        self.digest = hashlib.sha256()
        self.utterances = 0

    def start(self) -> None:
        self.utterances += 1
        self.samples, self.digest = 0, hashlib.sha256()

    def feed(self, audio: FloatAudio) -> Sequence[str]:
        if audio.size and audio[0] == BOOM:
            raise RuntimeError("cannot decode this")
        self.samples += audio.size
        self.digest.update(audio.astype(np.float32).tobytes())
        return ("heard", str(self.samples))

    def finish(self) -> Sequence[str]:
        return ("final", str(self.utterances), str(self.samples), self.digest.hexdigest())

    def reset(self) -> None:
        self.utterances = 0


class Gated(Tally):
    """A :class:`Tally` whose first frame waits until the file ``gate`` exists: a worker
    stuck in a long decode while its audio piles up."""

    def __init__(self, gate: str) -> None:
        super().__init__()
        self.gate = gate

    def feed(self, audio: FloatAudio) -> Sequence[str]:
        deadline = time.monotonic() + 60.0
        while not os.path.exists(self.gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        return super().feed(audio)


def unloadable() -> Tally:
    raise ProviderError("PocketSphinx hmm not found: /nowhere")


def eventually(read: Callable[[], object], want: object, within_s: float = 20.0) -> object:
    deadline = time.monotonic() + within_s
    while (got := read()) != want and time.monotonic() < deadline:
        time.sleep(0.005)
    return got


@pytest.fixture
def tally() -> Iterator[RecognizerProcesses]:
    with RecognizerProcesses(Tally, processes=2) as pool:
        yield pool


def frames(seed: int, count: int = 20) -> list[FloatAudio]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-0.4, 0.4, 160).astype(np.float32) for _ in range(count)]


def test_a_stream_hears_exactly_the_audio_and_answers_per_utterance(
    tally: RecognizerProcesses,
) -> None:
    stream = tally.stream()
    assert stream.sample_rate == 16000
    for utterance in (1, 2):
        audio = frames(utterance)
        stream.start()
        # The worker's words come back when they come: none yet, or this frame's.
        assert stream.feed(audio[0]) in ((), ("heard", "160"))
        for frame in audio[1:]:
            stream.feed(frame)
        assert eventually(lambda: stream.feed(np.zeros(0, np.float32)), ("heard", "3200")) == (
            "heard",
            "3200",
        )
        assert stream.finish() == ("final", str(utterance), "3200", digest(*audio))
    stream.reset()
    stream.start()
    assert stream.finish_later()() == ("final", "1", "0", EMPTY)


def test_streams_keep_their_own_state_and_spread_over_the_workers(
    tally: RecognizerProcesses,
) -> None:
    one, two = tally.stream(), tally.stream()
    assert sorted((one.pid, two.pid)) == sorted(tally.pids)
    three = tally.stream()
    assert three.pid in tally.pids
    for stream in (one, two, three):
        stream.start()
    for frame in frames(1, 3):
        one.feed(frame)
    three.start()  # a second utterance on a stream that shares a worker with one of them
    quarter = np.full(320, 0.25, np.float32)
    three.feed(quarter)
    assert one.finish()[:3] == ("final", "1", "480")
    assert two.finish()[:3] == ("final", "1", "0")
    assert three.finish() == ("final", "2", "320", digest(quarter))


def test_words_from_an_earlier_utterance_never_show_in_the_next(
    tally: RecognizerProcesses,
) -> None:
    stream = tally.stream()
    stream.start()
    for frame in frames(3, 50):
        stream.feed(frame)
    stream.start()  # before the worker has caught up with the first utterance
    assert stream.feed(np.zeros(0, np.float32)) == ()
    stream.feed(np.full(160, 0.1, np.float32))
    assert eventually(lambda: stream.feed(np.zeros(0, np.float32)), ("heard", "160")) == (
        "heard",
        "160",
    )


def test_a_failure_in_the_worker_comes_back_once_and_the_stream_goes_on(
    tally: RecognizerProcesses,
) -> None:
    stream = tally.stream()
    stream.start()
    # Told after the call's own step: by this very call if the worker was that quick.
    error = _raised(lambda: stream.feed(np.full(160, BOOM, np.float32)))
    deadline = time.monotonic() + 20.0
    while (
        error is None and (error := _raised(lambda: stream.feed(np.zeros(0, np.float32)))) is None
    ):
        assert time.monotonic() < deadline, "the worker's error never came back"
        time.sleep(0.005)
    assert error == "in the recogniser process: " + CANNOT
    stream.feed(QUARTER)  # the next call works again
    assert stream.finish() == ("final", "1", "160", digest(QUARTER))


def test_a_failure_told_at_a_start_still_starts_the_utterance(
    tally: RecognizerProcesses,
) -> None:
    stream = tally.stream()
    stream.start()
    told_at_feed = _raised(lambda: stream.feed(np.full(160, BOOM, np.float32)))
    assert stream.finish()[:3] == ("final", "1", "0")  # the bad frame was not heard
    told_at_start = _raised(stream.start)  # the utterance begins all the same
    # Told once: by the feed if the worker answered that quickly, else at the start.
    assert [told_at_feed, told_at_start].count(None) == 1
    assert (told_at_feed or told_at_start) == "in the recogniser process: " + CANNOT
    stream.feed(QUARTER)
    assert stream.finish() == ("final", "2", "160", digest(QUARTER))


def _raised(call: Callable[[], object]) -> str | None:
    try:
        call()
    except ProviderError as exc:
        return str(exc)
    return None


def test_a_recogniser_that_cannot_load_says_why_when_the_workers_start() -> None:
    with pytest.raises(ProviderError, match="hmm not found: /nowhere"):
        RecognizerProcesses(unloadable).start()
    with pytest.raises(ValueError, match="at least one"):
        RecognizerProcesses(Tally, processes=0)


def test_a_dead_worker_fails_its_utterance_and_its_streams_go_on_elsewhere(
    tally: RecognizerProcesses,
) -> None:
    stream = tally.stream()
    stream.start()
    stream.feed(frames(4, 1)[0])
    dead = stream.pid
    os.kill(dead, signal.SIGKILL)
    with pytest.raises(ProviderError, match=r"exited|gone"):
        stream.finish_later()()  # refused, or its words never come: either way, said
    # The next utterance starts afresh on the worker left, and is heard.
    stream.start()
    assert stream.pid != dead and stream.pid in tally.pids
    stream.feed(QUARTER)
    assert stream.finish() == ("final", "1", "160", digest(QUARTER))
    # Meanwhile a new worker has taken the dead one's place.
    assert eventually(lambda: len(tally.pids), 2) == 2
    assert dead not in tally.pids
    fresh = tally.stream()
    fresh.start()
    assert fresh.finish() == ("final", "1", "0", EMPTY)


def test_with_no_worker_left_a_stream_fails_until_one_is_back() -> None:
    with RecognizerProcesses(Tally, processes=1) as pool:
        stream = pool.stream()
        stream.start()
        dead = stream.pid
        os.kill(dead, signal.SIGKILL)
        with pytest.raises(ProviderError, match=r"exited|gone"):
            stream.finish_later()()
        # Refused until the new worker is up; then it starts afresh there.
        assert eventually(lambda: _raised(stream.start) is None, True)
        assert stream.pid != dead and pool.pids == [stream.pid]
        assert stream.finish() == ("final", "1", "0", EMPTY)


def test_a_stream_nobody_holds_is_closed_in_its_worker(tally: RecognizerProcesses) -> None:
    stream = tally.stream()
    worker = stream._worker
    assert list(worker.streams) == [stream._id]
    del stream
    gc.collect()
    assert list(worker.streams) == []


def test_closed_processes_refuse_new_streams_and_fail_old_ones() -> None:
    pool = RecognizerProcesses(Tally).start()
    stream = pool.stream()
    pool.close()
    with pytest.raises(ProviderError, match="closed"):
        stream.start()
    with pytest.raises(ProviderError, match="closed"):
        pool.stream()
    assert pool.pids == []


def test_a_stuck_worker_never_holds_the_caller_and_hears_everything_once_free(
    tmp_path: Path,
) -> None:
    gate = tmp_path / "open"
    with RecognizerProcesses(functools.partial(Gated, str(gate))) as pool:
        stream = pool.stream()
        stream.start()
        # 20 s of audio, 1.3 MB: far more than the socket holds while the worker waits.
        audio = frames(5, 2000)
        began = time.monotonic()
        for frame in audio:
            assert stream.feed(frame) == ()
        # Blocking on the socket would last until the gate opens, a minute from now.
        assert time.monotonic() - began < 20.0
        gate.touch()
        assert stream.finish() == ("final", "1", str(160 * 2000), digest(*audio))


def test_a_worker_too_far_behind_is_given_up_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(offloaded, "MAX_BEHIND_S", 2.0)
    with RecognizerProcesses(functools.partial(Gated, str(tmp_path / "never"))) as pool:
        stream = pool.stream()
        stream.start()
        # The socket takes a few seconds of audio; then the queue grows past 2 s.
        told = next(
            filter(None, (_raised(functools.partial(stream.feed, f)) for f in frames(6, 3000)))
        )
        assert told == "the recogniser process fell behind by more than 2 s of audio"
        with pytest.raises(ProviderError, match="fell behind"):
            stream.start()  # for good
        assert stream.pid not in pool.pids


def test_queued_audio_is_joined_per_stream_and_never_across_its_other_steps() -> None:
    batch = [
        ("feed", 1, 1, b"a"),
        ("feed", 2, 1, b"x"),
        ("feed", 1, 1, b"b"),
        ("finish", 1, 1),
        ("feed", 2, 1, b"y"),
        ("start", 1, 2),
        ("feed", 1, 2, b"c"),
        ("feed", 1, 2, b"d"),
    ]
    assert offloaded._merged(batch) == [
        ("feed", 1, 1, b"ab"),
        ("feed", 2, 1, b"xy"),
        ("finish", 1, 1),
        ("start", 1, 2),
        ("feed", 1, 2, b"cd"),
    ]


class Chooser(Tally):
    """Says its final words as a closed-set reader does when it had to choose."""

    def finish(self) -> Sequence[str]:
        return ChosenWords(("okay",)) if self.samples else TooClose()


def test_a_reader_s_kind_of_words_comes_back_as_it_was() -> None:
    with RecognizerProcesses(Chooser) as pool:
        stream = pool.stream()
        stream.start()
        stream.feed(frames(9, 1)[0])
        chosen = stream.finish()
        stream.start()
        tie = stream.finish()
    assert isinstance(chosen, ChosenWords) and chosen == ("okay",)
    assert isinstance(tie, TooClose) and tie == ()


def test_the_phrase_spotter_in_a_worker_reads_as_in_process() -> None:
    tts = PiperTTS(noise_scale=0.0, noise_w_scale=0.0)
    here = PocketSphinxPhraseSpotter()
    with RecognizerProcesses(PocketSphinxPhraseSpotter) as pool:
        there = pool.stream()
        for text in ("Stop.", "Uh-huh."):
            audio = np.concatenate([c.audio for c in tts.synthesize(text)])
            speech = (resample_poly(audio, 320, 441) * 0.3).astype(np.float32)
            here.start()
            there.start()
            for i in range(0, len(speech), 160):
                here.feed(speech[i : i + 160])
                there.feed(speech[i : i + 160])
            heard = here.finish()
            assert there.finish() == tuple(heard) and len(heard) > 0


def test_pocketsphinx_in_a_worker_decodes_exactly_as_in_process() -> None:
    """The same partial and final words, a frame or two later for the partials."""
    tts = PiperTTS(noise_scale=0.0, noise_w_scale=0.0)
    audio = np.concatenate([c.audio for c in tts.synthesize("Hold on, what was the price?")])
    speech = (resample_poly(audio, 320, 441) * 0.3).astype(np.float32)
    here = PocketSphinxRecognizer()
    with RecognizerProcesses(PocketSphinxRecognizer) as pool:
        there = pool.stream()
        for _ in range(2):  # the second utterance starts from the adapted mean in both
            here.start()
            there.start()
            partials_here: set[tuple[str, ...]] = set()
            partials_there: set[tuple[str, ...]] = set()
            for i in range(0, len(speech), 160):
                partials_here.add(tuple(here.feed(speech[i : i + 160])))
                partials_there.add(tuple(there.feed(speech[i : i + 160])))
            final = tuple(here.finish())
            assert tuple(there.finish()) == final
            assert {"hold", "price"} <= set(final)
            assert partials_there <= partials_here


def test_an_offloaded_stream_is_a_streaming_recognizer(tally: RecognizerProcesses) -> None:
    from bargein.providers.base import StreamingRecognizer

    stream = tally.stream()
    assert isinstance(stream, OffloadedRecognizer)
    assert isinstance(stream, StreamingRecognizer)
    with pytest.raises(RuntimeError, match="before start"):
        stream.feed(np.zeros(160, np.float32))
    with pytest.raises(RuntimeError, match="before start"):
        stream.finish()
