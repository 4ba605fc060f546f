"""A language model that streams a given text at a realistic pace.

The benchmark needs the agent to say exactly a scenario's ``agent_text``, and the
interruption path needs a stream to cancel. This streams whitespace-delimited tokens
after a first-token delay, at a steady token rate, on whatever clock the loop runs.
Each stream keeps a ledger of when it produced each token, so "tokens after cancel" is
counted, not assumed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bargein.providers.base import ChatMessage, ToolCall, ToolSpec

_TOKEN = re.compile(r"\s*\S+")

ScriptItem = str | Sequence[str | ToolCall]


def tokenize(text: str) -> list[str]:
    """Split into tokens that concatenate back to ``text`` (less trailing space)."""
    return _TOKEN.findall(text)


class ScriptedStream:
    """One streaming call: an async iterator of tokens with a production ledger."""

    def __init__(self, tokens: list[str | ToolCall], llm: ScriptedLLM) -> None:
        self._tokens = tokens
        self._llm = llm
        self._next = 0
        self.closed = False
        self.emitted_at: list[float] = []

    def __aiter__(self) -> ScriptedStream:
        return self

    async def __anext__(self) -> str | ToolCall:
        if self.closed or self._next >= len(self._tokens):
            raise StopAsyncIteration
        delay = self._llm.first_token_s if self._next == 0 else 1.0 / self._llm.tokens_per_s
        await asyncio.sleep(delay)
        if self.closed:
            raise StopAsyncIteration
        if self._llm.fail_after is not None and self._next >= self._llm.fail_after:
            raise RuntimeError(f"scripted failure after {self._next} tokens")
        token = self._tokens[self._next]
        self._next += 1
        if isinstance(token, str):
            self.emitted_at.append(asyncio.get_running_loop().time())
        return token

    async def aclose(self) -> None:
        self.closed = True

    def tokens_after(self, t: float) -> int:
        """Tokens produced strictly after time ``t``."""
        return sum(1 for at in self.emitted_at if at > t)


@dataclass
class ScriptedLLM:
    """Streams ``script(messages)``, or the next string of a list (the last one repeats).

    A script item may also be a sequence of text and :class:`ToolCall` items, streamed in
    order, for replies that call tools.

    ``fail_after`` makes every stream raise after that many tokens, to test how a session
    survives a provider that breaks mid-reply. ``calls`` records each call's messages.
    """

    script: Callable[[Sequence[ChatMessage]], ScriptItem] | Sequence[ScriptItem]
    first_token_s: float = 0.15
    tokens_per_s: float = 30.0
    fail_after: int | None = None
    calls: list[list[ChatMessage]] = field(default_factory=list)
    streams: list[ScriptedStream] = field(default_factory=list)

    def stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()
    ) -> ScriptedStream:
        self.calls.append(list(messages))
        if callable(self.script):
            item = self.script(messages)
        else:
            item = self.script[min(len(self.calls) - 1, len(self.script) - 1)]
        parts = [item] if isinstance(item, str) else item
        tokens: list[str | ToolCall] = []
        for part in parts:
            tokens.extend(tokenize(part) if isinstance(part, str) else [part])
        stream = ScriptedStream(tokens, self)
        self.streams.append(stream)
        return stream
