"""What the message commands ask the model (Discord's right-click → Apps, Slack's message
shortcuts): a question about one message, with that message quoted before it."""

from __future__ import annotations

from collections.abc import Sequence

from bot.errors import UserError

EXPLAIN = "Explain this message: what it says, and what it means."
NO_TEXT = "That message has no text or file I can read, so there is nothing for me to go on."
NOTHING_TO_SUMMARISE = ("That message has no file or link for me to summarise. To summarise "
                        "the conversation, use Summarize from here (Discord) or Summarize "
                        "thread (Slack).")


def about_message(author: str, text: str, question: str, *, limit: int,
                  attached: Sequence[str] = ()) -> str:
    """The chat message that asks `question` about `author`'s message `text`.

    The message is quoted first and the question comes last, where small models follow it
    best; a long message is cut so the whole fits in `limit` characters. `attached` names
    the message's files: the adapter shares them with the question (as documents), and a
    message with files and no text is still something to ask about.
    """
    text, question = text.strip(), " ".join(question.split())
    if not (text or attached):
        raise UserError(NO_TEXT)
    if not question:
        raise UserError("Please write a question about the message.")
    names = ", ".join(attached)
    if not text:
        return f"{author} shared {names}.\n\n{question}"
    head = f"{author} wrote (attached: {names}):\n" if attached else f"{author} wrote:\n"
    tail = f"\n\n{question}"
    quoted = "\n".join(f"> {line}" for line in text.splitlines())
    room = limit - len(head) - len(tail)
    if len(quoted) > room:
        quoted = quoted[: max(0, room - 4)].rstrip() + " […]"
    return f"{head}{quoted}{tail}"
