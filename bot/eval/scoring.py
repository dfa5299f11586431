"""Scores for the quality evaluation: pure functions over reply texts."""

from __future__ import annotations

import re
import string
from collections.abc import Iterable

from bot.core.repetition import trim_loop

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SENTENCE = re.compile(r"(?<=[.!?。！？])\s*|\n+")
_KANA = re.compile(r"[\u3040-\u30ff]")
_HAN = re.compile(r"[\u4e00-\u9fff]")
UNKNOWN_MARKERS = ("i don't know", "i do not know", "don't have that information",
                   "doesn't answer that", "does not answer that")


def normalise(text: str) -> str:
    """Lower case, no punctuation, articles or extra spaces (SQuAD-style)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact(reply: str, answers: Iterable[str]) -> bool:
    """The reply is one of the answers, up to case, punctuation and articles."""
    got = normalise(reply)
    return any(got == normalise(a) for a in answers)


def contains(reply: str, answers: Iterable[str]) -> bool:
    """One of the answers appears in the reply as a whole word (a plural 's' allowed)."""
    for answer in answers:
        if _HAN.search(answer) or _KANA.search(answer):
            if answer in reply:
                return True
        elif re.search(r"(?<!\w)" + re.escape(answer) + r"(?:s|es)?(?!\w)", reply, re.I):
            return True
    return False


def degenerate(reply: str, names: Iterable[str] = ()) -> bool:
    """Empty, only a speaker's name, or looping: a block repeated three times at the end,
    or one sentence (20+ characters) three times anywhere."""
    text = reply.strip()
    if not text or text.rstrip(":：").strip().lower() in {n.lower() for n in names}:
        return True
    if trim_loop(text) != text:
        return True
    sentences = [s.strip().lower() for s in _SENTENCE.split(text) if len(s.strip()) >= 20]
    return any(sentences.count(s) >= 3 for s in set(sentences))


def says_unknown(reply: str) -> bool:
    """The reply says it does not know (the support persona's fallback or the model's)."""
    low = reply.lower().replace("\u2019", "'")
    return any(marker in low for marker in UNKNOWN_MARKERS)


def same_script(question: str, reply: str) -> bool:
    """The reply is written in the question's script: Japanese (kana), Chinese (Han without
    kana), or anything else (no Han or kana needed)."""
    if _KANA.search(question):
        return bool(_KANA.search(reply))
    if _HAN.search(question):
        return bool(_HAN.search(reply)) and not _KANA.search(reply)
    return True


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (the `rouge-score` package, with stemming)."""
    from rouge_score import rouge_scorer  # imported on use: only the evaluation needs it

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(scorer.score(reference, prediction)["rougeL"].fmeasure)
