"""Smoke tests: the real discord.py client against tests.fakes.discord_server.FakeDiscord.

Why: the Discord adapter's tests rely on this fake behaving like Discord as far as
discord.py can tell; these tests pin down each capability the adapter tests will use
(login/ready, messages, replies/edits/typing, slash commands, DMs, resume, error paths).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import discord
import pytest
from discord import app_commands
from discord.ext import commands
from discord.gateway import DiscordWebSocket
from discord.http import Route

from tests.fakes.discord_server import (
    FakeDiscord,
    Perm,
    patched_discord_endpoints,
    run_client,
)


def _intents(*, message_content: bool = True) -> discord.Intents:
    intents = discord.Intents.default()
    intents.message_content = message_content
    return intents


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server


def _collecting_client(**kwargs: object) -> tuple[discord.Client, list[discord.Message]]:
    """A plain Client that appends every on_message to a list."""
    kwargs.setdefault("intents", _intents())
    client = discord.Client(**kwargs)  # type: ignore[arg-type]
    received: list[discord.Message] = []

    @client.event
    async def on_message(message: discord.Message) -> None:
        received.append(message)

    return client, received


async def test_client_logs_in_becomes_ready_and_sees_guild(fake: FakeDiscord) -> None:
    original_base, original_gateway = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    client, _ = _collecting_client()
    ready: list[bool] = []

    @client.event
    async def on_ready() -> None:
        ready.append(True)

    assert fake.default_guild and fake.default_channel
    async with run_client(fake, client):
        await client.wait_until_ready()
        await fake.wait_for(lambda: ready)
        assert client.user is not None and client.user.id == fake.bot_user.id
        assert client.application_id == fake.application_id
        guild = client.get_guild(fake.default_guild.id)
        assert guild is not None and guild.name == "Fake Guild"
        channel = guild.get_channel(fake.default_channel.id)
        assert isinstance(channel, discord.TextChannel) and channel.name == "general"
        assert channel.permissions_for(guild.me).send_messages
        # discord.py asked for zlib-stream and decoded our compressed frames.
        assert fake.connections[0].compress == "zlib-stream"
        assert fake.identifies[0]["intents"] == client.intents.value
        assert [r.path for r in fake.requests] == ["/users/@me", "/oauth2/applications/@me"]
        assert not fake.unhandled_requests
    assert client.is_closed()
    assert (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY) == (original_base, original_gateway)


async def test_message_create_resolves_author_mentions_channel_and_thread(
    fake: FakeDiscord,
) -> None:
    assert fake.default_channel and fake.default_user and fake.default_guild
    client, received = _collecting_client()
    bob = fake.create_user("bob")
    async with run_client(fake, client):
        thread = await fake.create_thread(fake.default_channel, "side topic")
        await fake.wait_for(lambda: client.get_channel(thread.id))

        await fake.send_user_message(
            fake.default_channel,
            fake.default_user,
            f"{fake.bot_user.mention} hello, and {bob.mention}",
        )
        await fake.send_user_message(thread, bob, "inside the thread")
        await fake.wait_for(lambda: len(received) == 2)

    first, second = received
    assert first.content == f"<@{fake.bot_user.id}> hello, and <@{bob.id}>"
    assert isinstance(first.author, discord.Member)
    assert first.author.id == fake.default_user.id and first.author.name == "alice"
    assert {m.id for m in first.mentions} == {fake.bot_user.id, bob.id}
    assert client.user is not None and client.user.mentioned_in(first)
    assert first.guild is not None and first.guild.id == fake.default_guild.id
    assert isinstance(first.channel, discord.TextChannel)
    assert first.channel.id == fake.default_channel.id

    assert isinstance(second.channel, discord.Thread)
    assert second.channel.id == thread.id
    assert second.channel.parent_id == fake.default_channel.id
    assert second.content == "inside the thread" and second.author.id == bob.id


async def test_content_is_hidden_without_message_content_intent(fake: FakeDiscord) -> None:
    assert fake.default_channel and fake.default_user
    client, received = _collecting_client(intents=_intents(message_content=False))
    async with run_client(fake, client):
        await fake.send_user_message(fake.default_channel, fake.default_user, "plain chatter")
        await fake.send_user_message(
            fake.default_channel, fake.default_user, f"{fake.bot_user.mention} ping"
        )
        await fake.wait_for(lambda: len(received) == 2)
    assert received[0].content == ""
    assert received[1].content == f"<@{fake.bot_user.id}> ping"


async def test_send_reply_edit_delete_and_typing_are_recorded(fake: FakeDiscord) -> None:
    assert fake.default_channel and fake.default_user
    client, received = _collecting_client(allowed_mentions=discord.AllowedMentions.none())
    done: list[discord.Message] = []

    @client.event
    async def on_message(message: discord.Message) -> None:
        if message.author == client.user:
            return  # the fake echoes the bot's own messages, like Discord
        async with message.channel.typing():
            reply = await message.reply("thinking...")
            reply = await reply.edit(content="thinking... done")
        extra = await message.channel.send("bye")
        await extra.delete()
        done.append(reply)

    async with run_client(fake, client):
        user_msg = await fake.send_user_message(fake.default_channel, fake.default_user, "hi")
        await fake.wait_for(lambda: done)
        history = [m async for m in done[0].channel.history(limit=10)]

    reply = done[0]
    creates = fake.message_creates(fake.default_channel)
    assert [r.json["content"] for r in creates] == ["thinking...", "bye"]
    assert int(creates[0].json["message_reference"]["message_id"]) == int(user_msg["id"])
    assert len(fake.message_edits(reply)) == 1
    assert fake.message_edits(reply)[0].json["content"] == "thinking... done"
    writes = fake.message_writes()
    assert len(writes) == 3
    assert all(w.message_body["allowed_mentions"] == {"parse": []} for w in writes)
    assert fake.typing_requests(fake.default_channel)
    assert fake.find_requests("DELETE", route="/channels/{channel_id}/messages/{message_id}")
    # What the fake stored (and what history returns, newest first).
    assert [m["content"] for m in fake.channel_history(fake.default_channel)] == [
        "hi",
        "thinking... done",
    ]
    assert [m.content for m in history] == ["thinking... done", "hi"]
    assert reply.reference is not None and reply.reference.message_id == int(user_msg["id"])
    assert reply.mentions == []  # allowed_mentions.none() suppressed the reply ping


async def test_slash_command_syncs_and_defers_then_follows_up(fake: FakeDiscord) -> None:
    assert fake.default_guild
    bot = commands.Bot(
        command_prefix="!", intents=_intents(), allowed_mentions=discord.AllowedMentions.none()
    )
    completed: list[str] = []

    @bot.tree.command(name="ask", description="Ask the model something")
    @app_commands.describe(prompt="What to ask")
    async def ask(interaction: discord.Interaction, prompt: str, count: int = 1) -> None:
        await interaction.response.defer(thinking=True)
        await interaction.followup.send(f"answer to {prompt!r} x{count}")

    @bot.event
    async def on_app_command_completion(
        interaction: discord.Interaction, command: app_commands.Command[Any, ..., Any]
    ) -> None:
        completed.append(command.name)

    guild_obj = discord.Object(id=fake.default_guild.id)
    async with run_client(fake, bot):
        synced = await bot.tree.sync()
        bot.tree.copy_global_to(guild=guild_obj)
        await bot.tree.sync(guild=guild_obj)
        assert [c.name for c in synced] == ["ask"]
        assert fake.find_requests("PUT", route="/applications/{application_id}/commands")
        assert fake.find_requests(
            "PUT", route="/applications/{application_id}/guilds/{guild_id}/commands"
        )
        (registered,) = fake.registered_commands()
        assert [o["name"] for o in registered["options"]] == ["prompt", "count"]
        assert fake.registered_commands(fake.default_guild)[0]["name"] == "ask"

        handle = await fake.invoke_slash_command("ask", {"prompt": "why?", "count": 2})
        callback = await handle.wait_callback(timeout=3)
        followups = await handle.wait_followups()
        await fake.wait_for(lambda: completed)

    assert callback.json["type"] == 5
    assert handle.callback_delay is not None and handle.callback_delay < 3.0
    assert followups[0].json["content"] == "answer to 'why?' x2"
    assert followups[0].json["allowed_mentions"] == {"parse": []}
    # The first followup after a deferral replaces the "thinking..." message.
    assert handle.original_message is not None
    assert handle.original_message["content"] == "answer to 'why?' x2"
    assert handle.payload["data"]["guild_id"] == str(fake.default_guild.id)
    assert completed == ["ask"]


async def test_dm_roundtrip(fake: FakeDiscord) -> None:
    assert fake.default_user
    client, received = _collecting_client()
    replies: list[discord.Message] = []

    @client.event
    async def on_message(message: discord.Message) -> None:
        received.append(message)
        if message.author != client.user:
            replies.append(await message.reply("hello from the bot"))

    async with run_client(fake, client):
        await fake.send_dm(fake.default_user, "psst")
        await fake.wait_for(lambda: replies)
        user = await client.fetch_user(fake.default_user.id)
        await user.send("a bot-initiated DM")
        dm = await fake.create_dm_channel(fake.default_user)
        await fake.wait_for(lambda: len(fake.channel_history(dm)) == 3)

    incoming = received[0]
    assert incoming.guild is None and isinstance(incoming.channel, discord.DMChannel)
    assert incoming.content == "psst" and incoming.author.id == fake.default_user.id
    assert fake.message_creates(dm)[0].json["content"] == "hello from the bot"
    assert fake.find_requests("POST", "/users/@me/channels")
    assert [m["content"] for m in fake.channel_history(dm)] == [
        "psst",
        "hello from the bot",
        "a bot-initiated DM",
    ]


async def test_forced_disconnect_resumes_and_keeps_delivering(fake: FakeDiscord) -> None:
    assert fake.default_channel and fake.default_user
    client, received = _collecting_client()
    resumed: list[bool] = []

    @client.event
    async def on_resumed() -> None:
        resumed.append(True)

    async with run_client(fake, client):
        assert await fake.disconnect_gateway(code=4000) == 1
        # Sent while the socket is down: must be replayed after RESUME.
        await fake.send_user_message(fake.default_channel, fake.default_user, "while away")
        await fake.wait_for(lambda: resumed and received)
        await fake.send_user_message(fake.default_channel, fake.default_user, "after resume")
        await fake.wait_for(lambda: len(received) == 2)

    assert [m.content for m in received] == ["while away", "after resume"]
    assert len(fake.identifies) == 1 and len(fake.resumes) == 1
    assert fake.connections[0].close_code == 4000
    assert fake.connections[1].path == "/resume"  # READY's resume_gateway_url was used


async def test_missing_privileged_intent_raises_4014() -> None:
    async with FakeDiscord(privileged_intents_allowed=False) as fake:
        client = discord.Client(intents=_intents(message_content=True))
        with pytest.raises(discord.PrivilegedIntentsRequired):
            async with run_client(fake, client):
                pass
        assert client.is_closed()
        assert fake.connections[0].close_code == 4014


async def test_missing_privileged_intent_raises_from_start() -> None:
    async with FakeDiscord(privileged_intents_allowed=False) as fake:
        client = discord.Client(intents=_intents(message_content=True))
        with patched_discord_endpoints(fake):
            try:
                with pytest.raises(discord.PrivilegedIntentsRequired):
                    await asyncio.wait_for(client.start(fake.token), 5)
            finally:
                await client.close()  # start() raises without closing the HTTP session


async def test_forbidden_and_permission_overwrites_raise_forbidden(fake: FakeDiscord) -> None:
    assert fake.default_channel and fake.default_guild
    client, _ = _collecting_client()
    async with run_client(fake, client):
        channel = client.get_channel(fake.default_channel.id)
        assert isinstance(channel, discord.TextChannel)
        fake.fail_next("POST", f"/channels/{channel.id}/messages", 403)
        with pytest.raises(discord.Forbidden) as excinfo:
            await channel.send("nope")
        assert excinfo.value.code == 50013
        await channel.send("works again")

        readonly = await fake.create_channel(
            fake.default_guild,
            "announcements",
            overwrites=[{"id": fake.default_guild.id, "type": 0, "deny": Perm.SEND_MESSAGES}],
        )
        ro = await fake.wait_for(lambda: client.get_channel(readonly.id))
        assert isinstance(ro, discord.TextChannel)
        assert not ro.permissions_for(ro.guild.me).send_messages
        with pytest.raises(discord.Forbidden):
            await ro.send("blocked")

    statuses = [r.status for r in fake.message_creates()]
    assert statuses == [403, 200, 403]


async def test_rate_limit_is_retried_by_the_client(fake: FakeDiscord) -> None:
    assert fake.default_channel
    client, _ = _collecting_client()
    async with run_client(fake, client):
        channel = client.get_channel(fake.default_channel.id)
        assert isinstance(channel, discord.TextChannel)
        fake.fail_next("POST", "/channels/{channel_id}/messages", 429, retry_after=0.05)
        message = await channel.send("eventually")
    assert message.content == "eventually"
    assert [r.status for r in fake.message_creates()] == [429, 200]


async def test_unknown_route_and_validation_errors(fake: FakeDiscord) -> None:
    assert fake.default_channel
    client, _ = _collecting_client()
    async with run_client(fake, client):
        with pytest.raises(discord.NotFound):
            await client.http.request(Route("GET", "/no/such/route"))
        channel = client.get_channel(fake.default_channel.id)
        assert isinstance(channel, discord.TextChannel)
        with pytest.raises(discord.HTTPException) as excinfo:
            await channel.send("x" * 2001)
        assert excinfo.value.code == 50035
    assert [r.path for r in fake.unhandled_requests] == ["/no/such/route"]
    assert not fake.handler_errors


async def test_late_interaction_ack_is_rejected() -> None:
    async with FakeDiscord(interaction_ack_timeout=0.05) as fake:
        bot = commands.Bot(command_prefix="!", intents=_intents())
        errors: list[BaseException] = []

        @bot.tree.command(name="slow", description="Too slow to ack")
        async def slow(interaction: discord.Interaction) -> None:
            await asyncio.sleep(0.2)
            await interaction.response.defer()

        @bot.tree.error
        async def on_tree_error(
            interaction: discord.Interaction, error: app_commands.AppCommandError
        ) -> None:
            errors.append(error)

        async with run_client(fake, bot):
            await bot.tree.sync()
            handle = await fake.invoke_slash_command("slow")
            await fake.wait_for(lambda: errors)

    assert isinstance(errors[0], app_commands.CommandInvokeError)
    assert isinstance(errors[0].original, discord.NotFound)
    assert errors[0].original.code == 10062
    assert handle.callbacks[0].status == 404


async def test_attachments_roundtrip(fake: FakeDiscord) -> None:
    assert fake.default_channel and fake.default_user
    client, received = _collecting_client()
    async with run_client(fake, client):
        await fake.send_user_message(
            fake.default_channel, fake.default_user, "see file", attachments=[("notes.txt", b"hi")]
        )
        await fake.wait_for(lambda: received)
        incoming = received[0]
        assert await incoming.attachments[0].read() == b"hi"
        sent = await incoming.channel.send(
            "long answer", file=discord.File(io.BytesIO(b"a" * 3000), filename="answer.md")
        )
    (upload,) = fake.message_creates()
    assert upload.uploads == [("answer.md", b"a" * 3000)]
    assert upload.json["content"] == "long answer"
    assert sent.attachments[0].filename == "answer.md" and sent.attachments[0].size == 3000


async def test_slash_command_message_response_and_original_edit(fake: FakeDiscord) -> None:
    bot = commands.Bot(command_prefix="!", intents=_intents())
    done: list[str] = []

    @bot.tree.command(name="status", description="Show status")
    async def status(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("working", ephemeral=True)
        message = await interaction.edit_original_response(content="all good")
        done.append(message.content)

    async with run_client(fake, bot):
        await bot.tree.sync()
        handle = await fake.invoke_slash_command("status")
        await fake.wait_for(lambda: done)
    assert handle.callbacks[0].json == {
        "type": 4,
        "data": {"tts": False, "content": "working", "flags": 64},
    }
    assert handle.original_edits[0].json["content"] == "all good"
    assert done == ["all good"]
