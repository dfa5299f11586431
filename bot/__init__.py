"""A self-hosted LLM chat bot for Discord, Slack and the console.

Public names only; importing the package has no side effects (no torch, no .env).
"""

from bot.config import Settings
from bot.core.conversation import ConversationCore
from bot.engines.worker import GenerationHandle, ModelWorker
from bot.errors import BotError, BusyError, ConfigError, GenerationError, UserError
from bot.storage.interface import HistoryStore
from bot.types import ChannelKey, IncomingMessage, Reply, Turn

__all__ = [
    "BotError",
    "BusyError",
    "ChannelKey",
    "ConfigError",
    "ConversationCore",
    "GenerationError",
    "GenerationHandle",
    "HistoryStore",
    "IncomingMessage",
    "ModelWorker",
    "Reply",
    "Settings",
    "Turn",
    "UserError",
]
