"""A fake Discord API + gateway on 127.0.0.1 that the real discord.py client can talk to.

Why: the bot's Discord adapter must be tested against the *real* discord.py client (its
caching, its gateway state machine, its HTTP error mapping), not against mocks of it. This
module serves just enough of Discord's REST API (under ``/api/v10``) and of the gateway
websocket for discord.py 2.x to log in, become ready, receive messages and interactions,
send/edit/delete messages, sync application commands and reconnect with RESUME.

Tests drive it with Python methods (``create_guild``, ``send_user_message``,
``invoke_slash_command``, ``disconnect_gateway``, ``fail_next`` ...) and assert on the
requests it recorded (``requests``, ``find_requests``, ``wait_for_request``).

Typical use::

    async with FakeDiscord() as fake:
        client = discord.Client(intents=intents)
        async with run_client(fake, client):
            await fake.send_user_message(fake.default_channel, fake.default_user, "hi")
            ...

``run_client`` wraps ``patched_discord_endpoints(fake)``, which points
``discord.http.Route.BASE`` and ``DiscordWebSocket.DEFAULT_GATEWAY`` at the fake and restores
them afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
import secrets
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from aiohttp import BodyPartReader, WSMsgType, web

from tests.fakes.discord_openapi import check as openapi_check

if TYPE_CHECKING:
    import discord

_log = logging.getLogger(__name__)

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1420070400000

# Channel types (https://discord.com/developers/docs/resources/channel#channel-object-channel-types)
TEXT_CHANNEL = 0
DM_CHANNEL = 1
VOICE_CHANNEL = 2
CATEGORY_CHANNEL = 4
NEWS_CHANNEL = 5
PUBLIC_THREAD = 11
PRIVATE_THREAD = 12
THREAD_TYPES = frozenset({10, PUBLIC_THREAD, PRIVATE_THREAD})

# Gateway intents that Discord treats as privileged.
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT


class Perm:
    """Permission bits the fake computes with (a subset of Discord's)."""

    CREATE_INSTANT_INVITE = 1 << 0
    ADMINISTRATOR = 1 << 3
    ADD_REACTIONS = 1 << 6
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    USE_EXTERNAL_EMOJIS = 1 << 18
    CHANGE_NICKNAME = 1 << 26
    USE_APPLICATION_COMMANDS = 1 << 31
    CREATE_PUBLIC_THREADS = 1 << 35
    CREATE_PRIVATE_THREADS = 1 << 36
    SEND_MESSAGES_IN_THREADS = 1 << 38
    ALL = (1 << 51) - 1


#: What the @everyone role may do in a fresh fake guild: enough for a chat bot to read and reply.
DEFAULT_EVERYONE_PERMISSIONS = (
    Perm.CREATE_INSTANT_INVITE
    | Perm.ADD_REACTIONS
    | Perm.VIEW_CHANNEL
    | Perm.SEND_MESSAGES
    | Perm.EMBED_LINKS
    | Perm.ATTACH_FILES
    | Perm.READ_MESSAGE_HISTORY
    | Perm.MENTION_EVERYONE
    | Perm.USE_EXTERNAL_EMOJIS
    | Perm.CHANGE_NICKNAME
    | Perm.USE_APPLICATION_COMMANDS
    | Perm.CREATE_PUBLIC_THREADS
    | Perm.CREATE_PRIVATE_THREADS
    | Perm.SEND_MESSAGES_IN_THREADS
)

MESSAGE_FLAG_EPHEMERAL = 1 << 6
MESSAGE_FLAG_LOADING = 1 << 7
MAX_CONTENT_LENGTH = 2000

_MENTION_USER_RE = re.compile(r"<@!?(\d+)>")
_MENTION_ROLE_RE = re.compile(r"<@&(\d+)>")
_COMMAND_NAME_RE = re.compile(r"^[-_'\w]{1,32}$")

_T = TypeVar("_T")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def _id_of(obj: Any) -> int:
    """Accept a fake model, a discord.py model (anything with ``.id``), an int or a str id."""
    if hasattr(obj, "id"):
        return int(obj.id)
    return int(obj)


# --------------------------------------------------------------------------------------------
# Model objects (plain data the fake renders into Discord JSON)
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class FakeUser:
    """A Discord user (human or bot)."""

    id: int
    username: str
    bot: bool = False
    global_name: str | None = None

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"


@dataclass(eq=False)
class FakeRole:
    """A guild role; the @everyone role has the guild's id."""

    id: int
    guild_id: int
    name: str
    permissions: int = 0
    position: int = 0
    mentionable: bool = True

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": self.mentionable,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }

    @property
    def mention(self) -> str:
        return f"<@&{self.id}>"


@dataclass(eq=False)
class FakeMember:
    """A user's membership of a guild (role ids exclude @everyone)."""

    user: FakeUser
    guild_id: int
    roles: list[int] = field(default_factory=list)
    nick: str | None = None
    joined_at: str = field(default_factory=_now_iso)

    def payload(self, *, with_user: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "roles": [str(r) for r in self.roles],
            "nick": self.nick,
            "joined_at": self.joined_at,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "premium_since": None,
            "avatar": None,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = self.user.payload()
        return data


@dataclass(eq=False)
class FakeChannel:
    """A guild channel, thread or DM channel."""

    id: int
    type: int
    guild_id: int | None = None
    name: str | None = None
    position: int = 0
    parent_id: int | None = None
    topic: str | None = None
    owner_id: int | None = None
    #: Permission overwrites as Discord sends them: ``{"id", "type" (0 role / 1 member),
    #: "allow", "deny"}`` (allow/deny may be ints; they are rendered as strings).
    overwrites: list[dict[str, Any]] = field(default_factory=list)
    recipients: list[FakeUser] = field(default_factory=list)
    archived: bool = False
    locked: bool = False
    last_message_id: int | None = None
    created_at: str = field(default_factory=_now_iso)

    @property
    def is_thread(self) -> bool:
        return self.type in THREAD_TYPES

    @property
    def is_dm(self) -> bool:
        return self.type == DM_CHANNEL

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    def payload(self) -> dict[str, Any]:
        last = str(self.last_message_id) if self.last_message_id else None
        if self.type == DM_CHANNEL:
            return {
                "id": str(self.id),
                "type": DM_CHANNEL,
                "recipients": [u.payload() for u in self.recipients],
                "last_message_id": last,
            }
        data: dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "parent_id": str(self.parent_id) if self.parent_id else None,
            "last_message_id": last,
            "rate_limit_per_user": 0,
            "nsfw": False,
        }
        if self.is_thread:
            data.update(
                owner_id=str(self.owner_id),
                message_count=0,
                member_count=1,
                total_message_sent=0,
                flags=0,
                thread_metadata={
                    "archived": self.archived,
                    "locked": self.locked,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": self.created_at,
                    "create_timestamp": self.created_at,
                    "invitable": True,
                },
            )
            return data
        data.update(
            position=self.position,
            topic=self.topic,
            permission_overwrites=[
                {
                    "id": str(o["id"]),
                    "type": int(o.get("type", 0)),
                    "allow": str(int(o.get("allow", 0))),
                    "deny": str(int(o.get("deny", 0))),
                }
                for o in self.overwrites
            ],
        )
        if self.type == VOICE_CHANNEL:
            data.update(bitrate=64000, user_limit=0, rtc_region=None)
        return data


@dataclass(eq=False)
class FakeGuild:
    """A guild with its roles, channels, threads and members."""

    id: int
    name: str
    owner_id: int
    roles: dict[int, FakeRole] = field(default_factory=dict)
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)

    @property
    def everyone_role(self) -> FakeRole:
        return self.roles[self.id]

    def payload(self, *, joined: bool = False) -> dict[str, Any]:
        """The full GUILD_CREATE payload (member_count == len(members), so it counts as chunked).

        ``joined``: for a guild the bot just joined, Discord omits ``unavailable`` (discord.py
        then fires on_guild_join instead of on_guild_available).
        """
        data = {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "unavailable": False,
            "large": False,
            "member_count": len(self.members),
            "joined_at": _now_iso(),
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "system_channel_flags": 0,
            "preferred_locale": "en-US",
            "features": [],
            "roles": [r.payload() for r in self.roles.values()],
            "emojis": [],
            "stickers": [],
            "channels": [c.payload() for c in self.channels.values() if not c.is_thread],
            "threads": [
                c.payload() for c in self.channels.values() if c.is_thread and not c.archived
            ],
            "members": [m.payload() for m in self.members.values()],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }
        if joined:
            del data["unavailable"]
        return data


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One REST request the client made, as the fake saw it.

    ``path`` is relative to ``/api/v10`` (e.g. ``/channels/1/messages``); ``route`` is the
    matched template (e.g. ``/channels/{channel_id}/messages``) or ``None`` for unknown routes.
    ``json`` is the parsed JSON body (or the ``payload_json`` part of a multipart upload, whose
    files are in ``uploads`` as ``(filename, bytes)``; ``files`` lists their names). ``time``
    is ``loop.time()`` on arrival (compare with ``InteractionHandle.dispatched_at``). IDs in
    bodies are as discord.py sent them (often ints): compare with ``int(...)``.
    """

    method: str
    path: str
    route: str | None
    match_info: dict[str, str]
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    uploads: list[tuple[str, bytes]]
    time: float
    status: int = 0
    response: Any = None
    faulted: bool = False

    @property
    def files(self) -> list[str]:
        """Names of the files uploaded with this request."""
        return [name for name, _ in self.uploads]

    @property
    def message_body(self) -> dict[str, Any]:
        """The message part of the body (``data`` for interaction callbacks)."""
        body = self.json if isinstance(self.json, dict) else {}
        if self.route == "/interactions/{interaction_id}/{token}/callback":
            data = body.get("data")
            return data if isinstance(data, dict) else {}
        return body


_RECORD_KEY = web.RequestKey("fake_discord_record", RecordedRequest)


@dataclass
class GatewayFrame:
    """A gateway payload sent by the client (``direction == "recv"``) or the fake ("send")."""

    direction: str
    op: int
    t: str | None
    d: Any
    time: float
    connection_id: int


@dataclass
class GatewayConnectionInfo:
    """A websocket connection the client opened (``url`` shows whether it used the resume URL)."""

    id: int
    url: str
    path: str
    compress: str | None
    opened_at: float
    closed_at: float | None = None
    close_code: int | None = None
    forced: bool = False


@dataclass
class Fault:
    """A canned error the fake answers with instead of handling a matching request."""

    method: str
    path: str | re.Pattern[str]
    status: int
    code: int
    message: str
    retry_after: float
    is_global: bool
    remaining: int
    errors: dict[str, Any] | None = None

    def matches(self, rec: RecordedRequest) -> bool:
        if self.method != "*" and self.method != rec.method:
            return False
        if isinstance(self.path, re.Pattern):
            return self.path.fullmatch(rec.path) is not None
        if "{" in self.path:
            return self.path == rec.route
        return self.path == rec.path

    def response(self) -> web.Response:
        if self.status == 429:
            body: dict[str, Any] = {
                "message": self.message,
                "retry_after": self.retry_after,
                "global": self.is_global,
                "code": self.code,
            }
            headers = {
                # discord.py treats a 429 without a Via header as a Cloudflare ban.
                "Via": "1.1 google",
                "Retry-After": str(max(1, int(self.retry_after + 0.999))),
                "X-RateLimit-Scope": "global" if self.is_global else "user",
            }
            if self.is_global:
                headers["X-RateLimit-Global"] = "true"
            return _json_response(body, status=429, headers=headers)
        body = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return _json_response(body, status=self.status)


_FAULT_DEFAULTS: dict[int, tuple[int, str]] = {
    400: (50035, "Invalid Form Body"),
    401: (0, "401: Unauthorized"),
    403: (50013, "Missing Permissions"),
    404: (10003, "Unknown Channel"),
    429: (0, "You are being rate limited."),
    500: (0, "500: Internal Server Error"),
    502: (0, "502: Bad Gateway"),
    503: (0, "503: Service Unavailable"),
}


class ApiError(Exception):
    """Raised inside route handlers to answer with a Discord-shaped JSON error."""

    def __init__(
        self, status: int, code: int, message: str, errors: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def response(self) -> web.Response:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return _json_response(body, status=self.status)


def _json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """JSON with Content-Type exactly ``application/json``.

    Why: discord.py parses a body as JSON only when the header equals that string;
    ``web.json_response`` appends ``; charset=utf-8`` and discord.py would hand back a str.
    """
    hdrs = {"Content-Type": "application/json"}
    if headers:
        hdrs.update(headers)
    return web.Response(body=_dumps(data).encode(), status=status, headers=hdrs)


def _no_content() -> web.Response:
    return web.Response(status=204)


def _form_error(field_name: str, code: str, message: str) -> ApiError:
    return ApiError(
        400,
        50035,
        "Invalid Form Body",
        {field_name: {"_errors": [{"code": code, "message": message}]}},
    )


# --------------------------------------------------------------------------------------------
# Interaction handle
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class InteractionHandle:
    """What ``invoke_slash_command`` returns: the dispatched interaction and its responses."""

    fake: FakeDiscord
    id: int
    token: str
    name: str
    channel_id: int
    guild_id: int | None
    user: FakeUser
    payload: dict[str, Any]
    dispatched_at: float
    response_type: int | None = None
    original_message_id: int | None = None

    @property
    def callback_path(self) -> str:
        return f"/interactions/{self.id}/{self.token}/callback"

    @property
    def webhook_path(self) -> str:
        return f"/webhooks/{self.fake.application_id}/{self.token}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request tied to this interaction (callbacks, followups, edits, deletes)."""
        return [
            r
            for r in self.fake.requests
            if r.path == self.callback_path
            or r.path == self.webhook_path
            or r.path.startswith(self.webhook_path + "/")
        ]

    @property
    def callbacks(self) -> list[RecordedRequest]:
        return [r for r in self.fake.requests if r.path == self.callback_path]

    @property
    def followups(self) -> list[RecordedRequest]:
        """POST /webhooks/{app}/{token} requests (``interaction.followup.send``)."""
        return [r for r in self.fake.requests if r.method == "POST" and r.path == self.webhook_path]

    @property
    def original_edits(self) -> list[RecordedRequest]:
        """PATCH .../messages/@original (``interaction.edit_original_response``)."""
        path = self.webhook_path + "/messages/@original"
        return [r for r in self.fake.requests if r.method == "PATCH" and r.path == path]

    @property
    def callback_delay(self) -> float | None:
        """Seconds from dispatch to the first callback, or None if none arrived yet."""
        cbs = self.callbacks
        return cbs[0].time - self.dispatched_at if cbs else None

    @property
    def original_message(self) -> dict[str, Any] | None:
        if self.original_message_id is None:
            return None
        return self.fake.messages.get(self.original_message_id)

    async def wait_callback(self, timeout: float = 5.0) -> RecordedRequest:
        """Wait for the interaction's first callback (ack) request."""
        await self.fake.wait_for(
            lambda: self.callbacks, timeout, message=f"no callback for /{self.name}"
        )
        return self.callbacks[0]

    async def wait_followups(self, count: int = 1, timeout: float = 5.0) -> list[RecordedRequest]:
        """Wait until at least ``count`` followup messages were posted."""
        await self.fake.wait_for(
            lambda: len(self.followups) >= count,
            timeout,
            message=f"fewer than {count} followups for /{self.name}",
        )
        return self.followups

    async def wait_original_edits(
        self, count: int = 1, timeout: float = 5.0
    ) -> list[RecordedRequest]:
        """Wait until the original response was edited at least ``count`` times."""
        await self.fake.wait_for(
            lambda: len(self.original_edits) >= count,
            timeout,
            message=f"fewer than {count} @original edits for /{self.name}",
        )
        return self.original_edits


# --------------------------------------------------------------------------------------------
# Gateway plumbing
# --------------------------------------------------------------------------------------------


class _GatewayConnection:
    """One websocket; owns the shared zlib-stream context (if the client asked for one)."""

    def __init__(self, info: GatewayConnectionInfo, ws: web.WebSocketResponse) -> None:
        self.info = info
        self.ws = ws
        self.session: _GatewaySession | None = None
        self.lock = asyncio.Lock()
        self._zlib = zlib.compressobj() if info.compress == "zlib-stream" else None

    async def send(self, payload: dict[str, Any]) -> bool:
        text = _dumps(payload)
        async with self.lock:
            if self.ws.closed:
                return False
            try:
                if self._zlib is not None:
                    data = self._zlib.compress(text.encode()) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
                    await self.ws.send_bytes(data)
                else:
                    # Also the answer to compress=zstd-stream: discord.py only decompresses
                    # binary frames, so plain text frames always work.
                    await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return False
        return True


@dataclass(eq=False)
class _GatewaySession:
    """A resumable gateway session: survives its websocket until the client closes with 1000."""

    id: str
    intents: int
    shard: list[int] | None
    connection: _GatewayConnection | None
    seq: int = 0
    backlog: list[dict[str, Any]] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ready: bool = False

    def has_intent(self, bit: int) -> bool:
        return bool(self.intents & bit)

    def receives(self, guild_id: int | None) -> bool:
        """Whether this session gets the events of `guild_id` (None: DMs), as Discord routes
        them: guild events to shard ``(guild_id >> 22) % shard_count``, DMs to shard 0, and
        everything to a session that IDENTIFYed without a shard."""
        if not self.shard:
            return True
        shard_id, shard_count = int(self.shard[0]), int(self.shard[1])
        if guild_id is None:
            return shard_id == 0
        return (int(guild_id) >> 22) % shard_count == shard_id


# --------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------


class FakeDiscord:
    """An in-process Discord: REST under ``/api/v10`` and the gateway websocket at ``/``.

    Constructor args:
        bot_name: username of the bot account.
        token: the token the client must use (REST ``Authorization: Bot <token>`` and IDENTIFY).
        heartbeat_interval_ms: sent in HELLO; small values keep tests fast.
        privileged_intents_allowed: if False, IDENTIFY asking for members/presences/
            message_content is answered with close code 4014 (PrivilegedIntentsRequired).
        interaction_ack_timeout: seconds an interaction may go unacknowledged before its
            callback gets 404 "Unknown interaction" (10062), like Discord's 3 s; None = never.
        enforce_permissions: answer 403 (50001/50013) when the bot lacks VIEW_CHANNEL/
            SEND_MESSAGES in the target guild channel.
        echo_bot_messages: dispatch MESSAGE_CREATE/UPDATE/DELETE for the bot's own messages, as
            Discord does (so a bot that does not ignore itself is caught).
        default_guild: create ``default_guild`` ("Fake Guild") with ``default_channel``
            (#general) and ``default_user`` (a member named "alice").
        check_schema: check request bodies against Discord's OpenAPI description
            (`discord_openapi`); a body with components takes a few milliseconds of this
            event loop, which a test timing the loop can turn off.
    """

    def __init__(
        self,
        *,
        bot_name: str = "FakeBot",
        token: str = "fake-bot-token",
        heartbeat_interval_ms: int = 250,
        privileged_intents_allowed: bool = True,
        interaction_ack_timeout: float | None = 3.0,
        enforce_permissions: bool = True,
        echo_bot_messages: bool = True,
        default_guild: bool = True,
        shutdown_timeout: float = 2.0,
        check_schema: bool = True,
    ) -> None:
        self.token = token
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.privileged_intents_allowed = privileged_intents_allowed
        self.interaction_ack_timeout = interaction_ack_timeout
        self.enforce_permissions = enforce_permissions
        self.echo_bot_messages = echo_bot_messages
        self.check_schema = check_schema
        self._shutdown_timeout = shutdown_timeout

        self._last_snowflake = 0
        self._ids = itertools.count(1)

        # World state.
        self.users: dict[int, FakeUser] = {}
        self.guilds: dict[int, FakeGuild] = {}
        self.channels: dict[int, FakeChannel] = {}
        self.messages: dict[int, dict[str, Any]] = {}
        self._channel_messages: dict[int, list[int]] = {}
        self.reactions: list[tuple[int, int, str]] = []  # (channel_id, message_id, emoji)
        self.attachment_data: dict[int, bytes] = {}
        self.attachment_fetches: list[int] = []
        """Attachment ids downloaded from the CDN route, in order (issue #17)."""
        self.interactions: dict[int, InteractionHandle] = {}
        #: Registered application commands: key None = global, else guild id.
        self.commands: dict[int | None, list[dict[str, Any]]] = {}

        self.bot_user = self.create_user(bot_name, bot=True)
        self.application_id = self.bot_user.id  # Discord reuses the bot's id for its app.
        self.app_owner = self.create_user("app-owner")

        # Records.
        self.requests: list[RecordedRequest] = []
        self.unhandled_requests: list[RecordedRequest] = []
        self.handler_errors: list[BaseException] = []
        #: Requests whose body Discord's OpenAPI description rejects (answered 400, 50035).
        self.schema_errors: list[tuple[RecordedRequest, list[str]]] = []
        self.gateway_frames: list[GatewayFrame] = []
        self.connections: list[GatewayConnectionInfo] = []
        self.identifies: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []
        self.presence_updates: list[dict[str, Any]] = []
        self._faults: list[Fault] = []

        # Runtime.
        self._sessions: dict[str, _GatewaySession] = {}
        self._live: dict[int, _GatewayConnection] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._runner: web.AppRunner | None = None
        self.port: int = 0

        self.default_guild: FakeGuild | None = None
        self.default_channel: FakeChannel | None = None
        self.default_user: FakeUser | None = None
        if default_guild:
            self.default_user = self.create_user("alice", global_name="Alice")
            self.default_guild = self._new_guild("Fake Guild", owner=self.app_owner)
            self.default_channel = self._new_channel(self.default_guild, "general")
            self._add_member(self.default_guild, self.default_user)

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind to 127.0.0.1 on a free port and start serving."""
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        self._add_routes(app)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=self._shutdown_timeout
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        _log.debug("fake discord listening on %s", self.base_url)

    async def stop(self) -> None:
        """Close every gateway socket and shut the server down."""
        for conn in list(self._live.values()):
            conn.info.forced = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.ws.close(code=1001, message=b"server stopping"), 2)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for fut in self._waiters:
            if not fut.done():
                fut.cancel()
        self._waiters.clear()

    @property
    def base_url(self) -> str:
        """What ``discord.http.Route.BASE`` must be set to."""
        return f"http://127.0.0.1:{self.port}{API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        """What ``DiscordWebSocket.DEFAULT_GATEWAY`` must be set to."""
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def resume_gateway_url(self) -> str:
        """Sent in READY; a distinct path so tests can tell resumes used it."""
        return f"ws://127.0.0.1:{self.port}/resume"

    # ---------------------------------------------------------------- ids

    def snowflake(self) -> int:
        """A fresh, strictly increasing snowflake (time-based, so history ordering works)."""
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        value = max((ms << 22) | (next(self._ids) & 0xFFF), self._last_snowflake + 1)
        self._last_snowflake = value
        return value

    def snowflake_on_shard(self, shard_id: int, shard_count: int) -> int:
        """A fresh snowflake that, as a guild id, Discord routes to `shard_id` of `shard_count`
        (its millisecond part is moved forward by less than `shard_count`)."""
        value = self.snowflake()
        ms = value >> 22
        ms += (shard_id - ms) % shard_count
        value = max(value, (ms << 22) | (value & 0x3FFFFF))
        self._last_snowflake = value
        return value

    # ---------------------------------------------------------------- waiting

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_for(
        self,
        predicate: Callable[[], _T],
        timeout: float = 5.0,
        *,
        poll_interval: float = 0.01,
        message: str | None = None,
    ) -> _T:
        """Wait until ``predicate()`` is truthy and return its value; TimeoutError otherwise.

        Re-checks on every request/gateway frame the fake handles and every ``poll_interval``
        seconds (so predicates over client-side state work too).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(message or f"condition not met within {timeout}s")
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            await asyncio.wait({fut}, timeout=min(poll_interval, remaining))
            if not fut.done():
                fut.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)

    def find_requests(
        self,
        method: str | None = None,
        path: str | re.Pattern[str] | None = None,
        *,
        route: str | None = None,
        predicate: Callable[[RecordedRequest], bool] | None = None,
    ) -> list[RecordedRequest]:
        """Recorded requests filtered by method, exact path (or regex), route template."""
        out = []
        for r in self.requests:
            if method is not None and r.method != method.upper():
                continue
            if isinstance(path, re.Pattern):
                if path.fullmatch(r.path) is None:
                    continue
            elif path is not None and r.path != path:
                continue
            if route is not None and r.route != route:
                continue
            if predicate is not None and not predicate(r):
                continue
            out.append(r)
        return out

    async def wait_for_request(
        self,
        method: str | None = None,
        path: str | re.Pattern[str] | None = None,
        *,
        route: str | None = None,
        predicate: Callable[[RecordedRequest], bool] | None = None,
        count: int = 1,
        timeout: float = 5.0,
    ) -> RecordedRequest:
        """Wait until ``count`` matching requests were recorded; return the ``count``-th."""

        def check() -> list[RecordedRequest] | None:
            found = self.find_requests(method, path, route=route, predicate=predicate)
            return found if len(found) >= count else None

        found = await self.wait_for(
            check, timeout, message=f"no {count}x {method} {path or route} within {timeout}s"
        )
        assert found is not None  # wait_for only returns truthy values
        return found[count - 1]

    # Convenience views over the records.

    def message_creates(self, channel: Any = None) -> list[RecordedRequest]:
        """POST /channels/{id}/messages requests (optionally for one channel)."""
        reqs = self.find_requests("POST", route="/channels/{channel_id}/messages")
        if channel is not None:
            reqs = [r for r in reqs if r.match_info["channel_id"] == str(_id_of(channel))]
        return reqs

    def message_edits(self, message: Any = None) -> list[RecordedRequest]:
        """PATCH /channels/{id}/messages/{mid} requests (optionally for one message)."""
        reqs = self.find_requests("PATCH", route="/channels/{channel_id}/messages/{message_id}")
        if message is not None:
            reqs = [r for r in reqs if r.match_info["message_id"] == str(_id_of(message))]
        return reqs

    def message_writes(self) -> list[RecordedRequest]:
        """Every request that creates or edits message content, incl. interaction responses.

        Why: for asserting things like "allowed_mentions on every send and edit"; use
        ``RecordedRequest.message_body`` to get the message dict of each.
        """
        out = []
        for r in self.requests:
            if r.faulted:
                continue
            if (
                r.route
                in (
                    "/channels/{channel_id}/messages",
                    "/webhooks/{webhook_id}/{token}",
                )
                and r.method == "POST"
            ):
                out.append(r)
            elif r.method == "PATCH" and r.route in (
                "/channels/{channel_id}/messages/{message_id}",
                "/webhooks/{webhook_id}/{token}/messages/{message_id}",
            ):
                out.append(r)
            elif (
                r.route == "/interactions/{interaction_id}/{token}/callback"
                and isinstance(r.json, dict)
                and r.json.get("type") in (4, 7)
            ):
                out.append(r)
        return out

    def typing_requests(self, channel: Any = None) -> list[RecordedRequest]:
        reqs = self.find_requests("POST", route="/channels/{channel_id}/typing")
        if channel is not None:
            reqs = [r for r in reqs if r.match_info["channel_id"] == str(_id_of(channel))]
        return reqs

    def channel_history(self, channel: Any) -> list[dict[str, Any]]:
        """Stored messages in a channel, oldest first (user and bot messages alike)."""
        return [self.messages[m] for m in self._channel_messages.get(_id_of(channel), [])]

    def registered_commands(self, guild: Any = None) -> list[dict[str, Any]]:
        """Application commands as registered (global if ``guild`` is None)."""
        key = None if guild is None else _id_of(guild)
        return list(self.commands.get(key, []))

    @property
    def is_connected(self) -> bool:
        """True if some client has a live, READY/RESUMED gateway session."""
        return any(c.session is not None and c.session.ready for c in self._live.values())

    async def wait_until_connected(self, timeout: float = 5.0) -> None:
        await self.wait_for(lambda: self.is_connected, timeout, message="no gateway session")

    # ---------------------------------------------------------------- fault injection

    def fail_next(
        self,
        method: str,
        path: str | re.Pattern[str],
        status: int = 403,
        *,
        code: int | None = None,
        message: str | None = None,
        retry_after: float = 0.05,
        is_global: bool = False,
        times: int = 1,
        errors: dict[str, Any] | None = None,
    ) -> Fault:
        """Make the next ``times`` matching requests fail with ``status``.

        ``path`` is an exact path (``f"/channels/{cid}/messages"``), a route template
        (``"/channels/{channel_id}/messages"``) or a compiled regex; ``method`` may be "*".
        Defaults: 403 → code 50013 "Missing Permissions"; 429 → ``retry_after`` body + Via
        header (discord.py sleeps and retries by itself); 500 → discord.py retries after
        1 + 2*try seconds, so keep ``times`` at 1 for fast tests.
        """
        default_code, default_message = _FAULT_DEFAULTS.get(status, (0, f"{status}: Error"))
        fault = Fault(
            method=method.upper(),
            path=path,
            status=status,
            code=default_code if code is None else code,
            message=default_message if message is None else message,
            retry_after=retry_after,
            is_global=is_global,
            remaining=times,
            errors=errors,
        )
        self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self._faults.clear()

    # ---------------------------------------------------------------- world building

    def create_user(
        self, username: str, *, bot: bool = False, global_name: str | None = None
    ) -> FakeUser:
        """A user known to the fake (no event: users only appear through messages/members)."""
        user = FakeUser(id=self.snowflake(), username=username, bot=bot, global_name=global_name)
        self.users[user.id] = user
        return user

    def _new_guild(self, name: str, *, owner: FakeUser | None = None,
                   shard: tuple[int, int] | None = None) -> FakeGuild:
        owner = owner or self.app_owner
        guild_id = self.snowflake() if shard is None else self.snowflake_on_shard(*shard)
        guild = FakeGuild(id=guild_id, name=name, owner_id=owner.id)
        guild.roles[guild.id] = FakeRole(
            id=guild.id,
            guild_id=guild.id,
            name="@everyone",
            permissions=DEFAULT_EVERYONE_PERMISSIONS,
        )
        self.guilds[guild.id] = guild
        self._add_member(guild, self.bot_user)
        if owner.id != self.bot_user.id:
            self._add_member(guild, owner)
        return guild

    def _new_channel(
        self,
        guild: FakeGuild,
        name: str,
        *,
        type: int = TEXT_CHANNEL,
        parent: Any = None,
        topic: str | None = None,
        overwrites: Sequence[Mapping[str, Any]] = (),
    ) -> FakeChannel:
        channel = FakeChannel(
            id=self.snowflake(),
            type=type,
            guild_id=guild.id,
            name=name,
            position=len(guild.channels),
            parent_id=_id_of(parent) if parent is not None else None,
            topic=topic,
            overwrites=[dict(o) for o in overwrites],
        )
        guild.channels[channel.id] = channel
        self.channels[channel.id] = channel
        return channel

    def _add_member(
        self,
        guild: FakeGuild,
        user: FakeUser,
        *,
        roles: Iterable[Any] = (),
        nick: str | None = None,
    ) -> FakeMember:
        member = FakeMember(
            user=user, guild_id=guild.id, roles=[_id_of(r) for r in roles], nick=nick
        )
        guild.members[user.id] = member
        self.users.setdefault(user.id, user)
        return member

    async def create_guild(
        self,
        name: str,
        *,
        owner: FakeUser | None = None,
        members: Iterable[FakeUser] = (),
        shard: tuple[int, int] | None = None,
    ) -> FakeGuild:
        """A new guild the bot is in; dispatches GUILD_CREATE to connected clients.

        ``shard=(shard_id, shard_count)`` picks an id that Discord routes to that shard.
        """
        guild = self._new_guild(name, owner=owner, shard=shard)
        for user in members:
            self._add_member(guild, user)
        await self.dispatch("GUILD_CREATE", guild.payload(joined=True), intent=INTENT_GUILDS)
        return guild

    async def create_channel(
        self,
        guild: Any,
        name: str,
        *,
        type: int = TEXT_CHANNEL,
        parent: Any = None,
        topic: str | None = None,
        overwrites: Sequence[Mapping[str, Any]] = (),
    ) -> FakeChannel:
        """A guild channel; dispatches CHANNEL_CREATE. ``overwrites``: Discord-shaped dicts."""
        channel = self._new_channel(
            self.guilds[_id_of(guild)],
            name,
            type=type,
            parent=parent,
            topic=topic,
            overwrites=overwrites,
        )
        await self.dispatch("CHANNEL_CREATE", channel.payload(), intent=INTENT_GUILDS)
        return channel

    async def create_thread(
        self,
        parent: Any,
        name: str,
        *,
        owner: FakeUser | None = None,
        private: bool = False,
        archived: bool = False,
    ) -> FakeChannel:
        """A thread under a text channel; dispatches THREAD_CREATE."""
        parent_ch = self.channels[_id_of(parent)]
        assert parent_ch.guild_id is not None, "threads live in guild channels"
        thread = FakeChannel(
            id=self.snowflake(),
            type=PRIVATE_THREAD if private else PUBLIC_THREAD,
            guild_id=parent_ch.guild_id,
            name=name,
            parent_id=parent_ch.id,
            owner_id=(owner or self.default_user or self.bot_user).id,
            archived=archived,
        )
        self.guilds[parent_ch.guild_id].channels[thread.id] = thread
        self.channels[thread.id] = thread
        data = thread.payload()
        data["newly_created"] = True
        await self.dispatch("THREAD_CREATE", data, intent=INTENT_GUILDS)
        return thread

    async def create_role(
        self, guild: Any, name: str, *, permissions: int = 0, mentionable: bool = True
    ) -> FakeRole:
        """A role; dispatches GUILD_ROLE_CREATE."""
        g = self.guilds[_id_of(guild)]
        role = FakeRole(
            id=self.snowflake(),
            guild_id=g.id,
            name=name,
            permissions=permissions,
            position=len(g.roles),
            mentionable=mentionable,
        )
        g.roles[role.id] = role
        await self.dispatch(
            "GUILD_ROLE_CREATE",
            {"guild_id": str(g.id), "role": role.payload()},
            intent=INTENT_GUILDS,
        )
        return role

    async def add_member(
        self, guild: Any, user: FakeUser, *, roles: Iterable[Any] = (), nick: str | None = None
    ) -> FakeMember:
        """Adds ``user`` to a guild; GUILD_MEMBER_ADD only reaches clients with the members
        intent, as on Discord."""
        g = self.guilds[_id_of(guild)]
        member = self._add_member(g, user, roles=roles, nick=nick)
        data = member.payload()
        data["guild_id"] = str(g.id)
        await self.dispatch("GUILD_MEMBER_ADD", data, intent=INTENT_GUILD_MEMBERS)
        return member

    async def create_dm_channel(self, user: FakeUser) -> FakeChannel:
        """The DM channel between ``user`` and the bot (reused if it exists; no event)."""
        for ch in self.channels.values():
            if ch.is_dm and any(u.id == user.id for u in ch.recipients):
                return ch
        ch = FakeChannel(id=self.snowflake(), type=DM_CHANNEL, recipients=[user])
        self.channels[ch.id] = ch
        self.users.setdefault(user.id, user)
        return ch

    # ---------------------------------------------------------------- permissions

    def permissions_for(self, user: Any, channel: Any) -> int:
        """The permission bits ``user`` has in ``channel`` (Discord's overwrite algorithm)."""
        ch = self.channels[_id_of(channel)]
        uid = _id_of(user)
        if ch.guild_id is None:
            return Perm.ALL & ~Perm.ADMINISTRATOR
        guild = self.guilds[ch.guild_id]
        if uid == guild.owner_id:
            return Perm.ALL
        member = guild.members.get(uid)
        role_ids = member.roles if member else []
        perms = guild.everyone_role.permissions
        for rid in role_ids:
            if rid in guild.roles:
                perms |= guild.roles[rid].permissions
        if perms & Perm.ADMINISTRATOR:
            return Perm.ALL
        base_ch = self.channels.get(ch.parent_id or 0) if ch.is_thread else ch
        overwrites = base_ch.overwrites if base_ch is not None else []
        by_id = {int(o["id"]): o for o in overwrites}
        if guild.id in by_id:
            o = by_id[guild.id]
            perms = (perms & ~int(o.get("deny", 0))) | int(o.get("allow", 0))
        allow = deny = 0
        for rid in role_ids:
            if rid in by_id and int(by_id[rid].get("type", 0)) == 0:
                allow |= int(by_id[rid].get("allow", 0))
                deny |= int(by_id[rid].get("deny", 0))
        perms = (perms & ~deny) | allow
        if uid in by_id and int(by_id[uid].get("type", 0)) == 1:
            o = by_id[uid]
            perms = (perms & ~int(o.get("deny", 0))) | int(o.get("allow", 0))
        return perms

    def _require_send(self, channel: FakeChannel) -> None:
        if not self.enforce_permissions or channel.guild_id is None:
            return
        perms = self.permissions_for(self.bot_user, channel)
        if not perms & Perm.VIEW_CHANNEL:
            raise ApiError(403, 50001, "Missing Access")
        need = Perm.SEND_MESSAGES_IN_THREADS if channel.is_thread else Perm.SEND_MESSAGES
        if not perms & need:
            raise ApiError(403, 50013, "Missing Permissions")
        if channel.is_thread and channel.locked:
            raise ApiError(403, 50083, "Thread is archived")

    # ---------------------------------------------------------------- messages

    def _member_of(self, guild_id: int | None, user: FakeUser) -> FakeMember | None:
        if guild_id is None:
            return None
        return self.guilds[guild_id].members.get(user.id)

    def _user_mention_payload(self, guild_id: int | None, user: FakeUser) -> dict[str, Any]:
        data = user.payload()
        member = self._member_of(guild_id, user)
        if member is not None:
            data["member"] = member.payload(with_user=False)
        return data

    def _build_message(
        self,
        channel: FakeChannel,
        author: FakeUser,
        content: str,
        *,
        mentions: Sequence[FakeUser] = (),
        mention_roles: Sequence[int] = (),
        mention_everyone: bool = False,
        reference: dict[str, Any] | None = None,
        embeds: Sequence[Mapping[str, Any]] = (),
        attachments: Sequence[Mapping[str, Any]] = (),
        flags: int = 0,
        webhook_id: int | None = None,
        nonce: Any = None,
        components: Sequence[Any] = (),
        interaction_metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        gid = channel.guild_id
        msg_id = self.snowflake()
        data: dict[str, Any] = {
            "id": str(msg_id),
            "channel_id": str(channel.id),
            "author": author.payload(),
            "content": content,
            "timestamp": _now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": mention_everyone,
            "mentions": [self._user_mention_payload(gid, u) for u in mentions],
            "mention_roles": [str(r) for r in mention_roles],
            "attachments": [dict(a) for a in attachments],
            "embeds": [dict(e) for e in embeds],
            "pinned": False,
            "type": 0,
            "flags": flags,
            "components": list(components),
        }
        if gid is not None:
            data["guild_id"] = str(gid)
            member = self._member_of(gid, author)
            if member is not None and webhook_id is None:
                data["member"] = member.payload(with_user=False)
        if webhook_id is not None:
            data["webhook_id"] = str(webhook_id)
            data["application_id"] = str(self.application_id)
        if nonce is not None:
            data["nonce"] = nonce
        if interaction_metadata is not None:
            data["interaction_metadata"] = interaction_metadata
        if reference is not None:
            ref_id = int(reference["message_id"])
            data["type"] = 19
            data["message_reference"] = {
                "type": 0,
                "message_id": str(ref_id),
                "channel_id": str(reference.get("channel_id") or channel.id),
                **({"guild_id": str(gid)} if gid is not None else {}),
            }
            referenced = self.messages.get(ref_id)
            if referenced is not None:
                ref_copy = dict(referenced)
                ref_copy.pop("referenced_message", None)
                data["referenced_message"] = ref_copy
            else:
                data["referenced_message"] = None
        return data

    def _store(self, data: dict[str, Any]) -> None:
        msg_id = int(data["id"])
        cid = int(data["channel_id"])
        self.messages[msg_id] = data
        self._channel_messages.setdefault(cid, []).append(msg_id)
        if cid in self.channels:
            self.channels[cid].last_message_id = msg_id
        self._notify()

    def _unstore(self, channel_id: int, message_id: int) -> None:
        self.messages.pop(message_id, None)
        with contextlib.suppress(ValueError):
            self._channel_messages.get(channel_id, []).remove(message_id)

    def _resolve_channel(self, channel: Any) -> FakeChannel:
        cid = _id_of(channel)
        try:
            return self.channels[cid]
        except KeyError:
            raise KeyError(f"fake discord has no channel {cid}") from None

    def _mentions_from_content(self, content: str) -> list[FakeUser]:
        out: list[FakeUser] = []
        for raw in _MENTION_USER_RE.findall(content):
            user = self.users.get(int(raw))
            if user is not None and user not in out:
                out.append(user)
        return out

    async def send_user_message(
        self,
        channel_id: Any,
        author: FakeUser,
        content: str,
        *,
        mentions: Sequence[FakeUser] | None = None,
        mention_roles: Sequence[Any] | None = None,
        mention_everyone: bool = False,
        reply_to: Any = None,
        attachments: Sequence[str | tuple[str, bytes] | Mapping[str, Any]] = (),
        embeds: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        """A human posts in a guild channel/thread/DM; dispatches MESSAGE_CREATE.

        ``mentions`` defaults to the known users written as ``<@id>`` in ``content`` (pass a
        list to override); ``mention_roles`` likewise from ``<@&id>``. ``reply_to`` is a
        message id (or dict/object with ``id``) in the same channel. The author is made a
        member of the guild if needed. ``attachments`` items are file names, ``(name, bytes)``
        pairs (served by the fake, so ``Attachment.read()`` works) or full payload dicts.
        ``channel_id`` may be an id or a channel object. Returns the stored message payload.
        """
        ch = self._resolve_channel(channel_id)
        self.users.setdefault(author.id, author)
        if ch.guild_id is not None and author.id not in self.guilds[ch.guild_id].members:
            self._add_member(self.guilds[ch.guild_id], author)
        if mentions is None:
            mentions = self._mentions_from_content(content)
        if mention_roles is None:
            role_ids = [int(r) for r in _MENTION_ROLE_RE.findall(content)]
        else:
            role_ids = [_id_of(r) for r in mention_roles]
        reference = None
        if reply_to is not None:
            ref_id = int(reply_to["id"]) if isinstance(reply_to, Mapping) else _id_of(reply_to)
            reference = {"message_id": ref_id, "channel_id": ch.id}
        data = self._build_message(
            ch,
            author,
            content,
            mentions=mentions,
            mention_roles=role_ids,
            mention_everyone=mention_everyone,
            reference=reference,
            attachments=[self._user_attachment(a) for a in attachments],
            embeds=embeds,
        )
        self._store(data)
        await self._dispatch_message_event("MESSAGE_CREATE", ch, data)
        return data

    def _user_attachment(self, item: str | tuple[str, bytes] | Mapping[str, Any]) -> dict[str, Any]:
        if isinstance(item, str):
            return self.attachment(item)
        if isinstance(item, tuple):
            return self.attachment(item[0], item[1])
        return dict(item)

    async def send_dm(
        self,
        author: FakeUser,
        content: str,
        *,
        reply_to: Any = None,
        attachments: Sequence[str | tuple[str, bytes] | Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        """``author`` DMs the bot (creating the DM channel if needed); MESSAGE_CREATE without
        ``guild_id``, as Discord sends it."""
        ch = await self.create_dm_channel(author)
        return await self.send_user_message(
            ch, author, content, reply_to=reply_to, attachments=attachments
        )

    async def edit_user_message(self, message: Any, content: str) -> dict[str, Any]:
        """A human edits their message; dispatches MESSAGE_UPDATE."""
        mid = int(message["id"]) if isinstance(message, Mapping) else _id_of(message)
        data = self.messages[mid]
        data["content"] = content
        data["edited_timestamp"] = _now_iso()
        data["mentions"] = [
            self._user_mention_payload(self.channels[int(data["channel_id"])].guild_id, u)
            for u in self._mentions_from_content(content)
        ]
        ch = self.channels[int(data["channel_id"])]
        await self._dispatch_message_event("MESSAGE_UPDATE", ch, data)
        return data

    async def delete_user_message(self, message: Any) -> None:
        """A message disappears; dispatches MESSAGE_DELETE."""
        mid = int(message["id"]) if isinstance(message, Mapping) else _id_of(message)
        data = self.messages[mid]
        ch = self.channels[int(data["channel_id"])]
        self._unstore(ch.id, mid)
        await self._dispatch_message_event(
            "MESSAGE_DELETE", ch, {"id": str(mid), "channel_id": str(ch.id)}
        )

    async def _dispatch_message_event(
        self, event: str, channel: FakeChannel, data: dict[str, Any]
    ) -> None:
        """Per-session MESSAGE_* dispatch honouring GUILD/DIRECT_MESSAGES and MESSAGE_CONTENT."""
        payload = dict(data)
        if channel.guild_id is not None:
            payload["guild_id"] = str(channel.guild_id)
        intent = INTENT_DIRECT_MESSAGES if channel.guild_id is None else INTENT_GUILD_MESSAGES
        author_id = int(data["author"]["id"]) if "author" in data else None
        mentioned = any(int(m["id"]) == self.bot_user.id for m in data.get("mentions", []))
        exempt = channel.guild_id is None or mentioned or author_id == self.bot_user.id

        def transform(session: _GatewaySession) -> dict[str, Any]:
            if exempt or session.has_intent(INTENT_MESSAGE_CONTENT) or "content" not in payload:
                return payload
            # Discord blanks these for apps without the message content intent.
            return {**payload, "content": "", "embeds": [], "attachments": [], "components": []}

        await self.dispatch(event, payload, intent=intent, transform=transform)

    # ---------------------------------------------------------------- interactions

    def _find_registered(self, name: str, guild_id: int | None) -> dict[str, Any] | None:
        scopes: list[int | None] = [guild_id, None] if guild_id is not None else [None]
        for scope in scopes:
            for cmd in self.commands.get(scope, []):
                if cmd["name"] == name and cmd.get("type", 1) == 1:
                    return cmd
        return None

    def _option_payload(
        self,
        name: str,
        value: Any,
        registered: Mapping[str, Any] | None,
        resolved: dict[str, dict[str, Any]],
        guild_id: int | None,
    ) -> dict[str, Any]:
        reg_type = int(registered["type"]) if registered else None
        if isinstance(value, FakeUser):
            resolved.setdefault("users", {})[str(value.id)] = value.payload()
            member = self._member_of(guild_id, value)
            if member is not None:
                m = member.payload(with_user=False)
                m["permissions"] = str(DEFAULT_EVERYONE_PERMISSIONS)
                resolved.setdefault("members", {})[str(value.id)] = m
            return {"name": name, "type": 6, "value": str(value.id)}
        if isinstance(value, FakeChannel):
            ch = value.payload()
            ch["permissions"] = str(self.permissions_for(self.bot_user, value))
            resolved.setdefault("channels", {})[str(value.id)] = ch
            return {"name": name, "type": 7, "value": str(value.id)}
        if isinstance(value, FakeRole):
            resolved.setdefault("roles", {})[str(value.id)] = value.payload()
            return {"name": name, "type": 8, "value": str(value.id)}
        if isinstance(value, bool):
            return {"name": name, "type": 5, "value": value}
        if isinstance(value, int):
            return {"name": name, "type": reg_type if reg_type in (4, 10) else 4, "value": value}
        if isinstance(value, float):
            return {"name": name, "type": 10, "value": value}
        return {"name": name, "type": reg_type or 3, "value": value}

    def _build_options(
        self,
        values: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
        registered: Sequence[Mapping[str, Any]],
        resolved: dict[str, dict[str, Any]],
        guild_id: int | None,
    ) -> list[dict[str, Any]]:
        if values is None:
            return []
        if not isinstance(values, Mapping):
            return [dict(v) for v in values]  # already Discord-shaped
        reg_by_name = {o["name"]: o for o in registered}
        return [
            self._option_payload(n, v, reg_by_name.get(n), resolved, guild_id)
            for n, v in values.items()
        ]

    async def invoke_slash_command(
        self,
        name: str,
        options: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        channel_id: Any = None,
        user: FakeUser | None = None,
        *,
        guild_id: int | None | Any = ...,
        member_permissions: int | None = None,
        locale: str = "en-US",
    ) -> InteractionHandle:
        """A user runs ``/name``; dispatches INTERACTION_CREATE (type 2) and returns a handle.

        ``name`` may be ``"group sub"`` / ``"group sub leaf"`` for subcommands. ``options`` is
        a ``{name: value}`` mapping (str/int/float/bool/FakeUser/FakeChannel/FakeRole; types
        taken from the registered command when known) or a raw Discord option list.
        ``channel_id`` (an id or channel object) defaults to ``default_channel``; ``user`` to
        ``default_user``; ``guild_id``
        defaults to the channel's guild (None in DMs). ``member_permissions`` defaults to the
        user's computed permissions in the channel. ``data.id``/``data.guild_id`` come from
        the registered command if one was synced.
        """
        ch = self._resolve_channel(channel_id if channel_id is not None else self.default_channel)
        user = user or self.default_user
        assert user is not None, "pass user= when the fake has no default_user"
        gid: int | None = (
            ch.guild_id if guild_id is ... else (None if guild_id is None else _id_of(guild_id))
        )
        self.users.setdefault(user.id, user)
        if gid is not None and user.id not in self.guilds[gid].members:
            self._add_member(self.guilds[gid], user)

        parts = name.split()
        registered = self._find_registered(parts[0], gid)
        resolved: dict[str, dict[str, Any]] = {}
        reg_opts: list[dict[str, Any]] = list(registered.get("options", [])) if registered else []
        path_nodes: list[tuple[str, int]] = []
        for sub in parts[1:]:
            match = next((o for o in reg_opts if o["name"] == sub), None)
            sub_type = int(match["type"]) if match else (2 if sub != parts[-1] else 1)
            path_nodes.append((sub, sub_type))
            reg_opts = list(match.get("options", [])) if match else []
        leaf_options = self._build_options(options, reg_opts, resolved, gid)
        opts = leaf_options
        for sub, sub_type in reversed(path_nodes):
            opts = [{"name": sub, "type": sub_type, "options": opts}]

        data: dict[str, Any] = {
            "id": str(registered["id"]) if registered else str(self.snowflake()),
            "name": parts[0],
            "type": 1,
            "options": opts,
        }
        if registered and registered.get("guild_id"):
            data["guild_id"] = str(registered["guild_id"])
        if resolved:
            data["resolved"] = resolved

        interaction_id = self.snowflake()
        token = "itoken-" + secrets.token_urlsafe(24)
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": 2,
            "data": data,
            "channel_id": str(ch.id),
            "channel": ch.payload(),
            "token": token,
            "version": 1,
            "locale": locale,
            "entitlements": [],
            "attachment_size_limit": 8 * 1024 * 1024,
            "app_permissions": str(self.permissions_for(self.bot_user, ch)),
        }
        if gid is not None:
            guild = self.guilds[gid]
            member = guild.members[user.id]
            perms = (
                self.permissions_for(user, ch) if member_permissions is None else member_permissions
            )
            m = member.payload()
            m["permissions"] = str(perms)
            payload.update(
                guild_id=str(gid),
                guild={"id": str(gid), "locale": "en-US", "features": []},
                guild_locale="en-US",
                member=m,
                context=0,
                authorizing_integration_owners={"0": str(gid)},
            )
        else:
            payload.update(
                user=user.payload(),
                context=1,
                authorizing_integration_owners={"1": str(user.id)},
            )

        handle = InteractionHandle(
            fake=self,
            id=interaction_id,
            token=token,
            name=name,
            channel_id=ch.id,
            guild_id=gid,
            user=user,
            payload=payload,
            dispatched_at=asyncio.get_running_loop().time(),
        )
        self.interactions[interaction_id] = handle
        await self.dispatch("INTERACTION_CREATE", payload)
        return handle

    # ---------------------------------------------------------------- gateway control

    async def dispatch(
        self,
        event: str,
        data: Any,
        *,
        intent: int | None = None,
        transform: Callable[[_GatewaySession], Any] | None = None,
    ) -> int:
        """Send a DISPATCH (op 0) to every live-or-resumable session; returns how many got it.

        Sessions whose IDENTIFY lacked ``intent`` are skipped, and so are sharded sessions
        that do not hold the event's guild (`_GatewaySession.receives`; the guild is read from
        ``data``). Events for a session whose socket is down are kept in its backlog and
        replayed on RESUME, like Discord does.
        """
        count = 0
        guild_id = _guild_of(event, data)
        for session in list(self._sessions.values()):
            if not session.ready:
                continue
            if intent is not None and not session.has_intent(intent):
                continue
            if not session.receives(guild_id):
                continue
            d = transform(session) if transform is not None else data
            await self._send_dispatch(session, event, d)
            count += 1
        if count == 0:
            _log.debug("fake discord: %s had no session to go to", event)
        self._notify()
        return count

    async def _send_dispatch(self, session: _GatewaySession, event: str, data: Any) -> None:
        async with session.lock:
            session.seq += 1
            payload = {"op": 0, "t": event, "s": session.seq, "d": data}
            session.backlog.append(payload)
            del session.backlog[:-1000]
            conn = session.connection
            if conn is not None:
                await self._send(conn, payload)

    async def _send(self, conn: _GatewayConnection, payload: dict[str, Any]) -> None:
        self.gateway_frames.append(
            GatewayFrame(
                "send",
                payload["op"],
                payload.get("t"),
                payload.get("d"),
                asyncio.get_running_loop().time(),
                conn.info.id,
            )
        )
        await conn.send(payload)

    async def disconnect_gateway(self, code: int = 4000, *, reason: str = "forced by test") -> int:
        """Close every live gateway socket with ``code`` (4000 = resumable); returns how many.

        The sessions stay resumable, so discord.py reconnects to READY's ``resume_gateway_url``
        and sends RESUME; events dispatched meanwhile are replayed.
        """
        conns = list(self._live.values())
        for conn in conns:
            conn.info.forced = True
            conn.info.close_code = code
            if conn.session is not None:
                conn.session.connection = None
            await conn.ws.close(code=code, message=reason.encode())
        self._notify()
        return len(conns)

    async def request_reconnect(self) -> None:
        """Send op 7 RECONNECT: the client closes and resumes."""
        for conn in list(self._live.values()):
            await self._send(conn, {"op": 7, "d": None})

    async def invalidate_sessions(self, *, resumable: bool = False) -> None:
        """Send op 9 INVALID_SESSION. Quirk: discord.py then re-IDENTIFYs only after a 5 s
        sleep (``Client.before_identify_hook``), so avoid this in fast tests."""
        for conn in list(self._live.values()):
            if not resumable and conn.session is not None:
                self._sessions.pop(conn.session.id, None)
            await self._send(conn, {"op": 9, "d": resumable})

    # ---------------------------------------------------------------- gateway handler

    async def _gateway_handler(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0, autoclose=True)
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        info = GatewayConnectionInfo(
            id=len(self.connections) + 1,
            url=str(request.url),
            path=request.path,
            compress=request.query.get("compress"),
            opened_at=loop.time(),
        )
        self.connections.append(info)
        conn = _GatewayConnection(info, ws)
        self._live[info.id] = conn
        self._notify()
        try:
            await self._send(
                conn, {"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}}
            )
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    raw = msg.data
                elif msg.type == WSMsgType.BINARY:
                    raw = msg.data.decode()
                else:
                    continue
                try:
                    payload = json.loads(raw)
                except ValueError:
                    _log.warning("fake discord: bad gateway frame %r", raw[:200])
                    continue
                self.gateway_frames.append(
                    GatewayFrame(
                        "recv",
                        payload.get("op", -1),
                        payload.get("t"),
                        payload.get("d"),
                        loop.time(),
                        info.id,
                    )
                )
                try:
                    await self._on_gateway_payload(conn, payload)
                except Exception as exc:  # a fake bug must not silently hang the client
                    _log.exception("fake discord: gateway handler failed")
                    self.handler_errors.append(exc)
                self._notify()
        finally:
            self._live.pop(info.id, None)
            info.closed_at = loop.time()
            if info.close_code is None:  # forced/refused closes already recorded their code
                info.close_code = ws.close_code
            session = conn.session
            if session is not None:
                if session.connection is conn:
                    session.connection = None
                # A client-initiated 1000/1001 close ends the session (not resumable).
                if not info.forced and ws.close_code in (1000, 1001):
                    self._sessions.pop(session.id, None)
            self._notify()
        return ws

    async def _on_gateway_payload(self, conn: _GatewayConnection, payload: dict[str, Any]) -> None:
        op = payload.get("op")
        d = payload.get("d")
        if op == 1:  # HEARTBEAT
            await self._send(conn, {"op": 11})
        elif op == 2:  # IDENTIFY
            await self._identify(conn, d or {})
        elif op == 6:  # RESUME
            await self._resume(conn, d or {})
        elif op == 3:  # PRESENCE UPDATE
            self.presence_updates.append(d or {})
        elif op == 8:  # REQUEST GUILD MEMBERS
            await self._request_members(conn, d or {})
        elif op == 4:  # VOICE STATE UPDATE: not supported
            _log.debug("fake discord: ignoring voice state update %r", d)
        else:
            _log.warning("fake discord: unhandled gateway op %r", op)

    async def _identify(self, conn: _GatewayConnection, d: dict[str, Any]) -> None:
        self.identifies.append(d)
        if d.get("token") != self.token:
            await self._refuse(conn, 4004, "Authentication failed.")
            return
        intents = int(d.get("intents", 0))
        if intents & PRIVILEGED_INTENTS and not self.privileged_intents_allowed:
            await self._refuse(conn, 4014, "Disallowed intent(s).")
            return
        session = _GatewaySession(
            id=secrets.token_hex(16), intents=intents, shard=d.get("shard"), connection=conn
        )
        conn.session = session
        ready: dict[str, Any] = {
            "v": 10,
            "user": self._bot_user_payload(),
            "guilds": [{"id": str(g), "unavailable": True} for g in self.guilds
                       if session.receives(g)],
            "session_id": session.id,
            "resume_gateway_url": self.resume_gateway_url,
            "application": {"id": str(self.application_id), "flags": self._application_flags()},
            "private_channels": [],
            "relationships": [],
            "user_settings": {},
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "_trace": ["fake-discord"],
        }
        if session.shard is not None:
            ready["shard"] = session.shard
        await self._send_dispatch(session, "READY", ready)
        for guild in list(self.guilds.values()):
            if not session.receives(guild.id):
                continue
            await self._send_dispatch(session, "GUILD_CREATE", guild.payload())
        session.ready = True
        self._sessions[session.id] = session

    async def _refuse(self, conn: _GatewayConnection, code: int, reason: str) -> None:
        """Close the socket with a fatal gateway close code (4004 bad token, 4014 intents)."""
        conn.info.close_code = code
        await conn.ws.close(code=code, message=reason.encode())

    async def _resume(self, conn: _GatewayConnection, d: dict[str, Any]) -> None:
        session = self._sessions.get(str(d.get("session_id")))
        if session is None or d.get("token") != self.token:
            await self._send(conn, {"op": 9, "d": False})
            return
        seq = int(d.get("seq") or 0)
        self.resumes.append({"session_id": session.id, "seq": seq, "url": conn.info.url})
        async with session.lock:
            session.connection = conn
            conn.session = session
            for payload in session.backlog:
                if payload["s"] > seq:
                    await self._send(conn, payload)
            session.seq += 1
            resumed = {"op": 0, "t": "RESUMED", "s": session.seq, "d": {"_trace": ["fake"]}}
            session.backlog.append(resumed)
            await self._send(conn, resumed)

    async def _request_members(self, conn: _GatewayConnection, d: dict[str, Any]) -> None:
        guild = self.guilds.get(int(d.get("guild_id", 0)))
        if guild is None or conn.session is None:
            return
        members = list(guild.members.values())
        if d.get("user_ids"):
            wanted = {int(u) for u in d["user_ids"]}
            members = [m for m in members if m.user.id in wanted]
        elif d.get("query"):
            q = str(d["query"]).lower()
            members = [m for m in members if m.user.username.lower().startswith(q)]
        limit = int(d.get("limit") or 0)
        if limit:
            members = members[:limit]
        chunk: dict[str, Any] = {
            "guild_id": str(guild.id),
            "members": [m.payload() for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
        }
        if d.get("nonce") is not None:
            chunk["nonce"] = d["nonce"]
        await self._send_dispatch(conn.session, "GUILD_MEMBERS_CHUNK", chunk)

    def _application_flags(self) -> int:
        # GATEWAY_PRESENCE_LIMITED | GATEWAY_GUILD_MEMBERS_LIMITED | GATEWAY_MESSAGE_CONTENT_LIMITED
        return (1 << 13) | (1 << 15) | (1 << 19) if self.privileged_intents_allowed else 0

    def _bot_user_payload(self) -> dict[str, Any]:
        data = self.bot_user.payload()
        data.update(verified=True, mfa_enabled=False, flags=0, locale="en-US", email=None)
        return data

    def _application_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.application_id),
            "name": self.bot_user.username,
            "icon": None,
            "description": "",
            "summary": "",
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "flags": self._application_flags(),
            "owner": self.app_owner.payload(),
            "team": None,
            "rpc_origins": [],
            "tags": [],
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "bot": self.bot_user.payload(),
        }

    # ---------------------------------------------------------------- REST plumbing

    def _add_routes(self, app: web.Application) -> None:
        p = API_PREFIX
        r = app.router
        r.add_get("/", self._gateway_handler)
        r.add_get("/resume", self._gateway_handler)
        r.add_get("/attachments/{attachment_id}/{filename}", self._get_attachment)
        r.add_get(p + "/gateway", self._get_gateway)
        r.add_get(p + "/gateway/bot", self._get_gateway_bot)
        r.add_get(p + "/users/@me", self._get_me)
        r.add_get(p + "/users/{user_id}", self._get_user)
        r.add_post(p + "/users/@me/channels", self._create_dm)
        r.add_get(p + "/applications/@me", self._get_application)
        r.add_get(p + "/oauth2/applications/@me", self._get_application)
        cmds = p + "/applications/{application_id}/commands"
        gcmds = p + "/applications/{application_id}/guilds/{guild_id}/commands"
        for base in (cmds, gcmds):
            r.add_get(base, self._get_commands)
            r.add_put(base, self._bulk_commands)
            r.add_post(base, self._create_command)
            r.add_get(base + "/{command_id}", self._get_command)
            r.add_patch(base + "/{command_id}", self._edit_command)
            r.add_delete(base + "/{command_id}", self._delete_command)
        r.add_get(p + "/guilds/{guild_id}", self._get_guild)
        r.add_get(p + "/guilds/{guild_id}/channels", self._get_guild_channels)
        r.add_get(p + "/guilds/{guild_id}/members/{user_id}", self._get_member)
        ch = p + "/channels/{channel_id}"
        r.add_get(ch, self._get_channel)
        r.add_post(ch + "/typing", self._typing)
        r.add_get(ch + "/messages", self._get_messages)
        r.add_post(ch + "/messages", self._create_message)
        r.add_get(ch + "/messages/{message_id}", self._get_message)
        r.add_patch(ch + "/messages/{message_id}", self._edit_message)
        r.add_delete(ch + "/messages/{message_id}", self._delete_message)
        r.add_put(ch + "/messages/{message_id}/reactions/{emoji}/@me", self._add_reaction)
        r.add_delete(ch + "/messages/{message_id}/reactions/{emoji}/@me", self._remove_reaction)
        r.add_post(ch + "/messages/{message_id}/threads", self._thread_from_message)
        r.add_post(ch + "/threads", self._thread_without_message)
        r.add_put(ch + "/thread-members/@me", self._join_thread)
        r.add_post(
            p + "/interactions/{interaction_id}/{token}/callback", self._interaction_callback
        )
        wh = p + "/webhooks/{webhook_id}/{token}"
        r.add_post(wh, self._webhook_execute)
        r.add_get(wh + "/messages/{message_id}", self._webhook_get_message)
        r.add_patch(wh + "/messages/{message_id}", self._webhook_edit_message)
        r.add_delete(wh + "/messages/{message_id}", self._webhook_delete_message)

    async def _read_body(self, request: web.Request) -> tuple[Any, list[tuple[str, bytes]]]:
        """JSON body, or ``payload_json`` + file names of a multipart upload."""
        ctype = request.content_type
        if ctype.startswith("multipart/"):
            payload: Any = None
            files: list[tuple[str, bytes]] = []
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader):
                    continue
                raw = await part.read()
                if part.name == "payload_json":
                    payload = json.loads(bytes(raw).decode())
                elif part.filename:
                    files.append((part.filename, bytes(raw)))
            return payload, files
        raw_body = await request.read()
        if not raw_body:
            return None, []
        try:
            return json.loads(raw_body), []
        except ValueError:
            return raw_body.decode(errors="replace"), []

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX):
            response: web.StreamResponse = await handler(request)
            return response
        body, files = await self._read_body(request)
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else None
        route = (
            canonical[len(API_PREFIX) :] if canonical and canonical.startswith(API_PREFIX) else None
        )
        rec = RecordedRequest(
            method=request.method,
            path=request.path[len(API_PREFIX) :],
            route=route,
            match_info=dict(request.match_info),
            query=dict(request.query),
            headers=dict(request.headers),
            json=body,
            uploads=files,
            time=asyncio.get_running_loop().time(),
        )
        self.requests.append(rec)
        request[_RECORD_KEY] = rec
        faulted = self._apply_fault(rec)
        problems = [] if faulted is not None or not self.check_schema else openapi_check(
            rec.method, rec.route, body)
        if problems:
            _log.warning("fake discord: %s %s breaks Discord's schema: %s", rec.method, rec.path,
                         problems)
            self.schema_errors.append((rec, problems))
            faulted = ApiError(400, 50035, "Invalid Form Body: " + "; ".join(problems)).response()
        resp = faulted if faulted is not None else await self._handle(request, handler, rec)
        rec.status = resp.status
        if isinstance(resp, web.Response) and resp.body and resp.content_type == "application/json":
            with contextlib.suppress(Exception):
                rec.response = json.loads(bytes(resp.body))  # type: ignore[arg-type]
        self._notify()
        return resp

    def _apply_fault(self, rec: RecordedRequest) -> web.Response | None:
        for fault in self._faults:
            if fault.remaining > 0 and fault.matches(rec):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                rec.faulted = True
                return fault.response()
        return None

    async def _handle(
        self, request: web.Request, handler: Callable[[web.Request], Any], rec: RecordedRequest
    ) -> web.StreamResponse:
        webhook_like = rec.path.startswith(("/webhooks/", "/interactions/"))
        if not webhook_like and request.headers.get("Authorization") != f"Bot {self.token}":
            return ApiError(401, 0, "401: Unauthorized").response()
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except ApiError as exc:
            return exc.response()
        except web.HTTPNotFound:
            _log.warning("fake discord: unhandled route %s %s", rec.method, rec.path)
            self.unhandled_requests.append(rec)
            return ApiError(404, 0, "404: Not Found").response()
        except web.HTTPMethodNotAllowed:
            _log.warning("fake discord: unhandled method %s %s", rec.method, rec.path)
            self.unhandled_requests.append(rec)
            return ApiError(405, 0, "405: Method Not Allowed").response()
        except Exception as exc:
            # A 400, not a 500: discord.py retries 5xx with 1-9 s sleeps, hiding fake bugs.
            _log.exception("fake discord: handler for %s %s failed", rec.method, rec.path)
            self.handler_errors.append(exc)
            return ApiError(400, 0, f"fake discord handler error: {exc!r}").response()

    def _channel(self, request: web.Request) -> FakeChannel:
        try:
            return self.channels[int(request.match_info["channel_id"])]
        except (KeyError, ValueError):
            raise ApiError(404, 10003, "Unknown Channel") from None

    def _message(self, channel: FakeChannel, message_id: str) -> dict[str, Any]:
        try:
            data = self.messages[int(message_id)]
        except (KeyError, ValueError):
            raise ApiError(404, 10008, "Unknown Message") from None
        if int(data["channel_id"]) != channel.id:
            raise ApiError(404, 10008, "Unknown Message")
        return data

    @staticmethod
    def _body(request: web.Request) -> dict[str, Any]:
        body = request[_RECORD_KEY].json
        return body if isinstance(body, dict) else {}

    # ---------------------------------------------------------------- REST: misc

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return _json_response({"url": self.gateway_url.rstrip("/")})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        return _json_response(
            {
                "url": self.gateway_url.rstrip("/"),
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 1000,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            }
        )

    async def _get_me(self, request: web.Request) -> web.Response:
        return _json_response(self._bot_user_payload())

    async def _get_user(self, request: web.Request) -> web.Response:
        user = self.users.get(int(request.match_info["user_id"]))
        if user is None:
            raise ApiError(404, 10013, "Unknown User")
        return _json_response(user.payload())

    async def _get_application(self, request: web.Request) -> web.Response:
        return _json_response(self._application_payload())

    async def _create_dm(self, request: web.Request) -> web.Response:
        user = self.users.get(int(self._body(request).get("recipient_id", 0)))
        if user is None:
            raise ApiError(404, 10013, "Unknown User")
        return _json_response((await self.create_dm_channel(user)).payload())

    async def _get_guild(self, request: web.Request) -> web.Response:
        guild = self.guilds.get(int(request.match_info["guild_id"]))
        if guild is None:
            raise ApiError(404, 10004, "Unknown Guild")
        data = guild.payload()
        for key in ("channels", "threads", "members", "presences", "voice_states"):
            data.pop(key, None)
        return _json_response(data)

    async def _get_guild_channels(self, request: web.Request) -> web.Response:
        guild = self.guilds.get(int(request.match_info["guild_id"]))
        if guild is None:
            raise ApiError(404, 10004, "Unknown Guild")
        return _json_response([c.payload() for c in guild.channels.values() if not c.is_thread])

    async def _get_member(self, request: web.Request) -> web.Response:
        guild = self.guilds.get(int(request.match_info["guild_id"]))
        if guild is None:
            raise ApiError(404, 10004, "Unknown Guild")
        member = guild.members.get(int(request.match_info["user_id"]))
        if member is None:
            raise ApiError(404, 10007, "Unknown Member")
        return _json_response(member.payload())

    async def _get_channel(self, request: web.Request) -> web.Response:
        return _json_response(self._channel(request).payload())

    async def _typing(self, request: web.Request) -> web.Response:
        self._require_send(self._channel(request))
        return _no_content()

    # ---------------------------------------------------------------- REST: messages

    def _validate_content(self, body: Mapping[str, Any], *, creating: bool) -> None:
        content = body.get("content")
        if content is not None and len(str(content)) > MAX_CONTENT_LENGTH:
            raise _form_error(
                "content",
                "BASE_TYPE_MAX_LENGTH",
                f"Must be {MAX_CONTENT_LENGTH} or fewer in length.",
            )
        if creating and not (
            content
            or body.get("embeds")
            or body.get("sticker_ids")
            or body.get("components")
            or body.get("poll")
            or body.get("attachments")
        ):
            raise ApiError(400, 50006, "Cannot send an empty message")

    def _effective_mentions(
        self,
        channel: FakeChannel,
        content: str,
        allowed: Mapping[str, Any] | None,
        reply_author: FakeUser | None,
    ) -> tuple[list[FakeUser], list[int], bool]:
        """Who a bot message actually pings, per ``allowed_mentions`` (Discord's rules)."""
        if allowed is None:
            parse = {"users", "roles", "everyone"}
            users_allowed: set[int] = set()
            roles_allowed: set[int] = set()
            replied_user = True
        else:
            parse = set(allowed.get("parse") or [])
            users_allowed = {int(u) for u in allowed.get("users") or []}
            roles_allowed = {int(r) for r in allowed.get("roles") or []}
            replied_user = bool(allowed.get("replied_user", False))
        users = [
            u
            for u in self._mentions_from_content(content)
            if "users" in parse or u.id in users_allowed
        ]
        if reply_author is not None and replied_user and reply_author not in users:
            users.append(reply_author)
        roles = [
            int(r)
            for r in _MENTION_ROLE_RE.findall(content)
            if "roles" in parse or int(r) in roles_allowed
        ]
        everyone = "everyone" in parse and ("@everyone" in content or "@here" in content)
        if channel.guild_id is not None and everyone:
            everyone = bool(self.permissions_for(self.bot_user, channel) & Perm.MENTION_EVERYONE)
        return users, roles, everyone

    def attachment(
        self, filename: str, data: bytes = b"", *, content_type: str | None = None
    ) -> dict[str, Any]:
        """An attachment payload whose URL the fake serves (so ``Attachment.read()`` works)."""
        aid = self.snowflake()
        self.attachment_data[aid] = data
        url = f"http://127.0.0.1:{self.port}/attachments/{aid}/{quote(filename)}"
        payload: dict[str, Any] = {
            "id": str(aid),
            "filename": filename,
            "size": len(data),
            "url": url,
            "proxy_url": url,
        }
        if content_type is not None:
            payload["content_type"] = content_type
        return payload

    def _attachments_from(self, files: Sequence[tuple[str, bytes]]) -> list[dict[str, Any]]:
        return [self.attachment(name, data) for name, data in files]

    async def _get_attachment(self, request: web.Request) -> web.Response:
        self.attachment_fetches.append(int(request.match_info["attachment_id"]))
        data = self.attachment_data.get(int(request.match_info["attachment_id"]))
        if data is None:
            return web.Response(status=404, text="not found")
        return web.Response(body=data, content_type="application/octet-stream")

    def _bot_message(
        self,
        channel: FakeChannel,
        body: Mapping[str, Any],
        files: Sequence[tuple[str, bytes]],
        *,
        webhook_id: int | None = None,
    ) -> dict[str, Any]:
        content = str(body.get("content") or "")
        ref = body.get("message_reference")
        reply_author: FakeUser | None = None
        reference: dict[str, Any] | None = None
        if isinstance(ref, Mapping) and ref.get("message_id") is not None:
            referenced = self.messages.get(int(ref["message_id"]))
            if referenced is None:
                if ref.get("fail_if_not_exists", True):
                    raise _form_error(
                        "message_reference", "REPLIES_UNKNOWN_MESSAGE", "Unknown message"
                    )
            else:
                reference = {"message_id": int(ref["message_id"]), "channel_id": channel.id}
                reply_author = self.users.get(int(referenced["author"]["id"]))
        mentions, roles, everyone = self._effective_mentions(
            channel, content, body.get("allowed_mentions"), reply_author
        )
        return self._build_message(
            channel,
            self.bot_user,
            content,
            mentions=mentions,
            mention_roles=roles,
            mention_everyone=everyone,
            reference=reference,
            embeds=body.get("embeds") or [],
            attachments=self._attachments_from(files),
            flags=int(body.get("flags") or 0),
            webhook_id=webhook_id,
            nonce=body.get("nonce"),
            components=body.get("components") or [],
        )

    async def _post_bot_message(self, channel: FakeChannel, data: dict[str, Any]) -> None:
        self._store(data)
        if self.echo_bot_messages and not int(data.get("flags", 0)) & MESSAGE_FLAG_EPHEMERAL:
            await self._dispatch_message_event("MESSAGE_CREATE", channel, data)

    async def _apply_edit(
        self,
        channel: FakeChannel,
        data: dict[str, Any],
        body: Mapping[str, Any],
        files: Sequence[tuple[str, bytes]],
    ) -> dict[str, Any]:
        self._validate_content(body, creating=False)
        if "content" in body:
            data["content"] = str(body.get("content") or "")
            mentions, roles, everyone = self._effective_mentions(
                channel, data["content"], body.get("allowed_mentions"), None
            )
            data["mentions"] = [self._user_mention_payload(channel.guild_id, u) for u in mentions]
            data["mention_roles"] = [str(r) for r in roles]
            data["mention_everyone"] = everyone
        if "embeds" in body:
            data["embeds"] = list(body.get("embeds") or [])
        if "components" in body:
            data["components"] = list(body.get("components") or [])
        if "attachments" in body or files:
            kept = [
                a
                for a in data.get("attachments", [])
                if any(str(a["id"]) == str(b.get("id")) for b in body.get("attachments") or [])
            ]
            data["attachments"] = kept + self._attachments_from(files)
        if "flags" in body:
            data["flags"] = int(body.get("flags") or 0)
        data["flags"] = int(data.get("flags", 0)) & ~MESSAGE_FLAG_LOADING
        data["edited_timestamp"] = _now_iso()
        if self.echo_bot_messages and not data["flags"] & MESSAGE_FLAG_EPHEMERAL:
            await self._dispatch_message_event("MESSAGE_UPDATE", channel, data)
        self._notify()
        return data

    async def _create_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        self._require_send(channel)
        body = self._body(request)
        self._validate_content(body, creating=not request[_RECORD_KEY].files)
        data = self._bot_message(channel, body, request[_RECORD_KEY].uploads)
        await self._post_bot_message(channel, data)
        return _json_response(data)

    async def _get_messages(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        q = request.query
        limit = max(1, min(100, int(q.get("limit", 50))))
        ids = list(self._channel_messages.get(channel.id, []))
        if "around" in q:
            pivot = int(q["around"])
            older = [i for i in ids if i <= pivot][-(limit // 2 + 1) :]
            newer = [i for i in ids if i > pivot][: limit - len(older)]
            chosen = older + newer
        elif "after" in q:
            chosen = [i for i in ids if i > int(q["after"])][:limit]
        else:
            if "before" in q:
                ids = [i for i in ids if i < int(q["before"])]
            chosen = ids[-limit:]
        # Discord returns newest first, whatever the query.
        return _json_response([self.messages[i] for i in reversed(chosen)])

    async def _get_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        return _json_response(self._message(channel, request.match_info["message_id"]))

    async def _edit_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        data = self._message(channel, request.match_info["message_id"])
        if int(data["author"]["id"]) != self.bot_user.id:
            raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        rec: RecordedRequest = request[_RECORD_KEY]
        return _json_response(
            await self._apply_edit(channel, data, self._body(request), rec.uploads)
        )

    async def _delete_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        data = self._message(channel, request.match_info["message_id"])
        if int(data["author"]["id"]) != self.bot_user.id and channel.guild_id is not None:
            if not self.permissions_for(self.bot_user, channel) & Perm.MANAGE_MESSAGES:
                raise ApiError(403, 50013, "Missing Permissions")
        self._unstore(channel.id, int(data["id"]))
        if self.echo_bot_messages:
            await self._dispatch_message_event(
                "MESSAGE_DELETE", channel, {"id": data["id"], "channel_id": str(channel.id)}
            )
        return _no_content()

    async def _add_reaction(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        data = self._message(channel, request.match_info["message_id"])
        self.reactions.append((channel.id, int(data["id"]), request.match_info["emoji"]))
        return _no_content()

    async def _remove_reaction(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        key = (channel.id, int(request.match_info["message_id"]), request.match_info["emoji"])
        with contextlib.suppress(ValueError):
            self.reactions.remove(key)
        return _no_content()

    async def _new_thread_from_rest(
        self, parent: FakeChannel, name: str, *, private: bool, thread_id: int | None = None
    ) -> FakeChannel:
        if parent.guild_id is None or parent.is_thread:
            raise ApiError(400, 50024, "Cannot execute action on this channel type")
        thread = FakeChannel(
            id=thread_id or self.snowflake(),
            type=PRIVATE_THREAD if private else PUBLIC_THREAD,
            guild_id=parent.guild_id,
            name=name,
            parent_id=parent.id,
            owner_id=self.bot_user.id,
        )
        self.guilds[parent.guild_id].channels[thread.id] = thread
        self.channels[thread.id] = thread
        data = thread.payload()
        data["newly_created"] = True
        await self.dispatch("THREAD_CREATE", data, intent=INTENT_GUILDS)
        return thread

    async def _thread_from_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        message = self._message(channel, request.match_info["message_id"])
        body = self._body(request)
        # A thread started from a message shares the message's id, as on Discord.
        thread = await self._new_thread_from_rest(
            channel, str(body.get("name", "thread")), private=False, thread_id=int(message["id"])
        )
        return _json_response(thread.payload())

    async def _thread_without_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        body = self._body(request)
        private = int(body.get("type", PRIVATE_THREAD)) == PRIVATE_THREAD
        thread = await self._new_thread_from_rest(
            channel, str(body.get("name", "thread")), private=private
        )
        return _json_response(thread.payload())

    async def _join_thread(self, request: web.Request) -> web.Response:
        self._channel(request)
        return _no_content()

    # ---------------------------------------------------------------- REST: commands

    def _command_scope(self, request: web.Request) -> int | None:
        if int(request.match_info["application_id"]) != self.application_id:
            raise ApiError(403, 50001, "Missing Access")
        gid = request.match_info.get("guild_id")
        if gid is None:
            return None
        if int(gid) not in self.guilds:
            raise ApiError(403, 50001, "Missing Access")
        return int(gid)

    def _normalise_command(
        self, body: Mapping[str, Any], scope: int | None, existing: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        name = str(body.get("name", ""))
        ctype = int(body.get("type", 1))
        description = str(body.get("description") or "")
        if ctype == 1:
            if not _COMMAND_NAME_RE.fullmatch(name) or name != name.lower():
                raise _form_error("name", "APPLICATION_COMMAND_INVALID_NAME", "Invalid name")
            if not 1 <= len(description) <= 100:
                raise _form_error(
                    "description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
                )
        previous = next(
            (c for c in existing if c["name"] == name and c.get("type", 1) == ctype), None
        )
        cmd = dict(body)
        cmd.update(
            id=previous["id"] if previous else str(self.snowflake()),
            application_id=str(self.application_id),
            version=str(self.snowflake()),
            type=ctype,
            name=name,
            description=description,
            options=list(body.get("options") or []),
            default_member_permissions=body.get("default_member_permissions"),
            nsfw=bool(body.get("nsfw", False)),
        )
        if scope is not None:
            cmd["guild_id"] = str(scope)
        return cmd

    async def _get_commands(self, request: web.Request) -> web.Response:
        return _json_response(self.commands.get(self._command_scope(request), []))

    async def _bulk_commands(self, request: web.Request) -> web.Response:
        scope = self._command_scope(request)
        body = request[_RECORD_KEY].json
        if not isinstance(body, list):
            raise ApiError(400, 50035, "Invalid Form Body")
        existing = self.commands.get(scope, [])
        self.commands[scope] = [self._normalise_command(c, scope, existing) for c in body]
        self._notify()
        return _json_response(self.commands[scope])

    async def _create_command(self, request: web.Request) -> web.Response:
        scope = self._command_scope(request)
        existing = self.commands.setdefault(scope, [])
        cmd = self._normalise_command(self._body(request), scope, existing)
        existing[:] = [c for c in existing if c["id"] != cmd["id"]] + [cmd]
        return _json_response(cmd)

    def _command(self, request: web.Request) -> tuple[int | None, dict[str, Any]]:
        scope = self._command_scope(request)
        for cmd in self.commands.get(scope, []):
            if cmd["id"] == request.match_info["command_id"]:
                return scope, cmd
        raise ApiError(404, 10063, "Unknown application command")

    async def _get_command(self, request: web.Request) -> web.Response:
        return _json_response(self._command(request)[1])

    async def _edit_command(self, request: web.Request) -> web.Response:
        _, cmd = self._command(request)
        cmd.update(self._body(request))
        return _json_response(cmd)

    async def _delete_command(self, request: web.Request) -> web.Response:
        scope, cmd = self._command(request)
        self.commands[scope].remove(cmd)
        return _no_content()

    # ---------------------------------------------------------------- REST: interactions

    def _handle_for(self, interaction_id: str, token: str) -> InteractionHandle:
        handle = self.interactions.get(int(interaction_id)) if interaction_id.isdigit() else None
        if handle is None or handle.token != token:
            raise ApiError(404, 10062, "Unknown interaction")
        return handle

    def _handle_for_webhook(self, webhook_id: str, token: str) -> InteractionHandle:
        if webhook_id != str(self.application_id):
            raise ApiError(404, 10015, "Unknown Webhook")
        for handle in self.interactions.values():
            if handle.token == token:
                if handle.response_type is None:
                    # Followups need an acknowledged interaction first.
                    raise ApiError(404, 10015, "Unknown Webhook")
                return handle
        raise ApiError(404, 10015, "Unknown Webhook")

    async def _interaction_callback(self, request: web.Request) -> web.StreamResponse:
        handle = self._handle_for(request.match_info["interaction_id"], request.match_info["token"])
        rec: RecordedRequest = request[_RECORD_KEY]
        if (
            self.interaction_ack_timeout is not None
            and handle.response_type is None
            and rec.time - handle.dispatched_at > self.interaction_ack_timeout
        ):
            raise ApiError(404, 10062, "Unknown interaction")
        if handle.response_type is not None:
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        body = self._body(request)
        rtype = int(body.get("type", 0))
        raw_inner = body.get("data")
        inner: dict[str, Any] = raw_inner if isinstance(raw_inner, dict) else {}
        channel = self.channels[handle.channel_id]
        message: dict[str, Any] | None = None
        if rtype == 4:
            self._validate_content(inner, creating=not rec.uploads)
            message = self._bot_message(channel, inner, rec.uploads, webhook_id=self.application_id)
        elif rtype == 5:
            flags = MESSAGE_FLAG_LOADING | (int(inner.get("flags") or 0) & MESSAGE_FLAG_EPHEMERAL)
            message = self._build_message(
                channel, self.bot_user, "", flags=flags, webhook_id=self.application_id
            )
        elif rtype not in (1, 6, 7, 8, 9, 10, 12):
            raise _form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID", "Invalid type")
        handle.response_type = rtype
        if message is not None:
            message["interaction_metadata"] = {
                "id": str(handle.id),
                "type": 2,
                "user": handle.user.payload(),
                "authorizing_integration_owners": handle.payload.get(
                    "authorizing_integration_owners", {}
                ),
                "name": handle.name,
            }
            handle.original_message_id = int(message["id"])
            await self._post_bot_message(channel, message)
        if request.query.get("with_response") not in ("1", "true", "True"):
            return _no_content()
        callback: dict[str, Any] = {
            "interaction": {
                "id": str(handle.id),
                "type": 2,
                "response_message_loading": rtype == 5,
                "response_message_ephemeral": bool(
                    message and int(message["flags"]) & MESSAGE_FLAG_EPHEMERAL
                ),
            }
        }
        if message is not None:
            callback["interaction"]["response_message_id"] = message["id"]
            callback["resource"] = {"type": rtype, "message": message}
        else:
            callback["resource"] = {"type": rtype}
        return _json_response(callback)

    def _webhook_message(self, handle: InteractionHandle, message_id: str) -> dict[str, Any]:
        if message_id == "@original":
            if handle.original_message_id is None:
                raise ApiError(404, 10008, "Unknown Message")
            message_id = str(handle.original_message_id)
        return self._message(self.channels[handle.channel_id], message_id)

    async def _webhook_execute(self, request: web.Request) -> web.Response:
        handle = self._handle_for_webhook(
            request.match_info["webhook_id"], request.match_info["token"]
        )
        rec: RecordedRequest = request[_RECORD_KEY]
        body = self._body(request)
        channel = self.channels[handle.channel_id]
        original = handle.original_message
        if (
            handle.response_type == 5
            and original is not None
            and int(original.get("flags", 0)) & MESSAGE_FLAG_LOADING
        ):
            # Discord: the first followup after a deferred (type 5) response edits the
            # "thinking..." message instead of creating a new one.
            self._validate_content(body, creating=not rec.uploads)
            data = await self._apply_edit(channel, original, body, rec.uploads)
            return _json_response(data)
        self._validate_content(body, creating=not rec.uploads)
        data = self._bot_message(channel, body, rec.uploads, webhook_id=self.application_id)
        await self._post_bot_message(channel, data)
        return (
            _json_response(data)
            if request.query.get("wait") in ("1", "true", "True")
            else (_no_content())
        )

    async def _webhook_get_message(self, request: web.Request) -> web.Response:
        handle = self._handle_for_webhook(
            request.match_info["webhook_id"], request.match_info["token"]
        )
        return _json_response(self._webhook_message(handle, request.match_info["message_id"]))

    async def _webhook_edit_message(self, request: web.Request) -> web.Response:
        handle = self._handle_for_webhook(
            request.match_info["webhook_id"], request.match_info["token"]
        )
        data = self._webhook_message(handle, request.match_info["message_id"])
        rec: RecordedRequest = request[_RECORD_KEY]
        channel = self.channels[handle.channel_id]
        return _json_response(
            await self._apply_edit(channel, data, self._body(request), rec.uploads)
        )

    async def _webhook_delete_message(self, request: web.Request) -> web.Response:
        handle = self._handle_for_webhook(
            request.match_info["webhook_id"], request.match_info["token"]
        )
        data = self._webhook_message(handle, request.match_info["message_id"])
        channel = self.channels[handle.channel_id]
        self._unstore(channel.id, int(data["id"]))
        if self.echo_bot_messages:
            await self._dispatch_message_event(
                "MESSAGE_DELETE", channel, {"id": data["id"], "channel_id": str(channel.id)}
            )
        return _no_content()


# --------------------------------------------------------------------------------------------
# Pointing discord.py at the fake
# --------------------------------------------------------------------------------------------


def _guild_of(event: str, data: Any) -> int | None:
    """The guild an event belongs to, for shard routing (None: a DM or no guild)."""
    if not isinstance(data, dict):
        return None
    raw = data.get("id") if event.startswith("GUILD_") and "guild_id" not in data else (
        data.get("guild_id"))
    return int(raw) if raw is not None else None


@contextlib.contextmanager
def patched_discord_endpoints(fake: FakeDiscord) -> Iterator[None]:
    """Point discord.py's REST base and default gateway at ``fake``; restore on exit.

    Why: both are process-global class attributes (``Route.BASE`` is read whenever a Route is
    built, ``DEFAULT_GATEWAY`` on connect and after an invalidated session), so they must stay
    patched for the client's whole life and be restored so other tests see the real values.
    """
    import yarl
    from discord.gateway import DiscordWebSocket
    from discord.http import Route

    old_base = Route.BASE
    old_gateway = DiscordWebSocket.DEFAULT_GATEWAY
    Route.BASE = fake.base_url
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    try:
        yield
    finally:
        Route.BASE = old_base
        DiscordWebSocket.DEFAULT_GATEWAY = old_gateway


_ClientT = TypeVar("_ClientT", bound="discord.Client")


@contextlib.asynccontextmanager
async def run_client(
    fake: FakeDiscord,
    client: _ClientT,
    *,
    token: str | None = None,
    ready_timeout: float = 5.0,
    guild_ready_timeout: float | None = 0.05,
    close_timeout: float = 5.0,
) -> AsyncIterator[_ClientT]:
    """Start ``client`` against ``fake``, wait until it is ready, and always close it.

    ``guild_ready_timeout``: discord.py waits this long after the last GUILD_CREATE before
    firing on_ready (default 2 s); the helper lowers it on the client's connection state
    unless None. If ``client.start`` fails before becoming ready (bad token, 4014, ...), the
    exception propagates from the ``async with``.
    """
    with patched_discord_endpoints(fake):
        if guild_ready_timeout is not None:
            client._connection.guild_ready_timeout = guild_ready_timeout
        task = asyncio.create_task(client.start(token or fake.token), name="fake-discord-client")
        try:
            await fake.wait_for(
                lambda: client.is_ready() or task.done(),
                ready_timeout,
                message="discord client did not become ready",
            )
            if task.done():
                task.result()  # re-raises the start() failure
                raise RuntimeError("client.start() returned before the client was ready")
            yield client
        finally:
            await client.close()
            done, _ = await asyncio.wait({task}, timeout=close_timeout)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            elif not task.cancelled():
                task.exception()  # mark retrieved; re-raised below when nothing else is
        # Only reached when the body and start-up succeeded: surface a crash of start().
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


__all__ = [
    "DEFAULT_EVERYONE_PERMISSIONS",
    "PRIVILEGED_INTENTS",
    "ApiError",
    "Fault",
    "FakeChannel",
    "FakeDiscord",
    "FakeGuild",
    "FakeMember",
    "FakeRole",
    "FakeUser",
    "GatewayConnectionInfo",
    "GatewayFrame",
    "InteractionHandle",
    "Perm",
    "RecordedRequest",
    "patched_discord_endpoints",
    "run_client",
]
