"""Functions the agent can call in the middle of a reply, and what an interruption does to them.

A barge-in cancels the reply: the LLM stream, the TTS and every tool call that is safe
to cancel (a lookup, a search). A tool that changes the world (a booking, a payment) is
declared ``cancel_safe=False``: once started it runs to the end even if the user cuts
in, because a half-made booking is worse than an answer nobody waits for. Either way the
call and its outcome stay in the conversation, so the next reply knows what happened.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bargein.providers.base import ToolSpec

ToolFunction = Callable[..., Awaitable[Any] | Any]

CANCELLED_RESULT = "cancelled: the user interrupted before this call finished"
PENDING_RESULT = "pending: still running"


class ToolError(ValueError):
    """The model asked for a tool that does not exist or with arguments that do not parse."""


@dataclass(frozen=True)
class Tool:
    """A callable the model may use. ``function`` takes the model's arguments as keywords."""

    name: str
    description: str
    function: ToolFunction
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    cancel_safe: bool = True
    """False for calls with side effects: an interruption then waits for them instead."""

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.parameters)

    async def call(self, arguments: str) -> str:
        """Run with the model's JSON arguments; the result as text for the conversation."""
        try:
            parsed = json.loads(arguments or "{}")
        except json.JSONDecodeError as exc:
            raise ToolError(f"{self.name}: arguments are not JSON ({exc.msg})") from None
        if not isinstance(parsed, dict):
            raise ToolError(f"{self.name}: arguments must be a JSON object")
        result = self.function(**parsed)
        if inspect.isawaitable(result):
            result = await result
        return result if isinstance(result, str) else json.dumps(result)


def tool(
    function: ToolFunction,
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    cancel_safe: bool = True,
) -> Tool:
    """Wrap a function as a :class:`Tool`, taking the name and description from it."""
    return Tool(
        name=name or function.__name__,
        description=description or inspect.getdoc(function) or "",
        function=function,
        parameters=parameters or {"type": "object", "properties": {}},
        cancel_safe=cancel_safe,
    )
