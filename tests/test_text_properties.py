"""Property tests for every text path between the model and a channel.

Why: these few pure functions are all that stands between whatever the model (or a user
asking it to repeat something) writes and a message that breaks formatting, loses text or
pings a whole server. Examples cannot cover the space of inputs, so hypothesis searches it,
with alphabets biased towards the characters that matter (fences, mention syntax,
zero-width and full-width look-alikes, Markdown emphasis).

What counts as a ping, per platform:

* Discord decides who is pinged from the raw message content, matching ``@everyone``,
  ``@here`` and ``<@&id>`` literally: no Unicode folding, no zero-width stripping, no Markdown
  rendering first. So ``＠ｅｖｅｒｙｏｎｅ`` (full-width), ``@`` + U+200B + ``everyone`` and
  ``@ever**yone`` never ping. The invariant is therefore on the raw text: it never contains
  those sequences, and the neutraliser only ever *inserts* U+200B (it never removes or folds
  a character, which could create a ping out of a look-alike).
* Slack pings only through control sequences in angle brackets (``<!channel>``, ``<!here>``,
  ``<!everyone>``, ``<!subteam^ID>``, ``<@U…>``); plain ``@here`` is not a mention without
  ``link_names``, which the bot never sets. The invariant: the only ``<…>`` in what we send
  are the http(s)/mailto links the converter builds, and, as a second line, no ``@here``-like
  word is left unbroken.
"""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from bot.core.conversation import clean_text
from bot.platforms.base import split_text
from bot.platforms.discord.text import MESSAGE_LIMIT, ZERO_WIDTH_SPACE
from bot.platforms.discord.text import neutralize_broadcasts as discord_neutralize
from bot.platforms.slack.delivery import preview as _preview
from bot.platforms.slack.delivery import safe as _safe
from bot.platforms.slack.format import (
    PART_CHARS,
    WORD_JOINER,
    escape,
    markdown_to_mrkdwn,
    render_parts,
    slack_to_text,
    unescape,
)
from bot.platforms.slack.format import neutralize_broadcasts as slack_neutralize

ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"]
FULL_WIDTH = ["＠", "ｅｖｅｒｙｏｎｅ", "ＥＶＥＲＹＯＮＥ", "ｈｅｒｅ", "ｃｈａｎｎｅｌ",
              "＜", "＞", "！"]
MARKDOWN = ["**", "*", "__", "_", "~~", "`", "```", "||", "\\", "> ", "# ", "- ", "[", "]", "(",
            ")", "\n", " "]

# ---------------------------------------------------------------------------- splitting

FENCE_LINE = re.compile(r"`{3,}[\w+-]*\n")
FENCE = re.compile(r"^\s*(```+)([\w+-]*)", re.MULTILINE)
ADDED_CLOSE = "\n```"

split_alphabet = st.sampled_from([
    "```", "```python\n", "````", "```" + "x" * 40, "`", "``", "\n", "\n\n", " ", ". ", "! ",
    "word", "a", "é", "🙂", "x" * 37, "print(1)\n", "~~~\n"])
split_texts = st.one_of(
    st.lists(split_alphabet, max_size=150).map("".join),
    st.text(max_size=2500),
)


def rejoins_exactly(parts: list[str], text: str) -> bool:
    """Whether removing only the fences `split_text` may add gives back `text` exactly.

    The precise invariant: each part is ``reopen + body + close`` where ``close`` is either
    empty or ``"\\n```"`` (never on the last part), the next part's ``reopen`` is one fence
    line (```` ```lang\\n ````) exactly when the previous part got a ``close``, every body is
    non-empty, and the bodies concatenate to `text`. Which trailing ``"\\n```"`` was added can
    be ambiguous (the text may hold one itself), so every reading is tried: at most two per
    cut.
    """
    states = {(0, False)}  # (characters of `text` matched so far, next part was reopened)
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        following: set[tuple[int, bool]] = set()
        for position, reopened in states:
            body = part
            if reopened:
                line = FENCE_LINE.match(body)
                if line is None:
                    continue
                body = body[line.end():]
            readings = [(body, False)]
            if not last and body.endswith(ADDED_CLOSE):
                readings.append((body[: -len(ADDED_CLOSE)], True))
            for kept, closed in readings:
                if kept and text.startswith(kept, position):
                    following.add((position + len(kept), closed))
        states = following
    return (len(text), False) in states


@settings(max_examples=400, deadline=None)
@given(split_texts, st.integers(min_value=32, max_value=400))
@example("```" + "a" * 32 + " " + "b" * 100, 40)  # used to loop forever
@example("```" + "a" * 100 + " b" * 30, 40)  # used to exceed the limit
def test_split_never_exceeds_the_limit_and_loses_or_reorders_nothing(
        text: str, limit: int) -> None:
    parts = split_text(text, limit)
    assert all(0 < len(part) <= limit for part in parts)
    assert rejoins_exactly(parts, text)
    if "```" not in text:
        assert "".join(parts) == text  # no fences to balance: nothing added at all
    # Each part but the last closes every code block it opens, so it renders on its own.
    for part in parts[:-1]:
        assert len(FENCE.findall(part)) % 2 == 0, part


@settings(max_examples=100, deadline=None)
@given(split_texts)
def test_split_at_the_platform_limits(text: str) -> None:
    for limit in (MESSAGE_LIMIT, PART_CHARS):
        parts = split_text(text * 3, limit)
        assert all(0 < len(part) <= limit for part in parts)
        assert rejoins_exactly(parts, text * 3)


def test_split_does_not_cut_through_a_fence() -> None:
    """A hard cut (no space or newline near) that lands in a run of backticks moves before
    it, so a fence is never split into "`" and "``python" that render as neither."""
    text = "a\n" + "\t" * 25 + "```python\ncode\n```"
    parts = split_text(text, 32)
    assert parts == ["a\n" + "\t" * 25, "```python\ncode\n```"]


# ---------------------------------------------------------------------------- Discord

DISCORD_PING = re.compile(r"@(everyone|here)|<@&\d", re.IGNORECASE)
discord_texts = st.lists(
    st.sampled_from(["@", "everyone", "here", "ever", "yone", "he", "re", "Everyone", "HERE",
                     "<@&", "<@", "<@!", "123", ">", "&", "a", *ZERO_WIDTH, *FULL_WIDTH,
                     *MARKDOWN])
    | st.characters(),
    max_size=40).map("".join)


def only_zwsp_inserted(source: str, out: str) -> bool:
    """Whether `out` is `source` with some U+200B characters inserted (and nothing else)."""
    index = 0
    for char in out:
        if index < len(source) and char == source[index]:
            index += 1
        elif char != ZERO_WIDTH_SPACE:
            return False
    return index == len(source)


@settings(max_examples=500)
@given(discord_texts)
@example("@ever**yone @\u200beveryone ＠ｅｖｅｒｙｏｎｅ `@here` <@&123> <@&\u200b1>")
def test_discord_neutraliser_leaves_no_ping(text: str) -> None:
    out = discord_neutralize(text)
    assert DISCORD_PING.search(out) is None, out
    assert only_zwsp_inserted(text, out)  # never removes or folds: cannot create a ping
    assert discord_neutralize(out) == out
    if DISCORD_PING.search(text) is None:
        assert out == text  # look-alikes, zero-width tricks and Markdown are left alone


@settings(max_examples=200, deadline=None)
@given(discord_texts, st.text(max_size=30))
def test_discord_reply_path_leaves_no_ping(answer: str, question: str) -> None:
    """What `LiveReply` sends: the cleaned question quoted above the answer, then split."""
    prefix = f"> {clean_text(question)}\n" if question.strip() else ""
    for part in split_text(discord_neutralize(prefix + answer * 60), MESSAGE_LIMIT):
        assert DISCORD_PING.search(part) is None


def test_full_width_and_zero_width_look_alikes_are_kept_as_written() -> None:
    for text in ("＠ｅｖｅｒｙｏｎｅ", "＠ｈｅｒｅ", "@\u200beveryone", "@\u2060here",
                 "@\ufeffhere", "@ever**yone", "@**everyone**", "<@&\u200b5>", "＜@&5>"):
        assert discord_neutralize(text) == text
    assert discord_neutralize("`@everyone` <@&42>") == "`@\u200beveryone` <@&\u200b42>"


# ---------------------------------------------------------------------------- Slack

SAFE_LINK = re.compile(r"<(?:https?://[^\s|<>]+|mailto:[^\s|<>@]+@[^\s|<>]+)\|[^<>]*>",
                       re.IGNORECASE)
SLACK_WORD = re.compile(r"@(here|channel|everyone)\b", re.IGNORECASE)
slack_texts = st.lists(
    st.sampled_from(["<!channel>", "<!here>", "<!everyone>", "<!subteam^S123|@devs>",
                     "<!subteam^S1>", "<@U123>", "<#C1|x>", "<", ">", "!", "&", "&lt;", "&gt;",
                     "&amp;", "@", "here", "channel", "everyone", "subteam^", "|", "^",
                     "[link](https://x.io)", "[a](<!here>)", "](", "https://", "mailto:a@b.c",
                     "javascript:", "# ", "***", "\x01", "\r\n", *ZERO_WIDTH, *FULL_WIDTH,
                     *MARKDOWN])
    | st.characters(),
    max_size=50).map("".join)


def assert_slack_safe(mrkdwn: str) -> None:
    """No Slack control sequence but our own links, and no unbroken ``@here`` words."""
    outside_links = SAFE_LINK.sub("", mrkdwn)
    assert "<" not in outside_links and ">" not in outside_links, mrkdwn
    assert SLACK_WORD.search(mrkdwn) is None, mrkdwn


@settings(max_examples=500, deadline=None)
@given(slack_texts)
@example("# @**here**")  # the heading used to drop the "*"s after neutralising
@example("[<!here>](https://x.io) [x](https://a|<!channel>) &lt;!everyone&gt;")
def test_markdown_to_mrkdwn_never_raises_and_cannot_notify(text: str) -> None:
    assert_slack_safe(markdown_to_mrkdwn(text))
    assert_slack_safe(_preview(text))
    assert_slack_safe(_safe(text))
    for part in render_parts(text * 20, limit=200):
        assert_slack_safe(part)


@settings(max_examples=300)
@given(st.text())
def test_markdown_to_mrkdwn_never_raises_on_any_text(text: str) -> None:
    assert_slack_safe(markdown_to_mrkdwn(text))


@settings(max_examples=300)
@given(slack_texts)
def test_slack_neutraliser_only_inserts_word_joiners(text: str) -> None:
    out = slack_neutralize(text)
    assert SLACK_WORD.search(out) is None
    assert out.replace("@" + WORD_JOINER, "@") == text.replace("@" + WORD_JOINER, "@")
    assert slack_neutralize(out) == out


@settings(max_examples=300)
@given(slack_texts)
def test_incoming_slack_markup_is_always_readable(text: str) -> None:
    slack_to_text(text, {"U123": "Alice"})
    assert unescape(escape(text)) == text


def test_pathological_markdown_stays_fast() -> None:
    """Some regexes used to backtrack quadratically: 0.4 s for one 3,500-character part,
    paid again on every streaming edit. Each case here took seconds before."""
    import time

    cases = ["[a](" + "x" * 20_000, "[" * 20_000, "[a](" + " " * 20_000]
    for text in cases:
        started = time.perf_counter()
        markdown_to_mrkdwn(text)
        assert time.perf_counter() - started < 1.0, text[:10]
