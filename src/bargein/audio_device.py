"""The computer's own microphone and speakers, through PortAudio (``sounddevice``).

Two halves, kept apart on purpose:

* The buffer logic of :class:`SoundDeviceSink` (which samples go out next, how far each
  reply has really been heard, exact-sample pause, ducking, flushing) lives in plain
  methods, :meth:`SoundDeviceSink.fill` above all, so it is tested with numpy alone.
* Only :meth:`SoundDeviceSink.open`, :meth:`SoundDeviceSink.clear` (abort and restart)
  and :class:`Microphone` touch PortAudio. ``sounddevice`` is imported lazily, because
  importing it raises ``OSError`` on a machine without the PortAudio library, and the
  text chat must keep working there.

Threads: PortAudio calls the stream callbacks on its own thread. The sink's state is
guarded by one lock held only for the few microseconds a callback needs; everything the
session must hear about (playout cursors, microphone blocks) is handed to the event loop
with ``call_soon_threadsafe``, because the session is not thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import numpy as np

from bargein.providers.base import FloatAudio

__all__ = [
    "MIC_BLOCK",
    "MIC_RATE",
    "AudioDeviceError",
    "DeviceProbe",
    "Microphone",
    "SoundDeviceSink",
    "load_sounddevice",
    "probe_devices",
]

log = logging.getLogger("bargein.audio_device")

MIC_RATE = 16000
MIC_BLOCK = 320
"""20 ms per microphone block: small enough for tier 1 to react within a frame or two."""

PlayoutReport = tuple[int, int]
"""``(reply_id, samples heard)``, as :meth:`bargein.session.Session.playout` takes them."""


class AudioDeviceError(RuntimeError):
    """A sound device could not be opened or driven; the message names the device."""


def load_sounddevice() -> Any:
    """Import ``sounddevice``; raises ``OSError`` when PortAudio itself is missing."""
    import sounddevice

    return sounddevice


@dataclass(frozen=True)
class DeviceProbe:
    """What sound hardware this machine offers, and why not when it offers none."""

    has_input: bool
    has_output: bool
    reason: str = ""

    @property
    def duplex(self) -> bool:
        """A voice conversation needs both a microphone and a speaker."""
        return self.has_input and self.has_output


def probe_devices() -> DeviceProbe:
    """Ask PortAudio which devices exist, never raising.

    Every failure (no PortAudio library, no sound server, an empty device list) is an
    answer, not an error: it is what sends ``bargein chat`` to text mode.
    """
    try:
        sd = load_sounddevice()
    except (ImportError, OSError) as exc:
        return DeviceProbe(False, False, f"sounddevice is unavailable ({exc})")
    try:
        devices = list(sd.query_devices())
    except Exception as exc:
        return DeviceProbe(False, False, f"could not list sound devices ({exc})")
    has_input = any(_channels(d, "max_input_channels") > 0 for d in devices)
    has_output = any(_channels(d, "max_output_channels") > 0 for d in devices)
    missing = [name for name, ok in (("input", has_input), ("output", has_output)) if not ok]
    reason = f"no sound {' or '.join(missing)} device found" if missing else ""
    return DeviceProbe(has_input, has_output, reason)


def _channels(device: Any, key: str) -> int:
    try:
        return int(device[key])
    except (KeyError, TypeError, ValueError):
        return 0


@dataclass
class _Queued:
    reply_id: int
    audio: FloatAudio
    offset: int = 0


@dataclass
class _InFlight:
    """Samples of one reply handed to the device and not yet heard.

    ``start`` is the device frame at which they began; they reach the ear ``latency``
    frames later.
    """

    reply_id: int
    start: int
    length: int


class _Device:
    """A PortAudio stream owner, usable as ``with device:`` (open, then always close)."""

    def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SoundDeviceSink(_Device):
    """The :class:`~bargein.session.AudioSink` for the computer's speakers.

    The session writes a reply's audio into a queue; the PortAudio callback takes exactly
    as many samples as the device asks for (:meth:`fill`). A sample handed to the device
    is not yet heard: it sits in the device's buffer for the output latency the stream
    reports. So the cursor reported back (``on_playout``) for a reply counts only the
    samples whose device time is at least ``latency_samples`` frames in the past, which is
    what the conversation must record as heard when the user barges in.

    ``pause`` stops taking from the queue, so ``resume`` goes on from the exact sample;
    ``clear`` drops the queue and aborts the stream, because PortAudio would otherwise
    play out the buffer it already holds after the user has taken the floor.
    """

    def __init__(
        self,
        sample_rate: int,
        *,
        on_playout: Callable[[int, int], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        latency_samples: int = 0,
        device: int | str | None = None,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.sample_rate = sample_rate
        self.on_playout = on_playout
        self.loop = loop
        self.latency_samples = latency_samples
        self.device = device
        self.status_errors = 0
        """Underflows and other problems PortAudio reported to the callback."""
        self._lock = threading.Lock()
        self._queue: deque[_Queued] = deque()
        self._in_flight: deque[_InFlight] = deque()
        self._heard: dict[int, int] = {}
        self._paused = False
        self._gain = 1.0
        self._position = 0
        self._stream: Any = None

    # -- the AudioSink protocol (called on the event loop thread) -----------------------

    def write(self, reply_id: int, audio: FloatAudio) -> None:
        samples = np.asarray(audio, dtype=np.float32).reshape(-1)
        with self._lock:
            self._heard.setdefault(reply_id, 0)
            if len(samples):
                self._queue.append(_Queued(reply_id, samples))

    def pause(self) -> None:
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        with self._lock:
            self._paused = False
            self._gain = 1.0

    def duck(self, gain: float) -> None:
        with self._lock:
            self._gain = min(max(float(gain), 0.0), 1.0)

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
            # Aborting discards what the device buffered, so it will never be heard.
            self._in_flight.clear()
            self._paused = False
            self._gain = 1.0
        # Outside the lock: abort waits for a running callback, which needs the lock.
        self._restart_stream()

    # -- state --------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing still on its way through the device."""
        with self._lock:
            return not self._queue and not self._in_flight

    def heard(self, reply_id: int) -> int:
        with self._lock:
            return self._heard.get(reply_id, 0)

    # -- the device side (called on PortAudio's thread) ---------------------------------

    def fill(self, frames: int) -> tuple[FloatAudio, list[PlayoutReport]]:
        """The next ``frames`` samples for the device, and the cursors that moved.

        Silence when paused or when nothing is queued: the device clock keeps running
        either way, and with it the samples already handed over keep reaching the ear.
        """
        out = np.zeros(frames, dtype=np.float32)
        with self._lock:
            pos = 0
            while not self._paused and pos < frames and self._queue:
                item = self._queue[0]
                take = min(frames - pos, len(item.audio) - item.offset)
                out[pos : pos + take] = item.audio[item.offset : item.offset + take]
                self._hand_over(item.reply_id, self._position + pos, take)
                item.offset += take
                pos += take
                if item.offset >= len(item.audio):
                    self._queue.popleft()
            if self._gain != 1.0:
                out *= np.float32(self._gain)
            self._position += frames
            reports = self._advance()
        return out, reports

    def _hand_over(self, reply_id: int, start: int, length: int) -> None:
        last = self._in_flight[-1] if self._in_flight else None
        if last is not None and last.reply_id == reply_id and last.start + last.length == start:
            last.length += length
        else:
            self._in_flight.append(_InFlight(reply_id, start, length))

    def _advance(self) -> list[PlayoutReport]:
        horizon = self._position - self.latency_samples
        moved: dict[int, None] = {}
        while self._in_flight and self._in_flight[0].start < horizon:
            span = self._in_flight[0]
            done = min(span.length, horizon - span.start)
            self._heard[span.reply_id] = self._heard.get(span.reply_id, 0) + done
            moved[span.reply_id] = None
            if done < span.length:
                span.start += done
                span.length -= done
                break
            self._in_flight.popleft()
        return [(reply_id, self._heard[reply_id]) for reply_id in moved]

    def callback(self, outdata: Any, frames: int, _time: Any, status: Any) -> None:
        if status:
            self.status_errors += 1
        samples, reports = self.fill(frames)
        outdata[:, 0] = samples
        if outdata.shape[1] > 1:
            outdata[:, 1:] = samples[:, None]
        if reports and self.on_playout is not None and self.loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                self.loop.call_soon_threadsafe(self._deliver, reports)

    def _deliver(self, reports: list[PlayoutReport]) -> None:
        if self.on_playout is not None:
            for reply_id, played in reports:
                self.on_playout(reply_id, played)

    # -- the stream ---------------------------------------------------------------------

    def open(self) -> None:
        """Start the output stream; the sink plays silence until audio is written."""
        if self._stream is not None:
            return
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        sd = load_sounddevice()
        try:
            stream = sd.OutputStream(
                samplerate=self.sample_rate,
                channels=1,
                dtype="float32",
                latency="low",
                device=self.device,
                callback=self.callback,
            )
            stream.start()
        except Exception as exc:
            raise AudioDeviceError(
                f"could not open the speaker (device {self.device or 'default'}) at "
                f"{self.sample_rate} Hz: {exc}"
            ) from exc
        self.latency_samples = round(float(stream.latency) * self.sample_rate)
        self._stream = stream

    def close(self) -> None:
        stream, self._stream = self._stream, None
        _shut(stream)

    def _restart_stream(self) -> None:
        stream = self._stream
        if stream is None:
            return
        try:
            stream.abort()
            stream.start()
        except Exception as exc:
            log.warning("could not restart the speaker after a flush: %s", exc)


class Microphone(_Device):
    """16 kHz mono microphone blocks, delivered to ``on_audio`` on the event loop thread.

    The session runs its VAD and recogniser inside ``push_audio`` and is not thread-safe,
    so the PortAudio callback only copies the block and schedules the push.
    """

    def __init__(
        self,
        on_audio: Callable[[FloatAudio], None],
        loop: asyncio.AbstractEventLoop,
        *,
        block: int = MIC_BLOCK,
        device: int | str | None = None,
    ) -> None:
        self.on_audio = on_audio
        self.loop = loop
        self.block = block
        self.device = device
        self.overflows = 0
        self._stream: Any = None

    def callback(self, indata: Any, _frames: int, _time: Any, status: Any) -> None:
        if status:
            self.overflows += 1
        # PortAudio reuses ``indata`` after the callback returns: copy before handing on.
        samples: FloatAudio = np.array(indata[:, 0], dtype=np.float32, copy=True)
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            self.loop.call_soon_threadsafe(self.on_audio, samples)

    def open(self) -> None:
        if self._stream is not None:
            return
        sd = load_sounddevice()
        try:
            stream = sd.InputStream(
                samplerate=MIC_RATE,
                channels=1,
                dtype="float32",
                blocksize=self.block,
                latency="low",
                device=self.device,
                callback=self.callback,
            )
            stream.start()
        except Exception as exc:
            raise AudioDeviceError(
                f"could not open the microphone (device {self.device or 'default'}) at "
                f"{MIC_RATE} Hz mono: {exc}"
            ) from exc
        self._stream = stream

    def close(self) -> None:
        stream, self._stream = self._stream, None
        _shut(stream)


def _shut(stream: Any) -> None:
    """Stop a PortAudio stream now (dropping what it buffered) and release it."""
    if stream is None:
        return
    with contextlib.suppress(Exception):
        stream.abort()
    with contextlib.suppress(Exception):
        stream.close()
