"""Confusion of tier-2 word sources on a scenario set's short utterances.

For every backchannel, short command and noise event of a set, run the general
recogniser and the closed-set phrase spotter over the clip and sort what each heard into
command / backchannel / other words / nothing, the classes the default tier-2 rule acts
on ("other" words make the agent stop).

    .venv/bin/python scripts/tier2_words.py .cache/scenarios/builtin
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from bargein.decider import INTERRUPT_PHRASES, normalize_words, only_backchannel
from bargein.providers.base import FloatAudio, StreamingRecognizer
from bargein.providers.phrases import PocketSphinxPhraseSpotter
from bargein.providers.pocketsphinx import PocketSphinxRecognizer
from bargein.scenario import load_set

KINDS = {"backchannel": "backchannel", "short_command": "command", "noise": "noise"}


def classify(words: list[str]) -> str:
    tokens = normalize_words(words)
    if not tokens:
        return "nothing"
    text = f" {' '.join(tokens)} "
    if any(f" {p} " in text for p in INTERRUPT_PHRASES):
        return "command"
    return "backchannel" if only_backchannel(tokens) else "other"


def hear(recognizer: StreamingRecognizer, audio: FloatAudio) -> list[str]:
    """Feed 20 ms at a time, as a telephony stream would, and return the final words."""
    recognizer.start()
    for i in range(0, len(audio), 320):
        recognizer.feed(audio[i : i + 320])
    return list(recognizer.finish())


def main(folder: str) -> int:
    scenarios, errors = load_set(Path(folder))
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    sources: dict[str, StreamingRecognizer] = {
        "general recogniser": PocketSphinxRecognizer(),
        "phrase spotter": PocketSphinxPhraseSpotter(),
    }
    tables: dict[str, dict[str, Counter[str]]] = {name: {} for name in sources}
    for scenario in scenarios:
        truth = KINDS.get(scenario.kind)
        if truth is None:
            continue
        for event in scenario.events:
            audio = event.load(16000)
            for name, recognizer in sources.items():
                heard = classify(hear(recognizer, audio))
                tables[name].setdefault(truth, Counter())[heard] += 1
    for name, table in tables.items():
        print(f"{name}:")
        for truth, counts in sorted(table.items()):
            cells = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            print(f"  {truth:12s} ({sum(counts.values())}): {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".cache/scenarios/builtin"))
