"""Pure text helpers for Slack: Markdown out as safe mrkdwn, Slack markup in as plain text.

Outgoing text is escaped first (``&``, ``<``, ``>``), so nothing the model writes can become a
Slack control sequence: ``<!channel>``, ``<!here>``, ``<!everyone>``, ``<!subteam^…>`` and
``<@user>`` all render literally and notify nobody. The only ``<…>`` sequences in the output
are the links this module builds from Markdown links with http(s)/mailto targets. Plain
``@here``-style words get an invisible word joiner after the ``@`` as a second line of defence
(Slack only links them with ``link_names``, which the adapter never sets).

Incoming Slack markup (``<@U123>``, ``<#C1|general>``, ``<https://x|label>``, entities) is turned
back into readable text for the model and for summaries.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from bot.platforms.base import split_text

WORD_JOINER = "\u2060"
PART_CHARS = 3_500
"""Markdown characters per Slack message: well below Slack's limits, and readable."""

_SENTINEL_BOLD = "\x01"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_BROADCAST = re.compile(r"@(?=(?:here|channel|everyone)\b)", re.IGNORECASE)
_FENCE_LINE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([^`\s]*)[^`]*$")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
_LINK = re.compile(r"!?\[([^\[\]\n]+)\]\(\s*([^\s()]+(?:\([^\s()]*\)[^\s()]*)?)"
                   r"(?:\s+(?:\"[^\"\n]*\"|'[^'\n]*'))?\s*\)")
_SAFE_URL = re.compile(r"^(?:https?://[^\s|<>]+|mailto:[^\s|<>@]+@[^\s|<>]+)$", re.IGNORECASE)
_BOLD_ITALIC = re.compile(r"\*\*\*(?=\S)(.+?)(?<=\S)\*\*\*")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|(?<![\w_])__(?=\S)(.+?)(?<=\S)__(?![\w_])")
_ITALIC = re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+(.*?)[ \t]*#*[ \t]*$")
_RULE = re.compile(r"^[ \t]{0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_BULLET = re.compile(r"^([ \t]*)[-*+][ \t]+(?:\[([ xX])\][ \t]+)?")
_SLACK_TOKEN = re.compile(r"<([^<>\n]*)>")
_USER_ID = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")


def escape(text: str) -> str:
    """Slack's three mandatory escapes: the text then renders exactly as written."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def unescape(text: str) -> str:
    """Undo `escape` (and the same entities in text that Slack sends us)."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def neutralize_broadcasts(text: str) -> str:
    """Put a word joiner after the ``@`` of ``@here``/``@channel``/``@everyone``."""
    return _BROADCAST.sub("@" + WORD_JOINER, text)


def markdown_to_mrkdwn(markdown: str) -> str:
    """Convert the model's Markdown to Slack mrkdwn that cannot notify anyone.

    Bold, italics, strike-through, links, headings, bullet lists and fenced code are
    converted; code keeps its content verbatim (escaped) and loses its language tag, which
    Slack would show as the first line. An unclosed fence (a reply still streaming) is closed.
    """
    text = _CONTROL.sub("", markdown.replace("\r\n", "\n"))
    out: list[str] = []
    fence: str | None = None
    for line in text.split("\n"):
        match = _FENCE_LINE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                out.append("```")
            else:
                out.append(_convert_line(line))
        elif match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                and not match.group(2):
            fence = None
            out.append("```")
        else:
            out.append(neutralize_broadcasts(escape(line)))
    if fence is not None:
        out.append("```")
    return "\n".join(out)


def render_parts(markdown: str, limit: int = PART_CHARS) -> list[str]:
    """Split Markdown at natural boundaries, then convert each part to mrkdwn."""
    if not markdown.strip():
        return [markdown_to_mrkdwn("(empty reply)")]
    return [markdown_to_mrkdwn(part) for part in split_text(markdown, limit)]


def _convert_line(line: str) -> str:
    """One line outside code blocks: block-level syntax, then inline spans."""
    if _RULE.match(line):
        return "──────────"
    heading = _HEADING.match(line)
    if heading:
        # Dropping the inner "*"s can join "@" to a word again ("@**here**"): neutralise after.
        title = neutralize_broadcasts(_convert_inline(heading.group(1)).replace("*", ""))
        return f"*{title}*" if title.strip() else ""
    bullet = _BULLET.match(line)
    if bullet:
        indent, box = bullet.group(1), bullet.group(2)
        mark = "•" if box is None else ("☐" if box == " " else "☑")
        return f"{indent}{mark} {_convert_inline(line[bullet.end():])}"
    return _convert_inline(line)


def _convert_inline(text: str) -> str:
    """Inline code is kept as is; everything else is escaped and converted."""
    out: list[str] = []
    pos = 0
    for match in _INLINE_CODE.finditer(text):
        out.append(_convert_spans(text[pos:match.start()]))
        code = match.group(2)
        out.append(f"`{neutralize_broadcasts(escape(code))}`" if "`" not in code
                   else neutralize_broadcasts(escape(match.group(0))))
        pos = match.end()
    out.append(_convert_spans(text[pos:]))
    return "".join(out)


def _convert_spans(text: str) -> str:
    """Links, bold, italics and strike-through in a run of text without code."""
    out: list[str] = []
    pos = 0
    for match in _LINK.finditer(text):
        out.append(_plain(text[pos:match.start()]))
        label, url = match.group(1), match.group(2)
        if _SAFE_URL.match(url):
            out.append(f"<{escape(url)}|{_plain(label)}>")
        else:
            out.append(_plain(match.group(0)))
        pos = match.end()
    out.append(_plain(text[pos:]))
    return "".join(out)


def _plain(text: str) -> str:
    return neutralize_broadcasts(_emphasis(escape(text)))


def _emphasis(text: str) -> str:
    text = _BOLD_ITALIC.sub(lambda m: f"{_SENTINEL_BOLD}_{m.group(1)}_{_SENTINEL_BOLD}", text)
    text = _BOLD.sub(lambda m: f"{_SENTINEL_BOLD}{m.group(1) or m.group(2)}{_SENTINEL_BOLD}",
                     text)
    text = _ITALIC.sub(lambda m: f"_{m.group(1)}_", text)
    text = _STRIKE.sub(lambda m: f"~{m.group(1)}~", text)
    return text.replace(_SENTINEL_BOLD, "*")


# ---------------------------------------------------------------------- incoming text


def mentioned_user_ids(text: str) -> list[str]:
    """User IDs mentioned as ``<@U…>`` in Slack text, in order, without repeats."""
    return list(dict.fromkeys(_USER_ID.findall(text)))


def strip_mention(text: str, bot_user_id: str) -> str:
    """Remove the bot's own ``<@BOT>`` mentions (and a ``:``/``,`` right after them)."""
    pattern = re.compile(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>[ \t]*[:,]?[ \t]*")
    return pattern.sub("", text).strip()


def slack_to_text(text: str, names: Mapping[str, str] | None = None) -> str:
    """Slack markup as plain text: ``<@U1>`` → ``@Alice``, ``<url|label>`` → ``label (url)``.

    Args:
        names: display names by user ID; unknown users keep their label or ID.
    """
    names = names or {}

    def token(match: re.Match[str]) -> str:
        body = match.group(1)
        target, _, label = body.partition("|")
        if target.startswith("@"):
            user = target[1:]
            return "@" + (names.get(user) or label or user)
        if target.startswith("#"):
            return "#" + (label or target[1:])
        if target.startswith("!"):
            special = target[1:]
            if special in ("here", "channel", "everyone"):
                return "@" + special
            if special.startswith("subteam^"):
                return label or "@group"
            return label or special
        if not label or label == target or target == f"mailto:{label}":
            return target.removeprefix("mailto:")
        return f"{label} ({target})"

    return unescape(_SLACK_TOKEN.sub(token, text))
