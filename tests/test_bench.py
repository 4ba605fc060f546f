"""The benchmark runner and its metrics, on the virtual clock with doubled models."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bargein.bench.metrics import (
    audible_after_ms,
    format_table,
    percentile,
    state_word_errors,
    summarize,
)
from bargein.bench.microphone import reply_stop_metrics
from bargein.bench.progress import Progress
from bargein.bench.runner import RunOptions, Stack, run_set
from bargein.cli import main as cli_main
from tests.doubles import LevelVAD, ScriptedRecognizer, WordTTS, loud_wav, write_scenario

AGENT = " ".join(f"word{i}." if i % 6 == 5 else f"word{i}" for i in range(40))


def scenario(folder: Path, name: str, kind: str, expect: str, events: list[dict[str, Any]]) -> None:
    write_scenario(folder, name, kind, expect, events, AGENT)


@pytest.fixture()
def scenario_dir(tmp_path: Path) -> Path:
    loud_wav(tmp_path / "long.wav", 0.2, 1.2)
    loud_wav(tmp_path / "short.wav", 0.1, 0.3, rate=22050)
    scenario(
        tmp_path,
        "barge",
        "barge_in",
        "interrupt",
        [{"at_s": 1.0, "audio": "long.wav", "text": "hold on"}],
    )
    scenario(tmp_path, "uhhuh", "backchannel", "continue", [{"at_s": 1.5, "audio": "short.wav"}])
    scenario(tmp_path, "quiet", "silence", "continue", [])
    (tmp_path / "broken.json").write_text('{"format": "bargein-scenario/2"}')
    return tmp_path


def stack() -> Stack:
    # The recogniser hears "hold on" in the first utterance and "uh huh" in the second.
    recognizer = ScriptedRecognizer(
        [([(0.0, ("hold", "on"))], ("hold", "on")), ([(0.0, ("uh",))], ("uh", "huh"))]
    )
    return Stack(LevelVAD(), recognizer, WordTTS())


def test_run_set_measures_each_scenario_at_the_ear(scenario_dir: Path) -> None:
    results = run_set(scenario_dir, stack=stack(), progress=False)
    by_name = {s["name"]: s for s in results["scenarios"]}
    assert set(by_name) == {"barge", "uhhuh", "quiet"}
    assert len(results["errors"]) == 1 and "broken.json" in results["errors"][0]
    assert "loop_lag" not in results  # virtual time: the loop is never late

    barge = by_name["barge"]
    # Ground-truth onset: anchor + at_s + 0.2 s of lead-in. The anchor is the first audible
    # agent sample: the first sentence is complete once the token after "word5." arrives,
    # 0.15 s + 6 tokens at 30 tokens/s, and the speaker plays it on its next 10 ms tick.
    assert barge["onset_s"] == pytest.approx(0.35 + 1.0 + 0.2, abs=0.011)
    assert barge["interrupted"] and not barge["missed"]
    assert 0 <= barge["stop_latency_ms"] <= 50  # one 32 ms frame plus a 10 ms tick
    assert barge["state_word_errors"] == 0 and barge["recorded_text"] == barge["heard_text"]
    assert barge["heard_text"] and barge["heard_text"] != AGENT
    assert barge["llm_tokens_after_cancel"] == 0
    assert barge["decision"] == "commit" and barge["decision_reason"] == "word:hold on"
    # Nothing audible leaks past the pause but the 10 ms tick it landed in.
    assert barge["after_tier1_ms"] is not None and barge["after_tier1_ms"] <= 10

    uhhuh = by_name["uhhuh"]
    assert not uhhuh["interrupted"] and not uhhuh["false_interruption"]
    assert uhhuh["decision"] == "resume"
    # Paused from the onset until the speech end was confirmed: 0.3 s of sound + hangover.
    assert 300 <= uhhuh["paused_ms"] <= 700
    assert uhhuh["recorded_text"] == AGENT == uhhuh["heard_text"]

    quiet = by_name["quiet"]
    assert not quiet["interrupted"] and quiet["paused_ms"] == 0
    assert quiet["recorded_text"] == AGENT == quiet["heard_text"]


def test_a_ducked_agent_inserts_no_silence_and_stops_at_the_decision(
    scenario_dir: Path,
) -> None:
    paused = {
        s["name"]: s for s in run_set(scenario_dir, stack=stack(), progress=False)["scenarios"]
    }
    ducked = {
        s["name"]: s
        for s in run_set(
            scenario_dir, stack=stack(), progress=False, options=RunOptions(tier1="duck")
        )["scenarios"]
    }
    # The backchannel: no silence inserted; the agent played on, ducked, for as long as
    # it would have been paused.
    assert paused["uhhuh"]["ducked_ms"] == 0
    assert ducked["uhhuh"]["paused_ms"] == 0 and not ducked["uhhuh"]["interrupted"]
    assert ducked["uhhuh"]["ducked_ms"] == pytest.approx(paused["uhhuh"]["paused_ms"], abs=40)
    assert ducked["uhhuh"]["recorded_text"] == AGENT == ducked["uhhuh"]["heard_text"]
    # The interruption: a duck is still audible, so the agent stops only at the commit.
    barge = ducked["barge"]
    assert barge["interrupted"] and barge["state_word_errors"] == 0
    assert barge["stop_latency_ms"] == pytest.approx(barge["decision_ms"], abs=45)
    assert barge["stop_latency_ms"] > paused["barge"]["stop_latency_ms"] + 20


def test_a_duck_limit_pauses_a_sound_still_undecided(scenario_dir: Path) -> None:
    options = RunOptions(tier1="duck", duck_limit_s=0.1)
    results = run_set(scenario_dir, stack=stack(), progress=False, options=options)
    by_name = {s["name"]: s for s in results["scenarios"]}
    uhhuh, barge = by_name["uhhuh"], by_name["barge"]
    # Ducked for the limit (to the speaker's 10 ms tick), then paused until the resume.
    assert 80 <= uhhuh["ducked_ms"] <= 110 and uhhuh["paused_ms"] > 150
    (record,) = uhhuh["timeline"]
    assert (record["tier1"], record["decision"]) == ("duck", "resume")
    assert record["paused_at"] - record["tier1_at"] == pytest.approx(0.1, abs=1e-6)
    # "hold on" is committed before the limit: no pause on the way.
    assert barge["timeline"][0]["paused_at"] is None and barge["interrupted"]


def test_each_scenario_starts_with_a_reset_recogniser(scenario_dir: Path) -> None:
    """Every scenario is a new call: a recogniser that adapts across utterances (as
    PocketSphinx does) is reset before each, so no scenario depends on the ones before."""
    played = stack()
    resets: list[int] = []
    played.recognizer.reset = lambda: resets.append(played.recognizer.index)  # type: ignore[attr-defined]
    run_set(scenario_dir, stack=played, progress=False)
    # Once before each of the three scenarios, the first before any utterance was opened.
    assert len(resets) == 3 and resets[0] == -1 and resets[1] >= 0


def test_summary_counts_and_percentiles(scenario_dir: Path) -> None:
    results = run_set(scenario_dir, stack=stack(), progress=False, only=["barge_in"])
    summary = results["summary"]
    assert set(summary) == {"barge_in", "all"}
    assert summary["barge_in"]["missed"] == 0 and summary["barge_in"]["count"] == 1
    assert "barge_in" in format_table(summary)


def test_metric_helpers() -> None:
    assert state_word_errors("One two, three.", "one two three") == 0
    assert state_word_errors("a b c", "a c") == 1
    assert state_word_errors("", "a b") == 2
    assert percentile([1, 2, 3, 4, 100], 50) == 3
    assert percentile([], 95) is None
    rows = [
        {
            "kind": "noise",
            "expect": "continue",
            "interrupted": True,
            "missed": False,
            "false_interruption": True,
            "stop_latency_ms": None,
            "paused_ms": 120.0,
            "state_word_errors": 0,
            "llm_tokens_after_cancel": 0,
        }
    ]
    assert summarize(rows)["noise"]["false_interruption_rate"] == 1.0
    assert summarize(rows)["noise"]["bursts"] == 0
    assert summarize([{**rows[0], "after_tier1_ms": 41.0}])["noise"]["bursts"] == 1
    # Audible 10 ms windows end at 0.3 s; the pause at 0.25 s (an earlier one was resumed)
    # leaves 50 ms behind it.
    audio = np.zeros(8000, dtype=np.float32)
    audio[1600:4800] = 0.5
    assert audible_after_ms(audio, 16000, [0.1, 0.25]) == pytest.approx(50.0)
    assert audible_after_ms(audio, 16000, [0.4]) == 0.0
    assert audible_after_ms(audio, 16000, None) is None
    assert audible_after_ms(audio, 16000, []) is None


def test_a_reply_abandoned_before_the_user_spoke_was_cut_early() -> None:
    """Stopped for good by its own echo or a noise before the user's sound: a stop latency
    of zero that the summary must not pass off as a fast stop."""
    reply = np.zeros(48000, dtype=np.float32)  # 3 s at 16 kHz
    reply[:16000] = 0.5  # audible for the first second only
    early = reply_stop_metrics(
        reply, 16000, 2.0, expect_interrupt=True, interrupted=True, controls=[1.0]
    )
    assert (early.stop_latency_ms, early.missed, early.cut_early) == (0.0, False, True)
    for controls in (
        [],  # silent between two sentences when the user began; paused at the onset
        [1.95],  # a pause a block or two before the ground-truth onset
        [0.5, 2.0],  # a pause at 0.5 s that the agent resumed from
    ):
        audio = reply.copy()
        if 0.5 in controls:
            audio[8000:12000] = 0.0
        stop = reply_stop_metrics(
            audio, 16000, 2.0, expect_interrupt=True, interrupted=True, controls=controls
        )
        assert not stop.cut_early, controls
    on_time = reply_stop_metrics(
        reply, 16000, 0.9, expect_interrupt=True, interrupted=True, controls=[0.9]
    )
    assert on_time.cut_early is False and on_time.stop_latency_ms == pytest.approx(100.0)
    kept = reply_stop_metrics(
        reply, 16000, 2.0, expect_interrupt=True, interrupted=False, controls=[1.0]
    )
    assert not kept.cut_early  # not abandoned: a missed interruption, not an early one
    row = {
        "kind": "echo",
        "expect": "interrupt",
        "interrupted": True,
        "missed": False,
        "false_interruption": False,
        "cut_early": True,
        "stop_latency_ms": 0.0,
        "paused_ms": None,
        "state_word_errors": 0,
        "llm_tokens_after_cancel": 0,
    }
    summary = summarize([row, {**row, "cut_early": False}])
    assert summary["echo"]["cut_early"] == 1
    assert "1/2" in format_table(summary).splitlines()[2]


def test_cli_reports_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["bench", str(tmp_path / "nope"), "--clock", "virtual"])
    assert code == 2
    assert "nope" in capsys.readouterr().err


def test_cli_refuses_a_duck_limit_it_cannot_use(
    scenario_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli_main(["bench", str(scenario_dir), "--clock", "virtual", "--duck-limit", "0.2"])
    assert code == 2
    assert "--duck-limit needs --tier1 duck" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["bench", str(scenario_dir), "--tier1", "duck", "--duck-limit", "-1"])
    assert "seconds must be zero or more" in capsys.readouterr().err


def test_cli_decodes_in_worker_processes_on_the_real_clock_only(
    scenario_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import bargein.bench.runner as runner
    import bargein.transports.stack as stacks

    pools: list[int] = []
    handed: list[object] = []

    def offloaded(processes: int) -> Callable[[], object]:
        pools.append(processes)
        return lambda: f"stream {len(handed)}"

    def fake_run_set(folder: Path, **kwargs: Any) -> dict[str, Any]:
        for _ in range(2):  # two stacks, as --jobs 2 builds
            kwargs["stack_factory"]()
        return {"summary": {}, "scenarios": [], "errors": []}

    def fake_stack(**kwargs: Any) -> Stack:
        handed.append(kwargs["recognizer"])
        return Stack(LevelVAD(), ScriptedRecognizer([]), WordTTS())

    monkeypatch.setattr(stacks, "offloaded_recognizer", offloaded)
    monkeypatch.setattr(runner, "run_set", fake_run_set)
    monkeypatch.setattr(runner, "default_stack", fake_stack)
    folder = str(scenario_dir)
    assert cli_main(["bench", folder, "--clock", "virtual", "--recognizer-processes", "2"]) == 0
    assert pools == [] and handed == [None, None]  # virtual time: in-process, exactly
    assert cli_main(["bench", folder, "--clock", "real"]) == 0
    assert pools == [stacks.RECOGNIZER_PROCESSES]  # one set of workers for both stacks
    assert handed[2:] == ["stream 2", "stream 3"]
    assert cli_main(["bench", folder, "--clock", "real", "--recognizer-processes", "0"]) == 0
    assert len(pools) == 1 and handed[4:] == [None, None]
    with pytest.raises(SystemExit):
        cli_main(["bench", folder, "--recognizer-processes", "-1"])
    assert "must be zero or more" in capsys.readouterr().err


def test_cli_runs_the_phrase_spotter_in_worker_processes_too(
    scenario_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bargein.bench.runner as runner
    import bargein.transports.stack as stacks

    pools: list[tuple[str, int]] = []
    handed: list[tuple[object, object]] = []

    def offloaded(kind: str) -> Callable[[int], Callable[[], str]]:
        def start(processes: int) -> Callable[[], str]:
            pools.append((kind, processes))
            return lambda: kind

        return start

    def fake_run_set(folder: Path, **kwargs: Any) -> dict[str, Any]:
        kwargs["stack_factory"]()
        return {"summary": {}, "scenarios": [], "errors": []}

    def fake_stack(**kwargs: Any) -> Stack:
        handed.append((kwargs["recognizer"], kwargs["phrase_spotter"]))
        return Stack(LevelVAD(), ScriptedRecognizer([]), WordTTS())

    monkeypatch.setattr(stacks, "offloaded_recognizer", offloaded("words"))
    monkeypatch.setattr(stacks, "offloaded_phrase_spotter", offloaded("phrases"))
    monkeypatch.setattr(runner, "run_set", fake_run_set)
    monkeypatch.setattr(runner, "default_stack", fake_stack)
    real = ["bench", str(scenario_dir), "--clock", "real", "--recognizer-processes", "2"]
    assert cli_main([*real, "--spotter", "phrases"]) == 0
    assert pools == [("words", 2), ("phrases", 2)] and handed == [("words", "phrases")]
    assert cli_main([*real, "--spotter", "off"]) == 0
    assert pools[2:] == [("words", 2)] and handed[1:] == [("words", None)]


def test_cli_sets_the_rule_s_early_resumes_and_answer_window(
    scenario_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import bargein.bench.runner as runner
    from bargein.decider import RuleDecider

    seen: list[RunOptions] = []

    def fake_run_set(folder: Path, **kwargs: Any) -> dict[str, Any]:
        seen.append(kwargs["options"])
        return {"summary": {}, "scenarios": [], "errors": []}

    monkeypatch.setattr(runner, "run_set", fake_run_set)
    assert cli_main(["bench", str(scenario_dir), "--no-early-resume"]) == 0
    factory = seen[0].decider_factory
    assert factory is not None
    decider = factory()
    assert isinstance(decider, RuleDecider) and decider.early_resume_readings == 0
    assert RuleDecider().early_resume_readings > 0
    code = cli_main(["bench", str(scenario_dir), "--no-early-resume", "--decider", "model"])
    assert code == 2 and "settings of the rule" in capsys.readouterr().err
    assert cli_main(["bench", str(scenario_dir), "--answer-window", "0.5"]) == 0
    factory = seen[1].decider_factory
    assert factory is not None
    decider = factory()
    assert isinstance(decider, RuleDecider) and decider.answer_window_s == 0.5
    assert decider.early_resume_readings == RuleDecider().early_resume_readings
    assert RuleDecider().answer_window_s == 1.0
    assert cli_main(["bench", str(scenario_dir), "--answer-window", "off"]) == 0
    factory = seen[2].decider_factory
    assert factory is not None
    decider = factory()
    assert isinstance(decider, RuleDecider) and decider.answer_window_s is None
    with pytest.raises(SystemExit):
        cli_main(["bench", str(scenario_dir), "--answer-window", "soon"])
    assert "not a number of seconds" in capsys.readouterr().err


class ReaderStream(ScriptedRecognizer):
    """A second opinion that, like Whisper's stream, names the reader it reads with."""

    def __init__(self, reader: object) -> None:
        super().__init__([])
        self.reader = reader


@pytest.mark.parametrize("share", [False, True])
def test_cli_can_give_concurrent_sessions_one_reader_as_the_server_does(
    scenario_dir: Path, monkeypatch: pytest.MonkeyPatch, share: bool
) -> None:
    import bargein.bench.runner as runner

    def fake_default_stack(reader: object = None, **settings: Any) -> Stack:
        second = ReaderStream(reader if reader is not None else object())
        return Stack(LevelVAD(), ScriptedRecognizer([]), WordTTS(), second_opinion=second)

    stacks: list[Stack] = []

    def fake_run_set(folder: Path, **kwargs: Any) -> dict[str, Any]:
        stacks.extend(kwargs["stack_factory"]() for _ in range(3))  # --jobs 3
        return {"summary": {}, "scenarios": [], "errors": []}

    monkeypatch.setattr(runner, "default_stack", fake_default_stack)
    monkeypatch.setattr(runner, "run_set", fake_run_set)
    args = ["bench", str(scenario_dir), "--jobs", "3", *(["--share-reader"] if share else [])]
    assert cli_main(args) == 0
    readers = {id(getattr(s.second_opinion, "reader", None)) for s in stacks}
    assert len(readers) == (1 if share else 3)


def test_cli_refuses_to_share_a_reader_it_does_not_use(
    scenario_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli_main(["bench", str(scenario_dir), "--share-reader", "--spotter", "off"])
    assert code == 2 and "--share-reader shares Whisper" in capsys.readouterr().err


def test_run_set_survives_a_bad_restart_option(scenario_dir: Path) -> None:
    results = run_set(
        scenario_dir,
        stack=stack(),
        progress=False,
        only=["barge_in"],
        options=RunOptions(restart_policy="restart"),
    )
    assert results["scenarios"][0]["interrupted"]


@pytest.mark.parametrize(("gain_db", "heard"), [(0.0, True), (-40.0, False)])
def test_echo_feeds_the_speaker_back_into_the_microphone(
    tmp_path: Path, gain_db: float, heard: bool
) -> None:
    doc = {
        "format": "bargein-scenario/1",
        "name": "echo-only",
        "kind": "echo",
        "expect": "continue",
        "agent_text": AGENT,
        "events": [],
        "echo": {"gain_db": gain_db, "delay_ms": 100},
    }
    (tmp_path / "echo.json").write_text(json.dumps(doc))
    # Echo handling off: this is the raw path from the speaker to the microphone.
    options = RunOptions(echo="off")
    [result] = run_set(tmp_path, stack=stack(), options=options, progress=False)["scenarios"]
    if not heard:
        assert result["timeline"] == []
        return
    # The agent starts at 0.35 s (see above); its own voice reaches the mic 100 ms later.
    onset = result["timeline"][0]["onset_at"]
    assert 0.45 <= onset <= 0.45 + 0.02


def test_the_same_run_works_on_the_real_clock(tmp_path: Path) -> None:
    # Processing time counts here, so only what cannot depend on it is asserted.
    loud_wav(tmp_path / "long.wav", 0.2, 0.8)
    doc = {
        "format": "bargein-scenario/1",
        "name": "short-barge",
        "kind": "barge_in",
        "expect": "interrupt",
        "agent_text": "One two three four five. Six seven eight nine ten.",
        "events": [{"at_s": 0.3, "audio": "long.wav"}],
        "echo": None,
    }
    (tmp_path / "short.json").write_text(json.dumps(doc))
    # Twice, two at a time: each job has its own stack, so the runs cannot disturb
    # each other's models, and every result keeps its run number.
    made: list[Stack] = []

    def factory() -> Stack:
        made.append(stack())
        return made[-1]

    results = run_set(
        tmp_path, clock="real", stack_factory=factory, progress=False, repeat=2, jobs=2
    )
    assert len(made) == 2 and results["jobs"] == 2 and results["repeat"] == 2
    assert sorted(r["run"] for r in results["scenarios"]) == [1, 2]
    for result in results["scenarios"]:
        assert result["interrupted"] and not result["missed"]
        assert result["state_word_errors"] == 0 and result["llm_tokens_after_cancel"] == 0
        assert result["timeline"][0]["onset_at"] < 5.0  # relative to the reply request
    assert results["summary"]["barge_in"]["count"] == 2
    # The loop the sessions share was watched while they played (figures vary by machine).
    assert results["loop_lag"]["samples"] > 0 and results["loop_lag"]["max_ms"] >= 0.0


def test_progress_draws_one_line_on_a_terminal_and_plain_lines_in_a_log() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    log = io.StringIO()
    plain = Progress(2, stream=log)
    plain.start("a")
    plain.finish("a")
    plain.start("b")
    plain.finish("b")
    plain.close()
    assert log.getvalue() == "[1/2] a\n[2/2] b\n"

    term = Terminal()
    bar = Progress(4, stream=term)
    bar.start("a")
    bar.finish("a")
    bar.close()
    assert "\n" not in term.getvalue()[:-1] and term.getvalue().count("\r") == 2
    assert bar.line("x", 90.0) == "[######..................] 1/4 1:30 (about 4:30 left) x"
    silent = io.StringIO()
    Progress(3, stream=silent, enabled=False).start("a")
    assert silent.getvalue() == ""


def test_repeat_and_jobs_must_be_positive(scenario_dir: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        run_set(scenario_dir, stack=stack(), progress=False, repeat=0)


def test_the_demo_command_benchmarks_the_built_in_set(
    scenario_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The README's first command, with a small set standing in for the built-in one.
    import bargein.bench.runner
    import bargein.builtin_set

    monkeypatch.setattr(bargein.builtin_set, "generate_builtin_set", lambda dest: dest)
    monkeypatch.setattr(bargein.bench.runner, "default_stack", lambda **settings: stack())
    (scenario_dir / "broken.json").unlink()  # a clean set: the command succeeds
    out = scenario_dir.parent / "results.json"
    assert cli_main(["bench-demo", "--dest", str(scenario_dir), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["scenarios"]
    assert "barge_in" in capsys.readouterr().out


def test_results_say_when_auto_started_its_canceller(tmp_path: Path) -> None:
    """A late tier 1 is worth checking against a canceller started where there is no echo;
    the results carry when ``--echo auto`` started one, on the scenario's timeline."""
    room = {"gain_db": -6, "delay_ms": 150, "reverb_s": 0.7}
    for name, echo in (("room", room), ("headset", None)):
        doc: dict[str, Any] = {
            "format": "bargein-scenario/1",
            "name": name,
            "kind": "echo",
            "expect": "continue",
            "agent_text": AGENT,
            "events": [],
            "echo": echo,
        }
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    results = run_set(tmp_path, stack=stack(), options=RunOptions(echo="auto"), progress=False)
    by_name = {s["name"]: s for s in results["scenarios"]}
    assert by_name["headset"]["canceller_started_s"] is None
    started = by_name["room"]["canceller_started_s"]
    # The agent starts at 0.35 s; the verdict needs its echo to have sounded a while.
    assert started is not None and 0.45 < started < 5.0
