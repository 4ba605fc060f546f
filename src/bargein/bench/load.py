"""``bargein bench DIR --sessions 1,10,25,50``: many far ends at once, and where it breaks.

For each number of sessions N the benchmark starts a fresh load-test server in its own
process (:mod:`bargein.bench.load_server`: the real interruption path, stand-ins for
the slow models), plays one scenario alone to warm it up, then starts N far ends
(:func:`bargein.bench.far_end.run_far_end`, the same simulated browser as
``--target``), staggered over the first ``stagger_s`` seconds. Each far end plays
scenarios of the set in turn (by default the ``barge_in`` and ``short_command`` ones,
alternating) for ``rounds`` scenarios, each on its own connection, and measures at its
own ear as ``--target`` does.

Per N it reports, from the far ends: stop latency p50/p95/max and the missed count; and
from ``/proc``: the server's CPU time per wall second (in percent of one core, in total
and per session) and its resident memory, so that memory per session is the peak RSS
while all N sessions ran less the RSS of the warmed-up, idle server, over N. The far ends
run in this process, on the same machine: their CPU is measured too, and so is the
lateness of both event loops, because a far end that wakes late hears late.

N "breaks" when its stop p95 exceeds 150 ms, or any interruption is missed, or any
session fails; the results say the first N that broke.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bargein.bench.far_end import (
    FarEndOptions,
    FarEndRun,
    ScenarioAborted,
    TargetError,
    run_far_end,
)
from bargein.bench.load_server import LagMonitor
from bargein.bench.metrics import columns, format_cell, percentile
from bargein.scenario import Scenario, load_set
from bargein.session import describe_error

__all__ = [
    "DEFAULT_KINDS",
    "LoadOptions",
    "Sample",
    "ServerProcess",
    "format_load_table",
    "interleave_kinds",
    "parse_sessions",
    "parse_stat_cpu_seconds",
    "parse_status_rss_bytes",
    "reaction_ms",
    "read_cpu_seconds",
    "read_rss_bytes",
    "run_level",
    "run_load",
    "stagger_schedule",
    "steady_window",
]

DEFAULT_KINDS = ("barge_in", "short_command")
STOP_P95_LIMIT_MS = 150.0
MIN_SCENARIOS = 18
"""Rounds are chosen so that every N plays at least this many scenarios (a p95 of three
numbers says nothing): one far end plays 18 in a row, ten play two each."""
SAMPLE_EVERY_S = 0.1
START_TIMEOUT_S = 300.0
MB = 1024 * 1024


@dataclass
class LoadOptions:
    stagger_s: float = 2.0
    """Session i of N starts at i * stagger_s / N."""
    rounds: int = 0
    """Scenarios each far end plays in a row; 0: enough for MIN_SCENARIOS per N."""
    kinds: Sequence[str] | None = DEFAULT_KINDS
    """Scenario kinds to cycle through; None: every scenario of the set."""
    recognizer: str = "known"
    """The load server's recogniser: ``known`` (the stand-in) or ``pocketsphinx``."""
    workers: int = 1
    """The load server's processes (``bargein serve --workers``)."""
    target: str | None = None
    """Measure this running server instead of starting one per N (``--bench`` needed)."""
    server_pid: int | None = None
    """With ``target``: the server's process, for its CPU and memory (with the processes
    below it: a server's workers)."""
    token: str | None = None
    """With ``target``: its access token."""
    stop_p95_limit_ms: float = STOP_P95_LIMIT_MS
    far_end: FarEndOptions = field(default_factory=lambda: FarEndOptions(max_s=45.0))
    progress: bool = True


# -- small pure pieces --------------------------------------------------------------------


def parse_sessions(text: str) -> list[int]:
    """``"1,10,25"`` -> ``[1, 10, 25]``: positive whole numbers, in increasing order."""
    values: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise ValueError(f"--sessions takes whole numbers like 1,10,25; got {part!r}") from None
        if value < 1:
            raise ValueError(f"--sessions needs numbers of at least 1; got {value}")
        values.add(value)
    if not values:
        raise ValueError("--sessions needs at least one number, e.g. 1,10,25,50")
    return sorted(values)


def stagger_schedule(n: int, spread_s: float) -> list[float]:
    """When each of ``n`` sessions starts: evenly over ``[0, spread_s)``, the first at 0."""
    if n < 1:
        raise ValueError("need at least one session")
    return [i * max(spread_s, 0.0) / n for i in range(n)]


def interleave_kinds(scenarios: Sequence[Scenario], kinds: Sequence[str] | None) -> list[Scenario]:
    """The scenarios to cycle through: one of each kind in turn, in the set's order."""
    chosen = [s for s in scenarios if kinds is None or s.kind in kinds]
    by_kind: dict[str, list[Scenario]] = {}
    for s in chosen:
        by_kind.setdefault(s.kind, []).append(s)
    out: list[Scenario] = []
    for i in range(max((len(v) for v in by_kind.values()), default=0)):
        out.extend(group[i] for group in by_kind.values() if i < len(group))
    return out


def parse_stat_cpu_seconds(stat: str, ticks_per_s: int) -> float:
    """User plus system CPU seconds from the text of ``/proc/PID/stat``.

    The command name (field 2) is in parentheses and may hold spaces or parentheses
    itself, so the fields are counted from the last ``)``: utime and stime are fields
    14 and 15 of the line.
    """
    rest = stat[stat.rindex(")") + 1 :].split()
    return (int(rest[11]) + int(rest[12])) / ticks_per_s


def parse_status_rss_bytes(status: str) -> int:
    """Resident memory (``VmRSS``) from the text of ``/proc/PID/status``."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise ValueError(f"unexpected unit in {line!r}")
            return int(value) * 1024
    raise ValueError("no VmRSS line (a kernel thread, or a process that has exited)")


def read_cpu_seconds(pid: int) -> float:
    return parse_stat_cpu_seconds(Path(f"/proc/{pid}/stat").read_text(), os.sysconf("SC_CLK_TCK"))


def read_rss_bytes(pid: int) -> int:
    return parse_status_rss_bytes(Path(f"/proc/{pid}/status").read_text())


def total_cpu_seconds(pids: Sequence[int]) -> float:
    return sum(read_cpu_seconds(pid) for pid in pids)


def total_rss_bytes(pids: Sequence[int]) -> int:
    return sum(read_rss_bytes(pid) for pid in pids)


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (a server's workers), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            parent = int(text[text.rindex(")") + 1 :].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        here = todo.pop()
        tree.append(here)
        todo.extend(children.get(here, ()))
    return tree


@dataclass(frozen=True)
class Sample:
    t: float
    server_cpu_s: float | None
    bench_cpu_s: float
    server_rss: int | None
    active: int


def steady_window(samples: Sequence[Sample], n: int) -> tuple[list[Sample], str]:
    """The samples to average over: while all ``n`` sessions ran, if that lasted a second;
    otherwise the whole run (every sample with a session active)."""
    full = [s for s in samples if s.active >= n]
    if len(full) >= 2 and full[-1].t - full[0].t >= 1.0:
        return full, "all sessions active"
    busy = [s for s in samples if s.active > 0]
    return busy, "whole run"


def _rate(samples: Sequence[Sample], key: str) -> float | None:
    """CPU seconds per wall second of ``key`` over the samples."""
    if len(samples) < 2:
        return None
    first, last = getattr(samples[0], key), getattr(samples[-1], key)
    wall = samples[-1].t - samples[0].t
    if first is None or last is None or wall <= 0:
        return None
    return float(last - first) / wall


def _mean_active(samples: Sequence[Sample]) -> float:
    return sum(s.active for s in samples) / len(samples) if samples else 0.0


# -- the server under test ----------------------------------------------------------------


class ServerProcess:
    """``python -m bargein.bench.load_server`` in a child process of its own.

    With ``workers`` above 1 the server is several processes (:mod:`bargein.workers`):
    :attr:`pids` holds them all, :attr:`load_urls` each worker's own ``/load`` and
    :attr:`worker_urls` its own ``/ws`` (to warm every worker up).
    """

    def __init__(self, folder: Path, *, recognizer: str = "known", workers: int = 1) -> None:
        self.folder = folder
        self.recognizer = recognizer
        self.workers = workers
        self.url = ""
        self.pid = 0
        self.pids: list[int] = []
        self.load_urls: list[str] = []
        self.worker_urls: list[str] = []
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> ServerProcess:
        command = [
            sys.executable,
            "-m",
            "bargein.bench.load_server",
            "--set",
            str(self.folder),
            "--recognizer",
            self.recognizer,
            "--workers",
            str(self.workers),
        ]
        self._proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            line = _read_line(self._proc.stdout, START_TIMEOUT_S)
            if not line:
                raise RuntimeError(
                    f"the load server exited before listening (code {self._proc.poll()})"
                )
            said = json.loads(line)
        except BaseException:
            self.close()
            raise
        self.url, self.pid = str(said["listening"]), int(said["pid"])
        workers = said.get("workers", [])
        self.pids = [self.pid] + [int(w["pid"]) for w in workers]
        self.load_urls = [str(w["load"]) for w in workers] or [_load_url(self.url)]
        self.worker_urls = [str(w["ws"]) for w in workers] or [self.url]
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _read_line(stream: IO[str] | None, timeout_s: float) -> str:
    """One line from a child's stdout, or "" if it ends or stays silent too long."""
    if stream is None:
        return ""
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            raise TimeoutError(f"the load server did not start within {timeout_s:g} s")
    return stream.readline()


def _load_url(target: str) -> str:
    """The ``/load`` beside a target's ``/ws``."""
    base = target.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
    return base.rsplit("/", 1)[0] + "/load"


def _load_report(urls: Sequence[str], *, reset: bool = False) -> dict[str, Any]:
    """The load servers' ``/load`` (event-loop lateness), the worst of several workers;
    {} from another server."""
    reports: list[dict[str, Any]] = []
    for url in urls:
        try:
            with urllib.request.urlopen(url + ("?reset=1" if reset else ""), timeout=5) as r:
                body = json.loads(r.read())
        except (OSError, ValueError):
            continue
        if isinstance(body, dict):
            reports.append(body)
    if len(reports) <= 1:
        return reports[0] if reports else {}
    merged: dict[str, Any] = {}
    for key in ("lag_p50_ms", "lag_p95_ms", "lag_max_ms"):
        values = [r[key] for r in reports if r.get(key) is not None]
        merged[key] = max(values) if values else None
    unprepared = [r["tts_unprepared"] for r in reports if r.get("tts_unprepared") is not None]
    merged["tts_unprepared"] = sum(unprepared) if unprepared else None
    return merged


# -- one N --------------------------------------------------------------------------------


@dataclass
class _Level:
    runs: list[FarEndRun] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    active: int = 0


async def _far_end(
    level: _Level,
    slot: int,
    n: int,
    start_s: float,
    scenarios: Sequence[Scenario],
    rounds: int,
    target: str,
    options: LoadOptions,
) -> None:
    await asyncio.sleep(start_s)
    for r in range(rounds):
        scenario = scenarios[(slot + r * n) % len(scenarios)]
        level.active += 1
        try:
            level.runs.append(
                await run_far_end(scenario, target, token=options.token, options=options.far_end)
            )
        except (TargetError, ScenarioAborted) as exc:
            level.problems.append(f"{scenario.name}: {exc}")
        except Exception as exc:
            level.problems.append(f"{scenario.name}: run failed: {describe_error(exc)}")
        finally:
            level.active -= 1


async def _sample(level: _Level, server_pids: Sequence[int], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    me = os.getpid()
    while not stop.is_set():
        server_cpu = server_rss = None
        if server_pids:
            with contextlib.suppress(OSError, ValueError):
                server_cpu = total_cpu_seconds(server_pids)
                server_rss = total_rss_bytes(server_pids)
        level.samples.append(
            Sample(loop.time(), server_cpu, read_cpu_seconds(me), server_rss, level.active)
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY_S)


async def _play(
    n: int,
    scenarios: Sequence[Scenario],
    rounds: int,
    target: str,
    server_pids: Sequence[int],
    options: LoadOptions,
) -> tuple[_Level, dict[str, float | None]]:
    level = _Level()
    lag = LagMonitor()
    monitor = asyncio.create_task(lag.run())
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample(level, server_pids, stop))
    try:
        async with asyncio.TaskGroup() as group:
            for slot, start in enumerate(stagger_schedule(n, options.stagger_s)):
                group.create_task(
                    _far_end(level, slot, n, start, scenarios, rounds, target, options)
                )
    finally:
        stop.set()
        await sampler
        monitor.cancel()
    return level, lag.report()


def _idle(pids: Sequence[int], seconds: float = 1.0) -> tuple[int | None, float | None]:
    """The server's RSS and CPU rate while no session runs."""
    if not pids:
        return None, None
    cpu0, t0 = total_cpu_seconds(pids), time.monotonic()
    time.sleep(seconds)
    cpu1, t1 = total_cpu_seconds(pids), time.monotonic()
    return total_rss_bytes(pids), (cpu1 - cpu0) / (t1 - t0)


def _pct(rate: float | None) -> float | None:
    return None if rate is None else 100.0 * rate


def _mb(value: float | None) -> float | None:
    return None if value is None else value / MB


def run_level(
    n: int,
    scenarios: Sequence[Scenario],
    target: str,
    *,
    server_pids: Sequence[int] = (),
    load_urls: Sequence[str] | None = None,
    warm_up: Sequence[str] | None = None,
    options: LoadOptions,
) -> dict[str, Any]:
    """N sessions against ``target``: one results row (after a warm-up scenario alone).

    ``server_pids``: the server's processes, for CPU and memory (none: not measured);
    ``load_urls``: the ``/load`` of each of its event loops (default: beside ``target``);
    ``warm_up``: where to play the warm-up scenario (default ``target``; one address per
    worker process, so that none pays its first session's costs during the run).
    """
    rounds = options.rounds or max(1, math.ceil(MIN_SCENARIOS / n))
    loads = list(load_urls) if load_urls is not None else [_load_url(target)]
    loaded_rss = total_rss_bytes(server_pids) if server_pids else None
    # Warm-up: the first session pays for lazy imports and allocator arenas, which are
    # not what a session costs.
    for url in warm_up or [target]:
        asyncio.run(run_far_end(scenarios[0], url, token=options.token, options=options.far_end))
    time.sleep(0.5)
    idle_rss, idle_cpu = _idle(server_pids)
    _load_report(loads, reset=True)
    level, bench_lag = asyncio.run(_play(n, scenarios, rounds, target, server_pids, options))
    server = _load_report(loads)

    results = [run.measure() | {"react_ms": reaction_ms(run)} for run in level.runs]
    interrupt = [r for r in results if r["expect"] == "interrupt"]
    stops = [float(r["stop_latency_ms"]) for r in interrupt if r["stop_latency_ms"] is not None]
    reacts = [float(r["react_ms"]) for r in interrupt if r["react_ms"] is not None]
    decisions = [float(r["decision_ms"]) for r in interrupt if r.get("decision_ms") is not None]
    window, window_kind = steady_window(level.samples, n)
    server_cpu = _rate(window, "server_cpu_s")
    active = _mean_active(window)
    rss = [s.server_rss for s in window if s.server_rss is not None]
    peak = max(rss) if rss else None
    per_session_mem = (peak - idle_rss) / n if peak is not None and idle_rss is not None else None
    row: dict[str, Any] = {
        "sessions": n,
        "rounds": rounds,
        "scenarios": len(results),
        "expect_interrupt": len(interrupt),
        "stop_p50_ms": percentile(stops, 50),
        "stop_p95_ms": percentile(stops, 95),
        "stop_max_ms": max(stops) if stops else None,
        "react_p50_ms": percentile(reacts, 50),
        "react_p95_ms": percentile(reacts, 95),
        "missed": sum(bool(r["missed"]) for r in interrupt),
        "false_interruptions": sum(bool(r["false_interruption"]) for r in results),
        "decision_p95_ms": percentile(decisions, 95),
        "failed_sessions": len(level.problems),
        "server_cpu_pct": _pct(server_cpu),
        "server_cpu_per_session_pct": _pct(server_cpu / active) if server_cpu and active else None,
        "server_idle_cpu_pct": _pct(idle_cpu),
        "bench_cpu_pct": _pct(_rate(window, "bench_cpu_s")),
        "cpu_window": window_kind,
        "cpu_window_s": window[-1].t - window[0].t if len(window) >= 2 else None,
        "mean_active_sessions": active,
        "rss_loaded_mb": _mb(loaded_rss),
        "rss_idle_mb": _mb(idle_rss),
        "rss_peak_mb": _mb(peak),
        "mem_per_session_mb": _mb(per_session_mem),
        "server_lag_p95_ms": server.get("lag_p95_ms"),
        "server_lag_max_ms": server.get("lag_max_ms"),
        "bench_lag_p95_ms": bench_lag["lag_p95_ms"],
        "bench_lag_max_ms": bench_lag["lag_max_ms"],
        "tts_unprepared": server.get("tts_unprepared"),
        "problems": level.problems,
        "results": [
            {
                k: r.get(k)
                for k in (
                    "name",
                    "kind",
                    "expect",
                    "stop_latency_ms",
                    "react_ms",
                    "missed",
                    "interrupted",
                    "decision",
                    "decision_reason",
                    "decision_ms",
                    "errors",
                )
            }
            for r in results
        ],
    }
    row["ok"], row["why"] = _verdict(row, options.stop_p95_limit_ms)
    return row


REACT_CONTROLS = ("pause", "duck", "clear")


def reaction_ms(run: FarEndRun) -> float | None:
    """From the user's onset to the first output control that reached the far end after it.

    Tier 1 pauses (or ducks) on the first frame of the user's sound, whatever tier 2
    decides later, so this is the interruption path's own reaction time: the network
    both ways, the server's queues and its detectors. ``stop_latency_ms`` also counts a
    wrong tier-2 ``resume``, which is a decision, not load.
    """
    onset = run.mic.onset()
    if onset is None:
        return None
    for at, kind in run.server.controls:
        if kind in REACT_CONTROLS and at >= onset:
            return (at - onset) * 1000
    return None


def _verdict(row: dict[str, Any], limit_ms: float) -> tuple[bool, str]:
    reasons = []
    p95 = row["stop_p95_ms"]
    if p95 is not None and p95 > limit_ms:
        reasons.append(f"stop p95 {p95:.0f} ms > {limit_ms:g} ms")
    if row["missed"]:
        reasons.append(f"{row['missed']} missed")
    if row["failed_sessions"]:
        reasons.append(f"{row['failed_sessions']} sessions failed")
    if not row["expect_interrupt"]:
        reasons.append("no interruption measured")
    return not reasons, "; ".join(reasons)


# -- the sweep ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Server:
    target: str
    pids: list[int]
    load_urls: list[str]
    worker_urls: list[str]


@contextlib.contextmanager
def _server_for(folder: Path, options: LoadOptions) -> Iterator[_Server]:
    if options.target is not None:
        pids = process_tree(options.server_pid) if options.server_pid is not None else []
        yield _Server(options.target, pids, [_load_url(options.target)], [options.target])
        return
    with ServerProcess(folder, recognizer=options.recognizer, workers=options.workers) as server:
        yield _Server(server.url, server.pids, server.load_urls, server.worker_urls)


def run_load(
    folder: Path, sessions: Sequence[int], options: LoadOptions | None = None
) -> dict[str, Any]:
    """Every N of ``sessions`` in turn, each on a fresh server; the results document."""
    options = options or LoadOptions()
    loaded, errors = load_set(folder)
    scenarios = interleave_kinds(loaded, options.kinds)
    if not scenarios:
        wanted = ", ".join(options.kinds or ()) or "any"
        raise TargetError(f"no scenario of kind {wanted} in {folder}")
    rows: list[dict[str, Any]] = []
    for n in sessions:
        if options.progress:
            print(f"[load] {n} sessions ...", file=sys.stderr, flush=True)
        with _server_for(folder, options) as server:
            row = run_level(
                n,
                scenarios,
                server.target,
                server_pids=server.pids,
                load_urls=server.load_urls,
                warm_up=server.worker_urls,
                options=options,
            )
        rows.append(row)
        if options.progress:
            print(format_load_table([row]).splitlines()[-1], file=sys.stderr, flush=True)
    broken = next((r for r in rows if not r["ok"]), None)
    return {
        "kind": "load",
        "set": str(folder),
        "scenario_kinds": list(options.kinds) if options.kinds is not None else "all",
        "stagger_s": options.stagger_s,
        "recognizer": options.recognizer if options.target is None else "target's own",
        "workers": options.workers if options.target is None else "target's own",
        "target": options.target or "load server per N",
        "machine": {"cpus": os.cpu_count(), "loadavg": list(os.getloadavg())},
        "stop_p95_limit_ms": options.stop_p95_limit_ms,
        "rows": rows,
        "breaks_at": broken["sessions"] if broken else None,
        "breaks_because": broken["why"] if broken else None,
        "errors": [str(e) for e in errors],
    }


def format_load_table(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        "sessions",
        "runs",
        "stop p50",
        "stop p95",
        "stop max",
        "react p95",
        "missed",
        "failed",
        "server cpu%",
        "cpu%/session",
        "bench cpu%",
        "MB idle",
        "MB peak",
        "MB/session",
        "srv lag p95",
        "bench lag p95",
        "ok",
    )
    table = [header]
    for r in rows:
        table.append(
            (
                str(r["sessions"]),
                str(r["scenarios"]),
                format_cell(r["stop_p50_ms"]),
                format_cell(r["stop_p95_ms"]),
                format_cell(r["stop_max_ms"]),
                format_cell(r["react_p95_ms"]),
                f"{r['missed']}/{r['expect_interrupt']}",
                str(r["failed_sessions"]),
                format_cell(r["server_cpu_pct"]),
                format_cell(r["server_cpu_per_session_pct"], 1),
                format_cell(r["bench_cpu_pct"]),
                format_cell(r["rss_idle_mb"]),
                format_cell(r["rss_peak_mb"]),
                format_cell(r["mem_per_session_mb"], 1),
                format_cell(r["server_lag_p95_ms"]),
                format_cell(r["bench_lag_p95_ms"]),
                "yes" if r["ok"] else f"no: {r['why']}",
            )
        )
    return columns(table)


def print_load_report(results: dict[str, Any]) -> None:
    print(format_load_table(results["rows"]))
    print("(latencies in ms at each far end's ear; cpu% of one core; MB resident)")
    if results["breaks_at"] is None:
        print(f"no break up to {results['rows'][-1]['sessions']} sessions")
    else:
        print(f"breaks at {results['breaks_at']} sessions: {results['breaks_because']}")
    for row in results["rows"]:
        for problem in row["problems"]:
            print(f"error ({row['sessions']} sessions): {problem}")
