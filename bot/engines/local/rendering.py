"""Chat messages to token ids (chat template or plain transcript), and exact token counts.

Split from the backend so the batch decoder and the prompt builder can use it without
importing the backend that uses them.
"""

from __future__ import annotations

import copy
import re
import threading

from transformers import PreTrainedTokenizerBase

from bot.types import Prompt

_NEXT_SPEAKER = re.compile(r"\n[^\n:]{1,40}:")


class PromptRenderer:
    """Renders chat messages to token ids: the chat template, or a plain transcript.

    Models without a chat template (GPT-2-style base models) get ``Name: text`` lines ending
    in ``{bot_name}:``, and their reply is cut where they start writing another speaker's line.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, bot_name: str) -> None:
        self.tokenizer = tokenizer
        self.bot_name = bot_name
        self.uses_template = bool(getattr(tokenizer, "chat_template", None))

    def render(self, prompt: Prompt) -> str:
        """The prompt as text; one ending with the assistant's message is continued from
        there (the Continue control), not answered anew."""
        continuing = bool(prompt) and prompt[-1]["role"] == "assistant"
        if self.uses_template:
            text = self.tokenizer.apply_chat_template(prompt, tokenize=False,
                                                      add_generation_prompt=not continuing,
                                                      continue_final_message=continuing)
            return str(text)
        lines = []
        for message in prompt:
            if message["role"] == "system":
                lines.append(message["content"] + "\n")
            elif message["role"] == "assistant":
                lines.append(f"{self.bot_name}: {message['content']}")
            else:
                lines.append(message["content"])
        return "\n".join(lines) + ("" if continuing else f"\n{self.bot_name}:")

    def encode(self, prompt: Prompt) -> list[int]:
        ids = self.tokenizer(self.render(prompt), add_special_tokens=not self.uses_template)
        return list(ids["input_ids"])

    def clean_reply(self, text: str) -> str:
        if not self.uses_template:
            match = _NEXT_SPEAKER.search(text)
            if match:
                text = text[: match.start()]
        return text.strip()


class HFTokenCounter:
    """Exact token counts on a private copy of the tokenizer, safe to call from any thread."""

    def __init__(self, renderer: PromptRenderer) -> None:
        tokenizer = copy.deepcopy(renderer.tokenizer)
        self._renderer = PromptRenderer(tokenizer, renderer.bot_name)
        self._lock = threading.Lock()

    def count_prompt(self, prompt: Prompt) -> int:
        with self._lock:
            return len(self._renderer.encode(prompt))

    def count_text(self, text: str) -> int:
        with self._lock:
            return len(self._renderer.tokenizer(text, add_special_tokens=False)["input_ids"])

    def truncate_text(self, text: str, max_tokens: int) -> str:
        with self._lock:
            tokenizer = self._renderer.tokenizer
            encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            offsets = encoded["offset_mapping"]
            if len(offsets) <= max_tokens:
                return text
            if max_tokens <= 0:
                return ""
            # Cut where the first token left out begins: a Chinese or Japanese character
            # often spans several byte-level tokens that all share its offsets, and cutting
            # after the last kept one would keep the whole character, and too many tokens.
            cut = text[: offsets[max_tokens][0]]
            while cut and len(tokenizer(cut, add_special_tokens=False)["input_ids"]) > max_tokens:
                cut = cut[:-1]  # re-tokenising a prefix rarely merges differently; be sure
            return cut
