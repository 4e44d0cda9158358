"""The ``files`` and ``batches`` tables (a batch's statuses: statuses.py)."""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from common.db.base import Base


class FilePurpose(enum.StrEnum):
    """What a file is for: an upload to run, or what a batch wrote."""

    BATCH = "batch"
    BATCH_OUTPUT = "batch_output"


class FileStatus(enum.StrEnum):
    """OpenAI's (deprecated but still sent) file status: always ``processed``."""

    PROCESSED = "processed"


class FileRow(Base):
    """One stored file; its bytes are ``<LLMQ_FILES_DIR>/<id>.jsonl``."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    #: Request lines (non-blank) of a batch input file.
    lines: Mapped[int] = mapped_column(Integer)
    #: What the upload's line-by-line check found wrong, as a batch's ``errors``
    #: data (``[{code, line, message, param}]``); null when every line is good.
    problems: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True)

    __table_args__ = (Index("ix_files_owner_created", "owner", "created_at", "id"),)


class BatchRow(Base):
    """One batch: what OpenAI's batch object shows, less the live counts."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    meta: Mapped[Any] = mapped_column(
        "metadata", JSON(none_as_null=True), nullable=True
    )
    errors: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True)
    output_file_id: Mapped[str | None] = mapped_column(String(64))
    error_file_id: Mapped[str | None] = mapped_column(String(64))
    total: Mapped[int] = mapped_column(Integer)
    #: The final counts and usage, written when the batch ends (while it runs
    #: they are read from Redis: common/batches/progress.py).
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    in_progress_at: Mapped[int | None] = mapped_column(BigInteger)
    finalizing_at: Mapped[int | None] = mapped_column(BigInteger)
    completed_at: Mapped[int | None] = mapped_column(BigInteger)
    failed_at: Mapped[int | None] = mapped_column(BigInteger)
    expired_at: Mapped[int | None] = mapped_column(BigInteger)
    cancelling_at: Mapped[int | None] = mapped_column(BigInteger)
    cancelled_at: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_batches_owner_created", "owner", "created_at", "id"),)
