"""Semantic end of turn: the detectors, the policy's silence rule, the session's plumbing."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from bargein.audio import write_wav
from bargein.clock import run
from bargein.policy import (
    Floor,
    FloorPolicy,
    PolicyConfig,
    ReleaseOutput,
    SpeechEnded,
    SpeechStarted,
    StartReply,
    Tick,
    TurnEndProbability,
    Words,
)
from bargein.providers.base import FloatAudio
from bargein.providers.scripted import ScriptedLLM
from bargein.session import Session, SessionConfig
from bargein.turn_end import (
    DEFAULT_WEIGHTS,
    LlamaTurnEndDetector,
    SilenceRule,
    TurnEndDetector,
    WordTurnEndDetector,
)
from bargein.turn_set import (
    TURN_SET_VERSION,
    TurnBench,
    configs_for,
    run_turn_set,
    summarize_turns,
)

from .doubles import LevelVAD, LoggingSpeaker, ScriptedRecognizer, Utterance, WordTTS, drive

COMPLETE = (
    "what time does my flight leave",
    "can you book a table for two tonight",
    "thank you that is all",
)
INCOMPLETE = ("i want to fly to", "my account number is", "i need to change the")


def test_the_shipped_model_is_small_and_made_by_the_script() -> None:
    assert DEFAULT_WEIGHTS.stat().st_size < 5_000_000
    document = json.loads(DEFAULT_WEIGHTS.read_text())
    assert "scripts/train_turn_end.py" in document["about"]


def test_the_word_model_ranks_finished_thoughts_above_unfinished_ones() -> None:
    detector = WordTurnEndDetector()
    assert isinstance(detector, TurnEndDetector)
    complete = [detector.probability_complete(s.split()) for s in COMPLETE]
    incomplete = [detector.probability_complete(s.split()) for s in INCOMPLETE]
    assert min(complete) > max(incomplete)
    assert all(0.0 <= p <= 1.0 for p in complete + incomplete)


@pytest.fixture(scope="module")
def llm_detector() -> Iterator[LlamaTurnEndDetector]:
    yield LlamaTurnEndDetector()


def test_the_llm_ranks_finished_thoughts_above_unfinished_ones(
    llm_detector: LlamaTurnEndDetector,
) -> None:
    complete = [llm_detector.probability_complete(s.split()) for s in COMPLETE[:2]]
    incomplete = [llm_detector.probability_complete(s.split()) for s in INCOMPLETE[:2]]
    assert min(complete) > max(incomplete)


def test_the_rule_maps_confidence_to_silence() -> None:
    rule = SilenceRule()
    assert rule.silence(0.95, 0.5) == rule.complete_silence_s < 0.5
    assert rule.silence(0.05, 0.5) == rule.incomplete_silence_s > 1.0
    assert rule.silence((rule.complete_above + rule.incomplete_below) / 2, 0.5) == 0.5
    assert rule.silence(float("nan"), 0.5) == 0.5


# -- the policy, on explicit time ----------------------------------------------------------


def paused_policy(preemptive: bool = False, turn_end: str = "semantic") -> FloorPolicy:
    """The user said "i want to fly to" from t=0 to t=1 (speech end reported at 1.0)."""
    policy = FloorPolicy(PolicyConfig(preemptive=preemptive, turn_end=turn_end))  # type: ignore[arg-type]
    policy.handle(SpeechStarted(0.0))
    policy.handle(Words(0.5, ("i", "want")))
    policy.handle(SpeechEnded(1.0))
    policy.handle(Words(1.0, ("i", "want", "to", "fly", "to"), final=True))
    return policy


def turn_end_time(policy: FloorPolicy, until: float = 10.0) -> float | None:
    """Tick at every deadline; when did the agent take the floor?"""
    while (deadline := policy.next_deadline()) is not None and deadline <= until:
        for action in policy.handle(Tick(deadline)):
            if isinstance(action, ReleaseOutput) or (
                isinstance(action, StartReply) and not action.preemptive
            ):
                return deadline
    return None


def test_the_policy_waits_longer_after_an_unfinished_turn_and_less_after_a_finished_one() -> None:
    fixed = paused_policy()
    assert turn_end_time(fixed) == pytest.approx(1.5)  # no probability: the fixed silence

    unfinished = paused_policy()
    assert unfinished.handle(TurnEndProbability(1.05, 1, 0.1)) == []
    assert turn_end_time(unfinished) == pytest.approx(1.0 + SilenceRule().incomplete_silence_s)

    finished = paused_policy()
    [start] = finished.handle(TurnEndProbability(1.05, 1, 0.9))
    assert isinstance(start, StartReply) and not start.preemptive  # at once
    assert start.user_words == ("i", "want", "to", "fly", "to")


def test_a_preemptive_reply_is_released_as_soon_as_the_turn_sounds_finished() -> None:
    policy = paused_policy(preemptive=True)
    assert policy.state is Floor.PREPARING
    assert policy.handle(TurnEndProbability(1.02, 1, 0.9)) == [ReleaseOutput(1)]


def test_a_late_or_stale_probability_falls_back_to_the_fixed_silence() -> None:
    late = paused_policy()
    assert turn_end_time(late) == pytest.approx(1.5)
    assert late.handle(TurnEndProbability(1.6, 1, 0.05)) == []  # the turn already ended

    stale = paused_policy()
    stale.handle(SpeechStarted(1.2))  # the user went on
    assert stale.handle(TurnEndProbability(1.3, 1, 0.99)) == []
    stale.handle(SpeechEnded(2.0))
    stale.handle(Words(2.0, ("boston",), final=True))
    assert turn_end_time(stale) == pytest.approx(2.5)

    fixed = paused_policy(turn_end="fixed")
    fixed.handle(TurnEndProbability(1.05, 1, 0.99))
    assert turn_end_time(fixed) == pytest.approx(1.5)


# -- the session, on the virtual clock -----------------------------------------------------


class Constant:
    def __init__(self, probability: float) -> None:
        self.probability = probability
        self.seen: list[tuple[str, ...]] = []

    def probability_complete(self, words: Sequence[str], context: str = "") -> float:
        self.seen.append(tuple(words))
        return self.probability


class Broken:
    def probability_complete(self, words: Sequence[str], context: str = "") -> float:
        raise RuntimeError("no model")


FLY: Utterance = ([(0.8, ("i", "want"))], ("i", "want", "to", "fly", "to"))


def first_sound(detector: TurnEndDetector | None) -> tuple[float, Session]:
    speaker = LoggingSpeaker([])
    session = Session(
        vad=LevelVAD(),
        recognizer=ScriptedRecognizer([FLY]),
        llm=ScriptedLLM(["Where to?"]),
        tts=WordTTS(),
        sink=speaker,
        config=SessionConfig(policy=PolicyConfig(turn_end="semantic")),
        turn_end=detector,
    )

    async def main() -> None:
        async with session:
            await drive(session, speaker, [(0.5, 1.2)], until=4.5, request=False)

    run(main(), "virtual")
    return speaker.first_sound_at[1], session


def test_the_session_feeds_the_detector_the_recogniser_words() -> None:
    fixed, _ = first_sound(Broken())
    finished_detector = Constant(0.95)
    finished, session = first_sound(finished_detector)
    unfinished, _ = first_sound(Constant(0.05))
    assert finished_detector.seen == [("i", "want", "to", "fly", "to")]
    assert session.conversation.messages[0].content == "i want to fly to"
    assert finished < fixed - 0.3
    assert unfinished > fixed + 0.8


def test_a_failing_detector_costs_nothing_but_the_shortcut() -> None:
    broken, session = first_sound(Broken())
    assert session.errors == ["turn-end detector: RuntimeError: no model"]
    speech_end = 1.2 + 0.25  # the segmenter's own quiet, then the fixed silence
    assert broken == pytest.approx(speech_end + 0.5, abs=0.1)


def test_the_default_session_uses_the_word_model_and_fixed_turns_use_none() -> None:
    session = Session(
        vad=LevelVAD(),
        recognizer=ScriptedRecognizer([FLY]),
        llm=ScriptedLLM(["ok"]),
        tts=WordTTS(),
        sink=LoggingSpeaker([]),
    )
    assert isinstance(session.turn_end, WordTurnEndDetector)
    fixed = Session(
        vad=LevelVAD(),
        recognizer=ScriptedRecognizer([FLY]),
        llm=ScriptedLLM(["ok"]),
        tts=WordTTS(),
        sink=LoggingSpeaker([]),
        config=SessionConfig(policy=PolicyConfig(turn_end="fixed")),
    )
    assert fixed.turn_end is None


def test_the_turn_bench_summary_counts_gaps_and_cut_offs() -> None:
    rows: list[dict[str, object]] = [
        {"kind": "complete", "gap_ms": 300.0, "cut_off": False, "turn_end_s": 1.0},
        {"kind": "complete", "gap_ms": 500.0, "cut_off": False, "turn_end_s": 1.0},
        {"kind": "incomplete", "gap_ms": None, "cut_off": True, "turn_end_s": 1.0},
        {"kind": "incomplete", "gap_ms": 900.0, "cut_off": False, "turn_end_s": 2.0},
    ]
    summary = summarize_turns(rows)
    assert summary["complete_gap_median_ms"] == 400.0
    assert summary["cut_offs"] == 1 and summary["incomplete_turns"] == 2
    labels = [c.label for c in configs_for(["fixed", "semantic"])]
    assert labels == ["fixed 800 ms", "fixed 500 ms", "semantic"]


class _ForgetfulRecognizer:
    """Counts its words so far across calls; ``reset`` is a new call's decoder."""

    sample_rate = 16000

    def __init__(self) -> None:
        self.heard = 0
        self.resets = 0

    def reset(self) -> None:
        self.heard = 0
        self.resets += 1

    def start(self) -> None:
        pass

    def feed(self, audio: FloatAudio) -> Sequence[str]:
        return ()

    def finish(self) -> Sequence[str]:
        self.heard += 1
        return ("hello",) * self.heard


def test_the_turn_bench_decodes_every_turn_with_a_reset_recogniser(tmp_path: Path) -> None:
    turns = []
    for name in ("first", "second"):
        audio = np.zeros(16000 * 2, dtype=np.float32)
        audio[6400:14400] = 0.3  # 0.4 s to 0.9 s: one utterance
        write_wav(tmp_path / f"{name}.wav", audio, 16000)
        turns.append(
            {"name": name, "kind": "complete", "text": ["hello"], "voice": "test",
             "audio": f"{name}.wav", "spans_s": [[0.4, 0.9]], "speech_end_s": 0.9}
        )  # fmt: skip
    (tmp_path / "turns.json").write_text(json.dumps({"format": TURN_SET_VERSION, "turns": turns}))
    recognizer = _ForgetfulRecognizer()
    bench = TurnBench(LevelVAD(), recognizer)
    configs = configs_for(["fixed"], [0.8, 0.5])
    out = run_turn_set(tmp_path, configs, bench=bench, progress=False)
    # Decoded once per turn (the second configuration replays), each time from scratch:
    # without the reset the second turn would hear "hello hello".
    assert recognizer.resets == 2
    for config in configs:
        words = [row["words"] for row in out["configs"][config.label]["turns"]]
        assert words == ["hello", "hello"]
