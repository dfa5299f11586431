"""The Discord adapter end to end: the real discord.py client against the fake Discord.

Why: the adapter's behaviour is what Discord users see (typing, a reply that grows, deferred
slash commands, split answers, no mass pings), and it depends on discord.py's real caching,
gateway and HTTP error handling; so each test runs `DiscordAdapter.start()` against
`tests.fakes.discord_server.FakeDiscord` with a real core and worker, and asserts on the
requests Discord would have received. Synchronisation waits on the fake's records, never on
sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import discord
import pytest

from bot.config import Settings
from bot.core.answering import SHUTDOWN_MARK
from bot.core.conversation import APOLOGY, ConversationCore
from bot.engines.contract import GenerationRequest
from bot.engines.worker import ModelWorker
from bot.platforms.base import EditThrottle
from bot.platforms.discord.adapter import (
    INTENT_HELP,
    NOT_HERE,
    RESTARTING,
    DiscordAdapter,
)
from bot.platforms.discord.live_reply import LiveReply
from bot.platforms.discord.text import safe_mentions
from bot.storage.interface import HistoryStore
from bot.types import ChannelKey, IncomingMessage, Reply, Turn
from tests.conftest import with_settings
from tests.fakes.backends import EchoBackend, FailingBackend, GatedBackend
from tests.fakes.discord_server import (
    FakeChannel,
    FakeDiscord,
    FakeUser,
    InteractionHandle,
    Perm,
    patched_discord_endpoints,
)

MESSAGES_ROUTE = "/channels/{channel_id}/messages"
EDIT_ROUTE = "/channels/{channel_id}/messages/{message_id}"


# ---------------------------------------------------------------------------- harness


class ScriptedBackend(EchoBackend):
    """Streams a fixed answer in the given pieces, whatever it is asked."""

    def __init__(self, pieces: Sequence[str]) -> None:
        super().__init__()
        self.pieces = list(pieces)

    def generate(self, request: GenerationRequest, emit: Callable[[str], None],
                 should_stop: Callable[[], bool]) -> str:
        self.prompts.append(request.prompt)
        for piece in self.pieces:
            emit(piece)
        return "".join(self.pieces)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server


@contextlib.asynccontextmanager
async def make_core(backend: EchoBackend, settings: Settings, history: HistoryStore, *,
                    max_pending: int | None = None) -> AsyncIterator[ConversationCore]:
    """A core on its own worker, for tests that need a backend other than the echo one."""
    async with ModelWorker(lambda: backend, max_pending=max_pending or settings.max_queue,
                           timeout=settings.generation_timeout) as worker:
        yield ConversationCore(worker=worker, history=history, settings=settings)
        if isinstance(backend, GatedBackend):
            backend.gate.set()


@contextlib.asynccontextmanager
async def serving(fake: FakeDiscord, core: ConversationCore, settings: Settings, *,
                  edit_interval: float = 0.0, **changes: Any) -> AsyncIterator[DiscordAdapter]:
    """Run `DiscordAdapter.start()` against `fake` until the block ends, then stop it."""
    settings = with_settings(settings, discord_token=fake.token, **changes)
    adapter = DiscordAdapter(core, settings, edit_interval=edit_interval, shutdown_grace=2.0)
    with patched_discord_endpoints(fake):
        adapter.client._connection.guild_ready_timeout = 0.05
        task = asyncio.create_task(adapter.start())
        try:
            await fake.wait_for(lambda: adapter.client.is_ready() or task.done(),
                                message="the adapter did not become ready")
            assert not task.done(), "start() returned before the client was ready"
            yield adapter
        finally:
            await adapter.stop()
            await asyncio.wait_for(task, 5)
    assert adapter.client.is_closed()
    assert not fake.handler_errors


def channel(fake: FakeDiscord) -> FakeChannel:
    assert fake.default_channel is not None
    return fake.default_channel


def alice(fake: FakeDiscord) -> FakeUser:
    assert fake.default_user is not None
    return fake.default_user


async def mention(fake: FakeDiscord, text: str, where: Any = None,
                  author: FakeUser | None = None) -> dict[str, Any]:
    return await fake.send_user_message(where or channel(fake), author or alice(fake),
                                        f"{fake.bot_user.mention} {text}")


def bot_messages(fake: FakeDiscord, where: Any) -> list[dict[str, Any]]:
    return [m for m in fake.channel_history(where) if int(m["author"]["id"]) == fake.bot_user.id]


async def wait_bot_text(fake: FakeDiscord, where: Any, text: str,
                        timeout: float = 5.0) -> dict[str, Any]:
    """Wait until one of the bot's messages in `where` reads exactly `text`."""
    def found() -> dict[str, Any] | None:
        return next((m for m in bot_messages(fake, where) if m["content"] == text), None)

    result = await fake.wait_for(found, timeout, message=f"bot never said {text!r}")
    assert result is not None
    return result


async def settled(fake: FakeDiscord, adapter: DiscordAdapter) -> None:
    """Wait until no answer is in progress.

    Why: the last streaming edit can already show the whole answer while the core is still
    writing it to history; a follow-up that depends on that history must wait for this.
    """
    await fake.wait_for(lambda: not adapter._tasks, message="an answer never finished")


async def wait_done(handle: InteractionHandle, text: str | None = None,
                    timeout: float = 5.0) -> str:
    """Wait until the deferred response holds the answer (optionally exactly `text`).

    Also checks the command was deferred ("thinking...") within Discord's 3 seconds.
    """
    def done() -> str | None:
        original = handle.original_message
        if original is None or int(original["flags"]) & 128:  # still "thinking..."
            return None
        content = str(original["content"])
        return content if text is None or content == text else None

    result = await handle.fake.wait_for(done, timeout, message=f"/{handle.name} never finished")
    assert result is not None
    assert handle.callbacks[0].json["type"] == 5
    assert handle.callback_delay is not None and handle.callback_delay < 3.0
    return result


def assert_safe_writes(fake: FakeDiscord, asker: FakeUser | None = None) -> None:
    """Every message write carried allowed_mentions that forbid @everyone and roles."""
    writes = fake.message_writes()
    assert writes
    for write in writes:
        allowed = write.message_body.get("allowed_mentions")
        assert allowed is not None, f"{write.method} {write.path} had no allowed_mentions"
        assert allowed["parse"] == []
        assert "roles" not in allowed
        users = [int(u) for u in allowed.get("users", [])]
        assert users in ([], [asker.id] if asker else [])


# ---------------------------------------------------------------------------- mentions


async def test_mention_types_then_replies_and_grows_in_place(
        fake: FakeDiscord, settings: Settings, history: HistoryStore) -> None:
    backend = GatedBackend()
    async with make_core(backend, settings, history) as core, serving(fake, core, settings):
        asked = await mention(fake, "one two three")
        typing = await fake.wait_for_request("POST", route="/channels/{channel_id}/typing")
        await asyncio.to_thread(backend.started.wait, 5)
        assert not fake.message_creates()  # nothing posted before the first token
        backend.gate.set()
        final = await wait_bot_text(fake, channel(fake), "echo: one two three")

    (create,) = fake.message_creates(channel(fake))
    assert int(create.json["message_reference"]["message_id"]) == int(asked["id"])
    assert typing.time < create.time
    edits = fake.message_edits(final["id"])
    shown = [create.json["content"]] + [e.json["content"] for e in edits]
    # The last edit only swaps the Stop button for the finished answer's controls.
    assert shown == ["echo:", "echo: one", "echo: one two", "echo: one two three",
                     "echo: one two three"]
    labels = [[b.get("label") or b["emoji"]["name"] for b in r["json"]["components"][0]
               ["components"]] for r in ({"json": create.json}, {"json": edits[-1].json})]
    assert labels == [["Stop"], ["Regenerate", "👍", "👎"]]
    assert final["message_reference"]["message_id"] == asked["id"]
    # The reply pings the asker, and only the asker.
    assert [m["id"] for m in create.response["mentions"]] == [str(alice(fake).id)]
    assert_safe_writes(fake, alice(fake))
    key = ChannelKey("discord", str(channel(fake).id))
    assert await history.recent(key) == [Turn("user", "Alice", "one two three"),
                                         Turn("assistant", "Bot", "echo: one two three")]


async def test_unaddressed_messages_are_context_and_get_no_answer(
        fake: FakeDiscord, core: ConversationCore, settings: Settings,
        backend: EchoBackend) -> None:
    bob = fake.create_user("bob")
    async with serving(fake, core, settings):
        await fake.send_user_message(channel(fake), bob, "the sky is green today")
        await mention(fake, "what colour is the sky?")
        await wait_bot_text(fake, channel(fake), "echo: what colour is the sky?")
    assert len(fake.message_creates()) == 1
    assert backend.prompts[-1][-1]["content"] == (
        "bob: the sky is green today\nAlice: what colour is the sky?")


async def test_replying_to_the_bot_addresses_it_without_a_ping(
        fake: FakeDiscord, core: ConversationCore, settings: Settings) -> None:
    async with serving(fake, core, settings):
        await mention(fake, "first question")
        answer = await wait_bot_text(fake, channel(fake), "echo: first question")
        await fake.send_user_message(channel(fake), alice(fake), "and a follow-up",
                                     reply_to=answer, mentions=[])
        await wait_bot_text(fake, channel(fake), "echo: and a follow-up")


class AnswersEverything(ConversationCore):
    """A core that also answers unaddressed messages (as it may in a thread it is part of)."""

    async def handle(self, msg: IncomingMessage, **kwargs: Any) -> Reply | None:
        return await super().handle(dataclasses.replace(msg, addressed=True), **kwargs)


async def test_an_answer_to_an_unaddressed_message_is_posted_without_typing(
        fake: FakeDiscord, worker: ModelWorker, history: HistoryStore,
        settings: Settings) -> None:
    core = AnswersEverything(worker=worker, history=history, settings=settings)
    async with serving(fake, core, settings):
        asked = await fake.send_user_message(channel(fake), alice(fake), "no mention here")
        reply = await wait_bot_text(fake, channel(fake), "echo: no mention here")
    assert reply["message_reference"]["message_id"] == asked["id"]
    assert not fake.typing_requests()


async def test_dm_is_answered_without_mention_with_its_own_history(
        fake: FakeDiscord, core: ConversationCore, settings: Settings,
        backend: EchoBackend, history: HistoryStore) -> None:
    async with serving(fake, core, settings) as adapter:
        await mention(fake, "channel secret")
        await wait_bot_text(fake, channel(fake), "echo: channel secret")
        asked = await fake.send_dm(alice(fake), "hello in private")
        dm = await fake.create_dm_channel(alice(fake))
        reply = await wait_bot_text(fake, dm, "echo: hello in private")
        await settled(fake, adapter)
        # Anyone may reset their own DM conversation.
        await fake.send_dm(alice(fake), "/reset")
        await wait_bot_text(fake, dm, "Done: I forgot this conversation (2 messages).")
    assert reply["message_reference"]["message_id"] == asked["id"]
    assert "secret" not in str(backend.prompts[-1])
    assert await history.recent(ChannelKey("discord", str(dm.id))) == []
    assert len(await history.recent(ChannelKey("discord", str(channel(fake).id)))) == 2


async def test_thread_mention_answers_in_the_thread_with_its_own_history(
        fake: FakeDiscord, core: ConversationCore, settings: Settings,
        backend: EchoBackend, history: HistoryStore) -> None:
    async with serving(fake, core, settings) as adapter:
        thread = await fake.create_thread(channel(fake), "side topic")
        await fake.wait_for(lambda: adapter.client.get_channel(thread.id))
        await fake.send_user_message(channel(fake), alice(fake), "a channel-only remark")
        await mention(fake, "in the thread", where=thread)
        await wait_bot_text(fake, thread, "echo: in the thread")
        assert "channel-only" not in str(backend.prompts[-1])
        asked = await fake.invoke_slash_command("ask", {"prompt": "and a slash"}, thread)
        await wait_done(asked)
    assert not fake.message_creates(channel(fake))
    assert "in the thread" in str(backend.prompts[-1])  # the slash command shares the thread
    key = ChannelKey("discord", str(channel(fake).id), str(thread.id))
    assert [t.text for t in await history.recent(key)] == [
        "in the thread", "echo: in the thread", "and a slash", "echo: and a slash"]


async def test_ignores_other_bots_and_its_own_messages(
        fake: FakeDiscord, core: ConversationCore, settings: Settings,
        history: HistoryStore) -> None:
    other_bot = fake.create_user("otherbot", bot=True)
    async with serving(fake, core, settings):
        await mention(fake, "answer me, fellow bot", author=other_bot)
        await mention(fake, "hi")
        await wait_bot_text(fake, channel(fake), "echo: hi")
        # The fake echoes the bot's reply back as MESSAGE_CREATE, like Discord; one more
        # exchange makes sure that echo was processed (events arrive in order).
        await mention(fake, "again")
        await wait_bot_text(fake, channel(fake), "echo: again")
    assert len(fake.message_creates()) == 2
    key = ChannelKey("discord", str(channel(fake).id))
    assert [t.author for t in await history.recent(key)] == ["Alice", "Bot", "Alice", "Bot"]


async def test_allowed_channels_limit_where_it_answers(
        fake: FakeDiscord, core: ConversationCore, settings: Settings) -> None:
    assert fake.default_guild is not None
    async with serving(fake, core, settings,
                       allowed_channels=frozenset({str(channel(fake).id)})) as adapter:
        other = await fake.create_channel(fake.default_guild, "random")
        thread = await fake.create_thread(channel(fake), "allowed thread")
        await fake.wait_for(lambda: adapter.client.get_channel(thread.id))
        await mention(fake, "not here", where=other)
        refused = await fake.invoke_slash_command("help", channel_id=other)
        await mention(fake, "in a thread of an allowed channel", where=thread)
        await fake.send_dm(alice(fake), "DMs are always fine")
        await wait_bot_text(fake, thread, "echo: in a thread of an allowed channel")
        await wait_bot_text(fake, await fake.create_dm_channel(alice(fake)),
                            "echo: DMs are always fine")
        callback = await refused.wait_callback()
    assert not fake.message_creates(other)
    assert callback.json["type"] == 4
    assert callback.json["data"]["content"] == NOT_HERE
    assert callback.json["data"]["flags"] == 64


# ---------------------------------------------------------------------------- safety


async def test_never_pings_everyone_here_or_roles(
        fake: FakeDiscord, settings: Settings, history: HistoryStore) -> None:
    assert fake.default_guild is not None
    mods = await fake.create_role(fake.default_guild, "mods")
    bob = fake.create_user("bob")
    answer = f"Sure! @everyone @here {mods.mention} {bob.mention} {{asker}}"
    backend = ScriptedBackend([])
    async with make_core(backend, settings, history) as core, serving(fake, core, settings):
        backend.pieces = [answer.format(asker=alice(fake).mention)]
        await mention(fake, "please say @everyone and ping the mods")
        await fake.wait_for(lambda: bot_messages(fake, channel(fake)))
        # Also through a slash command (webhook follow-ups).
        handle = await fake.invoke_slash_command("ask", {"prompt": "ping @here"})
        text = await wait_done(handle)
    (posted,) = bot_messages(fake, channel(fake))[:1]
    assert "@everyone" not in posted["content"] and "@\u200beveryone" in posted["content"]
    assert "@here" not in posted["content"] and "@here" not in text
    assert posted["mention_everyone"] is False
    assert posted["mention_roles"] == []
    assert [m["id"] for m in posted["mentions"]] == [str(alice(fake).id)]  # bob not pinged
    assert_safe_writes(fake, alice(fake))


async def test_user_cannot_make_it_ping_by_asking_to_repeat(
        fake: FakeDiscord, core: ConversationCore, settings: Settings) -> None:
    async with serving(fake, core, settings):
        await mention(fake, "repeat after me: @everyone @here")
        reply = await wait_bot_text(fake, channel(fake),
                                    "echo: repeat after me: @\u200beveryone @\u200bhere")
    assert reply["mention_everyone"] is False
    assert_safe_writes(fake, alice(fake))


# ---------------------------------------------------------------------------- long answers


_NOUNS = ("river lantern harbor meadow copper violin glacier orchard falcon marble thistle "
          "compass ember saddle quarry willow beacon tundra pepper anchor").split()
_VERBS = "carries hides bends lights shapes guards echoes warms crosses frames".split()


def varied_paragraph(k: int) -> str:
    """Twenty different sentences (about 890 characters), different for each `k`."""
    return " ".join(f"The {_NOUNS[(i + k) % 20]} {_VERBS[(i + k) % 10]} a "
                    f"{_NOUNS[(i * 7 + k) % 20]} near the {_NOUNS[(i * 11 + 3 * k) % 20]}."
                    for i in range(20)) + "\n\n"


async def test_long_answer_is_split_and_grows_across_parts(
        fake: FakeDiscord, settings: Settings, history: HistoryStore) -> None:
    code = "```python\n" + "".join(f"print({i})\n" for i in range(150)) + "```\n"
    # Paragraphs of about 890 characters that differ: a repeated one would be cut as a loop.
    pieces = [varied_paragraph(1), varied_paragraph(2), code, varied_paragraph(3)]
    backend = ScriptedBackend(pieces)
    async with make_core(backend, settings, history) as core, serving(fake, core, settings):
        asked = await mention(fake, "tell me everything")
        full = "".join(pieces).strip()
        await fake.wait_for(lambda: "".join(
            m["content"] for m in bot_messages(fake, channel(fake))).count("print(") == 150)
    parts = [m["content"] for m in bot_messages(fake, channel(fake))]
    assert len(parts) >= 3
    assert all(len(p) <= 2000 for p in parts)
    assert all(p.count("```") % 2 == 0 for p in parts)  # each part's code block is closed
    rejoined = parts[0]
    for part in parts[1:]:  # undo the fences added at the cuts: the rest is the text itself
        if rejoined.endswith("\n```") and part.startswith("```python\n"):
            rejoined, part = rejoined[:-4], part[len("```python\n"):]
        rejoined += part
    assert rejoined == full
    creates = fake.message_creates(channel(fake))
    assert int(creates[0].json["message_reference"]["message_id"]) == int(asked["id"])
    assert all("message_reference" not in c.json for c in creates[1:])
    assert fake.message_edits()  # the first part grew before the second was posted
    assert_safe_writes(fake, alice(fake))


# ---------------------------------------------------------------------------- slash commands


async def test_slash_commands_are_registered_with_typed_options(
        fake: FakeDiscord, core: ConversationCore, settings: Settings) -> None:
    async with serving(fake, core, settings):
        pass
    commands = {c["name"]: c for c in fake.registered_commands() if c.get("type", 1) == 1}
    assert set(commands) == {"ask", "summarize", "reset", "help", "status", "persona",
                             "settings", "reindex", "forget", "model"}
    assert all(c["description"] for c in commands.values())
    menus = {c["name"] for c in fake.registered_commands() if c.get("type") == 3}
    assert menus == {"Summarize from here", "Summarize this", "Ask about this", "Explain"}
    for command in fake.registered_commands():  # installable by a server or a user
        assert command["integration_types"] == [0, 1]
        assert sorted(command["contexts"]) == [0, 1, 2]
    (prompt,) = commands["ask"]["options"]
    assert (prompt["name"], prompt["type"], prompt["required"]) == ("prompt", 3, True)
    (count,) = commands["summarize"]["options"]
    assert (count["name"], count["type"], count.get("required", False)) == ("messages", 4, False)
    assert (count["min_value"], count["max_value"]) == (1, 500)
    assert "reset" in commands and not commands["reset"]["options"]


async def test_guild_id_registers_commands_in_that_server_only(
        fake: FakeDiscord, core: ConversationCore, settings: Settings) -> None:
    assert fake.default_guild is not None
    async with serving(fake, core, settings, discord_guild_id=str(fake.default_guild.id)):
        handle = await fake.invoke_slash_command("help")
        await wait_done(handle)
    assert fake.registered_commands() == []
    assert {c["name"] for c in fake.registered_commands(fake.default_guild)} == {
        "ask", "summarize", "reset", "help", "status", "persona", "settings", "reindex",
        "forget", "model", "Summarize from here", "Summarize this", "Ask about this", "Explain"}


async def test_slash_ask_defers_within_deadline_then_streams_follow_up(
        fake: FakeDiscord, settings: Settings, history: HistoryStore) -> None:
    backend = GatedBackend()
    async with make_core(backend, settings, history) as core, serving(fake, core, settings):
        handle = await fake.invoke_slash_command("ask", {"prompt": "why is the sky blue?"})
        callback = await handle.wait_callback(timeout=3)
        await asyncio.to_thread(backend.started.wait, 5)
        assert callback.json["type"] == 5  # deferred: "Bot is thinking..."
        assert handle.callback_delay is not None and handle.callback_delay < 3.0
        assert not handle.followups
        backend.gate.set()
        text = await wait_done(handle, "> why is the sky blue?\necho: why is the sky blue?")
    assert text.startswith("> why is the sky blue?\n")
    assert handle.followups[0].json["content"] == "> why is the sky blue?\necho:"
    assert len(handle.requests) > 2  # callback, first follow-up, then edits in place
    assert_safe_writes(fake, alice(fake))
    key = ChannelKey("discord", str(channel(fake).id))
    assert (await history.recent(key))[0] == Turn("user", "Alice", "why is the sky blue?")


async def test_slash_summarize_reads_history_from_discord(
        fake: FakeDiscord, core: ConversationCore, settings: Settings,
        backend: EchoBackend) -> None:
    bob = fake.create_user("bob", global_name="Bob")
    # Posted before the bot connects: it never saw them, so they must come from Discord.
    await fake.send_user_message(channel(fake), alice(fake), "shall we ship on friday?")
    await fake.send_user_message(channel(fake), bob, "only if the tests pass")
    await fake.send_user_message(channel(fake), alice(fake), "agreed, friday it is")
    async with serving(fake, core, settings):
        handle = await fake.invoke_slash_command("summarize", {"messages": 2})
        text = await wait_done(handle)
        default = await fake.invoke_slash_command("summarize")
        default_text = await wait_done(default)
    assert text == "Summary of the last 2 messages:\necho: agreed, friday it is"
    assert backend.prompts[0][-1]["content"] == (
        "Bob: only if the tests pass\nAlice: agreed, friday it is")
    assert default_text.startswith("Summary of the last 4 messages:")  # incl. its own answer
    read = fake.find_requests("GET", route=MESSAGES_ROUTE)
    assert read and read[0].query["limit"] == "7"


async def test_mention_summarize_reads_history_too(
        fake: FakeDiscord, core: ConversationCore, settings: Settings,
        backend: EchoBackend) -> None:
    await fake.send_user_message(channel(fake), alice(fake), "before the bot came")
    async with serving(fake, core, settings):
        await mention(fake, "/summarize 5")
        await wait_bot_text(fake, channel(fake),
                            "Summary of the last 1 message:\necho: before the bot came")


async def test_slash_reset_needs_manage_messages(
        fake: FakeDiscord, core: ConversationCore, settings: Settings,
        history: HistoryStore) -> None:
    key = ChannelKey("discord", str(channel(fake).id))
    async with serving(fake, core, settings):
        await mention(fake, "remember this")
        await wait_bot_text(fake, channel(fake), "echo: remember this")
        denied = await fake.invoke_slash_command("reset")
        denied_text = await wait_done(denied)
        assert len(await history.recent(key)) == 2
        allowed = await fake.invoke_slash_command(
            "reset", member_permissions=Perm.VIEW_CHANNEL | Perm.MANAGE_MESSAGES)
        allowed_text = await wait_done(allowed)
        dm = await fake.create_dm_channel(alice(fake))
        in_dm = await fake.invoke_slash_command("reset", channel_id=dm)
        dm_text = await wait_done(in_dm)
    assert denied_text.startswith("Only members who can manage messages")
    assert allowed_text == "Done: I forgot this conversation (2 messages)."
    assert dm_text == "Done: I forgot this conversation (0 messages)."
    assert await history.recent(key) == []


async def test_persona_and_settings_need_manage_messages(
        fake: FakeDiscord, core: ConversationCore, settings: Settings,
        history: HistoryStore, backend: EchoBackend) -> None:
    key = ChannelKey("discord", str(channel(fake).id))
    admin = Perm.VIEW_CHANNEL | Perm.MANAGE_MESSAGES
    async with serving(fake, core, settings):
        denied = await wait_done(await fake.invoke_slash_command("persona", {"name": "writer"}))
        denied_settings = await wait_done(await fake.invoke_slash_command(
            "settings", {"setting": "prompt", "value": "Be rude."}))
        assert await history.channel_settings(key) == type(
            await history.channel_settings(key))()
        allowed = await wait_done(await fake.invoke_slash_command(
            "persona", {"name": "writer"}, member_permissions=admin))
        prompt_set = await wait_done(await fake.invoke_slash_command(
            "settings", {"setting": "prompt", "value": "You are a pirate."},
            member_permissions=admin))
        listing = await wait_done(await fake.invoke_slash_command("persona"))
        await mention(fake, "ahoy")
        await wait_bot_text(fake, channel(fake), "echo: ahoy")
    assert denied.startswith("Only members who can manage messages")
    assert denied_settings.startswith("Only members who can manage messages")
    assert allowed == "This channel now uses the **writer** persona."
    assert prompt_set == "Saved: set."
    assert "uses the **writer** persona" in listing
    saved = await history.channel_settings(key)
    assert saved.persona == "writer" and saved.system_prompt == "You are a pirate."
    assert backend.prompts[-1][0]["content"] == "You are a pirate."


async def test_answers_unmentioned_only_in_its_own_threads(
        fake: FakeDiscord, core: ConversationCore, settings: Settings,
        backend: EchoBackend) -> None:
    async with serving(fake, core, settings) as adapter:
        own = await fake.create_thread(channel(fake), "bot's thread", owner=fake.bot_user)
        other = await fake.create_thread(channel(fake), "people's thread", owner=alice(fake))
        await fake.wait_for(lambda: adapter.client.get_channel(own.id)
                            and adapter.client.get_channel(other.id))
        await fake.send_user_message(other, alice(fake), "just people talking")
        await fake.send_user_message(own, alice(fake), "no mention needed here")
        await wait_bot_text(fake, own, "echo: no mention needed here")
        await mention(fake, "now you're in", where=other)
        await wait_bot_text(fake, other, "echo: now you're in")
        await settled(fake, adapter)  # the bot's turn is in history: it takes part now
        await fake.send_user_message(other, alice(fake), "and a follow-up")
        await wait_bot_text(fake, other, "echo: and a follow-up")
    assert [m["content"] for m in bot_messages(fake, other)] == [
        "echo: now you're in", "echo: and a follow-up"]
    assert len(backend.prompts) == 3


async def test_slash_help_and_status_answer_privately(
        fake: FakeDiscord, core: ConversationCore, settings: Settings) -> None:
    async with serving(fake, core, settings):
        help_ = await fake.invoke_slash_command("help")
        status = await fake.invoke_slash_command("status")
        help_text = await wait_done(help_)
        status_text = await wait_done(status)
    for handle in (help_, status):
        callback = handle.callbacks[0].json
        assert callback["type"] == 5 and callback["data"]["flags"] == 64  # ephemeral
        assert handle.followups[0].json["flags"] == 64
    assert "/ask <question>" in help_text and "/summarize" in help_text
    assert status_text.startswith("Model: fake on cpu")


# ---------------------------------------------------------------------------- failures


async def test_busy_queue_answers_briefly(
        fake: FakeDiscord, settings: Settings, history: HistoryStore) -> None:
    assert fake.default_guild is not None
    backend = GatedBackend()
    async with make_core(backend, settings, history, max_pending=1) as core, \
            serving(fake, core, settings):
        second = await fake.create_channel(fake.default_guild, "second")
        third = await fake.create_channel(fake.default_guild, "third")
        await mention(fake, "first")
        await asyncio.to_thread(backend.started.wait, 5)
        await mention(fake, "second", where=second)  # waits in the queue
        await fake.wait_for(lambda: core.worker.queue_depth == 2)
        await mention(fake, "third", where=third)
        # (It may show "Queued: 2 ahead of you…" for a moment: the queue is checked after.)
        await fake.wait_for(lambda: [m for m in bot_messages(fake, third)
                                     if m["content"].startswith("I'm busy")])
        backend.gate.set()
        await wait_bot_text(fake, channel(fake), "echo: first")
        await wait_bot_text(fake, second, "echo: second")


async def test_generation_error_gets_an_apology_and_is_logged(
        fake: FakeDiscord, settings: Settings, history: HistoryStore,
        caplog: pytest.LogCaptureFixture) -> None:
    async with make_core(FailingBackend(), settings, history) as core, \
            serving(fake, core, settings):
        await mention(fake, "boom")
        await wait_bot_text(fake, channel(fake), APOLOGY)
        await mention(fake, "still there?")
        await wait_bot_text(fake, channel(fake), "echo: still there?")
    failures = [r for r in caplog.records if r.name == "bot.core.conversation" and r.exc_info]
    assert failures and "exploded" in str(failures[0].exc_info[1])


async def test_missing_send_permission_is_logged_without_crashing(
        fake: FakeDiscord, core: ConversationCore, settings: Settings,
        caplog: pytest.LogCaptureFixture) -> None:
    assert fake.default_guild is not None
    caplog.set_level(logging.WARNING, logger="bot.platforms.discord")
    async with serving(fake, core, settings) as adapter:
        # A refused send (Discord says 403 although the cache said yes).
        fake.fail_next("POST", f"/channels/{channel(fake).id}/messages", 403)
        await mention(fake, "first try")
        await fake.wait_for(lambda: "cannot post the answer" in caplog.text)
        # A channel the bot may read but not write: it does not even try.
        readonly = await fake.create_channel(
            fake.default_guild, "announcements",
            overwrites=[{"id": fake.default_guild.id, "type": 0, "deny": Perm.SEND_MESSAGES}])
        await fake.wait_for(lambda: adapter.client.get_channel(readonly.id))
        await mention(fake, "hello?", where=readonly)
        await fake.wait_for(lambda: "missing the permission to send" in caplog.text)
        # The bot keeps working.
        await mention(fake, "second try")
        await wait_bot_text(fake, channel(fake), "echo: second try")
    assert [r.status for r in fake.message_creates()] == [403, 200]
    assert not fake.typing_requests(readonly)
    assert "#announcements" in caplog.text


async def test_refused_edit_is_logged_and_the_answer_still_completes(
        fake: FakeDiscord, settings: Settings, history: HistoryStore,
        caplog: pytest.LogCaptureFixture) -> None:
    backend = GatedBackend()
    async with make_core(backend, settings, history) as core, serving(fake, core, settings):
        fake.fail_next("PATCH", EDIT_ROUTE, 400)
        await mention(fake, "one two three")
        await asyncio.to_thread(backend.started.wait, 5)
        backend.gate.set()
        await wait_bot_text(fake, channel(fake), "echo: one two three")
    assert [r.status for r in fake.message_edits()][0] == 400
    assert "Discord refused a message" in caplog.text


async def test_answers_even_if_the_question_was_deleted(
        fake: FakeDiscord, settings: Settings, history: HistoryStore) -> None:
    backend = GatedBackend()
    async with make_core(backend, settings, history) as core, serving(fake, core, settings):
        asked = await mention(fake, "never mind")
        await asyncio.to_thread(backend.started.wait, 5)
        await fake.delete_user_message(asked)
        backend.gate.set()
        reply = await wait_bot_text(fake, channel(fake), "echo: never mind")
    assert "message_reference" not in reply


async def test_missing_message_content_intent_is_explained_and_start_returns(
        settings: Settings, core: ConversationCore, caplog: pytest.LogCaptureFixture) -> None:
    async with FakeDiscord(privileged_intents_allowed=False) as fake:
        adapter = DiscordAdapter(core, with_settings(settings, discord_token=fake.token))
        with patched_discord_endpoints(fake):
            await asyncio.wait_for(adapter.start(), 5)  # returns instead of raising
        await adapter.stop()
    assert adapter.client.is_closed()
    assert fake.connections[0].close_code == 4014
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [INTENT_HELP]
    assert "Privileged Gateway Intents" in INTENT_HELP and "MESSAGE CONTENT" in INTENT_HELP
    assert fake.token not in caplog.text


async def test_bad_token_is_explained_and_start_returns(
        settings: Settings, core: ConversationCore, fake: FakeDiscord,
        caplog: pytest.LogCaptureFixture) -> None:
    adapter = DiscordAdapter(core, with_settings(settings, discord_token="not-the-token"))
    with patched_discord_endpoints(fake):
        await asyncio.wait_for(adapter.start(), 5)
    assert adapter.client.is_closed()
    assert "rejected DISCORD_TOKEN" in caplog.text and "not-the-token" not in caplog.text


async def test_reconnects_and_keeps_answering(
        fake: FakeDiscord, core: ConversationCore, settings: Settings) -> None:
    async with serving(fake, core, settings):
        await mention(fake, "before")
        await wait_bot_text(fake, channel(fake), "echo: before")
        assert await fake.disconnect_gateway(code=4000) == 1
        await mention(fake, "while away")  # replayed after RESUME
        await wait_bot_text(fake, channel(fake), "echo: while away")
        await mention(fake, "after")
        await wait_bot_text(fake, channel(fake), "echo: after")
    assert len(fake.identifies) == 1 and len(fake.resumes) == 1


async def test_stop_cancels_answers_that_outlive_the_grace_period(
        fake: FakeDiscord, settings: Settings, history: HistoryStore,
        caplog: pytest.LogCaptureFixture) -> None:
    backend = GatedBackend()
    async with make_core(backend, settings, history) as core, serving(fake, core, settings) \
            as adapter:
        adapter.shutdown_grace = 0.05
        asked = await mention(fake, "a slow question")
        await asyncio.to_thread(backend.started.wait, 5)
        await fake.wait_for(lambda: adapter._tasks)
    assert not adapter._tasks
    assert "cancelled 1 Discord answer" in caplog.text
    # Nothing was posted yet ("typing" only): the asker is told instead of left waiting.
    (told,) = bot_messages(fake, channel(fake))
    assert told["content"] == RESTARTING
    assert told["message_reference"]["message_id"] == asked["id"]


async def test_send_posts_a_core_reply_safely(
        fake: FakeDiscord, core: ConversationCore, settings: Settings) -> None:
    async with serving(fake, core, settings) as adapter:
        asked = await fake.send_user_message(channel(fake), alice(fake), "just talking")
        key = ChannelKey("discord", str(channel(fake).id))
        await adapter.send(Reply(key, "Attention @everyone: " + "x" * 2100,
                                 reply_to=asked["id"]))
    first, second = fake.message_creates(channel(fake))
    assert first.json["content"].startswith("Attention @\u200beveryone")
    assert int(first.json["message_reference"]["message_id"]) == int(asked["id"])
    assert "message_reference" not in second.json
    assert_safe_writes(fake)


# ---------------------------------------------------------------------------- LiveReply


class FakeSent:
    """Stands in for a posted discord.Message: records edits."""

    def __init__(self, log: list[tuple[str, int, str]], index: int) -> None:
        self.log = log
        self.index = index

    async def edit(self, *, content: str, allowed_mentions: discord.AllowedMentions) -> None:
        self.log.append(("edit", self.index, content))

    async def delete(self) -> None:
        self.log.append(("delete", self.index, ""))


def live_reply(clock: Callable[[], float], interval: float = 1.0,
               ) -> tuple[LiveReply, list[tuple[str, int, str]]]:
    log: list[tuple[str, int, str]] = []

    async def post(index: int, text: str) -> Any:
        log.append(("post", index, text))
        return FakeSent(log, index)

    reply = LiveReply(post, allowed_mentions=safe_mentions(1),
                      throttle=EditThrottle(interval, clock=clock), where="#test")
    return reply, log


async def test_live_reply_edits_at_most_once_per_interval_then_finishes() -> None:
    now = [0.0]
    reply, log = live_reply(lambda: now[0])
    for text in ("a", "a b", "a b c"):
        await reply.progress(text)
    now[0] = 1.0
    await reply.progress("a b c d")
    await reply.progress("a b c d e")
    await reply.finish("a b c d e f")
    assert log == [("post", 0, "a"), ("edit", 0, "a b c d"), ("edit", 0, "a b c d e f")]


async def test_live_reply_skips_a_final_edit_that_changes_nothing() -> None:
    reply, log = live_reply(lambda: 0.0, interval=0.0)
    await reply.progress("done")
    await reply.finish("done")
    assert log == [("post", 0, "done")]


async def test_live_reply_grows_into_parts_and_drops_stale_ones() -> None:
    reply, log = live_reply(lambda: 0.0, interval=0.0)
    long = "word " * 500  # 2500 characters
    await reply.progress(long)
    assert [entry[:2] for entry in log] == [("post", 0), ("post", 1)]
    await reply.finish("short now")
    assert log[2:] == [("edit", 0, "short now"), ("delete", 1, "")]


async def test_live_reply_gives_up_after_forbidden() -> None:
    calls: list[str] = []

    class Response:
        status = 403
        reason = "Forbidden"

    async def post(index: int, text: str) -> Any:
        calls.append(text)
        raise discord.Forbidden(Response(), {"code": 50013, "message": "Missing Permissions"})

    reply = LiveReply(post, allowed_mentions=safe_mentions(), throttle=EditThrottle(0.0),
                      where="#test")
    await reply.progress("a")
    await reply.progress("a b")
    await reply.finish("a b c")
    assert calls == ["a"] and reply.failed


# ---------------------------------------------------------------------------- queue, stale, stop


class StallingBackend(EchoBackend):
    """Writes half an answer, then stalls until the worker stops it: an answer that is still
    being written when the bot shuts down."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = threading.Event()

    def generate(self, request: GenerationRequest, emit: Callable[[str], None],
                 should_stop: Callable[[], bool]) -> str:
        self.prompts.append(request.prompt)
        emit("half of")
        emit(" an answer")
        self.stalled.set()
        while not should_stop():
            self.stalled.wait(0.01)
        return "half of an answer"


async def test_waiting_requests_show_their_place_in_the_queue(
        fake: FakeDiscord, settings: Settings, history: HistoryStore) -> None:
    assert fake.default_guild is not None
    backend = GatedBackend()
    async with make_core(backend, settings, history) as core, serving(fake, core, settings):
        second = await fake.create_channel(fake.default_guild, "second")
        third = await fake.create_channel(fake.default_guild, "third")
        await mention(fake, "first")
        await asyncio.to_thread(backend.started.wait, 5)
        await mention(fake, "second", where=second)
        queued = await wait_bot_text(fake, second, "Queued: 1 ahead of you…")
        handle = await fake.invoke_slash_command("ask", {"prompt": "third"}, third)
        await wait_done(handle, "> third\nQueued: 2 ahead of you…")
        backend.gate.set()
        answer = await wait_bot_text(fake, second, "echo: second")
        await wait_done(handle, "> third\necho: third")
        await wait_bot_text(fake, channel(fake), "echo: first")
    assert answer["id"] == queued["id"], "the queue line grew into the answer"
    assert len(bot_messages(fake, second)) == 1
    assert int(queued["message_reference"]["message_id"]) > 0  # a reply to the question
    assert_safe_writes(fake, alice(fake))


async def test_a_mention_deleted_before_its_turn_is_never_answered(
        fake: FakeDiscord, settings: Settings, history: HistoryStore,
        monkeypatch: pytest.MonkeyPatch) -> None:
    backend = GatedBackend()
    bob = fake.create_user("bob")
    deleted: list[tuple[ChannelKey, str]] = []
    async with make_core(backend, settings, history) as core, \
            serving(fake, core, settings) as adapter:
        original = core.message_deleted

        def spy(key: ChannelKey, message_id: str) -> None:
            deleted.append((key, message_id))
            original(key, message_id)

        monkeypatch.setattr(core, "message_deleted", spy)
        await mention(fake, "keep the model busy")
        await asyncio.to_thread(backend.started.wait, 5)
        asked = await mention(fake, "never mind", author=bob)  # waits for alice's answer
        await fake.wait_for(lambda: int(asked["id"]) in adapter._pending)
        await fake.delete_user_message(asked)
        await fake.wait_for(lambda: deleted)
        backend.gate.set()
        await wait_bot_text(fake, channel(fake), "echo: keep the model busy")
        await settled(fake, adapter)
        await mention(fake, "still there?", author=bob)
        await wait_bot_text(fake, channel(fake), "echo: still there?")
    key = ChannelKey("discord", str(channel(fake).id))
    assert deleted == [(key, asked["id"])]
    assert [m["content"] for m in bot_messages(fake, channel(fake))] == [
        "echo: keep the model busy", "echo: still there?"]
    assert len(backend.prompts) == 2
    assert [t.text for t in await history.recent(key)] == [
        "keep the model busy", "echo: keep the model busy", "still there?",
        "echo: still there?"]


async def test_stop_marks_answers_cut_off_by_the_restart(
        fake: FakeDiscord, settings: Settings, history: HistoryStore,
        caplog: pytest.LogCaptureFixture) -> None:
    assert fake.default_guild is not None
    backend = StallingBackend()
    async with make_core(backend, settings, history) as core:
        async with serving(fake, core, settings) as adapter:
            adapter.shutdown_grace = 0.05
            second = await fake.create_channel(fake.default_guild, "second")
            await mention(fake, "a long story")
            await wait_bot_text(fake, channel(fake), "half of an answer")
            handle = await fake.invoke_slash_command("ask", {"prompt": "and another"}, second)
            await wait_done(handle, "> and another\nQueued: 1 ahead of you…")
        # The block's end ran stop(): both answers outlived the grace period.
        assert adapter.client.is_closed()
    (cut,) = bot_messages(fake, channel(fake))
    assert cut["content"] == "half of an answer" + SHUTDOWN_MARK
    assert handle.original_message is not None
    assert handle.original_message["content"] == "> and another\n" + RESTARTING
    assert "cancelled 2 Discord answer(s)" in caplog.text
