"""Finished jobs in the database (common/jobs/history.py) on SQLite and PostgreSQL:
written once, read back as written, listed newest first, purged when old."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy

from common.db.engine import make_engine
from common.db.migrate import migrate
from common.jobs import history as history_module
from common.jobs.compaction import compact
from common.jobs.events import Event
from common.jobs.history import JobHistory, JobRow, created_ms, row_values
from common.jobs.lifecycle import job_object
from common.jobs.model import EventType, JobRecord, JobStatus, record_from
from common.jsoncodec import dumps, dumps_bytes
from tests.conftest import job_fields
from tests.databases import fresh_postgres

CREATED = 1764800000.123456


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[sqlalchemy.Engine]:
    """A migrated database of this module alone: a SQLite file, or a PostgreSQL
    database made for it (other tests keep ``test``) and dropped after it."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("history") / "llmq.sqlite3"
        engine = make_engine(f"sqlite:///{path}")
        migrate(engine)
        yield engine
        engine.dispose()
        return
    with fresh_postgres("llmq_history") as url:
        engine = make_engine(url)
        try:
            migrate(engine)
            yield engine
        finally:
            engine.dispose()


@pytest.fixture
def history(engine: sqlalchemy.Engine) -> JobHistory:
    """The store on an empty ``jobs`` table."""
    with engine.begin() as conn:
        conn.execute(sqlalchemy.delete(JobRow))
    return JobHistory(engine)


def finished(
    owner: str = "owner-1",
    job_id: str | None = None,
    *,
    created_at: float = CREATED,
    status: str = JobStatus.SUCCEEDED,
    **overrides: Any,
) -> JobRecord:
    """A finished job's record, as the store holds it when it is written here."""
    fields: dict[str, Any] = {
        "owner": owner,
        "status": status,
        "model": "fake-model",
        "provider": "fake",
        "created_at": created_at,
        "started_at": created_at + 0.530864,
        "finished_at": created_at + 12.864198,
        "attempts": 1,
        "request": {"model": "fake-model", "messages": []},
        "result": {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "héllo 测试 🙂"},
                    "finish_reason": "stop",
                }
            ],
        },
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        "metadata": {"team": "ü", "n": "1"},
    }
    return record_from(job_fields(job_id, **{**fields, **overrides}))


def exact_log(job: JobRecord) -> list[Event]:
    """The job's exact event log as Redis held it."""
    entries: list[tuple[str, Any]] = [
        (EventType.STATUS, {"status": "queued"}),
        (EventType.STATUS, {"status": "running"}),
        (EventType.DELTA, _chunk({"role": "assistant", "content": "hé"})),
        (EventType.DELTA, _chunk({"content": "llo 🙂"}, finish_reason="stop")),
        (EventType.STATUS, {"status": job.status}),
        (EventType.DONE, job_object(job)),
    ]
    return [
        Event(number, kind, dumps_bytes(data))
        for number, (kind, data) in enumerate(entries, start=1)
    ]


def _chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1764800000,
        "model": "upstream-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def row(job: JobRecord) -> dict[str, Any]:
    return row_values(job, compact(exact_log(job)))


def count(history: JobHistory, *job_ids: str) -> int:
    with history.engine.connect() as conn:
        return int(
            conn.scalar(
                sqlalchemy.select(sqlalchemy.func.count())
                .select_from(JobRow)
                .where(JobRow.id.in_(job_ids))
            )
            or 0
        )


SHOWN = (
    "id",
    "owner",
    "status",
    "model",
    "provider",
    "priority",
    "created_at",
    "started_at",
    "finished_at",
    "attempts",
    "result",
    "error",
    "usage",
    "metadata",
)


def test_a_written_job_reads_back_as_written(history: JobHistory) -> None:
    written = finished()
    history.write([row(written)])
    read = history.get(written.id)
    assert read is not None
    assert job_object(read) == job_object(written)
    for name in SHOWN:  # the floats exactly, not only their whole seconds
        assert getattr(read, name) == getattr(written, name), name
    assert read.created_at == CREATED
    assert history.get("job_missing") is None


def test_a_failed_job_without_start_or_result_reads_back_as_written(
    history: JobHistory,
) -> None:
    written = finished(
        status=JobStatus.FAILED,
        started_at=None,
        result=None,
        usage=None,
        metadata=None,
        attempts=3,
        error={"code": "upstream_error", "message": "ça a échoué", "param": None},
    )
    history.write([row(written)])
    read = history.get(written.id)
    assert read is not None
    assert job_object(read) == job_object(written)
    for name in SHOWN:
        assert getattr(read, name) == getattr(written, name), name


def test_writing_a_job_again_changes_nothing(history: JobHistory) -> None:
    first = finished()
    history.write([row(first)])
    history.write([row(first)])
    assert count(history, first.id) == 1
    fresh = finished()
    history.write([row(fresh), row(first)])  # a batch of new and written jobs
    assert count(history, first.id, fresh.id) == 2
    twice = finished()
    history.write([row(twice), row(twice)])  # a job twice in one batch
    assert count(history, twice.id) == 1
    history.write([])

    other = dataclasses.replace(
        first,
        status=JobStatus.FAILED,
        result=None,
        error={"code": "x", "message": "y"},
        attempts=7,
    )
    history.write([row_values(other, [(1, EventType.STATUS, {"status": "failed"})])])
    read = history.get(first.id)
    assert read is not None and job_object(read) == job_object(first)
    assert history.events(first.id, 0) == _expected_events(first)
    assert count(history, first.id, fresh.id) == 2


def test_nul_and_lone_surrogates_are_stored_and_read_back(history: JobHistory) -> None:
    """NUL and a lone surrogate (an upstream's ``\\u0000``, ``\\ud800``) in the
    result and the deltas: stored, read back, and never a write that fails."""
    text = "nul\x00 lone\ud800 pair\U0001f642"
    job = finished(result={"content": text}, metadata={"k\x00": text})
    message = {"role": "assistant", "content": text}
    events = [
        (1, EventType.DELTA, _chunk(message, finish_reason="stop")),
        (2, EventType.DONE, None),
    ]
    history.write([row_values(job, events)])
    read = history.get(job.id)
    assert read is not None
    assert read.result == {"content": text} and read.metadata == {"k\x00": text}
    assert history.events(job.id, 0) == [
        Event(1, "delta", dumps_bytes(_chunk(message, finish_reason="stop"))),
        Event(2, "done", dumps(job_object(job)).encode()),
    ]


def _expected_events(job: JobRecord) -> list[Event]:
    return [
        Event(
            number,
            kind,
            dumps(job_object(job)).encode()
            if kind == EventType.DONE
            else dumps_bytes(data),
        )
        for number, kind, data in compact(exact_log(job))
    ]


def test_events_are_the_compacted_log_after_an_id(history: JobHistory) -> None:
    job = finished()
    history.write([row(job)])
    whole = compact(exact_log(job))[2][2]
    done = dumps(job_object(job)).encode()
    assert history.events(job.id, 0) == [
        Event(1, "status", b'{"status":"queued"}'),
        Event(2, "status", b'{"status":"running"}'),
        Event(4, "delta", dumps_bytes(whole)),
        Event(5, "status", b'{"status":"succeeded"}'),
        Event(6, "done", done),
    ]
    assert whole["choices"][0]["delta"]["content"] == "héllo 🙂"
    # The done event's job object is the one Redis's exact log ended with.
    assert done == exact_log(job)[-1].data
    assert history.events(job.id, 2) == [
        Event(4, "delta", dumps_bytes(whole)),
        Event(5, "status", b'{"status":"succeeded"}'),
        Event(6, "done", done),
    ]
    assert history.events(job.id, 4) == history.events(job.id, 3)[1:]
    assert history.events(job.id, 6) == []
    assert history.events("job_missing", 0) == []


def _cursor(job: JobRecord) -> tuple[int, str]:
    return created_ms(job), job.id


def _newest_first(jobs: list[JobRecord]) -> list[str]:
    return [job.id for job in sorted(jobs, key=_cursor, reverse=True)]


def test_page_lists_an_owners_jobs_newest_first_by_cursor(history: JobHistory) -> None:
    owner, stranger = f"k-{uuid.uuid4().hex[:8]}", f"k-{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex[:8]
    jobs = [
        finished(owner, f"job_{tag}_{n:02d}", created_at=CREATED + 7.3 * n)
        for n in range(6)
    ]
    # Three jobs in one millisecond, their ids against their created_at order:
    # the list orders them by id, newest-looking id first.
    tied = [
        finished(owner, f"job_{tag}_t{name}", created_at=1764800020.1230 + at)
        for name, at in (("a", 0.0008), ("c", 0.0002), ("b", 0.0005))
    ]
    assert len({created_ms(job) for job in tied}) == 1
    failed = [
        finished(
            owner,
            f"job_{tag}_f{n}",
            created_at=CREATED + 3.1 * n,
            status=JobStatus.FAILED,
            result=None,
            error={"code": "upstream_error", "message": "no"},
        )
        for n in range(3)
    ]
    others = [finished(stranger, created_at=CREATED + n) for n in range(5)]
    mine = jobs + tied + failed
    history.write([row(job) for job in others + mine])

    listed = history.page(owner, None, None, 100)
    assert [job.id for job in listed] == _newest_first(mine)
    tied_ids = {job.id for job in tied}
    at_tie = [job.id for job in listed if job.id in tied_ids]
    assert at_tie == [f"job_{tag}_tc", f"job_{tag}_tb", f"job_{tag}_ta"]
    assert all(job.owner == owner for job in listed)

    # Pages of two: every job once, in order, ties split across pages included.
    seen: list[str] = []
    before: tuple[int, str] | None = None
    while True:
        page = history.page(owner, None, before, 2)
        assert len(page) <= 2
        if not page:
            break
        seen += [job.id for job in page]
        before = _cursor(page[-1])
    assert seen == _newest_first(mine)

    # The cursor excludes itself and everything newer.
    for at, job in enumerate(listed):
        after = history.page(owner, None, _cursor(job), 100)
        assert [j.id for j in after] == [j.id for j in listed[at + 1 :]]

    assert [job.id for job in history.page(owner, JobStatus.FAILED, None, 100)] == (
        _newest_first(failed)
    )
    newest_failed = history.page(owner, JobStatus.FAILED, None, 1)
    assert [job.id for job in newest_failed] == _newest_first(failed)[:1]
    rest = history.page(owner, JobStatus.FAILED, _cursor(newest_failed[0]), 100)
    assert [job.id for job in rest] == _newest_first(failed)[1:]
    assert history.page(owner, JobStatus.CANCELLED, None, 100) == []
    assert [job.id for job in history.page(stranger, None, None, 100)] == (
        _newest_first(others)
    )
    assert history.page("k-nobody", None, None, 100) == []


def test_page_reads_back_what_was_written(history: JobHistory) -> None:
    job = finished(f"k-{uuid.uuid4().hex[:8]}")
    history.write([row(job)])
    (listed,) = history.page(job.owner, None, None, 10)
    assert job_object(listed) == job_object(job)
    assert listed.created_at == job.created_at


def test_purge_deletes_only_jobs_finished_before_the_cutoff(
    history: JobHistory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history_module, "PURGE_BATCH", 3)
    cutoff = CREATED + 1000.5
    old = [
        finished(created_at=CREATED + n, finished_at=cutoff - 1 - n) for n in range(10)
    ]
    just_before = finished(created_at=CREATED, finished_at=cutoff - 1e-6)
    at_cutoff = finished(created_at=CREATED, finished_at=cutoff)
    young = [finished(created_at=CREATED, finished_at=cutoff + n) for n in range(1, 5)]
    history.write([row(job) for job in old + [just_before, at_cutoff] + young])

    assert history.purge(cutoff) == len(old) + 1
    for job in old + [just_before]:
        assert history.get(job.id) is None
        assert history.events(job.id, 0) == []
    for job in [at_cutoff, *young]:
        assert history.get(job.id) is not None
    assert count(history, *(job.id for job in [at_cutoff, *young])) == 5
    assert history.purge(cutoff) == 0


def test_purge_of_exactly_a_batch_multiple(
    history: JobHistory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history_module, "PURGE_BATCH", 2)
    old = [finished(finished_at=CREATED + n) for n in range(6)]
    history.write([row(job) for job in old])
    assert history.purge(CREATED + 100) == 6
    assert count(history, *(job.id for job in old)) == 0
    assert history.purge(CREATED + 100) == 0
