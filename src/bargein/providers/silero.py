"""Silero voice-activity detection on onnxruntime, one 32 ms frame at a time.

Why this shape:

* The barge-in decision runs on every microphone frame, so the VAD must be cheap and
  streaming. Silero is a small conv + LSTM network (about 0.1 ms of CPU per frame)
  whose LSTM state carries what it has heard so far; we keep that state (``h``, ``c``)
  between calls instead of re-scoring a window, which is what makes it incremental.
  It matters: scored without the carried state, the mean probability over synthetic
  speech drops from about 0.7 to under 0.4.
* The network also looks at the last 64 samples of the previous frame (its STFT window
  overlaps the frame boundary), so each call feeds ``64 + 512 = 576`` samples, as the
  model was trained. On clean speech the context changes the scores only slightly.
* The graph shipped by ``faster_whisper`` (``assets/silero_vad_v6.onnx``) is used by
  default because it is already installed with the project: no model download. We only
  locate that file with :func:`importlib.util.find_spec`; importing ``faster_whisper``
  itself would pull in CTranslate2 and PyAV for nothing. In that graph the first input
  dimension is the *sequence* the LSTM runs over (faster-whisper feeds a whole clip as
  one batch of frames), so a single frame is a ``[1, 576]`` input and frame-by-frame
  streaming with carried state gives exactly the batched result.
* onnxruntime is pinned to one intra-op and one inter-op thread: the model is far too
  small to gain from parallelism, and extra threads would compete with the TTS, the
  recogniser and the event loop running at the same time.
* The graph is loaded once per model file and shared: a server gives every session its
  own :class:`SileroVAD`, and the state that belongs to one audio stream (``h``, ``c``,
  the context samples) lives in the instance, never in the ``InferenceSession``, whose
  ``run`` is safe to call from several threads. A session of its own per stream cost
  about 1.5 MB and 8 ms each, for nothing.
* A second cut (``second_cut=True``, the default). On a short, sharp sound Silero's
  score depends on where the 512-sample frames fall: the same door knock scored at most
  0.07 cut at one offset and 0.95, twelve frames over 0.5, cut 192 samples later. Where a
  stream's frames fall is chance (when the microphone started), so a knock could stop
  the agent in one call and not in the next. A second state scores the same stream cut
  half a frame earlier, and :meth:`SileroVAD.probability_two_cuts` returns both scores:
  speech is voice at both cuts, most knocks at one at most. The first cut's score is
  the VAD's as before; what the second is for is the policy's to say (a sound only one
  cut voiced does not commit on its own, ``bargein.policy``). It costs a second run of
  the network, about 0.06 ms per frame.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from bargein.providers.base import FloatAudio, ProviderError

__all__ = ["SileroVAD", "default_model_path"]

_DEFAULT_MODEL_NAME = "silero_vad_v6.onnx"
_REQUIRED_INPUTS = frozenset({"input", "h", "c"})


def default_model_path() -> Path:
    """Path of the Silero VAD graph shipped inside the ``faster_whisper`` package.

    Uses the import system's finder only, so ``faster_whisper`` is not imported.
    Raises :class:`ProviderError` if the package is not installed.
    """
    spec = importlib.util.find_spec("faster_whisper")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ProviderError(
            "faster_whisper is not installed, so its bundled Silero VAD model "
            f"({_DEFAULT_MODEL_NAME}) is unavailable; pass model_path= explicitly"
        )
    candidates = [Path(location) / "assets" / _DEFAULT_MODEL_NAME for location in locations]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return candidates[0]  # does not exist; the caller reports it by name


def _static_dim(dim: object, default: int) -> int:
    return dim if isinstance(dim, int) and dim > 0 else default


_SESSIONS: dict[tuple[Path, int, int], ort.InferenceSession] = {}
_SESSIONS_LOCK = threading.Lock()


def _shared_session(path: Path) -> ort.InferenceSession:
    """The one ``InferenceSession`` of the graph at ``path`` (loaded again if the file changed)."""
    stat = path.stat()
    key = (path.resolve(), stat.st_mtime_ns, stat.st_size)
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(key)
        if session is not None:
            return session
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors and fatal only
        try:
            session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise ProviderError(f"could not load Silero VAD model {path}: {exc}") from exc
        _SESSIONS[key] = session
        return session


@dataclass
class _Cut:
    """One cut's state: the LSTM's ``h`` and ``c`` and the samples before its next frame."""

    h: npt.NDArray[np.float32]
    c: npt.NDArray[np.float32]
    context: npt.NDArray[np.float32]


class SileroVAD:
    """Streaming Silero VAD: ``probability`` scores one 512-sample frame at 16 kHz.

    One instance serves one audio stream; call :meth:`reset` before a new one. Instances
    of the same model file share its loaded graph, so one per stream costs only its state.
    With ``second_cut`` (the default) it also scores the stream cut half a frame earlier
    (:meth:`probability_two_cuts`; the module's docstring says why).
    """

    sample_rate: int = 16000
    frame_samples: int = 512

    def __init__(self, model_path: str | Path | None = None, *, second_cut: bool = True) -> None:
        self.second_cut = second_cut
        path = Path(model_path).expanduser() if model_path is not None else default_model_path()
        if not path.is_file():
            raise ProviderError(f"Silero VAD model not found: {path}")
        self.model_path = path
        self._session = _shared_session(path)

        inputs = {node.name: node for node in self._session.get_inputs()}
        if not inputs.keys() >= _REQUIRED_INPUTS:
            raise ProviderError(
                f"{path} does not look like a Silero VAD graph with inputs "
                f"'input', 'h', 'c' (found: {', '.join(sorted(inputs))})"
            )
        window = _static_dim(inputs["input"].shape[-1], self.frame_samples + 64)
        self._context_samples = max(window - self.frame_samples, 0)
        state_shape = inputs["h"].shape
        static_state = all(isinstance(dim, int) and dim > 0 for dim in state_shape)
        self._state_shape: tuple[int, ...] = tuple(state_shape) if static_state else (1, 1, 128)
        self._cuts: list[_Cut] = []
        self._half = np.zeros(0, dtype=np.float32)
        self.reset()

    def _new_cut(self) -> _Cut:
        zeros = np.zeros(self._state_shape, dtype=np.float32)
        return _Cut(zeros, zeros.copy(), np.zeros(self._context_samples, dtype=np.float32))

    def reset(self) -> None:
        """Forget the LSTM state and the audio context: the next frame starts a stream."""
        self._cuts = [self._new_cut() for _ in range(2 if self.second_cut else 1)]
        self._half = np.zeros(self.frame_samples // 2, dtype=np.float32)

    def probability(self, frame: FloatAudio) -> float:
        """Speech probability of exactly :attr:`frame_samples` new samples.

        ``frame`` is mono float audio in [-1, 1] at :attr:`sample_rate`.
        """
        return self.probability_two_cuts(frame)[0]

    def probability_two_cuts(self, frame: FloatAudio) -> tuple[float, float | None]:
        """The frame's speech probability, and that of the frame cut half a frame earlier.

        The second frame ends half a frame back, so no audio is waited for; it is None
        without ``second_cut``.
        """
        samples = np.asarray(frame, dtype=np.float32)
        if samples.shape != (self.frame_samples,):
            raise ValueError(
                f"SileroVAD expects frames of exactly {self.frame_samples} samples "
                f"({self.sample_rate} Hz mono), got an array of shape {samples.shape}"
            )
        own = self._step(self._cuts[0], samples)
        if not self.second_cut:
            return own, None
        half = self.frame_samples // 2
        shifted = np.concatenate((self._half, samples[:half]))
        self._half = samples[half:].copy()
        return own, self._step(self._cuts[1], shifted)

    def _step(self, cut: _Cut, samples: npt.NDArray[np.float32]) -> float:
        window = np.concatenate((cut.context, samples))[np.newaxis, :]
        speech_probs, h, c = self._session.run(None, {"input": window, "h": cut.h, "c": cut.c})
        cut.h = np.asarray(h, dtype=np.float32)
        cut.c = np.asarray(c, dtype=np.float32)
        if self._context_samples:
            cut.context = samples[-self._context_samples :].copy()
        return float(np.asarray(speech_probs).reshape(-1)[0])

    def probabilities(self, audio: FloatAudio, *, reset: bool = True) -> npt.NDArray[np.float32]:
        """Score a whole clip frame by frame; one probability per frame.

        The trailing partial frame is zero-padded. With ``reset`` (the default) the clip
        is scored as a new stream; otherwise it continues the current one.
        """
        samples = np.asarray(audio, dtype=np.float32).reshape(-1)
        if reset:
            self.reset()
        n_frames = -(-samples.size // self.frame_samples)
        padded = np.zeros(n_frames * self.frame_samples, dtype=np.float32)
        padded[: samples.size] = samples
        frames = padded.reshape(n_frames, self.frame_samples)
        return np.array([self.probability(frame) for frame in frames], dtype=np.float32)
