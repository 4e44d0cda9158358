"""A finished job's event log as the database keeps it: compacted.

The exact log (every delta as it was relayed) lives in Redis for the replay
window only. What outlives it keeps each event that says what happened, the
``status`` and ``error`` events with their ids, and folds the deltas of the last
run (those after its last ``reset``; an earlier run's text was withdrawn) into one
``delta`` carrying the whole message, under the id of the last of them. The
``done`` event's job object is the database row itself, so only its id is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common.jobs.events import Event
from common.jobs.model import EventType
from common.jsoncodec import loads

#: A compacted event: (id, type, data); data is None for ``done``.
Compacted = tuple[int, str, Any]
#: Text fields of a delta that concatenate across chunks.
_TEXT_FIELDS = ("content", "reasoning_content", "refusal")


def compact(events: Sequence[Event]) -> list[Compacted]:
    """The compacted form of a finished job's exact log, in id order."""
    kept: list[Compacted] = []
    chunks: list[tuple[int, dict[str, Any]]] = []
    for event in events:
        if event.type == EventType.DELTA:
            chunks.append((event.id, loads(event.data)))
            continue
        data: Any = None if event.type == EventType.DONE else loads(event.data)
        if event.type == EventType.STATUS and data.get("reset"):
            chunks = []
        kept.append((event.id, event.type, data))
    if chunks:
        kept.append((chunks[-1][0], EventType.DELTA, whole_chunk(c for _, c in chunks)))
    return sorted(kept, key=lambda event: event[0])


def whole_chunk(chunks: Any) -> dict[str, Any]:
    """One ``chat.completion.chunk`` that says what ``chunks`` said in turn.

    Per choice: the role first given, each text field concatenated, tool calls
    joined by their index (arguments concatenated), the last finish reason and
    logprobs' content lists joined; the chunk's own fields from the first chunk,
    and the last ``usage`` any of them carried.
    """
    whole: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        if not whole:
            whole = {k: v for k, v in chunk.items() if k not in ("choices", "usage")}
        if chunk.get("usage") is not None:
            whole["usage"] = chunk["usage"]
        for choice in chunk.get("choices") or []:
            _fold(choices.setdefault(choice.get("index", 0), {}), choice)
    whole["choices"] = [
        {"index": index, **choice} for index, choice in sorted(choices.items())
    ]
    return whole


def _fold(into: dict[str, Any], choice: dict[str, Any]) -> None:
    delta = into.setdefault("delta", {})
    into.setdefault("finish_reason", None)
    for name, value in (choice.get("delta") or {}).items():
        if value is None:
            continue
        if name in _TEXT_FIELDS:
            delta[name] = delta.get(name, "") + value
        elif name == "tool_calls":
            _fold_tool_calls(delta.setdefault("tool_calls", []), value)
        else:
            delta.setdefault(name, value)
    if choice.get("finish_reason") is not None:
        into["finish_reason"] = choice["finish_reason"]
    logprobs = choice.get("logprobs")
    if logprobs:
        held = into.setdefault("logprobs", {"content": []})
        held["content"] = (held.get("content") or []) + (logprobs.get("content") or [])


def _fold_tool_calls(into: list[dict[str, Any]], calls: list[dict[str, Any]]) -> None:
    by_index = {call["index"]: call for call in into}
    for call in calls:
        held = by_index.get(call.get("index", 0))
        if held is None:
            held = {"index": call.get("index", 0)}
            into.append(held)
            by_index[held["index"]] = held
        for name, value in call.items():
            if name == "function":
                function = held.setdefault("function", {})
                for part, text in (value or {}).items():
                    if part == "arguments":
                        function[part] = function.get(part, "") + (text or "")
                    elif text is not None:
                        function.setdefault(part, text)
            elif value is not None:
                held.setdefault(name, value)


def generated_text(events: Sequence[Compacted]) -> str:
    """What a job generated, as its compacted log's delta holds it: the text,
    the reasoning and the tool calls' arguments (what a price by character
    counts)."""
    parts: list[str] = []
    for _, kind, data in events:
        if kind != EventType.DELTA:
            continue
        for choice in data.get("choices") or []:
            delta = choice.get("delta") or {}
            parts += [delta.get(name) or "" for name in _TEXT_FIELDS]
            parts += [
                (call.get("function") or {}).get("arguments") or ""
                for call in delta.get("tool_calls") or []
            ]
    return "".join(parts)
