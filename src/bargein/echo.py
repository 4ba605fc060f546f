"""The agent's own voice coming back through the user's microphone.

On a speakerphone or a laptop the microphone hears the agent. Left alone, that echo
looks like the user talking: tier 1 pauses the agent for its own voice. The session
knows exactly what the listener heard, because the sink reports its playback cursor, so
it can build the *reference*: the agent's audio as it was played, on the microphone's
timeline. Two tools use it, alone or together (``SessionConfig.echo``):

- ``"aec"``: an adaptive echo canceller from a maintained library
  (:class:`EchoCanceller`, WebRTC's AEC3 by default) removes the echo from the
  microphone, including a room's reverberation.
- ``"gate"``: :class:`EchoGate` finds the delay and the gain at which the reference
  best matches the microphone, subtracts that copy, and calls a block *echo* when what
  is left is far below what came in. An echo block reaches the VAD and the loudness
  gate attenuated to near silence, so tier 1 does not fire on it and a tentative
  start it did fire on ends without a voice (tier 2 resumes). A user talking over the
  echo is energy the reference cannot explain: it survives the subtraction at its own
  level and interrupts as fast as without echo.
- ``"both"``: the canceller's output goes on, the gate's evidence (measured on the raw
  microphone, where the reference matches best) silences what the canceller left.
- ``"auto"`` (the default): the gate alone while it explains the echo it finds; ``"both"``
  from the moment it finds an echo it cannot explain. A dry echo (a delay and a gain) is
  exactly what the gate models, and the canceller's suppressor would only reshape the
  user's voice there; a reverberant room leaves a tail no short fit explains, and that is
  what the canceller is for. A session with no echo at all never starts the canceller.

While the reference has been silent for longer than the longest echo delay, nothing
runs but one energy comparison per 10 ms block: without an agent voice there is no echo.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from bargein.providers.base import FloatAudio

EchoMode = Literal["off", "aec", "gate", "both", "auto"]
ECHO_MODES: tuple[EchoMode, ...] = ("off", "aec", "gate", "both", "auto")

_TINY = 1e-12
_SOUNDING_DBFS = -60.0
"""A microphone block quieter than this says little about the echo path."""


def _db(ratio: float) -> float:
    return 10.0 * float(np.log10(max(ratio, _TINY)))


@runtime_checkable
class EchoCanceller(Protocol):
    """An adaptive echo canceller: microphone and reference in, microphone without echo out.

    Both signals come in blocks of ``block_samples`` at ``sample_rate``, the reference
    block being what the loudspeaker played while the microphone block was captured.
    """

    sample_rate: int
    block_samples: int

    def process(self, mic: FloatAudio, reference: FloatAudio) -> FloatAudio: ...

    def reset(self) -> None: ...


class PlayoutReference:
    """The agent's audio as the listener heard it, rendered on the microphone's timeline.

    The sink reports a cursor ("``played`` samples of this reply by time ``at``"); between
    reports the audio goes on at its own rate for at most ``coast_s``, and stops at once
    when the session pauses or clears the sink. A cursor is whole samples on a clock that
    ticks, so each report is off by up to a sample: while playback runs on, the mapping
    from clock time to sample is the average over its reports (sub-sample exact, which
    subtracting an echo needs), and it starts afresh when a report strays more than
    ``jump_s`` from it (a pause, a stall, a resume).
    """

    def __init__(
        self, source_rate: int, rate: int = 16000, coast_s: float = 0.2, jump_s: float = 0.002
    ) -> None:
        self.source_rate = source_rate
        self.rate = rate
        self.coast_s = coast_s
        self.jump = jump_s * source_rate
        self._offsets = 0.0  # sum of (at * source_rate - played) over the run's reports
        self._reports = 0
        self._chunks: dict[int, list[FloatAudio]] = {}
        self._audio: dict[int, FloatAudio] = {}
        self._current: int | None = None
        self._anchor: tuple[int, float] | None = None  # (played, at) of the last progress
        self._stopped_at: float | None = None
        self._gain = 1.0

    def write(self, reply_id: int, audio: FloatAudio) -> None:
        self._chunks.setdefault(reply_id, []).append(np.asarray(audio, dtype=np.float32))

    def report(self, reply_id: int, played: int, at: float) -> None:
        if reply_id != self._current:
            for old in [r for r in self._chunks if r < reply_id]:
                self._chunks.pop(old, None)
                self._audio.pop(old, None)
            self._current = reply_id
            self._offsets, self._reports = 0.0, 0
        elif self._anchor is not None and played <= self._anchor[0]:
            return  # no progress (paused, or starved): the older anchor and its limits hold
        offset = at * self.source_rate - played
        if self._reports and abs(offset - self._offsets / self._reports) > self.jump:
            self._offsets, self._reports = 0.0, 0
        if self._stopped_at is not None:
            self._offsets, self._reports = 0.0, 0
        self._offsets += offset
        self._reports += 1
        self._anchor = (played, at)
        self._stopped_at = None

    def stop(self, at: float) -> None:
        """The sink stopped playing (paused or cleared) at ``at``."""
        if self._stopped_at is None:
            self._stopped_at = at

    def set_gain(self, gain: float) -> None:
        """The sink plays at ``gain`` from now on (ducking)."""
        self._gain = gain

    def _reply_audio(self, reply_id: int) -> FloatAudio:
        chunks = self._chunks.get(reply_id, [])
        audio = self._audio.get(reply_id, np.zeros(0, dtype=np.float32))
        if chunks:
            audio = np.concatenate([audio, *chunks]).astype(np.float32)
            self._audio[reply_id] = audio
            self._chunks[reply_id] = []
        return audio

    def active(self, at: float) -> bool:
        """Whether the reference may be sounding at ``at``."""
        if self._anchor is None or self._current is None:
            return False
        if self._stopped_at is not None and at > self._stopped_at:
            return False
        return at - self._anchor[1] <= self.coast_s

    def render(self, n: int, at: float) -> FloatAudio:
        """The reference for the ``n`` microphone samples that end at clock time ``at``."""
        out = np.zeros(n, dtype=np.float32)
        if self._anchor is None or self._current is None:
            return out
        anchored_at = self._anchor[1]
        start = at - n / self.rate
        if start - anchored_at > self.coast_s:
            return out
        if self._stopped_at is not None and start >= self._stopped_at:
            return out
        audio = self._reply_audio(self._current)
        times = start + np.arange(n) / self.rate
        positions = times * self.source_rate - self._offsets / max(1, self._reports)
        valid = (positions >= 0) & (positions < len(audio) - 1)
        valid &= times - anchored_at <= self.coast_s
        if self._stopped_at is not None:
            valid &= times < self._stopped_at
        if not valid.any():
            return out
        pos = positions[valid]
        base = np.floor(pos).astype(np.int64)
        frac = (pos - base).astype(np.float32)
        out[valid] = audio[base] * (1 - frac) + audio[base + 1] * frac
        if self._gain != 1.0:
            out *= np.float32(self._gain)
        return out


@dataclass(frozen=True)
class EchoEvidence:
    """What the gate concluded about one 10 ms block of microphone audio."""

    at: float
    echo: bool
    """The block's energy is explained by the reference."""
    mic_dbfs: float
    residual_db: float
    """Energy left after subtracting the matched reference, relative to the block (<= 0)."""
    delay_ms: float | None
    """The echo path's delay, as tracked when the block was judged."""
    erl_db: float | None
    """Echo return loss: the echo's level relative to the reference (negative: quieter)."""


class EchoGate:
    """Per-block echo evidence from the microphone and the reference, and the block to use.

    The delay is found by normalised cross-correlation of the last ``window_s`` of the
    microphone against every lag up to ``max_delay_s`` of the reference (one FFT), and
    kept while it goes on explaining the microphone; the gain is the least-squares fit
    over the same window. A block is *echo* when the energy left after subtracting the
    fitted reference is ``explained_db`` or more below the block's own.
    """

    def __init__(
        self,
        rate: int = 16000,
        block: int = 160,
        *,
        max_delay_s: float = 0.4,
        window_s: float = 0.04,
        explained_db: float = -12.0,
        suppress_db: float = -30.0,
        floor_dbfs: float = -65.0,
        confident: float = 0.9,
        subtract_db: float = -3.0,
        taps: int = 5,
        search_every: int = 4,
    ) -> None:
        self.rate = rate
        self.block = block
        self.max_lag = round(max_delay_s * rate) + taps // 2
        self.window = max(block, round(window_s * rate))
        self.explained_db = explained_db
        self.suppress = np.float32(10 ** (suppress_db / 20))
        self.floor = 10 ** (floor_dbfs / 10)
        self.confident = confident
        self.subtract_db = subtract_db
        self.taps = taps | 1
        """Taps of the fitted echo path around the delay: a fraction of a sample off, or
        a loudspeaker's colour, must not leave the echo unexplained."""
        self.delay: int | None = None
        """The tracked echo delay in samples."""
        self.search_every = max(1, search_every)
        """While the microphone stays loud and no delay explains it (a voice with no echo,
        or over one), the delay search (an FFT over every lag, the gate's costliest step)
        runs on one block in this many; the first loud block always searches."""
        self._last_search: tuple[int, float] | None = None
        self._since_search = 0
        self._mic = np.zeros(self.window, dtype=np.float32)
        self._ref = np.zeros(self.window + self.max_lag, dtype=np.float32)
        history = -(-(self.window + self.max_lag) // block) + 1
        self._ref_levels: deque[float] = deque([0.0] * history, maxlen=history)
        self._mic_mean = 0.0

    def process(
        self, mic: FloatAudio, ref: FloatAudio, at: float
    ) -> tuple[FloatAudio, EchoEvidence]:
        """Judge one block; return it (echo removed, echo blocks attenuated) and the evidence."""
        if len(mic) != self.block or len(ref) != self.block:
            raise ValueError(f"the gate takes blocks of {self.block} samples")
        self._mic = np.concatenate([self._mic[self.block :], mic])
        self._ref = np.concatenate([self._ref[self.block :], ref])
        self._ref_levels.append(float(np.dot(ref, ref)) / self.block)
        # A microphone's DC offset is no echo: judge the block around its running mean.
        self._mic_mean += 0.05 * (float(np.mean(mic)) - self._mic_mean)
        centred = mic - np.float32(self._mic_mean)
        level = float(np.dot(centred, centred)) / self.block
        mic_dbfs = _db(level)
        if max(self._ref_levels) < self.floor or level < self.floor:
            # No agent voice within reach of any delay, or nothing to explain: cheap exit.
            self._last_search = None  # the next loud block searches afresh
            return mic, EchoEvidence(at, False, mic_dbfs, 0.0, self._delay_ms(), None)
        lag, taps = self._fit()
        trusted = lag == self.delay
        rows, means = self._columns(lag, self.block)
        echo_part = (rows - means) @ taps
        residual = (mic - echo_part).astype(np.float32)
        left = centred - echo_part
        ratio_db = _db(float(np.dot(left, left)) / self.block / level)
        # A quiet block at the end of a loud syllable is judged against the window too: a
        # residual far below the echo around it is what the fit missed, not a new voice.
        recent = float(np.var(self._mic))
        left_level = float(np.dot(left, left)) / self.block
        echo = (
            ratio_db <= self.explained_db
            or _db(left_level / max(recent, _TINY)) <= self.explained_db - 8
        )
        size = float(np.sqrt(np.dot(taps, taps)))
        erl = 20 * float(np.log10(size)) if size > 0 else None
        evidence = EchoEvidence(at, echo, mic_dbfs, min(0.0, ratio_db), lag * 1000 / self.rate, erl)
        if echo:
            return residual * self.suppress, evidence
        # Over the echo, a user's voice is what the subtraction leaves. A fit at a delay
        # that was never confirmed, explaining little, is chance: subtracting it would
        # only add the agent's voice.
        subtract = trusted or ratio_db <= self.subtract_db
        # A subtraction that adds energy subtracts an echo that is not there.
        subtract = subtract and ratio_db <= 0.0
        return (residual if subtract else mic), evidence

    def prime(self, history: FloatAudio) -> None:
        """Set the reference heard before now (oldest first), after a stretch unwatched.

        The microphone window is cleared too: what it held is from before the stretch,
        and fitting the new reference to it would subtract an echo from silence.
        """
        self._mic = np.zeros_like(self._mic)
        self._mic_mean = 0.0
        keep = history[-len(self._ref) :]
        self._ref = np.concatenate([self._ref[len(keep) :], keep]).astype(np.float32)
        for i in range(
            max(0, len(keep) - self.block * len(self._ref_levels)), len(keep), self.block
        ):
            part = keep[i : i + self.block]
            self._ref_levels.append(float(np.dot(part, part)) / max(1, len(part)))

    def _delay_ms(self) -> float | None:
        return None if self.delay is None else self.delay * 1000 / self.rate

    def _columns(self, lag: int, n: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """The reference around ``lag``, one column per tap, over the last ``n`` samples,
        and each column's mean over the fitting window."""
        h = self.taps // 2
        end = len(self._ref) - lag
        cols = [self._ref[end + k - n : end + k] for k in range(h, -h - 1, -1)]
        rows = np.stack(cols, axis=1).astype(np.float64)
        # The window's mean at each tap offset, from one running sum over the span.
        span = np.concatenate([[0.0], np.cumsum(self._ref[end - h - self.window : end + h])])
        sums = span[self.window :] - span[: -self.window]  # offsets -h..h
        means: npt.NDArray[np.float64] = sums[::-1] / self.window
        return rows, means

    def _fit(self) -> tuple[int, npt.NDArray[np.float64]]:
        """The lag and taps that best explain the microphone window; tracks the delay."""
        mic = self._mic - np.float32(np.mean(self._mic))
        mic_energy = float(np.dot(mic, mic)) + _TINY
        if self.delay is not None:
            taps, ratio = self._fit_at(mic, mic_energy, self.delay)
            if _db(ratio) <= self.explained_db:
                return self.delay, taps
        if self._last_search is not None and self._since_search < self.search_every - 1:
            self._since_search += 1
            lag, ncc = self._last_search
        else:
            lag, ncc = self._last_search = self._search(mic, mic_energy)
            self._since_search = 0
        if ncc >= self.confident:
            self.delay = lag
        elif self.delay is not None:
            lag = self.delay  # a voice over the echo: the path has not moved
        taps, _ = self._fit_at(mic, mic_energy, lag)
        return lag, taps

    def _fit_at(
        self, mic: FloatAudio, mic_energy: float, lag: int
    ) -> tuple[npt.NDArray[np.float64], float]:
        """Least-squares taps around ``lag`` and the share of the window they leave."""
        rows, means = self._columns(lag, self.window)
        x = rows - means
        gram = x.T @ x
        scale = float(np.trace(gram))
        if scale <= _TINY:
            return np.zeros(self.taps), 1.0
        cross = x.T @ mic.astype(np.float64)
        # A whisper of ridge keeps the fit stable on a band-limited reference.
        taps: npt.NDArray[np.float64] = np.linalg.solve(
            gram + np.eye(self.taps) * scale * 1e-6, cross
        ).astype(np.float64)
        return taps, max(0.0, 1.0 - float(taps @ cross) / mic_energy)

    def _search(self, mic: FloatAudio, mic_energy: float) -> tuple[int, float]:
        """Normalised cross-correlation over every lag; the best lag and its score."""
        ref = self._ref.astype(np.float64)
        w = self.window
        size = 1 << int(np.ceil(np.log2(len(ref) + w)))
        spectrum = np.fft.rfft(ref, size) * np.conj(np.fft.rfft(mic.astype(np.float64), size))
        corr = np.fft.irfft(spectrum, size)[: len(ref) - w + 1]
        # corr[k] pairs the mic window with ref[k : k + w]; lag = len(ref) - w - k.
        sums = np.concatenate([[0.0], np.cumsum(ref)])
        squares = np.concatenate([[0.0], np.cumsum(ref * ref)])
        seg_sum = sums[w:] - sums[:-w]
        seg_energy = squares[w:] - squares[:-w] - seg_sum * seg_sum / w
        ncc = np.abs(corr) / np.sqrt(np.maximum(seg_energy, _TINY) * mic_energy)
        ncc[seg_energy <= _TINY * w] = 0.0
        k = int(np.argmax(ncc))
        h = self.taps // 2
        return min(max(len(ref) - w - k, h), self.max_lag - h), float(ncc[k])


CancellerFactory = Callable[[], EchoCanceller]


def default_canceller() -> EchoCanceller:
    from bargein.providers.webrtc_aec import WebRtcEchoCanceller

    return WebRtcEchoCanceller()


class EchoControl:
    """Everything between the microphone and the VAD that concerns the agent's own voice.

    The session feeds it what it sends to the sink, the sink's cursor and its pause, duck
    and clear; :meth:`process` takes microphone audio of any length and returns the audio
    the VAD and the recogniser should hear (10 ms blocks, so up to one block later).
    """

    def __init__(
        self,
        mode: EchoMode,
        source_rate: int,
        rate: int = 16000,
        *,
        canceller: CancellerFactory | None = None,
        gate: EchoGate | None = None,
        max_delay_s: float = 0.4,
        judge_blocks: int = 12,
        explained_share: float = 0.5,
        unheard_after_s: float = 1.5,
    ) -> None:
        if mode not in ECHO_MODES or mode == "off":
            raise ValueError(f"echo mode must be one of aec, gate, both, auto; got {mode!r}")
        self.mode = mode
        self.rate = rate
        self.block = rate // 100
        self.reference = PlayoutReference(source_rate, rate)
        self._new_canceller = canceller or default_canceller
        self.canceller: EchoCanceller | None = None
        if mode in ("aec", "both"):
            self._start_canceller()
        self.gate = (
            (gate or EchoGate(rate, self.block, max_delay_s=max_delay_s)) if mode != "aec" else None
        )
        self.evidence: deque[EchoEvidence] = deque(maxlen=500)
        """The gate's judgement of the most recent blocks (while the reference was live)."""
        self.echo_blocks = 0
        """Blocks judged to be echo and silenced, since the session began."""
        self.judge_blocks = judge_blocks
        """``"auto"``: the verdict is taken on this many sounding blocks (the latest)."""
        self.explained_share = explained_share
        """``"auto"``: the canceller starts when the gate explained fewer of those blocks."""
        self.canceller_started_at: float | None = None
        """``"auto"``: when the gate's verdict started the canceller (clock time), or None."""
        self.unheard_after_s = unheard_after_s
        """``"auto"``: after the agent has played this long with the microphone below the
        gate's floor, before any verdict, there is no echo path (a headset): the verdict
        is taken, and it starts no canceller. An echo path sounds within ``max_delay_s``
        of the agent's first sound; a user who answers the agent's opening question, a
        second or two in, must find the verdict taken."""
        self._unheard_s = 0.0
        self._sounding: deque[bool] = deque(maxlen=judge_blocks)  # explained or not
        self._verdict = False
        # ``"auto"`` before its verdict: the last second of microphone and reference, so
        # that a canceller started late has already adapted to the room when it takes over.
        self._history: deque[tuple[FloatAudio, FloatAudio]] = deque(
            maxlen=100 if mode == "auto" else 0
        )
        self._pending = np.zeros(0, dtype=np.float32)
        self._quiet_for = float("inf")  # seconds since the reference last sounded
        self._reach_s = max_delay_s + 0.1
        self._watching = False

    def _start_canceller(self) -> EchoCanceller:
        made = self._new_canceller()
        if made.sample_rate != self.rate or made.block_samples != self.block:
            raise ValueError(f"the echo canceller must take 10 ms blocks at {self.rate} Hz")
        self.canceller = made
        return made

    # -- what the sink does ---------------------------------------------------------------

    def write(self, reply_id: int, audio: FloatAudio) -> None:
        self.reference.write(reply_id, audio)

    def played(self, reply_id: int, played: int, at: float) -> None:
        self.reference.report(reply_id, played, at)

    def stopped(self, at: float) -> None:
        self.reference.stop(at)

    def set_gain(self, gain: float) -> None:
        self.reference.set_gain(gain)

    # -- the microphone -------------------------------------------------------------------

    def process(self, samples: FloatAudio, at: float) -> FloatAudio:
        """Microphone audio ending at clock time ``at``; returns what the VAD should hear."""
        if not len(self._pending) and self._idle(at):
            self._watching = False
            return samples  # no agent voice within reach: nothing to do, no buffering
        if self._below_gate_floor(samples):
            # The gate would pass every block as it is: skip rendering the reference while
            # the user is silent (most of a call). A louder block primes the gate again.
            self._watching = False
            active = self.reference.active(at)
            self._quiet_for = 0.0 if active else self._quiet_for + len(samples) / self.rate
            if active:
                self._unheard_s += len(samples) / self.rate
            return samples
        if not self._watching and self.gate is not None:
            # The reference may have started before this call: give the gate all of it.
            start = at - len(samples) / self.rate
            span = len(self.gate._ref)
            self.gate.prime(self.reference.render(span, start))
        self._watching = True
        pending = np.concatenate([self._pending, samples])
        whole = len(pending) - len(pending) % self.block
        self._pending = pending[whole:]
        if not whole:
            return np.zeros(0, dtype=np.float32)
        blocks = whole // self.block
        out = np.empty(whole, dtype=np.float32)
        # Block i ends at ``at`` less the samples after it (the remainder just buffered).
        # The reference is rendered for all of them at once: the same samples, one call.
        end_at = at - len(self._pending) / self.rate
        ref = self.reference.render(whole, end_at)
        peaks = np.max(np.abs(ref.reshape(blocks, self.block)), axis=1)
        for i in range(blocks):
            lo, hi = i * self.block, (i + 1) * self.block
            block_at = end_at - (blocks - 1 - i) * self.block / self.rate
            out[lo:hi] = self._block(pending[lo:hi], ref[lo:hi], float(peaks[i]), block_at)
        return out

    def cancelling(self, at: float) -> bool:
        """``"auto"`` started the canceller for a room, and its echo may still sound at ``at``.

        Over such a room the canceller leaves a residue in sudden bursts, which a
        loudness onset would take for a voice. (In ``"aec"`` and ``"both"`` modes, chosen
        up front, loudness onsets are kept: their measured figures rely on them.)
        """
        return self.canceller_started_at is not None and not self._idle(at)

    def removing(self, at: float) -> bool:
        """A canceller runs (in any mode), and the agent's echo may still sound at ``at``."""
        return self.canceller is not None and not self._idle(at)

    def _below_gate_floor(self, samples: FloatAudio) -> bool:
        """Whole blocks, none above the gate's floor, and no canceller that must adapt."""
        if self.gate is None or self.canceller is not None or len(self._pending):
            return False
        if not len(samples) or len(samples) % self.block:
            return False
        blocks = samples.reshape(-1, self.block)
        levels = np.einsum("ij,ij->i", blocks, blocks) / self.block
        return bool(levels.max() < self.gate.floor)

    def _idle(self, at: float) -> bool:
        return not self.reference.active(at) and self._quiet_for > self._reach_s

    def _block(self, mic: FloatAudio, ref: FloatAudio, peak: float, at: float) -> FloatAudio:
        if peak > 1e-4:
            self._quiet_for = 0.0
        else:
            self._quiet_for += self.block / self.rate
        if self._quiet_for > self._reach_s:
            return mic  # the echo of the last sound has died away
        out = mic
        if self.canceller is not None:
            out = np.asarray(self.canceller.process(mic, ref), dtype=np.float32)
        elif self.mode == "auto" and not self._verdict:
            self._history.append((mic, ref))
        if self.gate is not None:
            gated, evidence = self.gate.process(mic, ref, at)
            self.evidence.append(evidence)
            if self.canceller is None and self._unexplained(evidence):
                out = self._take_over(at)
            if evidence.echo:
                self.echo_blocks += 1
                out = out * self.gate.suppress if self.canceller is not None else gated
            elif self.canceller is None:
                out = gated
        return out

    def _unexplained(self, evidence: EchoEvidence) -> bool:
        """``"auto"``: the verdict, once the gate has confirmed an echo delay.

        The gate explains a dry echo almost block by block; in a reverberant room it
        confirms the delay (the direct sound correlates) yet explains almost nothing, the
        tail being longer than its fit. The verdict is taken once per session, on the
        last sounding blocks when the delay is first confirmed: a user talking over a dry
        echo later on is unexplained too, and must not start the canceller. A
        session whose microphone stayed silent for seconds while the agent played has no
        echo path at all, and its verdict is taken then: otherwise a user who later says
        what the agent just said ("right" in the same voice, as two synthetic voices can)
        confirms a delay, is unexplained, and starts a canceller on a headset call.
        """
        if self.mode != "auto" or self._verdict:
            return False
        if self._unheard_s >= self.unheard_after_s:
            self._verdict = True  # no echo path: a voice now is the user's
            return False
        if evidence.mic_dbfs >= _SOUNDING_DBFS:
            self._sounding.append(evidence.echo)
        if self.gate is None or self.gate.delay is None:
            return False
        if len(self._sounding) < self.judge_blocks:
            return False
        self._verdict = True
        return sum(self._sounding) < self.explained_share * len(self._sounding)

    def _take_over(self, at: float) -> FloatAudio:
        """Start the canceller on the history (this block last); return its last output."""
        canceller = self._start_canceller()
        self.canceller_started_at = at
        out = np.zeros(self.block, dtype=np.float32)
        for mic, ref in self._history:
            out = np.asarray(canceller.process(mic, ref), dtype=np.float32)
        self._history.clear()
        return out
