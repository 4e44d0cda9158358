"""Running one job: call its provider and turn the stream into events and a result.

Running the same job id twice in a row is harmless (late acknowledgement can
redeliver a task): a finished job is left alone, and a job found ``running``
(its worker died) is started over with a ``reset`` status event.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from common.cancel import CancelRegistry, CancelToken
from common.catalog import Catalog
from common.completions import CompletionAccumulator
from common.errors import GatewayError, InvalidModelError, ProviderError
from common.jobs import dumps, finish_job
from common.providers import build_provider
from common.providers.base import Provider
from common.storage import JobRecord, JobStore, now
from common.tokens import estimate_prompt_tokens

log = logging.getLogger(__name__)


class JobRunner:
    """Executes jobs in a worker process; one instance per process."""

    def __init__(
        self, store: JobStore, catalog: Catalog, cancels: CancelRegistry
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.cancels = cancels
        self.providers: dict[str, Provider] = {
            name: build_provider(config) for name, config in catalog.providers.items()
        }

    def run(self, job_id: str) -> None:
        """Run ``job_id`` to a terminal state (or leave it if it already is)."""
        job = self.store.get(job_id)
        if job is None:
            log.warning("job %s not found (expired?); dropping its task", job_id)
            return
        if job.terminal:
            return
        if job.cancel_requested:
            finish_job(
                self.store,
                job,
                "cancelled",
                expected=("queued", "running"),
                events=[("status", dumps({"status": "cancelled"}))],
            )
            return
        job = self._start(job)
        if job is None:
            return
        token = self.cancels.register(job.id)
        try:
            self._stream(job, token)
        finally:
            self.cancels.unregister(job.id)

    def _start(self, job: JobRecord) -> JobRecord | None:
        started = dataclasses.replace(
            job, status="running", started_at=now(), attempts=job.attempts + 1
        )
        status: dict[str, Any] = {"status": "running", "attempt": started.attempts}
        if job.status == "running":
            status["reset"] = True
            log.warning("job %s was left running; starting it over", job.id)
        moved = self.store.transition(
            job,
            expected=("queued", "running"),
            fields={
                "status": "running",
                "started_at": started.started_at,
                "attempts": started.attempts,
            },
            events=[("status", dumps(status))],
            dequeue=True,
        )
        return started if moved.applied else None

    def _stream(self, job: JobRecord, token: CancelToken) -> None:
        acc = CompletionAccumulator(job.id, job.model, int(job.created_at))
        try:
            model = self.catalog.find_model(job.model, job.provider)
            if model is None:
                raise InvalidModelError(f"model {job.model!r} left the catalog")
            provider = self.providers[model.provider]
            for chunk in provider.stream(model, job.request, token):
                relay = acc.add(chunk)
                if relay is not None:
                    appended = self.store.transition(
                        job, events=[("delta", dumps(relay))]
                    )
                    if appended.cancel_requested:
                        token.cancel()
                if token.is_set():
                    break
        except (ProviderError, InvalidModelError) as exc:
            log.info("job %s failed: %s", job.id, exc.code)
            self._finish(job, acc, "failed", exc)
            return
        self._finish(job, acc, "cancelled" if token.is_set() else "succeeded")

    def _finish(
        self,
        job: JobRecord,
        acc: CompletionAccumulator,
        status: str,
        error: GatewayError | None = None,
    ) -> None:
        usage = acc.final_usage(estimate_prompt_tokens(job.request.get("messages", [])))
        fields: dict[str, Any] = {"usage": usage}
        if status == "succeeded" or acc.chunks:
            fields["result"] = acc.completion(usage)
        events = []
        if error is not None:
            fields["error"] = error.to_dict()
            events.append(("error", dumps(error.to_dict())))
        elif status == "cancelled":
            events.append(("status", dumps({"status": "cancelled"})))
        finish_job(
            self.store, job, status, expected=("running",), fields=fields, events=events
        )
