"""What the adapters call: a message's files and links in, a `Shared` value out.

Every failure becomes an `Unreadable` (its name and one line why) and never an exception, so
one bad file does not stop the others being read, and the core can say what happened.
Files are downloaded by the platform's own client (the adapter passes a `download` function:
Discord's CDN, Slack's ``url_private_download`` with the bot token); links go through the
guarded `LinkFetcher`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from bot.config import Settings
from bot.documents.fetch import FetchError, LinkFetcher
from bot.documents.guard import AllowList, Refused
from bot.documents.readers import ReadError
from bot.documents.sandbox import ReaderProcess
from bot.types import Document, Image, Shared, Unreadable

log = logging.getLogger(__name__)

MAX_LINKS = 3
"""Links read from one message; more are ignored (a list of links is not a reading list)."""
MAX_FILES = 10
_URL = re.compile(r"https?://[^\s<>|\"'`]+", re.IGNORECASE)
_TRAILING = ".,;:!?'\")]}*_~"

Download = Callable[[int], Awaitable[bytes]]
"""``download(max_bytes) -> bytes``: the platform's own way to fetch a file it holds."""


class TooLarge(Exception):
    """A download went past the byte cap (raised by `download` functions)."""


class DownloadError(Exception):
    """The platform would not hand over a file; the message says why, for the user."""


@dataclass(frozen=True, slots=True)
class SharedFile:
    """A file a platform message carries: its name, declared size, and how to get it."""

    name: str
    size: int | None
    download: Download


def find_links(text: str, limit: int = MAX_LINKS) -> list[str]:
    """The http(s) links in `text`, in order, without trailing punctuation, at most `limit`."""
    found: list[str] = []
    for match in _URL.finditer(text):
        url = match.group(0)
        while url and url[-1] in _TRAILING:
            if url[-1] == ")" and url.count("(") >= url.count(")"):
                break  # a balanced parenthesis belongs to the link (Wikipedia style)
            url = url[:-1]
        if url not in found and len(url) > len("https://x"):
            found.append(url)
    return found[:limit]


def size_text(count: int) -> str:
    return f"{count / 1e6:,.1f} MB" if count >= 1e6 else f"{count / 1e3:,.0f} KB"


class Intake:
    """Reads files and links for the adapters; one per process (it owns the reader process).

    Args:
        reader: runs the parsers (`ReaderProcess`).
        fetcher: fetches links; None when FETCH_LINKS is off.
        max_bytes: ATTACHMENT_MAX_BYTES.
    """

    def __init__(self, *, reader: ReaderProcess, fetcher: LinkFetcher | None,
                 max_bytes: int) -> None:
        self.reader = reader
        self.fetcher = fetcher
        self.max_bytes = max_bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> Intake:
        fetcher = None
        if settings.fetch_links:
            fetcher = LinkFetcher(allow=AllowList.parse(settings.links_allow_hosts),
                                  max_bytes=settings.attachment_max_bytes)
        return cls(reader=ReaderProcess(max_chars=settings.document_max_chars),
                   fetcher=fetcher, max_bytes=settings.attachment_max_bytes)

    async def __aenter__(self) -> Intake:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.reader.close()

    async def message(self, files: Sequence[SharedFile], text: str) -> Shared:
        """Everything one message shares: its files, then the links in its text."""
        shared = Shared()
        for file in files[:MAX_FILES]:
            shared += await self.file(file)
        if len(files) > MAX_FILES:
            shared += Shared(problems=(Unreadable(
                f"{len(files) - MAX_FILES} more file(s)",
                f"I read at most {MAX_FILES} files of one message"),))
        return shared + await self.links(text)

    async def file(self, file: SharedFile) -> Shared:
        if file.size is not None and file.size > self.max_bytes:
            return _problem(file.name, f"it is {size_text(file.size)}, more than I read "
                            f"({size_text(self.max_bytes)}, ATTACHMENT_MAX_BYTES)")
        if file.size == 0:
            return _problem(file.name, "it is empty")
        try:
            data = await file.download(self.max_bytes)
        except TooLarge:
            return _problem(file.name, f"it is larger than I read ({size_text(self.max_bytes)}"
                            ", ATTACHMENT_MAX_BYTES)")
        except DownloadError as exc:
            return _problem(file.name, f"I could not download it: {exc}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("downloading %r failed: %s", file.name, exc)
            return _problem(file.name, f"I could not download it ({type(exc).__name__})")
        return await self.data(file.name, data)

    async def data(self, name: str, data: bytes, *, source: str = "file") -> Shared:
        """Read bytes already in hand (a console /attach, a fetched page)."""
        if len(data) > self.max_bytes:
            return _problem(name, f"it is {size_text(len(data))}, more than I read "
                            f"({size_text(self.max_bytes)}, ATTACHMENT_MAX_BYTES)")
        try:
            found = await self.reader.read(data, name, source=source)
        except ReadError as exc:
            return _problem(name, str(exc))
        if isinstance(found, Image):
            return Shared(images=(found,))
        assert isinstance(found, Document)
        return Shared(documents=(found,))

    async def links(self, text: str) -> Shared:
        """The pages the links in `text` point to (nothing when FETCH_LINKS is off)."""
        if self.fetcher is None:
            return Shared()
        shared = Shared()
        for url in find_links(text):
            try:
                fetched = await self.fetcher.fetch(url)
            except (Refused, FetchError) as exc:
                log.info("link not read: %s: %s", url, exc)
                shared += _problem(url, str(exc))
                continue
            shared += await self.data(url, fetched.data, source="link")
        return shared


def _problem(name: str, reason: str) -> Shared:
    return Shared(problems=(Unreadable(name, reason),))
