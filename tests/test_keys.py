"""API keys: admin API, flask CLI, and the key store on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
import uuid
from pathlib import Path

import openai
import pytest
import requests
import sqlalchemy

from common.accounts.models import digest
from common.accounts.pricing import MICRO
from common.accounts.requests import KEY_LIMIT_MAX, KEY_MONEY_MAX
from common.accounts.store import KeyStore
from common.db.engine import make_engine
from common.jobs.history import JobHistory
from tests.conftest import (
    ADMIN,
    ROOT,
    RedisServer,
    Stack,
    base_env,
    start_retention,
    start_web,
    start_worker,
    stop_process,
    wait_until,
)


@pytest.fixture
def store(key_store: KeyStore) -> KeyStore:
    return key_store


def test_a_created_key_authenticates_and_is_stored_only_hashed(store: KeyStore) -> None:
    row, raw = store.create(f"k-{uuid.uuid4().hex[:6]}", models=["sim-model"], rpm=60)
    identity = store.authenticate(raw)
    assert identity is not None and identity.id == row.id
    assert identity.models == ("sim-model",)
    with store.engine.connect() as conn:
        stored = (
            conn.execute(
                sqlalchemy.text("select * from api_keys where id = :id"), {"id": row.id}
            )
            .mappings()
            .one()
        )
    assert raw not in [str(v) for v in stored.values()]
    assert store.authenticate(raw + "x") is None


def test_revoked_and_expired_keys_do_not_authenticate(store: KeyStore) -> None:
    row, raw = store.create("revoke-me")
    assert store.revoke(row.id) is not None
    assert store.authenticate(raw) is None
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    _, expired = store.create("expired", expires_at=past)
    assert store.authenticate(expired) is None
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    _, live = store.create("live", expires_at=future)
    assert store.authenticate(live) is not None


def test_a_key_cached_by_one_process_fails_once_another_revokes_it(
    store: KeyStore,
) -> None:
    other_process = KeyStore(store.engine, store.redis)
    row, raw = store.create("cached")
    assert store.authenticate(raw) is not None  # now cached here
    other_process.revoke(row.id)
    assert store.authenticate(raw) is None


def test_a_key_trusted_from_cache_carries_the_generation_it_was_checked_at(
    store: KeyStore,
) -> None:
    """``fresh=False`` skips the counter; ``recheck`` is what a stale submit calls."""
    other_process = KeyStore(store.engine, store.redis)
    row, raw = store.create("trusted")
    checked = store.authenticate(raw)
    assert checked is not None and checked.digest == digest(raw)
    revoked, _ = store.create("revoked")
    other_process.revoke(revoked.id)
    trusted = store.authenticate(raw, fresh=False)
    assert trusted == checked, "fresh=False must not read the counter"
    again = store.recheck(checked)
    assert again is not None and again.id == row.id
    assert again.generation != checked.generation
    assert store.authenticate(raw, fresh=False) == again  # the cache moved on
    other_process.revoke(row.id)
    assert store.recheck(again) is None
    assert store.authenticate(raw, fresh=False) is None  # dropped from the cache


def test_list_and_get_show_keys_without_the_key(store: KeyStore) -> None:
    row, raw = store.create("listed")
    assert row.id in {r.id for r in store.list()}
    shown = store.get(row.id)
    assert shown is not None and raw not in str(shown.to_dict())
    assert store.get("key_missing") is None and store.revoke("key_missing") is None


def test_admin_reads_money_exactly_from_the_json_text(stack: Stack) -> None:
    body = b'{"name": "exact", "balance": 999999999999.999999, "daily_free": 0.1}'
    resp = requests.post(
        f"{stack.url}/admin/keys",
        data=body,
        headers={**ADMIN, "Content-Type": "application/json"},
        timeout=10,
    )
    assert resp.status_code == 201, resp.text
    created = resp.json()
    assert (created["balance"], created["daily_free"]) == ("999999999999.999999", "0.1")
    as_text = requests.post(
        f"{stack.url}/admin/keys",
        json={"name": "text", "balance": "12.5"},
        headers=ADMIN,
        timeout=10,
    )
    assert as_text.json()["balance"] == "12.5"


def test_admin_creates_a_key_with_201_and_shows_it_once(stack: Stack) -> None:
    resp = requests.post(
        f"{stack.url}/admin/keys",
        json={"name": "svc", "balance": 10, "rpm": 5, "models": ["sim-model"]},
        headers=ADMIN,
        timeout=10,
    )
    assert resp.status_code == 201
    created = resp.json()
    assert {"id", "key", "name"} <= set(created) and created["name"] == "svc"
    # Money is shown as a decimal string (API.md section 8).
    assert created["balance"] == "10" and created["rpm"] == 5
    listed = requests.get(f"{stack.url}/admin/keys", headers=ADMIN, timeout=10).json()[
        "data"
    ]
    assert created["id"] in {k["id"] for k in listed}
    assert created["key"] not in str(listed)
    one = requests.get(
        f"{stack.url}/admin/keys/{created['id']}", headers=ADMIN, timeout=10
    )
    assert one.status_code == 200 and "key" not in one.json()


def test_admin_routes_need_the_admin_key(stack: Stack, api_key: str) -> None:
    none = requests.get(f"{stack.url}/admin/keys", timeout=10)
    ordinary = requests.get(
        f"{stack.url}/admin/keys",
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=10,
    )
    assert none.status_code == 401 and none.json()["error"]["code"] == "unauthorized"
    assert (
        ordinary.status_code == 403 and ordinary.json()["error"]["code"] == "forbidden"
    )


def test_admin_rejects_a_bad_key_request(stack: Stack) -> None:
    resp = requests.post(
        f"{stack.url}/admin/keys",
        json={"name": "", "rpm": 0},
        headers=ADMIN,
        timeout=10,
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_params"
    missing = requests.delete(
        f"{stack.url}/admin/keys/key_missing", headers=ADMIN, timeout=10
    )
    assert missing.status_code == 404


@pytest.mark.parametrize(
    "fields",
    [
        {"rpm": 2**63},  # beyond SQLite's INTEGER: was a 500
        {"tpm": 2**31},  # beyond PostgreSQL's integer: was a 503
        {"concurrency": 10**30},
        {"balance": 10**12},  # 10**12 to PostgreSQL: was a 503
        {"balance": "1000000000000"},
        {"balance": 12.5000001},  # finer than a micro-unit
        {"balance": -1},
        {"daily_free": 1e308},
        {"expires_at": "9999-12-31T23:59:59-05:00"},  # no UTC time: was a 500
        {"expires_at": "0001-01-01T00:00:00+05:00"},
    ],
    ids=str,
)
def test_admin_refuses_a_key_its_columns_cannot_hold(
    stack: Stack, fields: dict[str, object]
) -> None:
    resp = requests.post(
        f"{stack.url}/admin/keys",
        json={"name": "too-big", **fields},
        headers=ADMIN,
        timeout=10,
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "invalid_params"
    assert resp.json()["error"]["param"] == next(iter(fields))


def test_a_key_at_the_request_bounds_fits_its_columns(store: KeyStore) -> None:
    """What KeyCreateRequest admits the columns hold, on either database."""
    most = {"rpm": KEY_LIMIT_MAX, "tpm": KEY_LIMIT_MAX, "concurrency": KEY_LIMIT_MAX}
    money = KEY_MONEY_MAX * MICRO + MICRO - 1  # 999999999999.999999
    row, _ = store.create(
        "at-bounds",
        balance=money,
        daily_free=money,
        expires_at=dt.datetime(9999, 12, 31, 23, 59, 59),
        **most,
    )
    stored = store.get(row.id)
    assert stored is not None and stored.balance_micro == money
    assert stored.to_dict()["balance"] == "999999999999.999999"
    assert stored.rpm == stored.tpm == stored.concurrency == KEY_LIMIT_MAX


def _flask(env: dict[str, str], *args: str, app: str = "web") -> str:
    """``flask --app web keys ...``, as API.md and the README spell it."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "flask"), "--app", app, "keys", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


def test_flask_cli_creates_lists_and_revokes_keys(stack: Stack) -> None:
    key_id, name, raw = _flask(stack.env, "create", "--name", "cli-key").split("\t")
    assert name == "cli-key" and raw.startswith("llmq-")
    auth = {"Authorization": f"Bearer {raw}"}
    assert (
        requests.get(f"{stack.url}/v1/models", headers=auth, timeout=10).status_code
        == 200
    )
    assert any(
        line.startswith(key_id) and line.endswith("\tactive\tunmetered")
        for line in _flask(stack.env, "list").splitlines()
    )
    assert _flask(stack.env, "revoke", key_id) == f"revoked {key_id}"
    assert (
        requests.get(f"{stack.url}/v1/models", headers=auth, timeout=10).status_code
        == 401
    )
    quiet = _flask(stack.env, "create", "--name", "q", "--quiet")
    assert quiet.startswith("llmq-") and "\t" not in quiet


def test_the_cli_also_answers_at_the_factory_module(stack: Stack) -> None:
    assert _flask(stack.env, "create", "--name", "q", "--quiet", app="web.app")


def test_importing_web_imports_nothing_else() -> None:
    """gunicorn's master imports web.server before its workers patch for gevent."""
    names = "('flask', 'redis', 'celery', 'gevent')"
    code = f"import sys, web; print(sorted(m for m in {names} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


def test_the_whole_stack_runs_on_postgresql(
    postgres_url: str,
    catalog_path: Path,
    logdir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    redis_server = RedisServer(tmp_path_factory.mktemp("pg-redis"))
    redis_server.start()
    env = base_env(redis_server.url, catalog_path, postgres_url)
    worker = start_worker(env, logdir, "pg-worker")
    url, web = start_web(env, logdir, "pg-web")
    retention = start_retention(env, logdir, "pg-retention")
    try:
        pg_stack = Stack(url, env, redis_server.url)
        key = pg_stack.key()
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        raw = sdk.chat.completions.with_raw_response.create(
            model="sim-model", messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.parse().choices[0].message.content
        # The finished job reaches PostgreSQL's jobs table (its history).
        history = JobHistory(make_engine(postgres_url))
        job_id = raw.headers["X-Job-Id"]
        wait_until(lambda: history.get(job_id), 15, "the job in the jobs table")
        history.engine.dispose()
        engine = make_engine(postgres_url)
        with engine.connect() as conn:
            count = conn.execute(
                sqlalchemy.text("select count(*) from api_keys where key_hash = :h"),
                {
                    "h": __import__(
                        "common.accounts.models", fromlist=["digest"]
                    ).digest(key)
                },
            ).scalar()
        engine.dispose()
        assert count == 1
    finally:
        stop_process(retention)
        stop_process(web)
        stop_process(worker)
        redis_server.stop()


_CREATE_AT_ONCE = """
import sys, time
from common.db.engine import make_engine
from common.db.migrate import migrate
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
migrate(make_engine(sys.argv[1]))
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_web_processes_creating_the_schema_at_once_all_start(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Gunicorn's workers boot together on a fresh database; none may fail."""
    schema = f"boot_{uuid.uuid4().hex[:12]}"
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    else:
        base = request.getfixturevalue("postgres_url")
        engine = make_engine(base)
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"create schema {schema}"))
        engine.dispose()
        url = f"{base}?options=-csearch_path%3D{schema}"
    start = f"{time.time() + 1.5:.3f}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CREATE_AT_ONCE, url, start],
            cwd=ROOT,
            stderr=subprocess.PIPE,
        )
        for _ in range(6)
    ]
    failures = [p.communicate(timeout=60)[1] for p in procs if p.wait(60) != 0]
    if backend == "postgresql":
        engine = make_engine(request.getfixturevalue("postgres_url"))
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"drop schema {schema} cascade"))
        engine.dispose()
    assert not failures, failures[0].decode()[-2000:]
