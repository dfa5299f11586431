"""Fetch a shared link's bytes, safely: only public addresses (`guard`), at most 5 redirects,
http and https only, a byte cap and a time limit.

Each hop is resolved and checked here before any connection is made; aiohttp is then given a
resolver that answers with exactly those checked addresses (and nothing else), so the
connection goes where the check looked. Proxies from the environment are not used.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from bot.documents.guard import AllowList, Refused, check

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
USER_AGENT = "llm-chat-bot/0.1 (reads links shared with it in chat)"
Resolve = Callable[[str, int], Awaitable[list[str]]]
"""``resolve(host, port) -> addresses``; injectable so tests can name any address."""


class FetchError(Exception):
    """The link could not be fetched; the message says why, for the user."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """A fetched page: its bytes, where it ended up, and what the server called it."""

    url: str
    data: bytes
    content_type: str


async def system_resolve(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver (IPv4 and IPv6)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _Pinned(AbstractResolver):
    """Answers aiohttp's lookups with the addresses the guard checked, and only those."""

    def __init__(self) -> None:
        self.checked: dict[str, list[str]] = {}

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        addresses = self.checked.get(host)
        if not addresses:
            raise OSError(f"{host} was not checked")  # never connect anywhere unchecked
        results: list[ResolveResult] = []
        for address in addresses:
            v6 = ipaddress.ip_address(address.split("%", 1)[0]).version == 6
            results.append({"hostname": host, "host": address, "port": port,
                            "family": socket.AF_INET6 if v6 else socket.AF_INET,
                            "proto": 0, "flags": socket.AI_NUMERICHOST})
        return results

    async def close(self) -> None:
        return None


class LinkFetcher:
    """GETs links through the guard.

    Args:
        allow: `LINKS_ALLOW_HOSTS`.
        max_bytes: the most a page may be (`ATTACHMENT_MAX_BYTES`).
        timeout: seconds for the whole fetch, redirects included.
        resolve: how names become addresses (the system resolver by default).
    """

    def __init__(self, *, allow: AllowList | None = None, max_bytes: int = 20_000_000,
                 timeout: float = 20.0, resolve: Resolve = system_resolve) -> None:
        self.allow = allow or AllowList()
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._resolve = resolve

    async def fetch(self, url: str) -> Fetched:
        """The bytes at `url`, after at most `MAX_REDIRECTS` redirects.

        Raises:
            Refused: a hop points at a non-public address, or is not http(s).
            FetchError: an error status, too big, too slow, unreachable, too many redirects.
        """
        try:
            async with asyncio.timeout(self.timeout):
                return await self._follow(URL(url))
        except TimeoutError:
            raise FetchError(f"the site did not answer within {self.timeout:g} s") from None

    async def _follow(self, url: URL) -> Fetched:
        pinned = _Pinned()
        connector = aiohttp.TCPConnector(resolver=pinned, use_dns_cache=False, limit=2)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(10.0, self.timeout))
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False,
                                         headers={"User-Agent": USER_AGENT}) as session:
            for _ in range(MAX_REDIRECTS + 1):
                await self._check(url, pinned)
                try:
                    async with session.get(url, allow_redirects=False) as response:
                        if response.status in (301, 302, 303, 307, 308):
                            location = response.headers.get("Location")
                            if not location:
                                raise FetchError(f"the site answered {response.status} "
                                                 "without saying where to")
                            url = url.join(URL(location))
                            continue
                        if response.status >= 400:
                            raise FetchError(f"the site answered {response.status} "
                                             f"{response.reason or ''}".rstrip())
                        data = await self._body(response)
                        return Fetched(str(url), data,
                                       response.headers.get("Content-Type", ""))
                except aiohttp.ClientError as exc:
                    raise FetchError(f"I could not reach {url.host} "
                                     f"({type(exc).__name__})") from None
            raise FetchError(f"it redirects more than {MAX_REDIRECTS} times")

    async def _check(self, url: URL, pinned: _Pinned) -> None:
        if url.scheme not in ("http", "https"):
            raise Refused(f"it is a {url.scheme or 'relative'} link; I only fetch http and "
                          "https")
        host = url.host
        if not host:
            raise Refused("it has no host name")
        try:
            addresses = [str(ipaddress.ip_address(host.strip("[]")))]
        except ValueError:
            try:
                addresses = await self._resolve(host, url.port or 0)
            except OSError:
                raise FetchError(f"the name {host} does not resolve") from None
        if not addresses:
            raise FetchError(f"the name {host} does not resolve")
        check(host, addresses, self.allow)
        pinned.checked[host] = addresses

    async def _body(self, response: aiohttp.ClientResponse) -> bytes:
        declared = response.content_length
        if declared is not None and declared > self.max_bytes:
            raise FetchError(f"it is {_size(declared)}, more than I read "
                             f"({_size(self.max_bytes)}, ATTACHMENT_MAX_BYTES)")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(65536):
            size += len(chunk)
            if size > self.max_bytes:
                raise FetchError(f"it is larger than I read ({_size(self.max_bytes)}, "
                                 "ATTACHMENT_MAX_BYTES)")
            chunks.append(chunk)
        return b"".join(chunks)


def _size(count: int) -> str:
    return f"{count / 1e6:,.1f} MB" if count >= 1e6 else f"{count / 1e3:,.0f} KB"
