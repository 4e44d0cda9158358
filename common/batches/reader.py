"""Reading a batch's input file one request at a time, from any byte offset.

The dispatcher keeps one reader per running batch and only the next request in
memory, however long the file; a request's byte offset lets it be read again
(common/batches/progress.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from common.batches.lines import parse_line


class InputReader:
    """The requests of one input file from ``(index, offset)`` on."""

    def __init__(self, path: Path, index: int, offset: int) -> None:
        self.path = path
        self.index = index
        self.offset = offset
        self._file: IO[bytes] | None = None

    def next(self) -> tuple[int, int, int, dict[str, Any]] | None:
        """``(index, offset, next offset, request)`` of the next request, or None
        at the end of the file."""
        if self._file is None:
            self._file = self.path.open("rb")
            self._file.seek(self.offset)
        while True:
            raw = self._file.readline()
            if not raw:
                return None
            start, self.offset = self.offset, self.offset + len(raw)
            if raw.strip():
                index = self.index
                self.index += 1
                return index, start, self.offset, parse_line(raw) or {}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_at(path: Path, offset: int) -> tuple[int, dict[str, Any]]:
    """The request at byte ``offset`` and the offset after it."""
    with path.open("rb") as file:
        file.seek(offset)
        raw = file.readline()
    return offset + len(raw), parse_line(raw) or {}
