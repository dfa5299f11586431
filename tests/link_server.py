"""A real HTTP server on a loopback address, for the link tests: it records every request,
so a test can assert that a refused link never reached it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from tests import document_files as files


@dataclass
class LinkServer:
    host: str
    port: int = 0
    paths: list[str] = field(default_factory=list)
    """Every request's path (with query), in order."""
    never: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"


@contextlib.asynccontextmanager
async def link_server(host: str = "127.0.0.1") -> AsyncIterator[LinkServer]:
    """Serves an article, a PDF, a 404, a page that never answers, a big page, redirects."""
    server = LinkServer(host)

    async def record(request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
        server.paths.append(request.path_qs)
        return await handler(request)

    async def article(request: web.Request) -> web.Response:
        return web.Response(body=files.html_article(), content_type="text/html")

    async def report(request: web.Request) -> web.Response:
        return web.Response(body=files.pdf(), content_type="application/pdf")

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404, text="no such page")

    async def slow(request: web.Request) -> web.Response:
        await server.never.wait()  # a server that never answers
        return web.Response(text="too late")

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # no Content-Length: the cap must count bytes
        await response.prepare(request)
        for _ in range(64):
            await response.write(b"x" * 65536)
        return response

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def loop(request: web.Request) -> web.Response:
        hop = int(request.query.get("hop", "0"))
        raise web.HTTPFound(f"/loop?hop={hop + 1}")

    app = web.Application(middlewares=[web.middleware(record)])
    for path, handler in (("/article", article), ("/report.pdf", report),
                          ("/missing", missing), ("/slow", slow), ("/big", big),
                          ("/redirect", redirect), ("/loop", loop)):
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    server.port = int(runner.addresses[0][1])
    try:
        yield server
    finally:
        server.never.set()
        await runner.cleanup()
