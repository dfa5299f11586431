"""The fake Slack's AI-app surface (issue #18): chat streaming, the assistant thread methods,
feedback buttons, and block actions over Socket Mode.

Self-contained: `install` registers the methods on a running `FakeSlack` (its
``register_method``), and `send_block_action` presses a button of a stored message. Refusals
and expiry are injectable, so tests can check the fall back to ``chat.update``.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.slack_server import DEFAULT_USER, Delivery, FakeSlack, SlackApiFailure


@dataclass
class AssistantApi:
    """What the methods saw, and how they behave.

    Attributes:
        refuse_streaming: answer ``chat.startStream`` with this error (e.g. ``missing_scope``).
        expire_after: a stream stops taking text after this many ``chat.appendStream`` calls
            (``message_not_in_streaming_state``, as when Slack closes a long stream).
        refuse_status: answer ``assistant.threads.setStatus`` with this error.
        feedback_block: the workspace takes the ``feedback_buttons`` element; otherwise a
            message with one is refused with ``invalid_blocks``.
    """

    fake: FakeSlack
    refuse_streaming: str | None = None
    expire_after: int | None = None
    refuse_status: str | None = None
    feedback_block: bool = True
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[dict[str, Any]] = field(default_factory=list)
    views: list[dict[str, Any]] = field(default_factory=list)

    def _start(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        if self.refuse_streaming:
            raise SlackApiFailure(self.refuse_streaming)
        channel = self.fake._channel(params)
        thread = params.get("thread_ts")
        if not thread:
            raise SlackApiFailure("invalid_arguments")
        if not channel.startswith("D") and not (params.get("recipient_user_id")
                                                and params.get("recipient_team_id")):
            raise SlackApiFailure("invalid_arguments")  # required when streaming to channels
        ts = self.fake.new_ts()
        message = self.fake._bot_message(str(params.get("markdown_text") or ""), ts,
                                         {"thread_ts": thread})
        self.fake._store_message(channel, message)
        self.streams[ts] = {"channel": channel, "appends": 0, "open": True,
                            "recipient_user_id": params.get("recipient_user_id"),
                            "recipient_team_id": params.get("recipient_team_id")}
        return {"ok": True, "channel": channel, "ts": ts}

    def _stream(self, params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        ts = str(params.get("ts") or "")
        stream = self.streams.get(ts)
        message = self.fake._find(str(params.get("channel")), ts)
        if stream is None or message is None:
            raise SlackApiFailure("message_not_found")
        if not stream["open"]:
            raise SlackApiFailure("message_not_in_streaming_state")
        return stream, message

    def _append(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        stream, message = self._stream(params)
        if self.expire_after is not None and stream["appends"] >= self.expire_after:
            stream["open"] = False
            raise SlackApiFailure("message_not_in_streaming_state")
        stream["appends"] += 1
        message["text"] += str(params.get("markdown_text") or "")
        return {"ok": True, "channel": stream["channel"], "ts": params["ts"]}

    def _stop(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        stream, message = self._stream(params)
        blocks = _blocks(params)
        self._check_blocks(blocks)
        for chunk in _json(params.get("chunks")) or []:
            if isinstance(chunk, Mapping) and chunk.get("type") == "markdown_text":
                message["text"] += str(chunk.get("text") or "")
        message["text"] += str(params.get("markdown_text") or "")
        if blocks is not None:
            message["blocks"] = blocks
        stream["open"] = False
        return {"ok": True, "channel": stream["channel"], "ts": params["ts"],
                "message": copy.deepcopy(message)}

    def _status(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        if self.refuse_status:
            raise SlackApiFailure(self.refuse_status)
        self.statuses.append({"channel_id": params.get("channel_id"),
                              "thread_ts": params.get("thread_ts"),
                              "status": params.get("status"), "at": time.monotonic()})
        return {"ok": True}

    def _suggest(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        prompts = _json(params.get("prompts"))
        if not isinstance(prompts, list) or not 1 <= len(prompts) <= 4:
            raise SlackApiFailure("invalid_arguments")
        self.prompts.append(dict(params, prompts=prompts))
        return {"ok": True}

    def _open_view(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        view = _json(params.get("view"))
        if not params.get("trigger_id") or not isinstance(view, dict):
            raise SlackApiFailure("invalid_arguments")
        opened = {**view, "id": f"V{len(self.views) + 1:08d}",
                  "trigger_id": params["trigger_id"]}
        self.views.append(opened)
        return {"ok": True, "view": copy.deepcopy(opened)}

    def _check_blocks(self, blocks: Any) -> None:
        if self.feedback_block or not blocks:
            return
        for block in blocks:
            for element in block.get("elements", []) if isinstance(block, Mapping) else []:
                if isinstance(element, Mapping) and element.get("type") == "feedback_buttons":
                    raise SlackApiFailure("invalid_blocks")

    def _guarded(self, method: str) -> Any:
        original = self.fake._methods[method]

        def call(params: dict[str, Any], token: str | None) -> dict[str, Any]:
            self._check_blocks(_blocks(params))
            return original(params, token)
        return call

    def stream_calls(self) -> list[str]:
        """The streaming and status methods called, in order."""
        names = ("chat.startStream", "chat.appendStream", "chat.stopStream",
                 "assistant.threads.setStatus")
        return [c.method for c in self.fake.calls if c.method in names]


def install(fake: FakeSlack, **behaviour: Any) -> AssistantApi:
    """Register the streaming, assistant and feedback-aware methods on `fake`."""
    api = AssistantApi(fake, **behaviour)
    for method in ("chat.postMessage", "chat.update"):
        fake.register_method(method, api._guarded(method))
    fake.register_method("chat.startStream", api._start)
    fake.register_method("chat.appendStream", api._append)
    fake.register_method("chat.stopStream", api._stop)
    fake.register_method("assistant.threads.setStatus", api._status)
    fake.register_method("assistant.threads.setSuggestedPrompts", api._suggest)
    fake.register_method("views.open", api._open_view)
    return api


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _blocks(params: Mapping[str, Any]) -> Any:
    return _json(params.get("blocks")) if "blocks" in params else None


def ephemeral_blocks(ephemeral: Mapping[str, Any]) -> dict[str, Any]:
    """An ephemeral message the bot sent, as a message `send_block_action` can press on."""
    return {"blocks": _json(ephemeral["params"].get("blocks")) or [],
            "ts": ephemeral["message_ts"]}


def control_values(message: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The controls under a message, by name ("stop", "up", ...): the action to send."""
    found: dict[str, dict[str, Any]] = {}
    for block in message.get("blocks") or []:
        for element in block.get("elements", []):
            if element.get("type") == "button":
                found[json.loads(element["value"])["c"]] = {
                    "type": "button", "action_id": element["action_id"],
                    "block_id": block.get("block_id", ""), "value": element["value"],
                    "text": element["text"]}
            elif element.get("type") == "feedback_buttons":
                for side, name in (("positive_button", "up"), ("negative_button", "down")):
                    found[name] = {"type": "feedback_buttons",
                                   "action_id": element["action_id"],
                                   "block_id": block.get("block_id", ""),
                                   "value": element[side]["value"]}
    return found


async def send_block_action(fake: FakeSlack, channel: str, message: Mapping[str, Any],
                            control: str, user: str = DEFAULT_USER, *,
                            ephemeral: bool = False) -> Delivery:
    """`user` presses the `control` of `message` (a stored message, or an ephemeral one's
    blocks): a ``block_actions`` payload over Socket Mode, with a response URL."""
    actions = control_values(message)
    assert control in actions, f"no {control!r} control on the message: {sorted(actions)}"
    action = {**actions[control], "action_ts": fake.new_ts()}
    ts = str(message.get("ts") or message.get("message_ts") or "")
    container: dict[str, Any] = {"type": "message", "message_ts": ts, "channel_id": channel,
                                 "is_ephemeral": ephemeral}
    if message.get("thread_ts"):
        container["thread_ts"] = message["thread_ts"]
    record = fake._user_record(user)
    payload: dict[str, Any] = {
        "type": "block_actions", "token": "fake-verification-token",
        "api_app_id": fake.app_id, "container": container,
        "trigger_id": f"{fake.new_ts()}.{uuid.uuid4().hex[:10]}",
        "team": {"id": fake.team_id, "domain": fake.team_domain},
        "user": {"id": user, "username": record["name"], "name": record["name"],
                 "team_id": fake.team_id},
        "channel": {"id": channel, "name": fake.channels.get(channel, {}).get("name", "")},
        "is_enterprise_install": False, "enterprise": None, "state": {"values": {}},
        "response_url": fake._new_response_url(channel=channel, user=user, message_ts=ts),
        "actions": [action],
    }
    if not ephemeral:
        payload["message"] = copy.deepcopy(dict(message))
    return await fake.push_envelope("interactive", payload)


async def open_assistant_thread(fake: FakeSlack, channel: str, user: str = DEFAULT_USER,
                                ) -> tuple[str, Delivery]:
    """`user` opens the bot's assistant view: a new DM thread, and its
    ``assistant_thread_started`` event."""
    fake._ensure_channel(channel, create=True, is_im=True)
    root = fake.seed_message(channel, "", user=fake.bot_user_id)["ts"]
    event = {"type": "assistant_thread_started", "event_ts": fake.new_ts(),
             "assistant_thread": {"user_id": user, "channel_id": channel, "thread_ts": root,
                                  "context": {"channel_id": None, "team_id": fake.team_id,
                                              "enterprise_id": None}}}
    return root, await fake.push_event(event)


async def submit_view(fake: FakeSlack, view: Mapping[str, Any], values: Mapping[str, str],
                      user: str = DEFAULT_USER) -> Delivery:
    """`user` fills in the modal `view` (input blocks by block id, one element each) and
    submits it: a ``view_submission`` payload over Socket Mode."""
    state: dict[str, Any] = {}
    for block in view.get("blocks", []):
        if block.get("type") == "input":
            element = block["element"]
            state[block["block_id"]] = {element["action_id"]: {
                "type": element["type"], "value": values.get(block["block_id"], "")}}
    record = fake._user_record(user)
    payload = {
        "type": "view_submission", "token": "fake-verification-token",
        "api_app_id": fake.app_id, "trigger_id": f"{fake.new_ts()}.{uuid.uuid4().hex[:10]}",
        "team": {"id": fake.team_id, "domain": fake.team_domain},
        "user": {"id": user, "username": record["name"], "name": record["name"],
                 "team_id": fake.team_id},
        "view": {**copy.deepcopy(dict(view)), "state": {"values": state},
                 "team_id": fake.team_id, "app_id": fake.app_id},
        "response_urls": [], "is_enterprise_install": False, "enterprise": None,
    }
    return await fake.push_envelope("interactive", payload)
