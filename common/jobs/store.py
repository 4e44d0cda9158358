"""Job records in Redis, and the atomic scripts that change them with their events.

A job is a hash (``keys.job_key``); its events are a stream (``keys.events_key``)
whose entry ids are ``0-1``, ``0-2``, ... so the SSE ``id:`` is a plain integer.
Every status change and the events announcing it are written by one Lua script,
so a follower never sees a status without its event or the other way round.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from common.jsoncodec import dumps, loads
from common.redis import keys
from common.redis.groupcall import GroupCall

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
#: Id of the ``queued`` event a job is created with (its log's first entry).
CREATED_EVENT_ID = 1
#: How long an ``Idempotency-Key`` remembers its job (24 h).
IDEMPOTENCY_TTL_SECONDS = 24 * 3600
#: Most creates, starts or transitions in one script call (bounds how long it
#: holds Redis).
MOST_PER_CALL = 64

# A job's task message pushed on its broker list, with the entry kombu's Redis
# QoS would write into its unacked set on delivery (see workers/broker/transport.py).
_PUSH_TASK_FUNCTION = """
local function push_task(list, unacked, index, message, tag, entry, at)
  redis.call('LPUSH', list, message)
  redis.call('HSET', unacked, tag, entry)
  redis.call('ZADD', index, at, tag)
end
"""


def _each(function: str, keys_per_call: int, *, notices: bool = False) -> str:
    """Lua applying ``function(K, A)`` to several calls in turn, in one script.

    KEYS: each call's ``keys_per_call`` keys in turn. ARGV: per call, its argument
    count and then its arguments (``_flattened``). Returns the list of results.
    With ``notices`` the script's notices are published at its end
    (``_JOB_WRITE_FUNCTIONS``).
    """
    n = keys_per_call
    return f"""
local results, a = {{}}, 1
for t = 0, #KEYS / {n} - 1 do
  local count = tonumber(ARGV[a])
  results[t + 1] = {function}({{unpack(KEYS, t * {n} + 1, t * {n} + {n})}},
                              {{unpack(ARGV, a + 1, a + count)}})
  a = a + count + 1
end
{"flush_notices()" if notices else ""}
return results
"""


# KEYS: job, events, queued zset, owner index, idempotency key ("" = none),
#       task list, the broker's unacked hash and its index ("" = no task),
#       the API keys' generation counter ("" = no check)
# ARGV: ttl, job id, now ms, idempotency value, idempotency ttl, task message,
#       its delivery tag, its unacked entry, now (seconds), the generation the
#       caller's key was checked at, field/value pairs
# Returns 0 (nothing written) if the generation moved, else the idempotency
# key's earlier value, else false. The script takes several creates (``_each``).
_CREATE = (
    _PUSH_TASK_FUNCTION
    + """
local function create(KEYS, ARGV)
  if KEYS[9] ~= '' and (redis.call('GET', KEYS[9]) or '') ~= ARGV[10] then
    return 0
  end
  if KEYS[5] ~= '' then
    local prior = redis.call('GET', KEYS[5])
    if prior then return prior end
    redis.call('SET', KEYS[5], ARGV[4], 'EX', ARGV[5])
  end
  local fields = {}
  for i = 11, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  redis.call('XADD', KEYS[2], '0-1', 'e', 'status', 'd', '{"status":"queued"}')
  redis.call('EXPIRE', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[3] - ARGV[1] * 1000)
  redis.call('EXPIRE', KEYS[4], ARGV[1])
  if KEYS[6] ~= '' then
    push_task(KEYS[6], KEYS[7], KEYS[8], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
  end
  return false
end
"""
    + _each("create", 9)
)

# What the scripts that write a job share: setting its fields (``set_fields``)
# and appending its events (``add_events``). What is for its submitter's process
# channel is gathered by ``notice`` and published by ``flush_notices`` at the end
# of the script: one message per channel for all of the script's jobs, a
# "<job id> <count>" line before each job's event lines, so a web process
# relaying many streams reads one message per delta write, not one per job.
# Every script that appends events flushes.
_JOB_WRITE_FUNCTIONS = """
local notices, noticed = {}, {}
local function notice(channel, job, count, message)
  local box = notices[channel]
  if not box then
    box = {}
    notices[channel] = box
    noticed[#noticed + 1] = channel
  end
  box[#box + 1] = job .. ' ' .. count .. '\\n' .. message
end
local function flush_notices()
  for _, channel in ipairs(noticed) do
    redis.call('PUBLISH', channel, table.concat(notices[channel], '\\n'))
  end
  notices, noticed = {}, {}
end
-- Sets the field/value pairs in A from A[i] (their count, then the pairs) on
-- the record. Returns the index after them.
local function set_fields(record, A, i)
  local nfields = tonumber(A[i])
  if nfields > 0 then
    redis.call('HSET', record, unpack(A, i + 1, i + nfields * 2))
  end
  return i + 1 + nfields * 2
end
-- Adds the events in A from A[i] (their count, then type/data pairs) to the
-- stream, publishes them on the job's channel and notices its submitter
-- (false: none). Returns the id of the last event.
local function add_events(stream, channel, submitter, job_id, A, i)
  local nevents = tonumber(A[i])
  i = i + 1
  local n = redis.call('XLEN', stream)
  local lines = {}
  for j = 1, nevents do
    n = n + 1
    redis.call('XADD', stream, '0-' .. n, 'e', A[i], 'd', A[i + 1])
    lines[j] = n .. ' ' .. A[i] .. ' ' .. A[i + 1]
    i = i + 2
  end
  if nevents > 0 then
    local message = table.concat(lines, '\\n')
    redis.call('PUBLISH', channel, message)
    if submitter then notice(submitter, job_id, nevents, message) end
  end
  return n
end
"""

# One transition as a Lua function of its keys K and arguments A:
# K: job, events, queued zset, lease, running zset, notify channel
# A: ttl (0 = keep), expected statuses "a,b" ("" = any), job id, lease op
#    ("" | take | hold | drop | orphan), run token, lease ms, field count,
#    pairs..., event count, (type, data) pairs...
# Lease ops: take = own the lease unless another run holds it; hold = apply only
# while owning it; drop = like hold, then release it; orphan = apply only while
# nobody holds it (its worker died), and forget it was running.
# Returns {applied 0/1, status, last event id, cancel flag, lease lost 0/1}.
# The appended events are published on the job's channel as one message, one
# "<id> <type> <data>" line per event (compact JSON holds no newline), and, if
# the record names one (field ``notify``), on its submitter's process channel
# (see ``_JOB_WRITE_FUNCTIONS``).
_TRANSITION_FUNCTION = (
    _JOB_WRITE_FUNCTIONS
    + """
local function transition(K, A)
  local status = redis.call('HGET', K[1], 'status')
  if not status then return {0, '', 0, '', 0} end
  local function refuse(lost)
    return {0, status, redis.call('XLEN', K[2]),
            redis.call('HGET', K[1], 'cancel') or '', lost}
  end
  if A[2] ~= '' then
    local ok = false
    for s in string.gmatch(A[2], '[^,]+') do
      if s == status then ok = true end
    end
    if not ok then return refuse(0) end
  end
  local op, token = A[4], A[5]
  if op ~= '' then
    local holder = redis.call('GET', K[4])
    if op == 'take' then
      if holder and holder ~= token then return refuse(1) end
      local t = redis.call('TIME')
      local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      redis.call('SET', K[4], token, 'PX', A[6])
      redis.call('ZADD', K[5], now + tonumber(A[6]), A[3])
    elseif op == 'orphan' then
      if holder then return refuse(1) end
      redis.call('ZREM', K[5], A[3])
    elseif holder ~= token then
      return refuse(1)
    elseif op == 'drop' then
      redis.call('DEL', K[4])
      redis.call('ZREM', K[5], A[3])
    end
  end
  local i = set_fields(K[1], A, 7)
  -- Followers are woken through pub/sub; the stream stays the record. The web
  -- process that submitted the job to follow it hears it on its own channel.
  local submitter = tonumber(A[i]) > 0 and redis.call('HGET', K[1], 'notify')
  local n = add_events(K[2], K[6], submitter, A[3], A, i)
  status = redis.call('HGET', K[1], 'status')
  if status == 'queued' then
    local t = redis.call('TIME')
    redis.call('ZADD', K[3], 'NX', tonumber(t[1]) * 1000, A[3])
  else
    redis.call('ZREM', K[3], A[3])
  end
  if tonumber(A[1]) > 0 then
    redis.call('EXPIRE', K[1], A[1])
    redis.call('EXPIRE', K[2], A[1])
  end
  return {1, status, n, redis.call('HGET', K[1], 'cancel') or '', 0}
end
"""
)

# Many transitions (of different jobs) in one call, applied in order (``_each``).
_TRANSITION_MANY = _TRANSITION_FUNCTION + _each("transition", 6, notices=True)

# Appends of running jobs (the delta writer's many small writes), each applied
# as a ``transition`` with a ``hold`` of the run's lease would apply it: an
# append changes no status, so it leaves the queued set alone and reads the
# record once (5 Redis commands where a transition takes 9, for the most frequent
# write).
# Per append (several in one call, ``_each``): KEYS: job, events, lease, the
# job's channel. ARGV: job id, lease token, field count, field/value pairs, event
# count, type/data pairs.
# Returns, per append, what ``transition`` returns.
_APPEND_MANY = (
    _JOB_WRITE_FUNCTIONS
    + """
local function append(K, A)
  local job = redis.call('HMGET', K[1], 'status', 'notify', 'cancel')
  if not job[1] then return {0, '', 0, '', 0} end
  local cancel = job[3] or ''
  if redis.call('GET', K[3]) ~= A[2] then
    return {0, job[1], redis.call('XLEN', K[2]), cancel, 1}
  end
  local i = set_fields(K[1], A, 3)
  return {1, job[1], add_events(K[2], K[4], job[2], A[1], A, i), cancel, 0}
end
"""
    + _each("append", 4, notices=True)
)

# A transition that also pushes the job's task message, as the create script does
# (see JobStore.create): a job moved back to ``queued`` is never without the task
# that runs it. KEYS: the transition's six, then the task list, the broker's
# unacked hash and its index. ARGV: the message, its delivery tag, its unacked
# entry, now (seconds), then the transition's arguments.
_TRANSITION_WITH_TASK = (
    _TRANSITION_FUNCTION
    + _PUSH_TASK_FUNCTION
    + """
local result = transition({KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]},
                          {unpack(ARGV, 5)})
if result[1] == 1 then
  push_task(KEYS[7], KEYS[8], KEYS[9], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
end
flush_notices()
return result
"""
)

# Runs starting jobs: take each one's lease and mark it running (see ``start``).
# Per start (several in one call, ``_each``): KEYS: job, events, interactive
#       queued zset, lease, running zset, notify channel, bulk queued zset, the
#       broker's unacked hash and its index ("" = none). ARGV: job id, run
#       token, lease ms, now, delivery tag.
# Returns, per start, false for no job, else {transition result, the record's
# HGETALL}. TOTALS (filled in per catalog) maps hex("<provider>\\n<model>") to
# the model's total timeout, so the deadline is stored with the start.
_START = """
local TOTALS = %s
local function start(KEYS, ARGV)
  if KEYS[8] ~= '' then
    redis.call('HDEL', KEYS[8], ARGV[5])
    redis.call('ZREM', KEYS[9], ARGV[5])
  end
  local priority = redis.call('HGET', KEYS[1], 'priority')
  if not priority then return false end
  local queued = KEYS[3]
  if priority == 'bulk' then queued = KEYS[7] end
  local data = '{"status":"running"}'
  local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') or 0
  if attempts > 0 then
    data = '{"status":"running","reset":true}'  -- an earlier run may have relayed text
  end
  local job = redis.call('HMGET', KEYS[1], 'provider', 'model', 'started_at')
  local name = (job[1] or '') .. '\\n' .. (job[2] or '')
  local hex = name:gsub('.', function(c) return string.format('%%02x', c:byte()) end)
  local deadline = tonumber(ARGV[4]) + (TOTALS[hex] or 0)
  local fields = {'status', 'running', 'deadline_at', tostring(deadline),
                  'attempts', tostring(attempts + 1)}
  if not job[3] or job[3] == '' then
    fields[#fields + 1] = 'started_at'
    fields[#fields + 1] = ARGV[4]
  end
  local A = {'0', 'queued,running', ARGV[1], 'take', ARGV[2], ARGV[3], #fields / 2}
  for _, v in ipairs(fields) do A[#A + 1] = v end
  for _, v in ipairs({'1', 'status', data}) do A[#A + 1] = v end
  local K = {KEYS[1], KEYS[2], queued, KEYS[4], KEYS[5], KEYS[6]}
  return {transition(K, A), redis.call('HGETALL', KEYS[1])}
end
"""


def _start_script(totals: Mapping[tuple[str, str], float]) -> str:
    """The start script with each (provider, model)'s total timeout built in."""
    entries = (
        (f"{provider}\n{model}".encode().hex(), float(seconds))
        for (provider, model), seconds in totals.items()
    )
    table = ", ".join(f'["{name}"] = {seconds!r}' for name, seconds in entries)
    return (
        _TRANSITION_FUNCTION
        + _START % ("{" + table + "}")
        + _each("start", 9, notices=True)
    )


# KEYS: lease, running zset. ARGV: token, lease ms, job id.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
return 1
"""

# KEYS: running zset. Returns the ids whose lease expiry has passed.
_EXPIRED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 100)
"""

_JSON_FIELDS = ("request", "result", "error", "usage", "metadata")


class KeysChanged(Exception):
    """An API key was revoked since the submitting key was checked: check it again."""


#: A broker message's unacknowledged entry: (hash key, index zset key, delivery tag).
Unacked = tuple[str, str, str]


@dataclass(frozen=True)
class TaskMessage:
    """The Celery task that runs a job, as the Redis broker keeps it.

    ``payload`` is pushed on the list ``queue``; ``unacked_value`` is what kombu
    stores under the message's delivery tag in its unacked set (``unacked``)
    until the message is acknowledged, and what it pushes back if that never
    happens within the visibility timeout.
    """

    queue: str
    payload: str
    unacked: Unacked
    unacked_value: str


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


#: One run's append: (job, lease token, record fields, events).
Append = tuple[JobRecord, str, dict[str, Any], list[tuple[str, str]]]
#: One start: (job id, run token, lease seconds, the task's unacked entry).
Start = tuple[str, str, float, Unacked | None]
#: What a start found: the record (None: no such job) and whether it applied.
Started = tuple[JobRecord | None, Transition]
#: One transition's keys and arguments (see ``_TRANSITION_FUNCTION``).
Step = tuple[list[str], list[Any]]


def _transition_result(reply: list[Any]) -> Transition:
    applied, status, _last_id, cancel, lost = reply
    return Transition(
        applied=bool(applied),
        status=status.decode() if isinstance(status, bytes) else str(status),
        cancel_requested=cancel in (b"1", "1"),
        lease_lost=bool(lost),
    )


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
    return _decode(record), _transition_result(result)


def _decode(raw: dict[bytes, bytes]) -> JobRecord:
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
    )


def _push_task_parts(
    task: TaskMessage | None, at: float
) -> tuple[list[str], list[Any]]:
    """``push_task``'s keys and arguments for ``task`` (all empty for none)."""
    if task is None:
        return ["", "", ""], ["", "", "", ""]
    hash_key, index_key, tag = task.unacked
    return [task.queue, hash_key, index_key], [
        task.payload,
        tag,
        task.unacked_value,
        at,
    ]


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
    return _decode(
        {k.encode(): v.encode() for k, v in zip(flat[::2], flat[1::2], strict=True)}
    )


class JobStore:
    """Reads and writes job records and appends to their event logs."""

    def __init__(
        self,
        client: redis.Redis,
        ttl_seconds: int,
        totals: Mapping[tuple[str, str], float] | None = None,
    ) -> None:
        """``totals``: each (provider, model)'s total timeout, for ``start``."""
        self.redis = client
        self.ttl_seconds = ttl_seconds
        self._create = client.register_script(_CREATE)
        self._transition_many = client.register_script(_TRANSITION_MANY)
        self._append_many = client.register_script(_APPEND_MANY)
        self._transition_with_task = client.register_script(_TRANSITION_WITH_TASK)
        self._start = client.register_script(_start_script(totals or {}))
        self._renew = client.register_script(_RENEW)
        self._expired = client.register_script(_EXPIRED)
        # Creates, starts and transitions made at the same moment (hundreds of
        # requests or runs in one process) share round trips: common/redis/groupcall.py.
        self._creates = GroupCall(self._create_many, MOST_PER_CALL, "llmq-creates")
        self._starts = GroupCall(self.start_many, MOST_PER_CALL, "llmq-starts")
        self._transitions = GroupCall(self._steps, MOST_PER_CALL, "llmq-transitions")

    def create(
        self,
        fields: dict[str, Any],
        idempotency: tuple[str, str] | None = None,
        task: TaskMessage | None = None,
        key_generation: str | None = None,
    ) -> str | None:
        """Store a new queued job with its first event, and push its task.

        Args:
            fields: the record; must hold id, owner, priority and created_at.
            idempotency: ``(redis key, value)`` to claim; if already claimed
                nothing is written.
            task: the task that runs the job, pushed in the same script so
                neither exists without the other, with its unacked entry
                already written (see workers/broker/transport.py).
            key_generation: the API keys' generation counter the submitting
                key was checked at (see common/accounts/store.py); None: no check.

        Raises:
            KeysChanged: the counter moved; nothing was written.

        Returns:
            None when created, else the value already held by the idempotency key.
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
        return _decode(cast(dict[bytes, bytes], raw)) if raw else None

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
        task: TaskMessage | None = None,
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
        return _transition_result(reply)

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
        with a ``hold`` of its run's lease would apply it (``_APPEND_MANY``).
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
        """``script`` (``_each`` over a transition-shaped function) on ``steps``."""
        all_keys, all_args = _flattened(steps)
        return [_transition_result(r) for r in script(keys=all_keys, args=all_args)]

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
        """The keys and arguments of one transition (see ``_TRANSITION_FUNCTION``)."""
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

    def list_ids(self, owner: str, after: str | None, count: int) -> list[str]:
        """Up to ``count`` of ``owner``'s job ids, newest first, after ``after``."""
        index = keys.owner_jobs_key(owner)
        start = 0
        if after:
            rank = self.redis.zrevrank(index, after)
            if rank is None:
                return []
            start = cast(int, rank) + 1
        members = cast(
            list[bytes], self.redis.zrevrange(index, start, start + count - 1)
        )
        return [m.decode() for m in members]

    def request_cancel(self, job_id: str) -> None:
        """Flag a running job for cancellation and tell the workers."""
        pipe = self.redis.pipeline()
        pipe.hset(keys.job_key(job_id), "cancel", "1")
        pipe.publish(keys.CANCEL_CHANNEL, job_id)
        pipe.execute()


def now() -> float:
    """Wall-clock seconds; job timestamps are Unix epoch seconds."""
    return time.time()
