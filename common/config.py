"""Settings read from the environment (12-factor) and their defaults."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from common.catalog import Catalog, load_catalog

PROJECT_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = f"sqlite:///{PROJECT_ROOT / 'var' / 'llmq.sqlite3'}"
DEFAULT_CATALOG_PATH = PROJECT_ROOT / "catalog.yaml"
DEFAULT_PORT = 8000
#: Jobs in flight per worker process: a stream waiting on tokens costs a sleeping
#: greenlet, so this is set high enough never to be what caps concurrent streams.
DEFAULT_WORKER_CONCURRENCY = 1000
#: How long finished jobs stay readable, from the database (7 days; 0: forever).
DEFAULT_JOB_TTL_SECONDS = 7 * 24 * 3600
#: How long a finished job's exact event log stays in Redis (API.md section 5).
DEFAULT_EVENTS_TTL_SECONDS = 3600
#: Largest request body accepted (8 MiB).
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
#: Longest silence on an SSE stream before a keepalive comment.
DEFAULT_SSE_KEEPALIVE_SECONDS = 15.0
#: Socket timeout of ordinary Redis calls: a dead Redis must answer 503 within 2 s.
DEFAULT_REDIS_TIMEOUT_SECONDS = 1.0
#: Broker redelivery of unacknowledged tasks; longer than any job may run.
DEFAULT_VISIBILITY_TIMEOUT_SECONDS = 2 * 3600
#: A running job's lease; its worker renews it every third of this.
DEFAULT_LEASE_SECONDS = 15.0
#: How long a stopping worker lets running streams finish before requeueing them.
DEFAULT_WORKER_GRACE_SECONDS = 30.0
#: Deltas of one stream arriving within this window go out as one event.
DEFAULT_DELTA_WINDOW_MS = 10.0
#: Where the daily free allowance resets (API.md section 11).
DEFAULT_TIMEZONE = ZoneInfo("Asia/Shanghai")
#: Origins whose web pages may call llmq from a browser; ``*`` is any origin.
DEFAULT_CORS_ORIGINS = ("*",)
#: Where uploaded files and batch output files are kept (API.md section 11).
DEFAULT_FILES_DIR = PROJECT_ROOT / "var" / "files"
#: OpenAI's limits on a batch input file: lines, and bytes (200 MB).
DEFAULT_FILE_MAX_LINES = 50_000
DEFAULT_FILE_MAX_BYTES = 200 * 1000 * 1000
#: Worker processes that run batch requests, apart from the interactive ones.
DEFAULT_BULK_WORKER_PROCESSES = 1
#: Batch lines one provider may have dispatched and unfinished at once: it bounds
#: the bulk queue's task messages and the workers' greenlets whatever the
#: batch's size (common/batches/dispatcher.py).
DEFAULT_BULK_WINDOW = 256
#: What a browser sends as ``Origin``: scheme, host (IPv6 in brackets), port.
_ORIGIN = re.compile(
    r"[a-z][a-z0-9+.-]*://(\[[0-9a-f:.]+\]|[^\s/?#@:\[\]]+)(:\d+)?", re.I
)


class ConfigError(ValueError):
    """A setting is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    """Everything a web or worker process needs to know about its environment."""

    catalog: Catalog
    redis_url: str = DEFAULT_REDIS_URL
    database_url: str = DEFAULT_DATABASE_URL
    admin_key: str | None = field(default=None, repr=False)
    port: int = DEFAULT_PORT
    worker_concurrency: int = DEFAULT_WORKER_CONCURRENCY
    #: Worker processes the launcher starts; None: one per core.
    worker_processes: int | None = None
    #: Worker processes for the bulk queue alone, at a lower CPU priority
    #: (workers/launcher.py); 0: the other workers take bulk jobs too.
    bulk_worker_processes: int = DEFAULT_BULK_WORKER_PROCESSES
    job_ttl_seconds: int = DEFAULT_JOB_TTL_SECONDS
    events_ttl_seconds: int = DEFAULT_EVENTS_TTL_SECONDS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    sse_keepalive_seconds: float = DEFAULT_SSE_KEEPALIVE_SECONDS
    redis_timeout_seconds: float = DEFAULT_REDIS_TIMEOUT_SECONDS
    visibility_timeout_seconds: int = DEFAULT_VISIBILITY_TIMEOUT_SECONDS
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    worker_grace_seconds: float = DEFAULT_WORKER_GRACE_SECONDS
    delta_window_ms: float = DEFAULT_DELTA_WINDOW_MS
    cors_origins: tuple[str, ...] = DEFAULT_CORS_ORIGINS
    #: Where the daily free allowance resets at midnight.
    timezone: ZoneInfo = DEFAULT_TIMEZONE
    files_dir: Path = DEFAULT_FILES_DIR
    file_max_lines: int = DEFAULT_FILE_MAX_LINES
    file_max_bytes: int = DEFAULT_FILE_MAX_BYTES
    bulk_window: int = DEFAULT_BULK_WINDOW


def _positive(
    environ: Mapping[str, str], name: str, default: float, *, allow_zero: bool = False
) -> float:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from exc
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be positive")
    return value


def _positive_int(
    environ: Mapping[str, str], name: str, default: int, allow_zero: bool = False
) -> int:
    value = _positive(environ, name, default, allow_zero=allow_zero)
    if value != int(value):
        raise ConfigError(f"{name} must be a whole number")
    return int(value)


def _timezone(environ: Mapping[str, str], name: str) -> ZoneInfo:
    raw = environ.get(name) or ""
    if not raw:
        return DEFAULT_TIMEZONE
    try:
        return ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"{name} must be a time zone name, not {raw!r}") from exc


def _origins(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list of origins (``scheme://host[:port]``), or ``*``.

    An origin with a path or a trailing slash is refused: a browser's ``Origin``
    header never has one, so it would silently never match.
    """
    raw = environ.get(name) or ""
    if not raw:
        return DEFAULT_CORS_ORIGINS
    origins = tuple(o for o in (part.strip() for part in raw.split(",")) if o)
    if origins == ("*",):
        return origins
    if not origins or "*" in origins:
        raise ConfigError(f"{name} must be * or a list of origins, not {raw!r}")
    for origin in origins:
        if not _ORIGIN.fullmatch(origin):
            raise ConfigError(
                f"{name}: {origin!r} is not an origin (scheme://host[:port])"
            )
    return origins


def _check_visibility(settings: Settings) -> Settings:
    """The broker must not redeliver a task while its job may still be running."""
    catalog = settings.catalog
    longest = max(
        [p.timeouts.total for p in catalog.providers.values()]
        + [m.timeouts.total for m in catalog.models if m.timeouts],
        default=0.0,
    )
    if settings.visibility_timeout_seconds <= longest + settings.worker_grace_seconds:
        raise ConfigError(
            "LLMQ_VISIBILITY_TIMEOUT_SECONDS must exceed the longest total timeout "
            f"in the catalog plus the worker grace period ({longest:.0f} s + "
            f"{settings.worker_grace_seconds:.0f} s)"
        )
    return settings


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from ``environ`` (default: the process environment).

    Raises:
        ConfigError: a variable is malformed.
        CatalogError: the catalog cannot be read.
    """
    env = os.environ if environ is None else environ
    catalog_path = Path(env.get("LLMQ_CATALOG") or DEFAULT_CATALOG_PATH)
    settings = Settings(
        catalog=load_catalog(catalog_path, env),
        redis_url=env.get("REDIS_URL") or DEFAULT_REDIS_URL,
        database_url=env.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
        admin_key=env.get("LLMQ_ADMIN_KEY") or None,
        port=_positive_int(env, "PORT", DEFAULT_PORT),
        worker_concurrency=_positive_int(
            env, "LLMQ_WORKER_CONCURRENCY", DEFAULT_WORKER_CONCURRENCY
        ),
        worker_processes=(
            _positive_int(env, "LLMQ_WORKER_PROCESSES", 1)
            if env.get("LLMQ_WORKER_PROCESSES")
            else None
        ),
        bulk_worker_processes=_positive_int(
            env,
            "LLMQ_BULK_WORKER_PROCESSES",
            DEFAULT_BULK_WORKER_PROCESSES,
            allow_zero=True,
        ),
        job_ttl_seconds=_positive_int(
            env, "LLMQ_JOB_TTL_SECONDS", DEFAULT_JOB_TTL_SECONDS, allow_zero=True
        ),
        events_ttl_seconds=_positive_int(
            env, "LLMQ_EVENTS_TTL_SECONDS", DEFAULT_EVENTS_TTL_SECONDS
        ),
        max_body_bytes=_positive_int(
            env, "LLMQ_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES
        ),
        sse_keepalive_seconds=_positive(
            env, "LLMQ_SSE_KEEPALIVE_SECONDS", DEFAULT_SSE_KEEPALIVE_SECONDS
        ),
        redis_timeout_seconds=_positive(
            env, "LLMQ_REDIS_TIMEOUT_SECONDS", DEFAULT_REDIS_TIMEOUT_SECONDS
        ),
        visibility_timeout_seconds=_positive_int(
            env, "LLMQ_VISIBILITY_TIMEOUT_SECONDS", DEFAULT_VISIBILITY_TIMEOUT_SECONDS
        ),
        lease_seconds=_positive(env, "LLMQ_LEASE_SECONDS", DEFAULT_LEASE_SECONDS),
        worker_grace_seconds=_positive(
            env, "LLMQ_WORKER_GRACE_SECONDS", DEFAULT_WORKER_GRACE_SECONDS
        ),
        delta_window_ms=_positive(
            env, "LLMQ_DELTA_WINDOW_MS", DEFAULT_DELTA_WINDOW_MS, allow_zero=True
        ),
        cors_origins=_origins(env, "LLMQ_CORS_ORIGINS"),
        timezone=_timezone(env, "LLMQ_TIMEZONE"),
        files_dir=Path(env.get("LLMQ_FILES_DIR") or DEFAULT_FILES_DIR),
        file_max_lines=_positive_int(
            env, "LLMQ_FILE_MAX_LINES", DEFAULT_FILE_MAX_LINES
        ),
        file_max_bytes=_positive_int(
            env, "LLMQ_FILE_MAX_BYTES", DEFAULT_FILE_MAX_BYTES
        ),
        bulk_window=_positive_int(env, "LLMQ_BULK_WINDOW", DEFAULT_BULK_WINDOW),
    )
    return _check_visibility(settings)
