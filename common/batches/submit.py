"""Turning one batch request into a job, as ``POST /v1/jobs`` would, or into a
refusal with the error body a direct call would get.

The difference from a direct call: the request is paced by its provider's
limits here, before its job exists (``Limiter.reserve_bulk``), so the bulk
queue only ever holds requests that may call their provider at once; and it
does not count against its key's rpm, tpm or concurrency limits (the batch is
shared fairly with other keys' batches instead: common/batches/dispatcher.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from common.accounts.billing import Billing
from common.accounts.models import KeyIdentity
from common.accounts.store import KeyStore
from common.catalog import Catalog, ModelConfig
from common.errors import GatewayError, UnauthorizedError
from common.execution.provider_limits import provider_rates
from common.jobs.lifecycle import create_while_live, queued_fields
from common.jobs.model import TaskPush
from common.jobs.service import resolve_model
from common.jobs.store import JobStore
from common.limits import Limiter
from common.queues import QUEUE_BULK, Priority
from common.schemas import ChatRequest, to_gateway_error
from common.tokens import estimate_request_tokens


def revoked() -> UnauthorizedError:
    """What a request of a batch whose key was revoked (or deleted) gets."""
    return UnauthorizedError("the batch's API key was revoked")


@dataclass
class Prepared:
    """A request checked and bound to its model, waiting for its turn."""

    index: int
    offset: int
    next_offset: int
    custom_id: str
    job_id: str
    model: ModelConfig | None = None
    body: dict[str, Any] | None = None
    #: Why it is refused (then ``model`` and ``body`` are None).
    error: GatewayError | None = None

    @property
    def provider(self) -> str:
        return self.model.provider if self.model else ""


class LineSubmitter:
    """Checks, paces and creates batch requests' jobs."""

    def __init__(
        self,
        catalog: Catalog,
        keys: KeyStore,
        billing: Billing,
        store: JobStore,
        limiter: Limiter,
        task_message: Callable[[str, Priority], TaskPush],
    ) -> None:
        self.catalog = catalog
        self.keys = keys
        self.billing = billing
        self.store = store
        self.limiter = limiter
        self.task_message = task_message

    def prepare(
        self, caller: KeyIdentity | None, request: Prepared, line: dict[str, Any]
    ) -> None:
        """Check the request's body as a direct call's would be checked."""
        if caller is None:
            request.error = revoked()
            return
        try:
            chat = ChatRequest.model_validate(line.get("body"))
            request.model = resolve_model(self.catalog, caller, chat.model, None)
        except ValidationError as exc:
            request.error = to_gateway_error(exc)
            return
        except GatewayError as exc:
            request.error = exc
            return
        request.body = chat.upstream_body()

    def pace(self, request: Prepared) -> float:
        """Reserve the request's provider rates if free now; 0, else the wait."""
        assert request.model is not None and request.body is not None
        estimate = estimate_request_tokens(request.body)
        return self.limiter.reserve_bulk(
            provider_rates(self.catalog, request.model, estimate)
        )

    def hold(self, caller: KeyIdentity, request: Prepared) -> None:
        """Take a metered key's hold for the request (raises InsufficientQuotaError);
        one already open (a dispatcher that died after taking it) is kept."""
        assert request.model is not None and request.body is not None
        if not caller.metered:
            return
        if self.billing.open_holds([request.job_id]):
            return
        self.billing.hold_for(caller.id, request.job_id, request.model, request.body)

    def create(self, caller: KeyIdentity, batch_id: str, request: Prepared) -> None:
        """Store the request's job with its task on the bulk queue.

        Raises:
            UnauthorizedError: the key was revoked meanwhile.
        """
        assert request.model is not None and request.body is not None
        model = request.model
        fields = {
            **queued_fields(
                request.job_id,
                caller.id,
                model,
                request.body,
                QUEUE_BULK,
                {"batch_id": batch_id, "custom_id": request.custom_id},
            ),
            "price": model.price.shown()
            if caller.metered and not model.price.free
            else None,
            "paced": 1,
        }
        task = self.task_message(request.job_id, "bulk")
        create_while_live(self.store, self.keys, caller, fields, None, task)
