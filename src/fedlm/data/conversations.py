"""Conversations: the samples of instruction tuning, as the chat templates of the ecosystem take them.

A conversation is a tuple of messages (role, content) with at least one assistant turn;
`source` says where it came from ("clients/a.jsonl, line 12"), so that every error about
it names the file and line. Its repr shows counts only, never the text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant")


class ConversationError(ValueError):
    """A record is not a usable conversation; the message names its source."""


@dataclass(frozen=True)
class Message:
    role: str
    content: str = field(repr=False)  # client text: never in a repr, a log or an error


@dataclass(frozen=True, repr=False)
class Conversation:
    messages: tuple[Message, ...]
    source: str = ""

    def __post_init__(self) -> None:
        where = self.source or "conversation"
        messages = tuple(self.messages)
        if not messages:
            raise ConversationError(f"{where}: the conversation is empty")
        for i, m in enumerate(messages):
            if not isinstance(m, Message):
                raise ConversationError(f"{where}: message {i} is a {type(m).__name__}, not a Message")
            if m.role not in ROLES:
                raise ConversationError(f"{where}: message {i} has an unknown role; roles are {', '.join(ROLES)}")
            if not isinstance(m.content, str):
                raise ConversationError(f"{where}: message {i} ({m.role}) has {type(m.content).__name__} content, not text")
        if not any(m.role == "assistant" for m in messages):
            raise ConversationError(f"{where}: the conversation has no assistant turn, so nothing to learn")
        if messages[0].role == "assistant":
            raise ConversationError(f"{where}: the conversation starts with the assistant; it needs a user (or system) turn first")
        object.__setattr__(self, "messages", messages)

    def __repr__(self) -> str:
        return f"Conversation(<{len(self.messages)} messages>, source={self.source!r})"

    def as_dicts(self) -> list[dict[str, str]]:
        """The messages as `tokenizer.apply_chat_template` takes them."""
        return [{"role": m.role, "content": m.content} for m in self.messages]


def make_conversation(pairs: list[tuple[str, str]], source: str = "") -> Conversation:
    """A conversation from (role, content) pairs."""
    return Conversation(tuple(Message(role, content) for role, content in pairs), source)
