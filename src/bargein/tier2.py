"""The trained tier-2 decider: floor bid, backchannel, noise or echo, from the overlap so far.

One module holds everything the model sees, for training and for inference alike, so the
two cannot drift apart:

- :func:`frame_features` turns one VAD frame of microphone audio into a short vector
  (level, peak, DC, clipping, zero crossings, spectral centroid and flatness, energy
  above 4 kHz, six band energies, autocorrelation voicing and pitch). The session
  computes it for every frame it scores and hands it to the policy with the frame's
  VAD probability (:class:`~bargein.policy.VoiceActivity`); the policy keeps the frames
  of an overlap in :attr:`~bargein.decider.Overlap.frames`.
- :func:`overlap_features` summarises an :class:`~bargein.decider.Overlap` at a given
  moment: how long the sound has lasted, the energy contour, spectral shape, voicing and
  pitch movement, the VAD trajectory, the recogniser's partial words against the
  backchannel and interrupt lexicons of :mod:`bargein.decider`, what a second opinion
  (Whisper) read of the sound, and the agent's context (was its sentence under way a
  question, and how long ago did its question end; was it audible at all).
- :class:`Tier2Model` is a small multilayer perceptron stored as numpy arrays
  (``models/tier2.npz``) and run with numpy alone.
- :class:`ModelDecider` implements the :class:`~bargein.decider.Decider` protocol: it
  commits once the floor-bid probability passes ``commit_threshold``, resumes once the
  other three classes together pass ``resume_threshold``, and otherwise waits for the
  next frame. On input it was not trained for (no audio features, silence, clipping, a
  DC offset, gaps between frames) it hands the decision to :class:`RuleDecider` and says
  so in the decision's reason.

``scripts/train_tier2.py`` builds the training data, trains the model and writes the
weights; docs/tier2.md describes the data, the features and the held-out figures.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from bargein.decider import (
    BACKCHANNEL_PHRASES,
    INTERRUPT_PHRASES,
    Decider,
    Decision,
    DurationDecider,
    FrameInfo,
    Overlap,
    RuleDecider,
    VoiceOnlyDecider,
    normalize_words,
    only_backchannel,
    reading_due,
)
from bargein.playout import final_mark
from bargein.providers.base import FloatAudio

__all__ = [
    "CLASSES",
    "DECIDER_KINDS",
    "FEATURE_NAMES",
    "FRAME_FEATURE_NAMES",
    "DeciderKind",
    "ModelDecider",
    "ModelError",
    "Tier2Model",
    "agent_context_is_question",
    "check_input",
    "frame_features",
    "make_decider",
    "may_resume",
    "overlap_features",
]

Vector = npt.NDArray[np.float32]

CLASSES: Final = ("floor", "backchannel", "noise", "echo")
"""What the model tells apart; index 0 is a real bid for the floor."""

SAMPLE_RATE: Final = 16000
BAND_EDGES_HZ: Final = (100.0, 300.0, 700.0, 1500.0, 3000.0, 5000.0, 8000.0)
_F0_RANGE_HZ: Final = (60.0, 400.0)
_SILENT_DB: Final = -100.0
MIN_DECISION_S: Final = 0.2
"""The least sound the model judges: its first frames cannot tell an /s/ from a hiss."""
MAX_WAIT_S: Final = 1.2
"""When the model, still unsure, takes the likelier side."""
VOICED_GAP_S: Final = 0.1
"""A voice heard this recently is still going: the model does not resume over it."""


def may_resume(features: Vector) -> bool:
    """False while a voice is still going (from :func:`overlap_features`' own numbers).

    Resuming the agent over a voice that has not stopped is the costliest mistake (the
    agent talks over the user), so the model only resumes once the voice has paused;
    sounds without a voice resume as soon as the model is sure.
    """
    ended = features[FEATURE_NAMES.index("ended")] > 0.5
    return bool(ended or features[FEATURE_NAMES.index("since_voiced")] > VOICED_GAP_S)


FRAME_FEATURE_NAMES: Final = (
    "level_db",
    "peak_db",
    "dc",
    "clipped",
    "zcr",
    "centroid",
    "flatness_db",
    "high_db",
    *(f"band{i}_db" for i in range(len(BAND_EDGES_HZ) - 1)),
    "voicing",
    "log2_f0",
)
_F = {name: i for i, name in enumerate(FRAME_FEATURE_NAMES)}


@cache
def _analysis(n: int) -> tuple[Vector, npt.NDArray[np.float64], list[npt.NDArray[np.bool_]]]:
    window = np.hanning(n).astype(np.float32)
    freqs = np.asarray(np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE), dtype=np.float64)
    bands = [(freqs >= lo) & (freqs < hi) for lo, hi in itertools.pairwise(BAND_EDGES_HZ)]
    return window, freqs, bands


def frame_features(frame: FloatAudio) -> Vector:
    """The per-frame vector (:data:`FRAME_FEATURE_NAMES`) of 16 kHz mono float audio.

    Any frame length from 160 samples up works; the session uses the VAD's frame (512).
    Always finite: silence gives the floor values, never NaN.
    """
    x = np.asarray(frame, dtype=np.float64).reshape(-1)
    n = x.size
    out = np.zeros(len(FRAME_FEATURE_NAMES), dtype=np.float32)
    if n < 160 or not np.isfinite(x).all():
        out[_F["level_db"]] = out[_F["peak_db"]] = _SILENT_DB
        return out
    dc = float(np.mean(x))
    peak = float(np.max(np.abs(x)))
    out[_F["dc"]] = dc
    out[_F["clipped"]] = float(np.mean(np.abs(x) >= 0.99))
    out[_F["peak_db"]] = 20.0 * math.log10(peak + 1e-5)
    y = x - dc
    power = float(np.mean(y * y))
    out[_F["level_db"]] = max(_SILENT_DB, 10.0 * math.log10(power + 1e-10))
    if power < 1e-9:  # below -90 dBFS: nothing to analyse
        out[_F["flatness_db"]] = 0.0
        out[_F["high_db"]] = out[_F["band0_db"]] = -60.0
        for i in range(1, len(BAND_EDGES_HZ) - 1):
            out[_F[f"band{i}_db"]] = -60.0
        return out
    out[_F["zcr"]] = float(np.mean(np.abs(np.diff(np.signbit(y).astype(np.int8)))))
    window, freqs, bands = _analysis(n)
    spec = np.abs(np.fft.rfft(y * window)) ** 2 + 1e-12
    total = float(np.sum(spec))
    out[_F["centroid"]] = float(np.sum(freqs * spec) / total) / (SAMPLE_RATE / 2)
    out[_F["flatness_db"]] = 10.0 * math.log10(
        float(np.exp(np.mean(np.log(spec)))) / float(np.mean(spec)) + 1e-12
    )
    out[_F["high_db"]] = max(-60.0, 10.0 * math.log10(float(np.sum(spec[freqs >= 4000.0])) / total))
    for i, band in enumerate(bands):
        out[_F[f"band{i}_db"]] = max(-60.0, 10.0 * math.log10(float(np.sum(spec[band])) / total))
    # Voicing: the normalised autocorrelation peak over the pitch range, and its lag.
    padded = np.fft.rfft(y, 2 * n)
    ac = np.fft.irfft(np.abs(padded) ** 2)[:n]
    lo = int(SAMPLE_RATE / _F0_RANGE_HZ[1])
    hi = min(n - 1, int(SAMPLE_RATE / _F0_RANGE_HZ[0]))
    if ac[0] > 0 and hi > lo:
        lags = np.arange(lo, hi)
        # Unbiased: a lag sees n - lag products, so compare like with like.
        r = ac[lo:hi] / ac[0] * (n / (n - lags))
        k = int(np.argmax(r))
        out[_F["voicing"]] = float(np.clip(r[k], 0.0, 1.5))
        out[_F["log2_f0"]] = math.log2(SAMPLE_RATE / float(lags[k]))
    return out


# ---------------------------------------------------------------------------------------
# The overlap as one vector
# ---------------------------------------------------------------------------------------

FEATURE_NAMES: Final = (
    "t",
    "ended",
    "since_end",
    "since_voiced",
    "frames",
    "vad_mean",
    "vad_max",
    "vad_last",
    "vad_last3",
    "vad_voiced_frac",
    "level_max",
    "level_mean",
    "level_last",
    "level_drop",
    "level_std",
    "level_slope",
    "level_first",
    "level_contrast",
    "crest",
    "voicing_mean",
    "voicing_max",
    "voiced_frac",
    "f0_mean",
    "f0_std",
    "f0_slope",
    "centroid_mean",
    "centroid_std",
    "flatness_mean",
    "flatness_min",
    "zcr_mean",
    "high_mean",
    *(f"band{i}_mean" for i in range(len(BAND_EDGES_HZ) - 1)),
    "partials",
    "words",
    "interrupt_word",
    "interrupt_stable",
    "interrupt_any",
    "only_backchannel",
    "other_words",
    "final",
    "question",
    "after_question",
    "agent_audible",
    "reading_command",
    "reading_backchannel",
    "readings_commands",
    "final_reading_command",
    "final_reading_backchannel",
    "final_reading_tie",
    "reading_interrupt",
    "final_reading_interrupt",
    "readings_backchannels",
)

_VOICED: Final = 0.45
"""Autocorrelation peak above which a frame counts as voiced for the pitch features."""


def agent_context_is_question(context: str) -> bool:
    """True when the agent's sentence under way (or just finished) is a question."""
    return final_mark(context.rstrip()) == "?"


AFTER_QUESTION_S: Final = 1.5
"""How long after the end of the agent's question a sound counts as following it; the
training script keeps backchannels out of the same span (its ``ANSWER_ZONE_AFTER_S``)."""


def after_question(after_question_s: float | None) -> float:
    """1 for a sound that began over the agent's question's last word or at its end,
    falling to 0 at :data:`AFTER_QUESTION_S` after it; 0 when the agent's latest sentence
    was no question, or the sound began inside it. A short "yeah" there answers."""
    if after_question_s is None:
        return 0.0
    return float(np.clip(1.0 - after_question_s / AFTER_QUESTION_S, 0.0, 1.0))


def _find(words: tuple[str, ...], phrases: Sequence[str]) -> bool:
    text = " " + " ".join(words) + " "
    return any(f" {p} " in text for p in phrases)


def _slope(t: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> float:
    if t.size < 3:
        return 0.0
    tc = t - t.mean()
    denom = float(np.sum(tc * tc))
    return float(np.sum(tc * (y - y.mean())) / denom) if denom > 1e-9 else 0.0


def frames_until(overlap: Overlap, now: float) -> list[FrameInfo]:
    return [f for f in overlap.frames if f.at <= now + 1e-9]


def _reading_features(overlap: Overlap) -> list[float]:
    """What a second opinion read (Whisper, when the session has one): the latest reading
    of the sound so far a command or a backchannel heard outright, how many readings were
    commands and how many backchannels heard outright, the final reading's answer, and
    whether any reading named an interrupt phrase ("stop", "hold on").

    Anything but a backchannel counts as a command, and in the training data Whisper's
    readings of the sound so far named an interrupt phrase in a third of the barge-ins,
    in 4 of 200 backchannels and in none of the echoes. Its final readings, of the whole
    sound, did in a third of the echoes too (the canceller's residue read as "no" or
    "shut up"), which the other inputs must tell apart."""
    readings = [normalize_words(r) for r in overlap.early_readings]
    commands = [bool(r) and not only_backchannel(r, BACKCHANNEL_PHRASES) for r in readings]
    latest = readings[-1] if readings else ()
    chosen_at = overlap.early_chosen
    chosen = bool(chosen_at) and chosen_at[-1]
    backchannels = [  # heard outright, not chosen as the nearest phrase
        bool(r) and not command and not (i < len(chosen_at) and chosen_at[i])
        for i, (r, command) in enumerate(zip(readings, commands, strict=True))
    ]
    final = normalize_words(overlap.second_opinion or ())
    final_backchannel = bool(final) and only_backchannel(final, BACKCHANNEL_PHRASES)
    return [
        float(bool(commands) and commands[-1]),
        float(bool(latest) and not commands[-1] and not chosen),
        min(sum(commands), 3) / 3.0,
        float(bool(final) and not final_backchannel),
        float(final_backchannel),
        float(overlap.second_opinion_too_close),
        float(any(_find(r, INTERRUPT_PHRASES) for r in readings)),
        float(_find(final, INTERRUPT_PHRASES)),
        min(sum(backchannels), 3) / 3.0,
    ]


def overlap_features(overlap: Overlap, now: float) -> Vector | None:
    """The model's input (:data:`FEATURE_NAMES`) at ``now``; None without audio frames."""
    frames = frames_until(overlap, now)
    if not frames:
        return None
    feats = np.stack([f.features for f in frames]).astype(np.float64)
    at = np.array([f.at for f in frames])
    prob = np.array([f.probability for f in frames])
    level = feats[:, _F["level_db"]]
    level_max = float(level.max())
    active = level >= level_max - 25.0
    act = feats[active]
    voicing = feats[:, _F["voicing"]]
    voiced = (voicing >= _VOICED) & active
    f0 = feats[voiced, _F["log2_f0"]]
    t = max(0.0, now - overlap.onset_at)
    ended = not overlap.speech_active and overlap.speech_ended_at is not None
    since_end = now - overlap.speech_ended_at if ended and overlap.speech_ended_at else 0.0
    since_voiced = min(1.0, max(0.0, now - overlap.last_voiced_at))

    partials = overlap.partials
    latest = normalize_words(overlap.latest_words)
    interrupt = _find(latest, INTERRUPT_PHRASES)
    stable = (
        len(partials) >= 2
        and _find(normalize_words(partials[-1][1]), INTERRUPT_PHRASES)
        and _find(normalize_words(partials[-2][1]), INTERRUPT_PHRASES)
    )
    any_interrupt = any(_find(normalize_words(w), INTERRUPT_PHRASES) for _, w in partials)
    backchannel = bool(latest) and only_backchannel(latest, BACKCHANNEL_PHRASES)
    other = sum(1 for w in latest if not only_backchannel((w,), BACKCHANNEL_PHRASES))

    def mean(col: str, rows: npt.NDArray[np.float64] = act) -> float:
        return float(rows[:, _F[col]].mean()) if rows.size else 0.0

    values = [
        min(t, 2.0),
        float(ended),
        min(since_end, 1.0),
        since_voiced,
        min(len(frames), 60) / 30.0,
        float(prob.mean()),
        float(prob.max()),
        float(prob[-1]),
        float(prob[-3:].mean()),
        float(np.mean(prob >= 0.5)),
        level_max / 10.0,
        float(level.mean()) / 10.0,
        float(level[-1]) / 10.0,
        (float(level[-1]) - level_max) / 10.0,
        float(level.std()) / 10.0,
        float(np.clip(_slope(at, level), -300.0, 300.0)) / 100.0,
        float(level[0]) / 10.0,
        (level_max - float(level.min())) / 10.0,
        (float(feats[:, _F["peak_db"]].max()) - level_max) / 10.0,
        float(voicing[active].mean()),
        float(voicing.max()),
        float(np.mean(voiced)),
        float(f0.mean()) - 7.0 if f0.size else 0.0,
        float(f0.std()) if f0.size else 0.0,
        float(np.clip(_slope(at[voiced], f0), -20.0, 20.0)) / 10.0 if f0.size else 0.0,
        mean("centroid"),
        float(act[:, _F["centroid"]].std()) if act.size else 0.0,
        mean("flatness_db") / 10.0,
        float(act[:, _F["flatness_db"]].min()) / 10.0 if act.size else 0.0,
        mean("zcr"),
        mean("high_db") / 10.0,
        *(mean(f"band{i}_db") / 10.0 for i in range(len(BAND_EDGES_HZ) - 1)),
        min(len(partials), 10) / 10.0,
        min(len(latest), 6) / 6.0,
        float(interrupt),
        float(stable),
        float(any_interrupt),
        float(backchannel),
        min(other, 4) / 4.0,
        float(overlap.final_words is not None),
        float(agent_context_is_question(overlap.agent_context)),
        after_question(overlap.after_question_s),
        float(overlap.agent_audible),
        *_reading_features(overlap),
    ]
    vector = np.asarray(values, dtype=np.float32)
    return np.nan_to_num(vector, nan=0.0, posinf=0.0, neginf=0.0)


# ---------------------------------------------------------------------------------------
# Input the model was not trained for
# ---------------------------------------------------------------------------------------


def check_input(frames: Sequence[FrameInfo], *, narrowband: bool = False) -> str | None:
    """Why these frames are no input for the model, or None if they are.

    Silence (the VAD fired on digital silence), clipping, a DC offset and gaps between
    frames (dropped audio) all make the features mean something else than in training.
    ``narrowband`` also refuses audio with no energy above 4 kHz (an 8 kHz microphone).
    """
    if not frames:
        return "no audio features"
    feats = np.stack([f.features for f in frames])
    level = feats[:, _F["level_db"]]
    if float(level.max()) < -75.0:
        return "silent input"
    gaps = np.diff([f.at for f in frames])
    if gaps.size and float(gaps.max()) > 0.15:
        return f"gap of {float(gaps.max()) * 1000:.0f} ms in the audio"
    active = level >= float(level.max()) - 25.0
    if float(feats[active, _F["clipped"]].mean()) > 0.02:
        return "clipped input"
    if abs(float(feats[:, _F["dc"]].mean())) > 0.03:
        return "DC offset"
    if narrowband and float(feats[active, _F["high_db"]].max()) < -45.0:
        return "narrowband (8 kHz) input"
    return None


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


class ModelError(RuntimeError):
    """The model file is missing, unreadable, or was trained on other features."""


def default_model_path() -> Path:
    return Path(str(resources.files("bargein") / "models" / "tier2.npz"))


@dataclass(frozen=True)
class Tier2Model:
    """A multilayer perceptron (ReLU hidden layers, softmax out) in numpy arrays."""

    mean: Vector
    scale: Vector
    layers: tuple[tuple[Vector, Vector], ...]
    commit_threshold: float = 0.8
    resume_threshold: float = 0.8
    meta: dict[str, str] = field(default_factory=dict)

    def predict(self, x: Vector) -> Vector:
        """Class probabilities (:data:`CLASSES` order) for one feature vector."""
        h = (np.asarray(x, dtype=np.float32) - self.mean) / self.scale
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        h = h - h.max()
        e = np.exp(h)
        return np.asarray(e / e.sum(), dtype=np.float32)

    def save(self, path: Path) -> None:
        arrays: dict[str, npt.NDArray[np.generic]] = {
            "mean": self.mean,
            "scale": self.scale,
            "feature_names": np.array(FEATURE_NAMES),
            "frame_feature_names": np.array(FRAME_FEATURE_NAMES),
            "classes": np.array(CLASSES),
            "thresholds": np.array([self.commit_threshold, self.resume_threshold], np.float32),
            "meta_keys": np.array(sorted(self.meta), dtype=str),
            "meta_values": np.array([self.meta[k] for k in sorted(self.meta)], dtype=str),
        }
        for i, (w, b) in enumerate(self.layers):
            arrays[f"w{i}"] = w
            arrays[f"b{i}"] = b
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            np.savez_compressed(out, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path | str | None = None) -> Tier2Model:
        path = Path(path) if path is not None else default_model_path()
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read tier-2 model {path}: {exc}") from exc
        names = tuple(str(n) for n in arrays.get("feature_names", ()))
        frame_names = tuple(str(n) for n in arrays.get("frame_feature_names", ()))
        if names != FEATURE_NAMES or frame_names != FRAME_FEATURE_NAMES:
            raise ModelError(f"{path} was trained on other features; retrain it")
        if tuple(str(c) for c in arrays["classes"]) != CLASSES:
            raise ModelError(f"{path} predicts other classes than {CLASSES}")
        layers = []
        i = 0
        while f"w{i}" in arrays:
            layers.append((arrays[f"w{i}"].astype(np.float32), arrays[f"b{i}"].astype(np.float32)))
            i += 1
        commit, resume = (float(v) for v in arrays["thresholds"])
        meta = {
            str(k): str(v) for k, v in zip(arrays["meta_keys"], arrays["meta_values"], strict=True)
        }
        return cls(
            mean=arrays["mean"].astype(np.float32),
            scale=arrays["scale"].astype(np.float32),
            layers=tuple(layers),
            commit_threshold=commit,
            resume_threshold=resume,
            meta=meta,
        )


@cache
def _shipped_model() -> Tier2Model:
    return Tier2Model.load()


# ---------------------------------------------------------------------------------------
# The decider
# ---------------------------------------------------------------------------------------


@dataclass
class ModelDecider:
    """Tier 2 by the trained model, re-asked on every frame until it is sure.

    - commits once P(floor bid) reaches ``commit_threshold``;
    - resumes once P(backchannel) + P(noise) + P(echo) reaches ``resume_threshold``;
    - never resumes while a voice is still going (:func:`may_resume`);
    - at ``max_wait_s`` after the onset it takes the likelier side, and commits if a
      voice is still going;
    - like the rule, resumes at once when the sound ended without one voiced frame;
    - like the rule, holds a decision while a reading of the sound is under way
      (:attr:`Overlap.reading_since`), up to ``reading_wait_s`` after it began while the
      sound goes on and ``final_reading_wait_s`` once it has ended. On the real clock a
      reading takes 0.1-0.5 s, and the model learnt from the moments after such a wait
      (the training data's readings are as late); deciding meanwhile, weights trained
      on readings that came back at once took "mm-hmm" and "makes sense" for bids before
      their first reading was in;
    - hands the overlap to ``fallback`` (the rule) when the model is unavailable or the
      input is unlike its training data; the reason then starts with
      ``model unavailable:`` or ``fallback:``.

    Thresholds default to the ones calibrated on held-out data and stored with the
    weights. ``min_s`` is the least sound the model judges: the first frames say little.
    """

    model: Tier2Model | None = None
    model_path: Path | str | None = None
    commit_threshold: float | None = None
    resume_threshold: float | None = None
    min_s: float = MIN_DECISION_S
    max_wait_s: float = MAX_WAIT_S
    audio_wait_s: float = 0.1
    """How long to wait for the first audio frame before deciding without the model."""
    reading_wait_s: float = RuleDecider.reading_wait_s
    final_reading_wait_s: float = RuleDecider.final_reading_wait_s
    narrowband_fallback: bool = False
    fallback: RuleDecider = field(default_factory=RuleDecider)
    last_probabilities: Vector | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._error: str | None = None
        if self.model is None:
            try:
                self.model = (
                    Tier2Model.load(self.model_path)
                    if self.model_path is not None
                    else _shipped_model()
                )
            except ModelError as exc:
                self._error = str(exc)
        if self.model is not None:
            if self.commit_threshold is None:
                self.commit_threshold = self.model.commit_threshold
            if self.resume_threshold is None:
                self.resume_threshold = self.model.resume_threshold

    @property
    def available(self) -> bool:
        return self.model is not None

    def _why_not(self, overlap: Overlap, now: float) -> tuple[str, str] | None:
        """(prefix, reason) when the rule must decide instead of the model."""
        if self.model is None:
            return "model unavailable", self._error or "no model"
        frames = frames_until(overlap, now)
        if not frames and now < overlap.onset_at + self.audio_wait_s:
            return None
        problem = check_input(frames, narrowband=self.narrowband_fallback)
        if problem is not None:
            return ("model unavailable" if not frames else "fallback"), problem
        return None

    def decide(self, overlap: Overlap, now: float) -> Decision | None:
        why = self._why_not(overlap, now)
        if why is not None:
            decision = self.fallback.decide(overlap, now)
            if decision is None:
                return None
            return Decision(decision.kind, f"{why[0]}: {why[1]}; {decision.reason}")
        if not overlap.speech_active and overlap.last_voiced_at == float("-inf"):
            # The segmenter withdrew a start the VAD never confirmed: not a voice.
            return Decision("resume", "no-voice")
        if now < overlap.onset_at + self.min_s:
            return None
        x = overlap_features(overlap, now)
        if x is None:
            return None
        assert self.model is not None
        p = self.model.predict(x)
        self.last_probabilities = p
        decision = self._judged(x, p, overlap, now)
        waited = self._reading_due(overlap)
        if decision is not None and waited is not None and now < waited:
            return None  # the reading under way is part of what the model judges
        return decision

    def _judged(self, x: Vector, p: Vector, overlap: Overlap, now: float) -> Decision | None:
        assert self.commit_threshold is not None and self.resume_threshold is not None
        floor = float(p[0])
        other = 1 + int(np.argmax(p[1:]))
        if floor >= self.commit_threshold:
            return Decision("commit", f"model:floor {floor:.2f}")
        resumable = may_resume(x)
        if 1.0 - floor >= self.resume_threshold and resumable:
            return Decision("resume", f"model:{CLASSES[other]} {1.0 - floor:.2f}")
        if now >= overlap.onset_at + self.max_wait_s:
            if floor >= 0.5 or not resumable:
                return Decision("commit", f"model:floor {floor:.2f} at deadline")
            return Decision("resume", f"model:{CLASSES[other]} {1.0 - floor:.2f} at deadline")
        return None

    def _reading_due(self, overlap: Overlap) -> float | None:
        return reading_due(overlap, self.reading_wait_s, self.final_reading_wait_s)

    def deadline(self, overlap: Overlap, now: float) -> float | None:
        if self.model is None:
            return self.fallback.deadline(overlap, now)
        frames = frames_until(overlap, now)
        if not frames:
            due = overlap.onset_at + self.audio_wait_s
            if now < due:
                return due
            return self.fallback.deadline(overlap, now)
        if check_input(frames, narrowband=self.narrowband_fallback) is not None:
            return self.fallback.deadline(overlap, now)
        # Every new frame re-asks; the deadline only matters if the frames stop coming.
        dues = [overlap.onset_at + self.min_s, overlap.onset_at + self.max_wait_s]
        waited = self._reading_due(overlap)
        if waited is not None:
            dues.append(waited)
        return min((due for due in dues if now < due), default=None)


DeciderKind = Literal["model", "rule", "duration", "vad"]
DECIDER_KINDS: Final[tuple[DeciderKind, ...]] = ("model", "rule", "duration", "vad")


def make_decider(kind: DeciderKind = "model") -> Decider:
    """A fresh tier-2 decider by name: the trained ``model`` or the ``rule``; ``duration``
    and ``vad`` are the ablation baselines (:class:`DurationDecider`, :class:`VoiceOnlyDecider`)."""
    if kind == "rule":
        return RuleDecider()
    if kind == "model":
        return ModelDecider()
    if kind == "duration":
        return DurationDecider()
    if kind == "vad":
        return VoiceOnlyDecider()
    raise ValueError(f"unknown decider {kind!r}; choose one of {', '.join(DECIDER_KINDS)}")
