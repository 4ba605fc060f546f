"""Other frameworks through bargein's benchmark: Pipecat and LiveKit Agents as peers.

``bargein bench DIR --clock real --peer pipecat|livekit`` plays a scenario set through
another framework's own pipeline (its VAD, its interruption rules, its queues), with
only its LLM, STT and TTS replaced by the same scripted text, Piper voice and scripted
transcripts for every system, and measures it with bargein's own ear and metrics. The
results file has the same fields as ``bargein bench``'s, plus ``system`` naming the peer,
its version and its configuration. The frameworks are the optional extra ``peers``.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

from bargein.bench.metrics import summarize
from bargein.bench.peers.harness import PeerRunOptions, SttMode
from bargein.providers.base import TextToSpeech
from bargein.scenario import ScenarioError, load_set
from bargein.session import describe_error

__all__ = [
    "PEERS",
    "PEER_CONFIGS",
    "PeerName",
    "PeerNotInstalled",
    "load_peer",
    "run_peer_set",
]

PeerName = Literal["pipecat", "livekit"]
PeerConfig = Literal["default", "minwords2"]
PEERS: tuple[str, ...] = get_args(PeerName)
PEER_CONFIGS: tuple[str, ...] = get_args(PeerConfig)
STT_MODES: tuple[str, ...] = get_args(SttMode)


class PeerNotInstalled(RuntimeError):
    """The peer's framework is not installed (the ``peers`` extra)."""

    def __init__(self, peer: str) -> None:
        super().__init__(f"--peer {peer} needs the peers extra: pip install 'bargein[peers]'")


def load_peer(peer: str) -> Any:
    """The adapter module of ``peer``; :class:`PeerNotInstalled` if its framework is not."""
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}: expected one of {', '.join(PEERS)}")
    try:
        return importlib.import_module(f"bargein.bench.peers.{peer}")
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] in ("pipecat", "livekit", "loguru"):
            raise PeerNotInstalled(peer) from exc
        raise


def run_peer_set(
    folder: Path,
    peer: str,
    *,
    config: str = "default",
    stt: SttMode = "final",
    only: Sequence[str] = (),
    progress: bool = True,
    tts: TextToSpeech | None = None,
) -> dict[str, Any]:
    """Run every scenario of ``folder`` through ``peer`` on the real clock.

    Writes the same results as :func:`bargein.bench.runner.run_set`, with ``system``
    added. A scenario that fails is an entry in ``errors``; the set goes on. ``tts`` is
    the agent's voice (default: bargein's repeatable Piper voice, cached).
    """
    adapter = load_peer(peer)
    if config not in adapter.CONFIGS:
        raise ValueError(f"unknown {peer} config {config!r}: expected one of {adapter.CONFIGS}")
    quiet = getattr(adapter, "quiet", None)
    if quiet is not None:
        quiet()
    scenarios, errors = load_set(folder)
    if only:
        scenarios = [s for s in scenarios if s.kind in only]
    if tts is None:
        from bargein.providers.piper import CachedTTS, PiperTTS

        tts = CachedTTS(PiperTTS.repeatable())
    options = PeerRunOptions(stt=stt)
    results: list[dict[str, Any]] = []
    problems = [str(e) for e in errors]
    for i, scenario in enumerate(scenarios, 1):
        if progress:
            print(f"[{i}/{len(scenarios)}] {scenario.name}", file=sys.stderr, flush=True)
        try:
            results.append(asyncio.run(adapter.run_scenario(scenario, tts, options, config)))
        except ScenarioError as exc:
            problems.append(str(exc))
        except Exception as exc:  # one broken scenario must not stop the set
            problems.append(f"{scenario.path.name}: run failed: {describe_error(exc)}")
    return {
        "clock": "real",
        "system": adapter.system(config, stt),
        "summary": summarize(results),
        "scenarios": results,
        "errors": problems,
    }
