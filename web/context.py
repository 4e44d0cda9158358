"""The per-process services a web app holds, reachable from any view."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import current_app

from common.accounts.store import KeyStore
from common.batches.service import BatchService
from common.config import Settings
from common.jobs.service import JobService


@dataclass(frozen=True)
class Services:
    """Everything views call into, built once by ``create_app``."""

    settings: Settings
    redis: redis.Redis
    jobs: JobService
    keys: KeyStore
    batches: BatchService


def services() -> Services:
    """The current app's services."""
    return current_app.extensions["llmq"]  # type: ignore[no-any-return]
