"""Settings parsing: defaults, valid values, and one-line errors that name the variable."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import Settings
from bot.engines.local.model_source import resolve_model
from bot.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings.model == "bundled"
    assert settings.max_new_tokens == 256
    assert settings.platforms == []


def test_values_are_parsed() -> None:
    settings = Settings.from_env({"MAX_NEW_TOKENS": " 64 ", "TEMPERATURE": "0", "TOP_P": "0.5",
                                  "MODEL_DTYPE": "Float16", "LOG_LEVEL": "debug",
                                  "DISCORD_TOKEN": "abc", "HISTORY_DB": "/tmp/x.db"})
    assert settings.max_new_tokens == 64
    assert settings.temperature == 0.0
    assert settings.top_p == 0.5
    assert settings.model_dtype == "float16"
    assert settings.log_level == "DEBUG"
    assert settings.platforms == ["discord"]
    assert str(settings.history_db) == "/tmp/x.db"


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("MAX_NEW_TOKENS", "abc", "a whole number between 1 and 8192"),
    ("MAX_NEW_TOKENS", "0", "a whole number between 1 and 8192"),
    ("TEMPERATURE", "hot", "a number between 0 and 5"),
    ("TOP_P", "nan", "a number between 0.01 and 1"),
    ("MAX_QUEUE", "-1", "a whole number between 1 and 10000"),
    ("DEVICE", "tpu", "one of auto, cpu, cuda"),
    ("CONTEXT_TOKENS", "12.5", "a whole number of at least 256"),
])
def test_bad_values_name_the_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value})
    assert caught.value.variable == name
    assert str(caught.value) == f"{name}: expected {expected} (got {value!r})"


def test_secrets_are_not_shown_in_repr() -> None:
    settings = Settings.from_env({"DISCORD_TOKEN": "very-secret", "SLACK_SIGNING_SECRET": "s3"})
    assert "very-secret" not in repr(settings)
    assert "s3'" not in repr(settings)


def test_model_resolution(tmp_path: Path) -> None:
    assert resolve_model("bundled").kind == "gguf"
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert resolve_model(str(folder)).kind == "folder"
    for missing in ("./nope", str(tmp_path / "model.gguf"), "/does/not/exist"):
        with pytest.raises(ConfigError, match="MODEL: expected an existing"):
            resolve_model(missing)
    with pytest.raises(ConfigError, match="config.json"):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize(("env", "variable"), [
    ({"MAX_NEW_TOKENS": "abc"}, "MAX_NEW_TOKENS"),
    ({"MODEL": "/no/such/model.gguf"}, "MODEL"),
])
def test_bad_setting_stops_start_up_with_one_line(env: dict[str, str], variable: str,
                                                  tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bot", "console", "--env-file", str(tmp_path / "none.env")],
        input="hello\n", capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={**os.environ, **env})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Configuration error: {variable}: expected")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_env_example_documents_every_variable_and_parses() -> None:
    from dotenv import dotenv_values

    values = {k: v or "" for k, v in dotenv_values(ROOT / ".env.example").items()}
    settings = Settings.from_env(values)
    assert settings == Settings.from_env({})  # the documented values are the defaults
    source = (ROOT / "bot" / "config.py").read_text()
    import re

    read = set(re.findall(r'reader\.\w+\("([A-Z_]+)"', source))
    assert read == set(values), "every variable config.py reads is in .env.example"


def test_slack_http_mode_needs_a_signing_secret() -> None:
    with pytest.raises(ConfigError, match="SLACK_SIGNING_SECRET"):
        Settings.from_env({"SLACK_BOT_TOKEN": "xoxb-1"})
    assert Settings.from_env({"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_APP_TOKEN": "xapp-1"})
    assert Settings.from_env({"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_SIGNING_SECRET": "s"})


# --- several instances (issue #12) -----------------------------------------------------

@pytest.mark.parametrize(("env", "variable"), [
    ({"DATABASE_URL": "mysql://bot:pw@db/bot"}, "DATABASE_URL"),
    ({"DATABASE_URL": "postgresql://bot:pw@db:port/bot"}, "DATABASE_URL"),
    ({"DATABASE_URL": "postgresql://bot:pw@db:5432"}, "DATABASE_URL"),
    ({"DATABASE_POOL_SIZE": "0"}, "DATABASE_POOL_SIZE"),
    ({"DISCORD_SHARD_IDS": "0"}, "DISCORD_SHARD_COUNT"),
    ({"DISCORD_SHARD_COUNT": "two"}, "DISCORD_SHARD_COUNT"),
    ({"DISCORD_SHARD_COUNT": "2", "DISCORD_SHARD_IDS": "0,2"}, "DISCORD_SHARD_IDS"),
    ({"DISCORD_SHARD_COUNT": "2", "DISCORD_SHARD_IDS": "1,1"}, "DISCORD_SHARD_IDS"),
    ({"DISCORD_SHARD_COUNT": "2", "DISCORD_SHARD_IDS": "one"}, "DISCORD_SHARD_IDS"),
])
def test_bad_scaling_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.variable == variable
    assert "pw" not in str(caught.value)  # never the database password


def test_scaling_settings_are_parsed_and_the_password_hidden() -> None:
    settings = Settings.from_env({"DATABASE_URL": "postgresql://bot:s3cret@db:5432/bot",
                                  "DATABASE_POOL_SIZE": "4", "DISCORD_SHARD_COUNT": "4",
                                  "DISCORD_SHARD_IDS": " 3, 1"})
    assert settings.database_url == "postgresql://bot:s3cret@db:5432/bot"
    assert settings.database_pool_size == 4
    assert (settings.discord_shard_count, settings.discord_shard_ids) == (4, (1, 3))
    assert "s3cret" not in repr(settings) and "bot:***@db:5432/bot" in repr(settings)
    every = Settings.from_env({"DISCORD_SHARD_COUNT": "3"})
    assert every.discord_shard_ids == (0, 1, 2)  # all shards in this process
    unsharded = Settings.from_env({})
    assert (unsharded.database_url, unsharded.discord_shard_count) == (None, None)


def test_an_unreachable_database_stops_start_up_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bot", "console", "--env-file", str(tmp_path / "none.env")],
        input="hello\n", capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={**os.environ, "DATABASE_URL": "postgresql://bot:pw@127.0.0.1:1/bot"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Configuration error: DATABASE_URL: expected a reachable "
                               "PostgreSQL server")
    assert "pw" not in lines[0]


def test_compose_file_sets_only_known_settings() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    known = {f.name.upper() for f in dataclasses.fields(Settings)}
    bots = [s for name, s in compose["services"].items() if name.startswith("bot-")]
    assert len(bots) == 2
    for service in bots:
        assert set(service["environment"]) <= known
        assert service["environment"]["DATABASE_URL"].startswith("postgresql://")
        Settings.from_env(service["environment"])  # parses
    assert sorted(s["environment"]["DISCORD_SHARD_IDS"] for s in bots) == ["0", "1"]


def test_document_settings_have_defaults_and_are_parsed() -> None:
    defaults = Settings.from_env({})
    assert (defaults.attachment_max_bytes, defaults.document_max_chars, defaults.fetch_links,
            defaults.links_allow_hosts) == (20_000_000, 500_000, True, ())
    parsed = Settings.from_env({"ATTACHMENT_MAX_BYTES": "5000000", "DOCUMENT_MAX_CHARS": "9000",
                                "FETCH_LINKS": "off",
                                "LINKS_ALLOW_HOSTS": "wiki.intranet.example, 10.0.0.0/8,[::1]"})
    assert parsed.attachment_max_bytes == 5_000_000 and parsed.document_max_chars == 9000
    assert parsed.fetch_links is False
    assert parsed.links_allow_hosts == ("wiki.intranet.example", "10.0.0.0/8", "[::1]")


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("ATTACHMENT_MAX_BYTES", "20MB", "a whole number between 1000 and 2000000000"),
    ("DOCUMENT_MAX_CHARS", "10", "a whole number between 1000 and 50000000"),
    ("FETCH_LINKS", "sometimes", "on or off"),
    ("LINKS_ALLOW_HOSTS", "intranet, not a host", "host names or CIDR ranges"),
    ("LINKS_ALLOW_HOSTS", "10.0.0.0/33", "host names or CIDR ranges"),
])
def test_bad_document_settings_name_the_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env({name: value})
    assert str(error.value).startswith(f"{name}: expected {expected}")
