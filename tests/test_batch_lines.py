"""The line-by-line check of a batch input file (common/batches/lines.py)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from common.batches.lines import MOST_PROBLEMS, LineCheck


def line(custom_id: object = "a", **fields: object) -> bytes:
    value = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m"},
        **fields,
    }
    return (json.dumps(value) + "\n").encode()


def check(*lines: bytes) -> list[tuple[str, int | None, str | None]]:
    checker = LineCheck()
    for raw in lines:
        checker.feed(raw)
    return [(p["code"], p["line"], p["param"]) for p in checker.finish() or []]


def test_a_good_file_has_no_problems_and_counts_its_requests() -> None:
    checker = LineCheck()
    for raw in (line("a"), b"\n", line("b"), b"   \r\n"):
        checker.feed(raw)
    assert checker.finish() is None
    assert checker.requests == 2


def test_each_problem_names_its_line_as_an_editor_counts_it() -> None:
    assert check(
        line("a"),
        b"\n",
        b"not json\n",
        b"[1, 2]\n",
        line(""),
        line(7),
        line("x" * 513),
        line("b", method="GET"),
        line("c", url="/v1/embeddings"),
        line("d", body="text"),
        line("a"),
    ) == [
        ("invalid_json_line", 3, None),
        ("invalid_json_line", 4, None),
        ("invalid_line", 5, "custom_id"),
        ("invalid_line", 6, "custom_id"),
        ("invalid_line", 7, "custom_id"),
        ("invalid_line", 8, "method"),
        ("mismatched_url", 9, "url"),
        ("invalid_line", 10, "body"),
        ("duplicate_custom_id", 11, "custom_id"),
    ]


def test_an_empty_file_is_a_problem() -> None:
    assert check() == [("empty_file", None, None)]
    assert check(b"\n", b"  \n") == [("empty_file", None, None)]


def test_problems_kept_are_capped_but_all_are_counted() -> None:
    checker = LineCheck()
    for _ in range(MOST_PROBLEMS + 5):
        checker.feed(b"{\n")
    assert len(checker.finish() or []) == MOST_PROBLEMS
    assert checker.problem_count == MOST_PROBLEMS + 5


@given(st.binary(max_size=200))
def test_any_bytes_are_checked_without_raising(raw: bytes) -> None:
    checker = LineCheck()
    checker.feed(raw)
    checker.finish()
