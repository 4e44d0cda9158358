"""OpenAI ``chat.completion`` shapes, and folding streamed chunks into a reply."""

from __future__ import annotations

from typing import Any

from common.tokens import estimate_text_tokens


def completion_id(job_id: str) -> str:
    """The ``chatcmpl-`` id a job's completion carries."""
    return f"chatcmpl-{job_id.removeprefix('job_')}"


def usage_object(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def usage_chunk(
    job_id: str, model: str, created: int, usage: dict[str, Any]
) -> dict[str, Any]:
    """The final streamed chunk that carries usage and no choices."""
    return {
        "id": completion_id(job_id),
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    }


def delta_texts(chunk: dict[str, Any]) -> list[str]:
    """The non-empty content pieces of a ``chat.completion.chunk``."""
    pieces = ((c.get("delta") or {}).get("content") for c in chunk.get("choices", []))
    return [p for p in pieces if p]


def reply_text(completion: dict[str, Any] | None) -> tuple[str, str | None]:
    """A ``chat.completion``'s first choice as (text, finish_reason)."""
    choice = ((completion or {}).get("choices") or [{}])[0]
    return (choice.get("message") or {}).get("content") or "", choice.get(
        "finish_reason"
    )


class CompletionAccumulator:
    """Folds upstream ``chat.completion.chunk`` objects into one completion.

    Each chunk is relabelled with the job's id and the model name the client
    used, so clients never see the provider's ids or upstream model names.
    """

    def __init__(self, job_id: str, model: str, created: int) -> None:
        self.job_id = job_id
        self.model = model
        self.created = created
        self.content: list[str] = []
        self.extras: dict[str, list[str]] = {}
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.chunks = 0

    def add(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """Take one upstream chunk; return it relabelled for relaying, or None.

        A usage-only chunk is kept as usage and not relayed (the relay builds
        the final usage chunk itself when the client asked for one).
        """
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices") or []
        if not choices:
            return None
        for choice in choices:
            self._fold(choice)
        self.chunks += 1
        out = {
            "id": completion_id(self.job_id),
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if chunk.get("system_fingerprint"):
            out["system_fingerprint"] = chunk["system_fingerprint"]
        return out

    def _fold(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        for name, value in delta.items():
            if name == "content" and isinstance(value, str):
                self.content.append(value)
            elif name == "tool_calls" and isinstance(value, list):
                for call in value:
                    self._fold_tool_call(call)
            elif name not in ("role",) and isinstance(value, str):
                self.extras.setdefault(name, []).append(value)
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]

    def _fold_tool_call(self, call: dict[str, Any]) -> None:
        slot = self.tool_calls.setdefault(
            int(call.get("index", len(self.tool_calls))),
            {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
        )
        if call.get("id"):
            slot["id"] = call["id"]
        if call.get("type"):
            slot["type"] = call["type"]
        function = call.get("function") or {}
        slot["function"]["name"] += function.get("name") or ""
        slot["function"]["arguments"] += function.get("arguments") or ""

    @property
    def text(self) -> str:
        return "".join(self.content)

    @property
    def usage_reported(self) -> bool:
        """Whether the provider sent a usage object ``final_usage`` returns."""
        return bool(self.usage and "prompt_tokens" in self.usage)

    def final_usage(self, prompt_estimate: int) -> dict[str, Any]:
        """The provider's usage, or an estimate when it reported none."""
        if self.usage and "prompt_tokens" in self.usage:
            return self.usage
        completion_tokens = estimate_text_tokens(self.text) + sum(
            estimate_text_tokens(c["function"]["arguments"])
            for c in self.tool_calls.values()
        )
        return usage_object(prompt_estimate, completion_tokens)

    def completion(
        self, usage: dict[str, Any], finish_reason: str | None = None
    ) -> dict[str, Any]:
        """The ``chat.completion`` object for what has been received."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        for name, parts in self.extras.items():
            message[name] = "".join(parts)
        if self.tool_calls:
            message["tool_calls"] = [
                self.tool_calls[i] for i in sorted(self.tool_calls)
            ]
            if not self.text:
                message["content"] = None
        return {
            "id": completion_id(self.job_id),
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": finish_reason or self.finish_reason or "stop",
                    "logprobs": None,
                }
            ],
            "usage": usage,
        }
