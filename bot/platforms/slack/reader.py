"""Reading Slack: channel and thread transcripts, user names and admin flags (cached)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Settings
from bot.core.commands import TranscriptFetcher
from bot.errors import UserError
from bot.platforms.slack.delivery import NO_ACCESS_ERRORS, SlackDelivery
from bot.platforms.slack.events import MESSAGE_SUBTYPES, OPEN_COMMANDS, command_of, kind_of
from bot.platforms.slack.format import mentioned_user_ids, slack_to_text
from bot.types import ChannelKey, IncomingMessage, Turn

MAX_THREAD_READ = 1_000
USER_CACHE_SECONDS = 600.0


@dataclass(slots=True)
class BotIdentity:
    """Who the bot is in this workspace; filled in when the adapter connects."""

    user_id: str = ""
    bot_id: str = ""


@dataclass(frozen=True, slots=True)
class SlackUser:
    name: str
    is_admin: bool
    fetched_at: float


class SlackReader:
    """Reads transcripts and users for the adapter and the core's `/summarize`.

    Args:
        client: the Web API client.
        delivery: whose `api` makes the calls (rate limits, errors as results).
        settings: `bot_name`, for the bot's own turns.
        identity: the bot's user and bot ids, to recognise its own messages.
    """

    def __init__(self, client: AsyncWebClient, delivery: SlackDelivery, settings: Settings,
                 identity: BotIdentity, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.settings = settings
        self.identity = identity
        self._delivery = delivery
        self._clock = clock
        self._users: dict[str, SlackUser] = {}

    def fetcher(self, key: ChannelKey, exclude: set[str]) -> TranscriptFetcher:
        """`/summarize`'s history: the thread's replies or the channel's latest messages."""

        async def fetch(count: int) -> list[Turn]:
            messages = await self.read(key, count, exclude=exclude,
                                        skip_kinds={"status", "summary"})
            return await self.turns(messages)

        return fetch

    async def read(self, key: ChannelKey, count: int, *, exclude: Iterable[str] = (),
                    skip_kinds: Iterable[str] = ()) -> list[dict[str, Any]]:
        """The last `count` readable messages of a channel or thread, oldest first.

        Raises:
            UserError: the bot cannot read there, or Slack failed.
        """
        excluded, skipped = set(exclude), set(skip_kinds)

        def usable(message: Mapping[str, Any]) -> bool:
            return (str(message.get("ts")) not in excluded
                    and message.get("subtype") in MESSAGE_SUBTYPES | {"bot_message"}
                    and bool(str(message.get("text") or "").strip())
                    and kind_of(message) not in skipped)

        found: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            if key.thread_id is None:
                call = functools.partial(
                    self.client.conversations_history, channel=key.channel_id,
                    limit=min(200, max(count * 2, 20)), cursor=cursor, include_all_metadata=True)
                result = await self._delivery.api("conversations.history", call)
            else:
                call = functools.partial(
                    self.client.conversations_replies, channel=key.channel_id, ts=key.thread_id,
                    limit=200, cursor=cursor, include_all_metadata=True)
                result = await self._delivery.api("conversations.replies", call)
            if not result.ok:
                raise read_error(result.error)
            found += [m for m in result.data.get("messages") or [] if usable(m)]
            cursor = (result.data.get("response_metadata") or {}).get("next_cursor") or None
            enough = len(found) >= (count if key.thread_id is None else MAX_THREAD_READ)
            if not cursor or enough:
                break
        if key.thread_id is None:
            return list(reversed(found[:count]))  # history comes newest first
        return found[-count:]

    async def turns(self, messages: list[dict[str, Any]]) -> list[Turn]:
        """Messages as transcript turns, with every user name resolved."""
        ids: list[str] = []
        for m in messages:
            if m.get("user") and not m.get("bot_id"):
                ids.append(str(m["user"]))
            ids += mentioned_user_ids(str(m.get("text") or ""))
        names = await self.names(ids)
        if self.identity.user_id:
            names[self.identity.user_id] = self.settings.bot_name
        turns = []
        for m in messages:
            text = slack_to_text(str(m.get("text") or ""), names)
            if self.is_own(m):
                turns.append(Turn("assistant", self.settings.bot_name, text))
            else:
                author = (names.get(str(m.get("user")), "") if not m.get("bot_id") else "") or \
                    str((m.get("bot_profile") or {}).get("name") or m.get("username")
                        or m.get("user") or "bot")
                turns.append(Turn("user", author, text))
        return turns

    async def names(self, user_ids: Iterable[str]) -> dict[str, str]:
        unique = [u for u in dict.fromkeys(user_ids) if u]
        users = await asyncio.gather(*(self.user(u) for u in unique))
        return {u: info.name for u, info in zip(unique, users, strict=True)}

    async def user(self, user_id: str) -> SlackUser:
        """users.info, cached for a few minutes (names and admin flags rarely change)."""
        cached = self._users.get(user_id)
        now = self._clock()
        if cached is not None and now - cached.fetched_at < USER_CACHE_SECONDS:
            return cached
        result = await self._delivery.api("users.info",
                                          functools.partial(self.client.users_info, user=user_id),
                                          retries=0)
        if result.ok:
            user = result.data.get("user") or {}
            profile = user.get("profile") or {}
            name = str(profile.get("display_name") or profile.get("real_name")
                       or user.get("real_name") or user.get("name") or user_id)
            is_admin = bool(user.get("is_admin") or user.get("is_owner")
                            or user.get("is_primary_owner"))
            info = SlackUser(name, is_admin, now)
        else:
            info = SlackUser(cached.name if cached else user_id, False, now)
        if len(self._users) > 5_000:
            self._users.clear()
        self._users[user_id] = info
        return info

    async def with_admin(self, msg: IncomingMessage) -> IncomingMessage:
        """Fill `is_admin` from Slack for admin commands: workspace admins/owners, or the
        channel's creator (Slack has no per-channel "manage" permission for bots to read)."""
        command = command_of(msg)
        if not msg.addressed or msg.is_direct or command is None or command in OPEN_COMMANDS:
            return msg
        return dataclasses.replace(msg, is_admin=await self.may_manage(msg.author_id,
                                                                       msg.key.channel_id))

    async def may_manage(self, user_id: str, channel: str) -> bool:
        """A workspace admin or owner, or the channel's creator."""
        if (await self.user(user_id)).is_admin:
            return True
        result = await self._delivery.api("conversations.info", functools.partial(
            self.client.conversations_info, channel=channel), retries=0)
        creator = (result.data.get("channel") or {}).get("creator") if result.ok else None
        return bool(creator) and creator == user_id

    def is_own(self, message: Mapping[str, Any]) -> bool:
        return bool((self.identity.user_id and message.get("user") == self.identity.user_id)
                    or (self.identity.bot_id and message.get("bot_id") == self.identity.bot_id))



def read_error(error: str | None) -> UserError:
    if error in NO_ACCESS_ERRORS:
        return UserError("I can't read the messages here. Invite me to the channel "
                         "(/invite) and try again.")
    return UserError("I couldn't read this conversation from Slack just now; "
                     "please try again in a moment.")
