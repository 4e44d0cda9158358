"""Who is calling: API keys from headers (or an envelope body), and the admin key."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, g, request

from common.accounts.models import KeyIdentity
from common.errors import (
    ForbiddenError,
    InvalidJSONError,
    PayloadTooLargeError,
    UnauthorizedError,
)
from web.context import services


def _header_key() -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("X-API-Key") or None


def load_json_body() -> None:
    """Parse a JSON body once, so validation and views share it.

    Raises:
        InvalidJSONError: the body is not JSON or not an object.
        RequestEntityTooLarge: the body is over the configured limit.
    """
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    data = request.get_data(cache=True)
    if not data:
        return
    _refuse_a_cut_chunked_body(len(data))
    if request.mimetype.startswith("multipart/"):
        return
    # The app's JSON provider (common.jsoncodec.loads_request) raises
    # InvalidJSONError itself; the value is cached for validation and views.
    body = request.get_json(force=True)
    if not isinstance(body, dict):
        raise InvalidJSONError("the body must be a JSON object")


def _refuse_a_cut_chunked_body(read: int) -> None:
    """413 for a chunked body longer than the limit.

    A body without Content-Length is read up to ``MAX_CONTENT_LENGTH`` and then
    simply ends (werkzeug's limited stream stops there without an error), so a
    longer one would reach the JSON parser cut short. One more byte tells.
    """
    limit = request.max_content_length
    if request.content_length is None and limit is not None and read >= limit:
        if request.environ["wsgi.input"].read(1):
            raise PayloadTooLargeError("the request body is too large")


View = TypeVar("View", bound=Callable[..., Any])


def checked_by_submit(view: View) -> View:
    """Mark a view that submits a job: its key is checked by the submit's own write.

    Its hook then trusts a cached key without reading the keys' generation
    counter; the script that stores the job compares it (one round trip fewer
    per submit; a revoked key still fails at once, see common/accounts/store.py).
    """
    view.key_checked_by_submit = True  # type: ignore[attr-defined]
    return view


def _identify(raw: str | None) -> KeyIdentity:
    if not raw:
        raise UnauthorizedError("missing API key")
    view = current_app.view_functions.get(request.endpoint or "")
    fresh = not getattr(view, "key_checked_by_submit", False)
    identity = services().keys.authenticate(raw, fresh=fresh)
    if identity is None:
        raise UnauthorizedError("invalid API key")
    return identity


def require_key() -> None:
    """Blueprint hook: the key comes from ``Authorization`` or ``X-API-Key``."""
    g.caller = _identify(_header_key())
    load_json_body()


def require_key_streaming() -> None:
    """Blueprint hook for routes whose body is a file upload: the key from the
    headers, the body left unread (it is streamed by the view, never held whole
    in memory as ``load_json_body`` would)."""
    g.caller = _identify(_header_key())


def require_key_or_body() -> None:
    """Blueprint hook for envelope routes: the key may also be the body's api_key."""
    raw = _header_key()
    load_json_body()
    if raw is None and request.get_data(cache=True):
        body = request.get_json(silent=True, force=True)
        if isinstance(body, dict) and isinstance(body.get("api_key"), str):
            raw = body["api_key"]
    g.caller = _identify(raw)


def require_admin() -> None:
    """Blueprint hook for ``/admin``: only ``LLMQ_ADMIN_KEY`` passes."""
    raw = _header_key()
    admin = services().settings.admin_key
    if raw and admin and hmac.compare_digest(raw.encode(), admin.encode()):
        load_json_body()
        return
    _identify(raw)  # 401 for a missing or unknown key
    raise ForbiddenError("this route needs the admin key")


def caller() -> KeyIdentity:
    """The identity set by the blueprint's auth hook."""
    return g.caller  # type: ignore[no-any-return]
