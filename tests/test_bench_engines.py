"""The engine comparison of the benchmark (``--engines``) on the fake server, so it cannot rot.

Why: the real run needs the model and a llama.cpp server and takes minutes; its remote side
(the bot and the direct client, alternating) and its summary are the same code on the fake
OpenAI server, in a second.
"""

from __future__ import annotations

import asyncio

from bot.bench import engines
from tests.fakes.openai_server import FakeOpenAI


async def test_remote_side_runs_both_clients_and_summarises() -> None:
    async with FakeOpenAI() as fake:
        result = await engines.child("remote", fake.base_url, max_new_tokens=6, long_tokens=8,
                                     repeats=2)
        summary = {name: await asyncio.to_thread(
            engines._summarise, {c: result["results"][c][name] for c in ("1", "8")},
            fake.base_url.removesuffix("/v1")) for name in ("direct", "bot")}
    assert result["side"] == "remote" and result["peak_rss_mb"] > 0
    for name in ("direct", "bot"):
        assert summary[name]["1"]["requests"] == 2 and summary[name]["8"]["requests"] == 16
        assert summary[name]["8"]["tok_s"] > 0 and summary[name]["1"]["ttft_s"] > 0
    # Both clients sent the same kind of prompt: the bot's system prompt and "ada: ..."
    bot_bodies = [b for b in fake.requests if "stream_options" in b]
    direct_bodies = [b for b in fake.requests if "stream_options" not in b]
    assert len(direct_bodies) == 8 + 2 + 16  # warm-up, then 2 rounds of 1 and of 8
    assert [m["role"] for m in bot_bodies[-1]["messages"]] == \
        [m["role"] for m in direct_bodies[-1]["messages"]] == ["system", "user"]
    assert bot_bodies[-1]["messages"][0] == direct_bodies[-1]["messages"][0]
    questions = [b["messages"][-1]["content"] for b in fake.requests]
    assert len(set(questions)) == len(questions)  # no prompt is repeated whole
