"""Loading and validating scenario sets (format ``bargein-scenario/1``, see SCENARIOS.md).

The format is a public contract: sets written by other people must load unchanged, and a broken
file must never take the rest of a set down with it. So loading is strict about the fields the
runner depends on, ignores fields it does not know (for forward compatibility), and reports each
problem as a :class:`ScenarioError` that names the file and the field, which is what someone
fixing a hand-written JSON file needs to see.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from bargein.audio import AudioFileError, find_onset, read_wav, resample, wav_info

__all__ = [
    "FORMAT",
    "MAX_REVERB_S",
    "Anchor",
    "Echo",
    "Expect",
    "Scenario",
    "ScenarioError",
    "ScenarioEvent",
    "load_scenario",
    "load_set",
]

FORMAT = "bargein-scenario/1"
"""The only ``format`` value this loader accepts."""

ONSET_THRESHOLD_DBFS = -40.0
"""Level that defines an event's onset when ``onset_s`` is absent (SCENARIOS.md)."""

MAX_REVERB_S = 2.0
"""Longest ``echo.reverb_s`` accepted (a large hall; anything longer is a typo)."""

Anchor = Literal["speech", "reply"]
Expect = Literal["interrupt", "continue"]
_ANCHORS: tuple[Anchor, ...] = ("speech", "reply")
_EXPECTS: tuple[Expect, ...] = ("interrupt", "continue")


class ScenarioError(ValueError):
    """One scenario file (or the set's folder) is unusable.

    ``file`` is the offending path and ``field`` the JSON path of the bad field (``""`` when the
    problem is the file as a whole), so reports can point straight at what to fix.
    """

    def __init__(self, file: Path, field: str, problem: str) -> None:
        self.file = Path(file)
        self.field = field
        self.problem = problem
        where = f"{self.file.name}: field '{field}'" if field else self.file.name
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class Echo:
    """The agent's own output fed back into its microphone, as from a speakerphone.

    ``reverb_s`` is a bargein extension of the format (other runners may ignore it): the decay
    time, RT60-like, of a synthetic room the echo travels through; 0 means a dry echo.
    """

    gain_db: float
    delay_ms: float
    reverb_s: float = 0.0


@dataclass(frozen=True)
class ScenarioEvent:
    """One sound that reaches the microphone at ``at_s`` seconds after its ``anchor``."""

    at_s: float
    anchor: Anchor
    audio_path: Path
    text: str
    onset_s: float | None

    def load(self, sample_rate: int) -> np.ndarray:
        """Read the event's audio and resample it to ``sample_rate`` (the runner's rate)."""
        audio, rate = read_wav(self.audio_path)
        return resample(audio, rate, sample_rate)

    def onset_in_audio(self) -> float:
        """Seconds into the WAV where the sound really starts.

        The explicit ``onset_s`` wins; otherwise the first 10 ms window above -40 dBFS, as the
        format defines; a clip that never gets that loud counts from its start, so the metrics
        still have a reference point.
        """
        if self.onset_s is not None:
            return self.onset_s
        audio, rate = read_wav(self.audio_path)
        found = find_onset(audio, rate, threshold_dbfs=ONSET_THRESHOLD_DBFS)
        return 0.0 if found is None else found


@dataclass(frozen=True)
class Scenario:
    """One validated scenario file."""

    path: Path
    name: str
    kind: str
    expect: Expect
    agent_text: str
    events: tuple[ScenarioEvent, ...]
    echo: Echo | None


def _is_number(value: object) -> bool:
    # bool is an int subclass in Python but `true` is no number in a scenario file.
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


class _Checker:
    """Field accessors that raise :class:`ScenarioError` with the file and field filled in."""

    def __init__(self, file: Path) -> None:
        self.file = file

    def fail(self, field: str, problem: str) -> ScenarioError:
        return ScenarioError(self.file, field, problem)

    def number(
        self,
        obj: dict[str, Any],
        key: str,
        field: str,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        if key not in obj:
            raise self.fail(field, "is required")
        value = obj[key]
        if not _is_number(value):
            raise self.fail(field, f"must be a number, got {json.dumps(value)}")
        result = float(value)
        if minimum is not None and result < minimum:
            raise self.fail(field, f"must be >= {minimum:g}, got {result:g}")
        if maximum is not None and result > maximum:
            raise self.fail(field, f"must be <= {maximum:g}, got {result:g}")
        return result

    def string(self, obj: dict[str, Any], key: str, field: str, *, non_empty: bool) -> str:
        if key not in obj:
            raise self.fail(field, "is required")
        value = obj[key]
        if not isinstance(value, str):
            raise self.fail(field, f"must be a string, got {json.dumps(value)}")
        if non_empty and not value.strip():
            raise self.fail(field, "must not be empty")
        return value


def _parse_event(check: _Checker, folder: Path, index: int, raw: object) -> ScenarioEvent:
    prefix = f"events[{index}]"
    if not isinstance(raw, dict):
        raise check.fail(prefix, "must be an object")
    at_s = check.number(raw, "at_s", f"{prefix}.at_s", minimum=0.0)

    anchor_raw = raw.get("anchor", "speech")
    if anchor_raw not in _ANCHORS:
        raise check.fail(
            f"{prefix}.anchor", f"must be 'speech' or 'reply', got {json.dumps(anchor_raw)}"
        )
    anchor = cast(Anchor, anchor_raw)

    audio = check.string(raw, "audio", f"{prefix}.audio", non_empty=True)
    audio_path = folder / audio
    try:
        wav_info(audio_path)
    except AudioFileError as exc:
        raise check.fail(f"{prefix}.audio", f"file '{audio}' {exc.reason}") from exc

    text = ""
    if "text" in raw:
        text = check.string(raw, "text", f"{prefix}.text", non_empty=False)

    onset_s: float | None = None
    if raw.get("onset_s") is not None:
        onset_s = check.number(raw, "onset_s", f"{prefix}.onset_s", minimum=0.0)

    return ScenarioEvent(
        at_s=at_s, anchor=anchor, audio_path=audio_path, text=text, onset_s=onset_s
    )


def _parse_echo(check: _Checker, raw: object) -> Echo | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise check.fail("echo", "must be null or an object with 'gain_db' and 'delay_ms'")
    gain_db = check.number(raw, "gain_db", "echo.gain_db")
    delay_ms = check.number(raw, "delay_ms", "echo.delay_ms", minimum=0.0)
    reverb_s = 0.0
    if raw.get("reverb_s") is not None:
        reverb_s = check.number(raw, "reverb_s", "echo.reverb_s", minimum=0.0, maximum=MAX_REVERB_S)
    return Echo(gain_db=gain_db, delay_ms=delay_ms, reverb_s=reverb_s)


def load_scenario(path: Path | str) -> Scenario:
    """Load and validate one scenario file; audio paths are relative to its folder.

    Raises :class:`ScenarioError` for the first problem found. Each event's WAV header is opened
    so that a missing or wrongly encoded file is reported now, against its scenario, rather
    than halfway through a benchmark run.
    """
    file = Path(path)
    check = _Checker(file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise check.fail("", "file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise check.fail("", f"cannot be read: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise check.fail(
            "", f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc
    if not isinstance(data, dict):
        raise check.fail("", "must contain a JSON object")

    if "format" not in data:
        raise check.fail("format", f"is required and must be {FORMAT!r}")
    if data["format"] != FORMAT:
        raise check.fail(
            "format", f"must be {FORMAT!r}, got {json.dumps(data['format'])} (unsupported)"
        )
    name = check.string(data, "name", "name", non_empty=True)
    kind = check.string(data, "kind", "kind", non_empty=False)
    if "expect" not in data:
        raise check.fail("expect", "is required ('interrupt' or 'continue')")
    if data["expect"] not in _EXPECTS:
        raise check.fail(
            "expect", f"must be 'interrupt' or 'continue', got {json.dumps(data['expect'])}"
        )
    expect = cast(Expect, data["expect"])
    agent_text = check.string(data, "agent_text", "agent_text", non_empty=True)

    if "events" not in data:
        raise check.fail("events", "is required (use [] for no events)")
    raw_events = data["events"]
    if not isinstance(raw_events, list):
        raise check.fail("events", "must be a list")
    folder = file.parent
    events = tuple(_parse_event(check, folder, i, ev) for i, ev in enumerate(raw_events))
    echo = _parse_echo(check, data.get("echo"))

    return Scenario(
        path=file,
        name=name,
        kind=kind,
        expect=expect,
        agent_text=agent_text,
        events=events,
        echo=echo,
    )


def load_set(folder: Path | str) -> tuple[list[Scenario], list[ScenarioError]]:
    """Load every ``*.json`` directly inside ``folder``, sorted by file name.

    Returns the scenarios that loaded and the errors of those that did not; one bad file never
    stops the others, because a benchmark over a large set should still report everything it
    can. A second file reusing a ``name`` is an error on that later file (names key the
    reports). Only a missing folder raises, since then there is no set at all.
    """
    root = Path(folder)
    if not root.exists():
        raise ScenarioError(root, "", "scenario folder not found")
    if not root.is_dir():
        raise ScenarioError(root, "", "is not a folder")
    scenarios: list[Scenario] = []
    errors: list[ScenarioError] = []
    owner: dict[str, Path] = {}
    files = sorted(p for p in root.iterdir() if p.suffix == ".json" and p.is_file())
    for file in files:
        try:
            scenario = load_scenario(file)
        except ScenarioError as exc:
            errors.append(exc)
            continue
        if scenario.name in owner:
            errors.append(
                ScenarioError(
                    file,
                    "name",
                    f"name {scenario.name!r} is already used by {owner[scenario.name].name}",
                )
            )
            continue
        owner[scenario.name] = file
        scenarios.append(scenario)
    return scenarios, errors
