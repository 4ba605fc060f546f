"""What the user heard: the sink's playback cursor mapped to words.

A reply's audio reaches the sink as a sequence of TTS chunks; each carries word timings
relative to itself. The tracker lays the chunks end to end in the reply's own sample
space, so the sink only has to report one number, "samples of this reply played", and
the tracker answers "which words were heard". A word counts as heard once at least half
of its samples have played, the same rule the benchmark applies at the ear.

The cursor comes from the sink (a browser's report, a telephony ``mark``, a simulated
loudspeaker), never from what was generated or sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bargein.providers.base import SpeechChunk


def final_mark(word: str) -> str:
    """The mark that ends a sentence at ``word`` (".", "?" or "!"), past any closing quote
    or bracket; "" if no sentence ends there."""
    end = word.rstrip("\"')]")[-1:]
    return end if end in (".", "?", "!") else ""


@dataclass(frozen=True)
class PlacedWord:
    word: str
    start: int
    end: int

    @property
    def midpoint(self) -> float:
        return (self.start + self.end) / 2


@dataclass
class PlayoutTracker:
    """Word positions of one reply, in samples from the reply's first sample."""

    sample_rate: int
    words: list[PlacedWord] = field(default_factory=list)
    total_samples: int = 0
    exact: bool = True

    def add(self, chunk: SpeechChunk) -> None:
        if chunk.sample_rate != self.sample_rate:
            raise ValueError(
                f"chunk at {chunk.sample_rate} Hz in a {self.sample_rate} Hz reply stream"
            )
        offset = self.total_samples
        self.words.extend(PlacedWord(w.word, offset + w.start, offset + w.end) for w in chunk.words)
        self.total_samples += len(chunk.audio)
        self.exact = self.exact and chunk.timings_exact

    def heard_words(self, played: int) -> list[str]:
        return [w.word for w in self.words if played >= w.midpoint]

    def unheard_words(self, played: int) -> list[str]:
        return [w.word for w in self.words if played < w.midpoint]

    def heard_text(self, played: int) -> str:
        return " ".join(self.heard_words(played))

    def all_text(self) -> str:
        return " ".join(w.word for w in self.words)

    def after_question_s(self, played: int) -> float | None:
        """How long ago the agent's latest sentence ended, if it was a question.

        The latest sentence is the last one whose final word had begun to play: a user
        who answers over that word ("...first? Yeah") gets a negative time, and one who
        speaks inside the question, before its last word, gets None (that sound
        acknowledges, it cannot answer yet). The sentence's end is its last word's end,
        which for the last sentence of a chunk includes the TTS's pause after it.
        """
        last: PlacedWord | None = None
        for word in self.words:
            if word.start > played:
                break
            if final_mark(word.word):
                last = word
        if last is None or final_mark(last.word) != "?":
            return None
        return (played - last.end) / self.sample_rate
