"""Checking a batch input file line by line (API.md section 6).

Pure functions over bytes, so the upload's streaming check and the unit tests
share them. A line must be a JSON object ``{"custom_id", "method": "POST",
"url": <the endpoint>, "body": {...}}``; whether its body is a good chat request
is not checked here: a bad body fails that line alone when it runs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import orjson

#: The one endpoint a batch may target.
CHAT_ENDPOINT = "/v1/chat/completions"
#: Longest ``custom_id`` accepted (OpenAI's own limit is not published; 512 keeps
#: an id a label, not a payload).
CUSTOM_ID_MAX_CHARS = 512
#: Problems recorded per file; past this the file is failed all the same.
MOST_PROBLEMS = 1000


class LineProblem(enum.StrEnum):
    """The ``code`` of a batch's validation ``errors`` entries."""

    INVALID_JSON_LINE = "invalid_json_line"
    INVALID_LINE = "invalid_line"
    DUPLICATE_CUSTOM_ID = "duplicate_custom_id"
    MISMATCHED_URL = "mismatched_url"
    EMPTY_FILE = "empty_file"
    FILE_MISSING = "file_missing"


def problem(
    code: LineProblem, line: int | None, message: str, param: str | None = None
) -> dict[str, Any]:
    """One entry of a batch's ``errors.data``."""
    return {"code": code, "line": line, "message": message, "param": param}


def parse_line(raw: bytes) -> dict[str, Any] | None:
    """The JSON object a line holds, or None if it holds none."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _shape_problem(request: dict[str, Any], number: int) -> dict[str, Any] | None:
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return problem(
            LineProblem.INVALID_LINE,
            number,
            "custom_id must be a non-empty string",
            "custom_id",
        )
    if len(custom_id) > CUSTOM_ID_MAX_CHARS:
        return problem(
            LineProblem.INVALID_LINE,
            number,
            f"custom_id is longer than {CUSTOM_ID_MAX_CHARS} characters",
            "custom_id",
        )
    if request.get("method") != "POST":
        return problem(
            LineProblem.INVALID_LINE, number, "method must be POST", "method"
        )
    if request.get("url") != CHAT_ENDPOINT:
        return problem(
            LineProblem.MISMATCHED_URL,
            number,
            f"url must be {CHAT_ENDPOINT}, the batch's endpoint",
            "url",
        )
    if not isinstance(request.get("body"), dict):
        return problem(
            LineProblem.INVALID_LINE, number, "body must be a JSON object", "body"
        )
    return None


@dataclass
class LineCheck:
    """The running check of one file: feed it each line, then read the verdict."""

    #: Non-blank lines seen so far (a request's number is its line number in
    #: the file, blank lines included, as an editor shows it).
    requests: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)
    problem_count: int = 0
    _seen: set[str] = field(default_factory=set)
    _number: int = 0

    def feed(self, raw: bytes) -> None:
        """Check the next line of the file (its bytes, newline included or not)."""
        self._number += 1
        if not raw.strip():
            return
        self.requests += 1
        request = parse_line(raw)
        if request is None:
            self._add(
                problem(
                    LineProblem.INVALID_JSON_LINE,
                    self._number,
                    "this line is not a JSON object",
                )
            )
            return
        found = _shape_problem(request, self._number)
        if found is not None:
            self._add(found)
            return
        custom_id = request["custom_id"]
        if custom_id in self._seen:
            self._add(
                problem(
                    LineProblem.DUPLICATE_CUSTOM_ID,
                    self._number,
                    f"custom_id {custom_id!r} appears more than once",
                    "custom_id",
                )
            )
        self._seen.add(custom_id)

    def finish(self) -> list[dict[str, Any]] | None:
        """The problems found (None: the file is good to run)."""
        if self.requests == 0 and not self.problems:
            self._add(problem(LineProblem.EMPTY_FILE, None, "the file has no lines"))
        return self.problems or None

    def _add(self, found: dict[str, Any]) -> None:
        self.problem_count += 1
        if len(self.problems) < MOST_PROBLEMS:
            self.problems.append(found)
