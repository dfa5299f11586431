"""`python -m bot.eval`: answer quality on the configured engine, against plain baselines.

Sets (in `bot/eval/data/`, written for this project; see `docs/quality.md`): short factual
questions, long-form requests (loops), support questions the sample knowledge base does and
does not answer, conversations with reference summaries, and Chinese and Japanese questions.
"""
