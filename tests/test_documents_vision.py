"""Images reach a model only when its server says it can see (llama.cpp ``/props``
``modalities``, Ollama ``/api/show`` ``capabilities``), as OpenAI ``image_url`` parts; a
model that cannot see gets the text, and the user one line saying so."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.config import Settings
from bot.core.conversation import ConversationCore
from bot.engines.remote.engine import RemoteConfig, RemoteEngine
from bot.storage.interface import HistoryStore
from bot.types import ChannelKey, Image, IncomingMessage, Shared
from tests import document_files as files
from tests.fakes.openai_server import FakeOpenAI

KEY = ChannelKey("slack", "C1")
PHOTO = Image("photo.png", "image/png", files.png())


def with_photo(text: str) -> IncomingMessage:
    return IncomingMessage(KEY, "m1", "u1", "ada", text, is_direct=True,
                           shared=Shared(images=(PHOTO,)))


@contextlib.asynccontextmanager
async def core_on(server: FakeOpenAI, settings: Settings,
                  history: HistoryStore) -> AsyncIterator[ConversationCore]:
    async with RemoteEngine(RemoteConfig(server.base_url)) as engine:
        yield ConversationCore(worker=engine, history=history, settings=settings)


@pytest.mark.parametrize("server_says", [
    {"vision": True},  # llama.cpp with a multimodal projector
    {"flavor": "plain", "ollama_capabilities": ["completion", "vision"]},  # Ollama
])
async def test_a_server_that_says_it_sees_gets_the_image(
        server_says: dict[str, Any], settings: Settings, history: HistoryStore) -> None:
    async with FakeOpenAI(**server_says) as server, \
            core_on(server, settings, history) as core:
        assert core.worker.info.vision
        reply = await core.handle(with_photo("What colour is it?"))
    assert reply is not None and "cannot read images" not in reply.text
    newest = server.requests[-1]["messages"][-1]
    text, image = newest["content"]
    assert text == {"type": "text", "text": "What colour is it?"}
    assert image["type"] == "image_url"
    assert image["image_url"]["url"] == ("data:image/png;base64,"
                                         + base64.b64encode(PHOTO.data).decode())


@pytest.mark.parametrize("server_says", [
    {"vision": False},  # llama.cpp, text-only model
    {},  # llama.cpp without the field
    {"flavor": "plain", "ollama_capabilities": ["completion", "tools"]},
    {"flavor": "vllm", "models": ("llava-hf/llava-1.5-7b-hf",)},  # a name is not a promise
])
async def test_a_server_that_does_not_say_so_gets_text_and_the_user_a_line(
        server_says: dict[str, Any], settings: Settings, history: HistoryStore) -> None:
    async with FakeOpenAI(**server_says) as server, \
            core_on(server, settings, history) as core:
        assert not core.worker.info.vision
        reply = await core.handle(with_photo("What colour is it?"))
    assert reply is not None
    assert reply.text.startswith("This model cannot read images, so I skipped photo.png.\n\n")
    assert "What colour is it?" in reply.text  # the text is still answered
    assert all(isinstance(m["content"], str) for m in server.requests[-1]["messages"])
