"""The ``bargein`` command.

- ``bargein bench SCENARIO_DIR --clock virtual --out results.json``: run a scenario set;
  with ``--target ws://HOST:PORT/ws``, against a running server, measured at its far end;
- ``bargein scenarios DEST``: generate the built-in public scenario set;
- ``bargein serve [--bench] [--token T]``: the demo page and the WebSocket protocol;
- ``bargein demo``: the same, opening the page in a browser: talk to it, interrupt it;
- ``bargein bench-demo``: generate the built-in set (once) and benchmark it on the
  virtual clock;
- ``bargein diagram``: print the policy's state diagram (Mermaid);
- ``bargein chat [--text] [--llm local|URL]``: talk to an agent, by voice or by typing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, get_args

from bargein.policy import RestartPolicy

DEFAULT_SET_DIR = Path(os.environ.get("BARGEIN_CACHE", ".cache")) / "scenarios" / "builtin"


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
    )
    if any(engine_options):
        print(
            "note: --restart-policy, --no-loudness-onset, --transcripts and --no-preemptive "
            "configure the in-process engine; with --target the server's settings apply",
            file=sys.stderr,
        )
    try:
        results = run_target_set(
            Path(args.scenario_dir), args.target, token=args.token, only=args.only or ()
        )
    except (ScenarioError, TargetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _report(args, results)


def _report(args: argparse.Namespace, results: dict[str, Any]) -> int:
    """Write the results JSON if asked, print the table; non-zero if a scenario failed."""
    from bargein.bench.runner import print_report

    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.out}", file=sys.stderr)
    print_report(results)
    return 1 if results["errors"] else 0


def _bench(args: argparse.Namespace) -> int:
    if args.target:
        return _bench_target(args)
    from bargein.bench.runner import RunOptions, default_stack, run_set
    from bargein.scenario import ScenarioError

    options = RunOptions(
        restart_policy=args.restart_policy,
        loudness_onset=not args.no_loudness_onset,
        preemptive=not args.no_preemptive,
    )
    try:
        results = run_set(
            Path(args.scenario_dir),
            clock=args.clock,
            options=options,
            only=args.only or (),
            stack=default_stack(transcripts=args.transcripts),
        )
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _report(args, results)


def _scenarios(args: argparse.Namespace) -> int:
    from bargein.builtin_set import generate_builtin_set

    path = generate_builtin_set(Path(args.dest), force=args.force)
    print(path)
    return 0


def _bench_demo(args: argparse.Namespace) -> int:
    from bargein.builtin_set import generate_builtin_set

    print(f"Preparing the built-in scenario set in {args.dest} ...", file=sys.stderr)
    generate_builtin_set(Path(args.dest))
    # Parsed like the command line, so every bench option keeps its default.
    return _bench(build_parser().parse_args(["bench", args.dest, "--out", args.out]))


def _serve(args: argparse.Namespace) -> int:
    from bargein.server import create_app, default_stack, run_server

    if args.llm != "local" and not args.llm.startswith(("http://", "https://")):
        print(
            f"error: --llm must be 'local' or an http(s):// URL, got {args.llm!r}", file=sys.stderr
        )
        return 2
    token = args.token or os.environ.get("BARGEIN_TOKEN") or None
    app = create_app(
        lambda: default_stack(
            args.llm, args.model, args.api_key, transcripts=not args.no_transcripts
        ),
        token=token,
        bench=args.bench,
    )
    open_browser = args.command == "demo" and not args.no_browser

    def started(address: str) -> None:
        url = f"{address}/" + (f"?token={token}" if token else "")
        print(f"bargein: serving on {url}  (Ctrl-C stops)", file=sys.stderr)
        print("The models load in the background; the page is ready meanwhile.", file=sys.stderr)
        if open_browser:
            import webbrowser

            webbrowser.open(url)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a server stops
        run_server(
            app,
            args.host,
            args.port,
            on_started=started,
            log_level="info" if args.verbose else "warning",
        )
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
    bench.add_argument("--only", action="append", metavar="KIND", help="run only this kind")
    bench.add_argument(
        "--restart-policy",
        choices=get_args(RestartPolicy),
        default="respond",
        dest="restart_policy",
    )
    bench.add_argument(
        "--no-loudness-onset",
        action="store_true",
        help="tier 1 waits for the VAD instead of reacting to a sudden loud sound",
    )
    bench.add_argument(
        "--transcripts",
        action="store_true",
        help="transcribe the user's turns with Whisper, as a deployed agent would",
    )
    bench.add_argument(
        "--no-preemptive",
        action="store_true",
        help="start each reply only once the user's turn has certainly ended",
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
    scen.add_argument("dest", nargs="?", default=str(DEFAULT_SET_DIR))
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


def _add_serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8765)
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(name)s %(message)s",
    )
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
