"""A call's turn under its provider's and model's limits (rpm, tpm, concurrency).

The limits live in Redis (common/limits.py), so they hold across every worker; a
call over a limit sleeps until its reserved turn or a free slot (no polling of
the provider, no CPU) and says so in a ``status`` event.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from common.catalog import Catalog, Limits, ModelConfig
from common.execution.cancel import CancelToken
from common.jobs.model import JobStatus
from common.limits import Limiter, Rate

#: Longest pause between two tries for a free concurrency slot.
SLOT_POLL_MAX_SECONDS = 1.0
#: First pause between two tries for a free concurrency slot (it doubles).
SLOT_POLL_FIRST_SECONDS = 0.05


def limit_scopes(catalog: Catalog, model: ModelConfig) -> list[tuple[str, Limits]]:
    """The limit scopes a call to ``model`` counts against: provider, then model."""
    provider = catalog.provider_for(model)
    return [
        (f"provider:{provider.name}", provider.limits),
        (f"model:{provider.name}:{model.id}", model.limits),
    ]


def provider_rates(
    catalog: Catalog, model: ModelConfig, estimate: int
) -> list[tuple[Rate, int]]:
    """Each rate limit a call to ``model`` reserves, with the units it takes
    (one request; ``estimate`` tokens)."""
    rates = []
    for scope, limits in limit_scopes(catalog, model):
        if limits.rpm:
            rates.append((Rate(scope, "rpm", limits.rpm), 1))
        if limits.tpm:
            rates.append((Rate(scope, "tpm", limits.tpm), estimate))
    return rates


def wait_for_limits(
    limiter: Limiter,
    catalog: Catalog,
    model: ModelConfig,
    rates: list[tuple[Rate, int]],
    holder: str,
    hold_seconds: float,
    cancel: CancelToken,
    announce: Callable[[dict[str, Any]], None],
    reserved: bool = False,
) -> list[str] | None:
    """Wait (sleeping, not spinning) until the limits let this call go.

    ``reserved``: the rates were reserved for this call already (a batch
    request the dispatcher paced); only concurrency slots are taken.
    Returns the concurrency scopes whose slot ``holder`` took, or None if the run
    was stopped while waiting.
    """
    wait = 0.0 if reserved else limiter.reserve(rates)
    if wait > 0:
        announce(
            {
                "status": JobStatus.RUNNING,
                "waiting": "rate_limit",
                "seconds": round(wait, 3),
            }
        )
        if cancel.wait(wait):
            return None
    slots = [
        (scope, limits.concurrency)
        for scope, limits in limit_scopes(catalog, model)
        if limits.concurrency
    ]
    pause, announced = SLOT_POLL_FIRST_SECONDS, False
    while not limiter.acquire_slots(holder, slots, hold_seconds):
        if not announced:
            announce({"status": JobStatus.RUNNING, "waiting": "concurrency"})
            announced = True
        if cancel.wait(pause * random.uniform(0.5, 1.5)):
            return None
        pause = min(pause * 2, SLOT_POLL_MAX_SECONDS)
    return [scope for scope, _ in slots]
