"""Request models of the files and batches routes (they also make the OpenAPI
document)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: OpenAI's limits on a batch's metadata.
METADATA_MAX_KEYS = 16
METADATA_KEY_MAX_CHARS = 64
METADATA_VALUE_MAX_CHARS = 512


class FilePath(BaseModel):
    file_id: str = Field(max_length=100)


class FileListQuery(BaseModel):
    purpose: Literal["batch", "batch_output"] | None = None
    limit: int = Field(default=100, ge=1, le=10_000)
    after: str | None = Field(default=None, max_length=100)


class BatchPath(BaseModel):
    batch_id: str = Field(max_length=100)


class BatchListQuery(BaseModel):
    limit: int = Field(default=20, ge=1, le=100)
    after: str | None = Field(default=None, max_length=100)


class BatchOutputQuery(BaseModel):
    after: str | None = Field(default=None, max_length=512)


class BatchCreateRequest(BaseModel):
    """``POST /v1/batches``: OpenAI's fields."""

    model_config = ConfigDict(extra="forbid", strict=True)
    input_file_id: str = Field(min_length=1, max_length=100)
    endpoint: str = Field(max_length=100)
    completion_window: str = Field(max_length=16)
    metadata: dict[str, str] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return value
        if len(value) > METADATA_MAX_KEYS:
            raise ValueError(f"at most {METADATA_MAX_KEYS} metadata keys")
        for key, text in value.items():
            if (
                len(key) > METADATA_KEY_MAX_CHARS
                or len(text) > METADATA_VALUE_MAX_CHARS
            ):
                raise ValueError(
                    f"metadata keys are at most {METADATA_KEY_MAX_CHARS} characters "
                    f"and values at most {METADATA_VALUE_MAX_CHARS}"
                )
        return value
