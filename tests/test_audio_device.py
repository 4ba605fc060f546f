"""The sound-device layer without a sound device.

There is no PortAudio device on the machines these tests run on, so nothing here opens a
real stream: the sink's buffer logic is driven through :meth:`SoundDeviceSink.fill`, the
stream callbacks are called by hand (from another thread, as PortAudio would), and a
fake ``sounddevice`` module stands in where a stream is opened, aborted or listed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from bargein import audio_device
from bargein.audio_device import (
    MIC_BLOCK,
    MIC_RATE,
    AudioDeviceError,
    DeviceProbe,
    Microphone,
    SoundDeviceSink,
    probe_devices,
)
from bargein.clock import run, sleep_until
from bargein.policy import PolicyConfig
from bargein.providers.base import FloatAudio
from bargein.providers.scripted import ScriptedLLM
from bargein.session import Session, SessionConfig
from tests.doubles import (
    FRAME,
    RATE,
    TTS_RATE,
    WORD_SAMPLES,
    LevelVAD,
    ScriptedRecognizer,
    Utterance,
    WordTTS,
    user_speech,
)


def ramp(start: int, count: int) -> FloatAudio:
    """Distinct sample values, so a lost or repeated sample shows."""
    return ((np.arange(start, start + count) % 1000) / 1000.0 + 0.001).astype(np.float32)


class FakeStream:
    """Records what the sink asks of PortAudio."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.latency = 0.005
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")

    def abort(self) -> None:
        self.calls.append("abort")

    def close(self) -> None:
        self.calls.append("close")


class FakeSoundDevice:
    def __init__(self, devices: list[dict[str, Any]] | Exception) -> None:
        self.devices = devices
        self.streams: list[FakeStream] = []

    def query_devices(self) -> list[dict[str, Any]]:
        if isinstance(self.devices, Exception):
            raise self.devices
        return self.devices

    def OutputStream(self, **kwargs: Any) -> FakeStream:
        stream = FakeStream(**kwargs)
        self.streams.append(stream)
        return stream

    def InputStream(self, **kwargs: Any) -> FakeStream:
        return self.OutputStream(**kwargs)


def use_fake(monkeypatch: pytest.MonkeyPatch, fake: FakeSoundDevice) -> None:
    monkeypatch.setattr(audio_device, "load_sounddevice", lambda: fake)


def drain(sink: SoundDeviceSink, frames: int, blocks: int) -> tuple[FloatAudio, list[Any]]:
    pieces, reports = [], []
    for _ in range(blocks):
        out, moved = sink.fill(frames)
        pieces.append(out)
        reports.extend(moved)
    return np.concatenate(pieces), reports


# -- buffer logic -----------------------------------------------------------------------


def test_fill_hands_over_exactly_the_queued_samples_and_reports_the_cursor() -> None:
    sink = SoundDeviceSink(8000)
    sink.write(1, ramp(0, 250))
    out, reports = drain(sink, 100, 3)
    np.testing.assert_array_equal(out[:250], ramp(0, 250))
    assert not out[250:].any()  # silence once the queue is empty
    assert reports == [(1, 100), (1, 200), (1, 250)]
    assert sink.heard(1) == 250 and sink.idle


def test_the_cursor_lags_by_the_output_latency_until_the_ear_has_it_all() -> None:
    sink = SoundDeviceSink(8000, latency_samples=150)
    sink.write(1, ramp(0, 250))
    _, reports = sink.fill(100)
    assert reports == [] and not sink.idle  # handed over, still in the device's buffer
    _, reports = sink.fill(100)
    assert reports == [(1, 50)]
    _, reports = sink.fill(100)
    assert reports == [(1, 150)]
    assert not sink.idle  # queue empty, but 100 samples are still on their way
    _, reports = sink.fill(100)
    assert reports == [(1, 250)] and sink.idle
    _, reports = sink.fill(100)
    assert reports == []  # nothing moves once everything is heard


def test_consecutive_replies_get_their_own_cursors() -> None:
    sink = SoundDeviceSink(8000)
    sink.write(1, ramp(0, 60))
    sink.write(2, ramp(60, 60))
    out, reports = sink.fill(100)
    np.testing.assert_array_equal(out, ramp(0, 100))
    assert reports == [(1, 60), (2, 40)]
    _, reports = sink.fill(100)
    assert reports == [(2, 60)]


def test_pause_and_resume_continue_from_the_exact_sample() -> None:
    sink = SoundDeviceSink(8000, latency_samples=30)
    audio = ramp(0, 1000)
    sink.write(1, audio)
    first, _ = sink.fill(128)
    sink.pause()
    held, reports = drain(sink, 128, 3)
    assert not held.any()
    assert reports == [(1, 128)]  # what was already handed over still reaches the ear
    sink.resume()
    rest, _ = drain(sink, 128, 8)
    played = np.concatenate([first, rest])
    np.testing.assert_array_equal(played[:1000], audio)  # nothing lost, nothing repeated
    assert sink.heard(1) == 1000


def test_duck_scales_the_output_and_resume_restores_full_volume() -> None:
    sink = SoundDeviceSink(8000)
    audio = ramp(0, 200)
    sink.write(1, audio)
    sink.duck(0.25)
    ducked, _ = sink.fill(100)
    np.testing.assert_allclose(ducked, audio[:100] * 0.25, rtol=1e-6)
    sink.resume()
    full, _ = sink.fill(100)
    np.testing.assert_array_equal(full, audio[100:])


def test_clear_drops_queued_and_buffered_audio_and_aborts_the_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeSoundDevice([])
    use_fake(monkeypatch, fake)

    async def main() -> SoundDeviceSink:
        sink = SoundDeviceSink(8000)
        sink.open()
        return sink

    sink = run(main())
    [stream] = fake.streams
    assert sink.latency_samples == 40  # the stream's 5 ms at 8 kHz
    sink.write(1, ramp(0, 1000))
    sink.fill(100)
    sink.duck(0.1)
    sink.pause()
    sink.clear()
    assert stream.calls == ["start", "abort", "start"]  # the device's buffer is gone too
    assert sink.idle
    out, reports = sink.fill(100)
    assert not out.any() and reports == []
    assert sink.heard(1) == 60  # only what had reached the ear before the flush
    sink.write(2, ramp(0, 100))
    out, _ = drain(sink, 100, 2)
    np.testing.assert_array_equal(out[:100], ramp(0, 100))  # unpaused, full volume
    sink.close()
    assert stream.calls[-2:] == ["abort", "close"]


def test_open_reports_which_device_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    class Refusing(FakeSoundDevice):
        def OutputStream(self, **kwargs: Any) -> FakeStream:
            raise RuntimeError("Invalid sample rate")

    use_fake(monkeypatch, Refusing([]))
    sink = SoundDeviceSink(22050, loop=asyncio.new_event_loop())
    with pytest.raises(AudioDeviceError, match=r"speaker .*default.* 22050 Hz: Invalid sample"):
        sink.open()
    assert sink.loop is not None
    sink.loop.close()


def test_the_callback_delivers_cursors_on_the_loop_thread() -> None:
    async def main() -> tuple[list[tuple[int, int]], set[int], FloatAudio]:
        loop = asyncio.get_running_loop()
        seen: list[tuple[int, int]] = []
        threads: set[int] = set()
        done = asyncio.Event()

        def on_playout(reply_id: int, played: int) -> None:
            seen.append((reply_id, played))
            threads.add(threading.get_ident())
            done.set()

        sink = SoundDeviceSink(8000, on_playout=on_playout, loop=loop)
        sink.write(7, ramp(0, 64))
        outdata = np.full((100, 2), 9.0, dtype=np.float32)
        worker = threading.Thread(target=sink.callback, args=(outdata, 100, None, None))
        worker.start()
        worker.join()
        await asyncio.wait_for(done.wait(), 5)
        return seen, threads, outdata

    seen, threads, outdata = run(main())
    assert seen == [(7, 64)]
    assert threads == {threading.get_ident()}  # the loop's thread, not PortAudio's
    expected = np.concatenate([ramp(0, 64), np.zeros(36, dtype=np.float32)])
    np.testing.assert_array_equal(outdata[:, 0], expected)
    np.testing.assert_array_equal(outdata[:, 1], expected)  # every channel gets the voice


def test_the_microphone_callback_copies_the_block_to_the_loop_thread() -> None:
    async def main() -> tuple[list[FloatAudio], set[int]]:
        loop = asyncio.get_running_loop()
        got: list[FloatAudio] = []
        threads: set[int] = set()
        done = asyncio.Event()

        def on_audio(block: FloatAudio) -> None:
            got.append(block)
            threads.add(threading.get_ident())
            done.set()

        mic = Microphone(on_audio, loop)
        indata = ramp(0, MIC_BLOCK).reshape(-1, 1)
        worker = threading.Thread(target=mic.callback, args=(indata, MIC_BLOCK, None, None))
        worker.start()
        worker.join()
        indata[:] = 0.0  # PortAudio reuses its buffer for the next block
        await asyncio.wait_for(done.wait(), 5)
        return got, threads

    got, threads = run(main())
    [block] = got
    assert block.shape == (MIC_BLOCK,) and block.dtype == np.float32
    np.testing.assert_array_equal(block, ramp(0, MIC_BLOCK))
    assert threads == {threading.get_ident()}


def test_the_microphone_opens_16_khz_mono_in_short_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSoundDevice([])
    use_fake(monkeypatch, fake)
    loop = asyncio.new_event_loop()
    try:
        with Microphone(lambda _: None, loop):
            [stream] = fake.streams
            assert stream.kwargs["samplerate"] == MIC_RATE == 16000
            assert stream.kwargs["channels"] == 1
            assert 0.010 <= stream.kwargs["blocksize"] / MIC_RATE <= 0.020
        assert stream.calls == ["start", "abort", "close"]
    finally:
        loop.close()


# -- device detection -------------------------------------------------------------------

MIC = {"name": "mic", "max_input_channels": 1, "max_output_channels": 0}
SPEAKER = {"name": "speaker", "max_input_channels": 0, "max_output_channels": 2}


@pytest.mark.parametrize(
    ("devices", "expected", "reason"),
    [
        ([MIC, SPEAKER], DeviceProbe(True, True), ""),
        ([], DeviceProbe(False, False), "no sound input or output device found"),
        ([SPEAKER], DeviceProbe(False, True), "no sound input device found"),
        ([MIC], DeviceProbe(True, False), "no sound output device found"),
        (RuntimeError("Error querying device -1"), None, "could not list sound devices"),
    ],
)
def test_probe_reads_the_device_list(
    monkeypatch: pytest.MonkeyPatch,
    devices: list[dict[str, Any]] | Exception,
    expected: DeviceProbe | None,
    reason: str,
) -> None:
    use_fake(monkeypatch, FakeSoundDevice(devices))
    probe = probe_devices()
    if expected is not None:
        assert (probe.has_input, probe.has_output) == (expected.has_input, expected.has_output)
    else:
        assert not probe.has_input and not probe.has_output
    assert probe.duplex == (expected is not None and expected.duplex)
    assert reason in probe.reason


def test_probe_survives_a_missing_portaudio(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise OSError("PortAudio library not found")

    monkeypatch.setattr(audio_device, "load_sounddevice", missing)
    probe = probe_devices()
    assert not probe.duplex and not probe.has_output
    assert "PortAudio library not found" in probe.reason


# -- the sink under a real session ------------------------------------------------------

AGENT = "One two three four five six seven eight nine ten eleven twelve."
WHAT: Utterance = ([(1.2, ("what",)), (1.5, ("what", "about", "tuesday"))], ("what", "about"))


def run_session(
    speech: list[tuple[float, float]], until: float, latency: int
) -> tuple[Session, SoundDeviceSink, FakeStream]:
    """A session whose speaker is a SoundDeviceSink fed by a fake 10 ms device clock."""
    fake = FakeSoundDevice([])
    holder: dict[str, Any] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sink = SoundDeviceSink(TTS_RATE, loop=loop)
        stream = fake.OutputStream()
        stream.start()
        sink._stream = stream  # the open() path is tested above; keep the fake stream
        sink.latency_samples = latency
        session = Session(
            vad=LevelVAD(),
            recognizer=ScriptedRecognizer([WHAT]),
            llm=ScriptedLLM([AGENT, "Sure."]),
            tts=WordTTS(),
            sink=sink,
            config=SessionConfig(policy=PolicyConfig(restart_policy="respond")),
        )
        sink.on_playout = session.playout
        holder.update(session=session, sink=sink, stream=stream)
        mic: Callable[[float], FloatAudio] = user_speech(speech)
        async with session:
            session.request_reply()
            block = TTS_RATE // 100
            next_mic = FRAME / RATE
            for n in range(1, round(until * 100) + 1):
                t = n / 100
                await sleep_until(t)
                _, reports = sink.fill(block)
                for reply_id, played in reports:
                    session.playout(reply_id, played)
                while next_mic <= t + 1e-9:
                    session.push_audio(mic(next_mic))
                    next_mic += FRAME / RATE

    run(main(), "virtual")
    return holder["session"], holder["sink"], holder["stream"]


def test_a_session_plays_a_reply_through_the_sink_to_completion() -> None:
    session, sink, stream = run_session([], until=3.0, latency=40)
    total = len(AGENT.split()) * WORD_SAMPLES
    assert session.replies[1].played == total  # latency included, every sample reached
    assert session.recorded[1] == AGENT
    assert sink.idle and stream.calls == ["start"]


def test_a_committed_barge_in_flushes_the_device_and_records_what_was_heard() -> None:
    session, sink, stream = run_session([(1.0, 2.2)], until=2.6, latency=40)
    [record] = session.timeline
    assert record.decision == "commit"
    assert stream.calls == ["start", "abort", "start"]  # flushed by aborting the stream
    heard = sink.heard(1)
    assert session.replies[1].played == heard
    words = AGENT.split()
    expected = [w for i, w in enumerate(words) if heard >= (i + 0.5) * WORD_SAMPLES]
    assert 0 < len(expected) < len(words)
    assert session.recorded[1] == " ".join(expected)
    first = session.conversation.messages[0]
    assert first.role == "assistant" and first.interrupted
