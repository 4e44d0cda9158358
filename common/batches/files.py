"""Stored files: bytes under ``LLMQ_FILES_DIR``, metadata in the ``files`` table.

An upload is copied to disk line by line as it is read (never whole in memory)
and checked on the way (common/batches/lines.py); its custom_ids are kept beside
it in request order, so a batch's partial output can resume after any of them.
Every file is visible to the key that made it alone.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from common.batches.lines import LineCheck, parse_line
from common.batches.models import BatchRow, FilePurpose, FileRow, FileStatus
from common.batches.statuses import ACTIVE as ACTIVE_BATCHES
from common.db.pages import newest_first
from common.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
)

#: Longest line of an input file read whole (a chat request as big as a body).
MAX_LINE_BYTES = 8 * 1024 * 1024
#: Bytes copied per read of an over-long line.
COPY_CHUNK = 1024 * 1024


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def file_object(row: FileRow) -> dict[str, Any]:
    """OpenAI's file object."""
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": row.created_at,
        "filename": row.filename,
        "purpose": row.purpose,
        "status": FileStatus.PROCESSED,
        "status_details": None,
        "expires_at": None,
    }


def _lines(stream: IO[bytes]) -> Iterator[tuple[bytes, bool]]:
    """Each line's bytes and whether it was read whole (else: just its head,
    the rest having been skipped by the reader)."""
    while True:
        head = stream.readline(MAX_LINE_BYTES + 1)
        if not head:
            return
        whole = len(head) <= MAX_LINE_BYTES or head.endswith(b"\n")
        yield head, whole


class FileStore:
    """Saves, finds, lists, opens and deletes files."""

    def __init__(
        self, engine: Engine, folder: Path, max_lines: int, max_bytes: int
    ) -> None:
        self.engine = engine
        self.folder = folder
        self.max_lines = max_lines
        self.max_bytes = max_bytes

    def path(self, file_id: str) -> Path:
        return self.folder / f"{file_id}.jsonl"

    def ids_path(self, file_id: str) -> Path:
        """The custom_ids of an input file's requests, one JSON string a line."""
        return self.folder / f"{file_id}.ids"

    def upload(
        self, owner: str, stream: IO[bytes], filename: str, purpose: str
    ) -> FileRow:
        """Copy an uploaded batch input file in, checking each line on the way.

        Raises:
            InvalidRequestError: not ``purpose=batch``, or over the line limit.
            PayloadTooLargeError: over the byte limit.
        """
        if purpose != FilePurpose.BATCH:
            raise InvalidRequestError("purpose must be 'batch'", param="purpose")
        self.folder.mkdir(parents=True, exist_ok=True)
        file_id = new_file_id()
        check = LineCheck()
        size = 0
        part = self.path(file_id).with_suffix(".part")
        ids = self.ids_path(file_id).with_suffix(".ids-part")
        try:
            with part.open("wb") as out, ids.open("wb") as id_out:
                for head, whole in _lines(stream):
                    size += len(head)
                    out.write(head)
                    if not whole:
                        size += self._copy_rest(stream, out)
                    if size > self.max_bytes:
                        raise PayloadTooLargeError(
                            f"the file is over {self.max_bytes} bytes"
                        )
                    check.feed(head if whole else b"[over-long line]")
                    if check.requests > self.max_lines:
                        raise InvalidRequestError(
                            f"the file has more than {self.max_lines} lines",
                            param="file",
                        )
                    if whole and head.strip():
                        request = parse_line(head) or {}
                        custom_id = request.get("custom_id")
                        id_out.write(orjson.dumps(custom_id) + b"\n")
            os.replace(part, self.path(file_id))
            os.replace(ids, self.ids_path(file_id))
        except BaseException:
            part.unlink(missing_ok=True)
            ids.unlink(missing_ok=True)
            raise
        row = FileRow(
            id=file_id,
            owner=owner,
            filename=filename[:255] or "upload.jsonl",
            purpose=purpose,
            bytes=size,
            created_at=int(time.time()),
            lines=check.requests,
            problems=check.finish(),
        )
        with Session(self.engine, expire_on_commit=False) as session:
            session.add(row)
            session.commit()
        return row

    def _copy_rest(self, stream: IO[bytes], out: IO[bytes]) -> int:
        """Copy the rest of an over-long line; the bytes copied."""
        copied = 0
        while chunk := stream.readline(COPY_CHUNK):
            out.write(chunk)
            copied += len(chunk)
            if chunk.endswith(b"\n") or copied > self.max_bytes:
                break
        return copied

    @contextmanager
    def writer(
        self, owner: str, file_id: str, filename: str
    ) -> Iterator[Callable[[bytes], None]]:
        """Write a file llmq makes (a batch's output) line by line, under a chosen
        id: the bytes are in place and the row written when the block ends; the
        same id written again replaces its bytes and keeps one row."""
        self.folder.mkdir(parents=True, exist_ok=True)
        part = self.path(file_id).with_suffix(".part")
        written = [0, 0]  # bytes, lines
        with part.open("wb") as out:

            def write(line: bytes) -> None:
                out.write(line)
                written[0] += len(line)
                written[1] += 1

            yield write
        os.replace(part, self.path(file_id))
        with Session(self.engine, expire_on_commit=False) as session:
            row = session.get(FileRow, file_id)
            if row is None:
                row = FileRow(id=file_id, owner=owner, created_at=int(time.time()))
                session.add(row)
            row.filename = filename
            row.purpose = FilePurpose.BATCH_OUTPUT
            row.bytes, row.lines = written
            row.problems = None
            session.commit()

    def row(self, file_id: str) -> FileRow | None:
        with Session(self.engine) as session:
            return session.get(FileRow, file_id)

    def get(self, owner: str, file_id: str) -> FileRow:
        """The owner's file. Raises NotFoundError for others' files as for none."""
        with Session(self.engine) as session:
            row = session.get(FileRow, file_id)
        if row is None or row.owner != owner:
            raise NotFoundError(f"no file {file_id!r}", param="file_id")
        return row

    def page(
        self, owner: str, purpose: str | None, limit: int, after: str | None
    ) -> tuple[list[FileRow], bool]:
        """The owner's files, newest first, after the file ``after``."""
        where = [FileRow.purpose == purpose] if purpose else []
        return newest_first(self.engine, FileRow, owner, limit, after, *where)

    def delete(self, owner: str, file_id: str) -> None:
        """Delete the owner's file, unless a batch still running reads it.

        Raises:
            NotFoundError: no such file for this key.
            ConflictError: an unfinished batch uses it as input.
        """
        self.get(owner, file_id)
        with Session(self.engine) as session:
            user = session.scalars(
                select(BatchRow.id).where(
                    BatchRow.input_file_id == file_id,
                    BatchRow.status.in_(list(ACTIVE_BATCHES)),
                )
            ).first()
            if user is not None:
                raise ConflictError(
                    f"batch {user} is still reading this file", param="file_id"
                )
            row = session.get(FileRow, file_id)
            if row is not None:
                session.delete(row)
                session.commit()
        self.path(file_id).unlink(missing_ok=True)
        self.ids_path(file_id).unlink(missing_ok=True)

    def discard(self, file_id: str) -> None:
        """Remove a file llmq wrote and no longer offers (an empty output)."""
        with Session(self.engine) as session:
            row = session.get(FileRow, file_id)
            if row is not None:
                session.delete(row)
                session.commit()
        self.path(file_id).unlink(missing_ok=True)

    def custom_ids(self, file_id: str) -> list[str]:
        """An input file's custom_ids in request order."""
        with self.ids_path(file_id).open("rb") as lines:
            return [orjson.loads(line) for line in lines]
