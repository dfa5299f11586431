"""Connecting to Slack: checking the tokens, then Socket Mode or an HTTP listener.

A rejected token is a `ConfigError` with one line naming the variable, never a retry loop.
"""

from __future__ import annotations

import logging

from aiohttp import web
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.errors import ConfigError
from bot.platforms.slack.input_guards import SocketModeHandler, reject_unreadable

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
BAD_TOKEN_ERRORS = frozenset({"invalid_auth", "not_authed", "account_inactive", "token_revoked",
                              "token_expired", "not_allowed_token_type"})


async def identify(client: AsyncWebClient) -> tuple[str, str]:
    """The bot's user id and bot id (``auth.test``).

    Raises:
        ConfigError: Slack rejected the bot token.
    """
    try:
        auth = await client.auth_test()
    except SlackApiError as exc:
        error = str(exc.response.get("error"))
        if error in BAD_TOKEN_ERRORS:
            raise ConfigError("SLACK_BOT_TOKEN",
                              f"a valid bot token (Slack answered {error})") from None
        raise
    user_id = str(auth.get("user_id") or "")
    log.info("Slack: connected to %s as %s (%s)", auth.get("team"), auth.get("user"), user_id)
    return user_id, str(auth.get("bot_id") or "")


async def connect_socket_mode(handler: SocketModeHandler) -> None:
    """Open the Socket Mode connection.

    Raises:
        ConfigError: Slack rejected the app-level token.
    """
    try:
        # Fetch the first URL ourselves: slack_sdk's connect() retries a bad token forever.
        handler.client.wss_uri = await handler.client.issue_new_wss_url()
    except SlackApiError as exc:
        error = str(exc.response.get("error"))
        if error in BAD_TOKEN_ERRORS:
            raise ConfigError("SLACK_APP_TOKEN", "a valid app-level token with the "
                              f"connections:write scope (Slack answered {error})") from None
        raise
    await handler.connect_async()  # type: ignore[no-untyped-call]
    log.info("Slack: Socket Mode connected")


async def serve_http(app: AsyncApp, host: str, port: int) -> web.AppRunner:
    """HTTP mode: listen for signed Events API requests on `host:port` (0 picks a port)."""
    web_app = app.web_app(path=EVENTS_PATH, port=port)
    web_app.middlewares.append(reject_unreadable)
    runner = web.AppRunner(web_app, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("Slack: HTTP mode listening on %s:%d%s", host, int(runner.addresses[0][1]),
             EVENTS_PATH)
    return runner
