"""Unit tests for the catalog (common/catalog.py) and settings (common/config.py)."""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import pytest

from common.catalog import (
    DEFAULT_CONNECT_TIMEOUT_SECONDS,
    DEFAULT_TOTAL_TIMEOUT_SECONDS,
    Catalog,
    CatalogError,
    load_catalog,
)
from common.config import (
    DEFAULT_DATABASE_URL,
    ConfigError,
    load_settings,
)

SHIPPED_CATALOG = Path(__file__).resolve().parents[1] / "catalog.yaml"
DASHSCOPE_MODELS = {"qwen-turbo", "qwen-plus", "qwen-max"}
DEEPSEEK_MODELS = {"deepseek-chat"}
SECRET = "sk-test-very-secret-0123456789"

MINIMAL = """
providers:
  sim:
    kind: simulated
  up:
    kind: openai
    base_url: https://upstream.example/v1
    api_key_env: UP_API_KEY
  open:
    kind: openai
    base_url: http://localhost:11434/v1
models:
  - id: chat
    provider: sim
  - id: chat
    provider: up
    upstream_model: vendor-chat-2024
  - id: local
    provider: open
"""


def write(tmp_path: Path, text: str, name: str = "catalog.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def ids(models) -> set[str]:
    return {m.id for m in models}


# --- the shipped catalog ---


def test_shipped_catalog_loads_with_simulated_models_enabled_and_no_environ() -> None:
    catalog = load_catalog(SHIPPED_CATALOG, {})
    assert isinstance(catalog, Catalog)
    enabled = catalog.enabled_models()
    assert len(enabled) >= 2
    assert all(catalog.provider_for(m).kind == "simulated" for m in enabled)
    assert catalog.find_model("demo-chat") is not None


def test_shipped_catalog_lists_provider_models_but_disables_them_without_keys() -> None:
    catalog = load_catalog(SHIPPED_CATALOG, {})
    assert DASHSCOPE_MODELS | DEEPSEEK_MODELS <= ids(catalog.models)
    assert not (DASHSCOPE_MODELS | DEEPSEEK_MODELS) & ids(catalog.enabled_models())
    for model_id in DASHSCOPE_MODELS | DEEPSEEK_MODELS:
        assert catalog.find_model(model_id) is None
    assert catalog.providers["dashscope"].enabled is False
    assert catalog.providers["deepseek"].enabled is False


@pytest.mark.parametrize(
    ("variable", "provider", "enabled", "disabled"),
    [
        ("DASHSCOPE_API_KEY", "dashscope", DASHSCOPE_MODELS, DEEPSEEK_MODELS),
        ("DEEPSEEK_API_KEY", "deepseek", DEEPSEEK_MODELS, DASHSCOPE_MODELS),
    ],
)
def test_shipped_provider_is_enabled_by_its_key_variable(
    variable: str, provider: str, enabled: set[str], disabled: set[str]
) -> None:
    catalog = load_catalog(SHIPPED_CATALOG, {variable: SECRET})
    assert catalog.providers[provider].enabled is True
    assert catalog.providers[provider].api_key == SECRET
    assert enabled <= ids(catalog.enabled_models())
    assert not disabled & ids(catalog.enabled_models())
    assert ids(catalog.enabled_models(provider)) == enabled
    for model_id in enabled:
        model = catalog.find_model(model_id)
        assert model is not None and model.provider == provider


def test_both_keys_enable_every_shipped_model() -> None:
    environ = {"DASHSCOPE_API_KEY": SECRET, "DEEPSEEK_API_KEY": SECRET}
    catalog = load_catalog(SHIPPED_CATALOG, environ)
    assert ids(catalog.enabled_models()) == ids(catalog.models)


def test_empty_key_variable_leaves_provider_disabled() -> None:
    catalog = load_catalog(SHIPPED_CATALOG, {"DASHSCOPE_API_KEY": ""})
    assert catalog.providers["dashscope"].enabled is False
    assert catalog.find_model("qwen-turbo") is None


def test_api_key_never_appears_in_repr_or_dump() -> None:
    environ = {"DASHSCOPE_API_KEY": SECRET, "DEEPSEEK_API_KEY": SECRET}
    catalog = load_catalog(SHIPPED_CATALOG, environ)
    for provider in catalog.providers.values():
        assert SECRET not in repr(provider)
        assert SECRET not in str(provider)
        assert SECRET not in repr(provider.model_dump())
        assert SECRET not in provider.model_dump_json()
    assert SECRET not in repr(catalog)
    assert SECRET not in repr(catalog.providers)
    assert SECRET not in repr(catalog.models)


def test_shipped_catalog_model_fields() -> None:
    catalog = load_catalog(SHIPPED_CATALOG, {"DASHSCOPE_API_KEY": SECRET})
    turbo = catalog.find_model("qwen-turbo")
    assert turbo is not None
    assert turbo.fallbacks == ["qwen-plus"]
    assert turbo.context_length == 131072
    assert turbo.upstream == "qwen-turbo"
    assert catalog.provider_for(turbo).base_url.startswith("https://dashscope")
    assert catalog.provider_for(turbo).limits.rpm == 600


# --- loading rules ---


def test_provider_names_come_from_mapping_keys(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, MINIMAL), {})
    assert {name: p.name for name, p in catalog.providers.items()} == {
        "sim": "sim",
        "up": "up",
        "open": "open",
    }


def test_openai_provider_without_key_variable_is_always_enabled(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, MINIMAL), {})
    assert catalog.providers["open"].enabled is True
    assert catalog.providers["open"].api_key is None
    assert catalog.find_model("local") is not None


def test_find_model_with_pinned_provider(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, MINIMAL), {"UP_API_KEY": SECRET})
    assert catalog.find_model("chat").provider == "sim"  # first enabled in file order
    assert catalog.find_model("chat", "sim").provider == "sim"
    assert catalog.find_model("chat", "up").provider == "up"
    assert catalog.find_model("chat", "open") is None
    assert catalog.find_model("chat", "nobody") is None
    assert catalog.find_model("missing") is None


def test_model_served_by_several_providers_is_listed_once(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, MINIMAL), {"UP_API_KEY": SECRET})
    listed = [(m.id, m.provider) for m in catalog.enabled_models()]
    assert listed == [("chat", "sim"), ("local", "open")]
    pinned = [(m.id, m.provider) for m in catalog.enabled_models("up")]
    assert pinned == [("chat", "up")]


def test_find_model_pinned_to_a_disabled_provider_is_none(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, MINIMAL), {})
    assert catalog.find_model("chat", "up") is None
    assert catalog.find_model("chat").provider == "sim"
    assert catalog.enabled_models("up") == []


def test_upstream_model_defaults_to_id(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, MINIMAL), {"UP_API_KEY": SECRET})
    assert catalog.find_model("chat", "sim").upstream_model is None
    assert catalog.find_model("chat", "sim").upstream == "chat"
    assert catalog.find_model("chat", "up").upstream == "vendor-chat-2024"


def test_defaults_for_timeouts_price_and_timestamps(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, MINIMAL), {})
    provider = catalog.providers["sim"]
    assert provider.timeouts.connect == DEFAULT_CONNECT_TIMEOUT_SECONDS
    assert provider.timeouts.total == DEFAULT_TOTAL_TIMEOUT_SECONDS
    model = catalog.find_model("local")
    assert model.price.input_per_1k == 0.0
    assert model.fallbacks == []
    assert isinstance(model.created_at, dt.datetime)
    assert model.updated_at == model.created_at


def test_explicit_created_at_is_kept_and_used_for_updated_at(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        providers:
          sim: {kind: simulated}
        models:
          - id: a
            provider: sim
            created_at: 2024-01-02T03:04:05
        """,
    )
    model = load_catalog(path, {}).find_model("a")
    assert model.created_at == dt.datetime(2024, 1, 2, 3, 4, 5)
    assert model.updated_at == model.created_at


@pytest.mark.parametrize(
    "text",
    [
        # an openai provider without base_url
        """
        providers:
          up: {kind: openai, api_key_env: UP_API_KEY}
        models: []
        """,
        # a model naming an unknown provider
        """
        providers:
          sim: {kind: simulated}
        models:
          - {id: chat, provider: nobody}
        """,
        # an unknown top-level field
        """
        providers:
          sim: {kind: simulated}
        models: []
        routes: []
        """,
        # an unknown provider field
        """
        providers:
          sim: {kind: simulated, colour: blue}
        models: []
        """,
        # an unknown model field
        """
        providers:
          sim: {kind: simulated}
        models:
          - {id: chat, provider: sim, temprature: 0.5}
        """,
        # an unknown provider kind
        """
        providers:
          x: {kind: anthropic, base_url: https://x}
        models: []
        """,
        # a negative price
        """
        providers:
          sim: {kind: simulated}
        models:
          - {id: chat, provider: sim, price: {input_per_1k: -1}}
        """,
        # a zero timeout
        """
        providers:
          sim: {kind: simulated, timeouts: {connect: 0}}
        models: []
        """,
        # missing sections
        """
        providers:
          sim: {kind: simulated}
        """,
        # empty file
        "",
        # not YAML
        "providers: [unclosed\n",
        # YAML but not a mapping
        "- a\n- b\n",
    ],
    ids=[
        "openai-without-base-url",
        "unknown-provider",
        "unknown-top-level-field",
        "unknown-provider-field",
        "unknown-model-field",
        "unknown-kind",
        "negative-price",
        "zero-timeout",
        "missing-models",
        "empty-file",
        "not-yaml",
        "not-a-mapping",
    ],
)
def test_invalid_catalog_raises_catalog_error(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CatalogError) as info:
        load_catalog(path, {})
    assert str(path) in str(info.value)


def test_missing_file_raises_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError):
        load_catalog(tmp_path / "nope.yaml", {})


def test_catalog_error_is_a_value_error() -> None:
    assert issubclass(CatalogError, ValueError)


def test_loaded_models_and_providers_are_frozen(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, MINIMAL), {})
    with pytest.raises(ValueError):
        catalog.providers["sim"].kind = "openai"  # type: ignore[misc]
    with pytest.raises(ValueError):
        catalog.models[0].id = "other"  # type: ignore[misc]


# --- settings ---


@pytest.fixture
def catalog_path(tmp_path: Path) -> Path:
    return write(tmp_path, MINIMAL)


def test_settings_defaults(catalog_path: Path) -> None:
    settings = load_settings({"LLMQ_CATALOG": str(catalog_path)})
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.database_url.startswith("sqlite:///")
    assert settings.admin_key is None
    assert settings.port == 8000
    assert settings.worker_concurrency == 1000  # API.md §11
    assert settings.worker_processes is None  # one per core
    assert settings.job_ttl_seconds == 604800
    assert settings.max_body_bytes == 8 * 1024 * 1024
    assert ids(settings.catalog.models) == {"chat", "local"}


def test_settings_read_from_environ(catalog_path: Path) -> None:
    settings = load_settings(
        {
            "LLMQ_CATALOG": str(catalog_path),
            "REDIS_URL": "redis://redis.internal:6380/2",
            "DATABASE_URL": "postgresql+psycopg://u:p@db/llmq",
            "LLMQ_ADMIN_KEY": "admin-secret-xyz",
            "PORT": "9001",
            "LLMQ_WORKER_CONCURRENCY": "16",
            "LLMQ_WORKER_PROCESSES": "3",
            "LLMQ_JOB_TTL_SECONDS": "3600",
            "LLMQ_MAX_BODY_BYTES": "1024",
            "UP_API_KEY": SECRET,
        }
    )
    assert settings.redis_url == "redis://redis.internal:6380/2"
    assert settings.database_url == "postgresql+psycopg://u:p@db/llmq"
    assert settings.admin_key == "admin-secret-xyz"
    assert settings.port == 9001
    assert settings.worker_concurrency == 16
    assert settings.worker_processes == 3
    assert settings.job_ttl_seconds == 3600
    assert settings.max_body_bytes == 1024
    assert settings.catalog.providers["up"].enabled is True


def test_empty_variables_fall_back_to_defaults(catalog_path: Path) -> None:
    settings = load_settings(
        {
            "LLMQ_CATALOG": str(catalog_path),
            "REDIS_URL": "",
            "LLMQ_ADMIN_KEY": "",
            "PORT": "",
            "LLMQ_JOB_TTL_SECONDS": "",
        }
    )
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.admin_key is None
    assert settings.port == 8000
    assert settings.job_ttl_seconds == 604800


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "80.5"),
        ("PORT", "0"),
        ("PORT", "-1"),
        ("LLMQ_WORKER_CONCURRENCY", "many"),
        ("LLMQ_JOB_TTL_SECONDS", "-1"),
        ("LLMQ_EVENTS_TTL_SECONDS", "0"),
        ("LLMQ_EVENTS_TTL_SECONDS", "1.5"),
        ("LLMQ_SSE_KEEPALIVE_SECONDS", "soon"),
    ],
)
def test_malformed_number_raises_config_error(
    catalog_path: Path, variable: str, value: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"LLMQ_CATALOG": str(catalog_path), variable: value})
    assert variable in str(info.value)


def test_retention_settings_default_and_zero_keeps_jobs_forever(
    catalog_path: Path,
) -> None:
    defaults = load_settings({"LLMQ_CATALOG": str(catalog_path)})
    assert (defaults.events_ttl_seconds, defaults.job_ttl_seconds) == (3600, 604800)
    forever = load_settings(
        {"LLMQ_CATALOG": str(catalog_path), "LLMQ_JOB_TTL_SECONDS": "0"}
    )
    assert forever.job_ttl_seconds == 0


def test_float_settings_accept_fractions(catalog_path: Path) -> None:
    settings = load_settings(
        {"LLMQ_CATALOG": str(catalog_path), "LLMQ_SSE_KEEPALIVE_SECONDS": "2.5"}
    )
    assert settings.sse_keepalive_seconds == 2.5


def test_admin_key_not_in_settings_repr(catalog_path: Path) -> None:
    settings = load_settings(
        {
            "LLMQ_CATALOG": str(catalog_path),
            "LLMQ_ADMIN_KEY": "admin-secret-xyz",
            "UP_API_KEY": SECRET,
        }
    )
    assert "admin-secret-xyz" not in repr(settings)
    assert SECRET not in repr(settings)


def test_settings_with_missing_catalog_raise_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError):
        load_settings({"LLMQ_CATALOG": str(tmp_path / "missing.yaml")})


def test_settings_without_llmq_catalog_use_the_shipped_catalog() -> None:
    settings = load_settings({})
    assert "demo-chat" in ids(settings.catalog.enabled_models())


def test_a_visibility_timeout_shorter_than_the_longest_job_is_refused(
    tmp_path: Path,
) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "providers:\n  sim:\n    kind: simulated\n    timeouts: {total: 600}\n"
        "models:\n  - {id: m, provider: sim}\n",
        encoding="utf-8",
    )
    env = {"LLMQ_CATALOG": str(catalog), "LLMQ_WORKER_GRACE_SECONDS": "30"}
    with pytest.raises(ConfigError, match="VISIBILITY"):
        load_settings({**env, "LLMQ_VISIBILITY_TIMEOUT_SECONDS": "600"})
    assert load_settings({**env, "LLMQ_VISIBILITY_TIMEOUT_SECONDS": "700"})
