"""The files the ``llmq`` CLI reads and writes: its INPUT made a batch input
file, and the batch's output and error files merged into OUTPUT.

Plain text INPUT holds one prompt per line; its requests get the custom_id
``line-<n>`` (n the 1-based line number, empty lines skipped but counted), so
line n of OUTPUT answers line n of INPUT without the INPUT at hand. Files are
streamed line by line; what is held in memory is one custom_id per request.
"""

from __future__ import annotations

import codecs
import contextlib
import enum
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from common.batches.client import CHAT_ENDPOINT, ClientError, ConfigError

#: Failures named one by one in a summary; the rest are counted.
FAILURES_SHOWN = 5


class InputFormat(enum.StrEnum):
    """What an INPUT holds (recorded in the batch's ``llmq_cli_format``)."""

    TEXT = "text"
    JSONL = "jsonl"


@dataclass(frozen=True)
class Layout:
    """OUTPUT's lines: line i holds the result of ``custom_ids[i]``."""

    format: InputFormat
    custom_ids: list[str]
    #: Requests sent: for text, the non-empty lines, fewer than ``custom_ids``.
    requests: int

    def slots(self) -> dict[str, int]:
        """Each custom_id's line index in OUTPUT."""
        return {custom_id: slot for slot, custom_id in enumerate(self.custom_ids)}


def text_custom_id(line_number: int) -> str:
    """The custom_id of a plain text INPUT's line (1-based)."""
    return f"line-{line_number}"


def text_layout(line_count: int, requests: int) -> Layout:
    """The layout of a plain text INPUT of ``line_count`` lines."""
    ids = [text_custom_id(number) for number in range(1, line_count + 1)]
    return Layout(InputFormat.TEXT, ids, requests)


def jsonl_layout(custom_ids: list[str]) -> Layout:
    """The layout of a JSONL INPUT whose requests have these custom_ids, in order."""
    return Layout(InputFormat.JSONL, custom_ids, len(custom_ids))


def _request_custom_id(raw: bytes | str) -> str | None:
    """The custom_id of a request line, or None if the line is no request."""
    try:
        request = json.loads(raw)
    except ValueError:
        return None
    custom_id = request.get("custom_id") if isinstance(request, dict) else None
    return custom_id if isinstance(custom_id, str) else None


def detect_format(path: Path) -> InputFormat:
    """JSONL if the first non-empty line is a JSON object with a custom_id."""
    with path.open(encoding="utf-8-sig") as lines:
        for line in lines:
            if line.strip():
                found = _request_custom_id(line) is not None
                return InputFormat.JSONL if found else InputFormat.TEXT
    return InputFormat.TEXT


def text_request(line_number: int, prompt: str, model: str) -> dict[str, Any]:
    """The batch request line asking ``model`` for a reply to ``prompt``."""
    return {
        "custom_id": text_custom_id(line_number),
        "method": "POST",
        "url": CHAT_ENDPOINT,
        "body": {"model": model, "messages": [{"role": "user", "content": prompt}]},
    }


def text_to_jsonl(src: Path, dest: Path, model: str) -> Layout:
    """Write a batch input file with one request per non-empty line of ``src``."""
    line_count = requests = 0
    with src.open(encoding="utf-8-sig") as lines, dest.open("wb") as out:
        for line_count, line in enumerate(lines, start=1):  # noqa: B007
            prompt = line.removesuffix("\n")
            if prompt.strip():
                request = text_request(line_count, prompt, model)
                out.write(json.dumps(request, ensure_ascii=False).encode() + b"\n")
                requests += 1
    return text_layout(line_count, requests)


def _with_model(raw: bytes, model: str) -> bytes:
    """The request line with ``body.model`` set if the body has none."""
    try:
        request = json.loads(raw)
    except ValueError:
        return raw
    body = request.get("body") if isinstance(request, dict) else None
    if not isinstance(body, dict) or body.get("model"):
        return raw
    body["model"] = model
    return json.dumps(request, ensure_ascii=False).encode() + b"\n"


def prepare_jsonl(src: Path, dest: Path, model: str | None) -> Layout:
    """Copy a JSONL INPUT to ``dest``, filling ``model`` into bodies without one.

    Every line is kept (so llmq's validation errors name INPUT's line numbers);
    a leading byte-order mark is dropped.
    """
    custom_ids: list[str] = []
    with src.open("rb") as lines, dest.open("wb") as out:
        for number, raw in enumerate(lines, start=1):
            line = raw.removeprefix(codecs.BOM_UTF8) if number == 1 else raw
            if model and line.strip():
                line = _with_model(line, model)
            out.write(line if line.endswith(b"\n") else line + b"\n")
            custom_id = _request_custom_id(line) if line.strip() else None
            if custom_id is not None:
                custom_ids.append(custom_id)
    return jsonl_layout(custom_ids)


def prepare_input(src: Path, dest: Path, model: str | None) -> Layout:
    """Write INPUT as a batch input file to ``dest``; the layout of its results.

    Raises:
        ConfigError: plain text INPUT without a model.
        ClientError: INPUT is not UTF-8 or holds no request.
    """
    try:
        if detect_format(src) is InputFormat.JSONL:
            layout = prepare_jsonl(src, dest, model)
        elif not model:
            raise ConfigError("--model is required when INPUT is plain text")
        else:
            layout = text_to_jsonl(src, dest, model)
    except UnicodeDecodeError as exc:
        raise ClientError(f"{src} is not UTF-8 text") from exc
    if layout.requests == 0:
        raise ClientError(f"{src} holds no prompt: every line is empty")
    return layout


def count_lines(path: Path) -> int:
    """Lines in a plain text INPUT, counted as ``text_to_jsonl`` numbers them."""
    try:
        with path.open(encoding="utf-8-sig") as lines:
            return sum(1 for _ in lines)
    except UnicodeDecodeError as exc:
        raise ClientError(f"{path} is not UTF-8 text") from exc


def read_custom_ids(path: Path) -> list[str]:
    """The custom_ids of a JSONL file's lines, in order (other lines skipped)."""
    with path.open("rb") as lines:
        found = (_request_custom_id(raw) for raw in lines if raw.strip())
        return [custom_id for custom_id in found if custom_id is not None]


def select_requests(src: Path, dest: Path, skip: set[str]) -> list[str]:
    """Copy the request lines of ``src`` whose custom_id is not in ``skip``.

    Returns:
        The custom_ids copied, in order.
    """
    copied: list[str] = []
    with src.open("rb") as lines, dest.open("wb") as out:
        for raw in lines:
            custom_id = _request_custom_id(raw) if raw.strip() else None
            if custom_id is not None and custom_id not in skip:
                out.write(raw if raw.endswith(b"\n") else raw + b"\n")
                copied.append(custom_id)
    return copied


def _dig(value: Any, *path: str | int) -> Any:
    """``value[path[0]][path[1]]...``, or None where the shape differs."""
    for key in path:
        if isinstance(key, str) and isinstance(value, dict):
            value = value.get(key)
        elif isinstance(key, int) and isinstance(value, list) and len(value) > key:
            value = value[key]
        else:
            return None
    return value


def reply_text(result: dict[str, Any]) -> str:
    """The reply of a successful result line (empty if it holds no text)."""
    content = _dig(result, "response", "body", "choices", 0, "message", "content")
    return content if isinstance(content, str) else ""


def escape_reply(text: str) -> str:
    """A reply on one line: backslash, newline and carriage return escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def describe_failure(result: dict[str, Any]) -> str:
    """``<custom_id>: <message> (<code>)`` for a line of the error file."""
    error = result.get("error")
    if not isinstance(error, dict):
        error = _dig(result, "response", "body", "error")
    message, code = _dig(error, "message"), _dig(error, "code")
    if not isinstance(message, str):
        message = f"HTTP {_dig(result, 'response', 'status_code')}"
    suffix = f" ({code})" if isinstance(code, str) and code else ""
    return f"{result.get('custom_id')}: {message}{suffix}"


@dataclass
class ResultSummary:
    """What OUTPUT holds: counts and the first failures, described."""

    succeeded: int = 0
    failed: int = 0
    #: Requests with no result at all (the batch was cancelled or expired).
    unfinished: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def all_succeeded(self) -> bool:
        """Every request has a successful result."""
        return self.failed == 0 and self.unfinished == 0


def _result_offsets(path: Path) -> Iterator[tuple[int, str]]:
    """(byte offset, custom_id) of each line of a result file."""
    offset = 0
    with path.open("rb") as lines:
        for raw in lines:
            if raw.strip():
                custom_id = _request_custom_id(raw)
                if custom_id is None:
                    raise ClientError(
                        f"llmq sent a result line without a custom_id: {raw[:80]!r}"
                    )
                yield offset, custom_id
            offset += len(raw)


def _index_results(
    layout: Layout, files: list[Path | None]
) -> dict[int, tuple[int, int]]:
    """Each OUTPUT line's result: (index in ``files``, byte offset there)."""
    slots = layout.slots()
    found: dict[int, tuple[int, int]] = {}
    for number, path in enumerate(files):
        for offset, custom_id in _result_offsets(path) if path else ():
            slot = slots.get(custom_id)
            if slot is None:
                raise ClientError(
                    f"the result of {custom_id!r} has no line in OUTPUT "
                    "(is --input the batch's input?)"
                )
            found[slot] = (number, offset)
    return found


def _missing_line(layout: Layout, custom_id: str, code: str) -> bytes:
    if layout.format is InputFormat.TEXT:
        return b"\n"
    message = "this request got no result before the batch ended"
    line = {
        "id": None,
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }
    return json.dumps(line, ensure_ascii=False).encode() + b"\n"


def _result_line(layout: Layout, raw: bytes, ok: bool, summary: ResultSummary) -> bytes:
    """OUTPUT's line for one result line, counted into ``summary``."""
    result = json.loads(raw) if layout.format is InputFormat.TEXT or not ok else {}
    if ok:
        summary.succeeded += 1
    else:
        summary.failed += 1
        if len(summary.failures) < FAILURES_SHOWN:
            summary.failures.append(describe_failure(result))
    if layout.format is InputFormat.JSONL:
        return raw if raw.endswith(b"\n") else raw + b"\n"
    reply = escape_reply(reply_text(result)) if ok else ""
    return reply.encode() + b"\n"


@contextlib.contextmanager
def _replacing(dest: Path) -> Iterator[IO[bytes]]:
    """A file that becomes ``dest`` once written in full, and never half."""
    part = dest.with_name(f"{dest.name}.part")
    try:
        with part.open("wb") as out:
            yield out
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def write_results(
    dest: Path,
    layout: Layout,
    output_file: Path | None,
    error_file: Path | None,
    missing_code: str,
) -> ResultSummary:
    """Write OUTPUT: one line per ``layout`` slot, in input order.

    JSONL: the result line (successes from ``output_file``, failures from
    ``error_file``; a request with neither gets an error line coded
    ``missing_code``). Text: the escaped reply, or an empty line.
    """
    found = _index_results(layout, [output_file, error_file])
    summary = ResultSummary()
    with contextlib.ExitStack() as stack, _replacing(dest) as out:
        files = [
            stack.enter_context(path.open("rb")) if path else None
            for path in (output_file, error_file)
        ]
        for slot, custom_id in enumerate(layout.custom_ids):
            number, offset = found.get(slot, (-1, 0))
            source = files[number] if number >= 0 else None
            if source is None:
                out.write(_missing_line(layout, custom_id, missing_code))
                continue
            source.seek(offset)
            out.write(_result_line(layout, source.readline(), number == 0, summary))
    summary.unfinished = max(0, layout.requests - summary.succeeded - summary.failed)
    return summary
