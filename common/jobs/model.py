"""The job as stored: its record, what a transition did, its task message, and
the record's codec (the fields of its Redis hash), and the clock of its times."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from common.jsoncodec import dumps, loads


class JobStatus(StrEnum):
    """Where a job is: ``queued`` -> ``running`` -> one of the terminal three."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
)


class EventType(StrEnum):
    """The kinds of event in a job's log (API.md section 5)."""

    STATUS = "status"
    DELTA = "delta"
    ERROR = "error"
    DONE = "done"


class LeaseOp(StrEnum):
    """What a write does with the run's lease (lua/lib_transition.lua)."""

    #: Own the lease unless another run holds it.
    TAKE = "take"
    #: Apply only while owning it.
    HOLD = "hold"
    #: Like hold, then release it.
    DROP = "drop"
    #: Apply only while nobody holds it (its worker died); forget it was running.
    ORPHAN = "orphan"


#: Record fields kept as JSON text.
_JSON_FIELDS = ("request", "result", "error", "usage", "metadata", "price")


#: A broker message's unacknowledged entry: (hash key, index zset key, delivery tag).
Unacked = tuple[str, str, str]


class TaskPush(Protocol):
    """The task message that runs a job, as the store pushes it with the job.

    What it holds and how the broker lays it out is workers/broker/messages.py's
    business; the store only hands ``push_parts`` to lua/lib.lua's ``push_task``.
    """

    def push_parts(self, at: float) -> tuple[list[str], list[Any]]:
        """``push_task``'s three keys and four arguments, the entry dated ``at``."""
        ...


@dataclass(frozen=True)
class JobRecord:
    """A job as stored: what the worker needs and what clients are shown."""

    id: str
    owner: str
    status: str
    model: str
    provider: str
    priority: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    deadline_at: float | None
    attempts: int
    request: dict[str, Any]
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    usage: dict[str, Any] | None
    metadata: dict[str, Any] | None
    cancel_requested: bool
    key_tpm: int | None = None
    tpm_estimate: int | None = None
    key_slot: bool = False
    #: The usage was counted by llmq: the provider reported none.
    usage_estimated: bool = False
    #: The price a metered key's hold was taken at, as ``Price.shown`` gives it
    #: (None: not charged); the job is settled at the same price.
    price: dict[str, Any] | None = None
    #: A batch request whose first call's provider rates the batch dispatcher
    #: reserved already (common/batches/dispatcher.py).
    paced: bool = False

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class Transition:
    """What a transition script did."""

    applied: bool
    status: str
    cancel_requested: bool
    lease_lost: bool = False


def decode_transition(reply: list[Any]) -> Transition:
    """What a transition script's reply says (lua/lib_transition.lua)."""
    applied, status, _last_id, cancel, lost = reply
    return Transition(
        applied=bool(applied),
        status=status.decode() if isinstance(status, bytes) else str(status),
        cancel_requested=cancel in (b"1", "1"),
        lease_lost=bool(lost),
    )


def decode_record(raw: dict[bytes, bytes]) -> JobRecord:
    """The record a job's Redis hash holds."""
    f = {k.decode(): v.decode() for k, v in raw.items()}

    def num(name: str) -> float | None:
        return float(f[name]) if f.get(name) else None

    loaded = {name: loads(f[name]) if f.get(name) else None for name in _JSON_FIELDS}
    return JobRecord(
        id=f["id"],
        owner=f["owner"],
        status=f["status"],
        model=f["model"],
        provider=f["provider"],
        priority=f["priority"],
        created_at=float(f["created_at"]),
        started_at=num("started_at"),
        finished_at=num("finished_at"),
        deadline_at=num("deadline_at"),
        attempts=int(f.get("attempts") or 0),
        request=loaded["request"] or {},
        result=loaded["result"],
        error=loaded["error"],
        usage=loaded["usage"],
        metadata=loaded["metadata"],
        cancel_requested=f.get("cancel") == "1",
        key_tpm=int(f["key_tpm"]) if f.get("key_tpm") else None,
        tpm_estimate=int(f["tpm_estimate"]) if f.get("tpm_estimate") else None,
        key_slot=f.get("key_slot") == "1",
        usage_estimated=f.get("usage_estimated") == "1",
        price=loaded["price"],
        paced=f.get("paced") == "1",
    )


def encode_fields(fields: dict[str, Any]) -> list[str]:
    """Flatten a field mapping for HSET: JSON for structures, text for scalars."""
    flat: list[str] = []
    for name, value in fields.items():
        if name in _JSON_FIELDS:
            value = dumps(value)
        flat += [name, "" if value is None else str(value)]
    return flat


def record_from(fields: dict[str, Any]) -> JobRecord:
    """The record that storing ``fields`` writes, without reading it back."""
    flat = encode_fields(fields)
    return decode_record(
        {k.encode(): v.encode() for k, v in zip(flat[::2], flat[1::2], strict=True)}
    )


def now() -> float:
    """Wall-clock seconds; job timestamps are Unix epoch seconds."""
    return time.time()
