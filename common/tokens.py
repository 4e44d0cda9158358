"""Token estimates for when a provider reports no usage."""

from __future__ import annotations

import math
from typing import Any

#: Per-message framing tokens in OpenAI's chat format.
MESSAGE_OVERHEAD_TOKENS = 4
#: Completion tokens assumed for a tpm budget when max_tokens is not given.
DEFAULT_COMPLETION_ESTIMATE_TOKENS = 512


def estimate_text_tokens(text: str) -> int:
    """Roughly count tokens: one per CJK character, one per four other characters."""
    if not text:
        return 0
    wide = sum(1 for ch in text if ord(ch) >= 0x2E80)
    return wide + math.ceil((len(text) - wide) / 4)


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict)
        )
    return ""


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Estimate the prompt tokens of a chat request's messages."""
    return sum(
        MESSAGE_OVERHEAD_TOKENS + estimate_text_tokens(content_text(m.get("content")))
        for m in messages
    )


def estimate_request_tokens(body: dict[str, Any]) -> int:
    """Worst-case tokens of a chat request: its prompt plus the completion it allows."""
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    prompt = estimate_prompt_tokens(body.get("messages", []))
    return prompt + int(limit or DEFAULT_COMPLETION_ESTIMATE_TOKENS)
