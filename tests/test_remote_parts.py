"""The remote engine's pure parts: SSE parsing, reasoning filter, error sorting, estimates.

Why: these rules decide what a user sees from any OpenAI-compatible server (a keep-alive
must not end a stream, a split ``<think>`` tag must not leak, a context-length refusal must
be told apart from other 400s), so each is pinned down on the exact wire shapes the servers
send, without a socket.
"""

from __future__ import annotations

import pytest

from bot.engines.remote.client import classify, error_message, server_root
from bot.engines.remote.engine import display_url, shorten
from bot.engines.remote.errors import ContextTooLong, HTTPStatusError, ServerBusy
from bot.engines.remote.reasoning import ThinkFilter, strip_reasoning
from bot.engines.remote.sse import DONE, SSEParser, chunk_delta, decode_chunk
from bot.engines.remote.tokens import estimate_tokens


def feed_all(lines: list[bytes]) -> list[str]:
    parser = SSEParser()
    events = [e for e in (parser.feed(line) for line in lines) if e is not None]
    last = parser.close()
    return events + ([last] if last is not None else [])


def test_sse_comments_are_keepalives_and_blank_lines_end_events() -> None:
    lines = [b": keep-alive\n", b"\n", b'data: {"a": 1}\n', b"\n", b":\n", b"\n",
             b"data:{\"b\": 2}\r\n", b"\r\n", b"data: [DONE]\n", b"\n"]
    assert feed_all(lines) == ['{"a": 1}', '{"b": 2}', DONE]


def test_sse_joins_multiline_data_and_keeps_a_last_unterminated_event() -> None:
    assert feed_all([b"event: message\n", b"data: one\n", b"data: two\n", b"\n",
                     b"data: tail"]) == ["one\ntwo", "tail"]


def test_chunks_carry_content_reasoning_finish_and_usage() -> None:
    content = chunk_delta(decode_chunk('{"choices":[{"delta":{"content":"Hi"},'
                                       '"finish_reason":null}]}'))
    assert (content.content, content.reasoning, content.finish_reason) == ("Hi", "", None)
    deepseek = chunk_delta({"choices": [{"delta": {"reasoning_content": "hmm",
                                                   "content": None}}]})
    ollama = chunk_delta({"choices": [{"delta": {"reasoning": "well"}}]})
    assert (deepseek.reasoning, deepseek.content, ollama.reasoning) == ("hmm", "", "well")
    usage = chunk_delta({"choices": [], "usage": {"completion_tokens": 7}})
    assert (usage.content, usage.completion_tokens) == ("", 7)
    end = chunk_delta({"choices": [{"delta": {}, "finish_reason": "length"}]})
    assert end.finish_reason == "length"
    with pytest.raises(ValueError):
        decode_chunk("not json")
    with pytest.raises(ValueError):
        decode_chunk("[1, 2]")


@pytest.mark.parametrize("pieces", [
    ["<think>plan it</think>Paris."],
    ["<thi", "nk>plan", " it</th", "ink>Par", "is."],
    ["<", "t", "h", "i", "n", "k", ">", "x", "<", "/", "think>", "Paris."],
])
def test_think_blocks_never_reach_the_answer_however_they_are_split(pieces: list[str]) -> None:
    blocks = ThinkFilter()
    shown = []
    states = []
    for piece in pieces:
        shown.append(blocks.feed(piece))
        states.append(blocks.thinking)
    shown.append(blocks.flush())
    assert "".join(shown) == "Paris."
    assert (len(pieces) == 1 or True in states) and not blocks.thinking


def test_text_that_only_looks_like_a_tag_is_kept() -> None:
    blocks = ThinkFilter()
    assert blocks.feed("a < b and <th") == "a < b and "
    assert blocks.feed("is>") == "<this>"
    assert blocks.feed(" x <t") == " x "
    assert blocks.flush() == "<t"


def test_strip_reasoning_handles_a_lone_close_and_an_unclosed_block() -> None:
    assert strip_reasoning("thinking out loud</think>\n\nThe answer.") == "\n\nThe answer."
    assert strip_reasoning("Answer <think>still thinking") == "Answer "
    assert strip_reasoning("<think>a</think>B<think>c</think>D") == "BD"
    assert strip_reasoning("no tags at all") == "no tags at all"


@pytest.mark.parametrize(("status", "body", "kind"), [
    (429, '{"error":{"message":"rate limited"}}', ServerBusy),
    (503, '{"error":{"message":"Loading model","type":"unavailable_error","code":503}}',
     ServerBusy),
    (400, '{"error":{"code":400,"message":"request (2531 tokens) exceeds the available '
          'context size (2048 tokens), try increasing it",'
          '"type":"exceed_context_size_error"}}', ContextTooLong),
    (400, '{"object":"error","message":"This model\'s maximum context length is 2048 tokens. '
          'However, you requested 2100 tokens","type":"BadRequestError","code":400}',
     ContextTooLong),
    (400, '{"error":{"message":"The input (3000 tokens) is longer than the model\'s context '
          'length (2048 tokens)."}}', ContextTooLong),
    (400, '{"error":{"message":"Expected \'messages\' to be an array"}}', HTTPStatusError),
    (500, "Internal Server Error", HTTPStatusError),
])
def test_error_answers_are_sorted_by_what_the_bot_does(status: int, body: str,
                                                       kind: type[Exception]) -> None:
    error = classify(status, body)
    assert type(error) is kind
    assert error.status == status and error.message


def test_error_messages_are_read_from_each_servers_shape() -> None:
    assert error_message('{"error":{"message":"m1"}}') == "m1"
    assert error_message('{"object":"error","message":"m2"}') == "m2"
    assert error_message('{"detail":"m3"}') == "m3"
    assert error_message('{"error":"m4"}') == "m4"
    assert error_message("plain text") == "plain text"


def test_urls_server_root_and_display() -> None:
    assert server_root("http://h:8080/v1/") == "http://h:8080"
    assert server_root("http://h:8080") == "http://h:8080"
    assert display_url("https://user:pa55@h.example:8443/v1") == "https://h.example:8443/v1"
    assert "pa55" not in display_url("http://user:pa55@h/v1")


def test_shorten_drops_the_older_half_and_keeps_system_and_newest() -> None:
    system = {"role": "system", "content": "s"}
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": str(i)}
             for i in range(8)]
    newest = {"role": "user", "content": "now"}
    shorter = shorten([system, *turns, newest])
    assert shorter is not None
    assert shorter[0] == system and shorter[-1] == newest
    assert 2 < len(shorter) < len(turns) + 2
    assert shorter[1]["role"] == "user"  # never opens with the bot talking to itself
    assert shorten([system, newest]) is None


@pytest.mark.parametrize("text", ["What is the capital of France?",
                                  "数据库连接失败了", "emoji 🎉🎉 and code: x = f(y) + 1"])
def test_estimates_err_on_the_high_side(text: str) -> None:
    from tests.fakes.openai_server import fake_tokens

    # Real tokenizers give ~4 bytes a token for English, 1-2 tokens per CJK character.
    assert estimate_tokens(text) >= len(text.encode("utf-8")) / 4
    assert estimate_tokens(text) >= len(fake_tokens(text)) * 0.9
