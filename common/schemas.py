"""Request shapes at the HTTP edge (pydantic) and how their errors map to ours.

Each model is declared once and serves both validation and the OpenAPI schema.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from common.errors import (
    InvalidJSONError,
    InvalidMessagesError,
    InvalidModelError,
    InvalidRequestError,
)
from common.queues import Priority

#: Fields of ours that never travel upstream.
GATEWAY_FIELDS = frozenset({"priority", "metadata", "api_key", "stream", "model"})


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["image_url"]
    image_url: dict[str, Any] | str


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(BaseModel):
    """One chat message; extra keys (``name``, ``reasoning_content``) pass through."""

    model_config = ConfigDict(extra="allow", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def model_post_init(self, __context: Any) -> None:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    include_usage: bool = False


class ChatRequest(BaseModel):
    """A chat completion request in OpenAI's names; provider extras pass through."""

    model_config = ConfigDict(extra="allow", strict=True)
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, lt=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    n: Literal[1] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None

    def upstream_body(self) -> dict[str, Any]:
        """The body to send upstream, without our own fields (model set later)."""
        return self.model_dump(exclude=set(GATEWAY_FIELDS), exclude_none=True)

    @property
    def include_usage(self) -> bool:
        """Whether a streaming client asked for the final usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


class JobCreateRequest(ChatRequest):
    """``POST /v1/jobs``: a chat request plus queue priority and metadata."""

    priority: Priority = "interactive"
    metadata: dict[str, Any] | None = None


class EnvelopeChatRequest(ChatRequest):
    """``POST /api/llm/chat``: a chat request that may carry its key in the body."""

    api_key: str | None = None


class LegacyChatRequest(BaseModel):
    """``POST /ai_api/llm`` (seed 000): ``message`` instead of ``messages``."""

    model_config = ConfigDict(extra="allow", strict=True)
    model: str = Field(min_length=1)
    message: list[Message] = Field(min_length=1)
    stream: bool = False
    api_key: str | None = None

    @field_validator("message")
    @classmethod
    def _ends_with_user(cls, value: list[Message]) -> list[Message]:
        if value[-1].role != "user":
            raise ValueError("the last message must have role user")
        return value

    def to_chat(self) -> ChatRequest:
        """The same request in OpenAI's names."""
        fields = self.model_dump(exclude={"message", "api_key"}, exclude_none=True)
        return ChatRequest.model_validate(
            {
                **fields,
                "messages": [m.model_dump(exclude_none=True) for m in self.message],
            }
        )


class JobQuery(BaseModel):
    wait: float = Field(default=0, ge=0, le=60)


class EventsQuery(BaseModel):
    starting_after: int | None = Field(default=None, ge=0)


class JobListQuery(BaseModel):
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = (
        None
    )
    limit: int = Field(default=20, ge=1, le=100)
    after: str | None = None


class JobPath(BaseModel):
    job_id: str = Field(max_length=100)


class ProviderPath(BaseModel):
    provider: str = Field(max_length=100)


class KeyPath(BaseModel):
    key_id: str = Field(max_length=100)


def _field_path(loc: tuple[Any, ...]) -> list[str]:
    """The location without pydantic's union-branch labels (``str``, ``list[...]``)."""
    return [
        str(part)
        for part in loc
        if not (isinstance(part, str) and ("[" in part or part in _BRANCH_LABELS))
    ]


_BRANCH_LABELS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def to_gateway_error(exc: ValidationError) -> InvalidRequestError:
    """Translate pydantic's complaint into the error code API.md assigns it.

    Of the errors about the first bad field, the deepest is reported: for a
    union such as ``content``, that is the branch that came closest to matching.
    """
    errors = exc.errors()
    if not errors:
        return InvalidRequestError("invalid body")
    field = errors[0]["loc"][:1]
    first = max(
        (e for e in errors if e["loc"][:1] == field), key=lambda e: len(e["loc"])
    )
    loc = _field_path(first["loc"])
    param = ".".join(loc) or None
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    if not loc and first.get("type") in {"model_type", "dict_type"}:
        return InvalidJSONError("the body must be a JSON object")
    if loc and loc[0] == "model":
        return InvalidModelError(message, param="model")
    if loc and loc[0] in ("messages", "message"):
        return InvalidMessagesError(message, param=param)
    return InvalidRequestError(message, param=param)
