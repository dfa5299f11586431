"""Markdown → Slack mrkdwn, Slack markup → text, and broadcast-mention neutralisation.

Why: these functions are the only thing standing between model output and a channel-wide
ping, so besides examples they get property tests over arbitrary text.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.platforms.slack.format import (
    PART_CHARS,
    WORD_JOINER,
    escape,
    markdown_to_mrkdwn,
    mentioned_user_ids,
    neutralize_broadcasts,
    render_parts,
    slack_to_text,
    strip_mention,
    unescape,
)

BROADCAST = re.compile(r"@(here|channel|everyone)\b", re.IGNORECASE)
# Text rich in the characters that matter: markup, mentions, entities, fences.
slacky_text = st.lists(
    st.sampled_from(list("ab @!#<>&|*_~`[]()^:/.\n -")
                    + ["here", "channel", "everyone", "subteam^S1", "https://x.io", "```",
                       "&lt;", "&amp;", "<!here>", "<@U1>", "**", "\u2060"]),
    max_size=60).map("".join)


@pytest.mark.parametrize(("markdown", "mrkdwn"), [
    ("**bold** and __also__", "*bold* and *also*"),
    ("*italic* and _italic_", "_italic_ and _italic_"),
    ("***both***", "*_both_*"),
    ("~~gone~~", "~gone~"),
    ("[docs](https://example.com/a?b=1&c=2)", "<https://example.com/a?b=1&amp;c=2|docs>"),
    ("![alt](https://example.com/i.png)", "<https://example.com/i.png|alt>"),
    ("[mail me](mailto:a@example.com)", "<mailto:a@example.com|mail me>"),
    ("# Title with **bold**", "*Title with bold*"),
    ("- one\n  * two\n+ three", "• one\n  • two\n• three"),
    ("- [ ] todo\n- [x] done", "☐ todo\n☑ done"),
    ("1. first\n2. second", "1. first\n2. second"),
    ("> quoted", "&gt; quoted"),
    ("---", "──────────"),
    ("2 * 3 * 4 and snake_case_name", "2 * 3 * 4 and snake_case_name"),
    ("a < b && c > d", "a &lt; b &amp;&amp; c &gt; d"),
])
def test_markdown_examples(markdown: str, mrkdwn: str) -> None:
    assert markdown_to_mrkdwn(markdown) == mrkdwn


def test_code_is_kept_verbatim_without_language_and_unclosed_fences_are_closed() -> None:
    markdown = "Run:\n```python\nif a < b and **not** c:\n    print('<!here>')\n```\ndone"
    assert markdown_to_mrkdwn(markdown) == (
        "Run:\n```\nif a &lt; b and **not** c:\n    print('&lt;!here&gt;')\n```\ndone")
    assert markdown_to_mrkdwn("`**x** < y` then **z**") == "`**x** &lt; y` then *z*"
    assert markdown_to_mrkdwn("```sh\necho hi") == "```\necho hi\n```"


def test_unsafe_links_stay_text() -> None:
    assert markdown_to_mrkdwn("[x](javascript:alert(1))") == "[x](javascript:alert(1))"
    assert markdown_to_mrkdwn("[x](<!here>)") == "[x](&lt;!here&gt;)"
    assert markdown_to_mrkdwn("[<!channel>](https://a.io)") == "<https://a.io|&lt;!channel&gt;>"


@pytest.mark.parametrize("markdown", [
    "<!channel> <!here> <!everyone> <!subteam^S0TEAM|@devs> <@U0ALICE01> <#C0GENERAL>",
    "@here @Channel @everyone please",
    "```\n<!channel> @here\n```",
    "`<!everyone>`",
])
def test_channel_wide_mentions_are_neutralised(markdown: str) -> None:
    out = markdown_to_mrkdwn(markdown)
    assert not re.search(r"<[!@#]", out)
    assert not BROADCAST.search(out)
    assert unescape(out.replace(WORD_JOINER, "")).count("@") == markdown.count("@")


def test_slack_to_text() -> None:
    text = ("<@U1> hi <@U2|bob> in <#C1|general> <#C2> <!here> <!subteam^S1|@devs> "
            "<!subteam^S2> <!date^1392734382^{date}|Feb 18> <https://a.io|A> <https://b.io> "
            "<mailto:x@y.io|x@y.io> &lt;tag&gt; &amp;amp;")
    assert slack_to_text(text, {"U1": "Alice"}) == (
        "@Alice hi @bob in #general #C2 @here @devs @group Feb 18 A (https://a.io) "
        "https://b.io x@y.io <tag> &amp;")


def test_mention_helpers() -> None:
    assert strip_mention("<@UBOT> summarize", "UBOT") == "summarize"
    assert strip_mention("hey <@UBOT|bot>: what's up", "UBOT") == "hey what's up"
    assert strip_mention("<@UBOTX> hi", "UBOT") == "<@UBOTX> hi"
    assert mentioned_user_ids("<@U1> <@W2|w> <@U1> <#C1>") == ["U1", "W2"]


def test_render_parts_splits_long_markdown_and_balances_code() -> None:
    code = "```python\n" + "\n".join(f"x{i} = {i}  # <tag>" for i in range(400)) + "\n```"
    parts = render_parts("Intro paragraph.\n\n" + code)
    assert len(parts) > 1
    assert all(len(p) < 3 * PART_CHARS for p in parts)
    for part in parts[1:]:
        assert part.count("```") == 2, "each part renders as a complete code block"
    assert render_parts("") == ["(empty reply)"]


@settings(max_examples=300, deadline=None)
@given(slacky_text)
def test_property_output_never_notifies(markdown: str) -> None:
    out = markdown_to_mrkdwn(markdown)
    # The only <...> sequences are links we built, to http(s)/mailto targets.
    for target in re.findall(r"<([^>]*)>?", out):
        assert re.match(r"(https?://|mailto:)", target), (markdown, out)
    assert not BROADCAST.search(out), (markdown, out)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_property_escape_round_trips(text: str) -> None:
    assert unescape(escape(text)) == text
    assert "<" not in escape(text) and ">" not in escape(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="*_~[]`#>-+!|&<\\\u2060\r",
                                      blacklist_categories=("Cc", "Cs")), max_size=200))
def test_property_plain_text_is_unchanged(text: str) -> None:
    """Text without Markdown or Slack syntax reads the same after conversion."""
    lines = [line for line in text.split("\n") if not re.match(r"^\s*\d+\.", line)]
    plain = "\n".join(lines)
    assert unescape(markdown_to_mrkdwn(plain)).replace(WORD_JOINER, "") == plain


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_property_neutralise_is_idempotent_and_only_adds_joiners(text: str) -> None:
    once = neutralize_broadcasts(text)
    assert neutralize_broadcasts(once) == once
    assert once.replace(WORD_JOINER, "") == text.replace(WORD_JOINER, "")
    assert not BROADCAST.search(once)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(list("abc <>&*`\n") + ["```", "\n\n", ". ", "abcabc "]),
                min_size=1, max_size=1500).map("".join))
def test_property_parts_fit_slack(markdown: str) -> None:
    parts = render_parts(markdown, limit=200)
    assert all(len(p) <= 40_000 for p in parts)
    joined = unescape("".join(parts))
    without_fence_languages = re.sub(r"`{3,}[^`\n]*", "```", markdown)  # info strings go
    for word in re.findall(r"[abc]+", without_fence_languages):
        assert word in joined
