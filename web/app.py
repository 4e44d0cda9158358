"""The Flask app factory: ``create_app`` builds the app with all its surfaces."""

from __future__ import annotations

import re
from typing import Any

from flask import Response, current_app, g, has_request_context, request
from flask.json.provider import DefaultJSONProvider
from flask_cors import CORS
from flask_openapi3 import Info, OpenAPI

from common.accounts.billing import Billing
from common.accounts.pricing import format_money
from common.accounts.store import KeyStore
from common.batches.files import FileStore
from common.batches.progress import BatchProgress
from common.batches.results import Results
from common.batches.service import BatchService
from common.batches.store import BatchStore
from common.config import Settings, load_settings
from common.db.engine import make_engine
from common.db.migrate import migrate
from common.jobs.events import EventLog, Hub
from common.jobs.history import JobHistory
from common.jobs.service import JobService
from common.jobs.store import JobStore
from common.jsoncodec import dumps_bytes, loads_request
from common.limits import Limiter
from common.redis import socket_check
from common.redis.client import connect
from web import (
    account,
    admin,
    batches,
    chat,
    envelope,
    files,
    health,
    jobs,
    legacy,
    models,
)
from web.cli import keys_cli, usage_command
from web.context import Services
from web.errors import register_error_handlers, validation_error_response
from web.relay import drop_unfollowed
from workers.broker.messages import TaskMessages
from workers.celery_app import make_celery

#: Answer headers a page's script may read (API.md §1).
CORS_EXPOSED_HEADERS = (
    "X-Job-Id",
    "X-Account-Balance",
    "Retry-After",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)
#: Blueprints whose JSON numbers are read exactly (Decimal): they take money.
EXACT_NUMBER_BLUEPRINTS = frozenset({"admin"})
#: How long a browser may reuse a preflight's answer.
CORS_MAX_AGE_SECONDS = 600


class CompactJSONProvider(DefaultJSONProvider):
    """Answers written by ``common.jsoncodec`` (orjson), keys in the order built;
    request bodies read by its ``loads_request``, whichever code asks for them."""

    sort_keys = False
    ensure_ascii = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        # Admin bodies carry money: their numbers are read exactly.
        exact = has_request_context() and request.blueprint in EXACT_NUMBER_BLUEPRINTS
        return loads_request(s, exact_numbers=exact)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        body = dumps_bytes(self._prepare_response_obj(args, kwargs))
        return Response(body + b"\n", mimetype=self.mimetype)


def _services(settings: Settings) -> Services:
    client = connect(settings.redis_url, settings.redis_timeout_seconds)
    engine = make_engine(settings.database_url)
    migrate(engine)
    keys = KeyStore(engine, client)
    store, history = JobStore(client, settings.job_ttl_seconds), JobHistory(engine)
    jobs_service = JobService(
        store,
        EventLog(client, Hub(client)),
        settings.catalog,
        Limiter(client),
        TaskMessages(make_celery(settings)).run_job,
        keys,
        history,
        Billing(engine, client, settings.timezone, settings.catalog.total_timeouts()),
    )
    progress = BatchProgress(client)
    bulk = BatchService(
        FileStore(
            engine,
            settings.files_dir,
            settings.file_max_lines,
            settings.file_max_bytes,
        ),
        BatchStore(engine),
        progress,
        Results(progress, store, history),
    )
    return Services(settings, client, jobs_service, keys, bulk)


def _answer_preflight() -> Response | None:
    """Answer ``OPTIONS`` before the blueprints' key checks run.

    A browser's preflight never carries the key (nor any other header of the
    request it asks about), so the key hooks would refuse it with 401. An
    app-level hook runs before any blueprint's, and a response from it ends the
    request, with the CORS headers still added on the way out.
    """
    rule = request.url_rule
    if request.method == "OPTIONS" and getattr(
        rule, "provide_automatic_options", False
    ):
        return current_app.make_default_options_response()
    return None


def _enable_cors(app: OpenAPI, origins: tuple[str, ...]) -> None:
    """CORS on every route, for pages of ``origins`` (``*``: any page)."""
    CORS(
        app,
        # flask-cors reads a string with a regex character (an IPv6 host's
        # brackets) as a pattern matched by prefix: each origin is matched whole.
        origins="*"
        if origins == ("*",)
        else [re.compile(re.escape(o) + r"\Z", re.IGNORECASE) for o in origins],
        send_wildcard=True,  # for "*": the same answer for every page
        expose_headers=list(CORS_EXPOSED_HEADERS),
        max_age=CORS_MAX_AGE_SECONDS,
        # allow_headers stays "*": a preflight's requested headers are reflected,
        # so browser SDKs' own headers (OpenAI's x-stainless-*) pass too.
        always_send=False,  # no Origin, no CORS headers: other clients see none
    )
    app.before_request(_answer_preflight)


def _balance_header(response: Response) -> None:
    """``X-Account-Balance`` (seed 002) on every answer to a metered key, errors
    included: the balance after this request's hold, else as it is now."""
    caller = g.get("caller")
    if caller is None or not caller.metered:
        return
    balance = g.get("balance_micro")
    if balance is None:
        balance = current_app.extensions["llmq"].jobs.billing.balance(caller.id)
    if balance is not None:
        response.headers["X-Account-Balance"] = format_money(balance)


def create_app(settings: Settings | None = None) -> OpenAPI:
    """Build the web app; ``settings`` defaults to the environment's."""
    settings = settings or load_settings()
    socket_check.install()
    app = OpenAPI(
        __name__,
        info=Info(title="llmq", version="0.1.0"),
        validation_error_status=400,
        validation_error_callback=validation_error_response,
        doc_ui=False,
        static_folder=None,
    )
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json = CompactJSONProvider(app)
    app.extensions["llmq"] = _services(settings)
    register_error_handlers(app)
    _enable_cors(app, settings.cors_origins)
    surfaces = (health, chat, models, jobs, files, batches, envelope, legacy)
    for surface in (*surfaces, account, admin):
        app.register_api(surface.bp)
    app.cli.add_command(keys_cli)
    app.cli.add_command(usage_command)

    app.teardown_request(drop_unfollowed)

    @app.after_request
    def _job_headers(response: Response) -> Response:
        job_id = g.get("job_id")
        if job_id:
            response.headers.setdefault("X-Job-Id", job_id)
        for name, value in g.get("rate_headers", {}).items():
            response.headers.setdefault(name, value)
        _balance_header(response)
        return response

    return app
