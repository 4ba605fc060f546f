"""G.711 mu-law and the telephone-rate converters.

The code points checked here are the standard's published values (the decoding table
every G.711 implementation shares), not values computed by the code under test.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bargein.transports import mulaw

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int32)


@pytest.mark.parametrize(
    ("code", "value"),
    [
        (0xFF, 0),
        (0x7F, 0),
        (0xF0, 120),
        (0xEF, 132),
        (0x80, 32124),
        (0x81, 31100),
        (0x00, -32124),
        (0x70, -120),
    ],
)
def test_published_code_points_decode(code: int, value: int) -> None:
    assert int(mulaw.decode_pcm16(bytes([code]))[0]) == value


def test_zero_encodes_to_ff_and_full_scale_to_the_ends() -> None:
    codes = mulaw.encode_pcm16(np.array([0, 1, -1, 32767, -32768, 120, -120]))
    assert list(codes) == [0xFF, 0xFF, 0x7F, 0x80, 0x00, 0xF0, 0x70]
    assert mulaw.encode(np.zeros(3, dtype=np.float32)) == b"\xff\xff\xff"
    assert mulaw.SILENCE_BYTE == 0xFF


def test_loud_input_clips_instead_of_wrapping() -> None:
    loud = np.array([1.0, 1.5, 40.0, -1.0, -1.5, -40.0], dtype=np.float32)
    assert list(mulaw.encode(loud)) == [0x80, 0x80, 0x80, 0x00, 0x00, 0x00]
    assert list(mulaw.encode_pcm16(np.array([32635, 32700, 32767]))) == [0x80] * 3


def test_the_sign_is_the_top_bit_and_decoding_is_symmetric() -> None:
    values = mulaw.decode_pcm16(bytes(range(256))).astype(np.int32)
    np.testing.assert_array_equal(values[:128], -values[128:])
    assert np.all(values[:127] < 0) and np.all(values[128:255] > 0)
    # Negative codes rise towards zero, positive codes fall towards it.
    assert np.all(np.diff(values[:128]) > 0) and np.all(np.diff(values[128:]) < 0)


def test_every_int16_round_trips_within_half_a_step() -> None:
    back = mulaw.decode_pcm16(mulaw.encode_pcm16(ALL_INT16)).astype(np.int32)
    error = np.abs(back - ALL_INT16)
    inside = np.abs(ALL_INT16) <= 32635  # beyond, the input is clipped first
    # A step is 1/16 of its segment, whose lower edge is at most |x| + 132.
    assert np.all(error[inside] <= (np.abs(ALL_INT16[inside]) + 132) / 32)
    assert int(error[inside].max()) == 512  # half a step of the loudest segment
    assert int(error[np.abs(ALL_INT16) <= 123].max()) == 4  # near zero: steps of 8
    assert np.all(np.sign(back[error > 0]) * np.sign(ALL_INT16[error > 0]) >= 0)


def test_every_code_but_negative_zero_survives_decode_then_encode() -> None:
    codes = bytes(range(256))
    again = mulaw.encode_pcm16(mulaw.decode_pcm16(codes))
    assert [i for i in range(256) if again[i] != codes[i]] == [0x7F]
    assert again[0x7F] == 0xFF


def test_float_round_trip_keeps_a_tone() -> None:
    t = np.arange(800) / 8000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    back = mulaw.decode(mulaw.encode(tone))
    assert back.dtype == np.float32 and back.shape == tone.shape
    assert float(np.max(np.abs(back - tone))) < 0.5 / 32 + 1e-3


def _tone(rate: int, n: int, hz: float = 1000.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(n) / rate)).astype(np.float32)


def test_the_upsampler_is_seamless_across_20_ms_pieces() -> None:
    tone = _tone(8000, 1600)
    whole = mulaw.Upsampler2x().process(tone)
    upsampler = mulaw.Upsampler2x()
    pieces = np.concatenate([upsampler.process(tone[i : i + 160]) for i in range(0, 1600, 160)])
    assert len(pieces) == 2 * len(tone)
    np.testing.assert_allclose(pieces, whole, atol=1e-6)
    # Past the filter's delay it is the same tone at 16 kHz, at the same level.
    expected = _tone(16000, 3200)
    delay = 31
    np.testing.assert_allclose(pieces[delay + 200 :], expected[200 : 3200 - delay], atol=0.02)


def test_the_downsampler_is_seamless_across_pieces_of_any_length() -> None:
    tone = _tone(16000, 3200)
    whole = mulaw.Downsampler2x().process(tone)
    downsampler = mulaw.Downsampler2x()
    cuts = [0, 320, 641, 960, 1283, 2000, 3200]  # odd lengths included
    pieces = np.concatenate([downsampler.process(tone[a:b]) for a, b in itertools.pairwise(cuts)])
    assert len(pieces) == len(tone) // 2
    np.testing.assert_allclose(pieces, whole, atol=1e-6)
    # The same tone at 8 kHz, 31 samples of 16 kHz later.
    k = np.arange(100, 1600)
    expected = 0.5 * np.sin(2 * np.pi * 1000.0 * (2 * k - 31) / 16000)
    np.testing.assert_allclose(whole[100:], expected, atol=0.02)


def test_the_converters_stop_what_8_khz_cannot_carry() -> None:
    # A 6 kHz tone at 16 kHz cannot pass through 8 kHz; it must not fold down to 2 kHz.
    high = _tone(16000, 3200, hz=6000.0)
    down = mulaw.Downsampler2x().process(high)
    assert float(np.sqrt(np.mean(down[100:] ** 2))) < 0.01
