"""Chinese and Japanese text end to end through slack-bolt and the fake Slack: Markdown
to mrkdwn, long answers split on CJK punctuation, thread summaries, history."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.config import Settings
from bot.core.summarize import MAP_INSTRUCTIONS
from bot.platforms.slack.format import PART_CHARS
from bot.storage.interface import HistoryStore
from bot.types import ChannelKey, Turn
from tests.conftest import with_settings
from tests.fakes.backends import EchoBackend
from tests.fakes.slack_server import FakeSlack
from tests.test_slack_adapter import (
    ALICE,
    BOB,
    CHANNEL,
    ScriptedBackend,
    core_with,
    final,
    running,
    until,
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        server.add_channel(CHANNEL, name="general", creator=BOB)
        server.add_user(ALICE, "alice", real_name="Alice Liddell")
        server.add_user(BOB, "bob", real_name="Bob Builder")
        yield server


@pytest.fixture
def slack_settings(settings: Settings) -> Settings:
    return with_settings(settings, slack_bot_token="xoxb-test", slack_app_token="xapp-test")


def story(count: int) -> str:
    """`count` different Japanese sentences (a repeated one would be stopped as a loop)."""
    return "".join(f"ロボットは{i}日目に{'山川花鳥虫魚雲月'[i % 8]}を"
                   f"{'赤青黄緑白黒紫橙'[i // 8 % 8]}色で描きました。" for i in range(count))


async def test_a_long_japanese_answer_becomes_mrkdwn_parts_cut_at_sentence_ends(
        slack_settings: Settings, history: HistoryStore, fake: FakeSlack) -> None:
    answer = "**ロボットの物語**\n\n" + story(500)  # ~10,000 characters, one paragraph
    async with core_with(ScriptedBackend(answer), history, slack_settings) as core, \
            running(core, slack_settings, fake):
        asked = await fake.send_app_mention(CHANNEL, ALICE, "ロボットの長い物語を書いてください。")
        thread = asked.event["ts"]
        await fake.wait_for(lambda: sum(len(t) for t in final(fake, CHANNEL, thread))
                            >= len(answer) - 50)
        key = ChannelKey("slack", CHANNEL)  # a top-level mention: the channel's history
        await until(lambda: _has_answer(history, key))
    parts = final(fake, CHANNEL, thread)
    assert len(parts) >= 3 and all(len(p) <= PART_CHARS for p in parts)
    assert parts[0].startswith("*ロボットの物語*\n\n")  # Markdown bold became mrkdwn bold
    assert all(p.rstrip().endswith("。") for p in parts)
    assert "".join(parts).replace("*", "").replace("\n", "") == \
        answer.replace("*", "").replace("\n", "")
    turns = await history.recent(key)
    assert turns[0] == Turn("user", "alice", "ロボットの長い物語を書いてください。")
    assert turns[-1].text == answer


async def _has_answer(history: HistoryStore, key: ChannelKey) -> bool:
    return any(t.role == "assistant" for t in await history.recent(key))


async def test_a_chinese_thread_is_summarised(slack_settings: Settings,
                                              history: HistoryStore, fake: FakeSlack) -> None:
    backend = EchoBackend()
    root = fake.seed_message(CHANNEL, "周五发布吗？", user=ALICE)
    fake.seed_message(CHANNEL, "质量检查通过了就发布。", user=BOB, thread_ts=root["ts"])
    async with core_with(backend, history, slack_settings) as core, \
            running(core, slack_settings, fake):
        await fake.send_app_mention(CHANNEL, BOB, "summarize", thread_ts=root["ts"])
        done = await fake.wait_for(lambda: final(fake, CHANNEL, root["ts"]))
    assert done[0] == "Summary of the last 2 messages:\necho: 质量检查通过了就发布。"
    prompt = next(p for p in backend.prompts if p[0]["content"] == MAP_INSTRUCTIONS)
    assert prompt[1]["content"] == "alice: 周五发布吗？\nbob: 质量检查通过了就发布。"
