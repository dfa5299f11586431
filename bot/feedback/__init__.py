"""Feedback on answers, for the operator: ``python -m bot.feedback export --since DAYS``."""
