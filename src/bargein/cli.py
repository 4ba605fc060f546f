"""The ``bargein`` command.

- ``bargein bench SCENARIO_DIR --clock virtual --out results.json``: run a scenario set;
  with ``--target ws://HOST:PORT/ws``, against a running server, measured at its far end;
  with ``--sessions 1,10,25``, that many far ends at once (docs/load.md);
- ``bargein report A.json [B.json ...] -o report.html``: an HTML report of saved runs;
- ``bargein scenarios [DEST] [--fresh]``: generate the built-in public scenario set (or
  the fresh check set);
- ``bargein serve [--bench] [--token T]``: the demo page and the WebSocket protocol;
- ``bargein demo``: the same, opening the page in a browser: talk to it, interrupt it;
- ``bargein bench-demo``: generate the built-in set (once) and benchmark it on the
  virtual clock;
- ``bargein bench-turns [DIR] --turn-end fixed|semantic``: generate the turn-taking set
  (once) and measure response gaps and cut-offs (docs/turn_end.md);
- ``bargein diagram``: print the policy's state diagram (Mermaid);
- ``bargein chat [--text] [--llm local|URL]``: talk to an agent, by voice or by typing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from bargein.echo import ECHO_MODES
from bargein.policy import RestartPolicy, Tier1

if TYPE_CHECKING:
    from collections.abc import Callable

    from bargein.bench.report import TraceCollector
    from bargein.bench.runner import Stack
    from bargein.providers.base import StreamingRecognizer
    from bargein.providers.whisper_phrases import WhisperPhraseReader

DEFAULT_SET_DIR = Path(os.environ.get("BARGEIN_CACHE", ".cache")) / "scenarios" / "builtin"
FRESH_SET_DIR = DEFAULT_SET_DIR.parent / "fresh"
DEFAULT_TURN_SET_DIR = DEFAULT_SET_DIR.with_name("turns")


def _bench_llm(args: argparse.Namespace) -> int:
    from bargein.bench.llm_cancel import cancel_report, format_cancel_report

    report = asyncio.run(
        cancel_report(
            repeats=args.repeats,
            after_tokens=args.after,
            local=not args.no_local,
            loopback_server=not args.no_server,
            url=args.url,
            model=args.model,
        )
    )
    print(format_cancel_report(report))
    print("(milliseconds; 'stopped' is when generation ended after the cancel: the worker's")
    print(" loop for llama.cpp in process, the server's last decode over HTTP)")
    if args.out:
        serialisable = {
            name: {k: v for k, v in s.items() if k != "measurements"}
            | {"measurements": [m.__dict__ for m in s["measurements"]]}
            for name, s in report.items()
        }
        Path(args.out).write_text(json.dumps(serialisable, indent=2))
    return 0


def _bench_target(args: argparse.Namespace) -> int:
    from bargein.bench.far_end import TargetError, run_target_set
    from bargein.scenario import ScenarioError

    engine_options = (
        args.restart_policy != "respond",
        args.no_loudness_onset,
        args.transcripts,
        args.no_preemptive,
        args.tier1 != "pause",
        args.duck_limit is not None,
        args.no_early_resume,
        args.answer_window is not None,
        args.share_reader,
    )
    if any(engine_options):
        print(
            "note: --restart-policy, --no-loudness-onset, --transcripts, --no-preemptive, "
            "--tier1, --duck-limit, --no-early-resume, --answer-window and --share-reader "
            "configure the in-process engine; with --target the server's settings apply",
            file=sys.stderr,
        )
    try:
        results = run_target_set(
            Path(args.scenario_dir),
            args.target,
            token=args.token,
            only=args.only or (),
            repeat=args.repeat,
        )
    except (ScenarioError, TargetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _report(args, results)


def _report(
    args: argparse.Namespace, results: dict[str, Any], traces: TraceCollector | None = None
) -> int:
    """Write the results JSON and the HTML report if asked, print the table; non-zero if a
    scenario failed."""
    from bargein.bench.report import annotate_results, write_run_report
    from bargein.bench.runner import print_report

    annotate_results(results, args)
    if getattr(args, "report", None):
        write_run_report(Path(args.report), results, traces)
        print(f"report written to {args.report}", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.out}", file=sys.stderr)
    print_report(results)
    return 1 if results["errors"] else 0


def _bench_load(args: argparse.Namespace) -> int:
    from bargein.bench.far_end import TargetError
    from bargein.bench.load import (
        DEFAULT_KINDS,
        LoadOptions,
        parse_sessions,
        print_load_report,
        run_load,
    )
    from bargein.scenario import ScenarioError

    try:
        sessions = parse_sessions(args.sessions)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"error: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return 2
    if args.clock != "real":
        print("note: --sessions always runs on the real clock", file=sys.stderr)
    only = args.only or []
    options = LoadOptions(
        stagger_s=args.stagger,
        rounds=args.rounds,
        kinds=None if "all" in only else tuple(only) or DEFAULT_KINDS,
        recognizer=args.recognizer,
        workers=args.workers,
        target=args.target,
        server_pid=args.server_pid,
        token=args.token,
    )
    try:
        results = run_load(Path(args.scenario_dir), sessions, options)
    except (ScenarioError, TargetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.out}", file=sys.stderr)
    print_load_report(results)
    return 1 if any(row["failed_sessions"] for row in results["rows"]) else 0


def _bench_peer(args: argparse.Namespace) -> int:
    from bargein.bench.peers import PeerNotInstalled, load_peer, run_peer_set
    from bargein.scenario import ScenarioError

    if args.clock != "real":
        print(
            "bargein bench: --peer runs another framework in real time: add --clock real",
            file=sys.stderr,
        )
        return 2
    try:
        load_peer(args.peer)
        results = run_peer_set(
            Path(args.scenario_dir),
            args.peer,
            config=args.peer_config,
            stt=args.peer_stt,
            only=args.only or (),
        )
    except PeerNotInstalled as exc:
        print(f"bargein bench: {exc}", file=sys.stderr)
        return 2
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _report(args, results)


def _bench(args: argparse.Namespace) -> int:
    if args.peer:
        return _bench_peer(args)
    if args.sessions:
        return _bench_load(args)
    if args.target:
        return _bench_target(args)
    from bargein.bench.report import collector_for
    from bargein.bench.runner import RunOptions, run_set
    from bargein.scenario import ScenarioError

    if args.duck_limit is not None and args.tier1 != "duck":
        print("bargein bench: --duck-limit needs --tier1 duck", file=sys.stderr)
        return 2
    options = RunOptions(
        restart_policy=args.restart_policy,
        loudness_onset=not args.no_loudness_onset,
        preemptive=not args.no_preemptive,
        turn_end=args.turn_end,
        tier1=args.tier1,
        duck_limit_s=args.duck_limit,
    )
    if args.echo is not None:
        options.echo = args.echo
    if args.share_reader and args.spotter != "whisper":
        print("bargein bench: --share-reader shares Whisper (--spotter whisper)", file=sys.stderr)
        return 2
    if args.reading_lag is not None and (args.clock != "virtual" or args.spotter != "whisper"):
        print(
            "bargein bench: --reading-lag delays Whisper's readings on the virtual clock "
            "(--clock virtual --spotter whisper); on the real clock they take what they take",
            file=sys.stderr,
        )
        return 2
    rule_settings: dict[str, Any] = {}
    if args.no_early_resume:
        rule_settings["early_resume_readings"] = 0
    if args.answer_window is not None:
        off = args.answer_window == "off"
        rule_settings["answer_window_s"] = None if off else args.answer_window
    if rule_settings:
        if args.decider not in (None, "rule"):
            print(
                "bargein bench: --no-early-resume and --answer-window are settings of the "
                "rule (--decider rule)",
                file=sys.stderr,
            )
            return 2
        from bargein.decider import RuleDecider

        options.decider_factory = lambda: RuleDecider(**rule_settings)
    elif args.decider is not None:
        from bargein.tier2 import make_decider

        kind = args.decider
        options.decider_factory = lambda: make_decider(kind)
    try:
        results = run_set(
            Path(args.scenario_dir),
            clock=args.clock,
            options=options,
            only=args.only or (),
            stack_factory=_stack_factory(args),
            on_trace=(traces := collector_for(args)),
            repeat=args.repeat,
            jobs=args.jobs,
        )
    except (ScenarioError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _report(args, results, traces)


def _bench_turns(args: argparse.Namespace) -> int:
    from bargein.turn_set import configs_for, format_turn_report, generate_turn_set, run_turn_set

    print(f"Preparing the turn set in {args.dest} ...", file=sys.stderr)
    generate_turn_set(Path(args.dest))
    try:
        configs = configs_for(args.turn_end or ["fixed", "semantic"], args.silence)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = run_turn_set(Path(args.dest), configs, reuse_words=not args.decode_again)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.out}", file=sys.stderr)
    print(format_turn_report(results))
    return 0


def _report_files(args: argparse.Namespace) -> int:
    from bargein.bench.report import report_main

    return report_main(args.results, args.out)


def _scenarios(args: argparse.Namespace) -> int:
    from bargein.builtin_set import generate_builtin_set, generate_fresh_set

    if args.fresh:
        path = generate_fresh_set(Path(args.dest or FRESH_SET_DIR), force=args.force)
    else:
        path = generate_builtin_set(Path(args.dest or DEFAULT_SET_DIR), force=args.force)
    print(path)
    return 0


def _bench_demo(args: argparse.Namespace) -> int:
    from bargein.builtin_set import generate_builtin_set

    print(f"Preparing the built-in scenario set in {args.dest} ...", file=sys.stderr)
    generate_builtin_set(Path(args.dest))
    # Parsed like the command line, so every bench option keeps its default.
    return _bench(build_parser().parse_args(["bench", args.dest, "--out", args.out]))


def _serve(args: argparse.Namespace) -> int:
    import functools

    from bargein.server import default_app, run_server

    if args.llm != "local" and not args.llm.startswith(("http://", "https://")):
        print(
            f"error: --llm must be 'local' or an http(s):// URL, got {args.llm!r}", file=sys.stderr
        )
        return 2
    if args.workers < 1:
        print(f"error: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("BARGEIN_TOKEN") or None
    make_app = functools.partial(
        default_app,
        args.llm,
        args.model,
        args.api_key,
        transcripts=not args.no_transcripts,
        spotter=args.spotter,
        token=token,
        bench=args.bench,
        recognizer_processes=args.recognizer_processes,
    )
    open_browser = args.command == "demo" and not args.no_browser
    log_level = "info" if args.verbose else "warning"

    def started(address: str) -> None:
        url = f"{address}/" + (f"?token={token}" if token else "")
        print(f"bargein: serving on {url}  (Ctrl-C stops)", file=sys.stderr)
        print("The models load in the background; the page is ready meanwhile.", file=sys.stderr)
        if open_browser:
            import webbrowser

            webbrowser.open(url)

    if args.workers > 1:
        from bargein.workers import WorkerFailed, listening_socket, run_workers, socket_address

        try:
            sock = listening_socket(args.host, args.port)
        except OSError as exc:
            print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 1
        address = socket_address(sock)
        try:
            return run_workers(
                make_app,
                sock,
                args.workers,
                log_level=log_level,
                on_started=lambda workers: started(address),
            )
        except WorkerFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            sock.close()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a server stops
        run_server(make_app(), args.host, args.port, on_started=started, log_level=log_level)
    return 0


def _diagram(_: argparse.Namespace) -> int:
    from bargein.policy import mermaid_diagram

    print(mermaid_diagram())
    return 0


def _chat(args: argparse.Namespace) -> int:
    from bargein.chat import run_chat

    return run_chat(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bargein", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log the timeline as JSON")
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="run a scenario set and measure barge-in handling")
    bench.add_argument("scenario_dir")
    bench.add_argument(
        "--clock",
        choices=["virtual", "real"],
        default="virtual",
        help="virtual: the algorithm's own latency, exact; real: wall-clock time, with "
        "processing included",
    )
    bench.add_argument("--out", help="write the results JSON here")
    bench.add_argument(
        "--report", metavar="HTML", help="write an HTML report with a timeline per scenario"
    )
    bench.add_argument(
        "--traces",
        metavar="DIR",
        help="save each scenario's audio and timeline here (one .npz each), so that "
        "'bargein report' can plot a saved run (docs/report.md)",
    )
    bench.add_argument("--only", action="append", metavar="KIND", help="run only this kind")
    bench.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="K",
        help="play the set K times; the summary covers every run (default 1)",
    )
    bench.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="with --clock real: play N scenarios at once, each with its own models "
        "(the whole set in a fraction of the time, at some cost in CPU contention)",
    )
    bench.add_argument(
        "--restart-policy",
        choices=get_args(RestartPolicy),
        default="respond",
        dest="restart_policy",
    )
    bench.add_argument(
        "--tier1",
        choices=get_args(Tier1),
        default="pause",
        help="what the agent's audio does the moment a sound overlaps it: pause (the "
        "default), or duck (play on at a tenth of its level until tier 2 decides)",
    )
    bench.add_argument(
        "--duck-limit",
        type=_seconds,
        default=None,
        metavar="S",
        dest="duck_limit",
        help="with --tier1 duck: pause after S seconds if tier 2 is still undecided",
    )
    bench.add_argument(
        "--echo",
        choices=ECHO_MODES,
        default=None,
        help="how the session keeps its own voice fed back into the microphone from "
        "interrupting it (default: the session's)",
    )
    bench.add_argument(
        "--no-loudness-onset",
        action="store_true",
        help="tier 1 waits for the VAD instead of reacting to a sudden loud sound",
    )
    bench.add_argument(
        "--decider",
        choices=("model", "rule", "duration", "vad"),  # bargein.tier2.DECIDER_KINDS
        default=None,
        help="tier 2: the trained model or the rule (default: the session's, docs/tier2.md); "
        "duration and vad are ablation baselines (any long voice, any voice, takes the floor)",
    )
    bench.add_argument(
        "--no-early-resume",
        action="store_true",
        dest="no_early_resume",
        help="the rule never resumes the agent while the user's sound goes on, however "
        "surely Whisper heard a backchannel in it (docs/tier2.md)",
    )
    bench.add_argument(
        "--recognizer-processes",
        type=_processes,
        default=None,
        metavar="N",
        dest="recognizer_processes",
        help="with --clock real: the streaming recogniser decodes in N worker processes, "
        "as bargein serve's does (default: one per core, up to four); 0 decodes on the "
        "event loop. The virtual clock always decodes in-process",
    )
    bench.add_argument(
        "--share-reader",
        action="store_true",
        dest="share_reader",
        help="with --jobs, the sessions played at once take turns on one Whisper reader, as "
        "bargein serve's sessions do, instead of each having its own model",
    )
    bench.add_argument(
        "--reading-lag",
        type=_reading_lag,
        default=None,
        metavar="S|LO-HI",
        dest="reading_lag",
        help="with --clock virtual and --spotter whisper: each of Whisper's readings comes "
        "back S seconds (or between LO and HI) after it was asked for, as on a busy "
        "machine, instead of at once",
    )
    bench.add_argument(
        "--answer-window",
        type=_answer_window,
        default=None,
        metavar="S|off",
        dest="answer_window",
        help='the rule takes a yes-like backchannel ("yeah", "okay") that begins within S '
        "seconds of the end of the agent's question for its answer, and commits (default: "
        "the rule's 1.0; off: never; docs/tier2.md)",
    )
    bench.add_argument(
        "--transcripts",
        action="store_true",
        help="transcribe the user's turns with Whisper, as a deployed agent would",
    )
    _add_spotter_option(bench)
    bench.add_argument(
        "--no-preemptive",
        action="store_true",
        help="start each reply only once the user's turn has certainly ended",
    )
    bench.add_argument(
        "--turn-end",
        choices=("fixed", "semantic"),
        default="semantic",
        help="end the user's turn after a fixed silence, or one set by how complete their "
        "words sound (default; docs/turn_end.md)",
    )
    bench.add_argument(
        "--target",
        metavar="URL",
        help="measure a running server as the user's device would: ws://HOST:PORT/ws "
        "(docs/protocol.md; the server must run with --bench) or twilio+ws://...; implies "
        "--clock real",
    )
    bench.add_argument(
        "--token",
        default=os.environ.get("BARGEIN_TOKEN"),
        help="the target's access token (default: $BARGEIN_TOKEN)",
    )
    peers = bench.add_argument_group("peers (docs/peers.md; needs the peers extra)")
    peers.add_argument(
        "--peer",
        choices=["pipecat", "livekit"],
        help="run the set through another framework's own pipeline instead of bargein's",
    )
    peers.add_argument(
        "--peer-config",
        dest="peer_config",
        choices=["default", "minwords2"],
        default="default",
        help="the peer's own defaults, or its documented two-word interruption setting",
    )
    peers.add_argument(
        "--peer-stt",
        dest="peer_stt",
        choices=["final", "interim"],
        default="final",
        help="scripted transcripts: final only, or interim words while the user speaks too",
    )
    load = bench.add_argument_group(
        "load (docs/load.md)",
        "--sessions N[,N...] plays N far ends at once against a load-test server started "
        "per N (or --target) and reports latency, CPU and memory per session; it cycles "
        "through the barge_in and short_command scenarios (--only KIND: others, --only all: "
        "every scenario)",
    )
    load.add_argument("--sessions", metavar="N,N,...", help="e.g. 1,10,25,50")
    load.add_argument(
        "--stagger",
        type=float,
        default=2.0,
        metavar="S",
        help="start the sessions evenly over the first S seconds (default 2)",
    )
    load.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="scenarios each far end plays in a row (default: enough for 18 per N)",
    )
    load.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="the load server runs as N processes sharing its port, as `bargein serve "
        "--workers N` does (default 1)",
    )
    load.add_argument(
        "--recognizer",
        choices=["known", "pocketsphinx", "pocketsphinx-loop"],  # load_server.RECOGNIZERS
        default="known",
        help="the load server's recogniser: a stand-in that knows the set's recordings "
        "(default), the real pocketsphinx in worker processes as bargein serve runs it, "
        "or pocketsphinx on the server's event loop",
    )
    load.add_argument(
        "--server-pid",
        type=int,
        dest="server_pid",
        help="with --target: the server's process id, to measure its CPU and memory",
    )
    bench.set_defaults(func=_bench)

    llm_bench = sub.add_parser(
        "bench-llm", help="measure how fast LLMs stop when a reply is cancelled"
    )
    llm_bench.add_argument("--repeats", type=int, default=20)
    llm_bench.add_argument("--after", type=int, default=10, help="tokens before each cancel")
    llm_bench.add_argument("--no-local", action="store_true", help="skip llama.cpp in process")
    llm_bench.add_argument(
        "--no-server", action="store_true", help="skip llama.cpp's server on loopback"
    )
    llm_bench.add_argument("--url", help="also an OpenAI-compatible server at this base URL")
    llm_bench.add_argument("--model", help="the model name for --url")
    llm_bench.add_argument("--out", help="write the figures as JSON here")
    llm_bench.set_defaults(func=_bench_llm)

    scen = sub.add_parser("scenarios", help="generate the built-in scenario set")
    scen.add_argument(
        "dest", nargs="?", help=f"where (default {DEFAULT_SET_DIR}, or {FRESH_SET_DIR})"
    )
    scen.add_argument(
        "--fresh",
        action="store_true",
        help="the fresh check set instead: sentences, voices and rooms the built-in set "
        "does not have, for judging what was tuned on it",
    )
    scen.add_argument("--force", action="store_true", help="regenerate even if up to date")
    scen.set_defaults(func=_scenarios)

    for name, description in (
        ("serve", "serve the demo page and the WebSocket protocol (docs/protocol.md)"),
        ("demo", "serve the demo page and open it in a browser: talk to the agent"),
    ):
        serve = sub.add_parser(name, help=description)
        _add_serve_options(serve)
        if name == "demo":
            serve.add_argument(
                "--no-browser", action="store_true", help="only print the page's address"
            )
        serve.set_defaults(func=_serve)

    bench_demo = sub.add_parser(
        "bench-demo", help="benchmark the built-in set on the virtual clock"
    )
    bench_demo.add_argument("--dest", default=str(DEFAULT_SET_DIR))
    bench_demo.add_argument("--out", default="results.json")
    bench_demo.set_defaults(func=_bench_demo)

    turns = sub.add_parser(
        "bench-turns",
        help="measure when the agent takes the floor after complete and unfinished turns",
    )
    turns.add_argument("dest", nargs="?", default=str(DEFAULT_TURN_SET_DIR))
    turns.add_argument(
        "--turn-end",
        action="append",
        choices=("fixed", "semantic", "llm"),
        help="a way to end turns (repeatable; default: fixed and semantic); llm: the "
        "local LLM as the detector",
    )
    turns.add_argument(
        "--silence",
        type=float,
        action="append",
        metavar="S",
        help="the fixed silence(s) in seconds (repeatable; default: 0.8 and 0.5)",
    )
    turns.add_argument("--out", help="write the results JSON here")
    turns.add_argument(
        "--decode-again",
        action="store_true",
        help="run pocketsphinx again instead of replaying its words saved by the last run",
    )
    turns.set_defaults(func=_bench_turns)

    report = sub.add_parser(
        "report", help="one HTML report from saved results files, compared side by side"
    )
    report.add_argument("results", nargs="+", help="results JSON files (bargein bench --out)")
    report.add_argument("-o", "--out", default="report.html", help="the HTML file to write")
    report.set_defaults(func=_report_files)

    diagram = sub.add_parser("diagram", help="print the policy's state diagram")
    diagram.set_defaults(func=_diagram)

    chat = sub.add_parser("chat", help="talk to an agent: by voice, or by typing (--text)")
    chat.add_argument(
        "--text",
        action="store_true",
        help="type instead of speaking (automatic when there is no sound device)",
    )
    _add_llm_options(chat)
    chat.add_argument("--system", metavar="PROMPT", help="the agent's system prompt")
    on_error = chat.add_mutually_exclusive_group()
    on_error.add_argument(
        "--fallback",
        metavar="TEXT",
        help="what the agent says when the model fails (default: an apology asking the user "
        "to say it again)",
    )
    on_error.add_argument(
        "--silent-on-error",
        action="store_true",
        dest="silent_on_error",
        help="say nothing when the model fails (the error still goes to stderr)",
    )
    chat.set_defaults(func=_chat)
    return parser


def _reading_lag(text: str) -> tuple[float, float]:
    from bargein.bench.lagged_reader import parse_lag

    try:
        return parse_lag(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    """A duration on the command line: a number of seconds, zero or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"seconds must be zero or more: {text!r}")
    return value


def _stack_factory(args: argparse.Namespace) -> Callable[[], Stack]:
    """The benchmark's stacks; with ``--share-reader`` every one after the first reads
    with the first one's Whisper reader."""
    from bargein.bench.runner import default_stack

    readers: list[WhisperPhraseReader] = []
    streams = _bench_recognizers(args)
    spots = _bench_recognizers(args, phrases=True) if args.spotter == "phrases" else None

    def make() -> Stack:
        reader = readers[0] if readers else None
        stack = default_stack(
            transcripts=args.transcripts,
            spotter=args.spotter,
            reader=reader,
            recognizer=streams() if streams is not None else None,
            phrase_spotter=spots() if spots is not None else None,
        )
        shared = getattr(stack.second_opinion, "reader", None)
        if args.share_reader and shared is not None and not readers:
            readers.append(shared)
        if args.reading_lag is not None:
            from bargein.bench.lagged_reader import LaggedReader

            lagged = LaggedReader(stack.second_opinion, *args.reading_lag)
            stack = dataclasses.replace(stack, second_opinion=lagged)
        return stack

    return make


def _bench_recognizers(
    args: argparse.Namespace, *, phrases: bool = False
) -> Callable[[], StreamingRecognizer] | None:
    """Streams on recogniser (or, with ``phrases``, phrase spotter) worker processes for
    the real clock's sessions, as the server runs them; None: each stack decodes on the
    event loop (always on the virtual clock, where time is not the CPU's and a run must
    repeat exactly)."""
    from bargein.transports.stack import (
        RECOGNIZER_PROCESSES,
        offloaded_phrase_spotter,
        offloaded_recognizer,
    )

    processes = args.recognizer_processes
    if processes is None:
        processes = RECOGNIZER_PROCESSES if args.clock == "real" else 0
    if processes < 1 or args.clock != "real":
        return None
    return offloaded_phrase_spotter(processes) if phrases else offloaded_recognizer(processes)


def _answer_window(text: str) -> float | str:
    """The rule's answer window: seconds, zero or more, or "off"."""
    return "off" if text == "off" else _seconds(text)


def _add_llm_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--llm",
        default="local",
        metavar="local|URL",
        help="'local' (embedded Gemma 3 270M through llama.cpp, the default) or the base URL "
        "of an OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1",
    )
    parser.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help="with --llm local: a .gguf file to load instead; with a URL: the model name",
    )
    parser.add_argument("--api-key", dest="api_key", help="API key for the server at --llm URL")


def _processes(text: str) -> int:
    """A number of worker processes on the command line: zero or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more: {text!r}")
    return value


def _add_serve_options(parser: argparse.ArgumentParser) -> None:
    from bargein.transports.stack import RECOGNIZER_PROCESSES

    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="serve from N processes sharing the port, each with its own models: more "
        "calls at once on a machine with several cores (docs/load.md)",
    )
    parser.add_argument(
        "--recognizer-processes",
        type=_processes,
        default=RECOGNIZER_PROCESSES,
        metavar="N",
        dest="recognizer_processes",
        help="each server process decodes its calls' speech in N worker processes, off "
        f"the event loop that carries their audio (default {RECOGNIZER_PROCESSES}: one "
        "per core, up to four); 0 decodes on the loop",
    )
    parser.add_argument(
        "--token",
        help="clients must send this token in their hello (default: $BARGEIN_TOKEN; none)",
    )
    parser.add_argument(
        "--bench",
        action="store_true",
        help="accept the benchmark hook (bench_reply, request_reply) from clients",
    )
    _add_llm_options(parser)
    parser.add_argument(
        "--no-transcripts",
        action="store_true",
        help="answer the streaming recogniser's words instead of waiting for Whisper's "
        "transcript (faster replies on a slow CPU, worse understanding)",
    )
    _add_spotter_option(parser)


def _add_spotter_option(parser: argparse.ArgumentParser) -> None:
    from bargein.transports.stack import DEFAULT_SPOTTER, SpotterName

    parser.add_argument(
        "--spotter",
        choices=get_args(SpotterName),
        default=DEFAULT_SPOTTER,
        help="tier 2's second reading of each overlap (fewer stops for 'uh-huh'): Whisper "
        "on a short window, sharing the transcriber's model (the default); PocketSphinx's "
        "closed-set phrase spotter; or off, the rule on the streaming recogniser's words "
        "alone (docs/tier2.md)",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(name)s %(message)s",
    )
    args.argv = sys.argv[1:] if argv is None else list(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
