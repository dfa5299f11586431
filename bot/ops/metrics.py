"""Prometheus metrics of the bot, on a registry of its own (so tests and apps don't collide).

The core records each request's outcome and timings here; `bot.ops.server` serves them at
``/metrics`` in Prometheus text format.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OUTCOMES = ("answered", "command", "busy", "rate_limited", "refused", "error", "timeout",
            "dropped")
_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class BotMetrics:
    """Counters, gauges and histograms of one running bot."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("bot_requests", "Addressed messages and commands, by outcome",
                                ["platform", "outcome"], registry=self.registry)
        self.time_to_first_token = Histogram(
            "bot_time_to_first_token_seconds", "From submitting a request to its first text",
            buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.generation_seconds = Histogram(
            "bot_generation_seconds", "From submitting a request to its last token",
            buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.generated_tokens = Counter("bot_generated_tokens", "Tokens generated in replies",
                                        registry=self.registry)
        self.tokens_per_second = Gauge("bot_tokens_per_second",
                                       "Decoding speed of the most recent reply",
                                       registry=self.registry)
        self.queue_depth = Gauge("bot_queue_depth", "Requests generating or waiting",
                                 registry=self.registry)
        self.history_messages = Gauge("bot_history_messages", "Messages stored in history",
                                      registry=self.registry)
        self.feedback = Counter("bot_feedback", "Votes on answers (new or changed), by value",
                                ["platform", "value"], registry=self.registry)

    def watch_queue(self, depth: Callable[[], int]) -> None:
        """Read the queue depth live at every scrape."""
        self.queue_depth.set_function(lambda: float(depth()))

    def count(self, platform: str, outcome: str) -> None:
        self.requests.labels(platform=platform, outcome=outcome).inc()

    def count_feedback(self, platform: str, value: str) -> None:
        """A vote (``up`` or ``down``) was cast or changed to `value`."""
        self.feedback.labels(platform=platform, value=value).inc()

    def observe_generation(self, *, first_token: float | None, total: float,
                           tokens: int) -> None:
        if first_token is not None:
            self.time_to_first_token.observe(first_token)
        self.generation_seconds.observe(total)
        self.generated_tokens.inc(tokens)
        decoding = total - (first_token or 0.0)
        if tokens > 1 and decoding > 0:
            self.tokens_per_second.set(tokens / decoding)
