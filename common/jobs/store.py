"""Job records in Redis, and the atomic scripts that change them with their events.

A job is a hash (``keys.job_key``); its events are a stream (``keys.events_key``)
whose entry ids are ``0-1``, ``0-2``, ... so the SSE ``id:`` is a plain integer.
Every status change and the events announcing it are written by one Lua script,
so a follower never sees a status without its event or the other way round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import redis

from common.jobs.model import (
    JobRecord,
    TaskPush,
    Transition,
    Unacked,
    decode_record,
    decode_transition,
    encode_fields,
    now,
)
from common.redis import keys, scripts
from common.redis.groupcall import GroupCall

#: Id of the ``queued`` event a job is created with (its log's first entry).
CREATED_EVENT_ID = 1
#: How long an ``Idempotency-Key`` remembers its job (24 h).
IDEMPOTENCY_TTL_SECONDS = 24 * 3600
#: Most creates, starts or transitions in one script call (bounds its hold on Redis).
MOST_PER_CALL = 64


def _totals_table(totals: Mapping[tuple[str, str], float]) -> str:
    """A Lua table of each (provider, model)'s total timeout, for start_many.lua."""
    entries = (
        (f"{provider}\n{model}".encode().hex(), float(seconds))
        for (provider, model), seconds in totals.items()
    )
    return (
        "{" + ", ".join(f'["{name}"] = {seconds!r}' for name, seconds in entries) + "}"
    )


class KeysChanged(Exception):
    """An API key was revoked since the submitting key was checked: check it again."""


#: One run's append: (job, lease token, record fields, events).
Append = tuple[JobRecord, str, dict[str, Any], list[tuple[str, str]]]
#: One start: (job id, run token, lease seconds, the task's unacked entry).
Start = tuple[str, str, float, Unacked | None]
#: What a start found: the record (None: no such job) and whether it applied.
Started = tuple[JobRecord | None, Transition]
#: One transition's keys and arguments (see lua/lib_transition.lua).
Step = tuple[list[str], list[Any]]


def _write_args(fields: dict[str, Any], events: Sequence[tuple[str, str]]) -> list[Any]:
    """The arguments ``set_fields`` and then ``add_events`` read: the field count,
    the field/value pairs, the event count, the type/data pairs."""
    flat = encode_fields(fields)
    args: list[Any] = [len(flat) // 2, *flat, len(events)]
    for event in events:
        args += event
    return args


def _flattened(steps: Sequence[Step]) -> Step:
    """Several scripts' keys and arguments as one call's: all the keys in turn,
    and for each script its argument count, then its arguments."""
    all_keys: list[str] = []
    all_args: list[Any] = []
    for step_keys, step_args in steps:
        all_keys += step_keys
        all_args += [len(step_args), *step_args]
    return all_keys, all_args


def _started(reply: list[Any] | None) -> Started:
    if not reply:
        return None, Transition(False, "", False)
    result, flat = reply
    record = dict(zip(flat[::2], flat[1::2], strict=True))
    return decode_record(record), decode_transition(result)


def _push_task_parts(task: TaskPush | None, at: float) -> tuple[list[str], list[Any]]:
    """``push_task``'s keys and arguments for ``task`` (all empty for none)."""
    return (["", "", ""], ["", "", "", ""]) if task is None else task.push_parts(at)


class JobStore:
    """Reads and writes job records and appends to their event logs."""

    def __init__(
        self,
        client: redis.Redis,
        ttl_seconds: int,
        totals: Mapping[tuple[str, str], float] | None = None,
    ) -> None:
        """``ttl_seconds``: the last-resort life of a record and its log in Redis
        (0: none; common/jobs/retention.py drops them after their window).
        ``totals``: each (provider, model)'s total timeout, for ``start``."""
        self.redis = client
        self.ttl_seconds = ttl_seconds
        self._create = scripts.register(client, "create_many")
        self._transition_many = scripts.register(client, "transition_many")
        self._append_many = scripts.register(client, "append_many")
        self._transition_with_task = scripts.register(client, "transition_with_task")
        self._start = scripts.register(
            client, "start_many", TOTALS=_totals_table(totals or {})
        )
        self._renew = scripts.register(client, "renew_lease")
        self._expired = scripts.register(client, "expired_leases")
        # Creates, starts and transitions made at the same moment (hundreds of
        # requests or runs in one process) share round trips: common/redis/groupcall.py.
        self._creates = GroupCall(self._create_many, MOST_PER_CALL, "llmq-creates")
        self._starts = GroupCall(self.start_many, MOST_PER_CALL, "llmq-starts")
        self._transitions = GroupCall(self._steps, MOST_PER_CALL, "llmq-transitions")

    def create(
        self,
        fields: dict[str, Any],
        idempotency: tuple[str, str] | None = None,
        task: TaskPush | None = None,
        key_generation: str | None = None,
    ) -> str | None:
        """Store a new queued job with its first event, and push its task.

        ``fields``: the record (id, owner, priority and created_at at least);
        ``idempotency``: ``(redis key, value)`` to claim, nothing written if it
        is claimed already; ``task``: the task that runs the job, pushed in the
        same script so neither exists without the other, its unacked entry
        written too (workers/broker/transport.py); ``key_generation``: the API
        keys' counter the key was checked at (common/accounts/store.py), or None.
        Returns None when created, else the idempotency key's value; raises
        KeysChanged (nothing written) if the counter moved.
        """
        job_id = fields["id"]
        idem_key, idem_value = idempotency or ("", "")
        task_keys, task_args = _push_task_parts(task, fields["created_at"])
        prior = self._creates(
            (
                [
                    keys.job_key(job_id),
                    keys.events_key(job_id),
                    keys.queued_key(fields["priority"]),
                    keys.owner_jobs_key(fields["owner"]),
                    idem_key,
                    *task_keys,
                    "" if key_generation is None else keys.KEYS_GENERATION_KEY,
                ],
                [
                    self.ttl_seconds,
                    job_id,
                    int(fields["created_at"] * 1000),
                    idem_value,
                    IDEMPOTENCY_TTL_SECONDS,
                    *task_args,
                    key_generation or "",
                    *encode_fields(fields),
                ],
            )
        )
        if prior == 0:
            raise KeysChanged
        return prior.decode() if prior else None

    def _create_many(self, creates: Sequence[Step]) -> list[Any]:
        """Several creates (each its keys and arguments) in one round trip."""
        all_keys, all_args = _flattened(creates)
        return list(self._create(keys=all_keys, args=all_args))

    def get(self, job_id: str) -> JobRecord | None:
        """The job record, or None if it does not exist (or expired)."""
        raw = self.redis.hgetall(keys.job_key(job_id))
        return decode_record(cast(dict[bytes, bytes], raw)) if raw else None

    def get_many(self, job_ids: Sequence[str]) -> dict[str, JobRecord]:
        """Those of ``job_ids`` Redis holds, by id, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(keys.job_key(job_id))
        raws = cast(list[dict[bytes, bytes]], pipe.execute())
        found = zip(job_ids, raws, strict=True)
        return {job_id: decode_record(raw) for job_id, raw in found if raw}

    def transition(
        self,
        job: JobRecord,
        *,
        expected: tuple[str, ...] = (),
        fields: dict[str, Any] | None = None,
        events: Sequence[tuple[str, str]] = (),
        lease: tuple[str, str] | None = None,
        lease_seconds: float = 0,
        refresh_ttl: bool = False,
        task: TaskPush | None = None,
    ) -> Transition:
        """Atomically check status and lease, update fields and append events.

        Args:
            expected: statuses the job must be in for anything to happen.
            events: ``(type, JSON data)`` pairs appended in order.
            lease: ``(op, run token)``: ``take``, ``hold``, ``drop`` or ``orphan``.
            lease_seconds: the lease's life when taken.
            refresh_ttl: restart the record's and log's time to live.
            task: the task message to push (with its unacked entry, see
                ``create``) if the transition applies, in the same script.

        A job left ``queued`` is (re)entered in its queue's waiting set; any
        other status takes it out.
        """
        step = self._step(
            job,
            expected=expected,
            fields=fields or {},
            events=events,
            lease=lease,
            lease_seconds=lease_seconds,
            refresh_ttl=refresh_ttl,
        )
        if task is None:
            return self._transitions(step)
        task_keys, task_args = _push_task_parts(task, now())
        reply = self._transition_with_task(
            keys=[*step[0], *task_keys], args=[*task_args, *step[1]]
        )
        return decode_transition(reply)

    def start(
        self,
        job_id: str,
        token: str,
        lease_seconds: float,
        unacked: Unacked | None = None,
    ) -> Started:
        """Take a queued (or orphaned running) job's lease and mark it running.

        One round trip: the lease, the status, ``started_at`` (kept from an
        earlier run), ``deadline_at`` (now plus the model's total timeout),
        ``attempts`` counting this run's first, a ``status`` event (with
        ``reset: true`` when an earlier run may have relayed text) and the record
        as it is afterwards. Refused,
        with the record, when the job ended or another run holds its lease.
        Returns ``(None, refused)`` when there is no such job.

        ``unacked`` names the broker's entry for the task message that asked for
        this run; it is removed in the same script, started or not, so the
        message is acknowledged exactly when the job's own lease (or its end)
        takes over keeping it from being lost.
        """
        return self._starts((job_id, token, lease_seconds, unacked))

    def start_many(self, starts: Sequence[Start]) -> list[Started]:
        """Several ``start`` calls in one round trip, applied in order."""
        steps: list[Step] = []
        for job_id, token, lease_seconds, unacked in starts:
            hash_key, index_key, tag = unacked or ("", "", "")
            step_keys = [
                keys.job_key(job_id),
                keys.events_key(job_id),
                keys.queued_key("interactive"),
                keys.lease_key(job_id),
                keys.RUNNING_KEY,
                keys.notify_channel(job_id),
                keys.queued_key("bulk"),
                hash_key,
                index_key,
            ]
            steps.append(
                (step_keys, [job_id, token, int(lease_seconds * 1000), now(), tag])
            )
        all_keys, all_args = _flattened(steps)
        return [_started(reply) for reply in self._start(keys=all_keys, args=all_args)]

    def append_many(self, appends: Sequence[Append]) -> list[Transition]:
        """Several runs' appends in one round trip, each applied as ``transition``
        with a ``hold`` of its run's lease would apply it (lua/append_many.lua).
        """
        steps: list[Step] = [
            (
                [
                    keys.job_key(job.id),
                    keys.events_key(job.id),
                    keys.lease_key(job.id),
                    keys.notify_channel(job.id),
                ],
                [job.id, token, *_write_args(fields, events)],
            )
            for job, token, fields, events in appends
        ]
        return self._applied(self._append_many, steps)

    def _steps(self, steps: Sequence[Step]) -> list[Transition]:
        """Transitions of different jobs in one round trip, applied in order."""
        return self._applied(self._transition_many, steps)

    @staticmethod
    def _applied(
        script: redis.commands.core.Script, steps: Sequence[Step]
    ) -> list[Transition]:
        """``script`` (lib.lua's ``each`` over a transition-like function) on
        ``steps``."""
        all_keys, all_args = _flattened(steps)
        return [decode_transition(r) for r in script(keys=all_keys, args=all_args)]

    def _step(
        self,
        job: JobRecord,
        *,
        expected: tuple[str, ...] = (),
        fields: dict[str, Any],
        events: Sequence[tuple[str, str]],
        lease: tuple[str, str] | None,
        lease_seconds: float = 0,
        refresh_ttl: bool = False,
    ) -> Step:
        """The keys and arguments of one transition (see lua/lib_transition.lua)."""
        op, token = lease or ("", "")
        args: list[Any] = [
            self.ttl_seconds if refresh_ttl else 0,
            ",".join(expected),
            job.id,
            op,
            token,
            int(lease_seconds * 1000),
            *_write_args(fields, events),
        ]
        step_keys = [
            keys.job_key(job.id),
            keys.events_key(job.id),
            keys.queued_key(job.priority),
            keys.lease_key(job.id),
            keys.RUNNING_KEY,
            keys.notify_channel(job.id),
            keys.HISTORY_UNWRITTEN_KEY,
        ]
        return step_keys, args

    def renew(self, job_id: str, token: str, lease_seconds: float) -> bool:
        """Extend a lease this run holds; False if it no longer holds it."""
        held = self._renew(
            keys=[keys.lease_key(job_id), keys.RUNNING_KEY],
            args=[token, int(lease_seconds * 1000), job_id],
        )
        return bool(held)

    def expired_leases(self) -> list[str]:
        """Ids of running jobs whose lease has lapsed (their worker is gone)."""
        ids = cast(list[bytes], self._expired(keys=[keys.RUNNING_KEY]))
        return [i.decode() for i in ids]

    def forget_running(self, job_id: str) -> None:
        """Drop a job from the running set (it is no longer running)."""
        self.redis.zrem(keys.RUNNING_KEY, job_id)

    def queue_position(self, job: JobRecord) -> int | None:
        """1-based place of a queued job among those waiting on its queue."""
        rank = self.redis.zrank(keys.queued_key(job.priority), job.id)
        return None if rank is None else cast(int, rank) + 1

    def list_ids(
        self, owner: str, before: tuple[int, str] | None, count: int
    ) -> list[tuple[int, str]]:
        """Up to ``count`` of ``owner``'s jobs as ``(created ms, id)``, newest
        first, after the cursor ``before`` (the last one seen; None: the top)."""
        index = keys.owner_jobs_key(owner)
        top, last = before or ("+inf", "")
        found: list[tuple[int, str]] = []
        offset = 0
        while len(found) < count:
            page = cast(
                list[tuple[bytes, float]],
                self.redis.zrevrangebyscore(
                    index, top, "-inf", start=offset, num=count, withscores=True
                ),
            )
            for member, score in page:
                # Ids of the cursor's own ms come after it only if smaller.
                if before is None or score < before[0] or member.decode() < last:
                    found.append((int(score), member.decode()))
            if len(page) < count:
                break
            offset += len(page)
        return found[:count]

    def request_cancel(self, job_id: str) -> None:
        """Flag a running job for cancellation and tell the workers."""
        pipe = self.redis.pipeline()
        pipe.hset(keys.job_key(job_id), "cancel", "1")
        pipe.publish(keys.CANCEL_CHANNEL, job_id)
        pipe.execute()
