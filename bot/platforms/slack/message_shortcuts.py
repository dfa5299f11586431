"""Slack's message shortcuts that ask about one message (the equivalent of Discord's message
commands): **Explain**, answered at once, **Ask about this**, which first opens a form for
the question, and **Summarize this**, which summarises the message's files and links. The
answer goes in the message's thread, with its controls."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from bot.config import Settings
from bot.core.message_commands import EXPLAIN, NOTHING_TO_SUMMARISE, about_message
from bot.documents.intake import find_links
from bot.errors import UserError
from bot.platforms.slack.answer_flow import AnswerFlow
from bot.platforms.slack.delivery import SlackDelivery, Target
from bot.platforms.slack.events import as_mapping, shortcut_to_incoming
from bot.platforms.slack.format import mentioned_user_ids, slack_to_text
from bot.platforms.slack.reader import SlackReader
from bot.types import ChannelKey

log = logging.getLogger(__name__)

EXPLAIN_CALLBACK_ID = "explain_message"
ASK_CALLBACK_ID = "ask_about_message"
ASK_VIEW_ID = "ask_about_message_form"
SUMMARIZE_CALLBACK_ID = "summarize_message"
METADATA_CHARS = 3_000
"""What a form's private metadata holds: the message's text, files and where it is."""
FILE_FIELDS = ("name", "url_private_download", "size", "mimetype")
"""What of a message's files the form keeps, to read them once the question comes."""


class MessageShortcuts:
    """Explain, Ask about this and Summarize this."""

    def __init__(self, *, settings: Settings, reader: SlackReader, delivery: SlackDelivery,
                 flow: AnswerFlow, allowed: Callable[[str, bool], bool],
                 spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self.settings = settings
        self.reader = reader
        self.delivery = delivery
        self.flow = flow
        self.allowed = allowed
        self._spawn = spawn

    def register(self, app: AsyncApp) -> None:
        app.shortcut(EXPLAIN_CALLBACK_ID)(self._on_explain)
        app.shortcut(ASK_CALLBACK_ID)(self._on_ask)
        app.shortcut(SUMMARIZE_CALLBACK_ID)(self._on_summarize)
        app.view(ASK_VIEW_ID)(self._on_question)

    async def _on_explain(self, ack: AsyncAck, shortcut: dict[str, Any],
                          respond: AsyncRespond) -> None:
        await ack()
        self._spawn(self._answer(shortcut, EXPLAIN, respond))

    async def _on_summarize(self, ack: AsyncAck, shortcut: dict[str, Any],
                            respond: AsyncRespond) -> None:
        await ack()
        self._spawn(self._answer(shortcut, None, respond))

    async def _on_ask(self, ack: AsyncAck, shortcut: dict[str, Any],
                      respond: AsyncRespond) -> None:
        """Open the form at once: its trigger lasts 3 seconds."""
        await ack()
        message = as_mapping(shortcut.get("message"))
        channel = str(as_mapping(shortcut.get("channel")).get("id", ""))
        files = [{k: as_mapping(f).get(k) for k in FILE_FIELDS}
                 for f in message.get("files") or [] if isinstance(f, Mapping)]
        saved: dict[str, Any] = {"channel": channel, "ts": message.get("ts"),
                 "thread_ts": message.get("thread_ts"), "user": message.get("user"),
                 "files": files[:5], "text": str(message.get("text") or "")}
        metadata = json.dumps(saved)
        while len(metadata) > METADATA_CHARS:  # a long message is cut, as quoting cuts it
            saved["text"] = saved["text"][:-200]
            metadata = json.dumps(saved)
        view = {"type": "modal", "callback_id": ASK_VIEW_ID, "private_metadata": metadata,
                "title": {"type": "plain_text", "text": "Ask about this"},
                "submit": {"type": "plain_text", "text": "Ask"},
                "close": {"type": "plain_text", "text": "Cancel"},
                "blocks": [{"type": "input", "block_id": "question", "label": {
                    "type": "plain_text", "text": "Your question about the message"},
                    "element": {"type": "plain_text_input", "action_id": "question",
                                "multiline": True, "max_length": 1000}}]}
        await self.delivery.api("views.open", functools.partial(
            self.delivery.client.views_open, trigger_id=str(shortcut.get("trigger_id", "")),
            view=view), retries=0)

    async def _on_question(self, ack: AsyncAck, body: dict[str, Any],
                           view: dict[str, Any]) -> None:
        await ack()  # closes the form
        state = as_mapping(as_mapping(view.get("state")).get("values"))
        question = str(as_mapping(as_mapping(state.get("question")).get("question"))
                       .get("value") or "")
        try:
            saved = json.loads(str(view.get("private_metadata") or "{}"))
        except ValueError:
            log.warning("Slack: a question form came back without its message")
            return
        shortcut = {"user": body.get("user"), "team": body.get("team"),
                    "channel": {"id": saved.get("channel")},
                    "message": {k: saved.get(k)
                                for k in ("ts", "thread_ts", "user", "text", "files")},
                    "trigger_id": body.get("trigger_id", "")}
        self._spawn(self._answer(shortcut, question, None))

    async def _answer(self, shortcut: Mapping[str, Any], question: str | None,
                      respond: AsyncRespond | None) -> None:
        """Answer `question` about the shortcut's message, in its thread; with no question,
        summarise the message's files and links."""
        user = str(as_mapping(shortcut.get("user")).get("id", ""))
        message = as_mapping(shortcut.get("message"))
        author = str(message.get("user") or "")
        text = str(message.get("text") or "")
        names = await self.reader.names([user, author, *mentioned_user_ids(text)])
        base = shortcut_to_incoming(shortcut, names=names)
        target = Target(base.key.channel_id, None, respond, ephemeral=True)
        if not self.allowed(base.key.channel_id, base.is_direct):
            await self.delivery.respond(target, ["I'm not enabled in this channel."])
            return
        files = [str(as_mapping(f).get("name") or "file") for f in message.get("files") or []]
        try:
            if question is None:  # Summarize this: the files and links, read by the flow
                if self.flow.intake is None or not (files or find_links(slack_to_text(text))):
                    raise UserError(NOTHING_TO_SUMMARISE)
                prompt = ""
            else:
                prompt = about_message(names.get(author) or author or "someone",
                                       slack_to_text(text, names), question,
                                       limit=self.settings.max_input_chars,
                                       attached=files if self.flow.intake is not None else ())
        except UserError as exc:
            await self.delivery.respond(target, [str(exc)])
            return
        root = str(message.get("thread_ts") or message.get("ts") or "") or None
        # The message itself as the event the answer flow reads files from.
        msg = dataclasses.replace(base, key=ChannelKey("slack", base.key.channel_id, root),
                                  text=prompt, command="ask", args=prompt, raw=message)
        await self.flow.answer(msg, Target(msg.key.channel_id, root, respond))
