"""The metrics of SCENARIOS.md, and the per-kind summary of a results file.

Everything here is computed at the ear: from what the loudspeaker actually emitted and
when, not from what the session believes it did.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from bargein.audio import window_dbfs
from bargein.words import word_edit_distance

AUDIBLE_DBFS = -45.0
WINDOW_MS = 10.0
MISSED_AFTER_S = 1.5
BURST_AFTER_MS = 40.0
"""Audio still audible this long after the tier-1 action is a burst (a buffer not flushed)."""
ONSET_SLACK_S = 0.1
"""How far before the ground-truth onset a system may place the same sound's onset (a
loudness gate fires on a faint start a block or two early)."""


def words_of(text: str) -> list[str]:
    """Comparable words: lower case, punctuation dropped."""
    return [w for w in (re.sub(r"[^a-z0-9']", "", t.lower()) for t in text.split()) if w]


def state_word_errors(heard: str, recorded: str) -> int:
    """SCENARIOS.md's ``state_word_errors``: word edits between heard and recorded text."""
    return word_edit_distance(words_of(heard), words_of(recorded))


def audible_window_times(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Start times (s) of the 10 ms windows of ``audio`` above the audibility threshold."""
    levels = window_dbfs(audio, sample_rate, WINDOW_MS)
    return np.flatnonzero(levels > AUDIBLE_DBFS) * window_seconds(sample_rate)


def window_seconds(sample_rate: int) -> float:
    """The exact length of a "10 ms" window at ``sample_rate``: a whole number of samples
    (220 at 22.05 kHz, 9.98 ms). Counting windows as 10 ms each would drift 2 ms per second
    of audio, 40 ms by the twentieth second of a reply."""
    return max(1, round(sample_rate * WINDOW_MS / 1000.0)) / sample_rate


def audible_after_ms(
    audio: np.ndarray, sample_rate: int, controls: Sequence[float] | None
) -> float | None:
    """How long ``audio`` stayed audible after the tier-1 action that silenced it, in ms;
    None without any action.

    ``controls`` are the times (s) at which tier-1 actions (pause, duck, clear) reached
    the ear. The one that silenced the reply is the latest before its last audible
    window ends: an earlier pause followed by a resume (a false alarm, then the real
    interruption) is not a leak. A flush that empties every buffer leaves nothing
    audible beyond the window it landed in.
    """
    if not controls:
        return None
    audible = audible_window_times(audio.astype(np.float32), sample_rate)
    if not len(audible):
        return 0.0
    last = float(audible[-1]) + window_seconds(sample_rate)
    before = [t for t in controls if t <= last]
    return (last - max(before)) * 1000 if before else 0.0


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q, method="nearest"))


def _stats(values: Iterable[float | None]) -> dict[str, float | None]:
    vals = [float(v) for v in values if v is not None]
    return {
        "p50": percentile(vals, 50),
        "p95": percentile(vals, 95),
        "max": max(vals) if vals else None,
    }


def summarize(scenarios: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-kind counts, rates and latency percentiles (plus an ``all`` row)."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for s in scenarios:
        kinds.setdefault(s["kind"], []).append(s)
    if scenarios:
        kinds["all"] = list(scenarios)
    summary: dict[str, dict[str, Any]] = {}
    for kind, rows in kinds.items():
        interrupt = [r for r in rows if r["expect"] == "interrupt"]
        cont = [r for r in rows if r["expect"] == "continue"]
        summary[kind] = {
            "count": len(rows),
            "expect_interrupt": len(interrupt),
            "expect_continue": len(cont),
            "interrupted": sum(bool(r["interrupted"]) for r in rows),
            "missed": sum(bool(r["missed"]) for r in interrupt),
            "missed_rate": _rate(sum(bool(r["missed"]) for r in interrupt), len(interrupt)),
            "false_interruptions": sum(bool(r["false_interruption"]) for r in cont),
            "false_interruption_rate": _rate(
                sum(bool(r["false_interruption"]) for r in cont), len(cont)
            ),
            "cut_early": sum(bool(r.get("cut_early")) for r in interrupt),
            "stop_latency_ms": _stats(r["stop_latency_ms"] for r in interrupt),
            "after_tier1_ms": _stats(r.get("after_tier1_ms") for r in rows),
            "bursts": sum(1 for r in rows if (r.get("after_tier1_ms") or 0.0) > BURST_AFTER_MS),
            "paused_ms": _stats(r["paused_ms"] for r in cont),
            "ducked_ms": _stats(r.get("ducked_ms") for r in cont),
            "decision_ms": _stats(r.get("decision_ms") for r in rows),
            "state_word_errors": _total(r["state_word_errors"] for r in rows),
            "llm_tokens_after_cancel": _total(r["llm_tokens_after_cancel"] for r in rows),
            "response_ms": _stats(r.get("response_ms") for r in rows),
            "preemptive_calls": sum(int(r.get("preemptive_calls") or 0) for r in rows),
            "preemptive_discarded": sum(int(r.get("preemptive_discarded") or 0) for r in rows),
            "user_turn_wer": _rate(
                sum(int(r.get("user_turn_word_errors") or 0) for r in rows),
                sum(int(r.get("user_turn_words") or 0) for r in rows),
            ),
        }
    return summary


def _total(values: Iterable[int | None]) -> int | None:
    """The sum of the counts that were observed; None when none was (a phone far end
    cannot see the conversation or the LLM, and an unknown is not a zero)."""
    known = [int(v) for v in values if v is not None]
    return sum(known) if known else None


def _rate(n: int, d: int) -> float | None:
    return n / d if d else None


def format_cell(value: Any, digits: int = 0) -> str:
    """A table cell: "-" for a missing figure, floats to ``digits`` places."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(summary: dict[str, dict[str, Any]]) -> str:
    """The readable table printed after a run."""
    header = (
        "kind",
        "n",
        "missed",
        "false int.",
        "cut early",
        "stop p50",
        "stop p95",
        "stop max",
        "bursts",
        "paused p95",
        "ducked p95",
        "decide p95",
        "state err",
        "tok after cancel",
        "answer p50",
        "wasted calls",
        "turn WER",
    )
    rows = [header]
    for kind, s in summary.items():
        rows.append(
            (
                kind,
                str(s["count"]),
                f"{s['missed']}/{s['expect_interrupt']}",
                f"{s['false_interruptions']}/{s['expect_continue']}",
                f"{s['cut_early']}/{s['expect_interrupt']}",
                format_cell(s["stop_latency_ms"]["p50"]),
                format_cell(s["stop_latency_ms"]["p95"]),
                format_cell(s["stop_latency_ms"]["max"]),
                str(s["bursts"]),
                format_cell(s["paused_ms"]["p95"]),
                format_cell(s["ducked_ms"]["p95"]),
                format_cell(s["decision_ms"]["p95"]),
                format_cell(s["state_word_errors"]),
                format_cell(s["llm_tokens_after_cancel"]),
                format_cell(s["response_ms"]["p50"]),
                f"{s['preemptive_discarded']}/{s['preemptive_calls']}",
                "-" if s["user_turn_wer"] is None else f"{100 * s['user_turn_wer']:.0f}%",
            )
        )
    return columns(rows) + "\n(latencies in ms)"


def columns(rows: Sequence[Sequence[str]]) -> str:
    """Rows as left-aligned columns, the first row a header underlined with dashes."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
