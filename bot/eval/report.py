"""The evaluation's scores as a table: the bot and its baselines side by side."""

from __future__ import annotations

from typing import Any

ROWS = [
    ("factual", "contains", "answer in reply"),
    ("factual", "exact", "reply is the answer"),
    ("factual", "degenerate", "degenerate replies"),
    ("long", "degenerate", "degenerate replies"),
    ("knowledge", "answered_right", "answered questions right"),
    ("knowledge", "answered_said_unknown", "answered questions: said don't know"),
    ("knowledge", "unanswered_said_unknown", "unanswered questions: said don't know"),
    ("knowledge", "degenerate", "degenerate replies"),
    ("summaries", "rougeL", "ROUGE-L F1"),
    ("summaries", "degenerate", "degenerate replies"),
    ("languages", "same_script", "answered in the question's script"),
    ("languages", "contains", "answer in reply"),
    ("documents", "contains", "questions: answer in reply"),
    ("documents", "rougeL", "summaries: ROUGE-L F1"),
    ("documents", "degenerate", "degenerate replies"),
]
COLUMNS = ("bot", "plain", "lead")


def table(report: dict[str, Any]) -> str:
    """A Markdown table: one row per score, a column each for the bot, the same model
    prompted plainly, and (summaries) the first-messages baseline."""
    scores: dict[str, dict[str, float]] = report["scores"]
    lines = [f"Model: {report['model']}, {report.get('engine', 'in-process')} engine "
             f"({report.get('seconds', '?')} s)", "",
             "| set | score | items | bot | plain prompt | first messages |",
             "|---|---|---|---|---|---|"]
    for name, key, label in ROWS:
        found = scores.get(name)
        if found is None:
            continue
        cells = []
        for column in COLUMNS:
            value = found.get(f"{key}_{column}")
            cells.append("" if value is None else f"{value:.2f}")
        if not any(cells):
            continue
        lines.append(f"| {name} | {label} | {int(found['items'])} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)
