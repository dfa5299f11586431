"""`python -m bot`: read `.env` once, validate settings, run the bot.

With no platform token configured it opens the console chat; `python -m bot console` always
does. A bad setting stops start-up with one line naming the variable, exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from dotenv import load_dotenv

from bot.app import hf_backend_factory, run_bot
from bot.config import Settings
from bot.core.personas import load_personas
from bot.engines.local.model_source import resolve_model
from bot.errors import ConfigError, ModelLoadError
from bot.ops.log_setup import configure_logging

EXIT_CONFIG = 2
EXIT_MODEL = 3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bot", description=__doc__)
    parser.add_argument("mode", nargs="?", choices=["run", "console"], default="run",
                        help="run: the configured platforms (console if none); "
                             "console: chat in this terminal")
    parser.add_argument("--channel", default="local",
                        help="console channel name; each keeps its own history")
    parser.add_argument("--env-file", default=".env", help="settings file (default: .env)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_dotenv(args.env_file, override=False)
    try:
        settings = Settings.from_env(os.environ)
        # With LLM_BASE_URL the server holds the model: MODEL is not read, torch not loaded.
        source = None if settings.llm_base_url else resolve_model(settings.model)
        load_personas(settings.personas_dir)  # a broken persona file stops start-up here
    except ConfigError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    console = args.mode == "console" or not settings.platforms
    # The console chat shares the terminal with the logs: keep them to warnings unless asked.
    level = "WARNING" if console and "LOG_LEVEL" not in os.environ else settings.log_level
    configure_logging(level, settings.log_format,
                      secrets=(settings.discord_token, settings.slack_bot_token,
                               settings.slack_app_token, settings.slack_signing_secret,
                               settings.llm_api_key))

    if args.mode == "run" and not settings.platforms:
        print("No DISCORD_TOKEN or SLACK_BOT_TOKEN is set, so the bot runs as a console chat. "
              "Add a token to .env (see .env.example) to connect it to Discord or Slack.",
              file=sys.stderr)
    try:
        factory = None if source is None else hf_backend_factory(settings, source)
        asyncio.run(run_bot(settings, factory,
                            console=console, channel=args.channel))
    except ModelLoadError as exc:
        print(f"Could not load the model: {exc}", file=sys.stderr)
        return EXIT_MODEL
    except ConfigError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
