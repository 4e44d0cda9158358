"""OpenAI's ``x-ratelimit-*`` answer headers, from a key's limits and its admission."""

from __future__ import annotations

from common.accounts.models import KeyIdentity
from common.limits import Admission


def rate_limit_headers(caller: KeyIdentity, admission: Admission) -> dict[str, str]:
    """The limit, remaining and reset headers of each of the key's rate limits."""
    headers = {}
    for unit, limit, name in (
        ("rpm", caller.rpm, "requests"),
        ("tpm", caller.tpm, "tokens"),
    ):
        if limit and unit in admission.remaining:
            headers[f"x-ratelimit-limit-{name}"] = str(limit)
            headers[f"x-ratelimit-remaining-{name}"] = str(admission.remaining[unit])
            headers[f"x-ratelimit-reset-{name}"] = duration(
                admission.reset_seconds[unit]
            )
    return headers


def duration(seconds: float) -> str:
    """A duration as OpenAI writes it in rate-limit headers: 20ms, 1.5s, 6m0s."""
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    minutes, rest = divmod(round(seconds, 3), 60)
    return f"{int(minutes)}m{rest:g}s" if minutes else f"{rest:g}s"
