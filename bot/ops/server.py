"""The operations endpoint: ``/healthz`` for the host's health checks, ``/metrics`` for Prometheus.

It runs on the bot's own event loop, on its own port (``OPS_PORT``, off by default), apart
from any platform's port, so a health check never competes with Slack's HTTP mode for a route.
Both handlers only read state the loop already holds (plus one small SQLite count), so they
answer quickly even while the model is busy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bot.engines.service import GenerationService
from bot.errors import ConfigError
from bot.ops.metrics import BotMetrics
from bot.storage.interface import HistoryStore

log = logging.getLogger(__name__)


class Observed(Protocol):
    """What the endpoint reads of the bot (the `ConversationCore`, without importing it)."""

    @property
    def worker(self) -> GenerationService: ...

    @property
    def history(self) -> HistoryStore: ...

    @property
    def metrics(self) -> BotMetrics: ...


class HealthReporting(Protocol):
    """What the endpoint needs of an adapter: its platform and whether it is connected."""

    @property
    def platform(self) -> str: ...

    @property
    def connected(self) -> bool: ...


class OpsServer:
    """Serves ``/healthz`` and ``/metrics`` until `stop()`; an async context manager too.

    Args:
        core: the model worker, history and metrics are read through it.
        adapters: the platforms whose connection ``/healthz`` reports.
        host: the interface to listen on.
        port: the port; 0 picks a free one (tests), read it back from `bound_port`.
        clock: monotonic seconds, for ``uptime_s``.
    """

    def __init__(self, core: Observed, adapters: Sequence[HealthReporting], *,
                 host: str = "0.0.0.0", port: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.core = core
        self.adapters = list(adapters)
        self.host = host
        self.port = port
        self._clock = clock
        self._started = clock()
        self._seen_up: set[str] = set()  # parts seen healthy at least once
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None

    @property
    def bound_port(self) -> int:
        """The port actually listened on (differs from `port` when that was 0)."""
        if self._bound_port is None:
            raise RuntimeError("the ops server has not started")
        return self._bound_port

    async def __aenter__(self) -> OpsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen on `host`:`port`.

        Raises:
            ConfigError: the port is taken or the address cannot be used, so start-up stops
                with one line naming OPS_PORT instead of a traceback.
        """
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        # No access log: a scrape every few seconds would drown the bot's own lines.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            # asyncio's message repeats the address: keep its last part, "address already in use"
            reason = (exc.strerror or str(exc)).rsplit(": ", 1)[-1]
            raise ConfigError("OPS_PORT", f"a port free on OPS_HOST={self.host} ({reason})",
                              str(self.port)) from None
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])
        log.info("health and metrics endpoint on http://%s:%d/healthz and /metrics",
                 self.host, self._bound_port)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def health(self) -> tuple[int, dict[str, Any]]:
        """The HTTP status and JSON body of ``/healthz``.

        200 and "ok" when the model is loaded and every platform is connected; otherwise 503,
        "starting" while the model or a platform has not come up yet, "degraded" once one that
        was up has gone down (a platform reconnecting, the model worker dead).
        """
        worker = self.core.worker
        try:
            info = worker.info
        except RuntimeError:
            info = None  # not loaded (yet)
        loaded = info is not None and bool(getattr(worker, "running", True))
        parts = {"model": loaded, **{f"platform:{a.platform}": bool(a.connected)
                                     for a in self.adapters}}
        self._seen_up.update(name for name, up in parts.items() if up)
        down = [name for name, up in parts.items() if not up]
        if not down:
            status = "ok"
        elif any(name in self._seen_up for name in down):
            status = "degraded"
        else:
            status = "starting"
        body: dict[str, Any] = {
            "status": status,
            "model": {"loaded": loaded, "name": info.name if info else None,
                      "device": info.device if info else None},
            "platforms": {a.platform: {"connected": parts[f"platform:{a.platform}"],
                                       **_details(a)} for a in self.adapters},
            "queue_depth": worker.queue_depth,
            "uptime_s": round(self._clock() - self._started, 3),
        }
        return (200 if status == "ok" else 503), body

    async def _healthz(self, request: web.Request) -> web.Response:
        code, body = self.health()
        return web.json_response(body, status=code)

    async def _metrics(self, request: web.Request) -> web.Response:
        metrics = self.core.metrics
        try:
            stats = await self.core.history.stats()
        except Exception:
            log.warning("could not count the history for /metrics", exc_info=True)
        else:
            metrics.history_messages.set(stats.turns)
        return web.Response(body=generate_latest(metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})


def _details(adapter: object) -> dict[str, Any]:
    """An adapter's own health details, if it has any (the Discord shards it holds)."""
    details = getattr(adapter, "health_details", None)
    return dict(details()) if callable(details) else {}
