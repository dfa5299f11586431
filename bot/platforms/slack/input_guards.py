"""Unreadable input, refused at the door: Socket Mode envelopes and HTTP bodies bolt cannot read."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Handler
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

log = logging.getLogger(__name__)


def unreadable_event(body: object) -> bool:
    """An Events API body that is not an object, or whose ``event`` is not one."""
    if not isinstance(body, Mapping):
        return True
    return "event" in body and not isinstance(body["event"], Mapping)


class SocketModeHandler(AsyncSocketModeHandler):
    """Acknowledges and logs an events envelope bolt could not read, instead of handing it on.

    Why: bolt would log a traceback and leave the envelope unacknowledged, so Slack would
    send the same garbage again. (slack_sdk already logs and skips frames that are not JSON
    objects.)
    """

    async def handle(  # type: ignore[override]  # bolt narrows it the same way
            self, client: SocketModeClient, req: SocketModeRequest) -> None:
        if req.type == "events_api" and unreadable_event(req.payload):
            log.warning("Slack: ignored an events envelope that could not be read")
            await client.send_socket_mode_response(SocketModeResponse(req.envelope_id))
            return
        await super().handle(client, req)


@web.middleware
async def reject_unreadable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HTTP mode: answer 400 (with one log line) to a body bolt cannot read.

    Why: bolt parses the body before checking its signature and answers 500 with a
    traceback on anything but a JSON object or a form, so anyone could fill the log.
    Nothing is done with such a request either way.
    """
    try:
        if request.content_type == "application/json":
            try:
                body = json.loads(await request.text())
            except ValueError:
                body = None
            if unreadable_event(body):
                raise ValueError("the body is not an event object")
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 413:
            log.warning("Slack: ignored a request to %s over the size limit", request.path)
        raise
    except Exception as exc:
        log.warning("Slack: ignored a request to %s that could not be read (%s)",
                    request.path, type(exc).__name__)
        return web.Response(status=400, text="bad request")
