"""How fast a language model stops when the user barges in.

Two numbers matter when a reply is cancelled. The first is how long ``aclose()`` takes
to return: the session awaits it before the turn can move on. The second is how long
the model keeps generating afterwards: tokens the user will never hear, compute that is
wasted, and (for a server shared by several agents) a slot still taken. A stream that
keeps a ledger (``tokens_after(t)``, like the scripted and HTTP providers) reports what
reached the client after the cancel; for a remote server only the server can say when
it really stopped, so the caller may pass ``server_decodes``, a callable returning the
server's decode timestamps, and the measurement adds how long after the cancel the last
one ran.

Works for any :class:`~bargein.providers.base.LanguageModel`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bargein.bench.metrics import columns
from bargein.providers.base import ChatMessage, LanguageModel
from bargein.session import TokenLedger

__all__ = [
    "DEFAULT_MESSAGES",
    "CancelMeasurement",
    "DecodeTimes",
    "measure_cancel",
    "run_cancel_bench",
]

DecodeTimes = Callable[[], Sequence[float]]
"""Returns the times (``time.monotonic()``) at which the server ran each decode step."""

DEFAULT_MESSAGES: tuple[ChatMessage, ...] = (
    ChatMessage("system", "You are a storyteller. Answer at length."),
    ChatMessage("user", "Tell me a long story about a lighthouse keeper and a storm."),
)
"""A prompt that makes most models talk well past the point where the bench cancels."""


@dataclass(frozen=True)
class CancelMeasurement:
    """One cancelled reply.

    ``tokens_after_cancel`` is None when the stream keeps no ledger. The server fields
    are None without an observer; ``server_stop_after_cancel_s`` is the last decode's
    time minus the cancel's, so it is negative when the server had already stopped.
    """

    tokens_before_cancel: int
    cancel_to_closed_s: float
    tokens_after_cancel: int | None = None
    server_stop_after_cancel_s: float | None = None
    server_decodes_after_cancel: int | None = None
    stopped_after_cancel_s: float | None = None
    """For an in-process model: when its generation loop exited, after the cancel."""
    decode_step_s: float | None = None
    """The median time between tokens before the cancel: the unit the stop is measured in."""


async def measure_cancel(
    llm: LanguageModel,
    messages: Sequence[ChatMessage],
    after_tokens: int,
    *,
    server_decodes: DecodeTimes | None = None,
    settle_s: float = 0.5,
) -> CancelMeasurement:
    """Stream a reply, cancel it after ``after_tokens`` items, and time the stop.

    Tokens after the cancel are counted from the moment ``aclose()`` is called, as the
    session counts them, so a token a provider lets slip while closing is counted. With
    ``server_decodes``, waits ``settle_s`` after the close so a server that is slow to
    notice has the time to show it.
    """
    if after_tokens < 1:
        raise ValueError("after_tokens must be at least 1")
    stream = llm.stream(messages)
    aclose = getattr(stream, "aclose", None)
    if aclose is None:
        raise TypeError(f"{type(stream).__name__} has no aclose(): it cannot be cancelled")
    received = 0
    try:
        while received < after_tokens:
            await anext(stream)
            received += 1
    except StopAsyncIteration:
        await aclose()
        raise ValueError(
            f"the reply ended after {received} tokens, before the {after_tokens} to cancel "
            "after: ask for a longer reply"
        ) from None
    except BaseException:
        await aclose()
        raise
    loop = asyncio.get_running_loop()
    cancelled_at = loop.time()
    cancelled_mono = time.monotonic()
    await aclose()
    closed_mono = time.monotonic()

    tokens_after = stream.tokens_after(cancelled_at) if isinstance(stream, TokenLedger) else None
    stopped_at = getattr(stream, "stopped_at", None)
    stopped_after = stopped_at - cancelled_at if isinstance(stopped_at, float) else None
    emitted = [t for t in getattr(stream, "emitted_at", []) if t <= cancelled_at]
    step = float(np.median(np.diff(emitted))) if len(emitted) > 2 else None
    stop_after: float | None = None
    decodes_after: int | None = None
    if server_decodes is not None:
        await asyncio.sleep(settle_s)
        times = list(server_decodes())
        decodes_after = sum(1 for t in times if t > cancelled_mono)
        stop_after = max(times) - cancelled_mono if times else None
    return CancelMeasurement(
        tokens_before_cancel=received,
        cancel_to_closed_s=closed_mono - cancelled_mono,
        tokens_after_cancel=tokens_after,
        server_stop_after_cancel_s=stop_after,
        server_decodes_after_cancel=decodes_after,
        stopped_after_cancel_s=stopped_after,
        decode_step_s=step,
    )


async def run_cancel_bench(
    llm: LanguageModel,
    repeats: int,
    after_tokens: int,
    *,
    messages: Sequence[ChatMessage] = DEFAULT_MESSAGES,
    server_decodes: DecodeTimes | None = None,
    settle_s: float = 0.5,
) -> dict[str, Any]:
    """``repeats`` cancelled replies, one after the other, summarised as p50/p95.

    Times are in milliseconds. Keys for tokens after cancel and for the server appear
    only when they were measured; ``measurements`` keeps the raw runs.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    runs = [
        await measure_cancel(
            llm, messages, after_tokens, server_decodes=server_decodes, settle_s=settle_s
        )
        for _ in range(repeats)
    ]
    summary: dict[str, Any] = {"repeats": repeats, "after_tokens": after_tokens}
    _add_percentiles(summary, "cancel_to_closed_ms", [r.cancel_to_closed_s * 1e3 for r in runs])
    _add_percentiles(summary, "tokens_after_cancel", [r.tokens_after_cancel for r in runs])
    _add_percentiles(
        summary,
        "server_stop_after_cancel_ms",
        [
            None if r.server_stop_after_cancel_s is None else r.server_stop_after_cancel_s * 1e3
            for r in runs
        ],
    )
    _add_percentiles(
        summary, "server_decodes_after_cancel", [r.server_decodes_after_cancel for r in runs]
    )
    _add_percentiles(
        summary,
        "stopped_after_cancel_ms",
        [
            None if r.stopped_after_cancel_s is None else r.stopped_after_cancel_s * 1e3
            for r in runs
        ],
    )
    _add_percentiles(
        summary,
        "decode_step_ms",
        [None if r.decode_step_s is None else r.decode_step_s * 1e3 for r in runs],
    )
    summary["measurements"] = runs
    return summary


async def cancel_report(
    *,
    repeats: int = 20,
    after_tokens: int = 10,
    local: bool = True,
    loopback_server: bool = True,
    url: str | None = None,
    model: str | None = None,
) -> dict[str, dict[str, Any]]:
    """The benchmark's LLM cancellation figures, one entry per way of running a model.

    ``local``: the embedded llama.cpp model in process. ``loopback_server``:
    llama-cpp-python's own server with the same model on loopback, its decodes logged,
    reached over HTTP by the OpenAI-compatible provider. ``url``/``model``: any other
    OpenAI-compatible server (only the client side can be measured there).
    """
    from bargein.providers.llamacpp import LlamaCppLLM, default_model_path
    from bargein.providers.openai_compat import OpenAICompatLLM

    report: dict[str, dict[str, Any]] = {}
    if local:
        llm = LlamaCppLLM(max_tokens=400)
        report["llama.cpp in process"] = await run_cancel_bench(llm, repeats, after_tokens)
        # The baseline, same model and run: stop only between two decode steps.
        between = LlamaCppLLM(max_tokens=400, abort_mid_step=False)
        report["llama.cpp in process, stop between steps"] = await run_cancel_bench(
            between, repeats, after_tokens
        )
    if loopback_server:
        from bargein.bench.llama_server import LlamaServer

        server = LlamaServer(str(default_model_path()))
        server.start()
        try:
            http = OpenAICompatLLM(
                base_url=server.base_url, model="gemma-3-270m", max_tokens=400, temperature=0.0
            )
            report["llama.cpp server over loopback HTTP"] = await run_cancel_bench(
                http, repeats, after_tokens, server_decodes=server.decodes
            )
        finally:
            server.stop()
    if url is not None:
        remote = OpenAICompatLLM.from_env(base_url=url, model=model, max_tokens=400)
        report[url] = await run_cancel_bench(remote, repeats, after_tokens)
    return report


def format_cancel_report(report: dict[str, dict[str, Any]]) -> str:
    """A table of the report: milliseconds, and tokens that began after the cancel."""
    header = (
        "model",
        "aclose p50",
        "aclose p95",
        "stopped p50",
        "stopped p95",
        "decode step p50",
        "tokens after cancel (max)",
    )
    rows = [header]
    for name, s in report.items():
        stopped = "stopped_after_cancel_ms" if "stopped_after_cancel_ms_p50" in s else None
        if stopped is None and "server_stop_after_cancel_ms_p50" in s:
            stopped = "server_stop_after_cancel_ms"
        tokens = [
            m.tokens_after_cancel for m in s["measurements"] if m.tokens_after_cancel is not None
        ]
        step = s.get("decode_step_ms_p50")
        rows.append(
            (
                name,
                f"{s['cancel_to_closed_ms_p50']:.2f}",
                f"{s['cancel_to_closed_ms_p95']:.2f}",
                "-" if stopped is None else f"{s[stopped + '_p50']:.1f}",
                "-" if stopped is None else f"{s[stopped + '_p95']:.1f}",
                "-" if step is None else f"{step:.1f}",
                str(max(tokens)) if tokens else "-",
            )
        )
    return columns(rows)


def _add_percentiles(
    summary: dict[str, Any], name: str, values: Sequence[float | int | None]
) -> None:
    known = [float(v) for v in values if v is not None]
    if not known:
        return
    summary[f"{name}_p50"] = float(np.percentile(known, 50))
    summary[f"{name}_p95"] = float(np.percentile(known, 95))
