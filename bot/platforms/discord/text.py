"""Pure translation between discord.py objects and the core's vocabulary.

Kept apart from the adapter so it can be unit-tested without a gateway: nothing here does I/O.
Incoming: a `discord.Message` or `discord.Interaction` becomes an `IncomingMessage` (bot
mention stripped, other mentions turned into readable names, the author's Manage Messages
permission as resolved by Discord). Outgoing: text is made unable to ping @everyone/@here, and
`allowed_mentions` lets only the asker be pinged.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

import discord

from bot.types import ChannelKey, IncomingMessage, Role, Turn

MESSAGE_LIMIT = 2000
"""Discord's maximum message length, in characters."""

REQUIRED_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    read_message_history=True,
    use_application_commands=True,
)
"""What the bot needs in a channel; its value (277025459200) goes in the invite URL."""

INVITE_SCOPES = ("bot", "applications.commands")

_CHAT_TYPES = frozenset({
    discord.MessageType.default,
    discord.MessageType.reply,
    discord.MessageType.chat_input_command,
    discord.MessageType.context_menu_command,
})
_TAG = re.compile(r"<(@!?|@&|#)(\d+)>")
_DROPPED = "\ue000"  # marks where the bot's own mention was, so spacing can be repaired
_BROADCAST = re.compile(r"@(everyone|here)", re.IGNORECASE)
_ROLE_TAG = re.compile(r"<@&(?=\d)")
ZERO_WIDTH_SPACE = "\u200b"
_LEADING_PUNCT = re.compile(r"^[\s,:;]+")


def neutralize_broadcasts(text: str) -> str:
    """Break ``@everyone``/``@here`` and role tags (``<@&id>``) with a zero-width space.

    Why: `allowed_mentions` already forbids these pings; this is the second lock, in case a
    send path ever forgets it, and it also stops them rendering as highlighted mentions.

    It only ever inserts U+200B and never normalises: Discord matches ``@everyone``,
    ``@here`` and ``<@&id>`` literally (ASCII, no Unicode folding), so look-alikes such as
    full-width ``＠ｅｖｅｒｙｏｎｅ`` or ``@`` + U+200B + ``everyone`` do not ping and are left
    as written; removing or folding characters here could turn them into real mentions.
    """
    text = _BROADCAST.sub(f"@{ZERO_WIDTH_SPACE}\\1", text)
    return _ROLE_TAG.sub(f"<@&{ZERO_WIDTH_SPACE}", text)


def safe_mentions(asker_id: int | None = None) -> discord.AllowedMentions:
    """Allowed mentions for a reply: never @everyone/@here/roles; only the asker, if anyone."""
    users: list[discord.Object] | bool = [discord.Object(id=asker_id)] if asker_id else False
    return discord.AllowedMentions(everyone=False, roles=False, users=users, replied_user=True)


def render_mentions(content: str, *, bot_id: int, bot_role_ids: Collection[int] = (),
                    users: Mapping[int, str] | None = None,
                    roles: Mapping[int, str] | None = None,
                    channels: Mapping[int, str] | None = None) -> str:
    """`content` as the model should read it: the bot's mention removed, others named.

    ``<@id>`` becomes ``@Name``, ``<@&id>`` ``@role``, ``<#id>`` ``#channel`` when the name is
    known (unknown tags are kept as written). A leading "," or ":" left after removing a
    leading mention ("@Bot, what is...") is dropped too.
    """
    users = users or {}
    roles = roles or {}
    channels = channels or {}

    def name(match: re.Match[str]) -> str:
        kind, ident = match.group(1), int(match.group(2))
        if kind == "@&":
            if ident in bot_role_ids:
                return _DROPPED
            return f"@{roles[ident]}" if ident in roles else match.group(0)
        if kind == "#":
            return f"#{channels[ident]}" if ident in channels else match.group(0)
        if ident == bot_id:
            return _DROPPED
        return f"@{users[ident]}" if ident in users else match.group(0)

    text = _TAG.sub(name, content)
    if _DROPPED in text:
        text = re.sub(f" ?{_DROPPED} ?", " ", text).replace(_DROPPED, "")
        text = _LEADING_PUNCT.sub("", text)
    return text.strip()


def channel_key(channel: discord.abc.Snowflake) -> ChannelKey:
    """Where a conversation lives: a thread is keyed under its parent, with its own history."""
    if isinstance(channel, discord.Thread):
        return ChannelKey("discord", str(channel.parent_id), str(channel.id))
    return ChannelKey("discord", str(channel.id))


def channel_allowed(channel: discord.abc.Snowflake, allowed: Collection[str], *,
                    is_direct: bool) -> bool:
    """ALLOWED_CHANNELS check: empty allows all; DMs always; a thread if it or its parent is."""
    if not allowed or is_direct:
        return True
    if str(channel.id) in allowed:
        return True
    return isinstance(channel, discord.Thread) and str(channel.parent_id) in allowed


def is_chat_message(message: discord.Message) -> bool:
    """A message people wrote (or a command answer), not a join/pin/thread-created notice."""
    return message.type in _CHAT_TYPES


def member_is_admin(channel: object, author: discord.abc.User) -> bool:
    """Whether `author` has Manage Messages in `channel`, from Discord's resolved permissions."""
    if not isinstance(author, discord.Member):
        return False
    if not isinstance(channel, discord.abc.GuildChannel | discord.Thread):
        return False
    try:
        return channel.permissions_for(author).manage_messages
    except discord.ClientException:  # a thread whose parent is not cached
        return False


def bot_role_ids(message: discord.Message, bot_id: int) -> set[int]:
    """The bot's own managed role among the message's role mentions ("@Bot" picked as a role)."""
    return {role.id for role in message.role_mentions
            if role.tags is not None and role.tags.bot_id == bot_id}


def mentions_bot(message: discord.Message, bot_id: int) -> bool:
    """Whether the bot is addressed: mentioned by name or by its role, or replied to.

    ``@everyone`` does not count (unlike `ClientUser.mentioned_in`): a broadcast is not a
    question for the bot.
    """
    if any(user.id == bot_id for user in message.mentions):
        return True
    if bot_role_ids(message, bot_id):
        return True
    reference = message.reference
    resolved = reference.resolved if reference is not None else None
    return isinstance(resolved, discord.Message) and resolved.author.id == bot_id


def message_text(message: discord.Message, bot_id: int) -> str:
    """The message's content with mentions rendered for the model (see `render_mentions`)."""
    return render_mentions(
        message.content, bot_id=bot_id, bot_role_ids=bot_role_ids(message, bot_id),
        users={u.id: u.display_name for u in message.mentions},
        roles={r.id: r.name for r in message.role_mentions},
        channels={c.id: getattr(c, "name", str(c.id)) for c in message.channel_mentions})


def to_incoming(message: discord.Message, bot_user: discord.abc.User) -> IncomingMessage:
    """A channel, thread or DM message as the core sees it."""
    is_direct = message.guild is None
    return IncomingMessage(
        key=channel_key(message.channel),
        message_id=str(message.id),
        author_id=str(message.author.id),
        author_name=message.author.display_name,
        text=message_text(message, bot_user.id),
        addressed=is_direct or mentions_bot(message, bot_user.id),
        is_admin=not is_direct and member_is_admin(message.channel, message.author),
        is_direct=is_direct,
        in_bot_thread=(isinstance(message.channel, discord.Thread)
                       and message.channel.owner_id == bot_user.id),
        raw=message,
    )


def interaction_to_incoming(interaction: discord.Interaction[discord.Client],
                            channel: discord.abc.Snowflake, command: str,
                            args: str = "") -> IncomingMessage:
    """A slash command as the core sees it; permissions are those Discord resolved for it."""
    is_direct = interaction.guild_id is None
    return IncomingMessage(
        key=channel_key(channel),
        message_id=str(interaction.id),
        author_id=str(interaction.user.id),
        author_name=interaction.user.display_name,
        text=f"/{command} {args}".strip(),
        addressed=True,
        command=command,
        args=args,
        is_admin=not is_direct and interaction.permissions.manage_messages,
        is_direct=is_direct,
        raw=interaction,
    )


def message_to_turn(message: discord.Message, bot_id: int) -> Turn | None:
    """One line of a transcript read back from Discord, or None for what is not chat.

    Skipped: notices, empty messages (a deferred command's "thinking..." placeholder,
    attachments only) and typed commands.
    """
    if not is_chat_message(message):
        return None
    text = message_text(message, bot_id)
    if not text or text.startswith("/"):
        return None
    role: Role = "assistant" if message.author.id == bot_id else "user"
    return Turn(role, message.author.display_name, text)


def quote_prompt(prompt: str, limit: int = 150) -> str:
    """The question of a /ask, quoted on one line above the answer.

    Why: a slash command's options are not shown in the channel, so without this the others
    would see an answer to an invisible question.
    """
    line = " ".join(prompt.split())
    if len(line) > limit:
        line = line[: limit - 1].rstrip() + "…"
    return f"> {line}\n" if line else ""
