"""Platform-neutral commands: Discord, Slack and the console all route here.

Each command is a small async function returning the reply text; the adapters decide how
the text is shown (slash-command follow-up, thread reply, console line).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.errors import UserError
from bot.types import IncomingMessage, Turn

if TYPE_CHECKING:
    from bot.core import ConversationCore

ProgressCallback = Callable[[str], Awaitable[None]]
TranscriptFetcher = Callable[[int], Awaitable[list[Turn]]]
MAX_SUMMARY_MESSAGES = 500


@dataclass(frozen=True, slots=True)
class CommandContext:
    """What a command may use: the core, the message, and the adapter's hooks."""

    core: ConversationCore
    message: IncomingMessage
    args: str
    on_progress: ProgressCallback | None = None
    fetch_transcript: TranscriptFetcher | None = None


Handler = Callable[[CommandContext], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Command:
    """A command's name, its one-line help, and its usage hint."""

    name: str
    usage: str
    help: str
    handler: Handler


async def ask(ctx: CommandContext) -> str:
    return await ctx.core.chat(ctx.message, ctx.args, on_progress=ctx.on_progress)


async def summarize(ctx: CommandContext) -> str:
    default = ctx.core.settings.summary_default_messages
    count = parse_count(ctx.args, default=default, limit=MAX_SUMMARY_MESSAGES)
    return await ctx.core.summarize(ctx.message.key, count, fetch_transcript=ctx.fetch_transcript)


async def reset(ctx: CommandContext) -> str:
    if not (ctx.message.is_admin or ctx.message.is_direct):
        raise UserError("Only members who can manage messages here may reset the conversation.")
    deleted = await ctx.core.history.reset(ctx.message.key)
    return f"Done: I forgot this conversation ({deleted} messages)."


async def help_(ctx: CommandContext) -> str:
    lines = [f"I'm {ctx.core.settings.bot_name}. Mention me (or DM me) to chat; I remember "
             "this conversation. Commands:"]
    lines += [f"• /{c.usage} — {c.help}" for c in COMMANDS.values()]
    return "\n".join(lines)


async def status(ctx: CommandContext) -> str:
    return await ctx.core.status_text()


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
    Command("help", "help", "show this help", help_),
    Command("status", "status", "model, queue and uptime", status),
)}
