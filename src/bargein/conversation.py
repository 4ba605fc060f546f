"""The conversation as the agent remembers it, and what the next LLM call sees.

The stored history holds only what happened: user turns, and assistant messages cut to
the words the user actually heard (``interrupted=True`` when cut). The instructions that
tell the model how to carry on after an interruption are added per call by
:func:`build_llm_input`, never stored, so a later turn does not inherit a stale "you
were interrupted" note.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from bargein.policy import ReplyMode
from bargein.providers.base import ChatMessage, ToolCall

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful voice assistant. Answer in a few natural spoken sentences."
)


@dataclass(frozen=True)
class InterruptedReply:
    """What the last reply got across before the user cut in."""

    heard: str
    unsaid: str


@dataclass
class Conversation:
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    messages: list[ChatMessage] = field(default_factory=list)

    def add_user(self, text: str) -> None:
        self.messages.append(ChatMessage("user", text))

    def extend_last_user(self, text: str) -> tuple[int, str]:
        """Merge words the user added while the agent was still thinking into their turn.

        Returns the message's index and the text it had before, so a better transcript
        of the added words can later replace them alone.
        """
        for i in range(len(self.messages) - 1, -1, -1):
            message = self.messages[i]
            if message.role == "user":
                joined = f"{message.content} {text}".strip() if text else message.content
                self.messages[i] = replace(message, content=joined)
                return i, message.content
            if message.role == "assistant":
                break
        self.add_user(text)
        return len(self.messages) - 1, ""

    def add_assistant(self, text: str, *, interrupted: bool = False) -> None:
        self.messages.append(ChatMessage("assistant", text, interrupted=interrupted))

    def last_assistant(self) -> ChatMessage | None:
        """The last assistant message that says something (not a bare tool request)."""
        for message in reversed(self.messages):
            if message.role == "assistant" and not message.tool_calls:
                return message
        return None

    def add_tool_calls(self, calls: Sequence[ToolCall], pending: str) -> list[ChatMessage]:
        """Record that the agent called tools, each with a placeholder result.

        The placeholder keeps every call paired with a result right after it, which chat
        APIs require, even while a call is still running after an interruption.
        """
        added = [ChatMessage("assistant", "", tool_calls=tuple(calls))]
        added += [ChatMessage("tool", pending, tool_call_id=call.id) for call in calls]
        self.messages.extend(added)
        return added

    def set_tool_result(self, call_id: str, result: str) -> ChatMessage:
        """Replace a call's placeholder with its outcome, wherever the call now sits."""
        for i, message in enumerate(self.messages):
            if message.role == "tool" and message.tool_call_id == call_id:
                self.messages[i] = replace(message, content=result)
                return self.messages[i]
        raise KeyError(f"no tool call {call_id!r} in the conversation")


def build_llm_input(
    conversation: Conversation,
    mode: ReplyMode,
    interrupted: InterruptedReply | None = None,
) -> list[ChatMessage]:
    """The message list for the next LLM call under a restart policy.

    ``restart`` hides the cut-off reply; ``respond`` shows it, marked, and asks for an
    acknowledgement; ``resume`` shows it and asks to carry on with the unsaid rest.
    """
    history: Sequence[ChatMessage] = conversation.messages
    if mode == "restart":
        cut = conversation.last_assistant()
        if cut is not None and cut.interrupted:
            history = [m for m in history if m is not cut]
    out = [ChatMessage("system", conversation.system_prompt), *history]
    if interrupted is None or mode in ("turn", "restart", "merge"):
        return out
    if mode == "respond":
        note = (
            "The user interrupted your previous reply. They heard only: "
            f'"{interrupted.heard}". Briefly acknowledge what they just said and answer '
            "it; do not repeat what they already heard."
        )
    else:
        note = (
            "The user interrupted your previous reply and wants you to go on. Continue "
            "from exactly where you stopped; what you had not said yet was: "
            f'"{interrupted.unsaid}"'
        )
    return [*out, ChatMessage("system", note)]
