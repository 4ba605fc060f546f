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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from bargein.bench.loop_lag import LagMonitor, watched
from bargein.bench.metrics import (
    ONSET_SLACK_S,
    audible_after_ms,
    format_table,
    state_word_errors,
    summarize,
)
from bargein.bench.microphone import (
    Microphone,
    ear_fields,
    microphone_for,
    stop_metrics,
    user_turn_fields,
)
from bargein.bench.progress import Progress
from bargein.bench.speaker import SimulatedSpeaker
from bargein.bench.trace import ScenarioTrace, trace_from_speaker
from bargein.clock import ClockKind, run, run_blocking, sleep_until
from bargein.decider import Decider
from bargein.echo import EchoMode
from bargein.policy import PolicyConfig, RestartPolicy, Tier1
from bargein.providers.base import (
    FloatAudio,
    StreamingRecognizer,
    TextToSpeech,
    Transcriber,
    VoiceActivityDetector,
    start_afresh,
)
from bargein.providers.scripted import ScriptedLLM
from bargein.scenario import Scenario, ScenarioError, load_set
from bargein.session import Session, SessionConfig, describe_error
from bargein.transports.stack import DEFAULT_SPOTTER, SpotterName

if TYPE_CHECKING:
    from bargein.providers.whisper_phrases import WhisperPhraseReader

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
    second_opinion: StreamingRecognizer | None = None


def default_stack(
    transcripts: bool = False,
    spotter: SpotterName = DEFAULT_SPOTTER,
    reader: WhisperPhraseReader | None = None,
    recognizer: StreamingRecognizer | None = None,
    phrase_spotter: StreamingRecognizer | None = None,
) -> Stack:
    """The embedded default: Silero VAD, pocketsphinx, Piper with the joe voice, Whisper as
    tier 2's second opinion, and with ``transcripts`` Whisper for the user's turns too
    (one model for both).

    ``recognizer`` replaces the in-process pocketsphinx (on the real clock, a stream on
    worker processes, as the server runs it); ``phrase_spotter`` likewise replaces the
    in-process phrase spotter of ``spotter="phrases"``.

    ``reader`` is another stack's Whisper reader: the two stacks' sessions then take
    turns on one model, as the server's sessions do.

    The agent's voice is Piper without sampling noise, so a run repeats exactly.
    """
    from bargein.providers.piper import CachedTTS, PiperTTS
    from bargein.providers.pocketsphinx import PocketSphinxRecognizer
    from bargein.providers.silero import SileroVAD

    transcriber = None
    if transcripts:
        from bargein.providers.whisper import WhisperTranscriber

        transcriber = WhisperTranscriber()
    second: StreamingRecognizer | None = None
    if spotter == "phrases":
        from bargein.providers.phrases import PocketSphinxPhraseSpotter

        second = phrase_spotter or PocketSphinxPhraseSpotter()
    elif spotter == "whisper":
        from bargein.providers.whisper_phrases import WhisperPhraseReader

        if reader is None:
            shared = transcriber.loaded_model if transcriber is not None else None
            reader = WhisperPhraseReader(shared=shared)
        second = reader.stream()
    tts = CachedTTS(PiperTTS.repeatable())
    recognizer = recognizer or PocketSphinxRecognizer()
    return Stack(SileroVAD(), recognizer, tts, transcriber, second)


@dataclass
class RunOptions:
    restart_policy: RestartPolicy = "respond"
    preemptive: bool = True
    turn_end: Literal["fixed", "semantic"] = PolicyConfig.turn_end
    """How the user's turn ends: a fixed silence, or one set by a turn-end detector."""
    first_token_s: float = 0.15
    tokens_per_s: float = 30.0
    settle_s: float = 1.0
    """How long to keep listening after the last event ends."""
    max_s: float = 150.0
    decider_factory: Callable[[], Decider] | None = None
    loudness_onset: bool = True
    tier1: Tier1 = PolicyConfig.tier1
    """What the agent's audio does the moment a sound overlaps it: pause, or duck."""
    duck_limit_s: float | None = PolicyConfig.duck_limit_s
    """With ``tier1="duck"``: pause after this long if tier 2 is still undecided."""
    echo: EchoMode = SessionConfig.echo
    """How the session keeps its own voice, fed back by a scenario's ``echo``, from
    interrupting it (see :mod:`bargein.echo`)."""


async def run_scenario(
    scenario: Scenario,
    stack: Stack,
    options: RunOptions,
    on_trace: Callable[[ScenarioTrace], None] | None = None,
) -> dict[str, Any]:
    """Play one scenario and measure it; with ``on_trace``, also hand over its trace."""
    speaker = SimulatedSpeaker(stack.tts.sample_rate, max_s=options.max_s + 5)
    llm = ScriptedLLM(
        [scenario.agent_text, FOLLOW_UP],
        first_token_s=options.first_token_s,
        tokens_per_s=options.tokens_per_s,
    )
    stack.vad.reset()
    for recognizer in (stack.recognizer, stack.second_opinion):
        start_afresh(recognizer)  # each scenario is a new call
    session = Session(
        vad=stack.vad,
        recognizer=stack.recognizer,
        second_opinion=stack.second_opinion,
        llm=llm,
        tts=stack.tts,
        sink=speaker,
        config=SessionConfig(
            policy=PolicyConfig(
                restart_policy=options.restart_policy,
                preemptive=options.preemptive,
                turn_end=options.turn_end,
                tier1=options.tier1,
                duck_limit_s=options.duck_limit_s,
            ),
            loudness_onset=options.loudness_onset,
            echo=options.echo,
        ),
        decider=options.decider_factory() if options.decider_factory else None,
        transcriber=stack.transcriber,
    )
    mic = microphone_for(scenario, speaker, MIC_RATE)
    fed: list[FloatAudio] | None = [] if on_trace is not None else None
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
            # What the loudspeaker has played by now, before the microphone hears its echo:
            # on a busy loop the speaker's own task may not have caught up yet.
            speaker.render_until(asyncio.get_running_loop().time() - origin)
            mic.place(speaker.first_sound_at.get(1))
            frame = mic.frame(MIC_CHUNK)
            if fed is not None:
                fed.append(frame)
            session.push_audio(frame)
            if _finished(session, speaker, mic, n * MIC_CHUNK / MIC_RATE, options, origin):
                break
        stop.set()
        await speaker_task
    # Off the loop on the real clock: measuring the loudspeaker's whole recording takes
    # a tenth of a second or more of CPU, which scenarios played alongside would wait for.
    result = await run_blocking(_measure, scenario, session, speaker, mic, origin)
    if on_trace is not None and fed is not None:
        audio = np.concatenate(fed) if fed else np.zeros(0, dtype=np.float32)
        on_trace(
            trace_from_speaker(
                scenario.name,
                audio,
                MIC_RATE,
                speaker,
                onset_s=result["onset_s"],
                records=result["timeline"],
            )
        )
    return result


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
    # The overlap that answers the scenario's sound: an echo may have started one before.
    own = next(
        (r for r in records if onset is None or r.onset_at - origin >= onset - ONSET_SLACK_S),
        records[0] if records else None,
    )
    if own is not None:
        # A sound tier 2 resumed over while it went on, and then paused for again, is one
        # overlap with two records: its decision is the last one.
        own = [r for r in records if r.onset_at == own.onset_at][-1]
    decision_ms = None
    if own is not None and own.decided_at is not None and onset is not None:
        decision_ms = (own.decided_at - origin - onset) * 1000
    # Response latency: from the end of the user's speech to the answer's first sound.
    answer = _answer(session) if interrupted else None
    response_ms = None
    speech_end = mic.speech_end()
    if answer is not None and answer in speaker.first_sound_at and speech_end is not None:
        response_ms = (speaker.first_sound_at[answer] - speech_end) * 1000
        if response_ms < 0:
            response_ms = None  # it answered something else before the user had finished
    preemptions = session.policy.preemptions
    # The tier-1 actions as the loudspeaker got them (pause, duck, clear) after onset.
    controls = None
    if interrupted and onset is not None:
        controls = [t for t, _ in speaker.controls if t >= onset - ONSET_SLACK_S]
    end = speaker.rendered  # the buffer holds minutes; the scenario, seconds
    ours = np.where(speaker.reply_at[:end] == 1, speaker.recording[:end], np.float32(0))
    return {
        **ear_fields(scenario, onset, stop, interrupted, speaker.paused_s.get(1, 0.0)),
        "ducked_ms": speaker.ducked_s.get(1, 0.0) * 1000 if not expect_interrupt else None,
        "heard_text": heard,
        "recorded_text": recorded,
        "state_word_errors": state_word_errors(heard, recorded),
        "llm_tokens_after_cancel": reply.tokens_after_cancel if reply else 0,
        "decision": own.decision if own else None,
        "decision_reason": own.reason if own else None,
        "decision_ms": decision_ms,
        "after_tier1_ms": audible_after_ms(ours, speaker.sample_rate, controls),
        "response_ms": response_ms,
        "llm_calls": len(session.replies),
        "preemptive_calls": len(preemptions),
        "preemptive_discarded": sum(1 for v in preemptions.values() if v == "discarded"),
        **user_turn_fields(scenario, _last_user_turn(session), interrupted),
        "timeline": [_relative(r.as_dict(), origin) for r in session.timeline],
        "canceller_started_s": _canceller_started(session, origin),
        "errors": list(session.errors),
    }


def _canceller_started(session: Session, origin: float) -> float | None:
    """When ``--echo auto`` started its canceller, on the scenario's timeline (None: it
    did not). A canceller started where there is no echo holds back the user's first
    syllables, so a late tier 1 is worth checking against this."""
    echo = session.echo
    started = echo.canceller_started_at if echo is not None else None
    return None if started is None else started - origin


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
    on_trace: Callable[[ScenarioTrace], None] | None = None,
    repeat: int = 1,
    jobs: int = 1,
    stack_factory: Callable[[], Stack] | None = None,
) -> dict[str, Any]:
    """Run every scenario of ``folder``; errors in one scenario never stop the others.

    ``repeat`` plays the set that many times (each result carries its ``run``, from 1).
    On the real clock, ``jobs`` plays that many scenarios at once, each with its own
    stack from ``stack_factory`` (sessions share no model state); on the virtual clock
    the CPU is not the clock, so scenarios always run one at a time. ``on_trace``
    receives each scenario's :class:`ScenarioTrace` (none are kept otherwise).
    """
    if repeat < 1 or jobs < 1:
        raise ValueError("repeat and jobs must be at least 1")
    options = options or RunOptions()
    scenarios, errors = load_set(folder)
    if only:
        scenarios = [s for s in scenarios if s.kind in only]
    factory = stack_factory or default_stack
    stack = stack or factory()
    plan = [(k, s) for k in range(1, repeat + 1) for s in scenarios]
    problems = [str(e) for e in errors]
    bar = Progress(len(plan), enabled=progress)
    lag = LagMonitor()
    if clock == "real" and jobs > 1 and len(plan) > 1:
        stacks = [stack, *(factory() for _ in range(min(jobs, len(plan)) - 1))]
        outcomes = run(watched(_run_together(plan, stacks, options, on_trace, bar), lag), "real")
    else:
        outcomes = []
        for k, scenario in plan:

            def play(scenario: Scenario = scenario) -> dict[str, Any]:
                work = run_scenario(scenario, stack, options, on_trace)
                return run(watched(work, lag) if clock == "real" else work, clock)

            outcomes.append(_run_one(play, scenario, k, bar))
    bar.close()
    results = [r for r in outcomes if isinstance(r, dict)]
    problems += [r for r in outcomes if isinstance(r, str)]
    return {
        "clock": clock,
        "repeat": repeat,
        "jobs": jobs if clock == "real" else 1,
        "summary": summarize(results),
        "scenarios": results,
        "errors": problems,
        **({"loop_lag": lag.summary()} if clock == "real" else {}),
    }


def _run_one(
    play: Callable[[], dict[str, Any]], scenario: Scenario, k: int, bar: Progress
) -> dict[str, Any] | str:
    """One scenario's result, or the line that says why it has none."""
    bar.start(scenario.name)
    try:
        return {**play(), "run": k}
    except ScenarioError as exc:
        return str(exc)
    except Exception as exc:  # one broken scenario must not stop the set
        return f"{scenario.path.name}: run failed: {describe_error(exc)}"
    finally:
        bar.finish(scenario.name)


async def _run_together(
    plan: Sequence[tuple[int, Scenario]],
    stacks: Sequence[Stack],
    options: RunOptions,
    on_trace: Callable[[ScenarioTrace], None] | None,
    bar: Progress,
) -> list[dict[str, Any] | str]:
    """Play ``plan`` on the real clock, one worker per stack, results in plan order."""
    outcomes: list[dict[str, Any] | str] = [""] * len(plan)
    queue = list(enumerate(plan))

    async def worker(stack: Stack) -> None:
        while queue:
            i, (k, scenario) = queue.pop(0)
            bar.start(scenario.name)
            try:
                outcomes[i] = {**await run_scenario(scenario, stack, options, on_trace), "run": k}
            except ScenarioError as exc:
                outcomes[i] = str(exc)
            except Exception as exc:  # one broken scenario must not stop the set
                outcomes[i] = f"{scenario.path.name}: run failed: {describe_error(exc)}"
            finally:
                bar.finish(scenario.name)

    async with asyncio.TaskGroup() as group:
        for stack in stacks:
            group.create_task(worker(stack))
    return outcomes


def print_report(results: dict[str, Any]) -> None:
    print(format_table(results["summary"]))
    lag = results.get("loop_lag")
    if lag and lag.get("samples"):
        print(
            f"event loop lag: p50 {lag['p50_ms']} / p95 {lag['p95_ms']} / p99 {lag['p99_ms']} / "
            f"max {lag['max_ms']} ms, {lag['over_100ms']} of {lag['samples']} samples 100 ms late "
            "or more (every session on the loop waits that long)"
        )
    for problem in results.get("errors", []):
        print(f"error: {problem}")
