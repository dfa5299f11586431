"""The conversation: deciding, commands, prompts, summaries, personas, rate limits.

Imports no platform SDK, no torch and no HTTP client (checked by import-linter).
"""
