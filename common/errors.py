"""The gateway's exception tree: every error a client can see has one class here.

    GatewayError                      root; carries code, HTTP status, message, param
    ├── InvalidRequestError           400 invalid_params
    │   ├── InvalidJSONError          400 invalid_json
    │   ├── InvalidMessagesError      400 invalid_messages
    │   ├── InvalidModelError         400 invalid_model
    │   └── MethodNotAllowedError     405 method_not_allowed
    ├── PayloadTooLargeError          413 payload_too_large
    ├── UnauthorizedError             401 unauthorized
    ├── ForbiddenError                403 forbidden
    ├── NotFoundError                 404 not_found
    ├── RateLimitedError              429 rate_limited (a key's rpm/tpm/concurrency)
    ├── ConflictError                 409 conflict
    ├── JobCancelledError             409 cancelled (a waited-on job was cancelled)
    ├── UnavailableError              503 unavailable (Redis or the database)
    └── ProviderError                 502 upstream_error; the upstream failed
        ├── ProviderRejectedError     502 the provider refused the request (4xx)
        ├── ProviderBadResponseError  502 the provider answered something unparseable
        ├── ProviderUnavailableError  502 connection failure or 5xx (retryable)
        ├── ProviderRateLimitedError  502 the provider said 429 (retryable)
        └── ProviderTimeoutError      504 timeout (retryable)

Retryability is the class attribute ``retryable``; workers never inspect messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from common.limits import Admission

#: OpenAI's error ``type`` for each HTTP status we answer.
_OPENAI_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class GatewayError(Exception):
    """Root of every error the gateway reports to a client."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    @property
    def type(self) -> str:
        """OpenAI's error ``type`` for this error."""
        return _OPENAI_TYPES.get(self.status, "api_error")

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI error body's inner object."""
        return {
            "message": self.message,
            "type": self.type,
            "code": self.code,
            "param": self.param,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GatewayError:
        """Rebuild a stored error (a job's ``error`` field) as the matching class."""
        code = str(data.get("code") or "")
        klass = _BY_CODE.get(code, ProviderError)
        return klass(str(data.get("message") or code), param=data.get("param"))


class InvalidRequestError(GatewayError):
    code = "invalid_params"
    status = 400


class InvalidJSONError(InvalidRequestError):
    code = "invalid_json"


class InvalidMessagesError(InvalidRequestError):
    code = "invalid_messages"


class InvalidModelError(InvalidRequestError):
    code = "invalid_model"


class MethodNotAllowedError(InvalidRequestError):
    code = "method_not_allowed"
    status = 405


class PayloadTooLargeError(GatewayError):
    code = "payload_too_large"
    status = 413


class UnauthorizedError(GatewayError):
    code = "unauthorized"
    status = 401


class ForbiddenError(GatewayError):
    code = "forbidden"
    status = 403


class InsufficientQuotaError(GatewayError):
    """The key's money left does not cover the request's input and one unit out
    (seed 003: 403); ``balance_micro`` is for the answer's X-Account-Balance."""

    code = "insufficient_quota"
    status = 403

    def __init__(self, balance_micro: int) -> None:
        super().__init__(
            "this key's balance and free allowance do not cover the request"
        )
        self.balance_micro = balance_micro


class NotFoundError(GatewayError):
    code = "not_found"
    status = 404


class RateLimitedError(GatewayError):
    """A key's limit is used up; ``admission`` is its state, for the answer's
    ``x-ratelimit-*`` headers (written by the web)."""

    code = "rate_limited"
    status = 429

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        admission: Admission | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, param=param)
        self.retry_after = retry_after
        self.admission = admission


class ConflictError(GatewayError):
    code = "conflict"
    status = 409


class JobCancelledError(GatewayError):
    code = "cancelled"
    status = 409


class UnavailableError(GatewayError):
    code = "unavailable"
    status = 503


class ProviderError(GatewayError):
    code = "upstream_error"
    status = 502


class ProviderRejectedError(ProviderError):
    pass


class ProviderBadResponseError(ProviderError):
    pass


class ProviderUnavailableError(ProviderError):
    retryable = True


class ProviderRateLimitedError(ProviderError):
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, param=param)
        self.retry_after = retry_after


class ProviderTimeoutError(ProviderError):
    code = "timeout"
    status = 504
    retryable = True


_BY_CODE: dict[str, type[GatewayError]] = {
    klass.code: klass
    for klass in (
        InvalidRequestError,
        InvalidJSONError,
        InvalidMessagesError,
        InvalidModelError,
        PayloadTooLargeError,
        UnauthorizedError,
        ForbiddenError,
        NotFoundError,
        ConflictError,
        JobCancelledError,
        UnavailableError,
        ProviderError,
        ProviderTimeoutError,
    )
}
