"""Slack payloads in: events, slash commands and shortcuts as the core's `IncomingMessage`.

Pure functions with no I/O, so the translation is unit-tested alone (`to_incoming`,
`command_to_incoming`, `shortcut_to_incoming`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from bot.core.commands import MAX_SUMMARY_MESSAGES
from bot.platforms.slack.format import slack_to_text, strip_mention
from bot.types import ChannelKey, IncomingMessage

SLASH_COMMANDS: dict[str, str] = {
    "/ask": "ask", "/summarize": "summarize", "/reset": "reset", "/help": "help",
    "/bot-status": "status", "/persona": "persona", "/settings": "settings",
    "/reindex": "reindex", "/forget": "forget", "/model": "model"}
"""The slash commands in the app manifest, and the core command each runs. Slack reserves
``/status`` (its own "set your status"), so the bot's is ``/bot-status``; the core's other
commands also work as ``/name`` when added to the manifest, or as "@bot /name" anywhere."""
PUBLIC_COMMANDS = frozenset({"ask", "summarize"})
OPEN_COMMANDS = frozenset({"ask", "summarize", "help", "status"})
"""Commands nobody needs to be an admin for: the others get `is_admin` checked with Slack."""
METADATA_EVENT_TYPE = "llm_chat_bot"
"""Bot messages carry ``{"kind": status|question|answer|summary}`` so transcripts can skip some."""
MESSAGE_SUBTYPES = frozenset({None, "thread_broadcast", "file_share", "me_message"})
_SUMMARIZE = re.compile(
    r"^(?:(?:please|pls|can you|could you)\s+)?summari[sz]e"
    r"(?:\s+(?:this|that|it|here|the))?(?:\s+(?:thread|channel|conversation|chat|discussion))?"
    r"(?:\s+(?:the\s+)?(?:last\s+)?(\d+)(?:\s+messages?)?)?(?:,?\s+(?:please|pls))?\s*[.!?]*$",
    re.IGNORECASE)



def thread_of(event: Mapping[str, Any]) -> str | None:
    """The thread a message is a reply in, or None for a top-level message."""
    thread_ts = event.get("thread_ts")
    if not isinstance(thread_ts, str) or not thread_ts or thread_ts == event.get("ts"):
        return None
    return thread_ts


def mentions_bot(text: str, bot_user_id: str) -> bool:
    return bool(bot_user_id) and re.search(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>",
                                           text) is not None


def to_incoming(event: Mapping[str, Any], bot_user_id: str, *,
                names: Mapping[str, str] | None = None) -> IncomingMessage | None:
    """An ``app_mention`` or ``message`` event as the core's message, or None to ignore it.

    Ignored: bots (this one included), edits/joins/other subtypes, channel messages that
    mention the bot (their ``app_mention`` event is the one answered), and events without a
    user, channel and ts as strings (malformed; Slack always sends them). DMs and mentions are
    addressed; other human messages are context.

    Args:
        names: display names by user ID, for the author and users mentioned in the text.
    """
    names = names or {}
    kind = event.get("type")
    user = event.get("user")
    channel = event.get("channel")
    ts = event.get("ts")
    if kind not in ("app_mention", "message") or not all(
            isinstance(value, str) and value for value in (user, channel, ts)):
        return None
    subtype = event.get("subtype")
    if user == bot_user_id or event.get("bot_id") or not (
            subtype is None or (isinstance(subtype, str) and subtype in MESSAGE_SUBTYPES)):
        return None
    raw_text = event.get("text")
    raw_text = raw_text if isinstance(raw_text, str) else ""
    is_direct = event.get("channel_type") == "im" or str(channel).startswith("D")
    if kind == "message" and not is_direct and mentions_bot(raw_text, bot_user_id):
        return None
    addressed = kind == "app_mention" or is_direct
    thread = thread_of(event)
    text = slack_to_text(strip_mention(raw_text, bot_user_id), names).strip()
    command, args = None, ""
    # "summarize this" with files attached is about the files, not the conversation
    summarize = _SUMMARIZE.match(text) if addressed and not event.get("files") else None
    if summarize:
        command = "summarize"
        args = summarize.group(1) or ("" if thread is None else str(MAX_SUMMARY_MESSAGES))
    return IncomingMessage(
        key=ChannelKey("slack", str(channel), thread), message_id=str(ts), author_id=str(user),
        author_name=names.get(str(user)) or str(user), text=text, addressed=addressed,
        command=command, args=args, is_direct=is_direct,
        in_bot_thread=thread is not None and event.get("parent_user_id") == bot_user_id,
        raw=dict(event))


def command_to_incoming(body: Mapping[str, Any], *,
                        names: Mapping[str, str] | None = None) -> IncomingMessage:
    """A slash command payload as an addressed message with ``command`` set."""
    names = names or {}
    slash = str(body.get("command", "")).lower()
    name = SLASH_COMMANDS.get(slash, slash.lstrip("/"))
    channel = str(body.get("channel_id", ""))
    user = str(body.get("user_id", ""))
    args = slack_to_text(str(body.get("text") or ""), names).strip()
    return IncomingMessage(
        key=ChannelKey("slack", channel), message_id=f"command:{body.get('trigger_id', '')}",
        author_id=user, author_name=names.get(user) or str(body.get("user_name") or user),
        text=f"/{name} {args}".strip(), addressed=True, command=name, args=args,
        is_direct=channel.startswith("D"), raw=dict(body))


def shortcut_to_incoming(body: Mapping[str, Any], *,
                         names: Mapping[str, str] | None = None) -> IncomingMessage:
    """The "Summarize thread" shortcut as a summarize command for the message's thread."""
    names = names or {}
    message = as_mapping(body.get("message"))
    channel = str(as_mapping(body.get("channel")).get("id", ""))
    user_info = as_mapping(body.get("user"))
    user = str(user_info.get("id", ""))
    root = str(message.get("thread_ts") or body.get("message_ts") or message.get("ts") or "")
    return IncomingMessage(
        key=ChannelKey("slack", channel, root or None),
        message_id=f"shortcut:{body.get('trigger_id', '')}", author_id=user,
        author_name=names.get(user) or str(user_info.get("name") or user),
        text="/summarize", addressed=True, command="summarize",
        args=str(MAX_SUMMARY_MESSAGES), is_direct=channel.startswith("D"), raw=dict(body))


def as_mapping(value: object) -> Mapping[str, Any]:
    """`value` if it is a JSON object, else an empty one (for fields a payload got wrong)."""
    return value if isinstance(value, Mapping) else {}


def ts_order(ts: str) -> tuple[int, int]:
    """Sort key for Slack timestamps (``"1700000000.000100"``) without float rounding."""
    seconds, _, fraction = ts.partition(".")
    try:
        return int(seconds), int((fraction + "000000")[:6])
    except ValueError:
        return 0, 0


def message_metadata(kind: str) -> dict[str, Any]:
    """Marks a bot message with its kind, so transcripts can skip status messages."""
    return {"event_type": METADATA_EVENT_TYPE, "event_payload": {"kind": kind}}


def kind_of(message: Mapping[str, Any]) -> str | None:
    """The kind `message_metadata` marked a bot message with, if any."""
    metadata = message.get("metadata") or {}
    if not isinstance(metadata, Mapping) or metadata.get("event_type") != METADATA_EVENT_TYPE:
        return None
    payload = metadata.get("event_payload") or {}
    kind = payload.get("kind") if isinstance(payload, Mapping) else None
    return str(kind) if kind else None


def command_of(msg: IncomingMessage) -> str | None:
    """The command `msg` runs, native or typed as ``/name``, or None for a chat message."""
    if msg.command:
        return msg.command.lower()
    first = msg.text.split(None, 1)[0].lower() if msg.text.strip() else ""
    return first[1:] if first.startswith("/") and len(first) > 1 else None
