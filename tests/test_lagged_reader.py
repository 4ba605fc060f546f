"""Readings that take time on the virtual clock: :class:`bargein.clock.Lagged` and the
benchmark's :class:`~bargein.bench.lagged_reader.LaggedReader`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from bargein.bench.lagged_reader import LaggedReader, parse_lag
from bargein.cli import main
from bargein.clock import Lagged, now, run, run_blocking


def test_lagged_work_answers_later_on_the_virtual_clock_only() -> None:
    async def timed(work: Callable[[], str]) -> tuple[str, float]:
        began = now()
        answer = await run_blocking(work)
        return answer, now() - began

    assert run(timed(Lagged(lambda: "okay", 0.3)), "virtual") == ("okay", pytest.approx(0.3))
    assert run(timed(lambda: "okay"), "virtual") == ("okay", 0.0)
    # On the real clock it is plain work (run in a thread), never slept on.
    answer, took = run(timed(Lagged(lambda: "okay", 30.0)), "real")
    assert answer == "okay" and took < 5.0


class Reader:
    """A second opinion that reads later: what it was fed, as one word per chunk."""

    sample_rate = 16000

    def __init__(self) -> None:
        self.chunks: list[str] = []
        self.dropped = 0
        self.resets = 0

    def start(self) -> None:
        self.chunks = []

    def feed(self, audio: np.ndarray) -> Sequence[str]:
        self.chunks.append(f"c{len(audio)}")
        return ()

    def finish(self) -> Sequence[str]:
        return tuple(self.chunks)

    def peek_later(self) -> Callable[[], Sequence[str]]:
        heard = tuple(self.chunks)
        return lambda: heard

    def finish_later(self) -> Callable[[], Sequence[str]]:
        heard, self.chunks = tuple(self.chunks), []
        return lambda: heard

    def drop_later(self) -> None:
        self.dropped += 1

    def reset(self) -> None:
        self.resets += 1


def _lags(reader: LaggedReader, audio: np.ndarray) -> tuple[float, float]:
    reader.start()
    reader.feed(audio)
    peek, final = reader.peek_later(), reader.finish_later()
    assert isinstance(peek, Lagged) and isinstance(final, Lagged)
    return peek.seconds, final.seconds


def test_a_lagged_reader_reads_as_its_reader_does_each_reading_late() -> None:
    inner = Reader()
    reader = LaggedReader(inner, 0.1, 0.5, seed=3)
    reader.start()
    reader.feed(np.zeros(512, np.float32))
    assert tuple(reader.peek_later()()) == ("c512",)
    assert tuple(reader.finish_later()()) == ("c512",)
    reader.drop_later()
    reader.reset()
    assert (inner.dropped, inner.resets) == (1, 1)
    assert reader.sample_rate == 16000 and reader.chunks == []  # the rest is the reader's


def test_each_readings_lag_is_in_range_and_repeats_for_the_same_audio() -> None:
    rng = np.random.default_rng(0)
    sounds = [rng.standard_normal(4800).astype(np.float32) for _ in range(20)]
    reader = LaggedReader(Reader(), 0.1, 0.5)
    lags = [_lags(reader, sound) for sound in sounds]
    assert all(0.1 <= lag <= 0.5 for pair in lags for lag in pair)
    # Another reader, or the same one later, gives each sound the same lags...
    assert [_lags(LaggedReader(Reader(), 0.1, 0.5), s) for s in sounds] == lags
    assert _lags(reader, sounds[0]) == lags[0]
    # ...and the sounds, the final readings and another seed differ.
    assert len({peek for peek, _ in lags}) == len(sounds)
    assert all(peek != final for peek, final in lags)
    assert _lags(LaggedReader(Reader(), 0.1, 0.5, seed=1), sounds[0]) != lags[0]
    assert _lags(LaggedReader(Reader(), 0.25), sounds[0]) == (0.25, 0.25)


def test_a_lagged_reader_needs_a_reader_that_reads_later() -> None:
    class FinishOnly:
        sample_rate = 16000

    with pytest.raises(TypeError, match="peek_later"):
        LaggedReader(FinishOnly(), 0.3)
    with pytest.raises(ValueError, match="low <= high"):
        LaggedReader(Reader(), 0.5, 0.1)


@pytest.mark.parametrize(
    ("text", "bounds"), [("0.3", (0.3, 0.3)), ("0.1-0.5", (0.1, 0.5)), ("0", (0.0, 0.0))]
)
def test_lags_on_the_command_line(text: str, bounds: tuple[float, float]) -> None:
    assert parse_lag(text) == bounds


@pytest.mark.parametrize("text", ["", "soon", "0.5-0.1", "-1", "0.1-inf", "nan"])
def test_bad_lags_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="lag"):
        parse_lag(text)


def test_the_benchmark_lags_readings_on_the_virtual_clock_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "nowhere", "--clock", "real", "--reading-lag", "0.3"]) == 2
    assert "--reading-lag" in capsys.readouterr().err
    assert main(["bench", "nowhere", "--spotter", "phrases", "--reading-lag", "0.3"]) == 2
    with pytest.raises(SystemExit):
        main(["bench", "nowhere", "--reading-lag", "soon"])
    assert "not a lag" in capsys.readouterr().err


def test_an_event_loop_goes_on_while_a_lagged_reading_is_out() -> None:
    async def scene() -> list[str]:
        seen: list[str] = []

        async def ticker() -> None:
            for _ in range(3):
                await asyncio.sleep(0.1)
                seen.append(f"tick {now():.1f}")

        async def reading() -> None:
            seen.append(await run_blocking(Lagged(lambda: "read", 0.25)) + f" {now():.2f}")

        await asyncio.gather(ticker(), reading())
        return seen

    assert run(scene(), "virtual") == ["tick 0.1", "tick 0.2", "read 0.25", "tick 0.3"]
