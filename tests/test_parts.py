"""The small pure parts: VAD segmentation, the playout tracker, the conversation."""

from __future__ import annotations

import numpy as np
import pytest

from bargein.conversation import Conversation, InterruptedReply, build_llm_input
from bargein.playout import PlayoutTracker
from bargein.policy import SpeechEnded, SpeechStarted
from bargein.providers.base import SpeechChunk, WordTiming
from bargein.providers.scripted import tokenize
from bargein.vad import LoudnessGate, SpeechSegmenter


def test_segmenter_starts_on_one_frame_and_ends_after_the_hangover() -> None:
    seg = SpeechSegmenter(end_silence_s=0.1)
    assert seg.push(0.032, 0.1) is None
    assert seg.push(0.064, 0.9) == SpeechStarted(0.064)
    assert seg.push(0.096, 0.4) is None  # between the two thresholds: still speech
    assert seg.push(0.128, 0.1) is None  # quiet for 0 s
    assert seg.push(0.16, 0.6) is None  # a breath, not an end
    assert seg.push(0.192, 0.1) is None
    assert seg.push(0.224, 0.1) is None
    assert seg.push(0.256, 0.1) is None
    assert seg.push(0.288, 0.1) == SpeechEnded(0.288)
    assert not seg.active


def test_segmenter_ends_sooner_when_the_caller_asks_for_a_shorter_hangover() -> None:
    seg = SpeechSegmenter(end_silence_s=0.25)
    assert seg.push(0.032, 0.9) == SpeechStarted(0.032)
    assert seg.push(0.064, 0.1, end_silence_s=0.06) is None  # quiet since 0.032
    assert seg.push(0.096, 0.1, end_silence_s=0.06) == SpeechEnded(0.096)
    # Without the override the field stands again.
    assert seg.push(0.128, 0.9) == SpeechStarted(0.128)
    assert seg.push(0.16, 0.1) is None
    assert seg.push(0.192, 0.1) is None
    assert seg.push(0.384, 0.1) == SpeechEnded(0.384)


def test_segmenter_can_demand_several_frames() -> None:
    seg = SpeechSegmenter(start_frames=2)
    assert seg.push(0.0, 0.9) is None
    assert seg.push(0.1, 0.2) is None
    assert seg.push(0.2, 0.9) is None
    assert seg.push(0.3, 0.9) == SpeechStarted(0.3)
    with pytest.raises(ValueError):
        SpeechSegmenter(start_threshold=0.3, end_threshold=0.5)


def chunk(words: list[str], each: int, rate: int = 100) -> SpeechChunk:
    timings = tuple(WordTiming(w, i * each, (i + 1) * each) for i, w in enumerate(words))
    return SpeechChunk(" ".join(words), np.zeros(len(words) * each, np.float32), rate, timings)


def test_tracker_maps_the_cursor_to_words_across_chunks() -> None:
    tracker = PlayoutTracker(100)
    tracker.add(chunk(["Hello", "there."], 10))
    tracker.add(chunk(["How", "are", "you?"], 20))
    assert tracker.total_samples == 80
    assert tracker.heard_words(0) == []
    assert tracker.heard_words(4) == []
    assert tracker.heard_words(5) == ["Hello"]  # half of the word played
    assert tracker.heard_words(29) == ["Hello", "there."]
    assert tracker.heard_words(30) == ["Hello", "there.", "How"]
    assert tracker.unheard_words(30) == ["are", "you?"]
    assert tracker.heard_text(80) == tracker.all_text() == "Hello there. How are you?"
    with pytest.raises(ValueError, match="Hz"):
        tracker.add(chunk(["x"], 5, rate=200))


def test_conversation_merges_and_builds_inputs() -> None:
    conv = Conversation(system_prompt="S")
    conv.add_user("book a table")
    conv.extend_last_user("for two")
    assert [m.content for m in conv.messages] == ["book a table for two"]
    conv.add_assistant("Sure, for what", interrupted=True)
    conv.add_user("tonight")
    cut = InterruptedReply(heard="Sure, for what", unsaid="time would you like?")
    restart = build_llm_input(conv, "restart", cut)
    assert [m.content for m in restart] == ["S", "book a table for two", "tonight"]
    respond = build_llm_input(conv, "respond", cut)
    assert respond[2].interrupted and "Sure, for what" in respond[-1].content
    resume = build_llm_input(conv, "resume", cut)
    assert "time would you like?" in resume[-1].content
    # Stored history never carries the per-call instruction.
    assert all(m.role != "system" for m in conv.messages)


def test_tokens_reassemble_the_text() -> None:
    text = "Sure. Your flight leaves at nine."
    assert "".join(tokenize(text)) == text
    assert len(tokenize(text)) == len(text.split())


def test_loudness_gate_fires_on_a_jump_above_the_floor() -> None:
    gate = LoudnessGate(16000)
    quiet = np.full(1600, 1e-4, dtype=np.float32)  # -80 dBFS hum
    assert not gate.push(quiet)
    assert gate.floor_dbfs < -75
    assert gate.push(np.full(160, 0.05, dtype=np.float32))  # -26 dBFS: a voice or a bang
    assert not gate.push(np.full(160, 0.001, dtype=np.float32))  # -60 dBFS: under -42


def test_frames_that_arrive_in_a_burst_still_get_the_whole_confirmation_window() -> None:
    """A stall delays the frames, not the voice in them: the window counts audio too."""
    seg = SpeechSegmenter(confirm_s=0.25, frame_s=0.032)
    assert seg.push_loud(1.0) == SpeechStarted(1.0, voiced=False)
    # 400 ms of network stall, then the frames come all at once: the voice is in the
    # fourth, 128 ms of audio after the start. Wall time alone would withdraw at once.
    for _ in range(3):
        assert seg.push(1.4, 0.1) is None
    assert seg.push(1.4, 0.6) is None
    assert seg.confirmed and seg.active
    # Audio that never becomes a voice is still withdrawn, once 250 ms of it were heard.
    seg = SpeechSegmenter(confirm_s=0.25, frame_s=0.032)
    seg.push_loud(1.0)
    results = [seg.push(1.4, 0.1) for _ in range(7)]
    assert results[:6] == [None] * 6
    assert results[6] == SpeechEnded(1.4)


def test_an_unconfirmed_loud_start_is_withdrawn_and_the_gate_rests() -> None:
    seg = SpeechSegmenter(confirm_s=0.1, refractory_s=0.5)
    assert seg.push_loud(1.0) == SpeechStarted(1.0, voiced=False)
    assert seg.push_loud(1.01) is None  # already open
    assert seg.push(1.032, 0.1) is None
    assert seg.push(1.064, 0.1) is None
    assert seg.push(1.096, 0.1) is None
    assert seg.push(1.128, 0.1) == SpeechEnded(1.128)
    assert not seg.confirmed
    assert seg.push_loud(1.3) is None  # refractory
    assert seg.push_loud(1.7) == SpeechStarted(1.7, voiced=False)
    assert seg.push(1.732, 0.4) is None  # a voice: confirmed, and now ends the normal way
    assert seg.confirmed and seg.active


def test_tracker_says_how_long_ago_a_question_ended() -> None:
    tracker = PlayoutTracker(100)
    tracker.add(chunk(["Shall", "I", "book", "it?"], 10))  # the question ends at 40
    tracker.add(chunk(["It", "leaves", "at", "nine."], 10))  # the next sentence ends at 80
    assert tracker.after_question_s(0) is None  # nothing played
    assert tracker.after_question_s(25) is None  # inside the question: no answer yet
    assert tracker.after_question_s(35) == pytest.approx(-0.05)  # over its last word
    assert tracker.after_question_s(40) == pytest.approx(0.0)
    assert tracker.after_question_s(65) == pytest.approx(0.25)  # into the next sentence
    assert tracker.after_question_s(75) is None  # the next one, no question, is ending
    statement = PlayoutTracker(100)
    statement.add(chunk(["He", "asked", '"why?"'], 10))
    assert statement.after_question_s(30) == pytest.approx(0.0)  # a quoted question
    statement.add(chunk(["Fine."], 10))
    assert statement.after_question_s(40) is None
