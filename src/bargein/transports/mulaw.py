"""Telephone audio: G.711 mu-law and the 8 kHz <-> 16 kHz conversions around it.

Phone networks carry 8-bit mu-law at 8 kHz; the session listens at 16 kHz float32. The
codec is written here with numpy because the standard library's ``audioop`` is gone
from Python 3.13 and a whole call's audio should not go through a Python loop.

The codec is ITU-T G.711's mu-law: a 16-bit sample is biased by 132, its magnitude
split into a 3-bit segment (the position of its highest bit) and a 4-bit step within
the segment, and the byte is sent inverted. Decoding returns the middle of the
encoded interval, so the error is at most half a step: 4 near zero, 512 at the loudest
segment, about 3% of the sample everywhere above the first segment. Magnitudes above
32635 are clipped first, so full scale decodes to +-32124.

The rate converters keep their filter state between calls, because a call's audio
arrives in 20 ms pieces: filtering each piece on its own would put a click at every
piece boundary, 50 times a second.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import firwin, lfilter

from bargein.audio import from_int16, to_int16

__all__ = [
    "SILENCE_BYTE",
    "Downsampler2x",
    "Upsampler2x",
    "decode",
    "decode_pcm16",
    "encode",
    "encode_pcm16",
]

_BIAS = 132
_CLIP = 32635
SILENCE_BYTE = 0xFF
"""The mu-law byte of a zero sample (what a silent line carries)."""

# The lower edge of segments 1..7 of the biased magnitude (segment 0 starts at the bias).
_SEGMENT_EDGES = np.array([1 << (s + 7) for s in range(1, 8)], dtype=np.int32)


def _decode_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    segment = (codes >> 4) & 0x07
    step = codes & 0x0F
    magnitude = (((step << 3) + _BIAS) << segment) - _BIAS
    return np.where(codes & 0x80, -magnitude, magnitude).astype(np.int16)


_DECODE = _decode_table()


def encode_pcm16(pcm: np.ndarray) -> bytes:
    """16-bit linear samples to mu-law bytes, one byte per sample."""
    x = np.asarray(pcm, dtype=np.int32)
    sign = np.where(x < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(x), _CLIP) + _BIAS
    segment = np.searchsorted(_SEGMENT_EDGES, magnitude, side="right")
    step = (magnitude >> (segment + 3)) & 0x0F
    code = ~(sign | (segment << 4) | step) & 0xFF
    return bytes(code.astype(np.uint8))


def decode_pcm16(data: bytes) -> np.ndarray:
    """mu-law bytes to 16-bit linear samples."""
    return _DECODE[np.frombuffer(data, dtype=np.uint8)]


def encode(audio: np.ndarray) -> bytes:
    """Float samples in [-1, 1] (clipped beyond) to mu-law bytes."""
    return encode_pcm16(to_int16(audio))


def decode(data: bytes) -> np.ndarray:
    """mu-law bytes to float32 samples in [-1, 1)."""
    return from_int16(decode_pcm16(data))


# -- 8 kHz <-> 16 kHz ------------------------------------------------------------------

_TAPS = 63
"""31 samples (about 2 ms at 16 kHz) of delay; flat to about 3.2 kHz, stopped by 4 kHz."""
_LOWPASS = firwin(_TAPS, 3600.0, fs=16000.0)


class Upsampler2x:
    """8 kHz to 16 kHz for a stream cut into pieces: zero-stuff, then a low-pass FIR.

    Exactly two output samples per input sample, so timestamps derived from sample counts
    stay exact; the price is a fixed delay of 31 output samples.
    """

    def __init__(self) -> None:
        self._state = np.zeros(_TAPS - 1, dtype=np.float64)

    def process(self, audio: np.ndarray) -> np.ndarray:
        x = np.asarray(audio, dtype=np.float64)
        stuffed = np.zeros(2 * len(x), dtype=np.float64)
        stuffed[::2] = x
        # Zero-stuffing halves the level; the filter's gain of 2 restores it.
        y, self._state = lfilter(2.0 * _LOWPASS, 1.0, stuffed, zi=self._state)
        return np.asarray(y, dtype=np.float32)


class Downsampler2x:
    """16 kHz to 8 kHz for a stream cut into pieces of any length, odd ones included."""

    def __init__(self) -> None:
        self._state = np.zeros(_TAPS - 1, dtype=np.float64)
        self._phase = 0  # index, within the next piece, of the next sample to keep

    def process(self, audio: np.ndarray) -> np.ndarray:
        x = np.asarray(audio, dtype=np.float64)
        y, self._state = lfilter(_LOWPASS, 1.0, x, zi=self._state)
        kept = y[self._phase :: 2]
        self._phase = (self._phase + len(x)) % 2
        return np.asarray(kept, dtype=np.float32)
