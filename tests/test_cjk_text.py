"""Chinese and Japanese text through the pure parts: splitting, Slack formatting, exact
token budgets (byte-level tokenizers spread one character over several tokens), summaries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.core.prompting import TRUNCATION_MARK, build_chat_prompt, chunk_lines
from bot.core.summarize import summarize_lines
from bot.engines.local.rendering import HFTokenCounter, PromptRenderer
from bot.platforms.base import split_text
from bot.platforms.slack.format import markdown_to_mrkdwn
from bot.types import Prompt, Turn
from tests.tiny_model import build_tokenizer

CHINESE = "".join(f"第{i}天，机器人画了{'山水花鸟虫鱼云月'[i % 8]}，它观察颜色、形状和光线。"
                  for i in range(40))
JAPANESE = "".join(f"ロボットは{i}日目に{'山川花鳥虫魚雲月'[i % 8]}を描いて、色を覚えました！"
                   for i in range(40))


@pytest.fixture(scope="module")
def counter() -> HFTokenCounter:
    return HFTokenCounter(PromptRenderer(build_tokenizer(), "Bot"))


def test_split_text_cuts_cjk_at_sentence_ends_then_commas() -> None:
    parts = split_text(CHINESE, 200)
    assert "".join(parts) == CHINESE
    assert all(len(p) <= 200 and p.endswith("。") for p in parts)
    commas = "".join(f"色と形{i}を覚えて、" for i in range(60))
    parts = split_text(commas, 100)
    assert "".join(parts) == commas and all(p.endswith("、") for p in parts[:-1])
    assert all(p.endswith("！") for p in split_text(JAPANESE, 150)[:-1])


@given(st.text(alphabet="机器人学画。、！？，ロボット絵 \n", min_size=1, max_size=600),
       st.integers(min_value=32, max_value=200))
def test_cjk_parts_fit_and_lose_nothing(text: str, limit: int) -> None:
    parts = split_text(text, limit)
    assert all(len(p) <= limit for p in parts)
    assert "".join(parts) == text


def test_slack_mrkdwn_keeps_cjk_and_converts_its_markup() -> None:
    got = markdown_to_mrkdwn("**重要**：周五发布。_注意_ ~~取消~~")
    assert got == "*重要*：周五发布。_注意_ ~取消~"
    assert markdown_to_mrkdwn("# 見出し\n- 項目です") == "*見出し*\n• 項目です"


@pytest.mark.parametrize("text", [CHINESE, JAPANESE])
def test_truncation_never_goes_over_the_token_budget(counter: HFTokenCounter,
                                                     text: str) -> None:
    for limit in range(1, 120):
        cut = counter.truncate_text(text, limit)
        assert text.startswith(cut)
        assert counter.count_text(cut) <= limit
        assert counter.count_text(cut) >= limit - 3  # at most one character short


@pytest.mark.parametrize("context", [300, 600, 900])
def test_a_long_chinese_message_and_history_fit_the_window_exactly(
        counter: HFTokenCounter, context: int) -> None:
    history = [Turn("user", "小明", CHINESE[:80]), Turn("assistant", "Bot", JAPANESE[:80])] * 5
    prompt = build_chat_prompt(counter, system="简短回答。", history=history,
                               message=Turn("user", "小红", CHINESE * 3),
                               context_tokens=context, reply_tokens=50)
    assert counter.count_prompt(prompt) <= context - 50
    newest = prompt[-1]["content"]
    assert newest.startswith("小红: 第0天") and newest.endswith(TRUNCATION_MARK)


def test_chinese_transcript_chunks_fit(counter: HFTokenCounter) -> None:
    lines = [f"小明: {CHINESE[i:i + 30]}" for i in range(0, len(CHINESE), 30)]
    chunks = chunk_lines(counter, lines, 300)  # each character is 2-3 tokens here
    assert len(chunks) > 3
    assert [line for chunk in chunks for line in chunk] == lines
    assert all(sum(counter.count_text(line) + 1 for line in chunk) <= 300 for chunk in chunks)


async def test_a_long_japanese_transcript_is_summarised_by_map_reduce(
        counter: HFTokenCounter) -> None:
    seen: list[Prompt] = []

    async def complete(prompt: Prompt) -> str:
        seen.append(prompt)
        assert counter.count_prompt(prompt) <= 400 - 60
        return f"要約{len(seen)}：ロボットが絵を学んだ。"

    lines = [f"花子: {JAPANESE[i:i + 50]}" for i in range(0, len(JAPANESE) * 3, 50)
             if JAPANESE[i % len(JAPANESE):][:50]]
    result = await summarize_lines(lines, complete=complete, counter=counter,
                                   context_tokens=400, reply_tokens=60)
    assert len(seen) > 2 and result.startswith("要約")
