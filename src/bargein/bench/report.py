"""The benchmark's HTML report: one self-contained page for one run or several.

The page has, per run, a header (command, system under test, machine, date, versions),
the per-kind summary table, a "problems" section with every scenario whose expectation
failed (missed, false interruption, cut off before the user spoke, words recorded that
were not heard, or errors), then every other scenario. A scenario with a trace
(:mod:`bargein.bench.trace`) gets a timeline plot: the microphone and the loudspeaker
waveforms on one time axis, with the interruption's moments drawn as vertical lines.
Runs without traces (a far end, a peer's results file) get everything but the plots.
With several runs the page opens with comparison tables: one column group per run, the
same rows.

Plots are PNG files embedded as base64; the styles are inline; there is no script and
no external address, so the page can be mailed or archived as is.
"""

from __future__ import annotations

import argparse
import base64
import difflib
import html
import io
import json
import os
import platform
import re
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from bargein.bench.metrics import format_cell, words_of
from bargein.bench.trace import (
    Mark,
    MarkKind,
    ScenarioTrace,
    load_trace,
    save_trace,
    trace_paths,
)
from bargein.providers.base import FloatAudio

PLOT_SIZE_PX = (900, 220)
PLOT_DPI = 100
VERSIONED = ("bargein", "numpy", "onnxruntime", "piper-tts", "pocketsphinx", "faster-whisper")

MARK_COLOURS: dict[MarkKind, str] = {
    "onset": "#d62728",
    "tier1": "#ff7f0e",
    "decision": "#9467bd",
    "flush": "#222222",
    "cancel": "#222222",
    "resume": "#2ca02c",
    "stop": "#8c564b",
}
MARK_STYLES: dict[MarkKind, str] = {
    "onset": "-",
    "tier1": "--",
    "decision": "-",
    "flush": ":",
    "cancel": ":",
    "resume": "--",
    "stop": "-",
}
MARK_MEANING: dict[MarkKind, str] = {
    "onset": "user sound onset (ground truth)",
    "tier1": "tier 1: pause / duck / hold",
    "decision": "tier 2: commit or resume",
    "flush": "flush / cancel",
    "resume": "output resumed",
    "stop": "end of the reply's last audible output",
}
MIC_COLOUR = "#555555"
REPLY_COLOUR = "#4c72b0"
LATER_REPLY_COLOUR = "#a8a8a8"


# -- the run's header -----------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in VERSIONED:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


def describe_system(args: argparse.Namespace) -> str:
    """The system under test, from the ``bench`` command's options."""
    target = getattr(args, "target", None)
    if target:
        return f"the server at {target}, measured at its far end"
    options = [
        f"restart policy {getattr(args, 'restart_policy', 'respond')}",
        "preemptive off" if getattr(args, "no_preemptive", False) else "preemptive on",
        "loudness onset off" if getattr(args, "no_loudness_onset", False) else "loudness onset on",
        "Whisper transcripts" if getattr(args, "transcripts", False) else "no transcripts",
    ]
    return "bargein in process (" + ", ".join(options) + ")"


def run_info(command: str, system: str) -> dict[str, Any]:
    """The header of a run: what ran, on what, when."""
    return {
        "command": command,
        "system": system,
        "machine": {
            "cores": os.cpu_count(),
            "cpu": cpu_model(),
            "platform": platform.platform(),
        },
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    }


def annotate_results(results: dict[str, Any], args: argparse.Namespace) -> None:
    """Add the run's header (``run``) and, with ``--traces`` and ``--out``, where the
    traces are relative to the results file (``traces``)."""
    argv = getattr(args, "argv", None)
    command = "bargein " + shlex.join(argv) if argv is not None else f"bargein {args.command}"
    results["run"] = run_info(command, describe_system(args))
    traces, out = getattr(args, "traces", None), getattr(args, "out", None)
    if getattr(args, "target", None) and (traces or getattr(args, "report", None)):
        print(
            "note: the far end records no traces yet: the report has tables only", file=sys.stderr
        )
    elif traces and out:
        results["traces"] = os.path.relpath(Path(traces).resolve(), Path(out).resolve().parent)


class TraceCollector:
    """Takes each trace from the runner: saves it (``--traces``) and draws its plot
    (``--report``), so no audio is kept once a scenario is done."""

    def __init__(self, folder: Path | None, plot: bool) -> None:
        self.folder = folder
        self.plot = plot
        self.plots: dict[str, bytes] = {}

    def __call__(self, trace: ScenarioTrace) -> None:
        if self.folder is not None:
            save_trace(trace, self.folder)
        if self.plot:
            self.plots[trace.name] = plot_png(trace)


def collector_for(args: argparse.Namespace) -> TraceCollector | None:
    """What ``bench --report/--traces`` needs from the runner; None when neither is given."""
    traces, report = getattr(args, "traces", None), getattr(args, "report", None)
    if not traces and not report:
        return None
    return TraceCollector(Path(traces) if traces else None, plot=bool(report))


# -- the timeline plot ----------------------------------------------------------------------


def _envelope(
    audio: FloatAudio, rate: int, duration_s: float, bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin minimum and maximum: a waveform drawn at one bin per pixel column."""
    total = max(1, int(np.ceil(duration_s * rate)))
    per_bin = max(1, int(np.ceil(total / bins)))
    padded = np.zeros(per_bin * bins, dtype=np.float32)
    n = min(len(audio), len(padded))
    padded[:n] = audio[:n]
    shaped = padded.reshape(bins, per_bin)
    times = (np.arange(bins) + 0.5) * per_bin / rate
    return times, shaped.min(axis=1), shaped.max(axis=1)


def _short_label(mark: Mark) -> str:
    text = mark.label.split(" (", 1)[0] if mark.kind == "decision" else mark.kind
    if mark.kind == "tier1":
        text = mark.label or "tier 1"
    return text if mark.reply_id in (0, 1) else f"r{mark.reply_id} {text}"


def _clusters(marks: Sequence[Mark], width_s: float) -> list[list[Mark]]:
    """Marks close enough that their labels would collide, grouped."""
    groups: list[list[Mark]] = []
    for mark in sorted(marks, key=lambda m: m.at_s):
        if groups and mark.at_s - groups[-1][0].at_s <= width_s:
            groups[-1].append(mark)
        else:
            groups.append([mark])
    return groups


def plot_png(trace: ScenarioTrace) -> bytes:
    """The scenario's timeline as a 900x220 PNG (matplotlib, Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.transforms import blended_transform_factory

    width, height = PLOT_SIZE_PX
    fig = Figure(figsize=(width / PLOT_DPI, height / PLOT_DPI), dpi=PLOT_DPI)
    FigureCanvasAgg(fig)
    mic_ax = fig.add_axes((0.055, 0.57, 0.935, 0.29))
    out_ax = fig.add_axes((0.055, 0.2, 0.935, 0.36), sharex=mic_ax)
    duration = max(trace.duration_s, 0.1)
    bins = int(width * 0.935)

    t, lo, hi = _envelope(trace.mic, trace.mic_rate, duration, bins)
    mic_ax.fill_between(t, lo, hi, color=MIC_COLOUR, linewidth=0.4)
    _scale(mic_ax, lo, hi)
    if trace.output_reply is not None:
        first = np.where(trace.output_reply == 1, trace.output, 0.0).astype(np.float32)
        later = np.where(trace.output_reply > 1, trace.output, 0.0).astype(np.float32)
        t, lo2, hi2 = _envelope(later, trace.output_rate, duration, bins)
        out_ax.fill_between(t, lo2, hi2, color=LATER_REPLY_COLOUR, linewidth=0.4)
        t, lo, hi = _envelope(first, trace.output_rate, duration, bins)
        out_ax.fill_between(t, lo, hi, color=REPLY_COLOUR, linewidth=0.4)
        lo, hi = np.minimum(lo, lo2), np.maximum(hi, hi2)
    else:
        t, lo, hi = _envelope(trace.output, trace.output_rate, duration, bins)
        out_ax.fill_between(t, lo, hi, color=REPLY_COLOUR, linewidth=0.4)
    _scale(out_ax, lo, hi)

    for ax, name in ((mic_ax, "mic"), (out_ax, "agent")):
        ax.set_ylabel(name, fontsize=8, labelpad=2)
        ax.set_yticks([])
        ax.tick_params(labelsize=7, length=2, pad=1)
        ax.margins(x=0)
    mic_ax.tick_params(labelbottom=False)
    out_ax.set_xlim(0, duration)
    out_ax.set_xlabel("seconds from the reply request", fontsize=7, labelpad=1)

    for mark in trace.marks:
        alpha = 1.0 if mark.reply_id in (0, 1) else 0.45
        for ax in (mic_ax, out_ax):
            ax.axvline(
                mark.at_s,
                color=MARK_COLOURS[mark.kind],
                linestyle=MARK_STYLES[mark.kind],
                linewidth=1.1,
                alpha=alpha,
            )
    for start, end in _tentative_spans(trace.marks):
        for ax in (mic_ax, out_ax):
            ax.axvspan(start, end, color=MARK_COLOURS["tier1"], alpha=0.12, linewidth=0)
    above = blended_transform_factory(mic_ax.transData, mic_ax.transAxes)
    for row, group in enumerate(_clusters(trace.marks, duration * 0.06)):
        labels = list(dict.fromkeys(_short_label(m) for m in group))
        mic_ax.text(
            group[0].at_s,
            1.03 + 0.2 * (row % 2),
            "+".join(labels),
            transform=above,
            fontsize=7,
            color=MARK_COLOURS[group[0].kind],
            ha="right" if group[0].at_s > 0.8 * duration else "left",
            va="bottom",
            clip_on=False,
        )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=PLOT_DPI)
    return buffer.getvalue()


def _scale(ax: Any, lo: np.ndarray, hi: np.ndarray) -> None:
    peak = float(max(np.max(np.abs(lo), initial=0.0), np.max(np.abs(hi), initial=0.0)))
    limit = max(peak, 0.02) * 1.1
    ax.set_ylim(-limit, limit)


def _tentative_spans(marks: Sequence[Mark]) -> list[tuple[float, float]]:
    """From each tier-1 action to the decision that followed it (same reply)."""
    spans = []
    for mark in marks:
        if mark.kind != "tier1":
            continue
        later = [
            m.at_s
            for m in marks
            if m.kind == "decision" and m.reply_id == mark.reply_id and m.at_s >= mark.at_s
        ]
        if later:
            spans.append((mark.at_s, min(later)))
    return spans


# -- runs -----------------------------------------------------------------------------------


@dataclass
class Run:
    """One results file (or a run just made) and the plots of its scenarios."""

    label: str
    results: Mapping[str, Any]
    plots: dict[str, bytes] = field(default_factory=dict)
    source: str | None = None
    traced: bool = False
    """Whether traces were looked for and found (a run may have traces for some only)."""


def label_of(results: Mapping[str, Any], fallback: str) -> str:
    for key in ("label", "system"):
        value = results.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return fallback


def traces_folder(results_path: Path, results: Mapping[str, Any]) -> Path | None:
    """Where a results file's traces are: its ``traces`` field (relative to the file),
    else a ``STEM.traces`` folder next to it; None when neither exists."""
    candidates: list[Path] = []
    recorded = results.get("traces")
    if isinstance(recorded, str):
        candidates.append(results_path.parent / recorded)
    candidates.append(results_path.with_name(results_path.stem + ".traces"))
    for folder in candidates:
        if folder.is_dir():
            return folder
    return None


def load_run(path: Path, *, plots: bool = True) -> Run:
    """A saved results file, with plots drawn from its traces when they are found."""
    results = json.loads(path.read_text())
    if not isinstance(results, dict) or not isinstance(results.get("scenarios"), list):
        raise ValueError("not a bargein results file (no 'scenarios' list)")
    run = Run(label_of(results, path.stem), results, source=str(path))
    folder = traces_folder(path, results) if plots else None
    if folder is not None:
        names = {s.get("name") for s in results["scenarios"]}
        for name, trace_path in trace_paths(folder).items():
            if name in names:
                run.plots[name] = plot_png(load_trace(trace_path))
        run.traced = bool(run.plots)
    return run


def distinct_labels(runs: Sequence[Run]) -> None:
    """Make labels unique (two ablations of one system share its name)."""
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
    for run in runs:
        if seen[run.label] > 1:
            stem = Path(run.source).stem if run.source else ""
            run.label = f"{run.label} ({stem})" if stem else run.label
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.label] = counts.get(run.label, 0) + 1
        if counts[run.label] > 1:
            run.label = f"{run.label} #{counts[run.label]}"


# -- what failed ----------------------------------------------------------------------------


def problems_of(scenario: Mapping[str, Any]) -> list[str]:
    """Why a scenario failed its expectation; empty when it did not."""
    found = []
    if scenario.get("missed"):
        found.append("missed")
    if scenario.get("false_interruption"):
        found.append("false interruption")
    if scenario.get("cut_early"):
        found.append("cut off before the user spoke")
    errors = scenario.get("state_word_errors")
    if isinstance(errors, int) and errors > 0:
        found.append(f"state word errors: {errors}")
    if scenario.get("errors"):
        found.append("errors")
    return found


# -- the page -------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 0) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format_cell(value, digits)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


Column = tuple[str, Callable[[Mapping[str, Any]], str]]

SUMMARY_COLUMNS: tuple[Column, ...] = (
    ("n", lambda s: _fmt(s["count"])),
    ("missed", lambda s: f"{s['missed']}/{s['expect_interrupt']}"),
    ("false int.", lambda s: f"{s['false_interruptions']}/{s['expect_continue']}"),
    ("cut early", lambda s: f"{s.get('cut_early', 0)}/{s['expect_interrupt']}"),
    ("stop p50", lambda s: _fmt(s["stop_latency_ms"]["p50"])),
    ("stop p95", lambda s: _fmt(s["stop_latency_ms"]["p95"])),
    ("stop max", lambda s: _fmt(s["stop_latency_ms"]["max"])),
    ("bursts", lambda s: _fmt(s.get("bursts"))),
    ("paused p95", lambda s: _fmt(s["paused_ms"]["p95"])),
    ("decide p95", lambda s: _fmt(s.get("decision_ms", {}).get("p95"))),
    ("state err", lambda s: _fmt(s["state_word_errors"])),
    ("tok after cancel", lambda s: _fmt(s["llm_tokens_after_cancel"])),
    ("answer p50", lambda s: _fmt(s.get("response_ms", {}).get("p50"))),
    (
        "wasted calls",
        lambda s: f"{s.get('preemptive_discarded', 0)}/{s.get('preemptive_calls', 0)}",
    ),
    ("turn WER", lambda s: _pct(s.get("user_turn_wer"))),
)
COMPARED = (
    "n",
    "missed",
    "false int.",
    "cut early",
    "stop p50",
    "stop p95",
    "paused p95",
    "state err",
)


def _cell(summary: Mapping[str, Any], header: str) -> str:
    for name, get in SUMMARY_COLUMNS:
        if name == header:
            try:
                return get(summary)
            except (KeyError, TypeError, AttributeError):
                return "-"
    raise KeyError(header)


def _kinds(runs: Iterable[Run]) -> list[str]:
    kinds: dict[str, None] = {}
    for run in runs:
        kinds.update(dict.fromkeys(k for k in run.results.get("summary", {}) if k != "all"))
    return [*kinds, "all"]


def summary_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    headers = ["kind", *(name for name, _ in SUMMARY_COLUMNS)]
    rows = []
    for kind, row in summary.items():
        cells = "".join(f"<td>{html.escape(_cell(row, h))}</td>" for h in headers[1:])
        rows.append(f'<tr data-kind="{html.escape(kind)}"><th>{html.escape(kind)}</th>{cells}</tr>')
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    return (
        f'<table class="summary"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        '<p class="note">latencies in ms; "missed" and "false int." count failures over '
        "scenarios of that expectation</p>"
    )


def _group_head(runs: Sequence[Run], first: str, columns: Sequence[str]) -> str:
    groups = "".join(
        f'<th colspan="{len(columns)}" class="group">{html.escape(r.label)}</th>' for r in runs
    )
    names = "".join(f"<th>{html.escape(c)}</th>" for _ in runs for c in columns)
    return f'<thead><tr><th rowspan="2">{first}</th>{groups}</tr><tr>{names}</tr></thead>'


def comparison_tables(runs: Sequence[Run]) -> str:
    """Per kind, then per scenario: one column group per run."""
    rows = []
    for kind in _kinds(runs):
        cells = []
        for run in runs:
            summary = run.results.get("summary", {}).get(kind)
            for i, header in enumerate(COMPARED):
                text = "-" if summary is None else _cell(summary, header)
                edge = ' class="edge"' if i == 0 else ""
                cells.append(f"<td{edge}>{html.escape(text)}</td>")
        rows.append(f'<tr data-kind="{html.escape(kind)}"><th>{html.escape(kind)}</th>')
        rows[-1] += "".join(cells) + "</tr>"
    kinds = (
        f'<table class="compare">{_group_head(runs, "kind", COMPARED)}'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )

    per_scenario = ("outcome", "stop ms", "state err")
    names: dict[str, None] = {}
    indexed = []
    for run in runs:
        by_name = {s["name"]: s for s in run.results.get("scenarios", [])}
        names.update(dict.fromkeys(by_name))
        indexed.append(by_name)
    rows = []
    for name in names:
        cells = []
        for by_name in indexed:
            s = by_name.get(name)
            if s is None:
                cells.append('<td class="edge">-</td><td>-</td><td>-</td>')
                continue
            bad = " bad" if problems_of(s) else ""
            cells.append(
                f'<td class="edge{bad}">{html.escape(_outcome(s))}</td>'
                f"<td>{_fmt(s.get('stop_latency_ms'))}</td>"
                f"<td>{_fmt(s.get('state_word_errors'))}</td>"
            )
        rows.append(f"<tr><th>{html.escape(name)}</th>{''.join(cells)}</tr>")
    scenarios = (
        f'<table class="compare">{_group_head(runs, "scenario", per_scenario)}'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    return f"<h3>By kind</h3>{kinds}<h3>By scenario</h3>{scenarios}"


def _outcome(s: Mapping[str, Any]) -> str:
    if s.get("expect") == "interrupt":
        if s.get("missed"):
            return "missed"
        return "cut early" if s.get("cut_early") else "stopped"
    return "false int." if s.get("false_interruption") else "continued"


def _header(run: Run) -> str:
    info = run.results.get("run")
    items: list[tuple[str, str]] = []
    if run.source:
        items.append(("results", run.source))
    if isinstance(info, Mapping):
        machine = info.get("machine") or {}
        vers = info.get("versions") or {}
        items += [
            ("command", str(info.get("command", "-"))),
            ("system under test", str(info.get("system", "-"))),
            (
                "machine",
                f"{machine.get('cores', '?')} cores, {machine.get('cpu', '?')}, "
                f"{machine.get('platform', '?')}",
            ),
            ("date", str(info.get("date", "-"))),
            ("versions", ", ".join(f"{k} {v}" for k, v in vers.items()) or "-"),
        ]
    else:
        items.append(("run", "the results file does not say how it was made"))
    items.append(("clock", str(run.results.get("clock", "-"))))
    rows = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in items)
    return f'<dl class="header">{rows}</dl>'


def _diff_words(heard: str, recorded: str) -> tuple[str, str]:
    """Both texts as HTML, words present in only one of them marked."""
    a, b = heard.split(), recorded.split()
    key_a = [" ".join(words_of(w)) for w in a]
    key_b = [" ".join(words_of(w)) for w in b]
    out_a: list[str] = []
    out_b: list[str] = []
    matcher = difflib.SequenceMatcher(None, key_a, key_b, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        left = html.escape(" ".join(a[i1:i2]))
        right = html.escape(" ".join(b[j1:j2]))
        if op == "equal":
            out_a.append(left)
            out_b.append(right)
        else:
            if left:
                out_a.append(f"<mark>{left}</mark>")
            if right:
                out_b.append(f"<mark>{right}</mark>")
    return " ".join(out_a) or "<em>(nothing)</em>", " ".join(out_b) or "<em>(nothing)</em>"


def _anchor(index: int, name: str) -> str:
    return f"r{index}-" + re.sub(r"[^A-Za-z0-9_-]+", "-", name)


def _card(index: int, run: Run, s: Mapping[str, Any]) -> str:
    name = str(s.get("name", "?"))
    problems = problems_of(s)
    badges = "".join(f'<span class="badge bad">{html.escape(p)}</span>' for p in problems)
    if not problems:
        badges = '<span class="badge ok">as expected</span>'
    decision = s.get("decision")
    if decision and s.get("decision_reason"):
        decision = f"{decision} ({s['decision_reason']})"
    metrics = [
        ("onset", _fmt(s.get("onset_s"), 2) + " s" if s.get("onset_s") is not None else "-"),
        ("stop latency", _ms(s.get("stop_latency_ms"))),
        ("audible after tier 1", _ms(s.get("after_tier1_ms"))),
        ("decision", _fmt(decision)),
        ("decided after", _ms(s.get("decision_ms"))),
        ("interrupted", _fmt(s.get("interrupted"))),
        ("paused", _ms(s.get("paused_ms"))),
        ("state word errors", _fmt(s.get("state_word_errors"))),
        ("tokens after cancel", _fmt(s.get("llm_tokens_after_cancel"))),
        ("answer after", _ms(s.get("response_ms"))),
    ]
    cells = "".join(
        f"<div><span>{html.escape(k)}</span> {html.escape(v)}</div>" for k, v in metrics
    )
    plot = run.plots.get(name)
    if plot is not None:
        data = base64.b64encode(plot).decode("ascii")
        width, height = PLOT_SIZE_PX
        image = (
            f'<img class="plot" width="{width}" height="{height}" '
            f'alt="timeline of {html.escape(name)}" src="data:image/png;base64,{data}">'
        )
    else:
        image = '<p class="note">no trace recorded for this scenario</p>' if run.traced else ""
    heard, recorded = _diff_words(str(s.get("heard_text") or ""), str(s.get("recorded_text") or ""))
    texts = f"<dt>heard</dt><dd>{heard}</dd><dt>recorded</dt><dd>{recorded}</dd>"
    if s.get("user_turn_text"):
        texts += f"<dt>user turn</dt><dd>{html.escape(str(s['user_turn_text']))}</dd>"
    errors = "".join(f"<li>{html.escape(str(e))}</li>" for e in s.get("errors") or [])
    klass = "scenario problem" if problems else "scenario"
    return (
        f'<article class="{klass}" id="{_anchor(index, name)}">'
        f"<h4>{html.escape(name)} {badges}</h4>"
        f'<p class="what">kind <b>{html.escape(str(s.get("kind")))}</b>, expect '
        f"<b>{html.escape(str(s.get('expect')))}</b></p>"
        f"{image}"
        f'<div class="metrics">{cells}</div>'
        f'<dl class="texts">{texts}</dl>'
        + (f'<ul class="errors">{errors}</ul>' if errors else "")
        + "</article>"
    )


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f} ms"


def _run_section(index: int, run: Run) -> str:
    scenarios = list(run.results.get("scenarios", []))
    failing = [s for s in scenarios if problems_of(s)]
    passing = [s for s in scenarios if not problems_of(s)]
    run_errors = "".join(f"<li>{html.escape(str(e))}</li>" for e in run.results.get("errors", []))
    parts = [
        f'<section class="run" id="run{index}">',
        f"<h2>{html.escape(run.label)}</h2>",
        _header(run),
        "<h3>Summary</h3>",
        summary_table(run.results.get("summary", {})),
        f'<section class="problems"><h3>Problems ({len(failing)})</h3>',
    ]
    if run_errors:
        parts.append(f'<p>Scenarios that could not run:</p><ul class="errors">{run_errors}</ul>')
    if failing:
        links = "".join(
            f'<li><a href="#{_anchor(index, s["name"])}">{html.escape(s["name"])}</a>: '
            f"{html.escape(', '.join(problems_of(s)))}</li>"
            for s in failing
        )
        parts.append(f"<ul>{links}</ul>")
        parts += [_card(index, run, s) for s in failing]
    elif not run_errors:
        parts.append("<p>None: every scenario met its expectation.</p>")
    parts.append("</section>")
    parts.append(f'<section class="passing"><h3>Scenarios ({len(passing)} as expected)</h3>')
    if not run.plots:
        parts.append('<p class="note">no traces for this run: tables only</p>')
    parts += [_card(index, run, s) for s in passing]
    parts.append("</section></section>")
    return "\n".join(parts)


def _key() -> str:
    kinds: list[MarkKind] = ["onset", "tier1", "decision", "flush", "resume", "stop"]
    items = "".join(
        f'<span><i style="border-left: 2px {_css_style(MARK_STYLES[k])} {MARK_COLOURS[k]}">'
        f"</i>{html.escape(MARK_MEANING[k])}</span>"
        for k in kinds
    )
    waves = (
        f'<span><i class="swatch" style="background:{MIC_COLOUR}"></i>microphone</span>'
        f'<span><i class="swatch" style="background:{REPLY_COLOUR}"></i>agent reply</span>'
        f'<span><i class="swatch" style="background:{LATER_REPLY_COLOUR}"></i>'
        "its answer to the interruption</span>"
        f'<span><i class="swatch" style="background:{MARK_COLOURS["tier1"]};opacity:.3">'
        "</i>tier 1 to tier 2</span>"
    )
    return f'<p class="key">{waves}{items}</p>'


def _css_style(line: str) -> str:
    return {"-": "solid", "--": "dashed", ":": "dotted"}.get(line, "solid")


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 960px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { border-bottom: 2px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; font-size: 12px; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
th { background: #f4f4f4; } tbody th { text-align: left; }
td.edge, th.group { border-left: 2px solid #888; }
th.group { text-align: center; }
td.bad, .badge.bad { background: #fde0dc; color: #a00; }
.badge { font-size: 11px; font-weight: normal; padding: 1px 6px; border-radius: 8px;
         margin-left: .4em; }
.badge.ok { background: #e3f4e1; color: #1a6b1a; }
dl.header { display: grid; grid-template-columns: max-content 1fr; gap: 2px 1em; }
dl.header dt { color: #666; } dl.header dd { margin: 0; font-family: monospace; }
article.scenario { border: 1px solid #ddd; border-radius: 4px; padding: .3em .8em;
                   margin: 1em 0; }
article.problem { border: 2px solid #d33; background: #fffafa; }
article h4 { margin: .3em 0; } .what { margin: 0 0 .3em; color: #555; }
img.plot { display: block; max-width: 100%; height: auto; }
.metrics { display: flex; flex-wrap: wrap; gap: .2em 1.4em; font-size: 12px;
           margin: .3em 0; }
.metrics span { color: #777; }
dl.texts { display: grid; grid-template-columns: max-content 1fr; gap: 2px .8em;
           font-size: 12px; margin: .3em 0; }
dl.texts dt { color: #777; } dl.texts dd { margin: 0; }
mark { background: #ffe08a; }
.note { color: #777; font-size: 12px; }
.key { font-size: 12px; display: flex; flex-wrap: wrap; gap: .3em 1.2em; }
.key i { display: inline-block; height: 12px; margin-right: .35em; vertical-align: middle; }
.key i.swatch { width: 14px; }
"""


def render(runs: Sequence[Run], title: str = "bargein benchmark report") -> str:
    """The whole page."""
    runs = list(runs)
    distinct_labels(runs)
    body = [f"<h1>{html.escape(title)}</h1>"]
    if len(runs) > 1:
        body.append('<section id="comparison"><h2>Comparison</h2>')
        body.append(comparison_tables(runs))
        body.append("</section>")
    if any(run.plots for run in runs):
        body.append(_key())
    body += [_run_section(i, run) for i, run in enumerate(runs)]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(path: Path, runs: Sequence[Run]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(runs), encoding="utf-8")


def write_run_report(
    path: Path, results: Mapping[str, Any], collector: TraceCollector | None
) -> None:
    """The report of a run just made (``bench --report``)."""
    info = results.get("run")
    system = info.get("system") if isinstance(info, Mapping) else None
    short = system.split(" (", 1)[0] if isinstance(system, str) else "this run"
    label = label_of(results, short)
    plots = collector.plots if collector is not None else {}
    write_report(path, [Run(label, results, plots, traced=bool(plots))])


def report_main(paths: Sequence[str], out: str) -> int:
    """``bargein report A.json [B.json ...] -o report.html``."""
    runs = []
    for name in paths:
        path = Path(name)
        try:
            runs.append(load_run(path))
        except (OSError, ValueError) as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            return 2
        print(
            f"{path}: {len(runs[-1].plots)} plots"
            + ("" if runs[-1].plots else " (no traces found)"),
            file=sys.stderr,
        )
    write_report(Path(out), runs)
    print(f"report written to {out}", file=sys.stderr)
    return 0
