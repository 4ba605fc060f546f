"""The trained tier-2 decider: features, the shipped model, decisions, fallbacks, timing."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from bargein.decider import FrameInfo, Overlap, RuleDecider
from bargein.policy import (
    FloorPolicy,
    PauseOutput,
    Playout,
    RequestReply,
    SpeechEnded,
    SpeechStarted,
    Tick,
    VoiceActivity,
    Words,
)
from bargein.providers.base import FloatAudio
from bargein.tier2 import (
    CLASSES,
    FEATURE_NAMES,
    FRAME_FEATURE_NAMES,
    DeciderKind,
    ModelDecider,
    Tier2Model,
    after_question,
    agent_context_is_question,
    default_model_path,
    frame_features,
    overlap_features,
)

RATE = 16000
FRAME = 512
ONSET = 10.0


def _speechlike(seconds: float, level: float = 0.2, seed: int = 0) -> FloatAudio:
    """A voiced, pitch-gliding, syllable-modulated harmonic signal: crude but speech-shaped."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 140.0 + 40.0 * np.sin(2 * np.pi * 0.8 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t) ** 2
    audio = np.asarray(voice) * syllables + 0.02 * rng.standard_normal(t.size)
    audio *= level / float(np.sqrt(np.mean(audio**2)))
    return audio.astype(np.float32)


def _click(level: float = 0.5, frames: int = 16) -> FloatAudio:
    """A sharp noise burst and its decay over a quiet room's hiss."""
    rng = np.random.default_rng(3)
    n = frames * FRAME
    t = np.arange(n) / RATE
    burst = level * rng.standard_normal(n) * np.exp(-t / 0.004)
    return (burst + 3e-4 * rng.standard_normal(n)).astype(np.float32)


def _frames(
    audio: FloatAudio, probabilities: Sequence[float], start: float = ONSET
) -> list[FrameInfo]:
    out = []
    for i, p in enumerate(probabilities):
        frame = audio[i * FRAME : (i + 1) * FRAME]
        if frame.size < FRAME:
            frame = np.pad(frame, (0, FRAME - frame.size))
        out.append(FrameInfo(start + (i + 1) * FRAME / RATE, p, frame_features(frame)))
    return out


def _overlap(frames: list[FrameInfo], **kw: object) -> Overlap:
    overlap = Overlap(onset_at=ONSET, agent_audible=True, frames=frames)
    for key, value in kw.items():
        setattr(overlap, key, value)
    return overlap


def _first_decision(
    decider: ModelDecider, overlap: Overlap, until: float
) -> tuple[str, str, float] | None:
    """Ask at every frame, as the policy does; the first answer and when."""
    for frame in overlap.frames:
        if frame.at > until:
            break
        verdict = decider.decide(overlap, frame.at)
        if verdict is not None:
            return verdict.kind, verdict.reason, frame.at - ONSET
    return None


# -- features ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros(FRAME, np.float32),
        _speechlike(0.032),
        _click(frames=1),
        np.ones(FRAME, np.float32),
        np.full(FRAME, 1e-7, np.float32),
        np.random.default_rng(1).uniform(-1, 1, FRAME).astype(np.float32),
    ],
)
def test_frame_features_are_finite_and_deterministic(frame: FloatAudio) -> None:
    a, b = frame_features(frame), frame_features(frame.copy())
    assert a.shape == (len(FRAME_FEATURE_NAMES),) and a.dtype == np.float32
    assert np.isfinite(a).all()
    assert np.array_equal(a, b)


def test_voiced_frames_show_their_pitch() -> None:
    x = frame_features(_speechlike(0.032, seed=2))
    voicing = x[FRAME_FEATURE_NAMES.index("voicing")]
    f0 = 2 ** x[FRAME_FEATURE_NAMES.index("log2_f0")]
    assert voicing > 0.6 and 100 < f0 < 200


def test_overlap_features_are_finite_and_deterministic() -> None:
    audio = _speechlike(0.5)
    overlap = _overlap(_frames(audio, [0.9] * 16), partials=[(ONSET + 0.2, ("stop",))])
    a = overlap_features(overlap, ONSET + 0.3)
    b = overlap_features(overlap, ONSET + 0.3)
    assert a is not None and b is not None
    assert a.shape == (len(FEATURE_NAMES),) and np.isfinite(a).all()
    assert np.array_equal(a, b)
    # Only frames up to "now" count.
    later = overlap_features(overlap, ONSET + 0.5)
    assert later is not None and not np.array_equal(a, later)
    assert overlap_features(Overlap(onset_at=ONSET, agent_audible=True), ONSET + 0.3) is None


def test_the_question_context() -> None:
    assert agent_context_is_question("Would you like the window seat?")
    assert agent_context_is_question('He asked "really?"')
    assert not agent_context_is_question("Your seat is booked.")
    assert not agent_context_is_question("")


def test_after_question_falls_from_the_question_end_to_zero() -> None:
    assert after_question(None) == 0.0  # no question, or a sound inside it
    assert after_question(-0.2) == 1.0  # over the question's last word
    assert after_question(0.0) == 1.0
    assert after_question(0.75) == pytest.approx(0.5)
    assert after_question(1.5) == 0.0
    assert after_question(4.0) == 0.0


def test_overlap_features_carry_the_time_after_a_question() -> None:
    frames = _frames(_speechlike(0.3), [0.9] * 9)
    column = FEATURE_NAMES.index("after_question")
    values = []
    for after in (None, 2.0, 0.3):
        vector = overlap_features(_overlap(frames, after_question_s=after), ONSET + 0.3)
        assert vector is not None
        values.append(float(vector[column]))
    assert values == [0.0, 0.0, pytest.approx(0.8)]


def _reading_columns(overlap: Overlap) -> dict[str, float]:
    vector = overlap_features(overlap, ONSET + 0.3)
    assert vector is not None
    names = [n for n in FEATURE_NAMES if "reading" in n]
    return {n: float(vector[FEATURE_NAMES.index(n)]) for n in names}


def test_overlap_features_carry_the_second_opinions_readings() -> None:
    frames = _frames(_speechlike(0.3), [0.9] * 9)
    nothing = _reading_columns(_overlap(frames))
    assert set(nothing.values()) == {0.0}
    heard = _reading_columns(
        _overlap(
            frames,
            early_readings=[("stop",), ("okay",), ("wait",)],
            early_chosen=[False, False, False],
            second_opinion=("okay",),
        )
    )
    assert heard["reading_command"] == 1.0 and heard["reading_backchannel"] == 0.0
    assert heard["readings_commands"] == pytest.approx(2 / 3)
    assert heard["final_reading_backchannel"] == 1.0 and heard["final_reading_command"] == 0.0
    outright = _reading_columns(_overlap(frames, early_readings=[("okay",)], early_chosen=[False]))
    assert outright["reading_backchannel"] == 1.0 and outright["reading_command"] == 0.0
    # A backchannel the reader only chose as the nearest of its phrases is no evidence.
    chosen = _reading_columns(_overlap(frames, early_readings=[("okay",)], early_chosen=[True]))
    assert chosen["reading_backchannel"] == 0.0 and chosen["readings_backchannels"] == 0.0
    # How many readings heard a backchannel outright: "okay", "okay", "okay" is more
    # than one.
    assert heard["readings_backchannels"] == pytest.approx(1 / 3)
    three = [("okay",), ("okay",), ("okay",), ("right",)]
    many = _reading_columns(_overlap(frames, early_readings=three, early_chosen=[False] * 4))
    assert many["readings_backchannels"] == 1.0
    tie = _reading_columns(_overlap(frames, second_opinion=(), second_opinion_too_close=True))
    assert tie["final_reading_tie"] == 1.0 and tie["final_reading_command"] == 0.0
    # An interrupt phrase in any reading, or in the final one; other words are commands
    # but name none (the agent's own words, read from an echo).
    assert heard["reading_interrupt"] == 1.0 and heard["final_reading_interrupt"] == 0.0
    echo = _reading_columns(
        _overlap(frames, early_readings=[("the", "pancakes")], second_opinion=("the", "milk"))
    )
    assert echo["reading_command"] == 1.0 and echo["final_reading_command"] == 1.0
    assert echo["reading_interrupt"] == 0.0 and echo["final_reading_interrupt"] == 0.0
    held = _reading_columns(_overlap(frames, second_opinion=("hold", "it")))
    assert held["final_reading_interrupt"] == 1.0


# -- the shipped model ------------------------------------------------------------------


def test_the_committed_model_loads_and_is_small() -> None:
    path = default_model_path()
    assert path.is_file()
    assert path.stat().st_size < 5 * 1024 * 1024
    model = Tier2Model.load(path)
    assert 0.5 <= model.commit_threshold < 1 and 0.5 <= model.resume_threshold < 1
    p = model.predict(np.zeros(len(FEATURE_NAMES), np.float32))
    assert p.shape == (len(CLASSES),) and abs(float(p.sum()) - 1) < 1e-5


def test_a_model_trained_on_other_features_is_refused(tmp_path: Path) -> None:
    model = Tier2Model.load()
    model.save(tmp_path / "ok.npz")
    assert Tier2Model.load(tmp_path / "ok.npz").layers[0][0].shape == model.layers[0][0].shape
    with np.load(tmp_path / "ok.npz") as data:
        arrays = dict(data)
    arrays["feature_names"] = np.array([*FEATURE_NAMES[:-1], "something_else"])
    np.savez(tmp_path / "other.npz", **arrays)
    decider = ModelDecider(model_path=tmp_path / "other.npz")
    assert not decider.available
    overlap = _overlap(_frames(_speechlike(0.3), [0.9] * 9), speech_active=False)
    overlap.speech_ended_at = ONSET + 0.3
    overlap.last_voiced_at = ONSET + 0.28
    overlap.final_words = ("uh", "huh")
    verdict = decider.decide(overlap, ONSET + 0.3)
    assert verdict is not None and verdict.kind == "resume"
    assert verdict.reason.startswith("model unavailable:")


# -- decisions on clear cases -----------------------------------------------------------


def test_long_loud_speech_with_an_interrupt_word_commits() -> None:
    audio = _speechlike(1.2, level=0.15)
    frames = _frames(audio, [0.95] * 37)
    overlap = _overlap(frames, last_voiced_at=frames[-1].at)
    overlap.partials = [
        (ONSET + 0.15, ("stop",)),
        (ONSET + 0.2, ("stop",)),
        (ONSET + 0.4, ("stop", "i", "need")),
    ]
    verdict = _first_decision(ModelDecider(), overlap, ONSET + 1.2)
    assert verdict is not None and verdict[0] == "commit", verdict


def test_a_short_uh_huh_resumes() -> None:
    audio = np.concatenate([_speechlike(0.3, level=0.1, seed=4), np.zeros(12 * FRAME, np.float32)])
    probabilities = [0.9] * 9 + [0.1] * 12
    frames = _frames(audio, probabilities)
    overlap = _overlap(frames, last_voiced_at=frames[8].at)
    overlap.partials = [(ONSET + 0.2, ("uh",)), (ONSET + 0.3, ("uh", "huh"))]
    decider = ModelDecider()
    ended = frames[16].at
    # While the sound lasts, a commit would be a false interruption.
    for frame in frames[:17]:
        verdict = decider.decide(overlap, frame.at)
        assert verdict is None or verdict.kind == "resume", verdict
    overlap.speech_active = False
    overlap.speech_ended_at = ended
    # The final words, and Whisper's final reading as the default session has it: on this
    # synthetic hum alone the model stays unsure until its deadline.
    overlap.final_words = overlap.second_opinion = ("uh", "huh")
    verdict = None
    for frame in frames[16:]:
        verdict = decider.decide(overlap, frame.at)
        if verdict is not None:
            break
    assert verdict is not None and verdict.kind == "resume", verdict


def test_a_reading_under_way_holds_the_models_decision() -> None:
    """The model learnt from readings that come back at once; on the real clock one takes
    0.2-0.5 s, and a decision meanwhile would see none. It waits, as the rule does, up to
    0.4 s while the sound goes on and 0.8 s once it has ended."""
    audio = _speechlike(1.2, level=0.15)
    frames = _frames(audio, [0.95] * 37)
    overlap = _overlap(frames, last_voiced_at=frames[-1].at)
    overlap.partials = [(ONSET + 0.15, ("stop",)), (ONSET + 0.4, ("stop", "i", "need"))]
    alone = _first_decision(ModelDecider(), overlap, ONSET + 1.2)
    assert alone is not None and alone[0] == "commit" and alone[2] < 0.3, alone
    overlap.reading_since = ONSET + 0.15
    decider = ModelDecider()
    assert decider.deadline(overlap, ONSET + 0.3) == pytest.approx(ONSET + 0.55)
    held = _first_decision(decider, overlap, ONSET + 1.2)
    assert held is not None and held[0] == "commit", held
    assert 0.55 <= held[2] < 0.55 + FRAME / RATE
    overlap.reading_since = None  # the reading came back
    verdict = decider.decide(overlap, ONSET + 0.3)
    assert verdict is not None and verdict.kind == "commit"
    # Once the sound has ended, its final reading gets longer.
    quiet = np.concatenate([_speechlike(0.3, level=0.1, seed=4), np.zeros(30 * FRAME, np.float32)])
    frames = _frames(quiet, [0.9] * 9 + [0.1] * 30)
    overlap = _overlap(frames, last_voiced_at=frames[8].at, final_words=("uh", "huh"))
    overlap.speech_active, overlap.speech_ended_at = False, frames[12].at
    overlap.reading_since = frames[12].at
    assert decider.decide(overlap, frames[12].at + 0.7) is None
    assert decider.decide(overlap, frames[12].at + 0.79) is None  # past its 1.2 s deadline
    assert decider.decide(overlap, frames[12].at + 0.8) is not None


def _short_yeah(after_question_s: float | None) -> tuple[str, str] | None:
    """A short voiced sound whose words are "yeah", asked at every frame until decided."""
    audio = np.concatenate([_speechlike(0.3, level=0.1, seed=4), np.zeros(12 * FRAME, np.float32)])
    frames = _frames(audio, [0.9] * 9 + [0.1] * 12)
    overlap = _overlap(
        frames,
        last_voiced_at=frames[8].at,
        agent_context="Do you want the summary first?",
        after_question_s=after_question_s,
    )
    overlap.partials = [(ONSET + 0.2, ("yeah",))]
    decider = ModelDecider()
    for i, frame in enumerate(frames):
        if i == 11:
            overlap.speech_active = False
            overlap.speech_ended_at = frame.at
            overlap.final_words = ("yeah",)
        verdict = decider.decide(overlap, frame.at)
        if verdict is not None:
            return verdict.kind, verdict.reason
    return None


def test_the_model_takes_a_yeah_just_after_a_question_for_an_answer() -> None:
    # Just after the agent's question a "yeah" answers it and takes the floor; the same
    # sound two seconds later, over the agent's next sentence, is a backchannel.
    answer, later = _short_yeah(0.2), _short_yeah(2.0)
    assert answer is not None and answer[0] == "commit", answer
    assert later is not None and later[0] == "resume", later


def test_a_click_resumes() -> None:
    frames = _frames(_click(), [0.05] * 16)
    overlap = _overlap(frames, speech_active=True)
    decider = ModelDecider()
    verdict = None
    for i, frame in enumerate(frames):
        if i == 8:  # the segmenter withdraws a start the VAD never confirmed
            overlap.speech_active = False
            overlap.speech_ended_at = frame.at
            overlap.final_words = ()
        verdict = decider.decide(overlap, frame.at)
        if verdict is not None:
            break
    assert verdict is not None and verdict.kind == "resume", verdict


# -- input the model was not trained for ------------------------------------------------


def _bad(audio: FloatAudio, probability: float = 0.9) -> Overlap:
    frames = _frames(audio, [probability] * (audio.size // FRAME))
    overlap = _overlap(frames, last_voiced_at=frames[-1].at)
    overlap.speech_active = False
    overlap.speech_ended_at = frames[-1].at
    overlap.final_words = ("hello", "there")
    return overlap


@pytest.mark.parametrize(
    ("audio", "why"),
    [
        (np.zeros(10 * FRAME, np.float32), "silent"),
        (np.sign(_speechlike(0.32)), "clipped"),
        (_speechlike(0.32) + 0.3, "DC offset"),
    ],
)
def test_bad_input_falls_back_to_the_rule_and_says_so(audio: FloatAudio, why: str) -> None:
    overlap = _bad(audio.astype(np.float32))
    now = overlap.frames[-1].at + 0.31
    verdict = ModelDecider().decide(overlap, now)
    expected = RuleDecider().decide(overlap, now)
    assert verdict is not None and expected is not None
    assert verdict.kind == expected.kind
    assert verdict.reason.startswith("fallback:") and why in verdict.reason
    assert verdict.reason.endswith(expected.reason)


def test_a_gap_in_the_audio_falls_back() -> None:
    frames = _frames(_speechlike(0.32), [0.9] * 10)
    late = [FrameInfo(f.at + 0.4, f.probability, f.features) for f in frames[5:]]
    overlap = _overlap(frames[:5] + late, last_voiced_at=late[-1].at)
    overlap.speech_active = False
    overlap.speech_ended_at = late[-1].at
    overlap.final_words = ("what", "about", "tuesday")
    verdict = ModelDecider().decide(overlap, late[-1].at)
    assert verdict is not None and verdict.kind == "commit"
    assert verdict.reason == "fallback: gap of 432 ms in the audio; words:what about tuesday"


def test_narrowband_input_can_be_refused() -> None:
    from scipy.signal import butter, sosfilt

    sos = butter(8, 3400 / 8000, output="sos")
    audio = np.asarray(sosfilt(sos, _speechlike(0.64)), dtype=np.float32)
    overlap = _bad(audio)
    now = overlap.frames[-1].at + 0.31
    verdict = ModelDecider(narrowband_fallback=True).decide(overlap, now)
    assert verdict is not None and "narrowband" in verdict.reason
    default = ModelDecider().decide(overlap, now)
    assert default is None or "narrowband" not in default.reason


def test_without_audio_features_the_rule_decides_after_a_short_wait() -> None:
    overlap = Overlap(onset_at=ONSET, agent_audible=True, last_voiced_at=ONSET)
    overlap.partials = [(ONSET + 0.05, ("stop",)), (ONSET + 0.08, ("stop",))]
    decider = ModelDecider()
    assert decider.decide(overlap, ONSET + 0.08) is None
    assert decider.deadline(overlap, ONSET + 0.08) == pytest.approx(ONSET + 0.1)
    verdict = decider.decide(overlap, ONSET + 0.1)
    assert verdict is not None and verdict.kind == "commit"
    assert verdict.reason == "model unavailable: no audio features; word:stop"


# -- speed ------------------------------------------------------------------------------


def test_a_decision_takes_well_under_the_budget() -> None:
    audio = _speechlike(1.0)
    frames = _frames(audio, [0.9] * 31)
    overlap = _overlap(frames, partials=[(ONSET + 0.3, ("what", "about"))])
    decider = ModelDecider(commit_threshold=1.1, resume_threshold=1.1, max_wait_s=9.0)
    now = frames[-1].at
    decider.decide(overlap, now)
    started = time.perf_counter()
    for _ in range(200):
        decider.decide(overlap, now)
    mean_ms = (time.perf_counter() - started) / 200 * 1000
    assert mean_ms < 20.0
    assert frame_features(audio[:FRAME]).size  # per-frame cost is measured in docs/tier2.md


# -- the policy with either decider -----------------------------------------------------


def _policy_run(
    decider: RuleDecider | ModelDecider, audio: FloatAudio, voiced: bool
) -> FloorPolicy:
    """Drive a policy by hand, frame by frame, on a virtual timeline."""
    policy = FloorPolicy(decider=decider)
    policy.handle(RequestReply(0.0))
    policy.handle(Playout(0.2, 1, 3200))
    t = 1.0
    started = False
    quiet_since: float | None = None
    for i in range(audio.size // FRAME):
        frame = audio[i * FRAME : (i + 1) * FRAME]
        t = round(t + FRAME / RATE, 6)
        loud = float(np.sqrt(np.mean(frame**2))) > 0.01
        p = 0.95 if (loud and voiced) else 0.05
        if loud and not started and policy.reply_id is not None:
            started = True
            actions = policy.handle(SpeechStarted(t, voiced=voiced, context="All booked."))
            assert isinstance(actions[0], PauseOutput)
        policy.handle(VoiceActivity(t, p, frame_features(frame)))
        if started and policy.user_speaking:
            if not loud:
                quiet_since = quiet_since if quiet_since is not None else t
                if t - quiet_since >= 0.25:
                    policy.handle(SpeechEnded(t))
                    policy.handle(Words(t, ("uh", "huh") if voiced else (), final=True))
            else:
                quiet_since = None
                policy.handle(Words(t, ("uh",) if voiced else ()))
        due = policy.next_deadline()
        if due is not None and due <= t:
            policy.handle(Tick(t))
    return policy


@pytest.mark.parametrize("decider", [RuleDecider, ModelDecider])
def test_the_policy_resumes_after_a_short_backchannel_with_either_decider(
    decider: type[RuleDecider] | type[ModelDecider],
) -> None:
    lead = np.zeros(4 * FRAME, np.float32)
    audio = np.concatenate([lead, _speechlike(0.3, level=0.1, seed=5), np.zeros(40 * FRAME)])
    policy = _policy_run(decider(), audio.astype(np.float32), voiced=True)
    [record] = policy.interruptions
    assert record.decision == "resume"
    assert record.decided_at is not None and record.decided_at - record.onset_at < 1.0


def test_a_session_on_the_virtual_clock_works_with_both_deciders() -> None:
    from bargein.clock import run
    from bargein.providers.scripted import ScriptedLLM
    from bargein.session import Session, SessionConfig
    from tests.doubles import LevelVAD, LoggingSpeaker, ScriptedRecognizer, WordTTS, drive

    reasons = {}
    kinds: tuple[DeciderKind, ...] = ("rule", "model")
    for kind in kinds:
        log: list[str] = []
        speaker = LoggingSpeaker(log)
        session = Session(
            vad=LevelVAD(),
            recognizer=ScriptedRecognizer([([(1.2, ("stop",)), (1.3, ("stop",))], ("stop",))]),
            llm=ScriptedLLM(["One two three four five six seven eight nine ten.", "Okay."]),
            tts=WordTTS(),
            sink=speaker,
            config=SessionConfig(decider=kind),
        )

        async def main(session: Session = session, speaker: LoggingSpeaker = speaker) -> None:
            async with session:
                await drive(session, speaker, [(1.0, 1.6)], until=3.0)

        run(main(), "virtual")
        [record, *_] = session.timeline
        assert record.decision == "commit"
        reasons[kind] = record.reason
        assert isinstance(session.policy.decider, RuleDecider if kind == "rule" else ModelDecider)
    # The doubles' "speech" is loud noise, which the model takes without falling back.
    assert reasons["rule"] == "word:stop"
    assert reasons["model"].startswith("model:floor")


def test_the_policy_resumes_after_a_click_with_the_model() -> None:
    lead = np.zeros(4 * FRAME, np.float32)
    audio = np.concatenate([lead, _click(frames=32)])
    policy = _policy_run(ModelDecider(), audio, voiced=False)
    [record] = policy.interruptions
    assert record.decision == "resume"
