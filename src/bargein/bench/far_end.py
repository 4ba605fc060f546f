"""The benchmark as the user's device: a far end that runs scenarios against a live server.

The in-process runner measures the engine with nothing in between. A deployed agent has
a network, a server's queues and a client's playback buffer between its decision and the
user's ear, and every one of them can keep the agent talking after it "stopped". So this
far end connects to any server speaking ``docs/protocol.md``, behaves like the demo page
(microphone frames up, agent audio into a small jitter buffer, output controls obeyed the
moment they arrive, playout reports back), and measures at its own loudspeaker with the
same rules as the in-process runner. Whatever the stack in between does, the figures say
what a user would have heard.

SCENARIOS.md defines ``heard_text`` by words, and only the server's TTS knows where the
words lie in the audio. ``bargein serve`` says so in ``words`` messages, and the far end
applies the same half-played rule to its own cursor. Against a server that sends no
word timings (another implementation, or an older one) the far end estimates where each
word of ``agent_text`` lies in the reply's audio: it weights words by their syllables
and takes the reply's length from a run of the same text that played to its end (every
set has such controls). Syllables are a coarse measure of speaking time, so the
estimate may put the cut one word early or late
(against the built-in set and Piper it did for about half the cut replies), which is
also the noise floor of ``state_word_errors`` then. Each result says which method it used.

Where the far end cannot see what the in-process runner sees, the results say so rather
than guess: ``timeline`` is the server's records on the server's clock
(``timeline_clock``); ``decision_ms`` is when the decision reached the ear (the ``clear``
of a commit, the ``resume`` of a false alarm); the LLM call counts are ``None``. Two
fields are added: ``heard_text_method`` and ``cursor_lag_ms``, the ear's cursor against
the one the server cut the conversation to, exact to the sample where the server's
record carries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import re
import statistics
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from bargein.audio import from_int16, to_int16
from bargein.bench.metrics import audible_after_ms, state_word_errors, summarize
from bargein.bench.microphone import (
    Microphone,
    ear_fields,
    microphone_for,
    stop_metrics,
    user_turn_fields,
)
from bargein.bench.progress import Progress
from bargein.bench.speaker import SimulatedSpeaker
from bargein.clock import sleep_until
from bargein.providers.base import FloatAudio
from bargein.scenario import Scenario, load_set
from bargein.session import describe_error

__all__ = [
    "DEFAULT_SYLLABLES_PER_S",
    "CannotConnect",
    "FarEndOptions",
    "FarEndRun",
    "Player",
    "ScenarioAborted",
    "TargetError",
    "estimate_heard_text",
    "run_far_end",
    "run_target_set",
    "run_ws_scenario",
    "settle_heard_text",
    "syllables",
]

TICK_S = 0.01
"""The loudspeaker renders (and the far end checks the wire) every 10 ms."""
REPORT_EVERY_S = 0.05
DEFAULT_SYLLABLES_PER_S = 4.0
"""Only when no reply in the whole set played to its end: a typical TTS pace, pauses included."""
CLIENT_NAME = "bargein-bench/1"


class TargetError(RuntimeError):
    """The target refused the benchmark as a whole: no scenario of the set can run."""


class ScenarioAborted(RuntimeError):
    """One scenario could not finish (the server closed, or never answered); the set goes on."""


class CannotConnect(ScenarioAborted):
    """The target could not be reached: fatal for the set if no scenario has reached it."""


_CannotConnect = CannotConnect


@dataclass
class FarEndOptions:
    settle_s: float = 1.0
    """How long to keep listening after the last event ends, when the agent carried on."""
    max_s: float = 150.0
    answer_wait_s: float = 10.0
    """After a cut, how long to wait for the agent's answer before giving up on it."""
    jitter_s: float = 0.06
    """Audio the player gathers before it starts (again) after running dry, like a browser."""
    open_timeout_s: float = 10.0
    linger_s: float = 0.2
    """Listening on after the run is over, for display messages that trail the audio."""


# -- the loudspeaker ----------------------------------------------------------------------


class Player:
    """The far end's loudspeaker: a jitter buffer in front of a :class:`SimulatedSpeaker`.

    A browser does not play the first packet it gets: it gathers a little audio first, so
    that network jitter does not turn into clicks (the demo page's player does the same,
    with the same rule). That costs latency at the start of a reply and after an underrun,
    never at a stop: ``clear`` empties both buffers at once. The speaker's recording,
    indexed by far-end time, is the ear the metrics read.
    """

    def __init__(self, sample_rate: int, *, jitter_s: float, max_s: float) -> None:
        self.speaker = SimulatedSpeaker(sample_rate, max_s=max_s)
        self.sample_rate = sample_rate
        self.jitter_s = jitter_s
        self.received: dict[int, int] = {}
        self.latest_reply: int | None = None
        self._waiting: deque[tuple[int, FloatAudio]] = deque()
        self._waiting_samples = 0
        self._buffering = True
        self._paused = False
        self._waiting_since: float | None = None
        self._written: dict[int, int] = {}
        self.drained = False
        """The queue ran dry since the owner last looked (a reply may have ended)."""

    def receive(self, reply_id: int, audio: FloatAudio, now: float) -> None:
        """Audio arrived at far-end time ``now`` (already rendered up to it)."""
        self.received[reply_id] = self.received.get(reply_id, 0) + len(audio)
        self.latest_reply = reply_id
        if self._buffering:
            if self._waiting_since is None:
                self._waiting_since = now
            self._waiting.append((reply_id, audio))
            self._waiting_samples += len(audio)
            self._release(now)
        else:
            self._write(reply_id, audio)

    def render_until(self, now: float) -> None:
        """Play everything due by ``now``."""
        self.speaker.render_until(now)
        if not self._buffering and not self._paused and self.queued() == 0:
            self._buffering = True
            self.drained = True
        self._release(now)

    def queued(self) -> int:
        """Samples handed to the loudspeaker and not yet played."""
        played = self.speaker.played
        return sum(n - played.get(rid, 0) for rid, n in self._written.items())

    def pause(self) -> None:
        self._paused = True
        self.speaker.pause()

    def resume(self) -> None:
        self._paused = False
        self.speaker.resume()

    def duck(self, gain: float) -> None:
        self.speaker.duck(gain)

    def clear(self) -> None:
        self.speaker.clear()
        self._waiting.clear()
        self._waiting_samples = 0
        self._waiting_since = None
        self._buffering = True
        self._paused = False
        for rid in self._written:
            self._written[rid] = self.speaker.played.get(rid, 0)

    def _write(self, reply_id: int, audio: FloatAudio) -> None:
        self._written[reply_id] = self._written.get(reply_id, 0) + len(audio)
        self.speaker.write(reply_id, audio)

    def _release(self, now: float) -> None:
        if not self._waiting or self._waiting_since is None:
            return
        # A short reply's tail must not wait for audio that will not come: the buffer
        # also opens once its first sample has waited the jitter time.
        enough = self._waiting_samples >= self.jitter_s * self.sample_rate
        if enough or now - self._waiting_since >= self.jitter_s:
            while self._waiting:
                self._write(*self._waiting.popleft())
            self._waiting_samples = 0
            self._waiting_since = None
            self._buffering = False


# -- heard text without word timings ------------------------------------------------------

_VOWEL_GROUPS = re.compile(r"[aeiouy]+")


def syllables(word: str) -> int:
    """A rough syllable count: how long a word takes to say, relative to its neighbours.

    Vowel groups, less a silent final ``e``; each digit counts one. It only has to rank
    words by length well enough to find which word a cut fell in.
    """
    w = re.sub(r"[^a-z0-9]", "", word.lower())
    letters = re.sub(r"[0-9]", "", w)
    groups = len(_VOWEL_GROUPS.findall(letters))
    if groups > 1 and letters.endswith("e") and not letters.endswith(("le", "ee")):
        groups -= 1
    return max(1, groups + sum(c.isdigit() for c in w))


def estimate_heard_text(text: str, played_s: float, syllables_per_s: float) -> str:
    """The words of ``text`` at least half played after ``played_s`` of the reply's audio."""
    position = played_s * syllables_per_s
    heard: list[str] = []
    start = 0.0
    for word in text.split():
        n = syllables(word)
        if position < start + n / 2:
            break
        heard.append(word)
        start += n
    return " ".join(heard)


def _text_syllables(text: str) -> int:
    return sum(syllables(w) for w in text.split())


def settle_heard_text(results: Sequence[dict[str, Any]], texts: Mapping[str, str]) -> None:
    """Estimate ``heard_text`` of the results measured without word timings, in place.

    Done over the whole set because the best evidence of a reply's length is another run
    of the same ``agent_text`` that played to its end; failing that, the speaking rate of
    every complete reply in the set; failing that, a typical rate. ``texts`` maps
    scenario names to their ``agent_text``.
    """
    lengths: dict[str, list[float]] = {}
    for r in results:
        text = texts.get(r["name"])
        if text is not None and r.get("agent_full_s"):
            lengths.setdefault(text, []).append(float(r["agent_full_s"]))
    total_syllables = sum(_text_syllables(t) * len(v) for t, v in lengths.items())
    total_s = sum(sum(v) for v in lengths.values())
    for r in results:
        text = texts.get(r["name"])
        if text is None or r.get("heard_text_method") == "word_timings":
            continue
        if r.get("agent_played_s") is None:
            continue
        if text in lengths:
            rate = _text_syllables(text) / statistics.median(lengths[text])
            method = "same_text_length"
        elif total_s > 0:
            rate = total_syllables / total_s
            method = "set_speaking_rate"
        else:
            rate = DEFAULT_SYLLABLES_PER_S
            method = "default_speaking_rate"
        r["heard_text"] = estimate_heard_text(text, float(r["agent_played_s"]), rate)
        r["heard_text_method"] = method
        # A far end that cannot see the conversation (a phone line) has no recorded text:
        # then the error count is unknown, not zero.
        recorded = r.get("recorded_text", "")
        r["state_word_errors"] = (
            None if recorded is None else state_word_errors(r["heard_text"], recorded)
        )


_TIER1 = ("pause", "duck", "clear")
"""The output controls that can be a tier-1 action, as they reach the ear."""


# -- what the server said -----------------------------------------------------------------


@dataclass
class _ServerSide:
    """Everything the server told the far end, timed on the far end's clock."""

    finals: dict[int, tuple[str, bool]] = field(default_factory=dict)
    records: dict[tuple[int, float], dict[str, Any]] = field(default_factory=dict)
    words: dict[int, list[tuple[str, int, int]]] = field(default_factory=dict)
    controls: list[tuple[float, str]] = field(default_factory=list)
    users: dict[int, str] = field(default_factory=dict)
    """User turns by number; a turn sent again replaces its earlier text."""
    errors: list[str] = field(default_factory=list)
    cut_at: float | None = None
    """When the far end learnt that reply 1 was abandoned."""

    def records_of(self, reply_id: int) -> list[dict[str, Any]]:
        return [r for (rid, _), r in self.records.items() if rid == reply_id]


@dataclass
class FarEndRun:
    """One scenario played against a target: the ear's recording and the server's messages."""

    scenario: Scenario
    target: str
    player: Player
    mic: Microphone
    server: _ServerSide
    playout_reports: list[tuple[float, int, int]]
    """Every report sent: far-end time, reply, samples played."""

    @property
    def speaker(self) -> SimulatedSpeaker:
        return self.player.speaker

    def interrupted(self) -> bool:
        final = self.server.finals.get(1)
        committed = any(r.get("decision") == "commit" for r in self.server.records_of(1))
        return committed or (final is not None and final[1])

    def answer(self) -> int | None:
        """The reply that answered the interruption: the first later one the ear heard."""
        later = [rid for rid in self.speaker.first_sound_at if rid > 1]
        return min(later) if later else None

    def measure(self) -> dict[str, Any]:
        """The scenario's results entry, measured at this far end's ear (SCENARIOS.md)."""
        scenario, speaker, server = self.scenario, self.speaker, self.server
        onset = self.mic.onset()
        interrupted = self.interrupted()
        expect_interrupt = scenario.expect == "interrupt"
        stop = stop_metrics(
            speaker, 1, onset, expect_interrupt=expect_interrupt, interrupted=interrupted
        )
        rate = speaker.sample_rate
        played = speaker.played.get(1, 0)
        final = server.finals.get(1)
        recorded = final[0] if final is not None else ""
        complete = (
            final is not None and not interrupted and played >= self.player.received.get(1, 0)
        )
        words = server.words.get(1)
        heard = ""
        method = "estimate"
        if words:
            heard = " ".join(w for w, a, b in words if played >= (a + b) / 2)
            method = "word_timings"
        records = server.records_of(1)
        answer = self.answer() if interrupted else None
        response_ms = None
        speech_end = self.mic.speech_end()
        if answer is not None and speech_end is not None:
            response_ms = (speaker.first_sound_at[answer] - speech_end) * 1000
        kept = server.users[max(server.users)] if server.users else ""
        controls = None
        if interrupted and onset is not None:
            controls = [at for at, kind in server.controls if at >= onset and kind in _TIER1]
        end = speaker.rendered  # the buffer holds minutes; the scenario, seconds
        ours = np.where(speaker.reply_at[:end] == 1, speaker.recording[:end], np.float32(0))
        result: dict[str, Any] = {
            **ear_fields(scenario, onset, stop, interrupted, speaker.paused_s.get(1, 0.0)),
            "heard_text": heard,
            "recorded_text": recorded,
            "state_word_errors": state_word_errors(heard, recorded),
            "llm_tokens_after_cancel": max(
                (int(r.get("tokens_after_cancel") or 0) for r in records), default=0
            ),
            "decision": records[0].get("decision") if records else None,
            "decision_reason": records[0].get("reason") if records else None,
            "decision_ms": self._decision_ms(records, onset),
            "after_tier1_ms": audible_after_ms(ours, rate, controls),
            "response_ms": response_ms,
            # What the server did internally is not observable from here.
            "llm_calls": None,
            "preemptive_calls": None,
            "preemptive_discarded": None,
            **user_turn_fields(scenario, kept, interrupted),
            "timeline": list(server.records.values()),
            "timeline_clock": "server",
            "errors": list(server.errors),
            "target": self.target,
            "heard_text_method": method,
            "agent_played_s": played / rate,
            "agent_full_s": played / rate if complete else None,
            "cursor_lag_ms": self._cursor_lag_ms(records, played),
        }
        if method != "word_timings":
            settle_heard_text([result], {scenario.name: scenario.agent_text})
        return result

    def _cursor_lag_ms(self, records: list[dict[str, Any]], played: int) -> float | None:
        """How much more of the reply the ear played than the server knew of when it cut
        the conversation (``played_at_decision``, where the server reports it).

        Exact to the sample, unlike ``state_word_errors`` without word timings: a lag
        means a stale playout cursor, or audio that kept playing after the decision.
        """
        cut = [r for r in records if r.get("decision") == "commit"]
        known = cut[0].get("played_at_decision") if cut else None
        if not isinstance(known, int):
            return None
        return (played - known) / self.speaker.sample_rate * 1000

    def _decision_ms(self, records: list[dict[str, Any]], onset: float | None) -> float | None:
        """When the decision reached the ear: the ``clear`` of a commit, the ``resume`` of a
        false alarm. The server's own decision time is on its clock, not ours."""
        if not records or onset is None:
            return None
        control = {"commit": "clear", "resume": "resume"}.get(str(records[0].get("decision")))
        for at, kind in self.server.controls:
            if kind == control and at >= onset:
                return (at - onset) * 1000
        return None


# -- one scenario -------------------------------------------------------------------------


class _Connection:
    """The far end's side of one WebSocket session."""

    def __init__(
        self,
        ws: ClientConnection,
        scenario: Scenario,
        target: str,
        ready: dict[str, Any],
        options: FarEndOptions,
    ) -> None:
        self.ws = ws
        self.options = options
        self.frame = int(ready["input_frame"])
        self.player = Player(
            int(ready["output_rate"]), jitter_s=options.jitter_s, max_s=options.max_s + 5
        )
        mic = microphone_for(scenario, self.player.speaker, int(ready["input_rate"]))
        self.run = FarEndRun(scenario, target, self.player, mic, _ServerSide(), [])
        self.origin = 0.0
        self._reported: dict[int, int] = {}
        self._loop = asyncio.get_running_loop()

    def now(self) -> float:
        return self._loop.time() - self.origin

    async def play(self) -> FarEndRun:
        scenario, mic, player = self.run.scenario, self.run.mic, self.player
        await self.ws.send(json.dumps({"type": "bench_reply", "text": scenario.agent_text}))
        self.origin = self._loop.time()
        await self.ws.send(json.dumps({"type": "request_reply"}))
        receiver = asyncio.create_task(self._receive())
        try:
            n = 0
            next_report = REPORT_EVERY_S
            end: float | None = None
            while True:
                n += 1
                await sleep_until(self.origin + n * TICK_S)
                t = self.now()
                player.render_until(t)
                mic.place(player.speaker.first_sound_at.get(1))
                # A late wake-up sends every frame that fell due meanwhile, like a device.
                while mic.position + self.frame <= t * mic.rate:
                    pcm = to_int16(mic.frame(self.frame)).astype("<i2").tobytes()
                    await self.ws.send(pcm)
                if player.drained or t >= next_report:
                    player.drained = False
                    await self._report()
                    next_report = t + REPORT_EVERY_S
                if end is None and self._done(t):
                    end = t + self.options.linger_s
                if end is not None and t >= end:
                    break
                if receiver.done():
                    raise self._closed(receiver)
        except ConnectionClosed as exc:
            raise self._closed(None) from exc
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await receiver
        return self.run

    def _closed(self, receiver: asyncio.Task[None] | None) -> ScenarioAborted:
        exc = receiver.exception() if receiver is not None else None
        if exc is not None and not isinstance(exc, ConnectionClosed):
            return ScenarioAborted(f"receiving failed: {describe_error(exc)}")
        code, reason = self.ws.close_code, self.ws.close_reason
        said = f" ({reason})" if reason else ""
        return ScenarioAborted(
            f"the server closed the connection mid-scenario at {self.now():.2f} s: "
            f"code {code}{said}"
        )

    def _done(self, t: float) -> bool:
        server, mic = self.run.server, self.run.mic
        if t >= self.options.max_s:
            return True
        if server.cut_at is not None:
            # Run on until the answer to the interruption is heard, to measure its latency.
            if self.run.answer() is not None:
                return True
            last = mic.last_end()
            return last is not None and t >= last and t - server.cut_at > self.options.answer_wait_s
        if 1 not in server.finals:
            return False
        last = mic.last_end()
        return last is not None and t >= last + self.options.settle_s

    async def _report(self, force: int | None = None) -> None:
        for rid, played in list(self.player.speaker.played.items()):
            if played != self._reported.get(rid) or rid == force:
                self._reported[rid] = played
                self.run.playout_reports.append((self.now(), rid, played))
                await self.ws.send(json.dumps({"type": "playout", "reply": rid, "played": played}))

    async def _receive(self) -> None:
        async for message in self.ws:
            t = self.now()
            # Everything due before this message plays first: a control takes effect at
            # the moment it arrives, not at the next tick.
            self.player.render_until(t)
            if isinstance(message, bytes):
                if len(message) > 4:
                    reply_id = int.from_bytes(message[:4], "little")
                    pcm = np.frombuffer(message, dtype="<i2", offset=4)
                    self.player.receive(reply_id, from_int16(pcm), t)
                continue
            await self._on_text(message, t)

    async def _on_text(self, raw: str, t: float) -> None:
        try:
            msg = json.loads(raw)
        except json.JSONDecodeError:
            self.run.server.errors.append(f"server sent malformed JSON: {raw[:80]!r}")
            return
        if not isinstance(msg, dict):
            return
        server, player = self.run.server, self.player
        kind = msg.get("type")
        if kind in ("pause", "resume", "duck", "clear"):
            server.controls.append((t, str(kind)))
        if kind == "pause":
            player.pause()
        elif kind == "resume":
            player.resume()
        elif kind == "duck":
            player.duck(float(msg.get("gain", 1.0)))
        elif kind == "clear":
            player.clear()
            await self._report(force=player.latest_reply)
        elif kind == "agent" and msg.get("final"):
            reply_id = int(msg.get("reply", 0))
            interrupted = bool(msg.get("interrupted"))
            server.finals[reply_id] = (str(msg.get("text", "")), interrupted)
            if reply_id == 1 and interrupted and server.cut_at is None:
                server.cut_at = t
        elif kind == "interruption" and isinstance(msg.get("record"), dict):
            record = cast(dict[str, Any], msg["record"])
            reply_id = int(record.get("reply_id", 0))
            server.records[(reply_id, float(record.get("onset_at") or 0.0))] = record
            if reply_id == 1 and record.get("decision") == "commit" and server.cut_at is None:
                server.cut_at = t
        elif kind == "words":
            reply_id = int(msg.get("reply", 0))
            server.words.setdefault(reply_id, []).extend(
                (str(w), int(a), int(b)) for w, a, b in msg.get("words", [])
            )
        elif kind == "user":
            turn = msg.get("turn")
            number = turn if isinstance(turn, int) else len(server.users)
            server.users[number] = str(msg.get("text", ""))
        elif kind == "error":
            server.errors.append(str(msg.get("message", "")))


async def _handshake(
    ws: ClientConnection, target: str, token: str | None, options: FarEndOptions
) -> dict[str, Any]:
    hello: dict[str, Any] = {"type": "hello", "client": CLIENT_NAME}
    if token is not None:
        hello["token"] = token
    await ws.send(json.dumps(hello))
    said = ""
    try:
        async with asyncio.timeout(options.open_timeout_s):
            while True:
                raw = await ws.recv()
                if isinstance(raw, bytes):
                    continue
                msg = json.loads(raw)
                if not isinstance(msg, dict):
                    continue
                if msg.get("type") == "error":
                    said = f": {msg.get('message', '')}"
                if msg.get("type") == "ready":
                    break
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else None
        if code == 4401:
            raise TargetError(f"{target} refused the token{said} (give it with --token)") from exc
        raise ScenarioAborted(f"{target} closed the connection before 'ready'{said}") from exc
    except TimeoutError as exc:
        raise ScenarioAborted(
            f"{target} did not answer 'hello' within {options.open_timeout_s:g} s"
        ) from exc
    if not msg.get("bench"):
        raise TargetError(
            f"the server must run with --bench: {target} does not accept the benchmark "
            "hook (bench_reply, request_reply), so it cannot be made to say a scenario's text"
        )
    for key in ("input_rate", "input_frame", "output_rate"):
        if not isinstance(msg.get(key), int) or msg[key] <= 0:
            raise TargetError(f"{target} sent 'ready' without a valid {key!r}: {msg}")
    return cast(dict[str, Any], msg)


async def run_far_end(
    scenario: Scenario,
    target: str,
    *,
    token: str | None = None,
    options: FarEndOptions | None = None,
) -> FarEndRun:
    """Play one scenario against a ``ws://`` target in real time; the raw run, unmeasured.

    Raises :class:`TargetError` when the target refuses the benchmark (no ``--bench``, a
    wrong token) and :class:`ScenarioAborted` when this scenario could not finish.
    """
    options = options or FarEndOptions()
    try:
        ws = await connect(target, open_timeout=options.open_timeout_s, max_size=None)
    except InvalidURI as exc:
        raise TargetError(f"{target} is not a WebSocket URL: {exc}") from exc
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise _CannotConnect(f"cannot connect to {target}: {describe_error(exc)}") from exc
    async with ws:
        ready = await _handshake(ws, target, token, options)
        return await _Connection(ws, scenario, target, ready, options).play()


async def run_ws_scenario(
    scenario: Scenario,
    target: str,
    *,
    token: str | None = None,
    options: FarEndOptions | None = None,
) -> dict[str, Any]:
    """One scenario's results entry, measured at the far end."""
    run = await run_far_end(scenario, target, token=token, options=options)
    return run.measure()


class _ScenarioRunner(Protocol):
    def __call__(
        self,
        scenario: Scenario,
        target: str,
        *,
        token: str | None,
        options: FarEndOptions,
    ) -> Coroutine[Any, Any, dict[str, Any]]: ...


def _runner_for(target: str) -> _ScenarioRunner:
    scheme = target.split("://", 1)[0].lower()
    if scheme in ("ws", "wss"):
        return run_ws_scenario
    if scheme.startswith("twilio+"):
        # Imported only here: the phone far end is a separate module, maybe not installed.
        try:
            module = importlib.import_module("bargein.bench.twilio_client")
        except ImportError as exc:
            raise TargetError("twilio targets need bargein.bench.twilio_client") from exc
        found: Callable[..., Coroutine[Any, Any, dict[str, Any]]] | None = getattr(
            module, "run_twilio_scenario", None
        )
        if found is None:
            raise TargetError("twilio targets need bargein.bench.twilio_client.run_twilio_scenario")
        return cast(_ScenarioRunner, found)
    raise TargetError(
        f"unsupported target {target!r}: expected ws://HOST:PORT/ws, wss://... or twilio+ws://..."
    )


def run_target_set(
    folder: Path,
    target: str,
    *,
    token: str | None = None,
    options: FarEndOptions | None = None,
    only: Sequence[str] = (),
    progress: bool = True,
    repeat: int = 1,
) -> dict[str, Any]:
    """Run every scenario of ``folder`` against ``target``, on the real clock, ``repeat``
    times (each result carries its ``run``).

    Writes the same results as :func:`bargein.bench.runner.run_set`. A scenario that
    fails is an entry in ``errors`` and the set goes on; a target that refuses the
    benchmark, or cannot be reached at all, stops the set with :class:`TargetError`.
    """
    options = options or FarEndOptions()
    runner = _runner_for(target)
    scenarios, errors = load_set(folder)
    if only:
        scenarios = [s for s in scenarios if s.kind in only]
    results: list[dict[str, Any]] = []
    problems = [str(e) for e in errors]
    reached = False
    plan = [(k, s) for k in range(1, repeat + 1) for s in scenarios]
    bar = Progress(len(plan), enabled=progress)
    for k, scenario in plan:
        bar.start(scenario.name)
        try:
            result = asyncio.run(runner(scenario, target, token=token, options=options))
            results.append({**result, "run": k})
            reached = True
        except TargetError:
            bar.close()
            raise
        except _CannotConnect as exc:
            if not reached:
                raise TargetError(str(exc)) from exc
            problems.append(f"{scenario.path.name}: {exc}")
        except Exception as exc:  # one broken scenario must not stop the set
            reached = reached or isinstance(exc, ScenarioAborted)
            problems.append(f"{scenario.path.name}: run failed: {describe_error(exc)}")
        finally:
            bar.finish(scenario.name)
    bar.close()
    settle_heard_text(results, {s.name: s.agent_text for s in scenarios})
    return {
        "clock": "real",
        "repeat": repeat,
        "target": target,
        "summary": summarize(results),
        "scenarios": results,
        "errors": problems,
    }
