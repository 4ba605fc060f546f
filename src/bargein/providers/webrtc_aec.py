"""WebRTC's echo canceller (AEC3), through the ``pywebrtc-audio`` bindings.

AEC3 is the canceller that runs in Chrome: an adaptive filter with its own delay
estimator, followed by a suppressor for what the filter leaves. The bindings ship as a
small binary wheel (no compiler, no PyTorch) and take float32 numpy blocks directly.
Its output lags its input by 8 ms at 16 kHz (AEC3's band-split filter bank).
"""

from __future__ import annotations

import numpy as np

from bargein.providers.base import FloatAudio


class WebRtcEchoCanceller:
    """One echo canceller for one microphone stream, in 10 ms blocks."""

    def __init__(self, sample_rate: int = 16000, stream_delay_ms: int = 0) -> None:
        from pywebrtc_audio import EchoCanceller

        self.sample_rate = sample_rate
        self.block_samples = sample_rate // 100
        self._aec = EchoCanceller(
            sample_rate=sample_rate, num_channels=1, stream_delay_ms=stream_delay_ms
        )

    def process(self, mic: FloatAudio, reference: FloatAudio) -> FloatAudio:
        if len(mic) != self.block_samples or len(reference) != self.block_samples:
            raise ValueError(f"the echo canceller takes blocks of {self.block_samples} samples")
        out = self._aec.process(
            np.ascontiguousarray(mic, dtype=np.float32),
            np.ascontiguousarray(reference, dtype=np.float32),
        )
        return np.asarray(out, dtype=np.float32)

    def reset(self) -> None:
        self._aec.reset()
