"""What one scenario run looked and sounded like, for the HTML report's timeline plots.

A :class:`ScenarioTrace` holds three things on one time axis whose 0 is the moment the
runner asked for the agent's reply (the same origin as the ``*_s`` and ``*_at`` fields of
a results file):

- ``mic``: the microphone signal the system under test received (user sounds and echo);
- ``output``: what the loudspeaker at the ear actually emitted, with ``output_reply``
  saying which reply each sample belongs to (0: silence);
- ``marks``: the moments the report draws as vertical lines (:data:`MARK_KINDS`).

Any runner can fill one. A runner that plays through a :class:`SimulatedSpeaker` (the
in-process runner, the far ends) calls :func:`trace_from_speaker` with the microphone
samples it sent and the timeline records of its results; records kept on another clock
(a server's) are shifted onto the ear's with ``offset_s``. A runner with other means
builds the dataclass directly: only ``name``, ``mic``, ``mic_rate``, ``output`` and
``output_rate`` are required, and a trace may have no marks at all.

Traces are saved one compressed ``.npz`` file per scenario (:func:`save_trace`), audio
resampled to 8 kHz as 16-bit integers: enough to draw a waveform, a few hundred kB for a
long scenario.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from bargein.audio import from_int16, last_audible, resample, to_int16
from bargein.bench.speaker import SimulatedSpeaker
from bargein.providers.base import FloatAudio

MarkKind = Literal["onset", "tier1", "decision", "flush", "cancel", "resume", "stop"]
"""What a vertical line in the plot means:

- ``onset``: ground truth, where the user's first sound starts;
- ``tier1``: the agent's immediate reaction (label ``pause``, ``duck`` or ``hold``);
- ``decision``: tier 2 decided (label ``commit`` or ``resume``, then the reason);
- ``flush`` and ``cancel``: the output was dropped and the reply cancelled;
- ``resume``: the paused output went on;
- ``stop``: the end of the reply's last audible output sample (10 ms windows, -45 dBFS).
"""
MARK_KINDS: tuple[MarkKind, ...] = get_args(MarkKind)
SAVE_RATE = 8000
"""Sample rate of saved traces."""
TRACE_FORMAT = "bargein-trace/1"

ReplyIds = npt.NDArray[np.int16]


@dataclass(frozen=True)
class Mark:
    kind: MarkKind
    at_s: float
    """Seconds from the reply request, on the trace's time axis."""
    label: str = ""
    """Detail shown next to the line, e.g. ``pause`` or ``commit (word:hold on)``."""
    reply_id: int = 1
    """The reply the mark is about (the answer to an interruption is reply 2 or later)."""


@dataclass
class ScenarioTrace:
    name: str
    """The scenario's name, as in the results file."""
    mic: FloatAudio
    """Microphone samples in [-1, 1]; sample 0 is the reply request."""
    mic_rate: int
    output: FloatAudio
    """Loudspeaker samples in [-1, 1], as emitted (ducking and pauses included)."""
    output_rate: int
    marks: list[Mark] = field(default_factory=list)
    output_reply: ReplyIds | None = None
    """The reply each ``output`` sample belongs to (0: silence); None when unknown."""

    @property
    def duration_s(self) -> float:
        return max(len(self.mic) / self.mic_rate, len(self.output) / self.output_rate)

    def marks_of(self, kind: MarkKind) -> list[Mark]:
        return [m for m in self.marks if m.kind == kind]


def marks_from_records(
    records: Iterable[Mapping[str, object]], offset_s: float = 0.0
) -> list[Mark]:
    """Marks from interruption records shaped like a results file's ``timeline`` entries
    (``InterruptionRecord.as_dict()``); ``offset_s`` is added to every time."""
    marks: list[Mark] = []
    for record in records:
        reply_value = record.get("reply_id", 1)
        reply_id = reply_value if isinstance(reply_value, int) else 1
        times = {key: _time(record, key, offset_s) for key in _RECORD_TIMES}
        if (t := times["tier1_at"]) is not None:
            marks.append(Mark("tier1", t, str(record.get("tier1") or ""), reply_id))
        if (t := times["decided_at"]) is not None:
            decision = str(record.get("decision") or "")
            reason = str(record.get("reason") or "")
            label = f"{decision} ({reason})" if reason else decision
            marks.append(Mark("decision", t, label, reply_id))
        if (t := times["flushed_at"]) is not None:
            marks.append(Mark("flush", t, "flush", reply_id))
        if (t := times["cancelled_at"]) is not None:
            marks.append(Mark("cancel", t, "cancel", reply_id))
        if (t := times["resumed_at"]) is not None:
            marks.append(Mark("resume", t, "resume", reply_id))
    return marks


_RECORD_TIMES = ("tier1_at", "decided_at", "flushed_at", "cancelled_at", "resumed_at")


def _time(record: Mapping[str, object], key: str, offset_s: float) -> float | None:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) + offset_s


def last_output_s(
    output: FloatAudio, rate: int, output_reply: ReplyIds | None, reply_id: int = 1
) -> float | None:
    """End of the last audible sample of ``reply_id`` (of any output when ids are unknown)."""
    ours = output if output_reply is None else np.where(output_reply == reply_id, output, 0.0)
    return last_audible(np.asarray(ours, dtype=np.float32), rate)


def trace_from_speaker(
    name: str,
    mic: FloatAudio,
    mic_rate: int,
    speaker: SimulatedSpeaker,
    *,
    onset_s: float | None,
    records: Iterable[Mapping[str, object]] = (),
    offset_s: float = 0.0,
) -> ScenarioTrace:
    """A trace from a run that played through ``speaker`` (whose time 0 is the reply
    request), with ``records`` shifted by ``offset_s`` onto that time axis."""
    end = speaker.rendered
    output = speaker.recording[:end].copy()
    reply = speaker.reply_at[:end].astype(np.int16)
    marks = [] if onset_s is None else [Mark("onset", onset_s, "onset")]
    marks += marks_from_records(records, offset_s)
    stop = last_output_s(output, speaker.sample_rate, reply)
    if stop is not None:
        marks.append(Mark("stop", stop, "stop"))
    marks.sort(key=lambda m: m.at_s)
    return ScenarioTrace(name, mic, mic_rate, output, speaker.sample_rate, marks, reply)


# -- saving -------------------------------------------------------------------------------


def trace_file(folder: Path, name: str) -> Path:
    """Where :func:`save_trace` puts the trace of scenario ``name``."""
    return folder / (re.sub(r"[^A-Za-z0-9._-]+", "_", name) + ".npz")


def _reply_ids_at(ids: ReplyIds, src_rate: int, dst_rate: int, count: int) -> ReplyIds:
    index = np.minimum((np.arange(count) * src_rate) // dst_rate, len(ids) - 1)
    return ids[index] if len(ids) else np.zeros(count, dtype=np.int16)


def save_trace(trace: ScenarioTrace, folder: Path) -> Path:
    """Write ``trace`` as one compressed ``.npz`` in ``folder`` (audio at 8 kHz, int16)."""
    folder.mkdir(parents=True, exist_ok=True)
    mic = to_int16(resample(trace.mic, trace.mic_rate, SAVE_RATE))
    output = to_int16(resample(trace.output, trace.output_rate, SAVE_RATE))
    meta = {
        "format": TRACE_FORMAT,
        "name": trace.name,
        "rate": SAVE_RATE,
        "marks": [m.__dict__ for m in trace.marks],
    }
    arrays = {"mic": mic, "output": output, "meta": np.array(json.dumps(meta))}
    if trace.output_reply is not None:
        arrays["output_reply"] = _reply_ids_at(
            trace.output_reply, trace.output_rate, SAVE_RATE, len(output)
        )
    path = trace_file(folder, trace.name)
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
    return path


def load_trace(path: Path) -> ScenarioTrace:
    """Read a trace written by :func:`save_trace`; ValueError if it is not one."""
    with np.load(path, allow_pickle=False) as data:
        try:
            meta = json.loads(str(data["meta"]))
            mic, output = data["mic"], data["output"]
            reply = data["output_reply"] if "output_reply" in data.files else None
        except KeyError as exc:
            raise ValueError(f"{path}: not a bargein trace (missing {exc})") from exc
    if meta.get("format") != TRACE_FORMAT:
        raise ValueError(f"{path}: unknown trace format {meta.get('format')!r}")
    rate = int(meta["rate"])
    marks = [
        Mark(m["kind"], float(m["at_s"]), str(m.get("label", "")), int(m.get("reply_id", 1)))
        for m in meta["marks"]
        if m.get("kind") in MARK_KINDS
    ]
    return ScenarioTrace(
        str(meta["name"]),
        from_int16(mic),
        rate,
        from_int16(output),
        rate,
        marks,
        None if reply is None else reply.astype(np.int16),
    )


def trace_paths(folder: Path) -> dict[str, Path]:
    """The traces in ``folder`` by scenario name (files that are not traces are skipped)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.npz")):
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
        except (OSError, ValueError, KeyError):
            continue
        if isinstance(meta, dict) and meta.get("format") == TRACE_FORMAT:
            found[str(meta["name"])] = path
    return found
