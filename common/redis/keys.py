"""Every Redis key llmq uses, and the one builder for each."""

from __future__ import annotations

PREFIX = "llmq"

#: Pub/sub channel on which cancellation requests reach the workers.
CANCEL_CHANNEL = f"{PREFIX}:cancel"


def job_key(job_id: str) -> str:
    """Hash holding one job record."""
    return f"{PREFIX}:job:{job_id}"


def events_key(job_id: str) -> str:
    """Stream holding one job's event log; entry ids are ``0-<event id>``."""
    return f"{PREFIX}:job:{job_id}:events"


#: Counter bumped whenever a key is revoked or changed; web processes drop their
#: cached keys when it moves.
KEYS_GENERATION_KEY = f"{PREFIX}:keys:generation"


def lease_key(job_id: str) -> str:
    """String holding the token of the run that owns a running job, with a TTL."""
    return f"{PREFIX}:job:{job_id}:lease"


#: Sorted set of running jobs scored by lease expiry (ms); the reaper scans it.
RUNNING_KEY = f"{PREFIX}:running"

#: Sorted set of finished jobs not yet in the database, scored by when a writer
#: may next take them (ms): the moment they finished, then a claim's expiry.
HISTORY_UNWRITTEN_KEY = f"{PREFIX}:history:unwritten"

#: Sorted set of finished jobs the database holds, as ``<job id> <owner>``,
#: scored by when their Redis copy is dropped (ms): the end of the replay window.
HISTORY_WRITTEN_KEY = f"{PREFIX}:history:written"


def rate_key(scope: str, unit: str) -> str:
    """GCRA theoretical arrival time (µs) of one limit, e.g. ``provider:sim`` rpm.

    Named apart from the ``rate`` keys that held milliseconds, so processes of
    both versions sharing a Redis during an upgrade never read each other's.
    """
    return f"{PREFIX}:rate_us:{scope}:{unit}"


def slots_key(scope: str) -> str:
    """Sorted set of the jobs holding one of a scope's concurrency slots."""
    return f"{PREFIX}:slots:{scope}"


def notify_channel(job_id: str) -> str:
    """Pub/sub channel on which each appended event of a job is also published."""
    return f"{PREFIX}:job:{job_id}:notify"


def process_channel(process_id: str) -> str:
    """Pub/sub channel of one web process: the events of the jobs it submitted and
    follows, each message prefixed by the job's id and a newline."""
    return f"{PREFIX}:proc:{process_id}:notify"


def queued_key(queue: str) -> str:
    """Sorted set of the jobs waiting on ``queue``, scored by submission time."""
    return f"{PREFIX}:queued:{queue}"


def owner_jobs_key(key_id: str) -> str:
    """Sorted set of one API key's jobs, scored by creation time in ms."""
    return f"{PREFIX}:owner:{key_id}:jobs"


def idempotency_key(key_id: str, idem: str) -> str:
    """String mapping an ``Idempotency-Key`` to ``<body digest> <job id>``."""
    return f"{PREFIX}:idem:{key_id}:{idem}"


def money_key(key_id: str) -> str:
    """Hash of an API key's live money: settled, held, daily_free, free_left,
    free_day (common/accounts/billing.py)."""
    return f"{PREFIX}:money:{key_id}"


def money_generation_key(key_id: str) -> str:
    """Counter bumped when a key's money changes while not loaded in Redis."""
    return f"{PREFIX}:money:{key_id}:gen"


#: Hash of open holds: job id -> "<key id> <from free> <from balance> <day>
#: <granted 0/1> <taken at, s>".
MONEY_HOLDS_KEY = f"{PREFIX}:money:holds"


def batch_key(batch_id: str) -> str:
    """Hash of a running batch's live state: ``cursor`` (requests dispatched or
    refused so far) and ``offset`` (the input file's byte where the next one
    starts), and the ``completed``, ``failed``, ``input_tokens`` and
    ``output_tokens`` of its finished lines (common/batches/progress.py)."""
    return f"{PREFIX}:batch:{batch_id}"


def batch_running_key(batch_id: str) -> str:
    """Hash of a batch's dispatched, unfinished requests: index -> byte offset."""
    return f"{PREFIX}:batch:{batch_id}:running"


def batch_done_key(batch_id: str) -> str:
    """List of a batch's finished request indexes, in the order they finished."""
    return f"{PREFIX}:batch:{batch_id}:done"


def batch_refused_key(batch_id: str) -> str:
    """Hash of a batch's requests refused before they ran: index -> output line."""
    return f"{PREFIX}:batch:{batch_id}:refused"


#: String naming the batch dispatcher that holds the lead, with a TTL.
BATCH_DISPATCHER_KEY = f"{PREFIX}:batch:dispatcher"
