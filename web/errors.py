"""Error handlers: every failure becomes the documented JSON body, never HTML.

OpenAI-style routes answer ``{"error": {...}}``; envelope routes (``/api/``,
``/ai_api/``) answer ``{"code", "message", "data": null}``.
"""

from __future__ import annotations

import logging
import math

import redis
from flask import Flask, Response, g, jsonify, request
from kombu.exceptions import OperationalError as BrokerError
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException

from common.errors import (
    GatewayError,
    InsufficientQuotaError,
    InvalidJSONError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    UnavailableError,
)
from common.schemas import to_gateway_error
from web.ratelimit import rate_limit_headers

log = logging.getLogger(__name__)

ENVELOPE_PREFIXES = ("/api/", "/ai_api/")


def is_envelope_route() -> bool:
    return request.path.startswith(ENVELOPE_PREFIXES)


def error_response(error: GatewayError) -> Response:
    """The error body for the current route's surface, with its status."""
    if is_envelope_route():
        body = {"code": error.status, "message": error.message, "data": None}
    else:
        body = {"error": error.to_dict()}
    response = jsonify(body)
    response.status_code = error.status
    return response


def validation_error_response(exc: ValidationError) -> Response:
    """flask-openapi3's hook: pydantic errors become our 400 codes."""
    return error_response(to_gateway_error(exc))


def _from_http(exc: HTTPException) -> GatewayError:
    if exc.code == 413:
        return PayloadTooLargeError("the request body is too large")
    if exc.code == 404:
        return NotFoundError(f"no route {request.path}")
    if exc.code == 405:
        return MethodNotAllowedError(
            f"{request.method} is not allowed on {request.path}"
        )
    if exc.code == 400:
        return InvalidJSONError("the body is not valid JSON")
    return InvalidRequestError(exc.description or "bad request")


def register_error_handlers(app: Flask) -> None:
    """Install the handlers for our errors, HTTP errors and dead backends."""

    @app.errorhandler(GatewayError)
    def _gateway(exc: GatewayError) -> Response:
        response = error_response(exc)
        if isinstance(exc, InsufficientQuotaError):
            g.balance_micro = exc.balance_micro
        if isinstance(exc, RateLimitedError):
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
            caller = g.get("caller")
            if caller is not None and exc.admission is not None:
                response.headers.update(rate_limit_headers(caller, exc.admission))
        return response

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        if exc.response is not None:  # flask-openapi3 aborts with a ready response
            return exc.response  # type: ignore[return-value]
        return error_response(_from_http(exc))

    @app.errorhandler(redis.RedisError)
    @app.errorhandler(BrokerError)
    @app.errorhandler(DBAPIError)
    def _backend_down(exc: Exception) -> Response:
        log.warning("backend unavailable: %s", type(exc).__name__)
        return error_response(UnavailableError("a backing service is unavailable"))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.path)
        error = GatewayError("internal error")
        return error_response(error)
