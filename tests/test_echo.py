"""The agent's own echo: the gate's evidence, the canceller, the reference, the session."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from bargein.audio import write_wav
from bargein.bench.runner import RunOptions, Stack, run_set
from bargein.echo import EchoControl, EchoGate, PlayoutReference
from bargein.providers.base import FloatAudio, SpeechChunk, WordTiming
from bargein.providers.webrtc_aec import WebRtcEchoCanceller
from bargein.vad import LoudnessGate
from tests.doubles import LevelVAD, ScriptedRecognizer

RATE = 16000
BLOCK = 160


def speech_like(seconds: float, seed: int, f0: float = 120.0, rms: float = 0.1) -> FloatAudio:
    """Voiced syllables (a gliding pitch and its harmonics) with hissy consonants and pauses."""
    rng = np.random.default_rng(seed)
    n = round(seconds * RATE)
    t = np.arange(n) / RATE
    pitch = f0 * (1 + 0.15 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    voiced = sum(np.sin(k * phase + rng.uniform(0, 6)) / k for k in range(1, 14))
    hiss = np.diff(rng.standard_normal(n + 1)) * 0.3
    envelope = np.zeros(n)
    pos = 0
    while pos < n:
        length = int(rng.uniform(0.12, 0.3) * RATE)
        envelope[pos : pos + length] = np.sin(np.pi * np.arange(length) / length)[: n - pos]
        pos += length + int(rng.uniform(0.02, 0.15) * RATE)
    consonant = (envelope > 0) & (np.sin(2 * np.pi * 3.1 * t + rng.uniform(0, 6)) > 0.7)
    signal = np.asarray(np.where(consonant, hiss, voiced) * envelope, dtype=np.float64)
    scaled: FloatAudio = (signal * rms / np.sqrt(np.mean(signal**2))).astype(np.float32)
    return scaled


def delayed(signal: FloatAudio, delay_ms: float, gain_db: float) -> FloatAudio:
    d = round(delay_ms * RATE / 1000)
    out = np.zeros_like(signal)
    out[d:] = signal[: len(signal) - d] * np.float32(10 ** (gain_db / 20))
    return out


def run_gate(mic: FloatAudio, ref: FloatAudio, gate: EchoGate) -> tuple[list[bool], FloatAudio]:
    echo, out = [], np.zeros_like(mic)
    for i in range(0, len(mic) - BLOCK + 1, BLOCK):
        out[i : i + BLOCK], evidence = gate.process(mic[i : i + BLOCK], ref[i : i + BLOCK], i)
        echo.append(evidence.echo)
    return echo, out


def level_db(x: npt.NDArray[np.floating[Any]]) -> float:
    return 10 * float(np.log10(float(np.mean(x.astype(np.float64) ** 2)) + 1e-12))


AGENT = speech_like(4.0, seed=1)
USER = speech_like(4.0, seed=2, f0=210.0)


@pytest.mark.parametrize("delay_ms", [40, 150, 300])
@pytest.mark.parametrize("gain_db", [-25, -12, -6])
def test_a_delayed_attenuated_reference_is_echo_and_never_opens_tier_1(
    delay_ms: float, gain_db: float
) -> None:
    mic = delayed(AGENT, delay_ms, gain_db)
    gate = EchoGate()
    echo, out = run_gate(mic, AGENT, gate)
    blocks = [mic[i : i + BLOCK] for i in range(0, len(mic) - BLOCK + 1, BLOCK)]
    audible = [e for e, b in zip(echo, blocks, strict=True) if level_db(b) > -50]
    assert audible and sum(audible) >= 0.98 * len(audible)
    # What the VAD and the loudness gate get is near silence: tier 1 cannot fire on it.
    loudness = LoudnessGate(RATE)
    assert not any(loudness.push(out[i : i + BLOCK]) for i in range(0, len(out), BLOCK))
    assert level_db(out) < level_db(mic) - 25
    # The delay is known to within a millisecond (a 10 ms block is the unit of judgement).
    assert gate.delay is not None
    assert abs(gate.delay - delay_ms * RATE / 1000) <= RATE / 1000


@pytest.mark.parametrize(("delay_ms", "gain_db"), [(40, -6), (150, -12), (300, -25)])
def test_a_user_talking_over_the_echo_is_not_echo(delay_ms: float, gain_db: float) -> None:
    echo_part = delayed(AGENT, delay_ms, gain_db)
    user = USER * np.float32(0.5)
    mic = echo_part + user
    echo, out = run_gate(mic, AGENT, EchoGate())
    called, dominant = 0, 0
    for k, is_echo in enumerate(echo):
        part = slice(k * BLOCK, (k + 1) * BLOCK)
        if level_db(user[part]) > -45 and level_db(user[part]) > level_db(echo_part[part]) - 6:
            dominant += 1
            called += is_echo
    assert dominant > 100 and called <= 0.01 * dominant
    # The user's voice reaches the VAD at its own level, with the echo taken out.
    assert abs(level_db(out) - level_db(user)) < 1.5
    assert level_db(out - user) < level_db(user) - 10


def test_a_voice_with_no_echo_searches_for_the_delay_once_in_four_blocks() -> None:
    """The delay search is the gate's costliest step; a user talking over the agent
    through a headset (nothing to find) must not run it on every 10 ms block."""
    gate = EchoGate(search_every=4)
    searches = 0
    real_search = gate._search

    def counting(*args: Any) -> tuple[int, float]:
        nonlocal searches
        searches += 1
        return real_search(*args)

    gate._search = counting  # type: ignore[method-assign,assignment]
    user = USER[: 40 * BLOCK]
    echo, _ = run_gate(user, AGENT[: len(user)], gate)
    assert not any(echo)
    loud = sum(level_db(user[i : i + BLOCK]) > -65 for i in range(0, len(user), BLOCK))
    assert loud >= 30
    assert loud / 4 - 3 <= searches <= loud / 4 + 4
    # A quiet block ends the run: the next loud block searches at once.
    before = searches
    gate.process(np.zeros(BLOCK, dtype=np.float32), AGENT[:BLOCK], 1.0)
    tone = (0.3 * np.sin(np.arange(BLOCK) * 0.2)).astype(np.float32)
    gate.process(tone, AGENT[BLOCK : 2 * BLOCK], 1.01)
    assert searches == before + 1


def test_nothing_runs_without_a_reference() -> None:
    gate = EchoGate()
    echo, out = run_gate(USER, np.zeros_like(USER), gate)
    assert not any(echo) and gate.delay is None
    assert np.array_equal(out, USER)
    control = EchoControl("gate", 16000)
    # No agent voice within reach: the audio passes untouched, not even buffered.
    head = USER[:100]
    assert control.process(head, 1.0) is head


def test_the_canceller_removes_at_least_10_db_of_a_room_echo() -> None:
    rng = np.random.default_rng(3)
    path = np.zeros(2400 + 800)
    path[2400] = 1.0
    path[2401:] = rng.standard_normal(799) * np.exp(-np.arange(799) / 150) * 0.2
    path *= 10 ** (-10 / 20)
    far = speech_like(6.0, seed=4)
    mic = np.convolve(far, path)[: len(far)].astype(np.float32)
    mic += rng.standard_normal(len(mic)).astype(np.float32) * np.float32(1e-4)
    aec = WebRtcEchoCanceller()
    out = np.concatenate(
        [aec.process(mic[i : i + BLOCK], far[i : i + BLOCK]) for i in range(0, len(mic), BLOCK)]
    )
    converged = slice(3 * RATE, 6 * RATE)
    erle = level_db(mic[converged]) - level_db(out[converged])
    assert erle >= 10.0
    aec.reset()


def test_the_reference_follows_a_ticking_cursor_to_a_fraction_of_a_sample() -> None:
    src_rate = 22050
    reply = speech_like(3.0, seed=5)  # played at 22.05 kHz: any signal will do
    ref = PlayoutReference(src_rate, RATE)
    ref.write(1, reply[: len(reply) // 2])
    ref.write(1, reply[len(reply) // 2 :])
    start = 0.503
    rendered, truth = [], []
    for tick in range(1, 150):
        at = start + tick * 0.01
        # The sink plays whole samples per tick, so each report is off by up to one.
        ref.report(1, round(tick * 0.01 * src_rate), at)
        rendered.append(ref.render(BLOCK, at + 0.004))
        times = at + 0.004 - BLOCK / RATE + np.arange(BLOCK) / RATE
        truth.append(np.interp((times - start) * src_rate, np.arange(len(reply)), reply))
    got, want = np.concatenate(rendered[20:]), np.concatenate(truth[20:])
    assert level_db(got - want) < level_db(want) - 30
    # Paused: the reference stops at once, however late the next report would be.
    ref.stop(start + 1.5)
    assert not ref.render(BLOCK, start + 1.52).any()
    assert not ref.active(start + 1.52)


# -- the session, on the virtual clock ------------------------------------------------------

WORD_S = 0.3
AGENT_TEXT = " ".join(f"word{i}." if i % 6 == 5 else f"word{i}" for i in range(24))


@dataclass
class VoiceTTS:
    """Speech-like audio, WORD_S per word, with exact word timings."""

    sample_rate: int = RATE
    _seed: int = 10
    spoken: list[str] = field(default_factory=list)

    def synthesize(self, text: str) -> Iterator[SpeechChunk]:
        words = text.split()
        self._seed += 1
        audio = speech_like(len(words) * WORD_S, seed=self._seed, rms=0.2)
        size = round(WORD_S * RATE)
        timings = tuple(WordTiming(w, i * size, (i + 1) * size) for i, w in enumerate(words))
        yield SpeechChunk(text, audio, RATE, timings)


def echo_scenario(folder: Path, name: str, expect: str, events: list[dict[str, object]]) -> None:
    doc = {
        "format": "bargein-scenario/1",
        "name": name,
        "kind": "echo",
        "expect": expect,
        "agent_text": AGENT_TEXT,
        "events": events,
        "echo": {"gain_db": -6, "delay_ms": 120},
    }
    (folder / f"{name}.json").write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def echo_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    folder = tmp_path_factory.mktemp("echo")
    write_wav(folder / "user.wav", speech_like(1.5, seed=7, f0=220.0, rms=0.3), RATE)
    echo_scenario(folder, "echo-only", "continue", [])
    echo_scenario(folder, "echo-and-user", "interrupt", [{"at_s": 2.0, "audio": "user.wav"}])
    results: dict[str, dict[str, object]] = {}
    for mode in ("off", "gate", "aec", "both", "auto"):
        recognizer = ScriptedRecognizer([([(0.0, ("hold", "on"))], ("hold", "on"))])
        stack = Stack(LevelVAD(), recognizer, VoiceTTS())
        run = run_set(folder, stack=stack, options=RunOptions(echo=mode), progress=False)
        assert not run["errors"]
        for scenario in run["scenarios"]:
            results[f"{scenario['name']}/{mode}"] = scenario
    return results


def test_without_echo_handling_the_agent_interrupts_itself(
    echo_results: dict[str, dict[str, object]],
) -> None:
    assert echo_results["echo-only/off"]["false_interruption"]


@pytest.mark.parametrize("mode", ["gate", "aec", "both", "auto"])
def test_its_own_echo_never_interrupts_the_agent(
    echo_results: dict[str, dict[str, object]], mode: str
) -> None:
    result = echo_results[f"echo-only/{mode}"]
    assert not result["interrupted"]
    if mode != "aec":  # the canceller alone may let the first syllable through
        assert result["timeline"] == []


@pytest.mark.parametrize("mode", ["off", "gate", "aec", "both", "auto"])
def test_a_user_over_the_echo_still_interrupts_fast(
    echo_results: dict[str, dict[str, object]], mode: str
) -> None:
    result = echo_results[f"echo-and-user/{mode}"]
    assert result["interrupted"] and not result["missed"]
    latency = result["stop_latency_ms"]
    assert isinstance(latency, float) and latency <= 80


def test_the_gate_never_makes_sound_out_of_silence_after_a_stretch_unwatched() -> None:
    # The user talks over the agent, the agent stops, and later a new reply starts while
    # the microphone is silent: nothing may come out. (In a session, a fit of the new
    # reference against the microphone window from before the stretch once did exactly
    # that; tests/test_tools.py's unsafe-tool test caught it as a phantom third turn.)
    gate = EchoGate()
    ref = speech_like(0.5, seed=3)
    run_gate(np.zeros_like(ref), ref, gate)  # the agent talks
    talk = np.full(len(ref), 0.3, dtype=np.float32)
    run_gate(talk, np.zeros_like(ref), gate)  # the user talks; the agent has stopped
    new_reply = speech_like(0.5, seed=4)
    gate.prime(np.zeros(len(gate._ref), dtype=np.float32))  # nothing played since
    _, out = run_gate(np.zeros_like(new_reply), new_reply, gate)
    assert float(np.max(np.abs(out))) == 0.0
    # And a subtraction never leaves more than the microphone held.
    quiet = np.full(len(new_reply), 1e-3, dtype=np.float32)
    _, out = run_gate(quiet, new_reply, gate)
    assert float(np.sqrt(np.mean(out**2))) <= 1e-3 * 1.01


def test_a_silent_microphone_costs_no_reference_rendering_and_echo_is_still_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    control = EchoControl("gate", RATE)  # the agent's audio at 16 kHz too
    control.write(1, AGENT)
    rendered: list[int] = []
    render = control.reference.render

    def counting_render(n: int, at: float) -> FloatAudio:
        rendered.append(n)
        return render(n, at)

    monkeypatch.setattr(control.reference, "render", counting_render)
    echo = delayed(AGENT, 120, -12)
    quiet = np.random.default_rng(5).standard_normal(len(AGENT)).astype(np.float32) * 1e-4
    frame = 320
    outputs = []
    for i in range(0, len(AGENT) - frame + 1, frame):
        at = (i + frame) / RATE
        control.played(1, i + frame, at)  # the sink plays as the microphone records
        mic = quiet[i : i + frame] if at < 2.0 else echo[i : i + frame]
        outputs.append((at, control.process(mic, at)))
        if at < 2.0:
            assert rendered == [], "the reference was rendered for a silent microphone"
    # While the user is silent (-80 dBFS) the audio passes as it is, and the reference
    # is not rendered at all.
    silent = [(at, out) for at, out in outputs if at < 2.0]
    assert all(np.array_equal(out, quiet[round(at * RATE) - frame : round(at * RATE)])
               for at, out in silent)  # fmt: skip
    assert control.echo_blocks > 0 and rendered  # the echo that followed was caught
    assert control.gate is not None
    assert rendered[0] == len(control.gate._ref)  # ... by a gate primed with the past
    loud = np.concatenate([out for at, out in outputs if at >= 2.1])
    assert level_db(loud) < level_db(echo[round(2.1 * RATE) :]) - 20


class CountingCanceller:
    """A canceller double that halves the microphone and counts the blocks it was given."""

    sample_rate = RATE
    block_samples = BLOCK

    def __init__(self) -> None:
        self.blocks = 0

    def process(self, mic: FloatAudio, reference: FloatAudio) -> FloatAudio:
        self.blocks += 1
        return mic * np.float32(0.5)

    def reset(self) -> None:
        self.blocks = 0


def drive_auto(mic: FloatAudio) -> tuple[EchoControl, list[CountingCanceller]]:
    """An ``"auto"`` control playing AGENT while the microphone records ``mic``."""
    made: list[CountingCanceller] = []

    def factory() -> CountingCanceller:
        made.append(CountingCanceller())
        return made[-1]

    control = EchoControl("auto", RATE, canceller=factory)
    control.write(1, AGENT)
    frame = 320
    for i in range(0, len(AGENT) - frame + 1, frame):
        at = (i + frame) / RATE
        control.played(1, i + frame, at)
        control.process(mic[i : i + frame], at)
    return control, made


def room_echo(reverb_s: float, delay_ms: float, gain_db: float) -> FloatAudio:
    from bargein.bench.microphone import room_impulse_response

    wet = np.convolve(AGENT, room_impulse_response(reverb_s, RATE))[: len(AGENT)]
    return delayed(wet.astype(np.float32), delay_ms, gain_db)


@pytest.mark.parametrize("reverb_s", [0.3, 0.7])
def test_auto_starts_the_canceller_for_a_room_the_gate_cannot_explain(reverb_s: float) -> None:
    control, made = drive_auto(room_echo(reverb_s, 150, -10))
    assert len(made) == 1 and control.canceller is made[0]
    started = control.canceller_started_at
    # Early in the reply: a few tenths of a second after the echo first sounds.
    assert started is not None and started < 0.15 + 0.6
    # It adapted on the history first: every block the verdict was taken on, not only
    # those after it.
    after = sum(1 for e in control.evidence if e.at > started)
    assert made[0].blocks >= after + control.judge_blocks
    # While it works on the echo (and until the echo has died away), the session takes
    # no sudden-loudness onsets from its output.
    end = len(AGENT) / RATE
    assert control.cancelling(end)
    for k in range(1, 51):  # a second of the microphone after the reply
        control.process(np.zeros(320, dtype=np.float32), end + k * 0.02)
    assert not control.cancelling(end + 1.0)


@pytest.mark.parametrize("gain_db", [-25, -6])
def test_auto_leaves_a_dry_echo_to_the_gate(gain_db: float) -> None:
    control, made = drive_auto(delayed(AGENT, 120, gain_db))
    assert made == [] and control.canceller is None
    assert control.echo_blocks > 100


def test_auto_never_starts_the_canceller_for_a_user_with_no_echo_or_over_a_dry_one() -> None:
    # A headset: the user talks over the agent, and no echo comes back.
    control, made = drive_auto(USER * np.float32(0.5))
    assert made == [] and control.canceller_started_at is None
    # A speakerphone with a dry echo: the gate's verdict was taken on the echo alone, so a
    # user who then talks over it (unexplained blocks) does not start the canceller.
    mic = delayed(AGENT, 120, -12)
    late = round(1.5 * RATE)
    mic[late:] += USER[: len(mic) - late] * np.float32(0.5)
    control, made = drive_auto(mic)
    assert made == [] and control.echo_blocks > 50


def test_the_echo_control_gets_the_microphones_capture_time_not_its_arrival_time() -> None:
    """Late pushes (a busy loop, a network) must not move the echo: the echo control is
    told when each piece was captured, on the microphone's own sample clock."""
    import asyncio

    from bargein.clock import run, sleep_until
    from bargein.providers.scripted import ScriptedLLM
    from bargein.session import Session
    from tests.doubles import LoggingSpeaker, WordTTS

    session = Session(
        vad=LevelVAD(),
        recognizer=ScriptedRecognizer([]),
        llm=ScriptedLLM(["Hello there."]),
        tts=WordTTS(),
        sink=LoggingSpeaker([]),
    )
    assert session.echo is not None
    stamps: list[float] = []

    def record(samples: FloatAudio, at: float) -> FloatAudio:
        stamps.append(at)
        return samples

    session.echo.process = record  # type: ignore[method-assign]
    frame = 320  # 20 ms
    # When each 20 ms piece arrives, in seconds after its nominal capture end:
    # jitter; a 0.3 s stall whose pieces then arrive in one burst; a loaded machine half a
    # second behind for 1.2 s, catching up; an overloaded one falling further and further
    # behind for 3 s, then catching up; steady again; then 0.6 s of audio that never comes
    # (a gap), after which the pieces keep coming late.
    n, gap_at = 500, 260
    arrivals = [0.02 * (k + 1) for k in range(n)]
    for k, lateness in enumerate([0.0, 0.013, 0.002, 0.031, 0.0, 0.012]):
        arrivals[k] += lateness
    for k in range(6, 21):
        arrivals[k] = 0.42  # the stall: pieces 6-20 (captured by 0.14-0.42 s) at 0.42 s
    for k in range(30, 90):
        arrivals[k] += 0.5 - 0.4 * (k - 30) / 60  # behind by 0.5 s, catching up
    for k in range(100, 250):
        arrivals[k] += 0.3 + 1.2 * (k - 100) / 150  # behind by 0.3 s, then up to 1.5 s
    gap = 0.6
    for k in range(gap_at, n):
        arrivals[k] += gap  # piece 260 on: each 0.6 s late

    async def main() -> None:
        async with session:
            t0 = asyncio.get_running_loop().time()
            for at in arrivals:
                await sleep_until(t0 + at)
                session.push_audio(np.zeros(frame, dtype=np.float32))

    run(main(), "virtual")
    t0 = stamps[0] - 0.02
    # Jitter and the stall's burst: the capture clock, exactly (the first push defined it).
    capture = [t0 + 0.02 * (k + 1) for k in range(n)]
    assert stamps[:gap_at] == pytest.approx(capture[:gap_at], abs=1e-9)
    # The gap: late pieces keep their capture times until they have been a gap late, by
    # the same amount, for 2 s; then the clock starts again from the arrival, and runs on
    # from there.
    late = range(gap_at, n)
    anchored = [k for k in late if stamps[k] != pytest.approx(capture[k], abs=1e-9)]
    assert anchored and arrivals[anchored[0]] - arrivals[gap_at] >= 2.0
    first = anchored[0]
    assert stamps[first] == pytest.approx(t0 + arrivals[first], abs=1e-9)
    for k in range(first + 1, n):
        assert stamps[k] == pytest.approx(stamps[k - 1] + 0.02, abs=1e-9)


def test_auto_takes_a_headset_call_for_one_once_the_agent_played_to_a_silent_microphone() -> None:
    # The user answers in the agent's own words and voice (two synthetic voices can be
    # that alike): the gate finds the agent's audio in it at some lag and cannot explain
    # the rest. Early in the call that is how a room's echo looks, and the canceller
    # starts; after seconds of the agent playing to a silent microphone it is the user.
    for after_s in (3.2, 1.7):  # an answer to the agent's opening question comes early
        mic = np.zeros_like(AGENT)
        late = round(after_s * RATE)
        mic[late:] = AGENT[: len(mic) - late]
        control, made = drive_auto(mic)
        assert made == [] and control.canceller_started_at is None, after_s
    early = np.zeros_like(AGENT)
    early[round(0.4 * RATE) :] = AGENT[: len(AGENT) - round(0.4 * RATE)]
    control, made = drive_auto(early + room_echo(0.7, 150, -30))
    assert len(made) == 1
