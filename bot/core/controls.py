"""The controls of an answer, defined once for every platform (issue #18).

An answer is named by its conversation and the message it replies to (the question), so a
button keyed by that message works after a restart. What each control means:

* **stop**: while the answer is being written, stop its generation (in-process between two
  tokens; an inference server sees its stream closed). The text so far is kept, marked as
  stopped, and stored once, like any other answer.
* **regenerate**: a new answer to the same question, sampled (never the same greedy text),
  from the conversation as it was before the question; it replaces the old one in the
  stored history and is a new revision with votes of its own.
* **continue**: offered only when the answer was cut at its token budget; the model goes on
  from the cut (the answer so far is its own unfinished reply) and the stored answer grows.
* **up** / **down**: anyone's vote on the answer, one per person per revision; a second
  vote replaces the first. Votes are data: stored with a copy of what they rate, counted in
  ``bot_feedback_total``, shown in ``/status`` and exported by ``python -m bot.feedback``.

Stop, Regenerate and Continue are for the person who asked, and for admins (the adapter says
which the presser is, from the platform's permissions); in a DM the presser owns the
conversation. The adapters only render the controls and translate presses into `Press`.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from bot.core.answering import finish
from bot.core.commands import ProgressCallback
from bot.core.personas import Persona
from bot.core.reanswer import ReanswerHost, Reanswering, engine_name
from bot.errors import GenerationError, UserError
from bot.storage.answer_records import AnswerMeta
from bot.storage.interface import ChannelSettings
from bot.types import ChannelKey, Control, IncomingMessage, Press, Reply, Turn

log = logging.getLogger(__name__)

GENERATING: tuple[Control, ...] = ("stop",)
"""What an answer offers while it is being written."""
ONLY_ASKER = "Only the asker can do that."
GONE = ("That answer is too old or was erased: I no longer have it, so I can't change it. "
        "Ask again instead.")
NOT_RUNNING = "That answer is no longer being written."
STILL_RUNNING = "That answer is still being written; press Stop first, or wait for it."
NOT_CUT = "That answer was not cut off, so there is nothing to continue."
FAILED = "Sorry, something went wrong while I was answering. Please try again."
VOTE_NOTES = {
    (None, 1): "Thanks for the 👍: it's recorded.",
    (None, -1): "Thanks for the 👎: it's recorded, and helps whoever runs me improve answers.",
    (1, 1): "You had already rated this answer 👍.",
    (-1, -1): "You had already rated this answer 👎.",
    (-1, 1): "Changed your rating of this answer to 👍.",
    (1, -1): "Changed your rating of this answer to 👎.",
}
MAX_OFFERED = 1_000


def offered(why_ended: str) -> tuple[Control, ...]:
    """The controls of a finished answer: Continue only when it was cut at its budget."""
    if why_ended == "budget":
        return ("regenerate", "continue", "up", "down")
    return ("regenerate", "up", "down")


def may_change(press: Press, asker_id: str) -> bool:
    """Stop, Regenerate and Continue: the asker, an admin, or the owner of a DM."""
    return press.user_id == asker_id or press.is_admin or press.is_direct


class Controls:
    """Records answers with what their controls need, and carries out presses.

    Args:
        host: the conversation core (`ReanswerHost`): store, engine, personas, locks.
        reanswering: regenerates and continues answers.
        wall: wall-clock seconds, for the time of votes.
    """

    def __init__(self, host: ReanswerHost, reanswering: Reanswering, *,
                 wall: Callable[[], float] = time.time) -> None:
        self.host = host
        self.reanswering = reanswering
        self._wall = wall
        self._offered: OrderedDict[tuple[ChannelKey, str], tuple[Control, ...]] = OrderedDict()

    async def record(self, msg: IncomingMessage, text: str, *, persona: Persona,
                     channel: ChannelSettings) -> None:
        """Store the bot's answer to `msg` with what its controls need: who asked, what
        produced it and why it ended (read from `answering.finish`)."""
        why_ended = finish.get()
        info = self.host.worker.info
        meta = AnswerMeta(asker_id=msg.author_id, persona=persona.name,
                          model=channel.model or info.name,
                          engine=engine_name(info.device, info.dtype), finish=why_ended)
        await self.host.history.add_answer(
            msg.key, Turn("assistant", self.host.settings.bot_name, text),
            question_id=msg.message_id, meta=meta)
        self._offered[(msg.key, msg.message_id)] = offered(why_ended)
        while len(self._offered) > MAX_OFFERED:
            self._offered.popitem(last=False)

    def offered(self, msg: IncomingMessage) -> tuple[Control, ...]:
        """The controls of the answer just recorded for `msg` (none for a command's reply)."""
        return self._offered.pop((msg.key, msg.message_id), ())

    async def press(self, press: Press, *,
                    on_progress: ProgressCallback | None = None) -> Reply | str | None:
        """Carry out a press.

        Returns the answer's new text and controls (Regenerate, Continue: `on_progress` sees
        it grow), a short note for the presser alone (a vote, a refusal, an explanation), or
        None when there is nothing to say (Stop: the answer's own flow shows where it
        stopped). Never raises for the presser's input.
        """
        log.info("%s pressed %s on the answer to %s in %s", press.user_id, press.control,
                 press.answer_to, press.key)
        try:
            if press.control in ("up", "down"):
                return await self._vote(press)
            if press.control == "stop":
                return self._stop(press)
            return await self._reanswer(press, on_progress)
        except UserError as exc:
            return str(exc)
        except GenerationError:
            log.warning("generation failed for a %s press", press.control, exc_info=True)
            return FAILED
        except Exception:
            log.exception("unexpected error on a %s press in %s", press.control, press.key)
            return FAILED

    def _stop(self, press: Press) -> str | None:
        pending = (press.key, press.answer_to)
        asker = self.host.inflight.asker(pending)
        if asker is None or pending not in self.host.inflight:
            return NOT_RUNNING
        if not may_change(press, asker):
            return ONLY_ASKER
        return None if self.host.inflight.stop(pending) else NOT_RUNNING

    async def _reanswer(self, press: Press, on_progress: ProgressCallback | None) -> Reply | str:
        stored = await self.host.history.answer(press.key, press.answer_to)
        if stored is None or stored.question is None:
            return GONE
        if not may_change(press, stored.meta.asker_id):
            return ONLY_ASKER
        if (press.key, press.answer_to) in self.host.inflight:
            return STILL_RUNNING
        if press.control == "continue" and stored.meta.finish != "budget":
            return NOT_CUT
        text = await self.reanswering.run(press, stored, on_progress=on_progress)
        if text is None:
            return GONE
        return Reply(press.key, text, reply_to=press.answer_to, controls=offered(finish.get()))

    async def _vote(self, press: Press) -> str:
        value = 1 if press.control == "up" else -1
        vote = await self.host.history.vote(press.key, press.answer_to, press.user_id, value,
                                            now=self._wall())
        if not vote.found:
            return GONE
        if vote.previous != value:
            self.host.metrics.count_feedback(press.key.platform, press.control)
        return VOTE_NOTES[(vote.previous, value)]

    async def status_line(self, key: ChannelKey) -> str:
        """For ``/status``: the votes on this channel's answers."""
        counts = await self.host.history.feedback_counts(key)
        return f"Feedback here: {counts.up} 👍, {counts.down} 👎"
