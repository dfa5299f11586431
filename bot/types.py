"""The vocabulary that crosses the adapter/core boundary.

Frozen dataclasses with no SDK types in them: adapters translate platform events into
`IncomingMessage` and send `Reply` objects back; the core never sees a discord or slack object
(`raw` is carried for the adapter's own use only and is never read by the core).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeAlias

Platform: TypeAlias = Literal["console", "discord", "slack"]
Role: TypeAlias = Literal["user", "assistant"]
Control: TypeAlias = Literal["stop", "regenerate", "continue", "up", "down"]
"""What a person can do to an answer (see `bot.core.controls`): stop it while it is written,
regenerate it, continue it when it was cut at the reply budget, or rate it up or down."""
ChatMessage: TypeAlias = dict[str, str]
"""One chat-template message: ``{"role": "system" | "user" | "assistant", "content": "..."}``."""
Prompt: TypeAlias = list[ChatMessage]


@dataclass(frozen=True, slots=True)
class ChannelKey:
    """Where a conversation lives: history, locks and settings are keyed by it."""

    platform: Platform
    channel_id: str
    thread_id: str | None = None

    def __str__(self) -> str:
        thread = f"/{self.thread_id}" if self.thread_id else ""
        return f"{self.platform}:{self.channel_id}{thread}"


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A message or slash command, translated out of a platform event.

    Attributes:
        text: the message with the bot's mention stripped.
        addressed: the bot was mentioned, DM'd or invoked by a slash command; unaddressed
            messages are only recorded as channel context.
        command: set by adapters for native slash commands (``"summarize"``); text commands
            typed as ``/name args`` are parsed by the core.
        is_admin: the platform says the author may manage this channel (checked by the
            adapter against the platform's permissions, never taken from message text).
        is_direct: a direct message, where the author owns the conversation.
        in_bot_thread: the adapter knows the message is in a thread the bot started or
            answers in (the core also counts threads where it has spoken before).
        shared: the documents, images and unreadable files the message carries.
    """

    key: ChannelKey
    message_id: str
    author_id: str
    author_name: str
    text: str
    addressed: bool = True
    command: str | None = None
    args: str = ""
    is_admin: bool = False
    is_direct: bool = False
    in_bot_thread: bool = False
    raw: object = field(default=None, repr=False, compare=False)
    shared: Shared = field(default_factory=lambda: Shared())
    """Files and links the message shares, already read by the adapter (`bot.documents`)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """What the core wants said; the adapter decides how (split, edit, thread)."""

    key: ChannelKey
    text: str
    reply_to: str | None = None
    ephemeral: bool = False
    controls: tuple[Control, ...] = ()
    """The controls this answer offers (a chat answer; empty for commands), for the adapter
    to render as buttons keyed by `reply_to`, the message the answer replies to."""


@dataclass(frozen=True, slots=True)
class Press:
    """Someone pressed a control of an answer, as the adapter translated it.

    Attributes:
        key: the conversation of the answer.
        answer_to: the message the answer replies to (the question): it names the answer.
        user_id, user_name: who pressed.
        is_admin: the platform says the presser may manage this channel (checked by the
            adapter against the platform's permissions).
        is_direct: a direct message, where the presser owns the conversation.
    """

    key: ChannelKey
    answer_to: str
    control: Control
    user_id: str
    user_name: str
    is_admin: bool = False
    is_direct: bool = False


@dataclass(frozen=True, slots=True)
class Turn:
    """One stored line of a channel's conversation."""

    role: Role
    author: str
    text: str


# -- what people share (issue #17): read by `bot.documents`, used by `bot.core.documents` --

@dataclass(frozen=True, slots=True)
class Section:
    """A part of a document that an answer can name: a PDF page, a heading's part, lines."""

    label: str
    """How the part is named in a source line ("page 3", "Refunds", "lines 1-80"); ''
    when the document has no parts worth naming."""
    text: str


@dataclass(frozen=True, slots=True)
class Document:
    """The text of one shared file or link, as its reader extracted it.

    Attributes:
        name: the file name, or the link as written.
        source: ``"file"`` (an attachment or a console ``/attach``) or ``"link"``.
        kind: what the bytes turned out to be ("PDF", "DOCX", "HTML", "text", "CSV", ...).
        sections: the text in document order.
        note: said with the answer, e.g. that the text was cut at DOCUMENT_MAX_CHARS.
    """

    name: str
    source: Literal["file", "link"]
    kind: str
    sections: tuple[Section, ...]
    note: str = ""

    @property
    def text(self) -> str:
        return "\n\n".join(section.text for section in self.sections)


@dataclass(frozen=True, slots=True)
class Image:
    """A shared picture, for an engine whose model can see."""

    name: str
    mime: str
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A shared file or link that could not be read, and why (one line for the user)."""

    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class Shared:
    """Everything a message shares, read; empty for most messages."""

    documents: tuple[Document, ...] = ()
    images: tuple[Image, ...] = ()
    problems: tuple[Unreadable, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.documents or self.images or self.problems)

    def __add__(self, other: Shared) -> Shared:
        return Shared(self.documents + other.documents, self.images + other.images,
                      self.problems + other.problems)
