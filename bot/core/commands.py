"""Platform-neutral commands: Discord, Slack and the console all route here.

Each command is a small async function returning the reply text; the adapters decide how
the text is shown (slash-command follow-up, thread reply, console line).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

from bot.config import Settings
from bot.core.personas import DEFAULT_PERSONA, Persona
from bot.errors import UserError
from bot.storage.interface import ChannelSettings, HistoryStore
from bot.storage.knowledge import KnowledgeBase
from bot.types import ChannelKey, IncomingMessage, Turn

ProgressCallback = Callable[[str], Awaitable[None]]
QueueCallback = Callable[[int], Awaitable[None]]
"""Told how many requests are ahead when one has to wait (adapters show "queued: N ahead")."""
TranscriptFetcher = Callable[[int], Awaitable[list[Turn]]]
MAX_SUMMARY_MESSAGES = 500


class CommandHost(Protocol):
    """What commands use of the core; `ConversationCore` provides it (no import circle)."""

    settings: Settings
    history: HistoryStore
    personas: dict[str, Persona]
    knowledge: KnowledgeBase | None

    def persona_for(self, channel: ChannelSettings) -> Persona: ...

    async def chat(self, msg: IncomingMessage, text: str, *,
                   on_progress: ProgressCallback | None = None,
                   on_queued: QueueCallback | None = None) -> str: ...

    async def summarize(self, key: ChannelKey, count: int, *,
                        fetch_transcript: TranscriptFetcher | None = None) -> str: ...

    async def status_text(self, key: ChannelKey) -> str: ...

    async def served_models(self) -> list[str]: ...

    def default_model(self) -> str: ...


@dataclass(frozen=True, slots=True)
class CommandContext:
    """What a command may use: the core, the message, and the adapter's hooks."""

    core: CommandHost
    message: IncomingMessage
    args: str
    on_progress: ProgressCallback | None = None
    fetch_transcript: TranscriptFetcher | None = None
    on_queued: QueueCallback | None = None


Handler = Callable[[CommandContext], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Command:
    """A command's name, its one-line help, and its usage hint."""

    name: str
    usage: str
    help: str
    handler: Handler


async def ask(ctx: CommandContext) -> str:
    return await ctx.core.chat(ctx.message, ctx.args, on_progress=ctx.on_progress,
                               on_queued=ctx.on_queued)


async def summarize(ctx: CommandContext) -> str:
    default = ctx.core.settings.summary_default_messages
    count = parse_count(ctx.args, default=default, limit=MAX_SUMMARY_MESSAGES)
    return await ctx.core.summarize(ctx.message.key, count, fetch_transcript=ctx.fetch_transcript)


def require_admin(ctx: CommandContext, action: str) -> None:
    """Admin commands: the platform's manage permission (checked by the adapter), or a DM."""
    if not (ctx.message.is_admin or ctx.message.is_direct):
        raise UserError(f"Only members who can manage messages here may {action}.")


async def reset(ctx: CommandContext) -> str:
    require_admin(ctx, "reset the conversation")
    deleted = await ctx.core.history.reset(ctx.message.key)
    return f"Done: I forgot this conversation ({deleted} messages)."


async def forget(ctx: CommandContext) -> str:
    require_admin(ctx, "erase this channel's stored messages")
    deleted = await ctx.core.history.forget_channel(ctx.message.key)
    return (f"Erased for good: {deleted} stored messages of this channel and its threads, "
            "and its settings.")


async def help_(ctx: CommandContext) -> str:
    lines = [f"I'm {ctx.core.settings.bot_name}. Mention me (or DM me) to chat; I remember "
             "this conversation. Commands:"]
    lines += [f"• /{c.usage} — {c.help}" for c in COMMANDS.values()]
    return "\n".join(lines)


async def status(ctx: CommandContext) -> str:
    return await ctx.core.status_text(ctx.message.key)


async def persona(ctx: CommandContext) -> str:
    core, key = ctx.core, ctx.message.key
    channel = await core.history.channel_settings(key)
    current = core.persona_for(channel).name
    wanted = ctx.args.strip().lower()
    if not wanted:
        lines = [f"This channel uses the **{current}** persona. Available:"]
        lines += [f"• {p.name} — {p.description}" for p in core.personas.values()]
        lines.append("Admins can switch with /persona <name>.")
        return "\n".join(lines)
    require_admin(ctx, "change the persona")
    if wanted == "default":
        wanted = DEFAULT_PERSONA
    if wanted not in core.personas:
        raise UserError(f"There is no persona {wanted!r}. Choose one of: "
                        f"{', '.join(core.personas)}.")
    await core.history.save_channel_settings(key, replace(channel, persona=wanted))
    return f"This channel now uses the **{wanted}** persona."


async def model(ctx: CommandContext) -> str:
    """List the served models; admins pick one for this channel (remote engines)."""
    core, key = ctx.core, ctx.message.key
    channel = await core.history.channel_settings(key)
    served = await core.served_models()
    default = core.default_model()
    wanted = ctx.args.strip()
    if not wanted:
        current = channel.model or default
        lines = [f"This channel uses the model **{current}**"
                 + ("" if channel.model else " (the default)") + ". Served:"]
        lines += [f"• {name}" + (" (default)" if name == default else "")
                  for name in served[:25]]
        if len(served) > 25:
            lines.append(f"… and {len(served) - 25} more")
        lines.append("Admins can switch with /model <name>, or back with /model default.")
        return "\n".join(lines)
    require_admin(ctx, "change the model")
    if wanted.lower() == "default":
        await core.history.save_channel_settings(key, replace(channel, model=None))
        return f"This channel now uses the default model, **{default}**."
    match = next((name for name in served if name == wanted), None) or next(
        (name for name in served if name.lower() == wanted.lower()), None)
    if match is None:
        shown = ", ".join(served[:25]) or "(the server lists none right now)"
        raise UserError(f"The model server does not serve {wanted!r}. Choose one of: {shown}.")
    await core.history.save_channel_settings(key, replace(channel, model=match))
    return f"This channel now uses the model **{match}**."


async def settings(ctx: CommandContext) -> str:
    core, key = ctx.core, ctx.message.key
    channel = await core.history.channel_settings(key)
    name, _, value = ctx.args.strip().partition(" ")
    name, value = name.lower(), value.strip()
    if not name:
        prompt = channel.system_prompt or "(the persona's)"
        return "\n".join([
            f"Persona: {core.persona_for(channel).name}",
            f"System prompt: {prompt}",
            f"Answer in my threads without a mention: {_on_off(channel.thread_replies)}",
            f"Answer in this channel: {_on_off(channel.enabled)}",
            "Admins can change them: /settings threads on|off, /settings enabled on|off, "
            "/settings prompt <text>|clear",
        ])
    require_admin(ctx, "change the settings")
    if name == "prompt":
        if not value:
            raise UserError("Usage: /settings prompt <text>, or /settings prompt clear")
        prompt_value = None if value.lower() == "clear" else value[:4000]
        channel = replace(channel, system_prompt=prompt_value)
        done = "cleared" if prompt_value is None else "set"
    elif name in ("threads", "enabled"):
        flag = _parse_on_off(value, name)
        if name == "threads":
            channel = replace(channel, thread_replies=flag)
        else:
            channel = replace(channel, enabled=flag)
        done = f"{name} {_on_off(flag)}"
    else:
        raise UserError(f"Unknown setting {name!r}. Try /settings to see them.")
    await core.history.save_channel_settings(key, channel)
    return f"Saved: {done}."


async def reindex(ctx: CommandContext) -> str:
    require_admin(ctx, "reindex the knowledge base")
    if ctx.core.knowledge is None:
        raise UserError("No knowledge base is configured (set KNOWLEDGE_DIR).")
    stats = await ctx.core.knowledge.reindex()
    return (f"Knowledge base reindexed: {stats.documents} documents, {stats.passages} passages "
            f"({stats.changed} file(s) changed).")


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


def _parse_on_off(value: str, name: str) -> bool:
    if value.lower() in ("on", "yes", "true", "1"):
        return True
    if value.lower() in ("off", "no", "false", "0"):
        return False
    raise UserError(f"Usage: /settings {name} on|off")


def parse_count(args: str, *, default: int, limit: int) -> int:
    """The optional message count of `/summarize`."""
    text = args.strip()
    if not text:
        return default
    try:
        count = int(text)
    except ValueError:
        raise UserError(f"Usage: /summarize [number of messages, 1-{limit}]") from None
    if not 1 <= count <= limit:
        raise UserError(f"I can summarise between 1 and {limit} messages.")
    return count


COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("ask", "ask <question>", "ask me something", ask),
    Command("summarize", "summarize [messages]",
            f"summarise the last messages here (default 50, at most {MAX_SUMMARY_MESSAGES})",
            summarize),
    Command("reset", "reset", "forget this conversation (admins, or anyone in a DM)", reset),
    Command("forget", "forget",
            "erase everything stored for this channel and its threads, for good (admins)",
            forget),
    Command("persona", "persona [name]", "show or (admins) change this channel's persona",
            persona),
    Command("model", "model [name]", "show the served models or (admins) pick this "
            "channel's", model),
    Command("settings", "settings [name value]",
            "show or (admins) change this channel's settings", settings),
    Command("reindex", "reindex", "re-read the knowledge base files (admins)", reindex),
    Command("help", "help", "show this help", help_),
    Command("status", "status", "model, queue, persona, knowledge base and uptime", status),
)}
