"""Streaming recognisers in worker processes, off the event loop that the sessions share.

Why a process: every session of a server (and every scenario of ``bargein bench --jobs``)
runs its audio on one event loop, and PocketSphinx decodes in C *with the interpreter
lock held*. On the loop it costs about 0.3 of a core per speaking user, and its search
at each utterance's end (a tenth of a second alone, more than half a second on a busy
machine) holds every other session's microphone frames, VAD and tier-2 timers meanwhile
(BENCHMARKS.md, "The event loop's stalls on a loaded machine"). In a worker thread it
would still hold the lock; in another process it holds nothing of ours.

How it works:

* :class:`RecognizerProcesses` keeps a few worker processes. Each hosts the streams of
  several sessions, and a stream stays in the worker that opened it: its decoder's
  state (the utterance so far, the adapted cepstral mean) lives there.
* A stream (:class:`OffloadedRecognizer`) is a :class:`StreamingRecognizer`. ``start``,
  ``feed`` and ``reset`` send a message and return at once; ``feed`` returns the newest
  words the worker has sent back for the current utterance, so partial words arrive a
  frame or two after their audio. ``finish_later`` closes the utterance and returns
  work that waits for the final words, which the session runs off the loop;
  ``finish`` waits itself.
* Audio crosses as the float32 samples the session has, so a stream decodes exactly
  what the recogniser would decode in-process.
* A thread per worker reads its replies, and another writes the streams' messages, so
  a call never waits on the socket: a worker that has fallen behind (a busy machine)
  would otherwise hold the loop once the socket's buffer, a second or two of audio, is
  full. Audio queued for one stream is sent as one message, so a worker catches up.
  A worker more than :data:`MAX_BEHIND_S` of audio behind is given up as failed.

Failures: an error inside the worker comes back with the stream's next call as a
:class:`ProviderError` (the session records it and goes on without words). A worker that
dies fails the utterances it was decoding the same way; a new worker takes its place in
the background, and its streams move to a live worker at their next ``start`` (their
recogniser starts afresh there, as for a new caller). A stream dropped without
:meth:`OffloadedRecognizer.close` is closed when it is garbage-collected, so a server's
finished calls do not leave decoders behind.

The factory is sent to the workers by pickling (they are started with ``spawn``: model
thread pools do not survive a fork), so it must be a module-level callable, such as a
recogniser class, or a :func:`functools.partial` of one.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from bargein.providers.base import FloatAudio, ProviderError, StreamingRecognizer, start_afresh

__all__ = ["OffloadedRecognizer", "RecognizerProcesses"]

START_TIMEOUT_S = 60.0
"""How long a worker may take to import its recogniser and build the first one."""
FINAL_TIMEOUT_S = 5.0
"""How long the final words of an utterance may take before the wait gives up."""
RESTARTS_PER_MINUTE = 5
"""How many failed workers are replaced in the background in any minute."""
MAX_BEHIND_S = 30.0
"""How much audio, summed over its streams, may wait to be sent to a worker before it
counts as failed: words that late are of no use to a live call."""

_Message = tuple[Any, ...]


class RecognizerProcesses:
    """Worker processes that run one kind of streaming recogniser for many sessions.

    ``factory`` builds one recogniser (one stream's worth of state) inside a worker.
    :meth:`stream` gives a session its own stream, on the worker with the fewest.
    Use as a context manager, or call :meth:`close`; the workers also end with this
    process.

    A worker that fails is replaced in the background (up to :data:`RESTARTS_PER_MINUTE`
    times a minute for the lot, so a recogniser that crashes on start does not keep a
    core busy), and its streams move to a live worker at their next utterance.
    """

    def __init__(self, factory: Callable[[], StreamingRecognizer], processes: int = 1) -> None:
        if processes < 1:
            raise ValueError(f"need at least one recogniser process, got {processes}")
        self._factory = factory
        self._size = processes
        self._workers: list[_Worker] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._closed = False
        self._restarts: list[float] = []

    def start(self) -> RecognizerProcesses:
        """Start every worker now (each takes a second or so) rather than at the first
        streams; raises :class:`ProviderError` if one cannot build its recogniser."""
        with self._lock:
            self._fill()
        return self

    def stream(self) -> OffloadedRecognizer:
        """A new stream for one session, on the least busy live worker (started now,
        which takes a second or so, if there is none)."""
        with self._lock:
            worker = self._live_worker()
            if worker is None:
                self._fill()
                worker = min(self._workers, key=lambda w: len(w.streams))
            return OffloadedRecognizer(worker, next(self._ids), self)

    def close(self) -> None:
        """Stop the workers; their streams fail from now on."""
        with self._lock:
            self._closed = True
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.stop()

    @property
    def pids(self) -> list[int]:
        """The live workers' process ids (for tests and the curious)."""
        return [w.process.pid for w in self._workers if w.failure is None]

    def __enter__(self) -> RecognizerProcesses:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _live_worker(self) -> _Worker | None:
        """The live worker with the fewest streams, if any (call with the lock held)."""
        self._workers = [w for w in self._workers if w.failure is None]
        if self._closed or not self._workers:
            return None
        return min(self._workers, key=lambda w: len(w.streams))

    def _move(self) -> _Worker | None:
        """A live worker for a stream whose own worker has failed."""
        with self._lock:
            return self._live_worker()

    def _fill(self) -> None:
        if self._closed:
            raise ProviderError("the recogniser processes are closed")
        self._workers = [w for w in self._workers if w.failure is None]
        # All at once: each takes a second or so to import and load.
        launched = [_Worker.launch(self._factory) for _ in range(self._size - len(self._workers))]
        failure: ProviderError | None = None
        for process, sock, conn in launched:
            try:
                self._workers.append(self._adopt(_Worker.ready(process, sock, conn)))
            except ProviderError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def _adopt(self, worker: _Worker) -> _Worker:
        worker.on_failure = self._replace
        return worker

    def _replace(self) -> None:
        """Start a worker in place of one that failed, off the caller's thread (it may
        be the event loop's)."""
        now = time.monotonic()
        with self._lock:
            if self._closed:
                return
            self._restarts = [t for t in self._restarts if now - t < 60.0]
            if len(self._restarts) >= RESTARTS_PER_MINUTE:
                return  # the next stream() with no live worker tries, and says why
            self._restarts.append(now)
        threading.Thread(
            target=self._restart, name="bargein-recognizer-restart", daemon=True
        ).start()

    def _restart(self) -> None:
        try:
            worker = self._adopt(_Worker.ready(*_Worker.launch(self._factory)))
        except (ProviderError, OSError):
            return  # as above: the next stream() with no live worker says why
        with self._lock:
            self._workers = [w for w in self._workers if w.failure is None]
            if not self._closed and len(self._workers) < self._size:
                self._workers.append(worker)
                return
        worker.on_failure = None  # not wanted: no one to replace it
        worker.stop()


class OffloadedRecognizer:
    """One session's stream on a recogniser worker (see the module's notes)."""

    def __init__(self, worker: _Worker, stream_id: int, processes: RecognizerProcesses) -> None:
        self.sample_rate = worker.sample_rate
        self._processes = processes
        self._id = stream_id
        self._utterance = 0
        self._open = False
        self._words: tuple[str, ...] = ()
        self._finals: dict[int, Future[tuple[str, ...]]] = {}
        self._error: str | None = None
        self._join(worker)

    def _join(self, worker: _Worker) -> None:
        self._worker = worker
        worker.streams[self._id] = self
        worker.send(("open", self._id, 0))
        self._closer = weakref.finalize(self, worker.forget, self._id)

    def start(self) -> None:
        """Begin a new utterance, discarding one that is still open. A stream whose
        worker has failed moves to a live one here, and starts afresh there (as for a
        new caller)."""
        if self._worker.failure is not None:
            worker = self._processes._move()
            if worker is not None:
                self._closer.detach()
                self._worker.streams.pop(self._id, None)
                self._error = None
                self._join(worker)
        self._check_alive()
        self._utterance += 1
        self._open, self._words = True, ()
        self._send("start")
        self._report()

    def feed(self, audio: FloatAudio) -> Sequence[str]:
        """Send more audio; return the newest words back from the worker."""
        self._check_alive()
        if not self._open:
            raise RuntimeError("OffloadedRecognizer.feed() called before start()")
        samples = np.asarray(audio, dtype=np.float32).reshape(-1)
        if samples.size:
            self._send("feed", samples.tobytes())
        self._report()
        return self._words

    def finish_later(self) -> Callable[[], Sequence[str]]:
        """Close the utterance now; the returned work waits for its final words.
        (A failure in the worker since the last call is told at the next one.)"""
        self._check_alive()
        if not self._open:
            raise RuntimeError("OffloadedRecognizer.finish() called before start()")
        self._open = False
        final: Future[tuple[str, ...]] = Future()
        self._finals[self._utterance] = final
        self._send("finish")
        failure = self._worker.failure
        if failure is not None:  # gone meanwhile: its reader may have missed this one
            _settle(final, ProviderError(failure))

        def wait() -> Sequence[str]:
            try:
                return final.result(FINAL_TIMEOUT_S)
            except FutureTimeout:
                raise ProviderError(
                    f"the recogniser process sent no final words within {FINAL_TIMEOUT_S:g} s"
                ) from None

        return wait

    def finish(self) -> Sequence[str]:
        """Close the utterance and wait for its final words."""
        return self.finish_later()()

    def reset(self) -> None:
        """Forget what earlier utterances taught the recogniser, as for a new caller."""
        self._check_alive()
        self._open, self._words = False, ()
        self._send("reset")
        self._report()

    def close(self) -> None:
        """Free the stream's recogniser in its worker."""
        self._closer()

    @property
    def pid(self) -> int:
        """The process id of the worker that decodes this stream."""
        return self._worker.process.pid

    # -- from the worker's reader thread ------------------------------------------------

    def _receive(self, message: _Message) -> None:
        kind, utterance = message[0], message[2]
        if kind == "words":
            if utterance == self._utterance:
                self._words = message[3]
        elif kind == "final":
            final = self._finals.pop(utterance, None)
            if final is not None:
                _settle(final, message[3])
        elif kind == "error":
            if message[4] == "finish":  # the final words themselves failed
                final = self._finals.pop(utterance, None)
                if final is not None:
                    _settle(final, ProviderError(f"in the recogniser process: {message[3]}"))
                    return
            self._error = message[3]

    def _lost(self, why: str) -> None:
        finals, self._finals = self._finals, {}
        for final in finals.values():
            _settle(final, ProviderError(why))

    # -- helpers --------------------------------------------------------------------------

    def _check_alive(self) -> None:
        """Raise, on every call, if the worker can serve no more."""
        failure = self._worker.failure
        if failure is not None:
            raise ProviderError(failure)

    def _report(self) -> None:
        """Raise, once, a failure in the worker since the last call. Called after the
        call's own message is sent, so one bad frame does not cost the next step too."""
        error, self._error = self._error, None
        if error is not None:
            raise ProviderError(f"in the recogniser process: {error}")

    def _send(self, kind: str, *payload: object) -> None:
        self._worker.send((kind, self._id, self._utterance, *payload))


def _settle(future: Future[tuple[str, ...]], outcome: tuple[str, ...] | Exception) -> None:
    """Complete ``future`` unless it already is (the reader thread and a closing caller
    may both try)."""
    try:
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except InvalidStateError:
        pass


@dataclass(eq=False)
class _Worker:
    """One worker process, its socket, and the two threads that write to it and read
    what it sends back."""

    process: subprocess.Popen[bytes]
    sock: socket.socket
    conn: Connection
    sample_rate: int
    streams: weakref.WeakValueDictionary[int, OffloadedRecognizer] = field(
        default_factory=weakref.WeakValueDictionary
    )
    """The worker's streams, held weakly: a session's end (its stream collected) closes
    the stream's recogniser in the worker."""
    failure: str | None = None
    """Why the worker can serve no more (None while it can)."""
    on_failure: Callable[[], None] | None = None
    """Told once, from whichever thread finds the failure."""
    _outbox: list[_Message] = field(default_factory=list)
    _queued: int = 0
    """Bytes of audio in the outbox."""
    _wake: threading.Condition = field(default_factory=threading.Condition)
    _writer: threading.Thread | None = None

    @staticmethod
    def launch(
        factory: Callable[[], StreamingRecognizer],
    ) -> tuple[subprocess.Popen[bytes], socket.socket, Connection]:
        """Start a worker's process and hand it the factory; :meth:`ready` waits for it."""
        ours, theirs = socket.socketpair()
        process = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            # A session of its own is, where the kernel groups tasks by session
            # (autogroup, on by default in most distributions), a CPU share of its own:
            # the few threads that decode the words are not one among the many of the
            # server's models. On two busy cores that halved the wait for final words
            # (p90 1.0 s -> 0.4 s; BENCHMARKS.md). It also keeps a terminal's Ctrl-C to
            # the server, which ends the workers by closing their socket.
            start_new_session=True,
        )
        theirs.close()
        # The connection has a descriptor of its own, so that shutting the socket down
        # (which wakes both threads) and closing it are separate steps.
        conn = Connection(os.dup(ours.fileno()))
        try:
            conn.send(list(sys.path))  # first: the factory's module may need it
            conn.send(factory)
        except OSError:
            pass  # it died already: ready() says how
        return process, ours, conn

    @classmethod
    def ready(
        cls, process: subprocess.Popen[bytes], sock: socket.socket, conn: Connection
    ) -> _Worker:
        """The launched worker, once it has built its first recogniser."""
        try:
            if not conn.poll(START_TIMEOUT_S):
                raise ProviderError(
                    f"the recogniser process did not start within {START_TIMEOUT_S:g} s"
                )
            kind, _, _, detail = conn.recv()
        except (EOFError, OSError):
            kind, detail = "failed", f"it exited with code {process.wait(5.0)}"
        except BaseException:
            process.kill()
            conn.close()
            sock.close()
            raise
        if kind != "ready":
            process.wait(5.0)
            conn.close()
            sock.close()
            raise ProviderError(f"could not start the recogniser process: {detail}")
        worker = cls(process, sock, conn, int(detail))
        worker._writer = threading.Thread(
            target=worker._write, name="bargein-recognizer-sender", daemon=True
        )
        worker._writer.start()
        reader = threading.Thread(
            target=worker._read, name="bargein-recognizer-replies", daemon=True
        )
        reader.start()
        return worker

    def send(self, message: _Message) -> None:
        """Queue ``message`` for the writer thread; never waits on the socket."""
        with self._wake:
            if self.failure is not None:
                return  # the streams say so at their next call
            self._outbox.append(message)
            if message[0] == "feed":
                self._queued += len(message[3])
            self._wake.notify()
            behind_s = self._queued / (4 * self.sample_rate)
        if behind_s > MAX_BEHIND_S:
            self._fail(
                f"the recogniser process fell behind by more than {MAX_BEHIND_S:g} s of audio"
            )

    def forget(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        self.send(("close", stream_id, 0))

    def stop(self) -> None:
        self._fail("the recogniser processes are closed")
        try:
            self.process.wait(5.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5.0)

    def _write(self) -> None:
        while True:
            with self._wake:
                while not self._outbox and self.failure is None:
                    self._wake.wait()
                if self.failure is not None:
                    return
                batch, self._outbox, self._queued = self._outbox, [], 0
            try:
                for message in _merged(batch):
                    self.conn.send(message)
            except (OSError, ValueError) as exc:  # a broken pipe, or shut down here
                self._fail(f"the recogniser process is gone ({type(exc).__name__}: {exc})")
                return

    def _read(self) -> None:
        try:
            while True:
                message = self.conn.recv()
                stream = self.streams.get(message[1])
                if stream is not None:
                    stream._receive(message)
        except (EOFError, OSError):
            pass
        try:
            code: int | None = self.process.wait(1.0)
        except subprocess.TimeoutExpired:
            code = None
        self._fail(f"the recogniser process exited (code {code})")
        # The last user of the socket closes it, once the writer has let go.
        if self._writer is not None:
            self._writer.join()
        self.conn.close()
        self.sock.close()

    def _fail(self, why: str) -> None:
        with self._wake:
            if self.failure is not None:
                return
            self.failure = why
            self._outbox, self._queued = [], 0
            self._wake.notify()
        for stream in list(self.streams.values()):
            stream._lost(why)
        if self.on_failure is not None:
            self.on_failure()
        # Wakes the writer (blocked on a full socket) and the reader here, and the
        # worker reads the end of its input and leaves.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


def _merged(batch: list[_Message]) -> list[_Message]:
    """``batch`` with each stream's consecutive audio joined into one message: a worker
    that has fallen behind catches up with one decode step and one reply per stream."""
    out: list[tuple[_Message, list[bytes]]] = []
    runs: dict[int, list[bytes]] = {}
    for message in batch:
        kind, stream_id = message[0], message[1]
        if kind == "feed":
            run = runs.get(stream_id)
            if run is not None:
                run.append(message[3])
                continue
            runs[stream_id] = run = [message[3]]
            out.append((message, run))
        else:
            runs.pop(stream_id, None)  # a start, finish or close ends the stream's run
            out.append((message, []))
    return [(*m[:3], b"".join(run)) if run else m for m, run in out]


_CHILD = "import sys; from bargein.providers.offloaded import serve; serve(int(sys.argv[1]))"
"""The worker's whole program. A fresh interpreter, not ``multiprocessing``: that would
import the parent's main script again, which a user's script need not be ready for."""


def serve(fd: int) -> None:
    """A worker's main: recognisers by stream id, one message at a time, on the socket
    ``fd``, until told to stop or until the parent's end closes (the parent is gone).

    The parent sends its import path and the factory first, then the streams' calls."""
    conn = Connection(fd)
    try:
        sys.path[:] = conn.recv()
        factory = conn.recv()
    except Exception as exc:  # a factory that does not unpickle here
        conn.send(("failed", 0, 0, f"{type(exc).__name__}: {exc}"))
        return
    try:
        spare: StreamingRecognizer | None = factory()
    except Exception as exc:
        conn.send(("failed", 0, 0, f"{type(exc).__name__}: {exc}"))
        return
    assert spare is not None
    conn.send(("ready", 0, 0, spare.sample_rate))
    streams: dict[int, StreamingRecognizer] = {}
    sent: dict[int, tuple[str, ...]] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        kind, stream_id, utterance = message[:3]
        try:
            if kind == "open":
                streams[stream_id] = spare if spare is not None else factory()
                spare = None
                continue
            if kind == "close":
                streams.pop(stream_id, None)
                sent.pop(stream_id, None)
                continue
            recognizer = streams.get(stream_id)
            if recognizer is None:
                continue  # its opening failed, and said so
            if kind == "start":
                recognizer.start()
                sent[stream_id] = ()
            elif kind == "feed":
                audio = np.frombuffer(message[3], dtype=np.float32)
                words = _words(recognizer.feed(audio))
                if words != sent.get(stream_id):
                    sent[stream_id] = words
                    conn.send(("words", stream_id, utterance, words))
            elif kind == "finish":
                conn.send(("final", stream_id, utterance, _words(recognizer.finish())))
            elif kind == "reset":
                start_afresh(recognizer)
        except (EOFError, OSError):
            return
        except Exception as exc:
            conn.send(("error", stream_id, utterance, f"{type(exc).__name__}: {exc}", kind))


def _words(words: Sequence[str]) -> tuple[str, ...]:
    """``words`` as a tuple to send, keeping a tuple's own kind (a closed-set reader's
    :class:`~bargein.providers.base.ChosenWords` or :class:`~bargein.providers.base.TooClose`
    tells tier 2 how the words were heard)."""
    return words if isinstance(words, tuple) else tuple(words)
