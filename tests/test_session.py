"""The session on a virtual clock: exact timings, real orchestration, doubled models."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from bargein.bench.lagged_reader import LaggedReader
from bargein.clock import VirtualEventLoop, run
from bargein.policy import (
    Action,
    Event,
    PolicyConfig,
    RestartPolicy,
    SpeechEnded,
    VoiceActivity,
    Words,
)
from bargein.providers.base import ChosenWords, FloatAudio, TooClose
from bargein.providers.scripted import ScriptedLLM
from bargein.session import AudioFormatError, Session, SessionConfig
from tests.doubles import (
    TTS_RATE,
    WORD_SAMPLES,
    LevelVAD,
    LoggingSpeaker,
    ScriptedRecognizer,
    Utterance,
    WordTTS,
    drive,
    word_audio,
)

AGENT = (
    "One two three four five. Six seven eight nine ten eleven twelve. "
    "Thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty."
)
ANSWER = "Sure, Tuesday works."
WHAT_ABOUT_TUESDAY: Utterance = (
    [(1.2, ("what",)), (1.5, ("what", "about", "tuesday"))],
    ("what", "about", "tuesday"),
)


def make(
    utterances: list[Utterance],
    *,
    restart: RestartPolicy = "respond",
    llm: ScriptedLLM | None = None,
    tts: WordTTS | None = None,
    vad: LevelVAD | None = None,
) -> tuple[Session, LoggingSpeaker, ScriptedLLM, list[str]]:
    log: list[str] = []
    speaker = LoggingSpeaker(log)
    llm = llm or ScriptedLLM([AGENT, ANSWER])
    session = Session(
        vad=vad or LevelVAD(),
        recognizer=ScriptedRecognizer(utterances),
        llm=llm,
        tts=tts or WordTTS(),
        sink=speaker,
        config=SessionConfig(policy=PolicyConfig(restart_policy=restart)),
    )
    return session, speaker, llm, log


def played_words(speaker: LoggingSpeaker, reply_id: int) -> int:
    return speaker.played.get(reply_id, 0)


def test_a_committed_interruption_runs_the_six_steps_in_order() -> None:
    session, speaker, llm, log = make([WHAT_ABOUT_TUESDAY])

    async def main() -> None:
        async with session:
            await drive(session, speaker, [(1.0, 2.2)], until=4.0)

    run(main(), "virtual")
    [record] = session.timeline
    # 1-2: detected on the first loud frame and paused on that same frame.
    assert record.onset_at == pytest.approx(1.024)
    assert record.tier1 == "pause" and record.tier1_at == record.onset_at
    # 3: the speech kept going, so tier 2 committed after commit_after_s.
    assert (record.decision, record.reason) == ("commit", "duration")
    assert record.decided_at == pytest.approx(1.824)
    # 4: flush and cancel at the decision; the sink saw pause before flush.
    assert record.flushed_at == record.cancelled_at == record.decided_at
    assert log[:2] == ["pause", "flush"]
    assert llm.streams[0].closed
    # 6: the floor went to the user; the answer was prepared as soon as they paused
    # (speech end 2.2 s plus the segmenter's 0.25 s) but heard only after their turn ended.
    assert len(llm.calls) == 2
    assert llm.streams[1].emitted_at[0] < 2.2 + 0.25 + 0.5
    assert speaker.first_sound_at[2] >= 2.2 + 0.25 + 0.5
    messages = session.conversation.messages
    assert [m.role for m in messages] == ["assistant", "user", "assistant"]
    assert messages[0].interrupted and messages[1].content == "what about tuesday"
    assert messages[2].content == ANSWER and not messages[2].interrupted


def test_cancel_stops_llm_and_tts_together() -> None:
    long_reply = " ".join([AGENT] * 4)  # still streaming when the user cuts in
    session, speaker, llm, _ = make([WHAT_ABOUT_TUESDAY], llm=ScriptedLLM([long_reply, ANSWER]))

    async def main() -> None:
        async with session:
            await drive(session, speaker, [(1.0, 2.2)], until=2.4)

    run(main(), "virtual")
    reply = session.replies[1]
    assert reply.cancelled_at is not None and reply.task is not None and reply.task.done()
    assert llm.streams[0].tokens_after(reply.cancelled_at) == 0
    assert reply.tokens_after_cancel == 0
    assert len(llm.streams[0].emitted_at) < len(long_reply.split())  # it really was cut short
    assert all(t <= reply.cancelled_at for t, rid in speaker.writes if rid == 1)
    assert session.timeline[0].tokens_after_cancel == 0


def test_truncation_is_word_exact_to_the_playout_cursor() -> None:
    session, speaker, _, _ = make([WHAT_ABOUT_TUESDAY])

    async def main() -> None:
        async with session:
            await drive(session, speaker, [(1.0, 2.2)], until=2.4)

    run(main(), "virtual")
    played = speaker.played[1]
    words = AGENT.split()
    # A word counts as heard once at least half of its samples played.
    heard = [w for i, w in enumerate(words) if played >= (i + 0.5) * WORD_SAMPLES]
    assert 0 < len(heard) < len(words)
    assert session.recorded[1] == " ".join(heard)
    assert session.conversation.messages[0].content == " ".join(heard)
    assert session.timeline[0].heard_text == " ".join(heard)


def test_a_backchannel_resumes_from_the_exact_sample() -> None:
    backchannel: Utterance = ([(1.1, ("uh",))], ("uh", "huh"))
    session, speaker, _, log = make([backchannel])

    async def main() -> None:
        async with session:
            await drive(session, speaker, [(1.0, 1.3)], until=8.0)

    run(main(), "virtual")
    [record] = session.timeline
    assert record.decision == "resume" and record.reason == "backchannel:uh huh"
    assert log == ["pause", "resume"]
    total = len(AGENT.split()) * WORD_SAMPLES
    out = speaker.recording[: speaker.rendered][speaker.reply_at[: speaker.rendered] == 1]
    # Every sample played exactly once, in order: nothing lost, nothing repeated.
    np.testing.assert_array_equal(out, word_audio(0, total))
    assert record.resumed_at is not None
    assert speaker.paused_s[1] == pytest.approx(record.resumed_at - record.onset_at, abs=0.011)
    assert session.recorded[1] == " ".join(AGENT.split())
    assert not session.conversation.messages[-1].interrupted


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        # The question's last word has played when the user says "yeah": an answer.
        ("Shall I book it? " + AGENT, ("commit", "answer:yeah")),
        # The same "yeah" inside a longer question, before its end: a backchannel.
        (
            "Shall I book the early train for you and your three colleagues? " + AGENT,
            ("resume", "backchannel:yeah"),
        ),
        ("I booked it. " + AGENT, ("resume", "backchannel:yeah")),  # no question
    ],
)
def test_a_yeah_just_after_the_agent_s_question_is_heard_as_its_answer(
    reply: str, expected: tuple[str, str]
) -> None:
    yeah: Utterance = ([(1.1, ("yeah",))], ("yeah",))
    session, speaker, _, _ = make([yeah], llm=ScriptedLLM([reply, ANSWER]))

    async def main() -> None:
        async with session:
            await drive(session, speaker, [(1.0, 1.3)], until=3.0)

    run(main(), "virtual")
    record = session.timeline[0]
    assert (record.decision, record.reason) == expected


class FirstCutVAD(LevelVAD):
    """Voice at the first cut of the frames only, as a knock can score where they fall."""

    def probability_two_cuts(self, frame: FloatAudio) -> tuple[float, float | None]:
        return self.probability(frame), 0.1


@pytest.mark.parametrize(("vad", "expected"), [(LevelVAD(), "commit"), (FirstCutVAD(), "resume")])
def test_the_session_hands_the_policy_the_vads_second_cut(vad: LevelVAD, expected: str) -> None:
    """A sound long enough for the duration rule, and heard as "sorry": a bid if the VAD
    voiced it at both cuts of its frames (or has one cut), the agent goes on if only at
    its first."""
    sorry: Utterance = ([(1.2, ("sorry",))], ("sorry",))
    session, speaker, _, _ = make([sorry], vad=vad)

    async def main() -> None:
        async with session:
            await drive(session, speaker, [(1.0, 2.0)], until=3.5)

    run(main(), "virtual")
    record = session.timeline[0]
    assert record.decision == expected
    if expected == "resume":
        assert record.reason.startswith("one cut:")


def test_a_sound_over_the_agent_ends_sooner_than_the_user_s_own_turn() -> None:
    """While the agent is paused for a sound, the segmenter's hangover is shortened: it is
    silence the user hears if the sound was an "uh-huh". In the user's own turn it is not,
    and a breath between words must not end the turn."""
    backchannel: Utterance = ([(1.1, ("uh",))], ("uh", "huh"))
    session, speaker, _, _ = make([backchannel, WHAT_ABOUT_TUESDAY])
    hangovers: list[float] = []
    last_voiced = float("-inf")
    handle = session.policy.handle

    def spy(event: Event) -> list[Action]:
        nonlocal last_voiced
        if isinstance(event, VoiceActivity) and event.probability >= 0.5:
            last_voiced = event.at
        if isinstance(event, SpeechEnded):
            hangovers.append(event.at - last_voiced)
        return handle(event)

    session.policy.handle = spy  # type: ignore[method-assign]

    async def main() -> None:
        async with session:
            await drive(session, speaker, [(1.0, 1.3), (9.0, 9.5)], until=11.0)

    run(main(), "virtual")
    [record] = session.timeline
    assert record.reason == "backchannel:uh huh" and record.resumed_at is not None
    # From the last voiced frame: five quiet frames of 32 ms over the agent, eight in
    # the user's own turn.
    assert hangovers == [pytest.approx(0.16, abs=1e-6), pytest.approx(0.256, abs=1e-6)]
    assert record.resumed_at - record.onset_at < 0.3 + 0.16 + 0.04


@pytest.mark.parametrize("restart", ["restart", "respond", "resume"])
def test_each_restart_policy_shapes_the_next_llm_input(restart: RestartPolicy) -> None:
    session, speaker, llm, _ = make([WHAT_ABOUT_TUESDAY], restart=restart)

    async def main() -> None:
        async with session:
            await drive(session, speaker, [(1.0, 2.2)], until=3.5)

    run(main(), "virtual")
    heard = session.recorded[1]
    nxt = llm.calls[1]
    roles = [m.role for m in nxt]
    assert nxt[-1].role == "system" or nxt[-1].content == "what about tuesday"
    if restart == "restart":
        assert roles == ["system", "user"]
        assert all(heard not in m.content for m in nxt)
    else:
        assert roles == ["system", "assistant", "user", "system"]
        assert nxt[1].content == heard and nxt[1].interrupted
        assert nxt[2].content == "what about tuesday"
        if restart == "respond":
            assert "acknowledge" in nxt[3].content and heard in nxt[3].content
        else:
            unsaid = " ".join(AGENT.split()[len(heard.split()) :])
            assert "go on" in nxt[3].content and unsaid in nxt[3].content


def test_speech_while_thinking_cancels_and_merges_into_the_turn() -> None:
    added: Utterance = ([(0.2, ("for", "two"))], ("for", "two", "people"))
    session, speaker, llm, _ = make([added])
    session.conversation.add_user("book a table")

    async def main() -> None:
        async with session:
            await drive(session, speaker, [(0.05, 1.2)], until=2.5)

    run(main(), "virtual")
    [record] = session.timeline
    assert record.tier1 == "hold" and record.decision == "commit"
    assert speaker.played.get(1, 0) == 0  # the user never heard the first reply
    assert 1 not in speaker.first_sound_at
    assert [m.content for m in session.conversation.messages[:1]] == ["book a table for two people"]
    assert [m.role for m in llm.calls[1]] == ["system", "user"]
    assert llm.calls[1][1].content == "book a table for two people"


def test_the_answer_to_an_interruption_can_be_interrupted_too() -> None:
    second: Utterance = ([(5.0, ("no",)), (5.1, ("no",))], ("no", "no"))
    long_answer = "Sure. " + " ".join(["word"] * 40) + "."
    llm = ScriptedLLM([AGENT, long_answer, ANSWER])
    session, speaker, llm, _ = make([WHAT_ABOUT_TUESDAY, second], llm=llm)

    async def main() -> None:
        async with session:
            await drive(session, speaker, [(1.0, 2.2), (4.9, 5.3)], until=7.0)

    run(main(), "virtual")
    assert [(r.reply_id, r.decision) for r in session.timeline] == [(1, "commit"), (2, "commit")]
    assert session.timeline[1].reason == "word:no"
    assert session.replies[2].cancelled_at is not None
    assert len(llm.calls) == 3
    assert session.conversation.messages[2].interrupted


def test_speech_just_after_the_reply_finished_is_a_new_turn() -> None:
    short = "One two three."
    thanks: Utterance = ([(0.0, ("thanks",))], ("thanks",))
    session, speaker, llm, _ = make([thanks], llm=ScriptedLLM([short, ANSWER]))

    async def main() -> None:
        async with session:
            await drive(session, speaker, [(0.62, 1.0)], until=3.0)

    run(main(), "virtual")
    # Three words of 0.1 s each; the user starts within 200 ms after the last one.
    end_of_reply = speaker.first_sound_at[1] + 3 * WORD_SAMPLES / TTS_RATE
    assert 0.0 < 0.62 - end_of_reply <= 0.2
    assert session.recorded[1] == short
    assert session.timeline == []
    assert session.replies[1].cancelled_at is None
    assert [m.content for m in llm.calls[1] if m.role == "user"] == ["thanks"]


@pytest.mark.parametrize(
    ("audio", "rate", "message"),
    [
        (np.zeros(512, dtype=np.float32), 8000, "8000 Hz"),
        (np.zeros((512, 2), dtype=np.float32), 16000, "shape"),
        (np.zeros(512, dtype=np.int32), 16000, "int32"),
        (b"\x00\x01\x02", 16000, "16-bit"),
        ([0.0] * 512, 16000, "list"),
        (np.full(512, np.nan, dtype=np.float32), 16000, "NaN"),
    ],
)
def test_wrong_format_frames_are_refused_with_the_expected_format(
    audio: object, rate: int, message: str
) -> None:
    session, _speaker, _, _ = make([WHAT_ABOUT_TUESDAY])

    async def main() -> None:
        async with session:
            with pytest.raises(AudioFormatError, match=message) as info:
                session.push_audio(audio, rate)  # type: ignore[arg-type]
            assert "16000 Hz" in str(info.value)
            # The session is unharmed: correct audio still flows.
            session.push_audio(np.zeros(1024, dtype=np.float32))
            session.push_audio(np.zeros(512, dtype=np.int16).tobytes())

    run(main(), "virtual")


def test_a_provider_that_raises_ends_the_reply_and_the_session_keeps_listening() -> None:
    broken = ScriptedLLM([AGENT, ANSWER], fail_after=9)
    tuesday: Utterance = ([(0.0, ("what", "about", "tuesday"))], ("what", "about", "tuesday"))
    session, speaker, _llm, _ = make([tuesday], llm=broken)

    async def main() -> None:
        async with session:
            await drive(session, speaker, [], until=2.0)
            broken.fail_after = None  # the LLM recovers; the session must still be usable
            await drive(session, speaker, [(0.5, 1.0)], until=3.0, request=False)

    run(main(), "virtual")
    first = session.replies[1]
    assert first.error is not None and "scripted failure after 9 tokens" in first.error
    assert session.errors and "scripted failure" in session.errors[0]
    # What was heard before the failure is recorded, cut and marked.
    assert session.conversation.messages[0].interrupted
    assert session.recorded[1] == " ".join(AGENT.split()[: len(session.recorded[1].split())])
    # The user's next turn got a reply.
    assert session.replies[2].error is None
    assert session.conversation.messages[-1].content == ANSWER


def test_a_tts_failure_is_survived_too() -> None:
    tts = WordTTS(fail_on="Six")
    session, speaker, _, _ = make([WHAT_ABOUT_TUESDAY], tts=tts)

    async def main() -> None:
        async with session:
            await drive(session, speaker, [], until=2.0)

    run(main(), "virtual")
    assert session.replies[1].error is not None and "tts cannot say" in session.replies[1].error
    # Only the first sentence was ever voiced; whatever of it played is what is recorded.
    recorded = session.recorded[1].split()
    assert recorded == ["One", "two", "three", "four", "five."][: len(recorded)]
    assert session.conversation.messages[-1].interrupted


def test_timeline_records_are_logged_as_json(caplog: pytest.LogCaptureFixture) -> None:
    session, speaker, _, _ = make([WHAT_ABOUT_TUESDAY])

    async def main() -> None:
        async with session:
            await drive(session, speaker, [(1.0, 2.2)], until=3.0)

    with caplog.at_level(logging.INFO, logger="bargein.timeline"):
        run(main(), "virtual")
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "bargein.timeline"]
    assert records[-1]["decision"] == "commit"
    assert records[-1]["tokens_after_cancel"] == 0
    assert records[-1]["heard_text"] == session.recorded[1]


def test_virtual_time_does_not_count_processing() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.sleep(3600)
        return start, loop.time()

    start, end = run(main(), "virtual")
    assert (start, end) == (0.0, 3600.0)
    assert isinstance(VirtualEventLoop(), asyncio.AbstractEventLoop)


class BrokenRecognizer(ScriptedRecognizer):
    def feed(self, audio: FloatAudio) -> Sequence[str]:
        raise RuntimeError("decoder lost")


def test_a_recogniser_that_raises_costs_the_words_not_the_session() -> None:
    session, speaker, llm, _ = make([WHAT_ABOUT_TUESDAY])
    session.recognizer = BrokenRecognizer([WHAT_ABOUT_TUESDAY])

    async def main() -> None:
        async with session:
            await drive(session, speaker, [(1.0, 2.2)], until=4.0)

    run(main(), "virtual")
    assert session.errors == ["recogniser: RuntimeError: decoder lost"]
    # Tier 2 still decided on duration, and the user's (wordless) turn got its reply.
    assert session.timeline[0].reason == "duration"
    assert len(llm.calls) == 2


def test_a_preemptive_reply_is_discarded_when_the_user_goes_on() -> None:
    first: Utterance = ([(0.6, ("book",))], ("book", "a", "table"))
    second: Utterance = ([(1.7, ("for",))], ("for", "two"))
    session, speaker, llm, _ = make([first, second], llm=ScriptedLLM([ANSWER]))
    session.turn_end = None  # the fixed turn-end silence: its release time is checked below

    async def main() -> None:
        async with session:
            await drive(session, speaker, [(0.5, 1.2), (1.6, 2.2)], until=4.0, request=False)

    run(main(), "virtual")
    assert session.policy.preemptions == {1: "discarded", 2: "released"}
    early, final = llm.streams
    assert early.closed and session.replies[1].cancelled_at is not None
    assert session.replies[1].tokens_after_cancel == 0
    assert 1 not in speaker.first_sound_at  # the discarded answer was never heard
    assert [m.content for m in llm.calls[1] if m.role == "user"] == ["book a table for two"]
    assert [(m.role, m.content) for m in session.conversation.messages] == [
        ("user", "book a table for two"),
        ("assistant", ANSWER),
    ]
    # Prepared during the pause, heard right at the turn end.
    assert final.emitted_at[0] < 2.2 + 0.25 + 0.5 <= speaker.first_sound_at[2]
    assert speaker.first_sound_at[2] == pytest.approx(2.2 + 0.25 + 0.5, abs=0.04)


class ListTranscriber:
    """Returns the given texts in order (or raises for an exception); logs audio lengths."""

    sample_rate = 16000

    def __init__(self, texts: Sequence[str | Exception]) -> None:
        self.texts = list(texts)
        self.lengths: list[float] = []

    def transcribe(self, audio: FloatAudio) -> str:
        self.lengths.append(len(audio) / self.sample_rate)
        item = self.texts.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def make_with_transcriber(
    transcriber: ListTranscriber, utterances: list[Utterance]
) -> tuple[Session, LoggingSpeaker, ScriptedLLM]:
    speaker = LoggingSpeaker([])
    llm = ScriptedLLM([AGENT, ANSWER])
    session = Session(
        vad=LevelVAD(),
        recognizer=ScriptedRecognizer(utterances),
        llm=llm,
        tts=WordTTS(),
        sink=speaker,
        transcriber=transcriber,
    )
    return session, speaker, llm


def test_the_transcriber_s_text_is_what_the_llm_answers_and_the_conversation_keeps() -> None:
    guess: Utterance = ([(0.6, ("what",))], ("what", "about", "to", "stay"))
    transcriber = ListTranscriber(["What about Tuesday?"])
    session, speaker, llm = make_with_transcriber(transcriber, [guess])

    async def main() -> None:
        async with session:
            await drive(session, speaker, [(0.5, 1.5)], until=3.5, request=False)

    run(main(), "virtual")
    # One utterance of 1.0 s (plus up to 0.3 s of pre-roll and the 0.25 s end silence).
    [length] = transcriber.lengths
    assert 1.0 <= length <= 1.0 + 0.3 + 0.25 + 0.07
    assert [m.content for m in llm.calls[0] if m.role == "user"] == ["What about Tuesday?"]
    assert session.conversation.messages[0].content == "What about Tuesday?"


def test_the_transcript_corrects_the_turn_even_when_merged_after_a_cancel() -> None:
    first: Utterance = ([(0.6, ("book",))], ("book", "a", "tables"))
    added: Utterance = ([(1.5, ("for",))], ("for", "to"))
    transcriber = ListTranscriber(["Book a table.", "For two."])
    session, speaker, llm = make_with_transcriber(transcriber, [first, added])
    session.policy.config.preemptive = False

    async def main() -> None:
        async with session:
            # The user adds words while the agent is still thinking: a merge.
            await drive(session, speaker, [(0.5, 1.0), (1.8, 2.6)], until=5.0, request=False)

    run(main(), "virtual")
    users = [m.content for m in session.conversation.messages if m.role == "user"]
    assert users == ["Book a table. For two."]
    assert [m.content for m in llm.calls[-1] if m.role == "user"] == ["Book a table. For two."]


def test_a_failing_transcriber_leaves_the_recogniser_s_words() -> None:
    guess: Utterance = ([(0.6, ("what",))], ("what", "about", "tuesday"))
    session, speaker, llm = make_with_transcriber(
        ListTranscriber([RuntimeError("model gone")]), [guess]
    )

    async def main() -> None:
        async with session:
            await drive(session, speaker, [(0.5, 1.5)], until=3.5, request=False)

    run(main(), "virtual")
    assert session.conversation.messages[0].content == "what about tuesday"
    assert session.errors == ["transcriber: RuntimeError: model gone"]
    assert llm.streams[0].emitted_at  # the reply went ahead


def test_a_report_that_comes_after_the_cut_recuts_to_what_was_really_heard() -> None:
    session, speaker, _, _ = make([WHAT_ABOUT_TUESDAY])

    async def main() -> None:
        async with session:
            await drive(session, speaker, [(1.0, 2.2)], until=2.4)
            # A remote player's last report, sent after the clear, arrives late: two more
            # words had played than the session knew when it cut.
            cut_at = speaker.played[1]
            session.playout(1, cut_at + 2 * WORD_SAMPLES)
            session.playout(1, cut_at)  # an older, smaller report changes nothing

    run(main(), "virtual")
    played = speaker.played[1] + 2 * WORD_SAMPLES
    words = AGENT.split()
    heard = " ".join(w for i, w in enumerate(words) if played >= (i + 0.5) * WORD_SAMPLES)
    assert session.recorded[1] == heard
    assert session.conversation.messages[0].content == heard
    assert session.conversation.messages[0].interrupted
    assert session.timeline[0].heard_text == heard == session.timeline[0].recorded_text


def test_frame_features_are_computed_only_for_a_decider_that_reads_them() -> None:
    """The rule never looks at acoustic features; a trained decider (or one that does
    not say) gets them on every frame of the overlap."""
    from bargein.decider import Decision, Overlap, RuleDecider

    class Watching:
        def __init__(self) -> None:
            self.frames_seen = 0
            self.rule = RuleDecider()

        def decide(self, overlap: Overlap, now: float) -> Decision | None:
            self.frames_seen = max(self.frames_seen, len(overlap.frames))
            return self.rule.decide(overlap, now)

        def deadline(self, overlap: Overlap, now: float) -> float | None:
            return self.rule.deadline(overlap, now)

    async def overlap_frames(decider: Watching | None) -> tuple[int, int]:
        speaker = LoggingSpeaker([])
        session = Session(
            vad=LevelVAD(),
            recognizer=ScriptedRecognizer([WHAT_ABOUT_TUESDAY]),
            llm=ScriptedLLM([AGENT, ANSWER]),
            tts=WordTTS(),
            sink=speaker,
            decider=decider,
        )
        async with session:
            await drive(session, speaker, [(1.0, 2.2)], until=3.0)
        [record] = session.timeline
        assert record.decision == "commit"
        return session._features, decider.frames_seen if decider is not None else 0

    watching = Watching()
    assert run(overlap_frames(watching), "virtual") == (True, watching.frames_seen)
    assert watching.frames_seen > 5
    assert run(overlap_frames(None), "virtual") == (False, 0)


def test_a_spotter_hears_only_sound_over_the_agent_and_its_reading_decides() -> None:
    """The open recogniser mishears a short "okay" as "look i"; a second opinion from a
    phrase spotter, started only for the overlap, makes tier 2 resume instead of stop."""
    mishearing: Utterance = ([(1.2, ("look",))], ("look", "i"))
    spotter = ScriptedRecognizer([([], ("okay",))])

    async def main(second: ScriptedRecognizer | None) -> Session:
        speaker = LoggingSpeaker([])
        session = Session(
            vad=LevelVAD(),
            recognizer=ScriptedRecognizer([mishearing, WHAT_ABOUT_TUESDAY]),
            second_opinion=second,
            llm=ScriptedLLM([AGENT, ANSWER]),
            tts=WordTTS(),
            sink=speaker,
        )
        async with session:
            # An "okay" over the agent; later, once the agent is done, a turn of the user's.
            await drive(session, speaker, [(1.0, 1.4), (9.0, 10.0)], until=11.0)
        return session

    without = run(main(None), "virtual")
    assert (without.timeline[0].decision, without.timeline[0].reason) == ("commit", "words:look i")

    session = run(main(spotter), "virtual")
    [record] = session.timeline
    assert (record.decision, record.reason) == ("resume", "spotted:okay")
    # One utterance was spotted: the user's own turn, with the agent silent, was not.
    assert spotter.index == 0 and not spotter.open


def test_tier_1_pauses_before_the_recogniser_hears_the_pre_roll() -> None:
    """The recogniser's catch-up on the pre-roll costs tens of milliseconds; the pause must
    not wait behind it (it reached the socket 50-170 ms late when it did)."""
    log: list[str] = []

    class Logged(ScriptedRecognizer):
        def start(self) -> None:
            log.append("recogniser start")
            super().start()

    speaker = LoggingSpeaker(log)
    session = Session(
        vad=LevelVAD(),
        recognizer=Logged([WHAT_ABOUT_TUESDAY]),
        llm=ScriptedLLM([AGENT, ANSWER]),
        tts=WordTTS(),
        sink=speaker,
    )

    async def main() -> None:
        async with session:
            await drive(session, speaker, [(1.0, 2.2)], until=3.0)

    run(main(), "virtual")
    assert log.index("pause") < log.index("recogniser start")
    # And the recogniser still heard the utterance from its pre-roll on: its words decided.
    [record] = session.timeline
    assert record.decision == "commit"
    assert session.conversation.messages[1].content == "what about tuesday"


class DeferredSpotter(ScriptedRecognizer):
    """A second opinion whose reading is slow: the session asks for it as deferred work."""

    def __init__(self, utterances: list[Utterance], fail: bool = False) -> None:
        super().__init__(utterances)
        self.fail = fail
        self.calls: list[str] = []

    def finish(self) -> Sequence[str]:
        self.calls.append("finish")
        return super().finish()

    def finish_later(self) -> Callable[[], Sequence[str]]:
        self.calls.append("finish_later")
        words = super().finish()  # the utterance closes now; the reading comes later

        def work() -> Sequence[str]:
            self.calls.append("work")
            if self.fail:
                raise RuntimeError("reader gone")
            return words

        return work


def deferred_session(
    spotter: DeferredSpotter | LaggedReader,
    heard: Utterance = ([(1.2, ("look",))], ("look", "i")),
    spans: Sequence[tuple[float, float]] = ((1.0, 1.4), (9.0, 10.0)),
    until: float = 11.0,
    loop: type[VirtualEventLoop] = VirtualEventLoop,
    then: Sequence[Utterance] = (),
    recognizer: type[ScriptedRecognizer] = ScriptedRecognizer,
) -> Session:
    """A session whose open recogniser hears ``heard`` (a mishearing, by default) over
    the agent, ``then`` in the sounds after it, then the user's own turn, with
    ``spotter`` as its second opinion."""

    async def main() -> Session:
        speaker = LoggingSpeaker([])
        session = Session(
            vad=LevelVAD(),
            recognizer=recognizer([heard, *then, WHAT_ABOUT_TUESDAY]),
            second_opinion=spotter,
            llm=ScriptedLLM([AGENT, ANSWER]),
            tts=WordTTS(),
            sink=speaker,
        )
        async with session:
            await drive(session, speaker, spans, until=until)
        return session

    with asyncio.Runner(loop_factory=loop) as runner:
        return runner.run(main())


def test_a_slow_second_reading_runs_as_deferred_work_and_still_decides() -> None:
    spotter = DeferredSpotter([([], ("okay",))])
    session = deferred_session(spotter)
    [record] = session.timeline
    assert (record.decision, record.reason) == ("resume", "spotted:okay")
    assert spotter.calls == ["finish_later", "work"]  # never the blocking finish()
    assert not session.errors


def test_a_failing_deferred_reading_is_reported_and_the_rule_decides_without_it() -> None:
    spotter = DeferredSpotter([([], ("okay",))], fail=True)
    session = deferred_session(spotter)
    [record] = session.timeline
    assert (record.decision, record.reason) == ("commit", "words:look i")
    assert session.errors == ["recogniser: RuntimeError: reader gone"]


class TieSpotter(DeferredSpotter):
    """A second opinion that heard one of its phrases but could not tell which."""

    def finish_later(self) -> Callable[[], Sequence[str]]:
        super().finish_later()
        return lambda: TooClose()


def test_a_tie_in_the_second_reading_reaches_tier_2() -> None:
    """A tie: the open recogniser's "look i" is not enough to stop the agent. An empty
    reading that is no tie (a sentence, say) leaves the decision to those words."""
    [record] = deferred_session(TieSpotter([([], ())])).timeline
    assert (record.decision, record.reason) == ("resume", "too close:look i")
    [record] = deferred_session(DeferredSpotter([([], ())])).timeline
    assert (record.decision, record.reason) == ("commit", "words:look i")


class SlowSpotter(DeferredSpotter):
    """A second opinion whose final reading takes half a second (see ``slow_readings``)."""

    def finish_later(self) -> Callable[[], Sequence[str]]:
        work = super().finish_later()
        work.slow = True  # type: ignore[attr-defined]
        return work


class DroppableSpotter(SlowSpotter):
    """A slow second opinion that can be told its final reading is no longer wanted."""

    def __init__(self, utterances: list[Utterance]) -> None:
        super().__init__(utterances)
        self.dropped_at: list[float] = []

    def drop_later(self) -> None:
        self.calls.append("drop_later")
        self.dropped_at.append(asyncio.get_running_loop().time())


def test_a_reading_given_up_when_the_user_went_on_leaves_the_decision_to_the_next_sound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ "Oh, | really?" where a reading takes 0.5 s: the user goes on before the reading of
    "Oh" comes back. The open recogniser heard "bull"; tier 2 waits for the next sound
    and its reading instead of stopping the agent on that."""

    async def slow_readings(fn: Callable[..., object], *args: object) -> object:
        if getattr(fn, "slow", False):
            await asyncio.sleep(0.5)
        return fn(*args)

    monkeypatch.setattr("bargein.session.run_blocking", slow_readings)
    spotter = DroppableSpotter([([], ("oh",)), ([], ("really",))])
    bull: Utterance = ([], ("bull",))
    really: Utterance = ([], ("really",))
    session = deferred_session(spotter, bull, [(1.0, 1.4), (1.7, 2.1)], 5.0, then=[really])
    assert not session.errors
    [record] = session.timeline
    assert record.decision == "resume" and record.reason == "backchannel:really"
    assert record.decided_at is not None and record.decided_at > 2.1
    # The first reading was dropped as the second sound began (this double still runs
    # it, and its answer, back after that, is not used); the second decided.
    assert spotter.calls == ["finish_later", "drop_later", "work", "finish_later", "work"]
    assert 1.7 <= spotter.dropped_at[0] < 1.75


def test_a_final_reading_tier_2_decided_without_is_dropped_and_the_words_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A final reading that takes 1.5 s, longer than the rule waits for one: the rule
    commits on the open recogniser's words, and the session stops the reading then and
    gives the policy the final words at once, instead of when the reading comes back."""

    async def slow_readings(fn: Callable[..., object], *args: object) -> object:
        if getattr(fn, "slow", False):
            await asyncio.sleep(1.5)
        return fn(*args)

    monkeypatch.setattr("bargein.session.run_blocking", slow_readings)
    finals: list[tuple[float, float]] = []
    deliver = Session._final_words

    def final_words(self: Session, words: Words) -> None:
        finals.append((words.at, self.now()))
        deliver(self, words)

    monkeypatch.setattr(Session, "_final_words", final_words)
    spotter = DroppableSpotter([([], ("okay",))])
    session = deferred_session(spotter)
    assert not session.errors
    record = session.timeline[0]
    # On the open recogniser's partial words: its final ones wait with the reading.
    assert (record.decision, record.reason) == ("commit", "words:look")
    assert record.decided_at is not None and record.decided_at < 1.4 + 1.5
    # Dropped as the rule decided; the reading's own answer, later, is not delivered.
    assert spotter.calls[:3] == ["finish_later", "drop_later", "work"]
    assert spotter.dropped_at[0] == pytest.approx(record.decided_at, abs=1e-3)
    assert finals[0][0] == pytest.approx(record.decided_at, abs=1e-3)
    assert all(at < 1.4 + 1.5 or at > 5.0 for at, _ in finals)  # none as the reading ends


class ElsewhereRecognizer(DeferredSpotter):
    """An open recogniser that decodes in another process, as the server runs
    PocketSphinx: its final words come as deferred work (``finish_later``) that takes
    ``delay_s`` of clock time (see :func:`timed_work`)."""

    def __init__(self, utterances: list[Utterance], delay_s: float, fail: bool = False) -> None:
        super().__init__(utterances, fail)
        self.delay_s = delay_s

    def finish_later(self) -> Callable[[], Sequence[str]]:
        work = super().finish_later()
        work.delay_s = self.delay_s  # type: ignore[attr-defined]
        return work


def timed_work(monkeypatch: pytest.MonkeyPatch) -> list[Words]:
    """Deferred work takes its ``delay_s`` (a slow reading 1.5 s); returns the final words
    as the policy receives them."""

    async def run_blocking(fn: Callable[..., object], *args: object) -> object:
        await asyncio.sleep(getattr(fn, "delay_s", 1.5 if getattr(fn, "slow", False) else 0.0))
        return fn(*args)

    monkeypatch.setattr("bargein.session.run_blocking", run_blocking)
    finals: list[Words] = []
    deliver = Session._final_words

    def final_words(self: Session, words: Words) -> None:
        finals.append(words)
        deliver(self, words)

    monkeypatch.setattr(Session, "_final_words", final_words)
    return finals


def elsewhere_session(
    recognizer: ElsewhereRecognizer,
    spans: Sequence[tuple[float, float]] = ((1.0, 1.4), (9.0, 10.0)),
    until: float = 11.0,
    spotter: DeferredSpotter | None = None,
) -> Session:
    async def main() -> Session:
        speaker = LoggingSpeaker([])
        session = Session(
            vad=LevelVAD(),
            recognizer=recognizer,
            second_opinion=spotter,
            llm=ScriptedLLM([AGENT, ANSWER, ANSWER]),
            tts=WordTTS(),
            sink=speaker,
        )
        async with session:
            await drive(session, speaker, spans, until=until)
        return session

    return run(main(), "virtual")


LOOK_I: Utterance = ([(1.2, ("look",))], ("look", "i"))


def test_final_words_decoded_elsewhere_reach_tier_2_and_the_turn_off_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The recogniser's final words take 0.2 s to come back, within the rule's wait for
    them: tier 2 decides on them, as it would in-process, and the user's later turn is
    answered with its final words. The session never calls the blocking ``finish``."""
    finals = timed_work(monkeypatch)
    recognizer = ElsewhereRecognizer([LOOK_I, WHAT_ABOUT_TUESDAY], delay_s=0.2)
    session = elsewhere_session(recognizer)
    assert not session.errors
    record = session.timeline[0]
    assert (record.decision, record.reason) == ("commit", "words:look i")
    assert recognizer.calls == ["finish_later", "work"] * 2
    assert [f.words for f in finals] == [("look", "i"), ("what", "about", "tuesday")]
    # Each came when the work did, 0.2 s after the sound's end was known.
    assert finals[0].at >= 1.4 + 0.2 and finals[1].at >= 10.0 + 0.2
    users = [m.content for m in session.conversation.messages if m.role == "user"]
    assert users[-1] == "what about tuesday"


def test_tier_2_waits_for_final_words_decoded_elsewhere_as_for_a_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Final words 0.4 s late, past the rule's 0.3 s wait for final words: they are on
    their way, so it waits for them as for a reading (up to 0.8 s) and decides on them."""
    finals = timed_work(monkeypatch)
    session = elsewhere_session(ElsewhereRecognizer([LOOK_I, WHAT_ABOUT_TUESDAY], 0.4))
    assert not session.errors
    record = session.timeline[0]
    assert (record.decision, record.reason) == ("commit", "words:look i")
    assert record.decided_at is not None
    assert record.decided_at == pytest.approx(finals[0].at, abs=1e-3)
    users = [m.content for m in session.conversation.messages if m.role == "user"]
    assert users[0] == "look i"


def test_tier_2_decides_without_final_words_that_come_too_late(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Final words 1.2 s late, past the 0.8 s the rule waits for a reading: it commits on
    the partial "look", and the turn starts with those words too (it waits 0.5 s for
    final words); the late ones are not added to a turn already answered."""
    finals = timed_work(monkeypatch)
    session = elsewhere_session(ElsewhereRecognizer([LOOK_I, WHAT_ABOUT_TUESDAY], 1.2))
    assert not session.errors
    record = session.timeline[0]
    assert (record.decision, record.reason) == ("commit", "words:look")
    assert record.decided_at is not None and finals[0].at > record.decided_at
    assert finals[0].words == ("look", "i")
    users = [m.content for m in session.conversation.messages if m.role == "user"]
    assert users[0] == "look"


def test_words_decoded_elsewhere_reach_tier_2_before_a_late_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The recogniser's final words come back in 0.2 s, the second reading not before
    1.5 s: tier 2 gives up on the reading at its limit and decides on the recogniser's
    final words, not on its stale partial "look"."""
    finals = timed_work(monkeypatch)
    spotter = DroppableSpotter([([], ("okay",))])
    recognizer = ElsewhereRecognizer([LOOK_I, WHAT_ABOUT_TUESDAY], delay_s=0.2)
    session = elsewhere_session(recognizer, spotter=spotter)
    assert not session.errors
    record = session.timeline[0]
    assert (record.decision, record.reason) == ("commit", "words:look i")
    assert record.decided_at is not None and record.decided_at < 1.4 + 1.5
    assert spotter.calls[:2] == ["finish_later", "drop_later"]
    assert finals[0].words == ("look", "i") and finals[0].second_opinion is None


def test_a_final_reading_waits_for_final_words_decoded_elsewhere_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both a second reading and the recogniser's final words are deferred: the words
    reach the policy once, with the reading, whichever comes last."""
    finals = timed_work(monkeypatch)
    spotter = DeferredSpotter([([], ("okay",))])
    recognizer = ElsewhereRecognizer([LOOK_I, WHAT_ABOUT_TUESDAY], delay_s=0.2)
    session = elsewhere_session(recognizer, spotter=spotter)
    assert not session.errors
    record = session.timeline[0]
    assert (record.decision, record.reason) == ("resume", "spotted:okay")
    assert finals[0].words == ("look", "i") and finals[0].second_opinion == ("okay",)
    assert finals[0].at >= 1.4 + 0.2
    assert spotter.calls[:2] == ["finish_later", "work"]


def test_the_user_going_on_before_late_final_words_moves_on_without_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ "Look, | really?": the next sound starts before the first one's final words come
    back. Its partial words close the first utterance as the next begins, and the final
    words that come later are not delivered out of order."""
    finals = timed_work(monkeypatch)
    really: Utterance = ([], ("really",))
    recognizer = ElsewhereRecognizer([LOOK_I, really, WHAT_ABOUT_TUESDAY], delay_s=0.25)
    session = elsewhere_session(recognizer, [(1.0, 1.4), (1.7, 2.1)], until=5.0)
    assert not session.errors
    assert finals[0].words == ("look",) and finals[0].user_went_on
    assert 1.7 <= finals[0].at < 1.75
    assert [f.words for f in finals[1:]] == [("really",)]
    assert recognizer.calls == ["finish_later", "work"] * 2
    [record] = session.timeline
    assert (record.decision, record.reason) == ("resume", "backchannel:really")


def test_final_words_that_fail_elsewhere_leave_the_partial_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    finals = timed_work(monkeypatch)
    recognizer = ElsewhereRecognizer([LOOK_I, WHAT_ABOUT_TUESDAY], 0.1, fail=True)
    session = elsewhere_session(recognizer)
    assert session.errors == ["recogniser: RuntimeError: reader gone"]
    record = session.timeline[0]
    assert (record.decision, record.reason) == ("commit", "words:look")
    assert finals[0].words == ("look",)


class CreepingLoop(VirtualEventLoop):
    """Virtual time that moves a microsecond whenever it is read, as a real clock moves
    while a frame is processed: an event stamped with a later reading must never reach
    the policy before one stamped earlier."""

    def time(self) -> float:
        self.advance(1e-6)
        return super().time()


class PeekingSpotter(DeferredSpotter):
    """A second opinion that can read the overlap so far: ``heard`` in every reading of
    it, ``final`` in the last."""

    def __init__(
        self, heard: tuple[str, ...] = ("stop",), final: tuple[str, ...] = ("stop",)
    ) -> None:
        super().__init__([([], final)])
        self.heard = heard
        self.peeks: list[float] = []

    def peek_later(self) -> Callable[[], Sequence[str]]:
        self.peeks.append(asyncio.get_running_loop().time())
        heard = self.heard
        return lambda: heard


@pytest.mark.parametrize("loop", [VirtualEventLoop, CreepingLoop])
def test_a_second_opinion_that_reads_so_far_can_commit_before_the_sound_ends(
    loop: type[VirtualEventLoop],
) -> None:
    """A reader with ``peek_later`` is asked about the overlap while it lasts: here it hears
    "stop" half a second in, where the open recogniser has nothing useful."""
    spotter = PeekingSpotter()
    mumble: Utterance = ([(1.2, ("the",))], ("the", "top"))
    session = deferred_session(spotter, mumble, [(1.0, 2.0)], until=4.0, loop=loop)
    assert not session.errors
    record = session.timeline[0]
    assert (record.decision, record.reason) == ("commit", "spotted:stop")
    assert spotter.peeks and spotter.peeks[0] >= 1.3 - 1e-9  # 0.3 s after the onset
    # Two readings in a row said "stop" (0.3 s and 0.45 s in); the end comes at 2.0.
    assert len(spotter.peeks) == 2 and spotter.peeks[1] - spotter.peeks[0] >= 0.15 - 1e-9
    # The second reading decides, on the frame it is asked on.
    assert record.decided_at is not None and record.decided_at < 1.6
    assert record.decided_at == pytest.approx(spotter.peeks[1], abs=1e-3)


def test_a_lagged_reading_answers_later_in_virtual_time() -> None:
    """On the virtual clock a reading comes back at once unless it says how long it would
    take (:class:`~bargein.clock.Lagged`): then the sound goes on meanwhile, the next
    reading waits for it, and the decision comes with the answer, as on a busy machine."""
    spotter = PeekingSpotter()
    mumble: Utterance = ([(1.2, ("the",))], ("the", "top"))
    session = deferred_session(LaggedReader(spotter, 0.3), mumble, [(1.0, 2.0)], until=4.0)
    assert not session.errors
    record = session.timeline[0]
    assert (record.decision, record.reason) == ("commit", "spotted:stop")
    # The first reading is asked for 0.3 s in and answers 0.3 s later; only then is the
    # second asked for, and its answer, 0.3 s after that, commits.
    assert len(spotter.peeks) == 2
    assert spotter.peeks[1] - spotter.peeks[0] == pytest.approx(0.3, abs=0.033)
    assert record.decided_at == pytest.approx(spotter.peeks[1] + 0.3, abs=1e-3)


def test_no_reading_of_the_sound_so_far_starts_once_the_voice_has_stopped() -> None:
    """Past the last voiced frame the sound may be over, and its final reading, due within
    the segmenter's hangover, would queue behind a reading of the sound so far (on the
    real clock, a reading takes 0.2-0.5 s on a 2-core machine)."""
    spotter = PeekingSpotter(heard=(), final=("okay",))
    session = deferred_session(spotter, ([], ("oh", "kay")), [(1.0, 1.62)], until=4.0)
    assert not session.errors
    [record] = session.timeline
    assert (record.decision, record.reason) == ("resume", "spotted:okay")
    # Two readings while the voice lasts; the next, due 0.15 s after the second, would
    # fall inside the hangover after the voice stopped at 1.62.
    assert len(spotter.peeks) == 2 and spotter.peeks[1] + 0.15 > 1.62
    assert all(at <= 1.62 + 0.032 for at in spotter.peeks)
    assert spotter.calls == ["finish_later", "work"]


class SlowStartRecognizer(ScriptedRecognizer):
    """An open recogniser whose start takes a tenth of a second of loop time, as its
    catch-up on the pre-roll does on a busy real-clock loop."""

    def start(self) -> None:
        super().start()
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualEventLoop)
        loop.advance(0.12)


def test_the_first_reading_is_timed_from_the_onset_not_from_a_late_catch_up() -> None:
    spotter = PeekingSpotter(heard=(), final=("okay",))
    session = deferred_session(
        spotter, ([], ("oh", "kay")), [(1.0, 2.0)], until=4.0, recognizer=SlowStartRecognizer
    )
    assert not session.errors
    record = session.timeline[0]
    # The first frame at or after 0.3 s of sound, not 0.3 s after the late catch-up.
    assert spotter.peeks and record.onset_at + 0.3 - 1e-9 <= spotter.peeks[0]
    assert spotter.peeks[0] < record.onset_at + 0.3 + 0.04


class OkayPeeker(DeferredSpotter):
    """A second opinion that reads "okay" in the overlap so far: heard outright, or only
    chosen as the nearest of its phrases (:class:`ChosenWords`)."""

    def __init__(self, chosen: bool) -> None:
        super().__init__([([], ("okay",))])
        self.words: Sequence[str] = ChosenWords(("okay",)) if chosen else ("okay",)

    def peek_later(self) -> Callable[[], Sequence[str]]:
        return lambda: self.words


@pytest.mark.parametrize("chosen", [False, True])
def test_only_readings_heard_outright_resume_the_agent_while_the_user_talks(
    chosen: bool,
) -> None:
    spotter = OkayPeeker(chosen)
    drawl: Utterance = ([(1.2, ("oh",))], ("oh", "kay"))
    session = deferred_session(spotter, drawl, [(1.0, 2.0)], until=4.0)
    assert not session.errors
    record = session.timeline[0]
    assert record.decision == "resume" and record.decided_at is not None
    if chosen:
        # Not early: the sound's end and its final reading decide.
        assert record.reason == "spotted:okay" and record.decided_at >= 2.0
    else:
        # Two readings, 0.3 s and 0.45 s after the onset.
        assert record.reason == "spotted early:okay"
        assert record.decided_at == pytest.approx(record.onset_at + 0.45, abs=0.04)


class EchoReadingSpotter(DeferredSpotter):
    """Reads the overlap so far: "the pay" while its audio holds the agent's echo, nothing
    once it starts again on what the canceller lets through."""

    def __init__(self) -> None:
        super().__init__([([], ("the", "pay")), ([], ())])
        self.starts: list[float] = []
        self.peeks: list[float] = []

    def start(self) -> None:
        super().start()
        self.starts.append(asyncio.get_running_loop().time())

    def peek_later(self) -> Callable[[], Sequence[str]]:
        self.peeks.append(asyncio.get_running_loop().time())
        words: tuple[str, ...] = ("the", "pay") if self.index == 0 else ()
        return lambda: words


def test_the_reader_starts_again_when_the_canceller_takes_over_mid_sound() -> None:
    """Tier 1 paused for an echo the gate could not explain; the canceller then took over
    (``push_audio`` calls ``_echo_cancelled``). Readings of the audio from before hear the
    agent's words: the reader starts again on the cancelled audio, on a fresh schedule."""
    spotter = EchoReadingSpotter()

    async def main() -> Session:
        speaker = LoggingSpeaker([])
        session = Session(
            vad=LevelVAD(),
            recognizer=ScriptedRecognizer([([], ()), WHAT_ABOUT_TUESDAY]),
            second_opinion=spotter,
            llm=ScriptedLLM([AGENT, ANSWER]),
            tts=WordTTS(),
            sink=speaker,
        )
        async with session:
            asyncio.get_running_loop().call_at(1.42, session._echo_cancelled)
            await drive(session, speaker, [(1.0, 1.6)], until=4.0)
        return session

    with asyncio.Runner(loop_factory=VirtualEventLoop) as runner:
        session = runner.run(main())
    assert not session.errors
    assert len(spotter.starts) == 2 and spotter.starts[1] == pytest.approx(1.42, abs=0.02)
    # One reading of the echo (on the first frame 0.3 s after the onset), then none until
    # 0.3 s after the takeover: the second "the pay", which would have committed, is never
    # read.
    assert 1.3 <= spotter.peeks[0] < 1.42
    assert all(p >= spotter.starts[1] + 0.3 - 1e-9 for p in spotter.peeks[1:])
    record = session.timeline[0]
    assert (record.decision, record.reason) == ("resume", "no-words")


class GatedStream:
    """An LLM stream that produces its next token when the test opens the gate."""

    def __init__(self, gate: asyncio.Event) -> None:
        self.gate = gate
        self.emitted_at: list[float] = []

    def __aiter__(self) -> GatedStream:
        return self

    async def __anext__(self) -> str:
        if len(self.emitted_at) >= 3:
            raise StopAsyncIteration
        await self.gate.wait()
        self.gate.clear()
        self.emitted_at.append(asyncio.get_running_loop().time())
        return "word "

    async def aclose(self) -> None:
        pass

    def tokens_after(self, t: float) -> int:
        return sum(1 for at in self.emitted_at if at > t)


class GatedLLM:
    def __init__(self) -> None:
        self.gate = asyncio.Event()

    def stream(self, messages: Sequence[object], tools: Sequence[object] = ()) -> GatedStream:
        return GatedStream(self.gate)


def test_a_cancelled_reply_takes_no_llm_token_that_was_already_due() -> None:
    """The LLM's next token is due (its task will run on the next loop turn) when the
    reply is cancelled. The reply's task group would cancel that task only when the
    reply's own task next ran, after it: on a clock that moves while the loop works,
    the token came after the cancel. The cancel reaches the LLM task directly."""
    llm = GatedLLM()

    async def main() -> Session:
        session = Session(
            vad=LevelVAD(),
            recognizer=ScriptedRecognizer([]),
            llm=llm,
            tts=WordTTS(),
            sink=LoggingSpeaker([]),
        )
        async with session:
            session.request_reply()
            await asyncio.sleep(0.1)
            llm.gate.set()  # the token is due...
            session._cancel(1)  # ...and the user has the floor, in the same loop turn
            await asyncio.sleep(0.1)
        return session

    with asyncio.Runner(loop_factory=CreepingLoop) as runner:
        session = runner.run(main())
    reply = session.replies[1]
    assert reply.cancelled_at is not None and reply.settled
    assert reply.tokens_after_cancel == 0 and reply.tokens == 0
