"""Word error rate and latency of the final-transcript Whisper model on a scenario set.

Every event of the set that has spoken ``text`` is one clip (a clip used by several
scenarios counts once). Each clip goes through the default :class:`WhisperTranscriber`,
timed per clip after one warm-up call, and, for comparison, through the streaming
PocketSphinx recogniser fed 20 ms at a time as a live stream would be; its final words
are scored the same way. WER is pooled: all word errors over all reference words, so
long clips weigh more than "Okay."

    .venv/bin/python scripts/whisper_wer.py                 # built-in set, generated if missing
    .venv/bin/python scripts/whisper_wer.py SET_DIR --out wer.json --clips

For PocketSphinx the latency is that of ``finish()``, the wait after the turn has ended:
everything before it happened while the user was still talking.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bargein.cli import DEFAULT_SET_DIR
from bargein.providers.base import FloatAudio
from bargein.providers.pocketsphinx import PocketSphinxRecognizer
from bargein.providers.whisper import WhisperTranscriber
from bargein.scenario import load_set
from bargein.words import normalize_for_wer, word_edit_distance

RATE = 16000
FEED_SAMPLES = 320  # 20 ms, a typical telephony frame


@dataclass(frozen=True)
class Clip:
    name: str
    text: str
    audio: FloatAudio

    @property
    def duration_s(self) -> float:
        return self.audio.size / RATE


@dataclass(frozen=True)
class Heard:
    text: str
    errors: int
    latency_s: float
    processing_s: float


def load_clips(folder: Path) -> list[Clip]:
    scenarios, errors = load_set(folder)
    for error in errors:
        print(f"warning: {error}", file=sys.stderr)
    clips: dict[Path, Clip] = {}
    for scenario in scenarios:
        for event in scenario.events:
            if event.text.strip() and event.audio_path not in clips:
                audio = np.asarray(event.load(RATE), dtype=np.float32)
                clips[event.audio_path] = Clip(event.audio_path.stem, event.text, audio)
    return sorted(clips.values(), key=lambda clip: clip.name)


def score(reference: str, hypothesis: str, latency_s: float, processing_s: float) -> Heard:
    errors = word_edit_distance(normalize_for_wer(reference), normalize_for_wer(hypothesis))
    return Heard(hypothesis, errors, latency_s, processing_s)


def run_whisper(transcriber: WhisperTranscriber, clips: Sequence[Clip]) -> list[Heard]:
    transcriber.transcribe(clips[0].audio)  # warm-up: first-call allocations are not a turn
    heard = []
    for clip in clips:
        started = time.perf_counter()
        text = transcriber.transcribe(clip.audio)
        elapsed = time.perf_counter() - started
        heard.append(score(clip.text, text, elapsed, elapsed))
    return heard


def run_pocketsphinx(recognizer: PocketSphinxRecognizer, clips: Sequence[Clip]) -> list[Heard]:
    heard = []
    for clip in clips:
        started = time.perf_counter()
        recognizer.start()
        for offset in range(0, clip.audio.size, FEED_SAMPLES):
            recognizer.feed(clip.audio[offset : offset + FEED_SAMPLES])
        finishing = time.perf_counter()
        words = recognizer.finish()
        done = time.perf_counter()
        heard.append(score(clip.text, " ".join(words), done - finishing, done - started))
    return heard


def summarise(clips: Sequence[Clip], heard: Sequence[Heard]) -> dict[str, Any]:
    words = sum(len(normalize_for_wer(clip.text)) for clip in clips)
    errors = sum(h.errors for h in heard)
    latencies = np.array([h.latency_s for h in heard], dtype=np.float64)
    audio_s = sum(clip.duration_s for clip in clips)
    return {
        "wer": errors / words if words else 0.0,
        "word_errors": errors,
        "reference_words": words,
        "exact_clips": sum(h.errors == 0 for h in heard),
        "latency_s": {
            "p50": float(np.percentile(latencies, 50)),
            "p95": float(np.percentile(latencies, 95)),
            "max": float(latencies.max()),
            "mean": float(latencies.mean()),
        },
        "realtime_factor": sum(h.processing_s for h in heard) / audio_s,
    }


def print_report(result: dict[str, Any]) -> None:
    print(
        f"{result['clips']} clips, {result['audio_s']:.1f} s of user speech, "
        f"{result['reference_words']} words, from {result['set']}"
    )
    print(
        f"whisper: {result['config']['model']}, beam {result['config']['beam_size']}, "
        f"{result['config']['cpu_threads']} threads"
    )
    print()
    header = (
        f"{'recogniser':<14}{'WER':>7}{'errors':>9}{'exact':>8}{'p50 s':>8}{'p95 s':>8}{'RTF':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, label in (("whisper", "whisper base"), ("pocketsphinx", "pocketsphinx*")):
        s = result["systems"][name]
        print(
            f"{label:<14}{s['wer']:>7.1%}{s['word_errors']:>9}"
            f"{s['exact_clips']:>5}/{result['clips']:<2}"
            f"{s['latency_s']['p50']:>8.3f}{s['latency_s']['p95']:>8.3f}"
            f"{s['realtime_factor']:>7.3f}"
        )
    print("* PocketSphinx latency is finish() after streaming the clip; RTF counts all of it.")


def print_clips(result: dict[str, Any]) -> None:
    print()
    for clip in result["per_clip"]:
        print(f"{clip['name']}  ({clip['duration_s']:.2f} s)")
        print(f"    reference     {clip['text']}")
        for name in ("whisper", "pocketsphinx"):
            heard = clip[name]
            print(
                f"    {name:<13} {heard['text']!r}  "
                f"[{heard['errors']} errors, {heard['latency_s'] * 1000:.0f} ms]"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "set_dir",
        nargs="?",
        type=Path,
        help=f"scenario set folder (default: {DEFAULT_SET_DIR}, generated if missing)",
    )
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--model", help="Whisper model name or directory (default: packaged)")
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--threads", type=int, help="CPU threads for Whisper")
    parser.add_argument("--clips", action="store_true", help="print every clip's transcripts")
    args = parser.parse_args(argv)

    folder: Path = args.set_dir or DEFAULT_SET_DIR
    if args.set_dir is None:
        from bargein.builtin_set import generate_builtin_set

        generate_builtin_set(folder)  # instant when already up to date
    clips = load_clips(folder)
    if not clips:
        print(f"error: no events with spoken text in {folder}", file=sys.stderr)
        return 2

    transcriber = WhisperTranscriber(args.model, beam_size=args.beam_size, cpu_threads=args.threads)
    whisper_heard = run_whisper(transcriber, clips)
    sphinx_heard = run_pocketsphinx(PocketSphinxRecognizer(), clips)

    result: dict[str, Any] = {
        "set": str(folder),
        "clips": len(clips),
        "audio_s": sum(clip.duration_s for clip in clips),
        "reference_words": sum(len(normalize_for_wer(clip.text)) for clip in clips),
        "config": {
            "model": transcriber.model,
            "beam_size": transcriber.beam_size,
            "cpu_threads": transcriber.cpu_threads,
        },
        "systems": {
            "whisper": summarise(clips, whisper_heard),
            "pocketsphinx": summarise(clips, sphinx_heard),
        },
        "per_clip": [
            {
                "name": clip.name,
                "text": clip.text,
                "duration_s": clip.duration_s,
                **{
                    name: {"text": h.text, "errors": h.errors, "latency_s": h.latency_s}
                    for name, h in (("whisper", w), ("pocketsphinx", p))
                },
            }
            for clip, w, p in zip(clips, whisper_heard, sphinx_heard, strict=True)
        ],
    }
    print_report(result)
    if args.clips:
        print_clips(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
