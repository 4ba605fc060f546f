"""Small audio helpers shared by the scenario loader, the generator and the runner.

Conventions, so that every module agrees without converting back and forth: audio is a 1-D
``float32`` numpy array of mono samples in [-1, 1], always passed together with its sample rate.
Levels are RMS dBFS where a full-scale square wave is 0 dBFS (a full-scale sine is about -3 dBFS),
measured over consecutive fixed windows, because that is how the scenario format defines an onset
("the first 10 ms window above -40 dBFS") and how the runner decides when the agent went quiet.
"""

from __future__ import annotations

import math
import wave
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

__all__ = [
    "SILENCE_DBFS",
    "AudioFileError",
    "WavInfo",
    "find_onset",
    "first_audible",
    "from_int16",
    "last_audible",
    "read_wav",
    "resample",
    "rms_dbfs",
    "to_int16",
    "wav_info",
    "window_dbfs",
    "write_wav",
]

SILENCE_DBFS = -120.0
"""Level reported for an all-zero window: finite, so results stay valid JSON and comparable."""


class AudioFileError(ValueError):
    """A WAV file is missing or not in the one format the project accepts (mono 16-bit PCM).

    ``reason`` is phrased to follow the file name (``"not found"``, ``"has 2 channels, ..."``) so
    callers such as the scenario loader can embed it in their own messages.
    """

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class WavInfo:
    """Header facts of an accepted WAV file."""

    sample_rate: int
    frames: int

    @property
    def duration_s(self) -> float:
        """Length in seconds."""
        return self.frames / self.sample_rate


def _read_checked(path: Path, *, with_samples: bool) -> tuple[int, int, bytes]:
    """Open ``path``, check the header and optionally read the samples.

    One place for all the checks, so every reader reports problems the same way. Returns the
    sample rate, the frame count and the raw little-endian sample bytes (empty unless
    ``with_samples``).
    """
    if not path.exists():
        raise AudioFileError(path, "not found")
    if not path.is_file():
        raise AudioFileError(path, "is not a regular file")
    try:
        with wave.open(str(path), "rb") as reader:
            channels = reader.getnchannels()
            width = reader.getsampwidth()
            rate = reader.getframerate()
            if channels != 1:
                raise AudioFileError(path, f"has {channels} channels, only mono is accepted")
            if width != 2:
                raise AudioFileError(
                    path, f"has {8 * width}-bit samples, only 16-bit PCM is accepted"
                )
            if rate <= 0:
                raise AudioFileError(path, f"has an invalid sample rate {rate}")
            frames = reader.getnframes()
            raw = reader.readframes(frames) if with_samples else b""
    except (wave.Error, EOFError) as exc:
        detail = str(exc) or "truncated"
        raise AudioFileError(path, f"is not a readable PCM WAV file ({detail})") from exc
    except OSError as exc:
        raise AudioFileError(path, f"cannot be read ({exc.strerror or exc})") from exc
    return rate, frames, raw


def wav_info(path: Path | str) -> WavInfo:
    """Check that ``path`` is a mono 16-bit PCM WAV and return its header facts.

    Reads only the header, so validating a whole scenario set stays cheap.
    """
    rate, frames, _ = _read_checked(Path(path), with_samples=False)
    return WavInfo(sample_rate=rate, frames=frames)


def read_wav(path: Path | str) -> tuple[np.ndarray, int]:
    """Read a mono 16-bit PCM WAV file as float32 samples and its sample rate.

    Only that format is accepted because it is what the scenario format specifies; anything else
    raises :class:`AudioFileError` naming the file and the problem, rather than silently
    mixing channels or guessing at a sample encoding.
    """
    rate, _, raw = _read_checked(Path(path), with_samples=True)
    usable = len(raw) - len(raw) % 2
    pcm = np.frombuffer(raw[:usable], dtype="<i2")
    return from_int16(pcm), rate


def write_wav(path: Path | str, audio: np.ndarray, sample_rate: int) -> None:
    """Write ``audio`` as a mono 16-bit PCM WAV (clipping to [-1, 1])."""
    pcm = to_int16(audio)
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(int(sample_rate))
        writer.writeframes(pcm.astype("<i2").tobytes())


def to_int16(audio: np.ndarray) -> np.ndarray:
    """Convert float samples to int16 PCM, clipping and rounding to the nearest step."""
    scaled = np.clip(np.asarray(audio, dtype=np.float64), -1.0, 1.0) * 32767.0
    return np.rint(scaled).astype(np.int16)


def from_int16(pcm: np.ndarray) -> np.ndarray:
    """Convert int16 PCM to float32 samples in [-1, 1)."""
    return (np.asarray(pcm, dtype=np.float32) / np.float32(32768.0)).astype(np.float32)


def resample(audio: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Resample with a polyphase filter at the reduced integer ratio.

    Polyphase resampling is exact-length, deterministic and fast for the rational ratios that
    audio rates have (22050 -> 16000 is 320/441). Equal rates return the input unchanged (as
    float32) so callers need not special-case them.
    """
    if src_rate <= 0 or dst_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {src_rate} and {dst_rate}")
    x = np.asarray(audio, dtype=np.float32)
    if src_rate == dst_rate or x.size == 0:
        return x
    g = gcd(int(src_rate), int(dst_rate))
    up, down = int(dst_rate) // g, int(src_rate) // g
    out = resample_poly(x.astype(np.float64), up, down)
    return np.asarray(out, dtype=np.float32)


def _window_len(sample_rate: int, window_ms: float) -> int:
    return max(1, round(sample_rate * window_ms / 1000.0))


def window_dbfs(audio: np.ndarray, sample_rate: int, window_ms: float = 10.0) -> np.ndarray:
    """RMS level in dBFS of each consecutive ``window_ms`` window.

    A trailing partial window is included (measured over the samples it has) so a short sound at
    the very end is not lost. Silent windows report :data:`SILENCE_DBFS` instead of ``-inf``.
    """
    x = np.asarray(audio, dtype=np.float64)
    n = _window_len(sample_rate, window_ms)
    if x.size == 0:
        return np.zeros(0, dtype=np.float64)
    full = x.size // n
    powers: list[np.ndarray] = []
    if full:
        powers.append(np.mean(np.square(x[: full * n].reshape(full, n)), axis=1))
    if x.size % n:
        powers.append(np.array([np.mean(np.square(x[full * n :]))]))
    power = np.concatenate(powers)
    floor = 10.0 ** (SILENCE_DBFS / 10.0)
    return np.asarray(10.0 * np.log10(np.maximum(power, floor)), dtype=np.float64)


def _audible_windows(
    audio: np.ndarray, sample_rate: int, threshold_dbfs: float, window_ms: float
) -> np.ndarray:
    return np.flatnonzero(window_dbfs(audio, sample_rate, window_ms) > threshold_dbfs)


def first_audible(
    audio: np.ndarray, sample_rate: int, threshold_dbfs: float = -45.0, window_ms: float = 10.0
) -> float | None:
    """Start time in seconds of the first window above ``threshold_dbfs``, or None if none is."""
    idx = _audible_windows(audio, sample_rate, threshold_dbfs, window_ms)
    if idx.size == 0:
        return None
    return float(idx[0] * _window_len(sample_rate, window_ms) / sample_rate)


def last_audible(
    audio: np.ndarray, sample_rate: int, threshold_dbfs: float = -45.0, window_ms: float = 10.0
) -> float | None:
    """End time in seconds of the last window above ``threshold_dbfs``, or None if none is.

    The end (not the start) of the window is what "the last audible agent sample" means when the
    runner measures how long the agent kept talking after the user started.
    """
    idx = _audible_windows(audio, sample_rate, threshold_dbfs, window_ms)
    if idx.size == 0:
        return None
    n = _window_len(sample_rate, window_ms)
    end = min((int(idx[-1]) + 1) * n, int(np.asarray(audio).size))
    return float(end / sample_rate)


def find_onset(
    audio: np.ndarray, sample_rate: int, threshold_dbfs: float = -40.0, window_ms: float = 10.0
) -> float | None:
    """Where a sound starts inside a clip, as the scenario format defines it.

    The first 10 ms window above -40 dBFS; None when the clip never gets that loud.
    """
    return first_audible(audio, sample_rate, threshold_dbfs, window_ms)


def rms_dbfs(audio: np.ndarray) -> float:
    """Overall RMS level in dBFS (:data:`SILENCE_DBFS` for silence or an empty array)."""
    x = np.asarray(audio, dtype=np.float64)
    if x.size == 0:
        return SILENCE_DBFS
    power = float(np.mean(np.square(x)))
    if power <= 10.0 ** (SILENCE_DBFS / 10.0):
        return SILENCE_DBFS
    return 10.0 * math.log10(power)
