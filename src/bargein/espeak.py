"""A minimal ctypes binding to libespeak-ng, as shipped by the ``espeakng-loader`` package.

Why this exists: the built-in scenario set needs user voices that do not all sound like the
single Piper voice we ship, and eSpeak NG offers dozens of cheap, fully local voice variants
(male, female, British, American) with adjustable rate and pitch. ``espeakng-loader`` bundles
the shared library and its data but no Python API, so we drive the C API directly. Only the
handful of calls needed for offline synthesis into memory are bound.

eSpeak NG keeps global state inside the library, so there is one engine per process
(:func:`get_engine`), and every call goes through a lock.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from typing import Final

import numpy as np

__all__ = ["Espeak", "EspeakError", "SpeakRequest", "get_engine", "synthesize_batch"]

# Values from espeak-ng's public header ``speak_lib.h``.
_AUDIO_OUTPUT_SYNCHRONOUS: Final = 2
_INITIALIZE_DONT_EXIT: Final = 0x8000  # return an error instead of calling exit()
_POS_CHARACTER: Final = 1
_CHARS_UTF8: Final = 1
_EE_OK: Final = 0
_PARAM_RATE: Final = 1
_PARAM_VOLUME: Final = 2
_PARAM_PITCH: Final = 3
_PARAM_RANGE: Final = 4

# int callback(short *wav, int numsamples, espeak_EVENT *events); returning 0 means "go on".
_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)

# The library's random generator drives a little jitter in some voices; fixing it keeps the
# generated scenario set byte-for-byte reproducible.
_RAND_SEED: Final = 20240501


class EspeakError(RuntimeError):
    """libespeak-ng could not be loaded, initialised, or asked to speak."""


@dataclass(frozen=True)
class _Paths:
    library: str
    data: str


def _default_paths() -> _Paths:
    try:
        import espeakng_loader
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise EspeakError(
            "the 'espeakng-loader' package is not installed; it ships libespeak-ng and its data"
        ) from exc
    try:
        return _Paths(
            library=str(espeakng_loader.get_library_path()),
            data=str(espeakng_loader.get_data_path()),
        )
    except RuntimeError as exc:
        raise EspeakError(f"espeakng-loader is installed but incomplete: {exc}") from exc


class Espeak:
    """One initialised libespeak-ng that synthesises text into float32 arrays in memory."""

    def __init__(self, library_path: str | None = None, data_path: str | None = None) -> None:
        """Load the library and initialise it for synchronous, in-memory output.

        Paths default to the copies shipped by ``espeakng-loader``. Raises :class:`EspeakError`
        with the path involved when the library cannot be loaded or refuses to initialise, so a
        broken install is reported plainly instead of as a crash deep inside ctypes.
        """
        if library_path is None or data_path is None:
            defaults = _default_paths()
            library_path = library_path if library_path is not None else defaults.library
            data_path = data_path if data_path is not None else defaults.data
        lib_path, dat_path = library_path, data_path
        try:
            lib = ctypes.CDLL(lib_path)
        except OSError as exc:
            raise EspeakError(f"cannot load libespeak-ng from {lib_path!r}: {exc}") from exc
        self._lib = lib
        self._lock = threading.Lock()
        self._chunks: list[np.ndarray] = []

        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int
        self._has_seed = hasattr(lib, "espeak_ng_SetRandSeed")
        if self._has_seed:
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
            lib.espeak_ng_SetRandSeed.restype = None

        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, dat_path.encode(), _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise EspeakError(
                f"libespeak-ng at {lib_path!r} failed to initialise with data {dat_path!r} "
                f"(returned {rate})"
            )
        self.sample_rate: int = int(rate)
        # Keep a reference: ctypes does not, and a collected callback would crash the library.
        self._callback = _SynthCallback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(
        self,
        wav: ctypes._Pointer[ctypes.c_short],
        num_samples: int,
        _events: int | None,
    ) -> int:
        if num_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    def synthesize(
        self,
        text: str,
        voice: str = "en-us",
        *,
        rate_wpm: int = 175,
        pitch: int = 50,
        pitch_range: int = 50,
        volume: int = 100,
    ) -> np.ndarray:
        """Speak ``text`` with ``voice`` (e.g. ``"en-gb+f4"``) and return float32 mono samples.

        The result is at :attr:`sample_rate`. ``pitch`` and ``pitch_range`` are eSpeak's 0-100
        scales (50 is the voice's normal), ``rate_wpm`` is words per minute (80-450) and
        ``volume`` is 0-200 with 100 normal. Parameters are set after the voice because
        selecting a voice may reset them.
        """
        with self._lock:
            lib = self._lib
            if lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise EspeakError(f"eSpeak NG does not know the voice {voice!r}")
            for param, value in (
                (_PARAM_RATE, rate_wpm),
                (_PARAM_PITCH, pitch),
                (_PARAM_RANGE, pitch_range),
                (_PARAM_VOLUME, volume),
            ):
                if lib.espeak_SetParameter(param, int(value), 0) != _EE_OK:
                    raise EspeakError(f"eSpeak NG refused parameter {param} = {value}")
            if self._has_seed:
                lib.espeak_ng_SetRandSeed(_RAND_SEED)
            data = text.encode("utf-8") + b"\0"
            buf = ctypes.create_string_buffer(data, len(data))
            self._chunks = []
            status = lib.espeak_Synth(buf, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
            if status != _EE_OK:
                raise EspeakError(f"eSpeak NG failed to speak {text!r} (status {status})")
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        pcm = np.concatenate(chunks)
        return (pcm.astype(np.float32) / 32768.0).astype(np.float32)


_engine: Espeak | None = None
_engine_lock = threading.Lock()


def get_engine() -> Espeak:
    """Return the process-wide engine, initialising it on first use.

    The library cannot be usefully initialised twice in one process, hence a shared instance.
    """
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = Espeak()
        return _engine


@dataclass(frozen=True)
class SpeakRequest:
    """One utterance for :func:`synthesize_batch` (picklable, so it can cross processes)."""

    text: str
    voice: str = "en-us"
    rate_wpm: int = 175
    pitch: int = 50
    pitch_range: int = 50


def synthesize_batch(requests: list[SpeakRequest]) -> tuple[int, list[np.ndarray]]:
    """Speak each request in order with the process engine; return the rate and the clips.

    eSpeak NG carries synthesis state (pitch flutter phase, echo buffers, ...) from one
    utterance to the next, so the samples of a clip depend on everything spoken before it in
    the process. Callers that need reproducible output run this in a fresh process, where the
    same batch always produces the same samples.
    """
    engine = get_engine()
    clips = [
        engine.synthesize(
            r.text, r.voice, rate_wpm=r.rate_wpm, pitch=r.pitch, pitch_range=r.pitch_range
        )
        for r in requests
    ]
    return engine.sample_rate, clips
