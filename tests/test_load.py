"""The load benchmark: its /proc readers, schedule and sweep parsing, the stand-ins of the
load server, and a small run of two far ends against a real in-process server."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from bargein.audio import to_int16, write_wav
from bargein.bench.far_end import FarEndOptions
from bargein.bench.load import (
    LoadOptions,
    Sample,
    ServerProcess,
    format_load_table,
    interleave_kinds,
    parse_sessions,
    parse_stat_cpu_seconds,
    parse_status_rss_bytes,
    read_cpu_seconds,
    read_rss_bytes,
    run_level,
    stagger_schedule,
    steady_window,
)
from bargein.bench.load_server import (
    DelayedTTS,
    KnownSpeechRecognizer,
    LagMonitor,
    SpeechIndex,
    build_app,
    build_stack,
    cached_speech,
    reply_sentences,
    spoken_words,
)
from bargein.decider import RuleDecider
from bargein.providers.base import ProviderError
from bargein.providers.silero import SileroVAD
from bargein.scenario import load_set
from tests.doubles import LevelVAD, WordTTS, write_scenario

RATE = 16000


# -- /proc --------------------------------------------------------------------------------

STAT = (
    "4242 (a (strange) name) S 1 4242 4242 0 -1 4194560 1234 0 0 0 "
    "250 75 0 0 20 0 3 0 1000 123456789 5000 18446744073709551615"
)


def test_stat_cpu_counts_fields_after_the_command_name() -> None:
    assert parse_stat_cpu_seconds(STAT, 100) == pytest.approx(3.25)


def test_status_rss_is_read_in_bytes() -> None:
    status = "Name:\tpython\nVmPeak:\t  900 kB\nVmRSS:\t  123456 kB\nThreads:\t4\n"
    assert parse_status_rss_bytes(status) == 123456 * 1024
    with pytest.raises(ValueError, match="VmRSS"):
        parse_status_rss_bytes("Name:\tkthreadd\n")


def test_the_readers_agree_with_the_process_itself() -> None:
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    times = os.times()
    assert read_cpu_seconds(os.getpid()) == pytest.approx(times.user + times.system, abs=0.05)
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    resident = pages * os.sysconf("SC_PAGE_SIZE")
    assert read_rss_bytes(os.getpid()) == pytest.approx(resident, rel=0.05)


# -- the sweep ----------------------------------------------------------------------------


def test_sessions_are_parsed_sorted_and_checked() -> None:
    assert parse_sessions("50, 1,10,10,25") == [1, 10, 25, 50]
    for bad in ("", "0", "ten", "1,-2"):
        with pytest.raises(ValueError):
            parse_sessions(bad)


def test_sessions_start_evenly_over_the_stagger() -> None:
    assert stagger_schedule(4, 2.0) == [0.0, 0.5, 1.0, 1.5]
    assert stagger_schedule(1, 2.0) == [0.0]
    assert stagger_schedule(3, 0.0) == [0.0, 0.0, 0.0]


def test_kinds_alternate_in_the_sets_order(tmp_path: Path) -> None:
    for name, kind in [("b1", "barge_in"), ("b2", "barge_in"), ("b3", "barge_in"),
                       ("s1", "short_command"), ("n1", "noise")]:  # fmt: skip
        write_scenario(tmp_path, name, kind, "interrupt", [], "Hello there.")
    scenarios, _ = load_set(tmp_path)
    chosen = interleave_kinds(scenarios, ("barge_in", "short_command"))
    assert [s.name for s in chosen] == ["b1", "s1", "b2", "b3"]
    assert len(interleave_kinds(scenarios, None)) == 5


def test_the_steady_window_is_where_every_session_ran() -> None:
    active = [0, 1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 0]
    samples = [Sample(0.2 * i, None, 0.0, None, a) for i, a in enumerate(active)]
    window, kind = steady_window(samples, 3)
    assert kind == "all sessions active" and [s.active for s in window] == [3] * 10
    window, kind = steady_window(samples[:6], 3)  # all three for only 0.4 s
    assert kind == "whole run" and [s.active for s in window] == [1, 2, 3, 3, 3]


# -- the stand-ins ------------------------------------------------------------------------


def _noise(seconds: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.3, 0.3, int(seconds * RATE)).astype(np.float32)


def test_the_recogniser_finds_a_known_recording_and_says_its_words_late() -> None:
    index = SpeechIndex(RATE)
    lead = np.zeros(1600, dtype=np.float32)  # the voice starts 0.1 s in
    index.add(to_int16(np.concatenate([lead, _noise(0.5, 1)])), "Hold on, stop!", 0.1)
    index.add(to_int16(np.concatenate([lead, _noise(0.5, 2)])), "Other words", 0.1)
    recognizer = KnownSpeechRecognizer(index, delay_s=0.1)
    # What the server hears: the second recording, 1000 samples into the stream, as
    # 16-bit PCM from the far end.
    stream = np.concatenate([np.zeros(1000, np.float32), lead, _noise(0.5, 2), np.zeros(8000)])
    heard = to_int16(stream).astype(np.float32) / 32768.0
    recognizer.start()
    said: list[tuple[float, list[str]]] = []
    for start in range(0, len(heard) - 511, 512):
        said.append(((start + 512) / RATE, list(recognizer.feed(heard[start : start + 512]))))
    # "other" ends 0.1 + 0.5 * 5/10 s into the recording, which starts 1000 samples into
    # the stream, and is reported 0.1 s later: 0.5125 s into the stream.
    first = next(t for t, words in said if words)
    assert 0.5125 <= first < 0.5125 + 512 / RATE
    assert said[-1][1] == ["other", "words"]
    assert list(recognizer.finish()) == ["other", "words"]
    recognizer.start()
    assert list(recognizer.feed(_noise(0.1, 3)[:512])) == []  # not a recording of the set
    assert list(recognizer.finish()) == []


def test_words_and_sentences_as_the_session_sees_them() -> None:
    assert spoken_words("Mm-hmm. Wait, don't!") == ["mm", "hmm", "wait", "don't"]
    assert reply_sentences("Sure. It is 9.15 now! Ok") == ["Sure.", "It is 9.15 now!", "Ok"]


def test_the_tts_stand_in_answers_after_its_delay_from_what_it_prepared(tmp_path: Path) -> None:
    voice = WordTTS()
    speech, rate = cached_speech(["one two."], tmp_path, lambda: voice)
    assert cached_speech(["one two."], tmp_path, WordTTS)[0].keys() == speech.keys()
    assert voice.spoken == ["one two."]  # voiced once; the second server read the file
    tts = DelayedTTS(speech, rate, (0.05, 0.06))
    start = time.monotonic()
    chunks = list(tts.synthesize("one two."))
    assert 0.05 <= time.monotonic() - start < 0.2
    assert [w.word for w in chunks[0].words] == ["one", "two."] and tts.unprepared == 0
    with pytest.raises(ProviderError, match="prepared no audio"):
        list(tts.synthesize("three."))
    assert tts.unprepared == 1


async def test_lag_monitor_sees_a_blocked_loop_and_resets() -> None:
    lag = LagMonitor(period_s=0.01)
    assert lag.report()["lag_p95_ms"] is None
    task = asyncio.create_task(lag.run())
    await asyncio.sleep(0.05)
    time.sleep(0.2)  # blocks the loop: the monitor wakes about 0.2 s late
    await asyncio.sleep(0.05)
    task.cancel()
    report = lag.report(reset=True)
    assert report["lag_max_ms"] is not None and 150 <= report["lag_max_ms"] < 1000
    assert lag.report()["lag_max_ms"] is None


def test_silero_instances_share_one_graph_and_keep_their_own_state() -> None:
    a, b = SileroVAD(), SileroVAD()
    assert a._session is b._session
    x, y = _noise(512 * 6 / RATE, 4), _noise(512 * 6 / RATE, 5) * np.float32(0.1)
    alone = SileroVAD().probabilities(x)
    together = []
    for i in range(6):
        together.append(a.probability(x[i * 512 : (i + 1) * 512]))
        b.probability(y[i * 512 : (i + 1) * 512])
    np.testing.assert_allclose(together, alone, rtol=1e-5)


# -- runs ---------------------------------------------------------------------------------

AGENT = " ".join(["apple river paper summer window."] * 6)


def test_two_sessions_against_an_in_process_server(tmp_path: Path) -> None:
    from bargein.server import serve_in_background

    audio = np.concatenate([np.zeros(1600, np.float32), _noise(0.6, 7)])
    write_wav(tmp_path / "hold-on.wav", audio, RATE)
    write_wav(tmp_path / "stop.wav", np.concatenate([np.zeros(1600), _noise(0.3, 8)]), RATE)
    for name, kind, wav, text in [("barge", "barge_in", "hold-on.wav", "Hold on."),
                                  ("short", "short_command", "stop.wav", "Stop.")]:  # fmt: skip
        event = [{"at_s": 0.6, "audio": wav, "text": text}]
        write_scenario(tmp_path, name, kind, "interrupt", event, AGENT)
    scenarios, errors = load_set(tmp_path)
    assert not errors
    stack = build_stack(scenarios, tts=WordTTS(), tts_delay_s=(0.01, 0.02))
    stack.vad_factory = LevelVAD  # speech wherever the microphone is loud
    stack.decider_factory = RuleDecider  # decides on the stand-in recogniser's words
    options = LoadOptions(
        stagger_s=0.5, rounds=1, far_end=FarEndOptions(settle_s=0.3, max_s=20), progress=False
    )
    with serve_in_background(build_app(stack, LagMonitor())) as base:
        url = base.replace("http://", "ws://") + "/ws"
        row = run_level(2, interleave_kinds(scenarios, None), url, server_pids=[os.getpid()],
                        options=options)  # fmt: skip
    assert row["failed_sessions"] == 0 and row["scenarios"] == 2 and row["ok"], row["problems"]
    assert row["missed"] == 0 and row["stop_p95_ms"] is not None and row["stop_p95_ms"] < 150
    assert all(0 <= r["react_ms"] < 150 for r in row["results"])
    # The stand-in recogniser found each recording and said its words in time.
    reasons = {r["name"]: str(r["decision_reason"]) for r in row["results"]}
    assert "word:hold on" in reasons["barge"] and "word:stop" in reasons["short"]
    assert row["tts_unprepared"] == 0
    assert row["rss_idle_mb"] > 0 and row["mem_per_session_mb"] is not None
    assert row["server_cpu_pct"] is not None and row["bench_lag_p95_ms"] is not None
    json.dumps(row)
    assert format_load_table([row]).splitlines()[-1].split()[:2] == ["2", "2"]


def test_a_server_that_cannot_start_is_reported(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exited before listening"):
        ServerProcess(tmp_path / "no-such-set").__enter__()


def test_a_servers_processes_include_its_workers() -> None:
    import subprocess
    import sys

    from bargein.bench.load import process_tree, total_cpu_seconds, total_rss_bytes

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        tree = process_tree(os.getpid())
        assert tree[0] == os.getpid() and child.pid in tree
        assert total_rss_bytes([os.getpid(), child.pid]) > total_rss_bytes([os.getpid()])
        assert total_cpu_seconds(tree) >= total_cpu_seconds([os.getpid()]) > 0
    finally:
        child.kill()
        child.wait()
