"""The floor policy on its own: events in, actions out, time passed explicitly."""

from __future__ import annotations

from pathlib import Path

import pytest

from bargein.decider import (
    Decision,
    Overlap,
    RuleDecider,
    after_backchannels,
    normalize_words,
    only_backchannel,
)
from bargein.policy import (
    TRANSITIONS,
    CancelReply,
    DuckOutput,
    EchoCancelled,
    FirstToken,
    Floor,
    FloorPolicy,
    FlushOutput,
    PauseOutput,
    Playout,
    PolicyConfig,
    PolicyError,
    Reading,
    ReadingStarted,
    ReleaseOutput,
    ReplyFailed,
    ReplyFinished,
    RequestReply,
    ResumeOutput,
    SpeechEnded,
    SpeechStarted,
    StartReply,
    Tick,
    Truncate,
    VoiceActivity,
    Words,
    mermaid_diagram,
)


def speaking_policy(decider: RuleDecider | None = None, **config: object) -> FloorPolicy:
    config.setdefault("preemptive", False)
    policy = FloorPolicy(PolicyConfig(**config), decider)  # type: ignore[arg-type]
    assert policy.handle(RequestReply(0.0)) == [StartReply(1, "turn", (), None)]
    policy.handle(FirstToken(0.15, 1))
    policy.handle(Playout(0.3, 1, 100))
    assert policy.state is Floor.SPEAKING
    return policy


def voice(policy: FloorPolicy, start: float, until: float) -> list[object]:
    """Voiced VAD frames every 32 ms in [start, until), collecting the actions."""
    actions: list[object] = []
    t = start
    while t < until - 1e-9:
        actions.extend(policy.handle(VoiceActivity(t, 0.9)))
        t += 0.032
    return actions


def sound_ended(voiced_until: float, ended: float) -> FloorPolicy:
    """A speaking policy and a sound over the agent, voiced from 1.0 to ``voiced_until``,
    that the segmenter ended at ``ended``."""
    policy = speaking_policy()
    policy.handle(SpeechStarted(1.0))
    voice(policy, 1.0, voiced_until)
    policy.handle(SpeechEnded(ended))
    return policy


def run_until_quiet(policy: FloorPolicy, until: float) -> list[object]:
    """Deliver ticks at every deadline up to ``until``, collecting the actions."""
    actions: list[object] = []
    while (deadline := policy.next_deadline()) is not None and deadline <= until:
        actions.extend(policy.handle(Tick(deadline)))
    return actions


def test_onset_pauses_on_the_same_event() -> None:
    policy = speaking_policy()
    assert policy.handle(SpeechStarted(1.0)) == [PauseOutput(1)]
    assert policy.state is Floor.TENTATIVE
    record = policy.interruptions[0]
    assert (record.onset_at, record.tier1, record.tier1_at) == (1.0, "pause", 1.0)


def test_duck_instead_of_pause() -> None:
    policy = speaking_policy(tier1="duck")
    assert policy.handle(SpeechStarted(1.0)) == [DuckOutput(1)]


def test_a_ducked_agent_pauses_once_the_sound_outlasts_the_limit() -> None:
    policy = speaking_policy(tier1="duck", duck_limit_s=0.25)
    assert policy.handle(SpeechStarted(1.0)) == [DuckOutput(1)]
    assert policy.next_deadline() == pytest.approx(1.25)
    assert voice(policy, 1.0, 1.25) == []
    assert policy.handle(Tick(1.25)) == [PauseOutput(1)]
    record = policy.interruptions[0]
    assert (record.tier1, record.paused_at, record.decision) == ("duck", 1.25, None)
    # Paused once: later frames and ticks bring tier 2's decision, not a second pause.
    assert voice(policy, 1.25, 1.8) == []
    assert policy.handle(Tick(1.8)) == [FlushOutput(1), CancelReply(1), Truncate(1, 100)]
    assert record.reason == "duration"


def test_a_sound_judged_within_the_duck_limit_never_pauses_the_agent() -> None:
    policy = speaking_policy(tier1="duck", duck_limit_s=0.5)
    policy.handle(SpeechStarted(1.0))
    assert voice(policy, 1.0, 1.3) == []
    assert policy.handle(SpeechEnded(1.3)) == []
    assert policy.handle(Words(1.35, ("okay",), final=True)) == [ResumeOutput(1)]
    assert policy.state is Floor.SPEAKING
    assert policy.interruptions[0].paused_at is None
    assert policy.next_deadline() is None
    assert policy.handle(Tick(1.6)) == []


def test_without_a_limit_a_duck_lasts_until_the_decision() -> None:
    policy = speaking_policy(tier1="duck")
    policy.handle(SpeechStarted(1.0))
    actions = voice(policy, 1.0, 1.8) + policy.handle(Tick(1.8))
    assert actions == [FlushOutput(1), CancelReply(1), Truncate(1, 100)]
    assert policy.interruptions[0].paused_at is None


def test_the_duck_limit_is_for_ducking_only() -> None:
    policy = speaking_policy(duck_limit_s=0.1)
    assert policy.handle(SpeechStarted(1.0)) == [PauseOutput(1)]
    assert voice(policy, 1.0, 1.5) == []
    assert policy.interruptions[0].paused_at is None
    with pytest.raises(ValueError, match="duck_limit_s"):
        PolicyConfig(tier1="duck", duck_limit_s=-0.1)
    with pytest.raises(ValueError, match="duck_limit_s"):
        PolicyConfig(tier1="duck", duck_limit_s=float("nan"))


def test_commit_runs_the_steps_in_order_then_yields() -> None:
    policy = speaking_policy()
    policy.handle(Playout(0.9, 1, 5000))
    policy.handle(SpeechStarted(1.0))
    assert voice(policy, 1.0, 1.8) == []
    actions = policy.handle(Tick(1.8))  # speech still voiced after commit_after_s
    assert actions == [FlushOutput(1), CancelReply(1), Truncate(1, 5000)]
    assert policy.state is Floor.YIELDED
    record = policy.interruptions[0]
    assert (record.decision, record.reason, record.decided_at) == ("commit", "duration", 1.8)
    # The floor stays with the user until their turn ends, then the reply follows.
    policy.handle(Words(1.9, ("what", "about")))
    assert policy.handle(SpeechEnded(2.2)) == []
    assert policy.handle(Words(2.2, ("what", "about", "tuesday"), final=True)) == []
    assert run_until_quiet(policy, 2.69) == []
    actions = policy.handle(Tick(2.7))
    assert actions == [StartReply(2, "respond", ("what", "about", "tuesday"), 1, utterances=(1,))]
    assert policy.state is Floor.THINKING


def test_an_interrupting_word_commits_once_stable() -> None:
    policy = speaking_policy()
    policy.handle(SpeechStarted(1.0))
    assert policy.handle(Words(1.03, ("stop",))) == []  # one partial may be a flicker
    assert policy.handle(Words(1.06, ("stop",)))[:2] == [FlushOutput(1), CancelReply(1)]
    assert policy.interruptions[0].reason == "word:stop"


def test_a_flickering_partial_does_not_commit() -> None:
    policy = speaking_policy()
    policy.handle(SpeechStarted(1.0))
    assert policy.handle(Words(1.03, ("no",))) == []
    assert policy.handle(Words(1.06, ("oh",))) == []
    assert policy.state is Floor.TENTATIVE


def test_backchannel_resumes() -> None:
    policy = speaking_policy()
    policy.handle(SpeechStarted(1.0))
    policy.handle(Words(1.2, ("uh",)))
    policy.handle(SpeechEnded(1.6))
    assert policy.handle(Words(1.6, ("uh", "huh"), final=True)) == [ResumeOutput(1)]
    assert policy.state is Floor.SPEAKING
    record = policy.interruptions[0]
    assert (record.decision, record.resumed_at) == ("resume", 1.6)
    assert record.reason == "backchannel:uh huh"


def test_noise_without_words_resumes_after_the_final_wait() -> None:
    policy = speaking_policy()
    policy.handle(SpeechStarted(1.0))
    policy.handle(SpeechEnded(1.3))
    assert policy.next_deadline() == pytest.approx(1.6)
    assert policy.handle(Tick(1.6)) == [ResumeOutput(1)]
    assert policy.interruptions[0].reason == "no-words"


def test_short_speech_with_other_words_commits() -> None:
    policy = speaking_policy()
    policy.handle(SpeechStarted(1.0))
    policy.handle(SpeechEnded(1.4))
    actions = policy.handle(Words(1.4, ("about", "that"), final=True))
    assert actions[:3] == [FlushOutput(1), CancelReply(1), Truncate(1, 100)]


@pytest.mark.parametrize(
    ("policy_name", "mode"), [("restart", "restart"), ("respond", "respond"), ("resume", "resume")]
)
def test_restart_policy_selects_the_next_reply_mode(policy_name: str, mode: str) -> None:
    policy = speaking_policy(restart_policy=policy_name)
    policy.handle(SpeechStarted(1.0))
    policy.handle(SpeechEnded(1.4))
    policy.handle(Words(1.4, ("go", "on"), final=True))
    actions = run_until_quiet(policy, 5.0)
    assert actions == [StartReply(2, mode, ("go", "on"), 1, utterances=(1,))]  # type: ignore[arg-type]


def test_thinking_time_speech_merges_into_the_turn() -> None:
    policy = FloorPolicy(PolicyConfig(preemptive=False))
    policy.handle(RequestReply(0.0))
    assert policy.state is Floor.THINKING
    assert policy.handle(SpeechStarted(0.1)) == [PauseOutput(1)]
    assert policy.interruptions[0].tier1 == "hold"
    voice(policy, 0.1, 0.9)
    assert policy.handle(Tick(0.9)) == [FlushOutput(1), CancelReply(1), Truncate(1, 0)]
    policy.handle(SpeechEnded(1.2))
    policy.handle(Words(1.2, ("for", "two", "people"), final=True))
    assert run_until_quiet(policy, 5.0) == [
        StartReply(2, "merge", ("for", "two", "people"), 1, utterances=(1,))
    ]


def test_thinking_time_noise_releases_the_hold() -> None:
    policy = FloorPolicy(PolicyConfig(preemptive=False))
    policy.handle(RequestReply(0.0))
    policy.handle(SpeechStarted(0.1))
    policy.handle(SpeechEnded(0.3))
    assert policy.handle(Words(0.3, (), final=True)) == [ResumeOutput(1)]
    assert policy.state is Floor.THINKING
    policy.handle(Playout(0.5, 1, 10))
    assert policy.state is Floor.SPEAKING


def test_second_interruption_of_the_answer() -> None:
    policy = speaking_policy()
    policy.handle(SpeechStarted(1.0))
    voice(policy, 1.0, 1.8)
    policy.handle(Tick(1.8))
    policy.handle(SpeechEnded(2.0))
    policy.handle(Words(2.0, ("what", "time"), final=True))
    [start] = run_until_quiet(policy, 5.0)
    assert isinstance(start, StartReply) and start.reply_id == 2
    policy.handle(Playout(3.0, 2, 400))
    assert policy.handle(SpeechStarted(3.5)) == [PauseOutput(2)]
    voice(policy, 3.5, 4.3)
    assert policy.handle(Tick(4.31)) == [FlushOutput(2), CancelReply(2), Truncate(2, 400)]
    assert [r.reply_id for r in policy.interruptions] == [1, 2]


def test_speech_just_after_the_agent_finished_is_a_new_turn() -> None:
    policy = speaking_policy()
    assert policy.handle(Playout(5.0, 1, 9000, complete=True)) == [ReplyFinished(1)]
    assert policy.state is Floor.LISTENING
    assert policy.handle(SpeechStarted(5.1)) == []
    assert policy.interruptions == []
    policy.handle(SpeechEnded(5.8))
    policy.handle(Words(5.8, ("thanks",), final=True))
    assert run_until_quiet(policy, 9.0) == [
        StartReply(2, "turn", ("thanks",), None, utterances=(1,))
    ]


def test_late_reports_about_a_cancelled_reply_are_ignored() -> None:
    policy = speaking_policy()
    policy.handle(SpeechStarted(1.0))
    voice(policy, 1.0, 1.8)
    policy.handle(Tick(1.8))
    assert policy.handle(Playout(1.9, 1, 99999)) == []
    assert policy.handle(ReplyFailed(1.9, 1, "late")) == []


def test_unexpected_events_raise() -> None:
    policy = FloorPolicy(PolicyConfig(preemptive=False))
    with pytest.raises(PolicyError, match="without having started"):
        policy.handle(SpeechEnded(1.0))
    with pytest.raises(PolicyError, match="never started"):
        policy.handle(Playout(1.0, 7, 10))
    policy.handle(RequestReply(1.0))
    with pytest.raises(PolicyError, match="while thinking"):
        policy.handle(RequestReply(1.1))
    with pytest.raises(PolicyError, match="backwards"):
        policy.handle(Tick(0.5))


def test_a_failed_reply_is_truncated_and_the_floor_returns() -> None:
    policy = speaking_policy()
    actions = policy.handle(ReplyFailed(2.0, 1, "boom"))
    assert actions == [FlushOutput(1), CancelReply(1), Truncate(1, 100)]
    assert policy.state is Floor.LISTENING


def test_every_transition_is_drawn_and_the_design_notes_show_it() -> None:
    diagram = mermaid_diagram()
    for (src, trigger), dst in TRANSITIONS.items():
        assert f"{src.value} --> {dst.value}: {trigger}" in diagram
    notes = (Path(__file__).parent.parent / "docs" / "design.md").read_text()
    assert f"```mermaid\n{diagram}\n```" in notes


def test_words_normalise_and_backchannels_cover() -> None:
    assert normalize_words(["Uh-huh,", "OK!"]) == ("uh", "huh", "ok")
    assert only_backchannel(("mm", "hmm", "i", "see"))
    assert not only_backchannel(("i", "see", "a", "problem"))
    assert after_backchannels(("okay", "okay", "but", "what")) == ("but", "what")
    assert after_backchannels(("i", "see", "a", "problem")) == ("a", "problem")
    assert after_backchannels(("sounds", "good")) == ()
    assert after_backchannels(("so", "which")) == ("so", "which")
    decider = RuleDecider(commit_after_s=0.5)
    overlap = Overlap(onset_at=0.0, agent_audible=True, last_voiced_at=0.45)
    assert decider.decide(overlap, 0.49) is None
    decision = decider.decide(overlap, 0.5)
    assert decision is not None and decision.kind == "commit"
    # Past the commit time but silent for a while: the VAD's hangover is not speech.
    assert decider.decide(overlap, 0.6) is None
    assert decider.deadline(overlap, 0.6) is None


def test_a_short_word_held_in_the_hangover_is_not_a_long_speech() -> None:
    policy = speaking_policy()
    policy.handle(SpeechStarted(1.0))
    voice(policy, 1.0, 1.5)  # 0.5 s of "okay"
    assert policy.handle(VoiceActivity(1.82, 0.1)) == []  # still in the hangover
    assert policy.state is Floor.TENTATIVE
    policy.handle(SpeechEnded(1.85))
    assert policy.handle(Words(1.85, ("okay",), final=True)) == [ResumeOutput(1)]


def test_a_tick_at_the_deadline_always_decides() -> None:
    # 2.752 + 0.8 - 2.752 < 0.8 in floating point: the deadline itself must count.
    policy = speaking_policy()
    policy.handle(SpeechStarted(2.752))
    voice(policy, 2.752, 3.5)
    deadline = policy.next_deadline()
    assert deadline is not None
    assert policy.handle(Tick(deadline))[:2] == [FlushOutput(1), CancelReply(1)]


def test_a_loud_sound_the_vad_never_confirms_resumes_at_once() -> None:
    policy = speaking_policy()
    assert policy.handle(SpeechStarted(1.0, voiced=False)) == [PauseOutput(1)]
    assert policy.handle(VoiceActivity(1.032, 0.1)) == []
    assert policy.handle(SpeechEnded(1.25)) == [ResumeOutput(1)]
    assert policy.interruptions[0].reason == "no-voice"
    # Whatever a recogniser made of the noise is not the user's turn.
    assert policy.handle(Words(1.25, ("the", "bud"), final=True)) == []
    policy.handle(Playout(3.0, 1, 900, complete=True))
    assert run_until_quiet(policy, 10.0) == []


def knock_voiced_at_one_cut(policy: FloorPolicy, start: float, until: float) -> list[object]:
    """Frames every 32 ms that the VAD's first cut voiced and its second did not."""
    actions: list[object] = []
    t = start
    while t < until - 1e-9:
        actions.extend(policy.handle(VoiceActivity(t, 0.9, second_cut=0.1)))
        t += 0.032
    return actions


def test_a_sound_voiced_at_one_vad_cut_only_holds_and_then_resumes() -> None:
    # A knock the VAD called voice only where its frames happened to fall: neither the
    # duration rule nor the recogniser's word for it commits while it lasts.
    policy = speaking_policy()
    policy.handle(VoiceActivity(1.0, 0.9, second_cut=0.2))
    assert policy.handle(SpeechStarted(1.0)) == [PauseOutput(1)]
    assert knock_voiced_at_one_cut(policy, 1.032, 2.0) == []  # past the 0.8 s rule
    assert policy.handle(Words(2.0, ("sorry",))) == []
    assert policy.state is Floor.TENTATIVE
    # It ends, and would commit on "sorry": the agent stays paused for the hold, and
    # with nothing more from the user it goes on.
    policy.handle(SpeechEnded(2.1))
    assert policy.handle(Words(2.1, ("sorry",), final=True)) == []
    assert policy.next_deadline() == pytest.approx(2.5)
    assert policy.handle(Tick(2.45)) == []
    assert policy.handle(Tick(2.5)) == [ResumeOutput(1)]
    record = policy.interruptions[0]
    assert (record.reason, record.decided_at) == ("one cut:word:sorry", 2.5)


def test_going_on_after_a_sound_voiced_at_one_cut_decides_on_the_whole() -> None:
    # A soft "Stop," voiced at one cut only, then the rest of the sentence: the agent,
    # held paused, never plays over it.
    policy = speaking_policy(one_cut_hold_s=0.3)
    policy.handle(VoiceActivity(1.0, 0.9, second_cut=0.2))
    policy.handle(SpeechStarted(1.0))
    knock_voiced_at_one_cut(policy, 1.032, 1.3)
    policy.handle(SpeechEnded(1.4))
    assert policy.handle(Words(1.4, ("stop",), final=True)) == []
    assert policy.next_deadline() == pytest.approx(1.7)
    policy.handle(VoiceActivity(1.6, 0.9, second_cut=0.8))  # "I need the reference..."
    assert policy.state is Floor.YIELDED
    record = policy.interruptions[0]
    assert (record.decision, record.reason, record.decided_at) == ("commit", "word:stop", 1.6)
    assert record.resumed_at is None


def test_the_first_frame_voiced_at_both_cuts_lets_the_due_commit_through() -> None:
    policy = speaking_policy()
    policy.handle(SpeechStarted(1.0))
    knock_voiced_at_one_cut(policy, 1.0, 1.9)
    assert policy.state is Floor.TENTATIVE
    actions = policy.handle(VoiceActivity(1.93, 0.9, second_cut=0.6))
    assert actions[:2] == [FlushOutput(1), CancelReply(1)]
    assert policy.interruptions[0].reason == "duration"


def test_the_onset_frame_voiced_at_both_cuts_counts() -> None:
    # The session hands the policy the frame before the start it opens, at the same time.
    policy = speaking_policy()
    policy.handle(VoiceActivity(1.0, 0.9, second_cut=0.7))
    policy.handle(SpeechStarted(1.0))
    actions = knock_voiced_at_one_cut(policy, 1.032, 2.0)
    assert actions[:2] == [FlushOutput(1), CancelReply(1)]
    # A frame voiced at both before a loudness start, not of its sound, does not count.
    policy = speaking_policy()
    policy.handle(VoiceActivity(1.0, 0.9, second_cut=0.7))
    policy.handle(SpeechStarted(1.005, voiced=False))
    assert knock_voiced_at_one_cut(policy, 1.032, 2.0) == []


def test_voice_before_the_canceller_started_is_the_echo_and_no_longer_counts() -> None:
    # Tier 1 fired on an echo the gate could not explain; the canceller then took over.
    policy = speaking_policy()
    policy.handle(SpeechStarted(1.0))
    voice(policy, 1.0, 1.1)
    policy.handle(Words(1.097, ("the", "fall")))
    assert policy.handle(EchoCancelled(1.1)) == []
    overlap = policy._overlap
    assert overlap is not None and overlap.partials == [] and overlap.early_readings == []
    # Nothing voiced through the canceller: the sound ends as a sound with no voice, and
    # the echo's words ("the fall") commit nothing.
    assert policy.handle(VoiceActivity(1.132, 0.1)) == []
    assert policy.handle(SpeechEnded(1.3)) == [ResumeOutput(1)]
    assert policy.interruptions[0].reason == "no-voice"


def test_voice_after_the_canceller_started_still_interrupts() -> None:
    policy = speaking_policy()
    policy.handle(SpeechStarted(1.0))
    voice(policy, 1.0, 1.1)
    policy.handle(EchoCancelled(1.1))
    actions = voice(policy, 1.1, 2.0)  # the user, through the canceller
    assert actions[:2] == [FlushOutput(1), CancelReply(1)]
    assert policy.interruptions[0].reason == "duration"


def test_the_streaming_recognisers_words_from_before_the_canceller_are_dropped() -> None:
    # The streaming recogniser goes on through the takeover: its hypotheses still begin
    # with what it made of the echo, and only the words after those are the user's.
    policy = speaking_policy()
    policy.handle(SpeechStarted(1.0))
    voice(policy, 1.0, 1.1)
    policy.handle(Words(1.097, ("the", "fall")))
    policy.handle(ReadingStarted(1.098, policy.utterance))
    policy.handle(EchoCancelled(1.1))
    policy.handle(Words(1.2, ("the", "fall", "stop")))
    overlap = policy._overlap
    assert overlap is not None and overlap.echo_words == 2
    assert overlap.reading_since is None  # that reading, of the echo, never comes
    assert overlap.latest_words == ("stop",)
    policy.handle(Words(1.25, ("the", "fall", "stop")))
    assert policy.interruptions[0].reason == "word:stop"
    assert policy.interruptions[0].user_words == ("stop",)


def test_one_or_two_words_made_of_the_cancellers_residue_do_not_commit() -> None:
    policy = speaking_policy()
    policy.handle(SpeechStarted(1.0))
    voice(policy, 1.0, 1.1)
    policy.handle(EchoCancelled(1.1))
    voice(policy, 1.1, 1.5)  # bursts the canceller let through
    policy.handle(SpeechEnded(1.6))
    assert policy.handle(Words(1.6, ("the", "paper"), final=True)) == [ResumeOutput(1)]
    assert policy.interruptions[0].reason == "echo residue:the paper"


def test_a_sound_over_a_cancelled_echo_commits_on_a_sentence_not_on_a_word() -> None:
    for words, decision in ((("cause",), "resume"), (("can", "you", "repeat"), "commit")):
        policy = speaking_policy()
        policy.handle(SpeechStarted(1.0, over_echo=True))
        overlap = policy._overlap
        assert overlap is not None and overlap.over_echo
        voice(policy, 1.0, 1.5)
        policy.handle(SpeechEnded(1.6))
        policy.handle(Words(1.6, words, final=True))
        assert policy.interruptions[0].decision == decision


def test_a_canceller_starting_outside_an_overlap_changes_nothing() -> None:
    policy = speaking_policy()
    assert policy.handle(EchoCancelled(1.0)) == []
    assert policy.state is Floor.SPEAKING


# -- preemptive generation ---------------------------------------------------------------


def test_a_pause_with_final_words_starts_a_held_reply_released_at_turn_end() -> None:
    policy = FloorPolicy()
    policy.handle(SpeechStarted(1.0))
    assert policy.handle(SpeechEnded(2.0)) == []  # no final words yet: nothing to answer
    start = policy.handle(Words(2.1, ("what", "time", "is", "it"), final=True))
    assert start == [StartReply(1, "turn", ("what", "time", "is", "it"), None, True, (1,))]
    assert policy.state is Floor.PREPARING
    assert policy.next_deadline() == 2.5  # the turn end proper: 0.5 s after the speech
    assert policy.handle(Tick(2.49)) == []
    assert policy.handle(Tick(2.5)) == [ReleaseOutput(1)]
    assert policy.state is Floor.THINKING
    assert policy.preemptions == {1: "released"}


def test_going_on_after_the_pause_discards_the_held_reply_and_keeps_the_words() -> None:
    policy = FloorPolicy()
    policy.handle(SpeechStarted(1.0))
    policy.handle(SpeechEnded(2.0))
    policy.handle(Words(2.0, ("book", "a", "table"), final=True))
    assert policy.handle(SpeechStarted(2.3)) == [CancelReply(1)]
    assert policy.state is Floor.LISTENING and policy.interruptions == []
    policy.handle(SpeechEnded(3.0))
    [again] = policy.handle(Words(3.0, ("for", "two"), final=True))
    assert again == StartReply(2, "turn", ("book", "a", "table", "for", "two"), None, True, (1, 2))
    assert run_until_quiet(policy, 5.0) == [ReleaseOutput(2)]
    assert policy.preemptions == {1: "discarded", 2: "released"}
    # Late reports about the discarded reply are harmless.
    assert policy.handle(ReplyFailed(3.6, 1, "cancelled")) == []


def test_after_a_barge_in_the_held_reply_keeps_the_restart_policy() -> None:
    policy = speaking_policy(preemptive=True)
    policy.handle(SpeechStarted(1.0))
    voice(policy, 1.0, 1.8)
    policy.handle(Tick(1.8))
    assert policy.state is Floor.YIELDED
    policy.handle(SpeechEnded(2.0))
    [held] = policy.handle(Words(2.0, ("wait",), final=True))
    assert held == StartReply(2, "respond", ("wait",), 1, True, (1,))
    # The user goes on: back to the floor they took, the interrupted reply still known.
    assert policy.handle(SpeechStarted(2.2)) == [CancelReply(2)]
    assert policy.state is Floor.YIELDED
    policy.handle(SpeechEnded(2.6))
    [again] = policy.handle(Words(2.6, ("what", "time"), final=True))
    assert again == StartReply(3, "respond", ("wait", "what", "time"), 1, True, (1, 2))


def test_no_words_means_no_preemptive_start() -> None:
    policy = FloorPolicy()
    policy.handle(SpeechStarted(1.0))
    policy.handle(SpeechEnded(1.3))
    assert policy.handle(Words(1.3, (), final=True)) == []
    assert policy.state is Floor.LISTENING and policy.preemptions == {}


def ended_overlap(
    words: tuple[str, ...], ended_at: float, *, second_opinion: tuple[str, ...] | None = None
) -> Overlap:
    """A short sound over the agent, over at ``ended_at``, with its final words in."""
    return Overlap(
        onset_at=0.0,
        agent_audible=True,
        speech_active=False,
        speech_ended_at=ended_at,
        last_voiced_at=ended_at - 0.1,
        final_words=words,
        second_opinion=second_opinion,
    )


@pytest.mark.parametrize(
    ("heard", "spotted", "expected"),
    [
        # The open recogniser's mishearing of a backchannel; the spotter hears it right.
        (("look", "i"), ("okay",), ("resume", "spotted:okay")),
        (("sheriff",), ("sure",), ("resume", "spotted:sure")),
        # A command heard as a backchannel, or not at all (phone audio): the spotter's
        # command commits.
        (("right",), ("wait",), ("commit", "spotted:wait")),
        ((), ("stop", "stop"), ("commit", "spotted:stop stop")),
        ((), ("hold", "on", "a", "second"), ("commit", "spotted:hold on a second")),
        # The spotter heard nothing it knows: the open recogniser decides alone.
        (("book", "it"), (), ("commit", "words:book it")),
        (("yeah",), (), ("resume", "backchannel:yeah")),
        ((), (), ("resume", "no-words")),
        # No spotter ran: exactly the rule without one.
        (("look", "i"), None, ("commit", "words:look i")),
    ],
)
def test_the_rule_weighs_a_phrase_spotters_second_opinion(
    heard: tuple[str, ...], spotted: tuple[str, ...] | None, expected: tuple[str, str]
) -> None:
    overlap = ended_overlap(heard, 0.5, second_opinion=spotted)
    decision = RuleDecider().decide(overlap, 0.5)
    assert decision is not None and (decision.kind, decision.reason) == expected


@pytest.mark.parametrize(
    ("heard", "expected"),
    [
        # A word or two the open recogniser made of a phrase the reader could not place.
        (("q",), ("resume", "too close:q")),
        (("gold", "it"), ("resume", "too close:gold it")),
        # A command the open recogniser heard still commits, and so do three words or more.
        (("stop",), ("commit", "word:stop")),
        (("and", "then", "we"), ("commit", "words:and then we")),
    ],
)
def test_after_a_tie_a_word_or_two_do_not_commit(
    heard: tuple[str, ...], expected: tuple[str, str]
) -> None:
    overlap = ended_overlap(heard, 0.5, second_opinion=())
    overlap.second_opinion_too_close = True
    decision = RuleDecider().decide(overlap, 0.5)
    assert decision is not None and (decision.kind, decision.reason) == expected
    # No answer for another reason (a sentence, a failed reading): the words decide.
    overlap.second_opinion_too_close = False
    decision = RuleDecider().decide(overlap, 0.5)
    assert decision is not None and decision.kind == "commit"


def test_the_ablation_baselines_decide_on_voice_alone() -> None:
    from bargein.decider import DurationDecider, VoiceOnlyDecider

    noise = Overlap(onset_at=0.0, agent_audible=True)
    voice = Overlap(onset_at=0.0, agent_audible=True, last_voiced_at=0.03)
    # Naive VAD barge-in: the first voiced frame takes the floor; an unvoiced sound waits.
    vad = VoiceOnlyDecider()
    assert vad.decide(noise, 0.05) is None
    decision = vad.decide(voice, 0.05)
    assert decision is not None and (decision.kind, decision.reason) == ("commit", "voice")
    noise.speech_active = False
    decision = vad.decide(noise, 0.3)
    assert decision is not None and decision.kind == "resume"
    # Duration only: "stop" and "uh-huh" alike resume; only voice still going at 0.8 s commits.
    duration = DurationDecider()
    assert duration.decide(voice, 0.5) is None and duration.deadline(voice, 0.5) == 0.8
    voice.last_voiced_at = 0.79
    decision = duration.decide(voice, 0.8)
    assert decision is not None and (decision.kind, decision.reason) == ("commit", "duration")
    short = ended_overlap(("stop",), 0.4)
    decision = duration.decide(short, 0.4)
    assert decision is not None and (decision.kind, decision.reason) == ("resume", "short")


def test_two_early_readings_of_a_command_commit_while_the_user_still_talks() -> None:
    policy = speaking_policy()
    policy.handle(SpeechStarted(1.0))
    voice(policy, 1.0, 1.4)
    # One reading of the first syllables is not enough: "exactly" begins like "no".
    assert policy.handle(Reading(1.45, policy.utterance, ("no",))) == []
    assert policy.handle(Reading(1.5, policy.utterance, ("okay",))) == []
    assert policy.handle(Reading(1.55, policy.utterance, ("hold", "on"))) == []
    actions = policy.handle(Reading(1.6, policy.utterance, ("hold", "on")))
    assert actions[:2] == [FlushOutput(1), CancelReply(1)]
    assert policy.interruptions[0].reason == "spotted:hold on"


def test_the_duration_rule_waits_for_a_reading_under_way() -> None:
    """On the real clock a reading takes 0.1-0.2 s: the duration commit waits for it (up
    to 0.4 s after it began) rather than stop the agent for a long "uh-huh, yeah"."""
    policy = speaking_policy()
    policy.handle(SpeechStarted(1.0))
    voice(policy, 1.0, 1.6)
    assert policy.handle(ReadingStarted(1.6, policy.utterance)) == []
    assert voice(policy, 1.6, 1.9) == []  # past 0.8 s, but the reading is under way
    assert policy.state is Floor.TENTATIVE
    assert policy.handle(Reading(1.9, policy.utterance, ("uh", "huh"))) == []
    assert policy.next_deadline() == pytest.approx(2.6)
    # A reading that never comes back holds nothing up for long.
    policy = speaking_policy()
    policy.handle(SpeechStarted(1.0))
    voice(policy, 1.0, 1.6)
    policy.handle(ReadingStarted(1.6, policy.utterance))
    assert voice(policy, 1.6, 1.99) == []
    assert policy.next_deadline() == pytest.approx(2.0)
    assert FlushOutput(1) in policy.handle(Tick(2.0))
    assert policy.interruptions[0].reason == "duration"


def test_the_end_of_the_sound_waits_for_its_final_reading() -> None:
    policy = sound_ended(1.5, 1.5)
    policy.handle(ReadingStarted(1.5, policy.utterance))
    # Past the 0.3 s wait for final words, the rule waits for the reading instead of
    # deciding on the partial words alone, up to 0.8 s after it began (0.4 s while the
    # sound goes on): a slow reading, queued behind one of the sound so far, still counts.
    assert policy.handle(Words(1.6, ("no",))) == []
    assert policy.handle(Tick(1.9)) == [] and policy.next_deadline() == pytest.approx(2.3)
    actions = policy.handle(Words(2.25, ("okay",), final=True, second_opinion=("mm", "hmm")))
    assert actions == [ResumeOutput(1)] and policy.interruptions[0].decided_at == 2.25
    # A final reading that never comes holds the decision up no longer than that.
    policy = sound_ended(1.5, 1.5)
    policy.handle(ReadingStarted(1.5, policy.utterance))
    policy.handle(Words(1.6, ("no",)))
    assert policy.handle(Tick(2.29)) == []
    assert FlushOutput(1) in policy.handle(Tick(2.3))
    assert policy.interruptions[0].reason == "words:no"
    # Without a reading under way, the partial words decide 0.3 s after the end.
    policy = sound_ended(1.5, 1.5)
    policy.handle(Words(1.6, ("no",)))
    assert policy.next_deadline() == pytest.approx(1.8)
    assert FlushOutput(1) in policy.handle(Tick(1.8))
    assert policy.interruptions[0].reason == "words:no"


def test_a_sound_the_user_went_on_from_is_decided_by_the_next_one() -> None:
    """ "Oh, | really?" on a busy machine: the user went on before the reading of "Oh" came
    back, and the session gave that reading up. Tier 2 decides on the next sound, not on
    the open recogniser's "bull" for "Oh", and that sound's length counts from its own
    start."""
    policy = sound_ended(1.3, 1.45)
    policy.handle(ReadingStarted(1.45, policy.utterance))
    assert policy.handle(Words(1.6, ("bull",), final=True, user_went_on=True)) == []
    assert policy.handle(SpeechStarted(1.6)) == []
    # Voiced 0.8 s after the first onset, but the sound under way began at 1.6.
    assert voice(policy, 1.6, 2.3) == []
    assert policy.state is Floor.TENTATIVE
    policy.handle(SpeechEnded(2.45))
    policy.handle(ReadingStarted(2.45, policy.utterance))
    actions = policy.handle(Words(2.7, ("really",), final=True, second_opinion=("really",)))
    assert actions == [ResumeOutput(1)]
    assert policy.interruptions[0].reason == "backchannel:really"
    # A long second sound still takes the floor, 0.8 s after its own start.
    policy = sound_ended(1.3, 1.45)
    policy.handle(Words(1.6, ("bull",), final=True, user_went_on=True))
    policy.handle(SpeechStarted(1.6))
    assert voice(policy, 1.6, 2.38) == []
    assert FlushOutput(1) in voice(policy, 2.4, 2.45)
    assert policy.interruptions[0].reason == "duration"
    # A command in the sound before commits as the next one starts.
    policy = sound_ended(1.3, 1.45)
    assert policy.handle(Words(1.6, ("stop",), final=True, user_went_on=True)) == []
    assert FlushOutput(1) in policy.handle(SpeechStarted(1.6))
    assert policy.interruptions[0].reason == "word:stop"
    # Final words without a reading for any other reason decide at once.
    policy = sound_ended(1.3, 1.45)
    assert FlushOutput(1) in policy.handle(Words(1.6, ("bull",), final=True))
    assert policy.interruptions[0].reason == "words:bull"


def test_over_an_echo_the_final_reading_gets_the_short_wait() -> None:
    """Over an echo the rule without the reading resumes on a word or two (the canceller's
    residue) rather than commit, so it waits for a final reading only 0.4 s."""
    overlap = Overlap(onset_at=1.0, agent_audible=True, last_voiced_at=1.4, over_echo=True)
    overlap.speech_active, overlap.speech_ended_at = False, 1.5
    overlap.reading_since = 1.5
    overlap.partials.append((1.6, ("the", "pay")))
    rule = RuleDecider()
    assert rule.decide(overlap, 1.85) is None
    assert rule.deadline(overlap, 1.85) == pytest.approx(1.9)
    decision = rule.decide(overlap, 1.9)
    assert decision == Decision("resume", "echo residue:the pay")
    # The same sound with no echo waits for its reading up to 0.8 s.
    overlap.over_echo = False
    assert rule.decide(overlap, 1.9) is None
    assert rule.deadline(overlap, 1.9) == pytest.approx(2.3)


def test_an_early_backchannel_reading_holds_off_the_duration_commit() -> None:
    """A drawn-out "okay, okay" outlasts the 0.8 s duration rule; read as a backchannel so
    far, it may run to ``backchannel_after_s`` before voice alone takes the floor."""
    policy = speaking_policy()
    policy.handle(SpeechStarted(1.0))
    voice(policy, 1.0, 1.6)
    assert policy.handle(Reading(1.6, policy.utterance, ("okay",))) == []
    assert policy.next_deadline() == pytest.approx(2.6)
    assert voice(policy, 1.6, 2.4) == []  # past 0.8 s, still tentative
    assert policy.state is Floor.TENTATIVE
    policy.handle(SpeechEnded(2.45))
    assert policy.handle(Words(2.5, ("okay", "okay"), final=True)) == [ResumeOutput(1)]
    assert policy.interruptions[0].readings == ("okay",)


def test_the_timeline_keeps_the_readings_the_decision_had() -> None:
    policy = speaking_policy()
    policy.handle(SpeechStarted(1.0))
    voice(policy, 1.0, 1.4)
    policy.handle(Reading(1.4, policy.utterance, ("mm",)))
    policy.handle(SpeechEnded(1.5))
    policy.handle(Words(1.6, ("um",), final=True, second_opinion=("mm", "hmm")))
    record = policy.interruptions[0]
    assert record.decision == "resume"
    assert record.readings == ("mm", "final: mm hmm")
    assert record.as_dict()["readings"] == ["mm", "final: mm hmm"]


def test_voice_that_goes_on_past_the_backchannel_limit_commits() -> None:
    policy = speaking_policy()
    policy.handle(SpeechStarted(1.0))
    voice(policy, 1.0, 1.6)
    policy.handle(Reading(1.6, policy.utterance, ("yeah",)))
    actions = voice(policy, 1.6, 2.7)
    assert FlushOutput(1) in actions
    assert policy.interruptions[0].reason == "duration"


def test_a_reading_of_another_utterance_or_after_the_sound_is_ignored() -> None:
    policy = speaking_policy()
    policy.handle(SpeechStarted(1.0))
    assert policy.handle(Reading(1.5, policy.utterance - 1, ("stop",))) == []
    policy.handle(SpeechEnded(1.6))
    assert policy.handle(Reading(1.65, policy.utterance, ("stop",))) == []
    assert policy.state is Floor.TENTATIVE
    policy.handle(Words(1.7, ("okay",), final=True))
    assert policy.handle(Reading(1.8, policy.utterance, ("stop",))) == []  # decided


def watched_okay(policy: FloorPolicy) -> None:
    """An "okay" heard twice over the agent while the user still says it (spelled two
    ways): resumed early, at 1.45 s."""
    policy.handle(SpeechStarted(1.0))
    voice(policy, 1.0, 1.2)
    assert policy.handle(Reading(1.2, policy.utterance, ("okay",))) == []
    voice(policy, 1.2, 1.45)
    assert policy.handle(Reading(1.45, policy.utterance, ("ok",))) == [ResumeOutput(1)]
    assert policy.interruptions[0].reason == "spotted early:ok"
    assert policy.state is Floor.SPEAKING and policy.overlap_open


def test_readings_the_reader_chose_rather_than_heard_resume_nothing_early() -> None:
    """Forced to pick the nearest of its phrases, Whisper maps anything onto one: "and
    also" came back as "all right" twice running. Only readings heard outright count."""
    policy = speaking_policy()
    policy.handle(SpeechStarted(1.0))
    voice(policy, 1.0, 1.2)
    assert policy.handle(Reading(1.2, policy.utterance, ("all", "right"), chosen=True)) == []
    voice(policy, 1.2, 1.3)
    assert policy.handle(Reading(1.3, policy.utterance, ("all", "right"))) == []
    voice(policy, 1.3, 1.45)
    # Two heard outright in a row do.
    assert policy.handle(Reading(1.45, policy.utterance, ("alright",))) == [ResumeOutput(1)]


def test_two_backchannel_readings_resume_while_the_sound_goes_on() -> None:
    """The agent talks on over "okay, okay" (a person would), and keeps listening: the
    sound ending as a backchannel closes the overlap without another pause."""
    policy = speaking_policy()
    watched_okay(policy)
    assert voice(policy, 1.45, 1.6) == []  # more "okay": still what tier 2 said
    assert policy.handle(Reading(1.6, policy.utterance, ("okay", "okay"))) == []
    assert voice(policy, 1.6, 1.9) == []
    assert policy.handle(SpeechEnded(2.05)) == []  # the final words are awaited, playing
    assert policy.handle(Words(2.1, ("okay", "okay"), final=True)) == []
    assert not policy.overlap_open and policy.state is Floor.SPEAKING
    assert len(policy.interruptions) == 1
    # The overlap's words were not a turn: nothing is answered when the reply ends.
    assert policy.handle(Playout(5.0, 1, 900, complete=True)) == [ReplyFinished(1)]
    assert policy.handle(Tick(7.0)) == []


def test_a_watched_sound_that_turns_into_a_command_pauses_again_then_commits() -> None:
    policy = speaking_policy()
    watched_okay(policy)
    assert voice(policy, 1.45, 1.6) == []
    # "okay, wait, ...": a reading that is no longer a backchannel pauses at once.
    assert policy.handle(Reading(1.6, policy.utterance, ("wait",))) == [PauseOutput(1)]
    assert policy.state is Floor.TENTATIVE
    again = policy.interruptions[1]
    assert (again.onset_at, again.tier1_at) == (1.0, 1.6)  # the same sound, paused again
    assert voice(policy, 1.6, 1.75) == []
    actions = policy.handle(Reading(1.75, policy.utterance, ("wait",)))
    assert actions[:3] == [FlushOutput(1), CancelReply(1), Truncate(1, 100)]
    assert again.reason == "spotted:wait" and policy.state is Floor.YIELDED


def test_a_watched_sound_whose_final_words_are_a_bid_takes_the_floor() -> None:
    policy = speaking_policy()
    watched_okay(policy)
    assert policy.handle(SpeechEnded(1.6)) == []
    actions = policy.handle(Words(1.65, ("okay", "so", "which", "one"), final=True))
    assert actions[:2] == [PauseOutput(1), FlushOutput(1)]
    assert policy.interruptions[1].reason == "words:okay so which one"
    assert policy.state is Floor.YIELDED
    assert policy.turn_words == ("okay", "so", "which", "one")


def test_voice_going_on_without_a_verdict_pauses_and_the_long_sound_commits() -> None:
    """Readings that stop being backchannels (here: no answer) leave tier 2 unsure while
    the voice goes on: tier 1 pauses again, and the duration rule decides as usual."""
    policy = speaking_policy()
    watched_okay(policy)
    assert policy.handle(Reading(1.6, policy.utterance, ())) == []  # no voice since
    assert voice(policy, 1.6, 1.65) == [PauseOutput(1)]
    assert FlushOutput(1) in voice(policy, 1.65, 1.85)
    assert policy.interruptions[1].reason == "duration"


def test_a_reply_that_ends_under_a_watched_sound_closes_it() -> None:
    policy = speaking_policy()
    watched_okay(policy)
    assert policy.handle(Playout(1.5, 1, 900, complete=True)) == [ReplyFinished(1)]
    assert not policy.overlap_open and policy.state is Floor.LISTENING
    assert policy.handle(Reading(1.6, policy.utterance, ("stop",))) == []
    assert policy.next_deadline() is None


def test_without_early_resumes_the_rule_waits_for_the_end() -> None:
    policy = FloorPolicy(PolicyConfig(preemptive=False), RuleDecider(early_resume_readings=0))
    policy.handle(RequestReply(0.0))
    policy.handle(Playout(0.3, 1, 100))
    policy.handle(SpeechStarted(1.0))
    for at in (1.2, 1.3, 1.45):
        voice(policy, at - 0.1, at)
        assert policy.handle(Reading(at, policy.utterance, ("okay",))) == []
    assert policy.state is Floor.TENTATIVE


def test_readings_that_change_their_mind_are_no_backchannel() -> None:
    """A reader forced to choose among phrases flails on the start of a sentence ("Can
    you..." read as "yes", "good", "okay"); one that goes on ("right", "right okay")
    agrees."""
    rule = RuleDecider()
    overlap = Overlap(onset_at=1.0, agent_audible=True, last_voiced_at=1.5)
    overlap.early_readings = [("yes",), ("good",), ("okay",)]
    assert rule.decide(overlap, 1.5) is None
    overlap.early_readings = [("right",), ("right",), ("right", "okay")]
    decision = rule.decide(overlap, 1.5)
    assert decision is not None and (decision.kind, decision.reason) == (
        "resume",
        "spotted early:right okay",
    )
    # A hesitation opens bids as often as it is a backchannel: "Oh, and what about...".
    overlap.early_readings = [("oh",), ("oh",), ("oh", "right")]
    assert rule.decide(overlap, 1.5) is None
    overlap.early_readings = [("okay",), ("stop",), ("okay",)]
    assert rule.decide(overlap, 1.5) is None


def test_a_backchannel_read_early_outweighs_a_last_reading_with_no_answer() -> None:
    """ "Cool." read as "okay" while it lasted, then as a tie at its end; the open
    recogniser heard "q". The reading that answered decides, unless one heard a command."""
    rule = RuleDecider()
    overlap = Overlap(onset_at=1.0, agent_audible=True, last_voiced_at=1.4)
    overlap.speech_active, overlap.speech_ended_at = False, 1.5
    overlap.early_readings = [(), ("okay",)]
    overlap.final_words, overlap.second_opinion = ("q",), ()
    decision = rule.decide(overlap, 1.5)
    assert decision is not None and (decision.kind, decision.reason) == (
        "resume",
        "spotted early:okay",
    )
    overlap.early_readings = [("stop",), ("okay",)]
    decision = rule.decide(overlap, 1.5)
    assert decision is not None and (decision.kind, decision.reason) == ("commit", "words:q")


def test_slow_readings_hear_the_sound_as_it_was_and_resume_nothing_early() -> None:
    """On a busy machine a reading can take 0.3 s: three of "Oh," came back while the
    user was saying "and what about the weekend". Once the agent has resumed, though, a
    slow reading that still hears the backchannel keeps it going."""
    policy = speaking_policy()
    policy.handle(SpeechStarted(1.0))
    voice(policy, 1.0, 1.3)
    for start, end in ((1.3, 1.6), (1.6, 1.9), (1.9, 2.2)):
        policy.handle(ReadingStarted(start, policy.utterance))
        voice(policy, start, end)
        assert policy.handle(Reading(end, policy.utterance, ("oh",))) == []
    assert policy.state is Floor.TENTATIVE
    # Quick readings resume; a slow one after that changes nothing.
    policy = speaking_policy()
    watched_okay(policy)
    voice(policy, 1.45, 1.5)
    policy.handle(ReadingStarted(1.5, policy.utterance))
    assert voice(policy, 1.5, 1.9) == []
    assert policy.handle(Reading(1.9, policy.utterance, ("okay", "okay"))) == []
    assert voice(policy, 1.9, 2.0) == [] and policy.state is Floor.SPEAKING


def answering_policy(window: float | None) -> FloorPolicy:
    """A speaking policy whose rule takes a yes within ``window`` of a question for an answer."""
    policy = speaking_policy(RuleDecider(answer_window_s=window))
    policy.handle(Playout(0.9, 1, 5000))
    return policy


@pytest.mark.parametrize(
    ("after_question_s", "final", "window", "expected"),
    [
        (0.3, ("yeah",), 1.0, ("commit", "answer:yeah")),  # just after the question
        (-0.1, ("sure",), 1.0, ("commit", "answer:sure")),  # over its last word
        (None, ("yeah",), 1.0, ("resume", "backchannel:yeah")),  # no question
        (1.5, ("yeah",), 1.0, ("resume", "backchannel:yeah")),  # long after it
        (0.3, ("oh",), 1.0, ("resume", "backchannel:oh")),  # a hesitation answers nothing
        (0.3, ("mm", "hmm"), 1.0, ("resume", "backchannel:mm hmm")),  # nor a hum
        (0.3, ("yeah",), None, ("resume", "backchannel:yeah")),  # never
        (0.6, ("yeah",), 0.5, ("resume", "backchannel:yeah")),  # past a shorter window
    ],
)
def test_a_yes_just_after_the_agents_question_answers_it(
    after_question_s: float | None,
    final: tuple[str, ...],
    window: float | None,
    expected: tuple[str, str],
) -> None:
    policy = answering_policy(window)
    policy.handle(SpeechStarted(1.0, after_question_s=after_question_s))
    voice(policy, 1.0, 1.3)
    policy.handle(SpeechEnded(1.4))
    actions = policy.handle(Words(1.4, final, final=True))
    record = policy.interruptions[0]
    assert (record.decision, record.reason) == expected
    if expected[0] == "commit":
        assert actions == [FlushOutput(1), CancelReply(1), Truncate(1, 5000)]
        assert policy.state is Floor.YIELDED
    else:
        assert actions == [ResumeOutput(1)]


def test_a_yes_read_early_after_a_question_takes_the_floor_at_once() -> None:
    """Two readings that would resume the agent over "okay" commit instead, while the
    user still says it, when the agent has just asked a question."""
    policy = speaking_policy()  # the default rule
    policy.handle(Playout(0.9, 1, 5000))
    policy.handle(SpeechStarted(1.0, after_question_s=0.2))
    voice(policy, 1.0, 1.2)
    assert policy.handle(Reading(1.2, policy.utterance, ("okay",))) == []
    voice(policy, 1.2, 1.45)
    actions = policy.handle(Reading(1.45, policy.utterance, ("okay",)))
    assert actions[:2] == [FlushOutput(1), CancelReply(1)]
    assert policy.interruptions[0].reason == "answer:okay"
