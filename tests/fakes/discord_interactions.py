"""The fake Discord's interactions beyond slash commands (issue #18): button presses,
message context-menu commands, modal submits, and forum posts.

Self-contained helpers over a running `FakeDiscord`: each dispatches INTERACTION_CREATE as
Discord does (the pressed message, or the target message in ``resolved``) and returns the
`InteractionHandle`, whose callbacks, followups and ``@original`` edits the fake records and
checks against Discord's OpenAPI description like every other request.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from typing import Any

from tests.fakes.discord_server import (
    FakeChannel,
    FakeDiscord,
    FakeUser,
    InteractionHandle,
)

COMPONENT = 3
MODAL_SUBMIT = 5
BUTTON = 2
FORUM_CHANNEL = 15


async def _dispatch(fake: FakeDiscord, itype: int, data: dict[str, Any], channel: FakeChannel,
                    user: FakeUser, *, name: str, member_permissions: int | None,
                    message: dict[str, Any] | None = None,
                    original: int | None = None,
                    guild_installed: bool = True) -> InteractionHandle:
    """INTERACTION_CREATE of type `itype` by `user` in `channel`.

    `guild_installed=False` is a user-installed app used where the bot is not a member:
    Discord then names only the user's installation in ``authorizing_integration_owners``.
    """
    gid = channel.guild_id
    fake.users.setdefault(user.id, user)
    if gid is not None and user.id not in fake.guilds[gid].members:
        fake._add_member(fake.guilds[gid], user)
    interaction_id = fake.snowflake()
    token = "itoken-" + secrets.token_urlsafe(24)
    payload: dict[str, Any] = {
        "id": str(interaction_id), "application_id": str(fake.application_id), "type": itype,
        "data": data, "channel_id": str(channel.id), "channel": channel.payload(),
        "token": token, "version": 1, "locale": "en-US", "entitlements": [],
        "attachment_size_limit": 8 * 1024 * 1024,
        "app_permissions": str(fake.permissions_for(fake.bot_user, channel)),
    }
    if message is not None:
        payload["message"] = message
    if gid is not None:
        member = fake.guilds[gid].members[user.id].payload()
        member["permissions"] = str(fake.permissions_for(user, channel)
                                    if member_permissions is None else member_permissions)
        owners = {"0": str(gid)} if guild_installed else {"1": str(user.id)}
        payload.update(guild_id=str(gid), guild={"id": str(gid), "locale": "en-US",
                                                  "features": []},
                       guild_locale="en-US", member=member, context=0,
                       authorizing_integration_owners=owners)
    else:
        payload.update(user=user.payload(), context=1,
                       authorizing_integration_owners={"1": str(user.id)})
    handle = InteractionHandle(fake=fake, id=interaction_id, token=token, name=name,
                               channel_id=channel.id, guild_id=gid, user=user, payload=payload,
                               dispatched_at=asyncio.get_running_loop().time(),
                               original_message_id=original)
    fake.interactions[interaction_id] = handle
    await fake.dispatch("INTERACTION_CREATE", payload)
    return handle


def stored_message(fake: FakeDiscord, message: Any) -> dict[str, Any]:
    mid = int(message["id"]) if isinstance(message, Mapping) else int(message)
    return fake.messages[mid]


def buttons(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The buttons on a message, in order."""
    return [item for row in message.get("components") or []
            for item in row.get("components", []) if item.get("type") == BUTTON]


def custom_id(fake: FakeDiscord, message: Any, label: str) -> str:
    """The custom id of the button labelled `label` (or with that emoji) on `message`."""
    for button in buttons(stored_message(fake, message)):
        emoji = (button.get("emoji") or {}).get("name")
        if label in (button.get("label"), emoji):
            return str(button["custom_id"])
    raise AssertionError(f"no {label!r} button on the message: "
                         f"{buttons(stored_message(fake, message))}")


async def press_button(fake: FakeDiscord, message: Any, label_or_id: str,
                       user: FakeUser | None = None, *,
                       member_permissions: int | None = None,
                       guild_installed: bool = True) -> InteractionHandle:
    """`user` presses a button of `message` (by label, emoji or custom id, which need not be
    on the message any more): a component interaction carrying the message, as Discord
    sends it."""
    data = stored_message(fake, message)
    ids = {str(b.get("custom_id")) for b in buttons(data)}
    cid = label_or_id if label_or_id in ids or ":" in label_or_id else custom_id(
        fake, data, label_or_id)
    channel = fake.channels[int(data["channel_id"])]
    return await _dispatch(fake, COMPONENT, {"custom_id": cid, "component_type": BUTTON},
                           channel, user or _default(fake), name=f"button {cid}",
                           member_permissions=member_permissions, message=dict(data),
                           original=int(data["id"]), guild_installed=guild_installed)


async def run_message_command(fake: FakeDiscord, name: str, message: Any,
                              user: FakeUser | None = None, *,
                              member_permissions: int | None = None,
                              guild_installed: bool = True) -> InteractionHandle:
    """`user` runs the message command `name` (right-click → Apps) on `message`: the target
    is in ``data.resolved.messages``."""
    data = stored_message(fake, message)
    channel = fake.channels[int(data["channel_id"])]
    registered = next((c for scope in fake.commands.values() for c in scope
                       if c["name"] == name and int(c.get("type", 1)) == 3), None)
    assert registered is not None, f"no message command {name!r} is registered"
    payload = {"id": str(registered["id"]), "name": name, "type": 3,
               "target_id": str(data["id"]), "resolved": {"messages": {str(data["id"]): data}}}
    return await _dispatch(fake, 2, payload, channel, user or _default(fake), name=name,
                           member_permissions=member_permissions,
                           guild_installed=guild_installed)


async def submit_modal(fake: FakeDiscord, opened: InteractionHandle, values: Mapping[str, str],
                       user: FakeUser | None = None) -> InteractionHandle:
    """`user` fills in and submits the modal that `opened` answered with (callback type 9)."""
    callback = await opened.wait_callback()
    assert callback.json["type"] == 9, f"no modal was opened: {callback.json}"
    modal = callback.json["data"]
    rows = [{"type": 1, "components": [
        {"type": 4, "custom_id": item["custom_id"], "value": values.get(item["custom_id"], "")}
        for item in row["components"]]} for row in modal["components"]]
    channel = fake.channels[opened.channel_id]
    return await _dispatch(fake, MODAL_SUBMIT, {"custom_id": modal["custom_id"],
                                                "components": rows},
                           channel, user or opened.user, name=f"modal {modal['custom_id']}",
                           member_permissions=None)


async def create_forum_post(fake: FakeDiscord, forum: FakeChannel, author: FakeUser,
                            title: str, content: str) -> tuple[FakeChannel, dict[str, Any]]:
    """A forum post: a thread in the forum, and its first message with the thread's id (as on
    Discord); THREAD_CREATE, then MESSAGE_CREATE."""
    thread = await fake.create_thread(forum, title, owner=author)
    first = fake._build_message(thread, author, content,
                                mentions=fake._mentions_from_content(content))
    first["id"] = str(thread.id)  # a forum post's first message shares the thread's id
    fake._store(first)
    await fake._dispatch_message_event("MESSAGE_CREATE", thread, first)
    return thread, first


def _default(fake: FakeDiscord) -> FakeUser:
    assert fake.default_user is not None, "pass user= when the fake has no default_user"
    return fake.default_user
