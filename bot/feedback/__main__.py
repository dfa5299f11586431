"""``python -m bot.feedback export --since DAYS [--out FILE]``: the votes on answers of the
last DAYS days as JSON lines (question, answer, vote, persona, model, engine, ...).

It reads the bot's store from the same settings as the bot (``.env``: HISTORY_DB, or
DATABASE_URL for PostgreSQL), so it can run beside a running bot. Lines go to standard output
(or FILE); a count goes to standard error. A bad setting or an unreachable store is one line
and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from dotenv import load_dotenv

from bot.app import open_history
from bot.config import Settings
from bot.errors import ConfigError, StoreUnavailable
from bot.feedback.export import write_lines

EXIT_CONFIG = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bot.feedback", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True)
    export = actions.add_parser("export", help="write the rated answers as JSON lines")
    export.add_argument("--since", type=float, default=30.0, metavar="DAYS",
                        help="votes of the last DAYS days (default 30; fractions allowed)")
    export.add_argument("--out", type=Path, help="write to this file instead of stdout")
    export.add_argument("--env-file", default=".env", help="settings file (default: .env)")
    args = parser.parse_args(argv)
    if args.since <= 0:
        parser.error("--since must be a positive number of days")
    return args


async def export(settings: Settings, since_days: float, out: TextIO) -> int:
    history = await open_history(settings)
    async with history:
        records = await history.feedback_since(time.time() - since_days * 86_400)
    return write_lines(records, out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_dotenv(args.env_file, override=False)
    try:
        settings = Settings.from_env(os.environ)
        if not settings.database_url and not Path(settings.history_db).exists():
            raise ConfigError("HISTORY_DB", "the bot's history file",
                              got=str(settings.history_db))
        if args.out is None:
            count = asyncio.run(export(settings, args.since, sys.stdout))
        else:
            with args.out.open("w", encoding="utf-8") as out:
                count = asyncio.run(export(settings, args.since, out))
    except (ConfigError, StoreUnavailable) as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{count} rated answer(s) of the last {args.since:g} day(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
