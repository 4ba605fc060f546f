"""The HTML report and the traces behind its plots, on the virtual clock with doubled models."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread

from bargein.bench.report import problems_of
from bargein.bench.runner import Stack, run_set
from bargein.bench.trace import (
    Mark,
    ScenarioTrace,
    load_trace,
    marks_from_records,
    trace_file,
)
from bargein.cli import main as cli_main
from tests.doubles import LevelVAD, ScriptedRecognizer, WordTTS, loud_wav, write_scenario

AGENT = " ".join(f"word{i}." if i % 6 == 5 else f"word{i}" for i in range(30))
PNG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def stack() -> Stack:
    # "hold on" commits; "uh huh" is a backchannel, so the agent resumes.
    recognizer = ScriptedRecognizer(
        [([(0.0, ("hold", "on"))], ("hold", "on")), ([(0.0, ("uh",))], ("uh", "huh"))]
    )
    return Stack(LevelVAD(), recognizer, WordTTS())


def make_set(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    loud_wav(folder / "long.wav", 0.2, 1.2)
    loud_wav(folder / "short.wav", 0.1, 0.3)
    events = [{"at_s": 1.0, "audio": "long.wav", "text": "hold on"}]
    write_scenario(folder, "barge", "barge_in", "interrupt", events, AGENT)
    # The user means to interrupt but the agent hears a backchannel: a miss.
    events = [{"at_s": 1.0, "audio": "short.wav", "text": "uh huh"}]
    write_scenario(folder, "mumble", "short_command", "interrupt", events, AGENT)
    write_scenario(folder, "quiet", "silence", "continue", [], AGENT)
    return folder


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One ``bargein bench --out --traces --report`` run, shared by the tests below."""
    import bargein.bench.runner

    root = tmp_path_factory.mktemp("bench")
    folder = make_set(root / "set")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bargein.bench.runner, "default_stack", lambda **settings: stack())
        code = cli_main(
            [
                "bench",
                str(folder),
                "--clock",
                "virtual",
                "--out",
                str(root / "run.json"),
                "--traces",
                str(root / "saved"),
                "--report",
                str(root / "run.html"),
            ]
        )
    assert code == 0
    yield root


def pngs(page: str) -> list[np.ndarray]:
    return [imread(io.BytesIO(base64.b64decode(data))) for data in PNG.findall(page)]


def section(page: str, css_class: str) -> str:
    start = page.index(f'<section class="{css_class}"')
    return page[start : page.index("</section>", start)]


def cells(row: str) -> list[str]:
    return re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def test_the_runner_hands_over_a_trace_only_when_asked(tmp_path: Path) -> None:
    folder = make_set(tmp_path)
    traces: list[ScenarioTrace] = []
    traced = run_set(folder, stack=stack(), progress=False, on_trace=traces.append)
    plain = run_set(folder, stack=stack(), progress=False)
    assert traced["scenarios"] == plain["scenarios"]  # tracing changes nothing measured

    by_name = {t.name: t for t in traces}
    assert set(by_name) == {"barge", "mumble", "quiet"}
    result = {s["name"]: s for s in traced["scenarios"]}["barge"]
    trace = by_name["barge"]
    # The microphone as fed: silent until the user's sound, loud from its onset on.
    onset = result["onset_s"]
    at_onset = round(onset * trace.mic_rate)
    assert trace.mic_rate == 16000
    assert np.all(trace.mic[: at_onset - 1] == 0) and trace.mic[at_onset + 10] == pytest.approx(
        0.3, abs=1e-3
    )
    # The loudspeaker: the reply's audio, then silence once it was flushed.
    assert trace.output_rate == WordTTS().sample_rate and trace.output_reply is not None
    assert len(trace.output) == len(trace.output_reply)
    assert np.any(trace.output[trace.output_reply == 1] > 0.1)
    kinds = [m.kind for m in trace.marks]
    for kind in ("onset", "tier1", "decision", "flush", "cancel", "stop"):
        assert kind in kinds
    assert "resume" not in kinds
    [decision] = trace.marks_of("decision")
    assert decision.label == "commit (word:hold on)"
    assert decision.at_s == pytest.approx(result["timeline"][0]["decided_at"])
    assert trace.marks_of("tier1")[0].label == "pause"
    assert trace.marks_of("onset")[0].at_s == onset
    # The stop mark is the same "last audible sample" the stop latency is measured to.
    stop = trace.marks_of("stop")[0].at_s
    assert (stop - onset) * 1000 == pytest.approx(result["stop_latency_ms"], abs=0.5)

    mumble = by_name["mumble"]
    assert [m.label.split(" ")[0] for m in mumble.marks_of("decision")] == ["resume"]
    assert mumble.marks_of("resume") and not mumble.marks_of("cancel")


def test_marks_from_records_of_another_clock() -> None:
    # A far end's records are on the server's clock; the offset moves them onto the ear's.
    records = [
        {
            "reply_id": 1,
            "tier1": "duck",
            "tier1_at": 100.0,
            "decision": "resume",
            "reason": "",
            "decided_at": 100.5,
            "flushed_at": None,
            "cancelled_at": None,
            "resumed_at": 100.5,
        }
    ]
    assert marks_from_records(records, offset_s=-98.0) == [
        Mark("tier1", 2.0, "duck"),
        Mark("decision", 2.5, "resume"),
        Mark("resume", 2.5, "resume"),
    ]


def test_the_bench_report_has_a_plot_per_scenario_the_summary_and_the_problems(
    bench_run: Path,
) -> None:
    page = (bench_run / "run.html").read_text()
    results = json.loads((bench_run / "run.json").read_text())
    scenarios = results["scenarios"]

    images = pngs(page)
    assert len(images) == len(scenarios) == 3
    assert all(image.shape[:2] == (220, 900) for image in images)
    assert all(image.std() > 0.01 for image in images)  # something was drawn
    # Self-contained: nothing fetched, nothing run.
    assert "http://" not in page and "https://" not in page and "<script" not in page

    # The header says what ran.
    assert "bargein bench " in page and "--clock virtual" in page
    assert results["run"]["command"].startswith("bargein bench")
    assert results["run"]["machine"]["cores"]

    # The summary table shows the results' own numbers.
    summary = section(page, "run").split('<table class="summary">')[1].split("</table>")[0]
    for kind, row in results["summary"].items():
        found = re.search(rf'<tr data-kind="{kind}">(.*?)</tr>', summary)
        assert found, kind
        got = cells(found.group(1))
        assert got[0] == kind
        assert got[1] == str(row["count"])
        assert got[2] == f"{row['missed']}/{row['expect_interrupt']}"
        assert got[3] == f"{row['false_interruptions']}/{row['expect_continue']}"
        assert got[4] == f"{row['cut_early']}/{row['expect_interrupt']}"
        assert got[5] == ms(row["stop_latency_ms"]["p50"])
        assert got[7] == ms(row["stop_latency_ms"]["max"])
        assert got[8] == str(row["bursts"])
        assert got[11] == str(row["state_word_errors"])
    assert results["summary"]["short_command"]["missed"] == 1

    # The scenario the metrics call missed is listed first, as a problem; the rest are not.
    by_name = {s["name"]: s for s in scenarios}
    assert by_name["mumble"]["missed"] and problems_of(by_name["mumble"]) == ["missed"]
    assert not problems_of(by_name["barge"]) and not problems_of(by_name["quiet"])
    assert problems_of({**by_name["barge"], "cut_early": True}) == ["cut off before the user spoke"]
    problems = section(page, "problems")
    assert "Problems (1)" in problems
    assert 'id="r0-mumble"' in problems and "missed" in problems
    assert "r0-barge" not in problems and "r0-quiet" not in problems
    assert page.index('id="r0-mumble"') < page.index('id="r0-barge"')


def test_saved_traces_round_trip_into_a_later_report(bench_run: Path, tmp_path: Path) -> None:
    folder = make_set(tmp_path / "again")
    fresh: list[ScenarioTrace] = []
    run_set(folder, stack=stack(), progress=False, on_trace=fresh.append)
    original = {t.name: t for t in fresh}["barge"]

    saved = load_trace(trace_file(bench_run / "saved", "barge"))
    assert saved.name == "barge" and saved.mic_rate == saved.output_rate == 8000
    assert saved.marks == original.marks
    assert saved.duration_s == pytest.approx(original.duration_s, abs=0.01)
    assert saved.output_reply is not None and original.output_reply is not None
    # 8 kHz, 16-bit: the waveform's level survives (the test voice is already at 8 kHz).
    assert np.max(np.abs(saved.output - original.output[: len(saved.output)])) < 1e-3
    every_other = original.mic[::2][: len(saved.mic)]
    loud = np.abs(every_other) > 0.25
    assert np.mean(np.abs(saved.mic[loud] - every_other[loud]) < 0.02) > 0.95

    # `bargein report` finds the traces through the results' "traces" field...
    out = tmp_path / "again.html"
    assert cli_main(["report", str(bench_run / "run.json"), "-o", str(out)]) == 0
    assert len(pngs(out.read_text())) == 3
    # ...or as STEM.traces next to a results file that was moved without that field.
    moved = tmp_path / "moved"
    moved.mkdir()
    results = json.loads((bench_run / "run.json").read_text())
    del results["traces"]
    (moved / "night.json").write_text(json.dumps(results))
    shutil.copytree(bench_run / "saved", moved / "night.traces")
    assert cli_main(["report", str(moved / "night.json"), "-o", str(out)]) == 0
    assert len(pngs(out.read_text())) == 3


def test_combined_results_are_compared_side_by_side(bench_run: Path, tmp_path: Path) -> None:
    ours = json.loads((bench_run / "run.json").read_text())
    peer: dict[str, Any] = json.loads(json.dumps(ours))
    peer["label"] = "peer agent"
    peer.pop("run")
    peer.pop("traces")
    peer["summary"].pop("silence")  # a kind the peer did not run
    for s in peer["scenarios"]:
        s["stop_latency_ms"] = 480.0 if s["expect"] == "interrupt" else None
    (tmp_path / "peer.json").write_text(json.dumps(peer))

    out = tmp_path / "both.html"
    assert (
        cli_main(
            ["report", str(bench_run / "run.json"), str(tmp_path / "peer.json"), "-o", str(out)]
        )
        == 0
    )
    page = out.read_text()
    comparison = page[page.index('id="comparison"') : page.index('class="run"')]
    groups = re.findall(r'<th colspan="\d+" class="group">(.*?)</th>', comparison)
    # The first run is labelled by its file's stem (no label or system field), the peer by
    # its label, in both tables.
    assert groups == ["run", "peer agent", "run", "peer agent"]
    by_kind = comparison.split("</table>")[0]
    row = re.search(r'<tr data-kind="silence">(.*?)</tr>', by_kind)
    assert row is not None
    texts = cells(row.group(1))
    assert texts[0] == "silence" and len(texts) == 1 + 2 * 8
    assert texts[1] == "1" and texts[9] == "-"  # the peer has no silence row
    by_scenario = comparison.split("</table>")[1]
    row = re.search(r"<tr><th>barge</th>(.*?)</tr>", by_scenario)
    assert row is not None
    ours_barge = {s["name"]: s for s in ours["scenarios"]}["barge"]
    assert cells(row.group(1)) == [
        "stopped",
        ms(ours_barge["stop_latency_ms"]),
        "0",
        "stopped",
        "480",
        "0",
    ]
    # Only our run has traces; the peer's section is tables only.
    assert len(pngs(page)) == 3
    assert "no traces for this run" in page[page.index('id="run1"') :]

    # Two runs of one system (an ablation) still get distinct labels.
    for name in ("base", "no-preemptive"):
        doc = dict(peer, system="bargein")
        doc.pop("label")
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    files = [str(tmp_path / "base.json"), str(tmp_path / "no-preemptive.json")]
    assert cli_main(["report", *files, "-o", str(out)]) == 0
    groups = re.findall(r'class="group">(.*?)</th>', out.read_text())
    assert groups[:2] == ["bargein (base)", "bargein (no-preemptive)"]


def test_report_refuses_a_file_that_is_not_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.json").write_text('{"hello": 1}')
    assert cli_main(["report", str(tmp_path / "x.json"), "-o", str(tmp_path / "r.html")]) == 2
    assert "not a bargein results file" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()
