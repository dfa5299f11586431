"""Build prompts that fit the context window, by exact token counts.

Pure functions over a `TokenCounter`; the core runs them off the event loop. The newest
message always goes in (cut if it alone is too long), then as much history as fits, newest
first; consecutive lines from people are merged into one user message so chat templates that
insist on alternating roles still render.
"""

from __future__ import annotations

from bot.engines.contract import TokenCounter
from bot.storage.knowledge import Passage
from bot.types import ChatMessage, Prompt, Turn

TRUNCATION_MARK = " […]"


SPEAKERS_NOTE = ("Several people talk here; each of their messages starts with the "
                 "person's name.")
"""Added to the system prompt when more than one person talks in a conversation."""


def turn_content(turn: Turn, named: bool = True) -> str:
    """How a turn reads inside the prompt: people's lines carry their name when `named`."""
    return turn.text if turn.role == "assistant" or not named else f"{turn.author}: {turn.text}"


def is_group(history: list[Turn], message: Turn) -> bool:
    """Whether more than one person talks in the conversation, so lines need names.

    With one person (a DM, the console, a channel where only one person has spoken) the
    ``name:`` prefix only costs accuracy: small models answer worse, greet the name, or
    start their reply with a speaker label (docs/quality.md).
    """
    return any(t.role == "user" and t.author != message.author for t in history)


def to_messages(system: str, turns: list[Turn], named: bool = True) -> Prompt:
    """Chat messages for `turns`, merging runs of user turns and starting with a user turn."""
    messages: Prompt = [{"role": "system", "content": system}]
    for turn in turns:
        content = turn_content(turn, named)
        last = messages[-1]
        if turn.role == "user" and last["role"] == "user":
            last["content"] += "\n" + content
        elif turn.role == "assistant" and last["role"] == "system":
            continue  # a prompt may not open with the bot talking to itself
        elif turn.role == "assistant" and last["role"] == "assistant":
            last["content"] += "\n" + content
        else:
            messages.append(ChatMessage(role=turn.role, content=content))
    return messages


def fit_text(counter: TokenCounter, text: str, max_tokens: int) -> str:
    """`text` cut to at most `max_tokens` tokens, marked when it was cut."""
    if counter.count_text(text) <= max_tokens:
        return text
    room = max(0, max_tokens - counter.count_text(TRUNCATION_MARK))
    return counter.truncate_text(text, room) + TRUNCATION_MARK


def build_chat_prompt(counter: TokenCounter, *, system: str, history: list[Turn],
                      message: Turn, context_tokens: int, reply_tokens: int,
                      reference: str = "", kept_out: list[Turn] | None = None) -> Prompt:
    """The prompt for answering `message`, within ``context_tokens - reply_tokens``.

    Oldest history turns are dropped first; an oversized `message` is cut, never sent whole.
    A `reference` (knowledge-base passages) goes right before the new message, where small
    models use it best; its tokens are reserved first. `kept_out`, if given, receives the
    history turns that made it in.
    """
    if reference:
        reserved = counter.count_text(reference) + 8
        prompt = build_chat_prompt(counter, system=system, history=history, message=message,
                                   context_tokens=context_tokens,
                                   reply_tokens=reply_tokens + reserved, kept_out=kept_out)
        prompt[-1]["content"] = f"{reference}\n\n{prompt[-1]['content']}"
        return prompt
    budget = context_tokens - reply_tokens
    named = is_group(history, message)
    if named:
        system = f"{system} {SPEAKERS_NOTE}" if system else SPEAKERS_NOTE
    empty = counter.count_prompt(to_messages(system, [Turn("user", message.author, "")], named))
    if empty > budget:
        raise ValueError("the system prompt alone does not fit the context window; "
                         "lower MAX_NEW_TOKENS or raise CONTEXT_TOKENS")
    text = message.text
    limit = counter.count_text(text)
    while True:
        newest = Turn("user", message.author, text)
        base = counter.count_prompt(to_messages(system, [newest], named))
        if base <= budget:
            break
        limit = max(0, min(limit, counter.count_text(text)) - (base - budget) - 1)
        text = fit_text(counter, message.text, limit)

    # Estimate each older turn's cost, newest first, then verify the total exactly.
    pair = to_messages(system, [Turn("user", "x", ""), newest], named)
    overhead = counter.count_prompt(pair) - base
    kept: list[Turn] = []
    used = base
    for turn in reversed(history):
        cost = counter.count_text(turn_content(turn, named)) + max(overhead, 1)
        if used + cost > budget:
            break
        kept.insert(0, turn)
        used += cost
    prompt = to_messages(system, [*kept, newest], named)
    while kept and counter.count_prompt(prompt) > budget:
        kept.pop(0)
        prompt = to_messages(system, [*kept, newest], named)
    while len(kept) < len(history):  # the estimate is cautious: take what still fits
        candidate = to_messages(system, [history[-len(kept) - 1], *kept, newest], named)
        if counter.count_prompt(candidate) > budget:
            break
        kept.insert(0, history[-len(kept) - 1])
        prompt = candidate
    if kept_out is not None:
        kept_out[:] = kept
    return prompt


def window_from(history: list[Turn], start: Turn | None) -> list[Turn]:
    """`history` from `start` on (its first occurrence), or all of it when `start` is gone.

    Why: a prompt that begins with the same turns as last time lets a server's prefix cache
    (and the in-process prompt cache) reuse them; the core remembers where each channel's
    prompt began and cuts there until the prompt no longer fits.
    """
    if start is None:
        return history
    for index, turn in enumerate(history):
        if turn == start:
            return history[index:]
    return history


def chunk_lines(counter: TokenCounter, lines: list[str], max_tokens: int) -> list[list[str]]:
    """Group transcript lines into chunks of at most `max_tokens` tokens each, in order.

    A single line longer than a chunk is cut so that every chunk fits.
    """
    chunks: list[list[str]] = []
    current: list[str] = []
    used = 0
    for line in lines:
        cost = counter.count_text(line) + 1
        if cost > max_tokens:
            line = fit_text(counter, line, max_tokens - 2)
            cost = counter.count_text(line) + 1
        if current and used + cost > max_tokens:
            chunks.append(current)
            current, used = [], 0
        current.append(line)
        used += cost
    if current:
        chunks.append(current)
    return chunks


def knowledge_block(counter: TokenCounter, passages: list[Passage],
                    max_tokens: int) -> tuple[str, list[str]]:
    """Reference passages for the prompt, best first, within `max_tokens`.

    Returns the text to append to the system prompt ('' when nothing fits) and the files the
    included passages came from, so the answer can name its sources.
    """
    header = "Reference passages:"
    used = counter.count_text(header) + 2
    entries: list[str] = []
    sources: list[str] = []
    for passage in passages:
        entry = f"[{passage.path} — {passage.heading}]\n{passage.text}"
        cost = counter.count_text(entry) + 2
        if used + cost > max_tokens:
            continue
        entries.append(entry)
        used += cost
        if passage.path not in sources:
            sources.append(passage.path)
    if not entries:
        return "", []
    return "\n\n".join([header, *entries]), sources


def cut_at_speaker(text: str, speakers: set[str]) -> str:
    """`text` up to the first line where the model writes as one of the chat's people.

    Small models continue a group-chat transcript by inventing the next person's line
    (``"\nada: ..."``); that must never be posted as if the person had said it.
    """
    cut = len(text)
    for name in speakers:
        for marker in (f"\n{name}:", f"\n{name} :"):
            index = text.find(marker)
            if 0 <= index < cut:
                cut = index
    return text[:cut]
