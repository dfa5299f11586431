"""Settings, read once from the environment (and `.env`, loaded by `__main__`).

This is the only module that looks at environment variables. Every variable is documented
with its default in `.env.example`; a malformed value raises `ConfigError`, which `__main__`
prints as one line and exits with status 2.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from bot.errors import ConfigError

T = TypeVar("T")

DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named {bot_name}."
"""Short, in the wording small instruct models were trained on (docs/quality.md); where
several people talk, the core adds that each of their messages starts with a name. A line
asking for the user's language helps multilingual models but sent the bundled one to French."""
DTYPES = ("auto", "float32", "float16", "bfloat16")
QUANTIZE_MODES = ("auto", "off", "bf16", "int8", "int8-all", "int4")
"""`MODEL_QUANTIZE`: the lowest precision the CPU engine's linear layers may get (issues #13,
#19); ``auto`` is ``int4`` for a 4-bit GGUF file (its own precision), else ``off``."""
DEVICES = ("auto", "cpu", "cuda")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the bot can be configured with; defaults suit a small CPU server."""

    model: str = "bundled"
    model_dtype: str = "auto"
    device: str = "auto"
    model_cache_dir: Path = Path("data/models")
    model_quantize: str = "auto"
    context_tokens: int = 2048
    max_new_tokens: int = 256
    temperature: float = 0.2
    top_p: float = 0.9
    repetition_penalty: float = 1.05
    max_queue: int = 16
    generation_timeout: float = 300.0
    max_batch_size: int = 16
    batch_token_budget: int = 8192
    prompt_cache_mb: int = 256
    bot_name: str = "Assistant"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_input_chars: int = 16_000
    rate_limit_per_minute: int = 10
    summary_default_messages: int = 50
    history_db: Path = Path("data/history.sqlite3")
    history_max_messages: int = 200
    history_retention_days: float = 0.0
    personas_dir: Path = Path("personas")
    knowledge_dir: Path = Path("knowledge")
    knowledge_db: Path = Path("data/knowledge.sqlite3")
    knowledge_passages: int = 1
    log_level: str = "INFO"
    log_format: str = "text"
    discord_token: str | None = None
    discord_guild_id: str | None = None
    allowed_channels: frozenset[str] = frozenset()
    slack_bot_token: str | None = None
    slack_app_token: str | None = None
    slack_signing_secret: str | None = None
    port: int = 3000
    ops_host: str = "0.0.0.0"
    ops_port: int = 0
    # -- remote engine (issue #11): an OpenAI-compatible inference server instead of torch
    llm_base_url: str | None = None
    llm_api_key: str | None = None
    llm_model: str | None = None
    llm_max_concurrency: int = 4
    # several instances (issue #12): a shared PostgreSQL, and Discord shards per process
    database_url: str | None = None
    database_pool_size: int = 10
    discord_shard_count: int | None = None
    discord_shard_ids: tuple[int, ...] | None = None
    # shared files and links (issue #17)
    attachment_max_bytes: int = 20_000_000
    document_max_chars: int = 500_000
    fetch_links: bool = True
    links_allow_hosts: tuple[str, ...] = ()

    @property
    def system_prompt_text(self) -> str:
        """The system prompt with ``{bot_name}`` filled in."""
        return self.system_prompt.replace("{bot_name}", self.bot_name)

    @property
    def platforms(self) -> list[str]:
        """Chat platforms that have a token configured, in start order."""
        found = []
        if self.discord_token:
            found.append("discord")
        if self.slack_bot_token:
            found.append("slack")
        return found

    def __repr__(self) -> str:
        """Never print secrets, even in a debug log."""
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_token", "_secret", "_key")) and value:
                value = "***"
            elif f.name == "database_url" and value:
                value = redact_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from a mapping of environment variables.

        Raises:
            ConfigError: naming the first variable whose value is malformed.
        """
        reader = _Reader(env)
        d = cls()
        temperature = reader.number("TEMPERATURE", float, d.temperature, low=0.0, high=5.0)
        settings = cls(
            model=reader.text("MODEL", d.model),
            model_dtype=reader.choice("MODEL_DTYPE", DTYPES, d.model_dtype),
            device=reader.choice("DEVICE", DEVICES, d.device),
            model_cache_dir=Path(reader.text("MODEL_CACHE_DIR", str(d.model_cache_dir))),
            model_quantize=reader.choice("MODEL_QUANTIZE", QUANTIZE_MODES, d.model_quantize),
            context_tokens=reader.number("CONTEXT_TOKENS", int, d.context_tokens, low=256),
            max_new_tokens=reader.number("MAX_NEW_TOKENS", int, d.max_new_tokens, low=1,
                                         high=8192),
            temperature=temperature,
            top_p=reader.number("TOP_P", float, d.top_p, low=0.01, high=1.0),
            repetition_penalty=reader.number("REPETITION_PENALTY", float,
                                             d.repetition_penalty, low=1.0, high=2.0),
            max_queue=reader.number("MAX_QUEUE", int, d.max_queue, low=1, high=10_000),
            generation_timeout=reader.number("GENERATION_TIMEOUT", float,
                                             d.generation_timeout, low=1.0),
            max_batch_size=reader.number("MAX_BATCH_SIZE", int, d.max_batch_size, low=1,
                                         high=256),
            batch_token_budget=reader.number("BATCH_TOKEN_BUDGET", int, d.batch_token_budget,
                                             low=64),
            prompt_cache_mb=reader.number("PROMPT_CACHE_MB", int, d.prompt_cache_mb, low=0),
            bot_name=reader.text("BOT_NAME", d.bot_name),
            system_prompt=reader.text("SYSTEM_PROMPT", d.system_prompt),
            max_input_chars=reader.number("MAX_INPUT_CHARS", int, d.max_input_chars, low=100),
            rate_limit_per_minute=reader.number("RATE_LIMIT_PER_MINUTE", int,
                                                d.rate_limit_per_minute, low=0, high=10_000),
            summary_default_messages=reader.number("SUMMARY_DEFAULT_MESSAGES", int,
                                                   d.summary_default_messages, low=1,
                                                   high=500),
            history_db=Path(reader.text("HISTORY_DB", str(d.history_db))),
            history_max_messages=reader.number("HISTORY_MAX_MESSAGES", int,
                                               d.history_max_messages, low=2),
            history_retention_days=reader.number("HISTORY_RETENTION_DAYS", float,
                                                 d.history_retention_days, low=0.0),
            personas_dir=Path(reader.text("PERSONAS_DIR", str(d.personas_dir))),
            knowledge_dir=Path(reader.text("KNOWLEDGE_DIR", str(d.knowledge_dir))),
            knowledge_db=Path(reader.text("KNOWLEDGE_DB", str(d.knowledge_db))),
            knowledge_passages=reader.number("KNOWLEDGE_PASSAGES", int, d.knowledge_passages,
                                             low=1, high=20),
            log_level=reader.choice("LOG_LEVEL", LOG_LEVELS, d.log_level, upper=True),
            log_format=reader.choice("LOG_FORMAT", ("text", "json"), d.log_format),
            discord_token=reader.optional("DISCORD_TOKEN"),
            discord_guild_id=reader.snowflake("DISCORD_GUILD_ID"),
            allowed_channels=reader.id_list("ALLOWED_CHANNELS"),
            slack_bot_token=reader.optional("SLACK_BOT_TOKEN"),
            slack_app_token=reader.optional("SLACK_APP_TOKEN"),
            slack_signing_secret=reader.optional("SLACK_SIGNING_SECRET"),
            port=reader.number("PORT", int, d.port, low=1, high=65535),
            ops_host=reader.text("OPS_HOST", d.ops_host),
            ops_port=reader.number("OPS_PORT", int, d.ops_port, low=0, high=65535),
            llm_base_url=reader.url("LLM_BASE_URL"),
            llm_api_key=reader.optional("LLM_API_KEY"),
            llm_model=reader.optional("LLM_MODEL"),
            llm_max_concurrency=reader.number("LLM_MAX_CONCURRENCY", int,
                                              d.llm_max_concurrency, low=1, high=1024),
        )
        if settings.slack_bot_token and not (settings.slack_app_token
                                             or settings.slack_signing_secret):
            raise ConfigError("SLACK_SIGNING_SECRET", "the signing secret for HTTP mode "
                              "(or set SLACK_APP_TOKEN for Socket Mode)")
        return replace(settings, **_scaling_settings(reader), **_document_settings(reader))


def redact_url(url: str) -> str:
    """`url` with its password replaced by ***, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _scaling_settings(reader: _Reader) -> dict[str, Any]:
    """DATABASE_URL, DATABASE_POOL_SIZE, DISCORD_SHARD_COUNT, DISCORD_SHARD_IDS (issue #12)."""
    url = reader.optional("DATABASE_URL")
    if url is not None:
        expected = "a postgresql://user:password@host:port/database URL"
        try:
            parts = urlsplit(url)
            _ = parts.port  # raises on a port that is not a number
        except ValueError:
            raise ConfigError("DATABASE_URL", expected, redact_url(url)) from None
        if parts.scheme not in ("postgresql", "postgres") or not parts.path.strip("/"):
            raise ConfigError("DATABASE_URL", expected, redact_url(url))
    count = reader.number("DISCORD_SHARD_COUNT", int, 0, low=1, high=100_000) or None
    raw_ids = reader.optional("DISCORD_SHARD_IDS")
    ids: tuple[int, ...] | None = None
    if raw_ids is not None:
        if count is None:
            raise ConfigError("DISCORD_SHARD_COUNT",
                              "the total number of shards when DISCORD_SHARD_IDS is set")
        parts_ids = [p.strip() for p in raw_ids.split(",") if p.strip()]
        expected_ids = f"shard numbers from 0 to {count - 1}, comma-separated (e.g. 0,1)"
        if not parts_ids or not all(p.isdigit() for p in parts_ids):
            raise ConfigError("DISCORD_SHARD_IDS", expected_ids, raw_ids)
        ids = tuple(sorted({int(p) for p in parts_ids}))
        if ids[-1] >= count or len(ids) != len(parts_ids):
            raise ConfigError("DISCORD_SHARD_IDS", expected_ids, raw_ids)
    return {
        "database_url": url,
        "database_pool_size": reader.number("DATABASE_POOL_SIZE", int, 10, low=1, high=1000),
        "discord_shard_count": count,
        "discord_shard_ids": ids if ids is not None else (
            tuple(range(count)) if count is not None else None),
    }


def _document_settings(reader: _Reader) -> dict[str, Any]:
    """ATTACHMENT_MAX_BYTES, DOCUMENT_MAX_CHARS, FETCH_LINKS, LINKS_ALLOW_HOSTS (issue #17)."""
    d = Settings()
    return {
        "attachment_max_bytes": reader.number("ATTACHMENT_MAX_BYTES", int,
                                              d.attachment_max_bytes, low=1000,
                                              high=2_000_000_000),
        "document_max_chars": reader.number("DOCUMENT_MAX_CHARS", int, d.document_max_chars,
                                            low=1000, high=50_000_000),
        "fetch_links": reader.on_off("FETCH_LINKS", d.fetch_links),
        "links_allow_hosts": reader.host_list("LINKS_ALLOW_HOSTS"),
    }


_HOST_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)"
                        r"(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$")


class _Reader:
    """Parses one variable at a time, so each error names its variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def _raw(self, name: str) -> str | None:
        value = self._env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def text(self, name: str, default: str) -> str:
        return self._raw(name) or default

    def optional(self, name: str) -> str | None:
        return self._raw(name)

    def on_off(self, name: str, default: bool) -> bool:
        raw = self._raw(name)
        if raw is None:
            return default
        if raw.lower() in ("on", "yes", "true", "1"):
            return True
        if raw.lower() in ("off", "no", "false", "0"):
            return False
        raise ConfigError(name, "on or off", raw)

    def host_list(self, name: str) -> tuple[str, ...]:
        """Host names and IP addresses or CIDR ranges, comma-separated."""
        raw = self._raw(name)
        if raw is None:
            return ()
        entries = []
        for part in raw.split(","):
            entry = part.strip().lower()
            if not entry:
                continue
            try:
                ipaddress.ip_network(entry.strip("[]"), strict=False)
            except ValueError:
                if not _HOST_NAME.match(entry):
                    raise ConfigError(name, "host names or CIDR ranges, comma-separated "
                                      "(e.g. intranet.example.com,10.0.0.0/8)", part.strip()
                                      ) from None
            entries.append(entry)
        return tuple(entries)

    def snowflake(self, name: str) -> str | None:
        raw = self._raw(name)
        if raw is not None and not raw.isdigit():
            raise ConfigError(name, "a numeric Discord ID", raw)
        return raw

    def url(self, name: str) -> str | None:
        raw = self._raw(name)
        if raw is None:
            return None
        if not raw.startswith(("http://", "https://")) or len(raw.split("://", 1)[1]) < 1:
            raise ConfigError(name, "an http:// or https:// URL such as "
                              "http://127.0.0.1:8080/v1", raw)
        return raw.rstrip("/")

    def id_list(self, name: str) -> frozenset[str]:
        raw = self._raw(name)
        if raw is None:
            return frozenset()
        return frozenset(part.strip() for part in raw.split(",") if part.strip())

    def choice(self, name: str, allowed: tuple[str, ...], default: str,
               *, upper: bool = False) -> str:
        raw = self._raw(name)
        if raw is None:
            return default
        value = raw.upper() if upper else raw.lower()
        if value not in allowed:
            raise ConfigError(name, f"one of {', '.join(allowed)}", raw)
        return value

    def number(self, name: str, kind: Callable[[str], T], default: T, *,
               low: float | None = None, high: float | None = None) -> T:
        raw = self._raw(name)
        if raw is None:
            return default
        noun = "a whole number" if kind is int else "a number"
        bounds = _describe_bounds(low, high)
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(name, f"{noun}{bounds}", raw) from None
        numeric = float(value)  # type: ignore[arg-type]
        if numeric != numeric or (low is not None and numeric < low) or (
                high is not None and numeric > high):
            raise ConfigError(name, f"{noun}{bounds}", raw)
        return value


def _describe_bounds(low: float | None, high: float | None) -> str:
    def fmt(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:g}"
    if low is not None and high is not None:
        return f" between {fmt(low)} and {fmt(high)}"
    if low is not None:
        return f" of at least {fmt(low)}"
    if high is not None:
        return f" of at most {fmt(high)}"
    return ""
