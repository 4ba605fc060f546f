"""A server for load tests: the real interruption path, with stand-ins for the slow models.

``python -m bargein.bench.load_server --set DIR`` serves the ordinary application
(:func:`bargein.server.create_app`, with the benchmark hook) on a stack whose
interruption path is real and whose expensive models are not:

- **real**: Silero VAD and the loudness gate, the segmenter, the policy and its decider,
  the session's reply task group, playout tracking, the outbox and the WebSocket;
- **TTS**: Piper's audio for every sentence the set can make the agent say, synthesised
  once (and kept in ``--cache`` for the next server) and handed out after 100-150 ms,
  as a TTS service would answer;
- **LLM**: the benchmark hook's scripted model (the scenario's text, 150 ms to the first
  token, then 30 tokens/s);
- **recogniser**: :class:`KnownSpeechRecognizer`, which recognises the set's own
  recordings by their samples and reports each word 100 ms after its audio has arrived;
  ``--recognizer pocketsphinx`` uses the real streaming recogniser instead, in worker
  processes as ``bargein serve`` runs it, and ``pocketsphinx-loop`` on the event loop.

So what a load test measures is what each session costs the interruption path itself;
the models a deployment would run elsewhere (or share) are out of the figure. Once it
listens, the server prints one JSON line on stdout with its address and process id.
``/load`` reports the event loop's lateness since the last ``/load?reset=1`` and how
often the TTS stand-in had to synthesise something it had not prepared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import pickle
import random
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bargein.bench.loop_lag import LagMonitor
from bargein.providers.base import (
    FloatAudio,
    ProviderError,
    SpeechChunk,
    StreamingRecognizer,
    TextToSpeech,
)

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from bargein.scenario import Scenario
    from bargein.transports.stack import AgentStack
    from bargein.workers import WorkerInfo

__all__ = [
    "DelayedTTS",
    "KnownSpeech",
    "KnownSpeechRecognizer",
    "LagMonitor",
    "SpeechIndex",
    "agent_sentences",
    "build_app",
    "build_stack",
    "cached_speech",
    "load_app",
    "prepare_speech",
    "reply_sentences",
    "serve_workers",
    "spoken_words",
]

log = logging.getLogger("bargein.load_server")

TTS_DELAY_S = (0.10, 0.15)
RECOGNIZERS = ("known", "pocketsphinx", "pocketsphinx-loop")
RECOGNIZER_DELAY_S = 0.1
WORKER_THREADS = 32
"""The TTS stand-in waits in a worker thread; the default pool (cores + 4) would queue
the waits of many sessions behind each other, a cost no real TTS service imposes."""

_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s")
"""Where the session cuts the LLM's text into sentences for the TTS (bargein.session)."""


def reply_sentences(text: str) -> list[str]:
    """The sentences a session hands its TTS when an LLM streams ``text``."""
    out: list[str] = []
    pending = text
    while (match := _SENTENCE_END.search(pending)) is not None:
        out.append(pending[: match.end()].strip())
        pending = pending[match.end() :]
    if pending.strip():
        out.append(pending.strip())
    return out


# -- the TTS stand-in ---------------------------------------------------------------------


class DelayedTTS:
    """Audio prepared beforehand, handed out sentence by sentence after a service-like delay.

    A sentence that was not prepared is voiced by ``fallback`` when there is one (which
    costs CPU, so :attr:`unprepared` counts it) and is an error otherwise.
    """

    def __init__(
        self,
        prepared: Mapping[str, Sequence[SpeechChunk]],
        sample_rate: int,
        delay_s: tuple[float, float] = TTS_DELAY_S,
        *,
        fallback: TextToSpeech | None = None,
        seed: int = 0,
    ) -> None:
        self.prepared = dict(prepared)
        self.sample_rate = sample_rate
        self.delay_s = delay_s
        self.fallback = fallback
        self.unprepared = 0
        self._random = random.Random(seed)

    def synthesize(self, text: str) -> Iterator[SpeechChunk]:
        low, high = self.delay_s
        time.sleep(self._random.uniform(low, high))
        chunks = self.prepared.get(text)
        if chunks is None:
            self.unprepared += 1
            if self.fallback is None:
                raise ProviderError(f"the load server prepared no audio for {text!r}")
            chunks = list(self.fallback.synthesize(text))
        yield from chunks


def prepare_speech(
    sentences: Iterable[str], tts: TextToSpeech
) -> dict[str, tuple[SpeechChunk, ...]]:
    """Every sentence voiced by ``tts``, once."""
    return {s: tuple(tts.synthesize(s)) for s in dict.fromkeys(sentences)}


def cached_speech(
    sentences: Sequence[str], cache_dir: Path, make_tts: Callable[[], TextToSpeech]
) -> tuple[dict[str, tuple[SpeechChunk, ...]], int]:
    """The sentences voiced by ``make_tts()``, kept in ``cache_dir`` for the next server.

    Voicing a large set takes tens of seconds of CPU, and the load benchmark starts a
    server per number of sessions; the file is named after the sentences, so another set
    gets another file. Returns the audio and its sample rate.
    """
    key = hashlib.sha256("\n".join(sorted(set(sentences))).encode()).hexdigest()[:16]
    path = cache_dir / f"load-tts-{key}.pickle"
    with contextlib.suppress(OSError, pickle.UnpicklingError, EOFError, ValueError):
        rate, speech = pickle.loads(path.read_bytes())  # written by this function only
        if isinstance(rate, int) and isinstance(speech, dict) and set(sentences) <= set(speech):
            return speech, rate
    tts = make_tts()
    speech = prepare_speech(sentences, tts)
    with contextlib.suppress(OSError):
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(pickle.dumps((tts.sample_rate, speech)))
        partial.replace(path)
    return speech, tts.sample_rate


# -- the recogniser stand-in --------------------------------------------------------------


def spoken_words(text: str) -> list[str]:
    """Lower-case words of ``text`` as a recogniser would report them."""
    words = (re.sub(r"[^a-z0-9']+", " ", w.lower()).split() for w in text.split())
    return [w for group in words for w in group]


@dataclass(frozen=True)
class KnownSpeech:
    """One recording of the set: its words, and when each is over (seconds into it)."""

    text: str
    words: tuple[str, ...]
    word_ends: tuple[float, ...]


class SpeechIndex:
    """The set's recordings, findable from any short stretch of their samples.

    The far end sends a scenario's recordings bit-exact when nothing else plays over
    them (no echo, no overlapping events), so a 16-sample window is enough to say which
    recording, and where in it, a stretch of microphone audio comes from. Windows are
    indexed every ``stride`` samples; a lookup tries ``stride`` consecutive offsets and
    checks the rest of the stretch against the recording it found.
    """

    window = 16
    stride = 64
    min_peak = 64
    """Near-silent windows are not indexed: zeros would match every recording."""
    agree = 0.5
    """A hit counts when this share of the stretch is sample-exact: the session's echo
    gate may have altered a few 10 ms blocks of it, and chance agrees on almost none."""

    def __init__(self, rate: int = 16000) -> None:
        self.rate = rate
        self.recordings: list[KnownSpeech] = []
        self._pcm: list[np.ndarray[Any, np.dtype[np.int16]]] = []
        self._keys: dict[bytes, tuple[int, int]] = {}

    def add(self, pcm: np.ndarray[Any, np.dtype[np.int16]], text: str, onset_s: float) -> None:
        """Index a recording (16-bit samples at :attr:`rate`) whose speech is ``text``."""
        from bargein.audio import last_audible

        index = len(self.recordings)
        words = spoken_words(text)
        end = last_audible(pcm.astype(np.float32) / 32768.0, self.rate) or len(pcm) / self.rate
        span = max(end - onset_s, 0.0)
        weights = np.cumsum([len(w) for w in words], dtype=np.float64)
        total = float(weights[-1]) if len(weights) else 1.0
        ends = tuple(onset_s + span * float(c) / total for c in weights)
        self.recordings.append(KnownSpeech(text, tuple(words), ends))
        self._pcm.append(pcm)
        for start in range(0, len(pcm) - self.window + 1, self.stride):
            block = pcm[start : start + self.window]
            if int(np.abs(block.astype(np.int32)).max()) >= self.min_peak:
                self._keys.setdefault(block.tobytes(), (index, start))

    def find(self, pcm: np.ndarray[Any, np.dtype[np.int16]]) -> tuple[int, int] | None:
        """Which recording ``pcm`` is part of, and where in it ``pcm[0]`` lies."""
        for i in range(min(self.stride, len(pcm) - self.window + 1)):
            hit = self._keys.get(pcm[i : i + self.window].tobytes())
            if hit is None:
                continue
            index, position = hit
            origin = position - i
            known = self._pcm[index]
            lo, hi = max(origin, 0), min(origin + len(pcm), len(known))
            same = np.count_nonzero(known[lo:hi] == pcm[lo - origin : hi - origin])
            if hi > lo and same >= self.agree * (hi - lo):
                return index, origin
        return None


class KnownSpeechRecognizer:
    """A streaming recogniser that knows the set's recordings.

    Once the audio of an utterance is found in the :class:`SpeechIndex`, each word is
    reported ``delay_s`` after the audio that ends it has been fed; the final words are
    every word heard by then. Sound that is not one of the recordings (noise, echo, two
    voices at once) gets no words, as a recogniser that hears no speech would say.
    """

    sample_rate = 16000

    def __init__(self, index: SpeechIndex, delay_s: float = RECOGNIZER_DELAY_S) -> None:
        self.index = index
        self.delay_s = delay_s
        self._fed = 0
        self._match: tuple[int, int] | None = None

    def start(self) -> None:
        self._fed = 0
        self._match = None

    def feed(self, audio: FloatAudio) -> Sequence[str]:
        scaled = np.rint(np.asarray(audio, dtype=np.float32).reshape(-1) * 32768.0)
        pcm = np.clip(scaled, -32768, 32767).astype(np.int16)
        if self._match is None and len(pcm):
            found = self.index.find(pcm)
            if found is not None:
                recording, origin = found
                self._match = (recording, origin - self._fed)
        self._fed += len(pcm)
        return self._words(self.delay_s)

    def finish(self) -> Sequence[str]:
        words = self._words(0.0)
        self.start()
        return words

    def _words(self, delay_s: float) -> list[str]:
        if self._match is None:
            return []
        recording, offset = self._match
        known = self.index.recordings[recording]
        heard_s = (self._fed + offset) / self.sample_rate
        return [
            w
            for w, end in zip(known.words, known.word_ends, strict=True)
            if end + delay_s <= heard_s
        ]


# -- the server ---------------------------------------------------------------------------


def _recordings(scenarios: Sequence[Scenario], rate: int) -> SpeechIndex:
    from bargein.audio import to_int16

    index = SpeechIndex(rate)
    seen: set[Path] = set()
    for scenario in scenarios:
        for event in scenario.events:
            if not event.text or event.audio_path in seen:
                continue
            seen.add(event.audio_path)
            # Exactly what the far end sends: float32 at the microphone's rate, then PCM.
            audio = np.asarray(event.load(rate), dtype=np.float32)
            index.add(to_int16(audio), event.text, event.onset_in_audio())
    return index


def agent_sentences(scenarios: Sequence[Scenario]) -> list[str]:
    """Every sentence the agent can say while playing the set (what the TTS stand-in holds)."""
    from bargein.transports.stack import DEFAULT_FALLBACK
    from bargein.transports.websocket import BENCH_FOLLOW_UP

    texts = {s.agent_text for s in scenarios} | {BENCH_FOLLOW_UP, DEFAULT_FALLBACK}
    return sorted({s for t in texts for s in reply_sentences(t)})


def _piper() -> TextToSpeech:
    from bargein.providers.piper import PiperTTS

    return PiperTTS.repeatable()


def build_stack(
    scenarios: Sequence[Scenario],
    *,
    recognizer: str = "known",
    tts_delay_s: tuple[float, float] = TTS_DELAY_S,
    recognizer_delay_s: float = RECOGNIZER_DELAY_S,
    tts: TextToSpeech | None = None,
    cache_dir: Path | None = None,
) -> AgentStack:
    """The load-test stack for a scenario set; ``tts`` replaces Piper (tests).

    With ``cache_dir``, Piper's audio for the set is kept there between servers.
    """
    from bargein.providers.scripted import ScriptedLLM
    from bargein.transports.stack import AgentStack
    from bargein.transports.websocket import BENCH_FOLLOW_UP, INPUT_RATE

    sentences = agent_sentences(scenarios)
    if tts is not None:
        delayed = DelayedTTS(prepare_speech(sentences, tts), tts.sample_rate, tts_delay_s)
    elif cache_dir is not None:
        delayed = DelayedTTS(*cached_speech(sentences, cache_dir, _piper), tts_delay_s)
    else:
        voice = _piper()
        delayed = DelayedTTS(prepare_speech(sentences, voice), voice.sample_rate, tts_delay_s)
    recognizer_factory: Callable[[], StreamingRecognizer]
    if recognizer == "known":
        index = _recordings(scenarios, INPUT_RATE)
        recognizer_factory = lambda: KnownSpeechRecognizer(index, recognizer_delay_s)  # noqa: E731
    elif recognizer == "pocketsphinx":
        from bargein.transports.stack import offloaded_recognizer

        recognizer_factory = offloaded_recognizer()  # as bargein serve runs it
    elif recognizer == "pocketsphinx-loop":
        from bargein.providers.pocketsphinx import PocketSphinxRecognizer

        recognizer_factory = PocketSphinxRecognizer
    else:
        raise ValueError(
            f"unknown recogniser {recognizer!r}: expected one of {', '.join(RECOGNIZERS)}"
        )
    return AgentStack(
        llm=ScriptedLLM([BENCH_FOLLOW_UP]),
        tts=delayed,
        recognizer_factory=recognizer_factory,
    )


def build_app(stack: AgentStack, lag: LagMonitor) -> Starlette:
    """The ordinary server application with the benchmark hook, plus ``/load``.

    While the app runs, ``lag`` watches its event loop, and the loop's default executor
    has :data:`WORKER_THREADS` threads.
    """
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from bargein.server import create_app

    app = create_app(stack, bench=True)
    tts = stack.tts

    async def load(request: Request) -> JSONResponse:
        body: dict[str, object] = dict(lag.report(reset="reset" in request.query_params))
        body["tts_unprepared"] = tts.unprepared if isinstance(tts, DelayedTTS) else None
        body["pid"] = os.getpid()
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    app.router.routes.insert(0, Route("/load", load))
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="load"))
        monitor = asyncio.create_task(lag.run())
        try:
            async with inner(app):
                yield
        finally:
            monitor.cancel()

    app.router.lifespan_context = lifespan
    return app


def load_app(set_dir: Path, recognizer: str, cache_dir: Path | None) -> Starlette:
    """The load server's app for a scenario set (what each worker process builds)."""
    from bargein.scenario import load_set

    scenarios, errors = load_set(set_dir)
    for error in errors:
        print(f"warning: {error}", file=sys.stderr)
    return build_app(
        build_stack(scenarios, recognizer=recognizer, cache_dir=cache_dir), LagMonitor()
    )


async def serve(app: Starlette, host: str, port: int) -> None:
    """Serve until stopped; print ``{"listening": URL, "pid": PID}`` once the port is open."""
    import uvicorn

    from bargein.server import uvicorn_config

    server = uvicorn.Server(uvicorn_config(app, host, port))
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        bound_host, bound_port = server.servers[0].sockets[0].getsockname()[:2]
        url = f"ws://{bound_host}:{bound_port}/ws"
        print(json.dumps({"listening": url, "pid": os.getpid()}), flush=True)
    await task


def serve_workers(
    set_dir: Path, recognizer: str, cache_dir: Path | None, host: str, port: int, workers: int
) -> int:
    """Serve from ``workers`` processes (:mod:`bargein.workers`); print one JSON line.

    The line also lists each worker's process and its own ``/load``, so that a benchmark
    reads every worker's event loop. The parent voices the set first, so that the
    workers find Piper's audio in the cache instead of all voicing it at once.
    """
    import functools

    from bargein.workers import listening_socket, run_workers

    if cache_dir is not None:
        from bargein.scenario import load_set

        cached_speech(agent_sentences(load_set(set_dir)[0]), cache_dir, _piper)
    sock = listening_socket(host, port)
    bound_host, bound_port = sock.getsockname()[:2]

    def started(infos: list[WorkerInfo]) -> None:
        said = {
            "listening": f"ws://{bound_host}:{bound_port}/ws",
            "pid": os.getpid(),
            "workers": [
                {
                    "pid": i.pid,
                    "ws": f"{i.own_address}/ws".replace("http://", "ws://", 1),
                    "load": f"{i.own_address}/load",
                }
                for i in infos
            ],
        }
        print(json.dumps(said), flush=True)

    try:
        return run_workers(
            functools.partial(load_app, set_dir, recognizer, cache_dir),
            sock,
            workers,
            own_addresses=True,
            on_started=started,
        )
    finally:
        sock.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bargein.bench.load_server", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--set", dest="set_dir", required=True, help="the scenario set")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--recognizer", choices=RECOGNIZERS, default="known")
    parser.add_argument(
        "--workers", type=int, default=1, help="server processes sharing the port (default 1)"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("BARGEIN_CACHE", ".cache")) / "load",
        help="where Piper's audio for the set is kept between runs",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")
    if args.workers > 1:
        return serve_workers(
            Path(args.set_dir), args.recognizer, args.cache, args.host, args.port, args.workers
        )
    app = load_app(Path(args.set_dir), args.recognizer, args.cache)
    asyncio.run(serve(app, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
