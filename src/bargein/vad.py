"""From per-frame speech probabilities to speech start and end events.

Tier 1 must react within one frame, so a start needs only ``start_frames`` frames at or
above ``start_threshold`` (one, by default: a false start costs a short pause that tier 2
undoes, a late start costs the user hearing the agent talk over them). An end needs
``end_silence_s`` of frames under the lower ``end_threshold``, so a breath between two
words does not split an utterance. Pure and clock-free like the policy: the caller
passes each frame's timestamp.
"""

from __future__ import annotations

from dataclasses import dataclass

from bargein.policy import SpeechEnded, SpeechStarted


@dataclass
class SpeechSegmenter:
    start_threshold: float = 0.5
    end_threshold: float = 0.35
    start_frames: int = 1
    end_silence_s: float = 0.25

    def __post_init__(self) -> None:
        if not 0.0 < self.end_threshold <= self.start_threshold < 1.0:
            raise ValueError("need 0 < end_threshold <= start_threshold < 1")
        if self.start_frames < 1:
            raise ValueError("start_frames must be at least 1")
        self.active = False
        self._above = 0
        self._quiet_since: float | None = None
        self._last_at: float | None = None

    def push(self, at: float, probability: float) -> SpeechStarted | SpeechEnded | None:
        """Feed one frame's probability, timestamped at the frame's end."""
        previous, self._last_at = self._last_at, at
        if not self.active:
            self._above = self._above + 1 if probability >= self.start_threshold else 0
            if self._above >= self.start_frames:
                self.active = True
                self._above = 0
                self._quiet_since = None
                return SpeechStarted(at)
            return None
        if probability >= self.end_threshold:
            self._quiet_since = None
            return None
        if self._quiet_since is None:
            # Silence began where the previous (voiced) frame ended.
            self._quiet_since = previous if previous is not None else at
        if at - self._quiet_since >= self.end_silence_s - 1e-9:
            self.active = False
            self._quiet_since = None
            return SpeechEnded(at)
        return None

    def reset(self) -> None:
        self.active = False
        self._above = 0
        self._quiet_since = None
        self._last_at = None
