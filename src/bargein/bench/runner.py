"""Plays a scenario set through a real session and measures what the user heard.

At time 0 the runner asks the session for its reply; the scripted LLM streams the
scenario's ``agent_text`` and the real TTS voices it into a :class:`SimulatedSpeaker`.
Every 10 ms the runner hands the session the next microphone chunk: the scenario's sounds
placed at their anchors, plus the speaker's own output as echo when the scenario asks
for it. The run ends when the reply has played out (and every event has been heard), or,
after an interruption, when the session has taken the user's turn and started its next
reply.

On the virtual clock (:mod:`bargein.clock`) processing time does not count, so the
figures are the algorithm's own latency, exactly repeatable.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bargein.bench.metrics import audible_after_ms, format_table, state_word_errors, summarize
from bargein.bench.microphone import (
    Microphone,
    ear_fields,
    microphone_for,
    stop_metrics,
    user_turn_fields,
)
from bargein.bench.speaker import SimulatedSpeaker
from bargein.clock import ClockKind, run, sleep_until
from bargein.decider import Decider
from bargein.policy import PolicyConfig, RestartPolicy
from bargein.providers.base import (
    StreamingRecognizer,
    TextToSpeech,
    Transcriber,
    VoiceActivityDetector,
)
from bargein.providers.scripted import ScriptedLLM
from bargein.scenario import Scenario, ScenarioError, load_set
from bargein.session import Session, SessionConfig, describe_error

MIC_RATE = 16000
MIC_CHUNK = 160
"""The microphone delivers 10 ms at a time, as WebRTC does (telephony sends 20 ms)."""
FOLLOW_UP = "Of course. Let me help you with that right away."


@dataclass
class Stack:
    """The providers shared by every scenario of a run (models load once)."""

    vad: VoiceActivityDetector
    recognizer: StreamingRecognizer
    tts: TextToSpeech
    transcriber: Transcriber | None = None


def default_stack(transcripts: bool = False) -> Stack:
    """The embedded default: Silero VAD, pocketsphinx, Piper with the joe voice, and with
    ``transcripts`` Whisper for the user's turns.

    The agent's voice is Piper without sampling noise, so a run repeats exactly.
    """
    from bargein.providers.piper import CachedTTS, PiperTTS
    from bargein.providers.pocketsphinx import PocketSphinxRecognizer
    from bargein.providers.silero import SileroVAD

    transcriber = None
    if transcripts:
        from bargein.providers.whisper import WhisperTranscriber

        transcriber = WhisperTranscriber()
    tts = CachedTTS(PiperTTS.repeatable())
    return Stack(SileroVAD(), PocketSphinxRecognizer(), tts, transcriber)


@dataclass
class RunOptions:
    restart_policy: RestartPolicy = "respond"
    preemptive: bool = True
    first_token_s: float = 0.15
    tokens_per_s: float = 30.0
    settle_s: float = 1.0
    """How long to keep listening after the last event ends."""
    max_s: float = 150.0
    decider_factory: Callable[[], Decider] | None = None
    loudness_onset: bool = True


async def run_scenario(scenario: Scenario, stack: Stack, options: RunOptions) -> dict[str, Any]:
    speaker = SimulatedSpeaker(stack.tts.sample_rate, max_s=options.max_s + 5)
    llm = ScriptedLLM(
        [scenario.agent_text, FOLLOW_UP],
        first_token_s=options.first_token_s,
        tokens_per_s=options.tokens_per_s,
    )
    stack.vad.reset()
    session = Session(
        vad=stack.vad,
        recognizer=stack.recognizer,
        llm=llm,
        tts=stack.tts,
        sink=speaker,
        config=SessionConfig(
            policy=PolicyConfig(
                restart_policy=options.restart_policy, preemptive=options.preemptive
            ),
            loudness_onset=options.loudness_onset,
        ),
        decider=options.decider_factory() if options.decider_factory else None,
        transcriber=stack.transcriber,
    )
    mic = microphone_for(scenario, speaker, MIC_RATE)
    async with session:
        speaker.on_playout = session.playout
        stop = asyncio.Event()
        # Times in the results are seconds from the reply request (the clock's own on
        # a virtual loop, which starts at 0).
        origin = asyncio.get_running_loop().time()
        speaker_task = asyncio.create_task(speaker.run(stop, origin))
        session.request_reply()
        n = 0
        while True:
            n += 1
            await sleep_until(origin + n * MIC_CHUNK / MIC_RATE)
            mic.place(speaker.first_sound_at.get(1))
            session.push_audio(mic.frame(MIC_CHUNK))
            if _finished(session, speaker, mic, n * MIC_CHUNK / MIC_RATE, options, origin):
                break
        stop.set()
        await speaker_task
    return _measure(scenario, session, speaker, mic, origin)


def _finished(
    session: Session,
    speaker: SimulatedSpeaker,
    mic: Microphone,
    t: float,
    options: RunOptions,
    origin: float,
) -> bool:
    if t >= options.max_s:
        return True
    first = session.replies.get(1)
    if first is None:
        return False
    if first.cancelled_at is not None:
        # Run on until the answer to the interruption is heard, to measure its latency.
        return _answer(session) in speaker.first_sound_at or (
            not session.policy.user_speaking and t - (first.cancelled_at - origin) > 10.0
        )
    if 1 not in session.recorded:
        return False
    last = mic.last_end()
    return last is not None and t >= last + options.settle_s


def _answer(session: Session) -> int | None:
    """The reply that answered the interruption: the first later one that was released."""
    for reply_id, reply in session.replies.items():
        if reply_id > 1 and reply.released.is_set():
            return reply_id
    return None


def _last_user_turn(session: Session) -> str:
    """The user's last message: in a scenario, the turn that interrupted the agent."""
    users = [m.content for m in session.conversation.messages if m.role == "user"]
    return users[-1] if users else ""


def _measure(
    scenario: Scenario,
    session: Session,
    speaker: SimulatedSpeaker,
    mic: Microphone,
    origin: float,
) -> dict[str, Any]:
    onset = mic.onset()
    reply = session.replies.get(1)
    interrupted = reply is not None and reply.cancelled_at is not None
    expect_interrupt = scenario.expect == "interrupt"
    stop = stop_metrics(
        speaker, 1, onset, expect_interrupt=expect_interrupt, interrupted=interrupted
    )

    heard = reply.tracker.heard_text(speaker.played.get(1, 0)) if reply else ""
    recorded = session.recorded.get(1, "")
    records = [r for r in session.timeline if r.reply_id == 1]
    decision_ms = None
    if records and records[0].decided_at is not None and onset is not None:
        decision_ms = (records[0].decided_at - origin - onset) * 1000
    # Response latency: from the end of the user's speech to the answer's first sound.
    answer = _answer(session) if interrupted else None
    response_ms = None
    speech_end = mic.speech_end()
    if answer is not None and answer in speaker.first_sound_at and speech_end is not None:
        response_ms = (speaker.first_sound_at[answer] - speech_end) * 1000
    preemptions = session.policy.preemptions
    tier1_at = records[0].tier1_at - origin if records and interrupted else None
    ours = np.where(speaker.reply_at == 1, speaker.recording, np.float32(0))
    return {
        **ear_fields(scenario, onset, stop, interrupted, speaker.paused_s.get(1, 0.0)),
        "heard_text": heard,
        "recorded_text": recorded,
        "state_word_errors": state_word_errors(heard, recorded),
        "llm_tokens_after_cancel": reply.tokens_after_cancel if reply else 0,
        "decision": records[0].decision if records else None,
        "decision_reason": records[0].reason if records else None,
        "decision_ms": decision_ms,
        "after_tier1_ms": audible_after_ms(ours, speaker.sample_rate, tier1_at),
        "response_ms": response_ms,
        "llm_calls": len(session.replies),
        "preemptive_calls": len(preemptions),
        "preemptive_discarded": sum(1 for v in preemptions.values() if v == "discarded"),
        **user_turn_fields(scenario, _last_user_turn(session), interrupted),
        "timeline": [_relative(r.as_dict(), origin) for r in session.timeline],
        "errors": list(session.errors),
    }


def _relative(record: dict[str, object], origin: float) -> dict[str, object]:
    return {
        k: v - origin if k.endswith("_at") and isinstance(v, float) else v
        for k, v in record.items()
    }


def run_set(
    folder: Path,
    *,
    clock: ClockKind = "virtual",
    options: RunOptions | None = None,
    only: Sequence[str] = (),
    stack: Stack | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every scenario of ``folder``; errors in one scenario never stop the others."""
    options = options or RunOptions()
    scenarios, errors = load_set(folder)
    if only:
        scenarios = [s for s in scenarios if s.kind in only]
    stack = stack or default_stack()
    results: list[dict[str, Any]] = []
    problems = [str(e) for e in errors]
    for i, scenario in enumerate(scenarios, 1):
        if progress:
            print(f"[{i}/{len(scenarios)}] {scenario.name}", file=sys.stderr, flush=True)
        try:
            results.append(run(run_scenario(scenario, stack, options), clock))
        except ScenarioError as exc:
            problems.append(str(exc))
        except Exception as exc:  # one broken scenario must not stop the set
            problems.append(f"{scenario.path.name}: run failed: {describe_error(exc)}")
    return {
        "clock": clock,
        "summary": summarize(results),
        "scenarios": results,
        "errors": problems,
    }


def print_report(results: dict[str, Any]) -> None:
    print(format_table(results["summary"]))
    for problem in results.get("errors", []):
        print(f"error: {problem}")
