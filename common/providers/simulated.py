"""The ``simulated`` kind: no network, deterministic text at a configured speed."""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Iterator
from typing import Any

from common.catalog import ModelConfig, ProviderConfig
from common.completions import usage_object
from common.execution.cancel import CancelToken
from common.tokens import estimate_prompt_tokens

_WORDS = (
    "the queue holds every request while a worker streams tokens from the model "
    "and the gateway relays each one as it arrives so clients see text at once "
    "jobs survive restarts events replay in order and nothing is counted twice"
).split()


def simulated_tokens(messages: list[dict[str, Any]], count: int) -> list[str]:
    """The deterministic reply tokens for ``messages``."""
    seed = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).digest()
    rng = random.Random(seed)
    words = [rng.choice(_WORDS) for _ in range(count)]
    return ["This" if i == 0 else f" {w}" for i, w in enumerate(words)]


class SimulatedProvider:
    """Answers every chat request with seeded filler text, token by token."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config

    def stream(
        self, model: ModelConfig, body: dict[str, Any], cancel: CancelToken
    ) -> Iterator[dict[str, Any]]:
        """Yield a role chunk, one chunk per token, a finish chunk and usage."""
        speed = self.config.simulated
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        count = min(speed.reply_tokens, limit) if limit else speed.reply_tokens
        tokens = simulated_tokens(body.get("messages", []), count)
        start = time.monotonic() + speed.first_token_delay
        for i, token in enumerate(tokens):
            if cancel.wait(start + i / speed.tokens_per_second - time.monotonic()):
                return
            delta: dict[str, Any] = {"content": token}
            if i == 0:
                delta["role"] = "assistant"
            yield {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        finish = "length" if limit and limit < speed.reply_tokens else "stop"
        yield {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
        prompt = estimate_prompt_tokens(body.get("messages", []))
        yield {"choices": [], "usage": usage_object(prompt, len(tokens))}
