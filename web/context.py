"""The per-process services a web app holds, reachable from any view."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from flask import Response, current_app, jsonify

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


def openai_list(data: list[dict[str, Any]], has_more: bool) -> Response:
    """A page of objects as OpenAI's list routes answer it."""
    return jsonify(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }
    )


def services() -> Services:
    """The current app's services."""
    return current_app.extensions["llmq"]  # type: ignore[no-any-return]
