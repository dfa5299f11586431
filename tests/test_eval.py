"""The quality evaluation (`python -m bot.eval`): its scores, and a run through the full core.

The fast tests run every set on the echo backend; the slow one runs a small subset on the
bundled model and checks the targets of docs/quality.md that a subset can show.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bot.config import Settings
from bot.engines.worker import ModelWorker
from bot.eval import scoring
from bot.eval.report import table
from bot.eval.runner import Options, evaluate, load
from tests.fakes.backends import EchoBackend

ROOT = Path(__file__).resolve().parents[1]
KNOWLEDGE = ROOT / "examples" / "knowledge"


def test_answers_are_matched_as_whole_words_and_exactly() -> None:
    assert scoring.contains("The capital of France is Paris.", ["Paris"])
    assert scoring.contains("A spider has 8 legs.", ["8", "eight"])
    assert not scoring.contains("It is 180 degrees.", ["18"])
    assert scoring.contains("Humans breathe with their lungs.", ["lung"])
    assert scoring.contains("首都是巴黎。", ["巴黎"])
    assert scoring.exact("Paris.", ["Paris"]) and not scoring.exact("It is Paris", ["Paris"])


def test_degenerate_replies_are_empty_name_only_or_looping() -> None:
    assert scoring.degenerate("")
    assert scoring.degenerate("Alice:", ["alice"])
    assert scoring.degenerate("It's a great way to relax. " * 5)
    assert scoring.degenerate("Walking is good for you, really. Yes. " * 2
                              + "Walking is good for you, really. No.")  # 3 times, apart
    assert not scoring.degenerate("Walking is good for you. It lifts your mood.")


def test_language_script_and_rouge() -> None:
    assert scoring.same_script("法国的首都是哪里？", "巴黎。")
    assert not scoring.same_script("法国的首都是哪里？", "Paris.")
    assert scoring.same_script("フランスの首都は？", "パリです。")
    assert not scoring.same_script("フランスの首都は？", "巴黎")
    assert scoring.rouge_l("the launch moves to friday", "The launch moves to Friday.") == 1.0
    assert scoring.rouge_l("bananas", "The launch moves to Friday.") == 0.0
    assert scoring.says_unknown("I don’t know: our documentation doesn't answer that.")


def test_the_data_sets_are_well_formed() -> None:
    factual = load("factual.jsonl", 0)
    assert len(factual) == 120 and all(item["q"] and item["a"] for item in factual)
    summaries = load("summaries.json", 0)
    assert len(summaries) == 10 and all(len(s["messages"]) >= 8 for s in summaries)
    knowledge = load("knowledge.jsonl", 0)
    assert sum(k["answered"] for k in knowledge) == sum(not k["answered"] for k in knowledge)
    documents = load("documents.json", 0)
    assert len(documents) == 4 and all(
        d["source"] and d["text"] and d["summary"] and d["questions"] for d in documents)


async def test_every_set_runs_through_the_core_on_the_echo_backend(settings: Settings) -> None:
    backend = EchoBackend()
    async with ModelWorker(lambda: backend, max_pending=100) as worker:
        results = await evaluate(worker, settings, Options(limit=2, knowledge_dir=KNOWLEDGE))
    scores = results.scores
    assert set(scores) == {"factual", "long", "knowledge", "summaries", "languages",
                           "documents"}
    assert scores["documents"]["items"] == 2 + 4 + 3  # two texts: summaries and questions
    assert scores["documents"]["contains_bot"] == 0.0  # the echo repeats the question
    assert scores["factual"]["items"] == 2 and scores["knowledge"]["items"] == 4
    # The echo repeats the question: no factual answer, and never backed by the passages.
    assert scores["factual"]["contains_bot"] == 0.0
    assert scores["knowledge"]["unanswered_said_unknown_bot"] == 1.0
    assert 0 < scores["summaries"]["rougeL_lead"] < 1
    plain = [p for p in backend.prompts if len(p) == 1]
    assert plain and plain[0][0]["role"] == "user"  # the baseline: the question alone
    text = table(results.to_json())
    assert "| factual | answer in reply | 2 | 0.00 |" in text
    assert "| summaries | ROUGE-L F1 | 2 |" in text
    assert "| documents | summaries: ROUGE-L F1 | 9 |" in text
    shared = [p for p in backend.prompts if "<document name=\"gettysburg-address.txt\">"
              in p[-1]["content"]]
    assert shared  # the text reached the model as a shared document


@pytest.mark.slow
async def test_a_subset_on_the_bundled_model_meets_the_targets(settings: Settings,
                                                               tmp_path: Path) -> None:
    from bot.eval.__main__ import engine_for

    real = dataclasses.replace(settings, model_cache_dir=tmp_path / "models")
    options = Options(limit=6, sets=("factual", "long", "knowledge", "summaries"),
                      knowledge_dir=KNOWLEDGE)
    async with engine_for(real) as engine:
        scores = (await evaluate(engine, real, options)).scores
    assert scores["factual"]["contains_bot"] >= scores["factual"]["contains_plain"]
    assert scores["factual"]["degenerate_bot"] == 0
    assert scores["long"]["degenerate_bot"] == 0
    assert scores["knowledge"]["unanswered_said_unknown_bot"] == 1.0
    assert scores["knowledge"]["answered_right_bot"] >= 0.5
    assert scores["summaries"]["rougeL_bot"] > scores["summaries"]["rougeL_lead"]
