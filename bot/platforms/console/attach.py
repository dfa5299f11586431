"""The console's ``/attach PATH``: a local file read for the next message.

Kept out of the adapter so the adapter stays the terminal loop. A file that cannot be read is
said at once, on its own line; one that can is said (to stderr when the input is piped, so
stdout holds only answers) and goes with the next line typed.
"""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path

from bot.documents.intake import Intake, size_text
from bot.types import Document, Shared

USAGE = "Usage: /attach PATH (a local file; it goes with your next message)"


async def attach_file(argument: str, intake: Intake | None) -> tuple[Shared, str, bool]:
    """Read the file named by `argument`: what to attach, what to say, and whether it
    worked."""
    if intake is None:
        return Shared(), "Attaching files is not available here.", False
    try:
        parts = shlex.split(argument.strip())
    except ValueError:
        parts = [argument.strip()]
    if len(parts) != 1:
        return Shared(), USAGE, False
    path = Path(parts[0]).expanduser()
    if not path.is_file():
        return Shared(), f"There is no file at {path}.", False
    size = path.stat().st_size
    if size > intake.max_bytes:
        return Shared(), (f"I couldn't read {path.name}: it is {size_text(size)}, more than I "
                          f"read ({size_text(intake.max_bytes)}, ATTACHMENT_MAX_BYTES)."), False
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        return Shared(), f"I couldn't read {path.name}: {exc.strerror or exc}.", False
    shared = await intake.data(path.name, data)
    if shared.problems:
        problem = shared.problems[0]
        return Shared(), f"I couldn't read {problem.name}: {problem.reason}.", False
    if shared.images:
        return shared, f"Attached {path.name} (an image); it goes with your next message.", True
    return shared, (f"Attached {describe(shared.documents[0])}; it goes with your next "
                    "message."), True


def describe(document: Document) -> str:
    """"report.pdf (PDF, 12 pages, 30,512 characters)"."""
    count = len(document.sections)
    unit = "page" if document.kind == "PDF" else "part"
    parts = f", {count} {unit}{'' if count == 1 else 's'}" if count > 1 else ""
    return f"{document.name} ({document.kind}{parts}, {len(document.text):,} characters)"
