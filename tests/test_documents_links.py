"""Links are fetched from a real HTTP server on loopback, and the request-forgery guard
refuses loopback, private, link-local and other non-public addresses, after DNS and after
every redirect, without any request reaching a server (nor any connection being tried)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.documents.fetch import FetchError, LinkFetcher
from bot.documents.guard import AllowList, Refused
from bot.documents.intake import Intake, find_links
from bot.documents.sandbox import ReaderProcess
from bot.types import Document
from tests.link_server import LinkServer, link_server


@pytest.fixture
async def connections(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[Any]]:
    """Every connection the event loop starts; one to a non-loopback address is refused
    before it leaves the machine (a safety net: the guard must refuse first)."""
    loop = asyncio.get_running_loop()
    attempts: list[Any] = []
    original = loop.sock_connect

    async def guarded(sock: socket.socket, address: Any) -> None:
        attempts.append(address)
        if not str(address[0]).startswith(("127.", "::1")):
            raise OSError(f"test safety net: no connection to {address[0]}")
        await original(sock, address)

    monkeypatch.setattr(loop, "sock_connect", guarded)
    yield attempts


@pytest.fixture
async def server() -> AsyncIterator[LinkServer]:
    async with link_server("127.0.0.1") as running:
        yield running


def allowing(*entries: str, **options: Any) -> LinkFetcher:
    return LinkFetcher(allow=AllowList.parse(entries), **options)


async def test_a_page_is_fetched_when_its_host_is_allowed(server: LinkServer) -> None:
    fetched = await allowing("127.0.0.1").fetch(server.url("/article"))
    assert b"Aldercliff lighthouse" in fetched.data
    assert server.paths == ["/article"]


@pytest.mark.parametrize("where", ["127.0.0.1", "localhost"])
async def test_loopback_is_refused_without_a_request(server: LinkServer, where: str,
                                                     connections: list[Any]) -> None:
    url = server.url("/article").replace("127.0.0.1", where)
    with pytest.raises(Refused, match="loopback"):
        await allowing().fetch(url)
    assert server.paths == [] and connections == []


async def test_ipv6_loopback_is_refused_without_a_request(connections: list[Any]) -> None:
    async with link_server("::1") as v6:
        with pytest.raises(Refused, match="loopback"):
            await allowing().fetch(v6.url("/article"))
        assert v6.paths == [] and connections == []
        fetched = await allowing("::1").fetch(v6.url("/article"))  # allowed: it is served
        assert b"lighthouse" in fetched.data and v6.paths == ["/article"]


@pytest.mark.parametrize(("url", "why"), [
    ("http://10.1.2.3/", "private"),
    ("http://192.168.0.10:8080/admin", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[fd00::1]/", "private"),
    ("http://100.64.0.1/", "not a public address"),
    ("http://0.0.0.0:80/", "not a public address"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
])
async def test_non_public_addresses_are_refused_before_connecting(
        url: str, why: str, connections: list[Any]) -> None:
    with pytest.raises(Refused, match=why):
        await allowing().fetch(url)
    assert connections == []


async def test_a_name_that_resolves_to_a_private_address_is_refused(
        connections: list[Any]) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return {"metadata.test": ["169.254.169.254"],
                "mixed.test": ["93.184.215.14", "10.0.0.7"]}[host]

    fetcher = LinkFetcher(resolve=resolve)
    with pytest.raises(Refused, match=r"metadata\.test \(169\.254\.169\.254\), a link-local"):
        await fetcher.fetch("http://metadata.test/latest/meta-data/")
    with pytest.raises(Refused, match="private"):  # one bad address is enough
        await fetcher.fetch("https://mixed.test/")
    assert connections == []


async def test_a_redirect_to_a_private_address_is_refused_at_that_hop(
        server: LinkServer, connections: list[Any]) -> None:
    async with link_server("127.0.0.2") as inside:
        fetcher = allowing("127.0.0.1")  # the first server only
        for target in (inside.url("/article"), "http://169.254.169.254/latest/meta-data/",
                       "http://10.0.0.1/"):
            with pytest.raises(Refused):
                await fetcher.fetch(server.url(f"/redirect?to={target}"))
        assert inside.paths == []
        assert [p.split("?")[0] for p in server.paths] == ["/redirect"] * 3
        assert all(address[0] == "127.0.0.1" for address in connections)


async def test_redirects_are_followed_five_times_at_most(server: LinkServer) -> None:
    fetcher = allowing("127.0.0.1")
    target = server.url("/article")
    fetched = await fetcher.fetch(server.url(f"/redirect?to={target}"))
    assert b"lighthouse" in fetched.data and fetched.url == target
    server.paths.clear()
    with pytest.raises(FetchError, match="more than 5 times"):
        await fetcher.fetch(server.url("/loop"))
    assert len(server.paths) == 6  # the first request and five redirects


async def test_only_http_and_https(server: LinkServer) -> None:
    with pytest.raises(Refused, match="file link"):
        await allowing("127.0.0.1").fetch(server.url("/redirect?to=file:///etc/passwd"))
    assert find_links("see ftp://files.example/x and file:///etc/passwd") == []


async def test_errors_caps_and_timeouts_are_short_reasons(server: LinkServer) -> None:
    with pytest.raises(FetchError, match="404"):
        await allowing("127.0.0.1").fetch(server.url("/missing"))
    with pytest.raises(FetchError, match="larger than I read"):
        await allowing("127.0.0.1", max_bytes=1_000_000).fetch(server.url("/big"))
    with pytest.raises(FetchError, match="did not answer within"):
        await allowing("127.0.0.1", timeout=0.3).fetch(server.url("/slow"))
    with pytest.raises(FetchError, match="does not resolve"):
        await allowing().fetch("http://no-such-host.invalid/")


def test_links_are_found_in_chat_text() -> None:
    text = ("read <https://a.example/x> and https://b.example/y?q=1, also "
            "(https://en.wikipedia.org/wiki/Foo_(bar)). and https://b.example/y?q=1")
    assert find_links(text) == ["https://a.example/x", "https://b.example/y?q=1",
                                "https://en.wikipedia.org/wiki/Foo_(bar)"]


def test_the_allow_list_takes_hosts_and_ranges() -> None:
    allow = AllowList.parse(["intranet.example", "10.0.0.0/8", "[::1]"])
    assert allow.allows_host("Intranet.Example.")
    with pytest.raises(ValueError):
        AllowList.parse(["not a host"])


async def test_intake_turns_each_link_into_a_document_or_a_reason(server: LinkServer) -> None:
    fetcher = allowing("127.0.0.1")
    async with Intake(reader=ReaderProcess(), fetcher=fetcher, max_bytes=1_000_000) as intake:
        shared = await intake.links(f"look {server.url('/report.pdf')} and "
                                    f"{server.url('/missing')} and http://10.9.9.9/x")
    assert [d.name for d in shared.documents] == [server.url("/report.pdf")]
    document = shared.documents[0]
    assert isinstance(document, Document) and document.source == "link"
    assert document.kind == "PDF"
    assert [(p.name, p.reason) for p in shared.problems] == [
        (server.url("/missing"), "the site answered 404 Not Found"),
        ("http://10.9.9.9/x", "it points to 10.9.9.9, a private address, which I don't fetch")]


async def test_fetch_links_off_reads_no_link(server: LinkServer) -> None:
    async with Intake(reader=ReaderProcess(), fetcher=None, max_bytes=1_000_000) as intake:
        assert not await intake.links(server.url("/article"))
    assert server.paths == []
