"""Unit tests of the Discord translation helpers, on stand-in discord.py objects.

Why: mention handling, channel keys and permission flags decide who the bot answers, what it
remembers and who may reset it; these cases are cheaper and more exhaustive here than through
the fake server (which `test_discord_adapter.py` covers end to end).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import discord
from hypothesis import given
from hypothesis import strategies as st

from bot.platforms.discord.text import (
    REQUIRED_PERMISSIONS,
    channel_allowed,
    channel_key,
    interaction_to_incoming,
    mentions_bot,
    message_to_turn,
    neutralize_broadcasts,
    quote_prompt,
    render_mentions,
    safe_mentions,
    to_incoming,
)
from bot.types import ChannelKey, Turn

BOT = 1000
DOCS = Path(__file__).resolve().parents[1] / "docs" / "discord-setup.md"


def text_channel(channel_id: int = 10) -> Any:
    channel = MagicMock(spec=discord.TextChannel)
    channel.id = channel_id
    channel.name = "general"
    channel.permissions_for.return_value = discord.Permissions.none()
    return channel


def thread(thread_id: int = 20, parent_id: int = 10) -> Any:
    channel = MagicMock(spec=discord.Thread)
    channel.id = thread_id
    channel.parent_id = parent_id
    channel.permissions_for.return_value = discord.Permissions.none()
    return channel


def dm_channel(channel_id: int = 30) -> Any:
    channel = MagicMock(spec=discord.DMChannel)
    channel.id = channel_id
    return channel


def member(user_id: int = 5, name: str = "Alice", *, bot: bool = False) -> Any:
    user = MagicMock(spec=discord.Member)
    user.id = user_id
    user.display_name = name
    user.bot = bot
    return user


def message(content: str, *, channel: Any = None, author: Any = None, guild: bool = True,
            mentions: list[Any] | None = None, roles: list[Any] | None = None,
            reference: Any = None, kind: discord.MessageType = discord.MessageType.default,
            ) -> Any:
    msg = MagicMock(spec=discord.Message)
    msg.id = 99
    msg.content = content
    msg.channel = channel if channel is not None else text_channel()
    msg.author = author if author is not None else member()
    msg.guild = MagicMock(spec=discord.Guild) if guild else None
    msg.mentions = mentions or []
    msg.role_mentions = roles or []
    msg.channel_mentions = []
    msg.reference = reference
    msg.type = kind
    return msg


def bot_user() -> Any:
    user = MagicMock(spec=discord.ClientUser)
    user.id = BOT
    return user


# ---------------------------------------------------------------------------- outgoing


@given(st.text())
def test_neutralized_text_never_contains_a_broadcast(text: str) -> None:
    out = neutralize_broadcasts(text).lower()
    assert "@everyone" not in out and "@here" not in out


def test_neutralize_keeps_everything_else() -> None:
    assert neutralize_broadcasts("hi @everyone, @Here and <@5>") == (
        "hi @\u200beveryone, @\u200bHere and <@5>")
    assert neutralize_broadcasts("mail me at a@b.c") == "mail me at a@b.c"


def test_safe_mentions_allow_only_the_asker() -> None:
    assert safe_mentions(5).to_dict() == {"parse": [], "users": [5], "replied_user": True}
    assert safe_mentions().to_dict() == {"parse": [], "replied_user": True}


def test_quote_prompt_is_one_short_line() -> None:
    assert quote_prompt("why\nis the sky   blue?") == "> why is the sky blue?\n"
    assert quote_prompt("") == ""
    long = quote_prompt("x" * 500)
    assert len(long) == 2 + 150 + 1 and long.endswith("…\n")


def test_required_permissions_match_the_setup_guide() -> None:
    perms = REQUIRED_PERMISSIONS
    assert perms.view_channel and perms.send_messages and perms.send_messages_in_threads
    assert perms.read_message_history and perms.use_application_commands
    assert not perms.mention_everyone and not perms.administrator
    assert perms.value == 277025459200
    assert str(perms.value) in DOCS.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------- mentions


def test_render_strips_the_bot_and_names_the_others() -> None:
    text = render_mentions(f"<@{BOT}> ask <@5> and <@&7> in <#8> about <@9>", bot_id=BOT,
                           users={5: "Bob"}, roles={7: "mods"}, channels={8: "dev"})
    assert text == "ask @Bob and @mods in #dev about <@9>"


def test_render_handles_nick_mentions_role_mentions_and_punctuation() -> None:
    assert render_mentions(f"<@!{BOT}>, what is 2+2?", bot_id=BOT) == "what is 2+2?"
    assert render_mentions(f"hey <@{BOT}> there", bot_id=BOT) == "hey there"
    assert render_mentions(f"thanks <@{BOT}>", bot_id=BOT) == "thanks"
    assert render_mentions("<@&77>: hi", bot_id=BOT, bot_role_ids={77}) == "hi"
    assert render_mentions(f"<@{BOT}>", bot_id=BOT) == ""
    assert render_mentions("keep   spacing\n  in code", bot_id=BOT) == (
        "keep   spacing\n  in code")


def test_mention_reply_and_bot_role_address_the_bot_but_everyone_does_not() -> None:
    me = member(BOT, "Bot", bot=True)
    assert mentions_bot(message("hi", mentions=[me]), BOT)
    assert not mentions_bot(message("@everyone hi"), BOT)

    role = MagicMock(spec=discord.Role)
    role.id, role.name = 77, "Bot"
    role.tags = MagicMock(spec=discord.RoleTags)
    role.tags.bot_id = BOT
    assert mentions_bot(message("<@&77> hi", roles=[role]), BOT)

    reference = MagicMock(spec=discord.MessageReference)
    reference.resolved = message("earlier answer", author=me)
    assert mentions_bot(message("and then?", reference=reference), BOT)
    reference.resolved = message("someone else", author=member(6))
    assert not mentions_bot(message("and then?", reference=reference), BOT)


# ---------------------------------------------------------------------------- incoming


def test_channel_message_translation() -> None:
    me = member(BOT, "Bot", bot=True)
    bob = member(6, "Bob")
    incoming = to_incoming(message(f"<@{BOT}> hello <@6>", mentions=[me, bob]), bot_user())
    assert incoming.key == ChannelKey("discord", "10")
    assert (incoming.message_id, incoming.author_id, incoming.author_name) == ("99", "5", "Alice")
    assert incoming.text == "hello @Bob"
    assert incoming.addressed and not incoming.is_direct and not incoming.is_admin
    assert incoming.command is None


def test_unaddressed_message_is_context() -> None:
    incoming = to_incoming(message("just chatting"), bot_user())
    assert not incoming.addressed and incoming.text == "just chatting"


def test_thread_message_is_keyed_under_its_parent() -> None:
    incoming = to_incoming(message("hi", channel=thread(20, 10)), bot_user())
    assert incoming.key == ChannelKey("discord", "10", "20")


def test_dm_is_addressed_and_direct() -> None:
    user = MagicMock(spec=discord.User)
    user.id, user.display_name, user.bot = 5, "Alice", False
    incoming = to_incoming(message("hi", channel=dm_channel(), author=user, guild=False),
                           bot_user())
    assert incoming.key == ChannelKey("discord", "30")
    assert incoming.addressed and incoming.is_direct and not incoming.is_admin


def test_admin_comes_from_the_channel_permissions() -> None:
    channel = text_channel()
    channel.permissions_for.return_value = discord.Permissions(manage_messages=True)
    author = member()
    incoming = to_incoming(message("hi", channel=channel, author=author), bot_user())
    assert incoming.is_admin
    channel.permissions_for.assert_called_with(author)

    lost = thread()
    lost.permissions_for.side_effect = discord.ClientException("Parent channel not found")
    assert not to_incoming(message("hi", channel=lost), bot_user()).is_admin


def test_interaction_translation() -> None:
    interaction = MagicMock(spec=discord.Interaction)
    interaction.id = 123
    interaction.user = member()
    interaction.guild_id = 1
    interaction.permissions = discord.Permissions(manage_messages=True)
    incoming = interaction_to_incoming(interaction, thread(20, 10), "summarize", "30")
    assert incoming.key == ChannelKey("discord", "10", "20")
    assert (incoming.command, incoming.args, incoming.text) == ("summarize", "30",
                                                                "/summarize 30")
    assert incoming.addressed and incoming.is_admin and not incoming.is_direct
    assert incoming.message_id == "123"

    interaction.guild_id = None
    interaction.permissions = discord.Permissions.none()
    in_dm = interaction_to_incoming(interaction, dm_channel(), "reset")
    assert in_dm.is_direct and not in_dm.is_admin and in_dm.args == ""


def test_allowed_channels() -> None:
    allowed = {"10"}
    assert channel_allowed(text_channel(10), allowed, is_direct=False)
    assert not channel_allowed(text_channel(11), allowed, is_direct=False)
    assert channel_allowed(thread(20, 10), allowed, is_direct=False)
    assert not channel_allowed(thread(21, 11), allowed, is_direct=False)
    assert channel_allowed(dm_channel(), allowed, is_direct=True)
    assert channel_allowed(text_channel(11), set(), is_direct=False)


def test_channel_keys() -> None:
    assert channel_key(text_channel(10)) == ChannelKey("discord", "10")
    assert channel_key(thread(20, 10)) == ChannelKey("discord", "10", "20")


# ---------------------------------------------------------------------------- transcripts


def test_history_messages_become_turns() -> None:
    me = member(BOT, "Bot", bot=True)
    assert message_to_turn(message("hello"), BOT) == Turn("user", "Alice", "hello")
    assert message_to_turn(message("an answer", author=me), BOT) == Turn(
        "assistant", "Bot", "an answer")
    answer = message("a command answer", author=me, kind=discord.MessageType.chat_input_command)
    assert message_to_turn(answer, BOT) == Turn("assistant", "Bot", "a command answer")
    assert message_to_turn(message("", author=me), BOT) is None  # "thinking..." placeholder
    assert message_to_turn(message(f"<@{BOT}> /summarize 5"), BOT) is None
    assert message_to_turn(message("pinned", kind=discord.MessageType.pins_add), BOT) is None
