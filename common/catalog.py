"""The provider and model catalog, read from YAML and validated once at startup."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from enum import IntEnum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.accounts.pricing import Price

#: Seconds each upstream timeout waits unless the catalog says otherwise.
DEFAULT_CONNECT_TIMEOUT_SECONDS = 5.0
DEFAULT_FIRST_TOKEN_TIMEOUT_SECONDS = 60.0
DEFAULT_IDLE_TIMEOUT_SECONDS = 60.0
DEFAULT_TOTAL_TIMEOUT_SECONDS = 600.0
#: Retries of a failed upstream call before any token was relayed.
DEFAULT_MAX_RETRIES = 3
DEFAULT_RETRY_BASE_SECONDS = 0.5
DEFAULT_RETRY_MAX_SECONDS = 20.0


class ModelType(IntEnum):
    """A model's type, as seed 001's listing numbers it."""

    #: A language (chat) model: the only type the chat routes serve.
    LANGUAGE = 0


class CatalogError(ValueError):
    """The catalog file is missing or does not match the schema."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Strict):
    """Rate limits; enforced globally by the workers (a later issue)."""

    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    concurrency: int | None = Field(default=None, ge=1)


class Timeouts(_Strict):
    """Upstream timeouts in seconds."""

    connect: float = Field(default=DEFAULT_CONNECT_TIMEOUT_SECONDS, gt=0)
    first_token: float = Field(default=DEFAULT_FIRST_TOKEN_TIMEOUT_SECONDS, gt=0)
    idle: float = Field(default=DEFAULT_IDLE_TIMEOUT_SECONDS, gt=0)
    total: float = Field(default=DEFAULT_TOTAL_TIMEOUT_SECONDS, gt=0)


class RetryPolicy(_Strict):
    """Retries before the first token: exponential backoff with full jitter."""

    max_retries: int = Field(default=DEFAULT_MAX_RETRIES, ge=0)
    base_delay: float = Field(default=DEFAULT_RETRY_BASE_SECONDS, ge=0)  # seconds
    max_delay: float = Field(default=DEFAULT_RETRY_MAX_SECONDS, ge=0)  # seconds


class SimulatedSpeed(_Strict):
    """How a ``simulated`` provider behaves: no network, deterministic text."""

    first_token_delay: float = Field(default=0.2, ge=0)  # seconds
    tokens_per_second: float = Field(default=50.0, gt=0)
    reply_tokens: int = Field(default=40, ge=1)


class ProviderConfig(_Strict):
    """One upstream provider."""

    name: str = ""
    kind: Literal["openai", "simulated"]
    base_url: str | None = None
    api_key_env: str | None = None
    api_key: str | None = Field(default=None, repr=False, exclude=True)
    limits: Limits = Limits()
    timeouts: Timeouts = Timeouts()
    retry: RetryPolicy = RetryPolicy()
    simulated: SimulatedSpeed = SimulatedSpeed()

    @model_validator(mode="after")
    def _needs_base_url(self) -> ProviderConfig:
        if self.kind == "openai" and not self.base_url:
            raise ValueError("an 'openai' provider needs a base_url")
        return self

    @property
    def enabled(self) -> bool:
        """A provider that names a key variable is enabled only when it is set."""
        return self.kind == "simulated" or not self.api_key_env or bool(self.api_key)


class ModelConfig(_Strict):
    """One model clients can name, served by one provider."""

    id: str
    provider: str
    upstream_model: str | None = None
    name: str | None = None
    description: str = ""
    type: int = ModelType.LANGUAGE  # other numbers are other kinds of model
    tags: list[str] = []
    featured: bool = False
    context_length: int | None = Field(default=None, ge=1)
    price: Price = Price()
    limits: Limits = Limits()
    timeouts: Timeouts | None = None
    retry: RetryPolicy | None = None
    fallbacks: list[str] = []
    img: str = ""
    keyword: str = "文本生成"
    released: dt.date | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None

    @property
    def upstream(self) -> str:
        """The model name sent upstream."""
        return self.upstream_model or self.id


class _CatalogFile(_Strict):
    providers: dict[str, ProviderConfig]
    models: list[ModelConfig]


class Catalog:
    """Providers and models, with lookups by the names clients use."""

    def __init__(
        self, providers: dict[str, ProviderConfig], models: list[ModelConfig]
    ) -> None:
        self.providers = providers
        self.models = models

    def enabled_models(self, provider: str | None = None) -> list[ModelConfig]:
        """Models whose provider is enabled, optionally of one provider only.

        An id served by several providers is listed once: the first entry,
        which is the one an unpinned request is routed to.
        """
        seen: set[str] = set()
        found = []
        for m in self.models:
            if not self.providers[m.provider].enabled or m.id in seen:
                continue
            if provider is None or m.provider == provider:
                seen.add(m.id)
                found.append(m)
        return found

    def find_model(
        self, model_id: str, provider: str | None = None
    ) -> ModelConfig | None:
        """The enabled model a client means by ``model_id`` (and pinned provider)."""
        for model in self.enabled_models(provider):
            if model.id == model_id:
                return model
        return None

    def provider_for(self, model: ModelConfig) -> ProviderConfig:
        """The provider serving ``model``."""
        return self.providers[model.provider]

    def timeouts_for(self, model: ModelConfig) -> Timeouts:
        """The model's timeouts, else its provider's."""
        return model.timeouts or self.providers[model.provider].timeouts

    def total_timeouts(self) -> dict[tuple[str, str], float]:
        """Each enabled (provider, model id)'s total timeout: a run's deadline."""
        return {
            (model.provider, model.id): self.timeouts_for(model).total
            for provider in self.providers
            for model in self.enabled_models(provider)
        }

    def retry_for(self, model: ModelConfig) -> RetryPolicy:
        """The model's retry policy, else its provider's."""
        return model.retry or self.providers[model.provider].retry


def load_catalog(path: Path, environ: Mapping[str, str]) -> Catalog:
    """Read and validate the catalog at ``path``; provider keys come from ``environ``.

    Raises:
        CatalogError: the file is missing, not YAML, or not of the schema.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        parsed = _CatalogFile.model_validate(raw)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise CatalogError(f"catalog {path}: {exc}") from exc
    stamp = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).replace(
        microsecond=0, tzinfo=None
    )
    providers = {
        name: p.model_copy(
            update={
                "name": name,
                "api_key": environ.get(p.api_key_env) if p.api_key_env else None,
            }
        )
        for name, p in parsed.providers.items()
    }
    models = []
    for m in parsed.models:
        if m.provider not in providers:
            raise CatalogError(f"catalog {path}: model {m.id} names unknown provider")
        models.append(
            m.model_copy(
                update={
                    "created_at": m.created_at or stamp,
                    "updated_at": m.updated_at or m.created_at or stamp,
                }
            )
        )
    return Catalog(providers, models)
