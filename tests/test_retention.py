"""Redis holds live work, the database holds history (API.md section 5).

A stack whose replay window is two seconds: a job read before and after its
window, the list across Redis and the database, a database that is down when
jobs finish, and the state a worker killed between its database write and its
Redis confirmation leaves behind.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import sqlalchemy
from sqlalchemy.engine import make_url

from common.db.engine import make_engine
from common.db.migrate import migrate
from common.jobs.compaction import compact
from common.jobs.events import EventLog, Hub
from common.jobs.history import JobHistory, JobRow, row_values
from common.jobs.lifecycle import finish_job
from common.jobs.model import EventType, JobStatus
from common.jobs.retention import Retention
from common.jobs.store import JobStore
from common.jsoncodec import dumps
from common.limits import Limiter
from common.redis import keys
from tests.conftest import (
    RedisServer,
    Stack,
    base_env,
    chat_body,
    job_fields,
    sse_events,
    start_retention,
    start_web,
    start_worker,
    stop_process,
    wait_until,
)
from tests.databases import fresh_postgres
from tests.tcp_proxy import TcpProxy

#: The replay window of these stacks.
WINDOW_SECONDS = 2


@contextlib.contextmanager
def short_window_stack(
    name: str,
    database_url: str,
    catalog: Path,
    logdir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """Web and worker on a Redis of their own, with a two-second replay window."""
    server = RedisServer(tmp_path_factory.mktemp(f"{name}-redis"))
    server.start()
    env = {
        **base_env(server.url, catalog, database_url),
        "LLMQ_EVENTS_TTL_SECONDS": str(WINDOW_SECONDS),
    }
    worker = start_worker(env, logdir, f"{name}-worker")
    url, web = start_web(env, logdir, f"{name}-web")
    retention = start_retention(env, logdir, f"{name}-retention")
    try:
        yield Stack(url, env, server.url)
    finally:
        stop_process(retention)
        stop_process(web)
        stop_process(worker)
        server.stop()


@pytest.fixture(scope="module")
def windowed(
    catalog_path: Path, logdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    db = tmp_path_factory.mktemp("windowed-db") / "llmq.sqlite3"
    with short_window_stack(
        "windowed", f"sqlite:///{db}", catalog_path, logdir, tmp_path_factory
    ) as stack:
        yield stack


def _auth(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.key()}"}


def _submit(stack: Stack, auth: dict[str, str], **fake: Any) -> str:
    resp = requests.post(
        f"{stack.url}/v1/jobs",
        json=chat_body(fake={"tokens": 3, **fake}),
        headers=auth,
        timeout=10,
    )
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def _job(stack: Stack, auth: dict[str, str], job_id: str, wait: int = 0) -> Any:
    resp = requests.get(
        f"{stack.url}/v1/jobs/{job_id}",
        params={"wait": wait} if wait else None,
        headers=auth,
        timeout=wait + 10,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def _events(
    stack: Stack, auth: dict[str, str], job_id: str, after: int | None = None
) -> list[dict[str, str]]:
    headers = {**auth, **({"Last-Event-ID": str(after)} if after else {})}
    with requests.get(
        f"{stack.url}/v1/jobs/{job_id}/events", headers=headers, stream=True, timeout=20
    ) as resp:
        assert resp.status_code == 200, resp.text
        return [e for e in sse_events(resp) if "comment" not in e]


def _in_redis(stack: Stack, job_id: str) -> bool:
    client = redis.Redis.from_url(stack.redis_url)
    return bool(client.exists(keys.job_key(job_id), keys.events_key(job_id)))


def _dropped(stack: Stack, *job_ids: str) -> None:
    wait_until(
        lambda: not any(_in_redis(stack, j) for j in job_ids),
        WINDOW_SECONDS + 15,
        "the jobs' Redis copies to be dropped after their window",
    )


def _all_pages(
    stack: Stack, auth: dict[str, str], limit: int, pause: float
) -> list[str]:
    ids: list[str] = []
    after = None
    while True:
        page = requests.get(
            f"{stack.url}/v1/jobs",
            params={"limit": limit, **({"after": after} if after else {})},
            headers=auth,
            timeout=10,
        ).json()
        ids += [job["id"] for job in page["data"]]
        if not page["has_more"]:
            return ids
        after = page["last_id"]
        time.sleep(pause)


def test_a_job_reads_the_same_after_its_window_with_its_log_compacted(
    windowed: Stack,
) -> None:
    auth = _auth(windowed)
    job_id = _submit(windowed, auth, tokens=6)
    before = _job(windowed, auth, job_id, wait=10)
    assert before["status"] == "succeeded"
    exact = _events(windowed, auth, job_id)
    deltas = [e for e in exact if e["event"] == EventType.DELTA]
    assert len(deltas) >= 1 and exact[-1]["event"] == EventType.DONE

    _dropped(windowed, job_id)
    after = _job(windowed, auth, job_id)
    assert after == before
    assert _job(windowed, auth, job_id, wait=5) == before

    compacted = _events(windowed, auth, job_id)
    statuses = [e for e in exact if e["event"] == EventType.STATUS]
    assert [e for e in compacted if e["event"] == EventType.STATUS] == statuses
    [whole] = [e for e in compacted if e["event"] == EventType.DELTA]
    assert whole["id"] == deltas[-1]["id"]
    text = "".join(
        c["delta"].get("content") or ""
        for d in deltas
        for c in json.loads(d["data"])["choices"]
    )
    chunk = json.loads(whole["data"])
    assert chunk["object"] == "chat.completion.chunk"
    assert chunk["choices"][0]["delta"]["content"] == text
    assert text == before["result"]["choices"][0]["message"]["content"]
    assert compacted[-1]["event"] == EventType.DONE
    assert compacted[-1]["id"] == exact[-1]["id"]
    assert json.loads(compacted[-1]["data"]) == json.loads(exact[-1]["data"])
    # Resuming replays only what follows, compacted as well.
    rest = _events(windowed, auth, job_id, after=int(statuses[-1]["id"]))
    assert rest == compacted[len(statuses) :]
    assert _events(windowed, auth, job_id, after=int(whole["id"])) == compacted[-1:]

    other = _auth(windowed)
    resp = requests.get(f"{windowed.url}/v1/jobs/{job_id}", headers=other, timeout=5)
    assert resp.status_code == 404
    resp = requests.get(
        f"{windowed.url}/v1/jobs/{job_id}/events", headers=other, timeout=5
    )
    assert resp.status_code == 404


def test_the_list_spans_redis_and_the_database_without_duplicates_or_gaps(
    windowed: Stack,
) -> None:
    auth = _auth(windowed)
    old = [_submit(windowed, auth, tokens=1) for _ in range(5)]
    for job_id in old:
        _job(windowed, auth, job_id, wait=10)
    _dropped(windowed, *old)
    new = [_submit(windowed, auth, tokens=1) for _ in range(5)]
    for job_id in new:
        _job(windowed, auth, job_id, wait=10)
    everyone = (old + new)[::-1]
    # At once: some in Redis only, some in both, the first five in the database.
    assert _all_pages(windowed, auth, limit=3, pause=0) == everyone
    # Page by page while the window closes on the new ones mid-way.
    assert _all_pages(windowed, auth, limit=2, pause=0.6) == everyone
    _dropped(windowed, *new)
    assert _all_pages(windowed, auth, limit=4, pause=0) == everyone
    done = requests.get(
        f"{windowed.url}/v1/jobs",
        params={"status": "succeeded", "limit": 100},
        headers=auth,
        timeout=10,
    ).json()
    assert [job["id"] for job in done["data"]] == everyone
    assert _all_pages(windowed, _auth(windowed), limit=3, pause=0) == []


def test_a_database_outage_keeps_finished_jobs_in_redis_until_it_returns(
    catalog_path: Path, logdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with fresh_postgres() as url:
        database = make_url(url)
        proxy = TcpProxy((database.host or "127.0.0.1", database.port or 5432))
        proxy.start()
        through = str(database.set(host="127.0.0.1", port=proxy.port))
        with short_window_stack(
            "outage", through, catalog_path, logdir, tmp_path_factory
        ) as stack:
            auth = _auth(stack)
            _job(stack, auth, _submit(stack, auth, tokens=1), wait=10)  # key cached
            proxy.stop()
            ids = [_submit(stack, auth, tokens=2) for _ in range(3)]
            finished = [_job(stack, auth, job_id, wait=10) for job_id in ids]
            assert {job["status"] for job in finished} == {"succeeded"}
            time.sleep(WINDOW_SECONDS + 2)
            assert all(_in_redis(stack, job_id) for job_id in ids)
            assert [_job(stack, auth, job_id) for job_id in ids] == finished

            proxy.start()
            _dropped(stack, *ids)
            assert [_job(stack, auth, job_id) for job_id in ids] == finished
            engine = make_engine(url)
            with engine.connect() as conn:
                count = conn.scalar(
                    sqlalchemy.select(sqlalchemy.func.count())
                    .select_from(JobRow.__table__)
                    .where(JobRow.id.in_(ids))
                )
            engine.dispose()
            assert count == 3
        proxy.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_worker_killed_between_its_database_write_and_redis_is_written_once(
    backend: str, own_redis: RedisServer, tmp_path: Path
) -> None:
    """The state such a worker leaves: the job's row committed, the job still
    unwritten in Redis under a claim that lapses. The next writer writes it
    again (nothing changes), confirms it, and its copy is dropped in time."""
    with contextlib.ExitStack() as stack:
        url = (
            f"sqlite:///{tmp_path / 'llmq.sqlite3'}"
            if backend == "sqlite"
            else stack.enter_context(fresh_postgres())
        )
        engine = make_engine(url)
        stack.callback(engine.dispose)
        migrate(engine)
        client = redis.Redis.from_url(own_redis.url)
        store = JobStore(client, 3600)
        job_id = f"job_{uuid.uuid4().hex}"
        store.create(job_fields(job_id))
        job, _ = store.start(job_id, "run1", 30)
        assert job is not None
        final, done = finish_job(
            store,
            Limiter(client),
            job,
            JobStatus.SUCCEEDED,
            expected=(JobStatus.RUNNING,),
            fields={"result": {"answer": 42}},
            events=[(EventType.DELTA, dumps({"choices": []}))],
            lease=("drop", "run1"),
        )
        assert done.applied
        history = JobHistory(engine)
        retention = Retention(client, history, events_ttl_seconds=1, job_ttl_seconds=0)

        # The killed worker: it claimed the job and committed its row, then died.
        assert client.zscore(keys.HISTORY_UNWRITTEN_KEY, job_id) is not None
        retention._claim(keys=[keys.HISTORY_UNWRITTEN_KEY], args=[10, 1])
        log = EventLog(client, Hub(client)).read(job_id, 0)
        history.write([row_values(final, compact(log))])
        written = history.get(job_id)
        time.sleep(0.01)  # the claim (1 ms) lapses

        retention.run_once()
        assert history.get(job_id) == written
        assert client.zscore(keys.HISTORY_UNWRITTEN_KEY, job_id) is None
        assert client.zscore(keys.HISTORY_WRITTEN_KEY, f"{job_id} {final.owner}")
        wait_until(
            lambda: (
                retention.drop_expired() >= 0
                and not client.exists(keys.job_key(job_id))
            ),
            5,
            "the job's Redis copy to be dropped after its window",
        )
        with engine.connect() as conn:
            count = conn.scalar(
                sqlalchemy.select(sqlalchemy.func.count())
                .select_from(JobRow.__table__)
                .where(JobRow.id == job_id)
            )
        assert count == 1
        assert history.events(job_id, 0)[-1].type == EventType.DONE
