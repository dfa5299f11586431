"""Chinese and Japanese text end to end through the real discord.py client and the fake
Discord: long answers split at 2,000 characters on CJK punctuation, history kept intact,
summaries of a Chinese conversation."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.config import Settings
from bot.core.conversation import ConversationCore
from bot.storage.interface import HistoryStore
from bot.types import ChannelKey, Turn
from tests.fakes.backends import EchoBackend
from tests.fakes.discord_server import FakeDiscord
from tests.test_discord_adapter import (
    ScriptedBackend,
    alice,
    bot_messages,
    channel,
    make_core,
    mention,
    serving,
    settled,
    wait_bot_text,
)

JAPANESE = "ロボットは毎日絵を描く練習をして、色や形を少しずつ覚えました！"
THINGS, COLOURS = "山水花鸟虫鱼云月", "红橙黄绿青蓝紫白"
KANA = "あかさたなはまや"


def story(count: int) -> str:
    """`count` different Chinese sentences (a repeated one would be stopped as a loop)."""
    return "".join(f"第{i:03d}天，机器人画了{THINGS[i % 8]}，用的是{COLOURS[i // 8 % 8]}色。"
                   for i in range(count))


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server


async def test_a_long_chinese_answer_is_split_at_sentence_ends_under_2000_chars(
        fake: FakeDiscord, settings: Settings, history: HistoryStore) -> None:
    answer = story(300)  # 5,100 characters without a single space or newline
    pieces = [answer[i:i + 97] for i in range(0, len(answer), 97)]
    async with make_core(ScriptedBackend(pieces), settings, history) as core, \
            serving(fake, core, settings) as adapter:
        await mention(fake, "写一个关于机器人学画画的长故事。")
        await fake.wait_for(lambda: sum(len(m["content"]) for m in bot_messages(
            fake, channel(fake))) >= len(answer))
        await settled(fake, adapter)
    parts = [m["content"] for m in bot_messages(fake, channel(fake))]
    assert len(parts) == 3
    assert all(len(p) <= 2000 for p in parts)
    assert all(p.endswith("。") for p in parts)  # cut after a full stop, not mid-word
    assert "".join(parts) == answer
    key = ChannelKey("discord", str(channel(fake).id))
    assert await history.recent(key) == [Turn("user", "Alice", "写一个关于机器人学画画的长故事。"),
                                         Turn("assistant", "Bot", answer)]


async def test_japanese_without_sentence_ends_is_split_at_commas(
        fake: FakeDiscord, settings: Settings, history: HistoryStore) -> None:
    answer = "".join(f"ロボットは{i}番目に{KANA[i % 8]}{KANA[i // 8 % 8]}を覚えて、"
                     for i in range(250))  # no 。
    async with make_core(ScriptedBackend([answer]), settings, history) as core, \
            serving(fake, core, settings) as adapter:
        await mention(fake, JAPANESE)
        await fake.wait_for(lambda: sum(len(m["content"]) for m in bot_messages(
            fake, channel(fake))) >= len(answer))
        await settled(fake, adapter)
    parts = [m["content"] for m in bot_messages(fake, channel(fake))]
    assert len(parts) >= 2 and all(len(p) <= 2000 for p in parts)
    assert all(p.endswith("、") for p in parts)
    assert "".join(parts) == answer


async def test_a_chinese_conversation_is_summarised_from_discord(
        fake: FakeDiscord, core: ConversationCore, settings: Settings,
        backend: EchoBackend) -> None:
    bob = fake.create_user("bob", global_name="小明")
    await fake.send_user_message(channel(fake), alice(fake), "我们周五发布吗？")
    await fake.send_user_message(channel(fake), bob, "测试通过了就发布。")
    async with serving(fake, core, settings):
        await mention(fake, "/summarize 2")
        await wait_bot_text(fake, channel(fake),
                            "Summary of the last 2 messages:\necho: 测试通过了就发布。")
    assert backend.prompts[-1][-1]["content"] == "Alice: 我们周五发布吗？\n小明: 测试通过了就发布。"
