"""Secrets never reach a log line or a chat message, even on error paths.

Why: the bot runs with four secrets (DISCORD_TOKEN, SLACK_BOT_TOKEN, SLACK_APP_TOKEN,
SLACK_SIGNING_SECRET); any of them in a log file, a log shipper or an error reply gives the
bot away. The paths that are most likely to quote a request are the failing ones, so both
adapters are driven through them (rejected tokens, 403, 429, 5xx, a model error, a forged
signature, malformed events) with every logger at DEBUG, and everything is searched:

* the raw log records, formatted as they are emitted (what any handler could write, before
  any redaction): no library or module of ours logs a secret at all;
* what the app's own handler writes (`bot.ops.log_setup.build_handler`, with `SecretRedactor`):
  the second lock, tested on its own below with records that do contain secrets;
* every request body the bot sent to the fake Discord and Slack (the token belongs only in
  the Authorization header, which is not searched).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from bot.config import Settings
from bot.core.conversation import APOLOGY, ConversationCore
from bot.errors import ConfigError
from bot.ops.log_setup import REDACTED, SecretRedactor, build_handler
from bot.platforms.discord.adapter import DiscordAdapter
from bot.platforms.slack.app import SlackAdapter
from bot.storage.interface import HistoryStore
from tests.conftest import with_settings
from tests.fakes.backends import FailingBackend
from tests.fakes.discord_server import FakeDiscord, patched_discord_endpoints
from tests.fakes.slack_server import FakeSlack, send_signed_event
from tests.test_discord_adapter import (
    bot_messages,
    channel,
    make_core,
    mention,
    serving,
    settled,
    wait_bot_text,
    wait_done,
)
from tests.test_slack_adapter import ALICE, BOT, CHANNEL, OTHER, core_with, final, running

DISCORD_TOKEN = "MTA5.discord-SECRET-token.5c3f9e0a"
WRONG_DISCORD_TOKEN = "MTA5.discord-SECRET-wrong.0b7d2a11"
SLACK_BOT_TOKEN = "xoxb-111-222-SECRETbot7d1a93"
SLACK_APP_TOKEN = "xapp-1-A111-SECRETapp2b8e41"
SLACK_SIGNING_SECRET = "SECRETsigning9f4c6a0d"
SECRETS = (DISCORD_TOKEN, WRONG_DISCORD_TOKEN, SLACK_BOT_TOKEN, SLACK_APP_TOKEN,
           SLACK_SIGNING_SECRET)


class RawRecords(logging.Handler):
    """Every record as text, formatted the moment it is emitted (before any redaction)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + record.stack_info
        self.lines.append(text)


class Captured:
    def __init__(self) -> None:
        self.raw = RawRecords()
        self.written = io.StringIO()
        self.handler = build_handler(self.written, "json", SECRETS)

    def saw(self, logger: str) -> bool:
        """Whether `logger` (or one below it) wrote anything."""
        return any(line.startswith(logger) for line in self.raw.lines)

    def leaks(self) -> list[str]:
        found = [line for line in self.raw.lines if any(s in line for s in SECRETS)]
        found += [s for s in SECRETS if s in self.written.getvalue()]
        return found


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> Iterator[Captured]:
    """Every logger at DEBUG, into the raw list and the app's redacting handler."""
    caplog.set_level(logging.DEBUG)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level > logging.DEBUG:
            caplog.set_level(logging.DEBUG, logger=name)  # e.g. quietened by configure_logging
    capture = Captured()
    root = logging.getLogger()
    root.addHandler(capture.raw)  # first: it must see the records before the redactor does
    root.addHandler(capture.handler)
    try:
        yield capture
    finally:
        root.removeHandler(capture.handler)
        root.removeHandler(capture.raw)


def assert_no_secret_in(texts: list[str]) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"a secret went out in: {text[:200]}"


# ---------------------------------------------------------------------------- the filter


def test_secret_redactor_blanks_secrets_wherever_they_are_in_a_record() -> None:
    logger = logging.getLogger("tests.secrets.redactor")
    written = io.StringIO()
    handler = build_handler(written, "text", [SLACK_BOT_TOKEN, None, ""])
    json_written = io.StringIO()
    json_handler = build_handler(json_written, "json", [SLACK_BOT_TOKEN])
    logger.addHandler(handler)
    logger.addHandler(json_handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        logger.debug("sending %s with headers %r", "a request",
                     {"Authorization": f"Bearer {SLACK_BOT_TOKEN}"})
        logger.info(f"token in the message itself: {SLACK_BOT_TOKEN}, 100% sure")
        try:
            raise RuntimeError(f"the API refused {SLACK_BOT_TOKEN}")
        except RuntimeError:
            logger.exception("a failure")
        logger.warning("with a stack", stack_info=True, extra={"x": SLACK_BOT_TOKEN})
    finally:
        logger.removeHandler(handler)
        logger.removeHandler(json_handler)
        logger.propagate = True
    text = written.getvalue()
    assert SLACK_BOT_TOKEN not in text and SLACK_BOT_TOKEN not in json_written.getvalue()
    assert f"Bearer {REDACTED}" in text
    assert "token in the message itself: [redacted], 100% sure" in text
    assert f"RuntimeError: the API refused {REDACTED}" in text
    lines = [json.loads(line) for line in json_written.getvalue().splitlines()]
    assert any(REDACTED in entry.get("exception", "") for entry in lines)
    assert SecretRedactor([]).filter(logging.makeLogRecord({"msg": "%s", "args": ("x",)}))


def test_longer_secrets_are_replaced_whole() -> None:
    redactor = SecretRedactor(["abc", "abcdef"])
    assert redactor.redact("xx abcdef yy abc") == f"xx {REDACTED} yy {REDACTED}"


# ---------------------------------------------------------------------------- Discord


async def test_discord_error_paths_never_show_the_token(
        captured: Captured, settings: Settings, history: HistoryStore) -> None:
    async with FakeDiscord(token=DISCORD_TOKEN) as fake, \
            make_core(FailingBackend(), settings, history) as core:
        # A rejected token: the adapter explains and stops, without quoting it.
        rejected = DiscordAdapter(core, with_settings(settings,
                                                      discord_token=WRONG_DISCORD_TOKEN))
        with patched_discord_endpoints(fake):
            await asyncio.wait_for(rejected.start(), 5)
        async with serving(fake, core, settings) as adapter:
            here = f"/channels/{channel(fake).id}/messages"
            fake.fail_next("POST", here, 403)
            await mention(fake, "forbidden")
            await fake.wait_for(lambda: any("cannot post the answer" in line
                                            for line in captured.raw.lines))
            fake.fail_next("POST", here, 429, retry_after=0.05)
            await mention(fake, "rate limited")
            await wait_bot_text(fake, channel(fake), "echo: rate limited")
            fake.fail_next("POST", here, 503, times=20)
            await mention(fake, "server error")
            await fake.wait_for(lambda: any("not delivered" in line
                                            for line in captured.raw.lines))
            fake.clear_faults()
            await mention(fake, "boom")
            await wait_bot_text(fake, channel(fake), APOLOGY)
            handle = await fake.invoke_slash_command("ask", {"prompt": "boom again"})
            await wait_done(handle)
            await fake.dispatch("MESSAGE_CREATE", {"content": "no other field"})
            await fake.dispatch("INTERACTION_CREATE", {})
            await mention(fake, "still fine?")
            await wait_bot_text(fake, channel(fake), "echo: still fine?")
            await settled(fake, adapter)
        sent = [json.dumps([r.json, r.query, r.uploads], default=str) for r in fake.requests]
        shown = [m["content"] for m in bot_messages(fake, channel(fake))]
        authorized = [r for r in fake.requests
                      if r.headers.get("Authorization") == f"Bot {DISCORD_TOKEN}"]
    assert authorized, "the token was really in use"
    assert handle.original_message is not None
    assert_no_secret_in(sent + shown + [str(handle.original_message)])
    assert captured.leaks() == []
    assert any("rejected DISCORD_TOKEN" in line for line in captured.raw.lines)
    assert captured.saw("discord.http") and captured.saw("discord.gateway")  # DEBUG was on


# ---------------------------------------------------------------------------- Slack


@pytest.fixture
def slack_secret_settings(settings: Settings) -> Settings:
    return with_settings(settings, slack_bot_token=SLACK_BOT_TOKEN,
                         slack_app_token=SLACK_APP_TOKEN,
                         slack_signing_secret=SLACK_SIGNING_SECRET)


async def test_slack_error_paths_never_show_a_secret(
        captured: Captured, slack_secret_settings: Settings, history: HistoryStore) -> None:
    settings = slack_secret_settings
    async with FakeSlack() as fake, core_with(FailingBackend(), history, settings) as core:
        logging.getLogger("bot").debug("settings: %r", settings)  # repr hides them too
        errors: list[str] = []
        for method in ("auth.test", "apps.connections.open"):
            fake.fail_next(method, "invalid_auth")
            with pytest.raises(ConfigError) as refused:
                async with running(core, settings, fake):
                    pass
            errors.append(str(refused.value))  # what __main__ prints
        async with running(core, settings, fake) as adapter:
            fake.fail_next("chat.postMessage", "not_in_channel")
            fake.fail_next("chat.update", "ratelimited", retry_after=0)
            one = await fake.send_app_mention(CHANNEL, ALICE, "one")
            await fake.wait_for(lambda: final(fake, CHANNEL, one.event["ts"]))
            fake.fail_next("chat.update", status=500, times=2)
            two = await fake.send_app_mention(CHANNEL, ALICE, "two")
            await fake.wait_for(lambda: final(fake, CHANNEL, two.event["ts"]))
            boom = await fake.send_app_mention(OTHER, ALICE, "boom")
            assert await fake.wait_for(lambda: final(fake, OTHER, boom.event["ts"])) == [APOLOGY]
            await fake.push_event({"type": "app_mention", "text": "no other field"})
            await fake.push_envelope("events_api", {"type": "event_callback", "event": "x"})
            await fake.send_slash_command("/ask", "boom", CHANNEL, ALICE)
            header = await fake.wait_for(lambda: [m for m in fake.posted(CHANNEL)
                                                  if "asked: boom" in m["text"]])
            await fake.wait_for(lambda: final(fake, CHANNEL, header[0]["ts"])[1:] == [APOLOGY])
            await fake.wait_for(lambda: not adapter._tasks)

        # HTTP mode: a forged signature and an unreadable body are refused, quietly.
        http = with_settings(settings, slack_app_token=None, port=0)
        async with running(core, http, fake) as adapter:
            url = f"http://127.0.0.1:{adapter.bound_port}/slack/events"
            forged = await send_signed_event(url, SLACK_SIGNING_SECRET, fake.event_payload({
                "type": "app_mention", "user": ALICE, "text": f"<@{BOT}> forged",
                "ts": "5.000001", "channel": CHANNEL}), bad_signature=True)
            fake.use_http(url, SLACK_SIGNING_SECRET)
            ok = await fake.send_app_mention(CHANNEL, ALICE, "over http")
            await fake.wait_for(lambda: final(fake, CHANNEL, ok.event["ts"]))
        sent = [json.dumps(c.params, default=str) for c in fake.calls]
        sent += [json.dumps(r["body"], default=str) for r in fake.response_posts]
        sent += [json.dumps(a.payload, default=str) for a in fake.acks]
        tokens = {c.method: c.token for c in fake.calls}
    assert tokens["chat.postMessage"] == SLACK_BOT_TOKEN, "the secrets were really in use"
    assert tokens["apps.connections.open"] == SLACK_APP_TOKEN
    assert forged.status == 401
    assert_no_secret_in(errors + sent + [forged.body])
    assert captured.leaks() == []
    assert any("invalid_auth" in e for e in errors)
    assert captured.saw("slack_sdk.web") and captured.saw("slack_bolt")  # DEBUG was on


def test_a_wrong_kind_of_app_token_is_refused_without_quoting_it(
        core: ConversationCore, settings: Settings) -> None:
    wrong = with_settings(settings, slack_bot_token=SLACK_BOT_TOKEN,
                          slack_app_token=SLACK_BOT_TOKEN)
    with pytest.raises(ConfigError) as refused:
        SlackAdapter(core, wrong)
    assert SLACK_BOT_TOKEN not in str(refused.value)
