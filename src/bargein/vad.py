"""From microphone audio to speech start and end events.

Two detectors feed one segmenter:

- **Silero's speech probability**, one score per 32 ms frame. It is the judge of whether a
  sound is a voice, but it can be slow to fire on a word that opens with a fricative:
  "stop" can take four frames (130 ms) to cross 0.5, because /s/ is hiss.
- **A loudness gate**, on 10 ms blocks as they arrive. A sound that jumps well above the
  running noise floor opens a *tentative* start at once, so tier 1 can pause the agent
  within milliseconds. Silero must then confirm it within ``confirm_s``; if it does not,
  the start is withdrawn (an end with no voice in it, which tier 2 resumes at once),
  and the gate stays shut for ``refractory_s`` so a rattling noise does not keep
  pausing the agent.

An end needs ``end_silence_s`` of frames under ``end_threshold``, so a breath between two
words does not split an utterance. The caller may ask for a shorter end on any frame
(:meth:`SpeechSegmenter.push`): while the agent is paused for a sound, every millisecond
of hangover is silence the user hears. Everything here is pure and clock-free like the
policy: the caller passes each block's timestamp.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bargein.policy import SpeechEnded, SpeechStarted
from bargein.providers.base import FloatAudio


@dataclass
class LoudnessGate:
    """Flags 10 ms blocks that stand ``margin_db`` above the noise floor."""

    sample_rate: int = 16000
    block_s: float = 0.01
    margin_db: float = 15.0
    min_dbfs: float = -42.0
    floor_rise_db_per_s: float = 3.0

    def __post_init__(self) -> None:
        self.block = round(self.sample_rate * self.block_s)
        self.floor_dbfs = -90.0
        self._pending = np.zeros(0, dtype=np.float32)

    def push(self, audio: FloatAudio) -> bool:
        """Feed audio; True if any complete block in it was loud."""
        pending = np.concatenate([self._pending, audio]) if len(self._pending) else audio
        whole = len(pending) - len(pending) % self.block
        self._pending = pending[whole:].copy()  # not a view of the caller's array
        blocks = pending[:whole].reshape(-1, self.block).astype(np.float64)
        levels = 10 * np.log10(np.einsum("ij,ij->i", blocks, blocks) / self.block + 1e-12)
        loud = False
        for level in levels.tolist():
            if level >= max(self.min_dbfs, self.floor_dbfs + self.margin_db):
                loud = True
            # The floor follows quiet blocks down at once and creeps up slowly, so a
            # steady hum raises it but a voice does not.
            if level < self.floor_dbfs:
                self.floor_dbfs = level
            else:
                self.floor_dbfs += self.floor_rise_db_per_s * self.block_s
        return loud


@dataclass
class SpeechSegmenter:
    start_threshold: float = 0.5
    end_threshold: float = 0.35
    start_frames: int = 1
    end_silence_s: float = 0.25
    confirm_threshold: float = 0.3
    """A loudness start counts as voice once a frame scores at least this."""
    confirm_s: float = 0.25
    refractory_s: float = 1.0
    frame_s: float = 0.032
    """The audio each :meth:`push` stands for (Silero's 512 samples at 16 kHz)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.end_threshold <= self.start_threshold < 1.0:
            raise ValueError("need 0 < end_threshold <= start_threshold < 1")
        if self.start_frames < 1:
            raise ValueError("start_frames must be at least 1")
        self.reset()

    def reset(self) -> None:
        self.active = False
        self.confirmed = False
        self._above = 0
        self._quiet_since: float | None = None
        self._last_at: float | None = None
        self._started_at = 0.0
        self._scored = 0
        self._gate_shut_until = float("-inf")

    def push_loud(self, at: float) -> SpeechStarted | None:
        """The loudness gate fired: open a tentative start unless speech is already on."""
        if self.active or at < self._gate_shut_until:
            return None
        self.active = True
        self.confirmed = False
        self._started_at = at
        self._scored = 0
        self._quiet_since = None
        return SpeechStarted(at, voiced=False)

    def push(
        self, at: float, probability: float, end_silence_s: float | None = None
    ) -> SpeechStarted | SpeechEnded | None:
        """Feed one frame's probability, timestamped at the frame's end.

        ``end_silence_s`` overrides the field for this frame: the silence that, counted
        from the last voiced frame, ends the speech now.
        """
        previous, self._last_at = self._last_at, at
        if not self.active:
            self._above = self._above + 1 if probability >= self.start_threshold else 0
            if self._above >= self.start_frames:
                self.active = True
                self.confirmed = True
                self._above = 0
                self._quiet_since = None
                return SpeechStarted(at)
            return None
        if not self.confirmed:
            # The window is the clock's and the audio's both: frames that arrive in a
            # burst after a network stall carry the stall in their timestamps, and the
            # voice in them must still get its chance (the frame under way at the start
            # counts as one).
            self._scored += 1
            heard = (self._scored + 1) * self.frame_s
            if probability >= self.confirm_threshold:
                self.confirmed = True
            elif at - self._started_at >= self.confirm_s - 1e-9 and heard >= self.confirm_s:
                self.active = False
                self._gate_shut_until = at + self.refractory_s
                return SpeechEnded(at)
            return None
        if probability >= self.end_threshold:
            self._quiet_since = None
            return None
        if self._quiet_since is None:
            # Silence began where the previous (voiced) frame ended.
            self._quiet_since = previous if previous is not None else at
        end_silence = self.end_silence_s if end_silence_s is None else end_silence_s
        if at - self._quiet_since >= end_silence - 1e-9:
            self.active = False
            self._quiet_since = None
            return SpeechEnded(at)
        return None
