"""The batch dispatcher: feeds batch requests to the workers as jobs, fairly and
at the pace the providers' limits allow, and ends batches.

One dispatcher leads at a time (a Redis lock; any number may stand by, on any
machines). Each tick it

- moves new batches out of ``validating`` (failed, with the upload's findings
  and their line numbers, or in progress);
- collects the requests whose jobs ended (common/batches/progress.py) and
  creates the job of any request taken but left without one by a crash;
- feeds requests: owners (API keys) take turns, one request each per round,
  and each owner's batches take turns among themselves, so two keys' big
  batches move at the same rate and a small batch never waits behind a big one;
  a request goes only while its provider has fewer than ``LLMQ_BULK_WINDOW``
  batch requests unfinished and only when its rate limits have room now, so the
  bulk queue holds a window of messages, not a batch, and interactive calls
  keep the limits' first claim (common/limits.py);
- winds down cancelled and expired batches, and writes the output and error
  files of batches whose every request has ended (common/batches/finishing.py).

Everything it knows is in the database and Redis: killed at any point, it (or
another) goes on from there without redoing or losing a request.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis
from redis.exceptions import LockError
from sqlalchemy.exc import SQLAlchemyError

from common.accounts.models import KeyIdentity
from common.batches import outcomes
from common.batches.finishing import Finisher
from common.batches.lines import LineProblem, problem
from common.batches.models import BatchRow
from common.batches.outcomes import Unanswered
from common.batches.plan import Plan
from common.batches.progress import BatchProgress, LiveState, Outcome, job_id_for
from common.batches.reader import InputReader, read_at
from common.batches.recovery import Collector
from common.batches.statuses import BatchStatus
from common.batches.submit import LineSubmitter, Prepared, revoked
from common.errors import GatewayError, UnauthorizedError
from common.redis import keys

log = logging.getLogger(__name__)

#: How long the lead lasts unless renewed (a dead leader's successor waits this).
LEAD_SECONDS = 10.0
#: How often the list of batches is read again from the database.
REFRESH_SECONDS = 0.5
#: How often running requests are checked for their jobs' ends.
COLLECT_SECONDS = 0.1
#: Most requests fed in one tick (then finished ones are collected again).
MOST_PER_TICK = 500
#: Pause between ticks while batches run, and while none does.
BUSY_PAUSE_SECONDS = 0.05
IDLE_PAUSE_SECONDS = 0.5


class Dispatcher:
    """Runs batches; see the module."""

    def __init__(
        self,
        client: redis.Redis,
        finisher: Finisher,
        collector: Collector,
        submitter: LineSubmitter,
        window: int,
        identity: Callable[[str], KeyIdentity | None],
    ) -> None:
        self.redis = client
        self.finisher = finisher
        self.batches = finisher.batches
        self.files = finisher.files
        self.progress: BatchProgress = finisher.progress
        self.collector = collector
        self.submitter = submitter
        self.window = window
        self.identity = identity
        self.plans: dict[str, Plan] = {}
        self.in_flight: Counter[str] = Counter()
        self._callers: dict[str, KeyIdentity | None] = {}
        self._last_owner = ""
        self._batch_turn: Counter[str] = Counter()
        self._refreshed = self._collected = 0.0

    def run_forever(self) -> None:
        """Lead when the lead is free, and work while leading."""
        lock = self.redis.lock(
            keys.BATCH_DISPATCHER_KEY, timeout=LEAD_SECONDS, thread_local=False
        )
        leading = False
        while True:
            pause = IDLE_PAUSE_SECONDS
            try:
                if leading:
                    lock.reacquire()
                else:
                    leading = lock.acquire(blocking=False)
                    self._forget_plans()
                if leading:
                    pause = self.tick()
            except LockError:
                log.warning("batch dispatcher: lost the lead")
                leading = False
            except (redis.RedisError, SQLAlchemyError) as exc:
                log.warning("batch dispatcher: %s; will retry", exc)
                self._refreshed = 0.0
            time.sleep(pause)

    def tick(self) -> float:
        """One round of work; the pause before the next."""
        now = time.monotonic()
        if now - self._refreshed >= REFRESH_SECONDS:
            self._refreshed = now
            self.refresh()
        if now - self._collected >= COLLECT_SECONDS:
            self._collected = now
            self.collect()
        wait = self.feed()
        for plan in list(self.plans.values()):
            self._conclude(plan)
        if not self.plans:
            return IDLE_PAUSE_SECONDS
        return min(BUSY_PAUSE_SECONDS, max(0.002, wait))

    def refresh(self) -> None:
        """Read the batches to work on; start the new ones."""
        self._callers.clear()
        rows = self.batches.active()
        for row in rows:
            if row.status == BatchStatus.VALIDATING:
                self._validate(row)
            else:
                plan = self.plans.get(row.id)
                if plan is None:
                    self.plans[row.id] = self._plan(row)
                else:
                    plan.row = row
        live = {row.id for row in rows}
        for batch_id in [b for b in self.plans if b not in live]:
            self.plans.pop(batch_id).reader.close()

    def _validate(self, row: BatchRow) -> None:
        source = self.files.row(row.input_file_id)
        problems = (
            source.problems
            if source is not None
            else [problem(LineProblem.FILE_MISSING, None, "the input file was deleted")]
        )
        if problems:
            errors = {"object": "list", "data": problems}
            self.batches.move(
                row.id, [BatchStatus.VALIDATING], BatchStatus.FAILED, errors=errors
            )
            return
        self.batches.move(row.id, [BatchStatus.VALIDATING], BatchStatus.IN_PROGRESS)
        self._refreshed = 0.0  # pick it up on the next tick

    def _plan(self, row: BatchRow) -> Plan:
        self.progress.begin(row.id)
        state = self.progress.state(row.id) or LiveState()
        reader = InputReader(
            self.files.path(row.input_file_id), state.cursor, state.offset
        )
        return Plan(row, reader, set(self.progress.running(row.id)))

    def _forget_plans(self) -> None:
        """Start over from what Redis and the database hold (a new lead)."""
        for plan in self.plans.values():
            plan.reader.close()
        self.plans.clear()

    def caller(self, owner: str) -> KeyIdentity | None:
        if owner not in self._callers:
            self._callers[owner] = self.identity(owner)
        return self._callers[owner]

    def collect(self) -> None:
        """Record the requests whose jobs ended; count those still running."""
        self.in_flight = self.collector.collect(list(self.plans.values()), self)

    def feed(self) -> float:
        """Dispatch requests, owners taking turns (see the module); the seconds
        until a blocked provider may have room (``inf``: none waits on time)."""
        open_plans = [
            p
            for p in self.plans.values()
            if p.row.status == BatchStatus.IN_PROGRESS
            and not p.exhausted
            and p.ending is None
        ]
        by_owner: dict[str, list[Plan]] = {}
        for plan in open_plans:
            by_owner.setdefault(plan.row.owner, []).append(plan)
        owners = sorted(by_owner)
        blocked: dict[str, float] = {}
        fed = 0
        while owners and fed < MOST_PER_TICK:
            # The turn passes on from the last owner served, tick after tick.
            start = bisect.bisect_right(owners, self._last_owner)
            moved = False
            for owner in owners[start:] + owners[:start]:
                if self._feed_owner(by_owner[owner], blocked):
                    fed += 1
                    moved = True
                    self._last_owner = owner
            owners = [o for o in owners if any(not p.exhausted for p in by_owner[o])]
            if not moved:
                break
        now = time.monotonic()
        waits = [until - now for until in blocked.values()]
        return min(waits, default=math.inf)

    def _feed_owner(self, plans: list[Plan], blocked: dict[str, float]) -> bool:
        """Dispatch one request of one of the owner's batches, taking turns."""
        owner = plans[0].row.owner
        turn = self._batch_turn[owner]
        for step in range(len(plans)):
            plan = plans[(turn + step) % len(plans)]
            if plan.exhausted:
                continue
            if self._feed_one(plan, blocked):
                self._batch_turn[owner] = turn + step + 1
                return True
        return False

    def _feed_one(self, plan: Plan, blocked: dict[str, float]) -> bool:
        """Dispatch (or refuse) the batch's next request; False if it must wait."""
        request = plan.pending or self._next(plan)
        if request is None:
            return False
        plan.pending = request
        caller = self.caller(plan.row.owner)
        if request.error is not None or caller is None:
            self.refuse(plan, request, request.error)
            return True
        provider = request.provider
        if provider in blocked:
            return False
        if self.in_flight[provider] >= self.window:
            blocked[provider] = math.inf
            return False
        wait = self.submitter.pace(request)
        if wait > 0:
            blocked[provider] = time.monotonic() + wait
            return False
        try:
            self.submitter.hold(caller, request)
        except GatewayError as exc:
            self.refuse(plan, request, exc)
            return True
        self.progress.take(
            plan.row.id, request.index, request.offset, request.next_offset
        )
        plan.pending = None
        self.start(plan, request, caller)
        return True

    def start(self, plan: Plan, request: Prepared, caller: KeyIdentity) -> None:
        """Create a taken request's job (or refuse it: its key was revoked)."""
        try:
            self.submitter.create(caller, plan.row.id, request)
        except UnauthorizedError as exc:
            self.submitter.billing.release(request.job_id)
            self.refuse(plan, request, exc, advance=False)
            return
        plan.running.add(request.index)
        self.in_flight[request.provider] += 1

    def restart(self, plan: Plan, index: int, offset: int) -> None:
        """Create the job of a request taken but left without one by a crash."""
        next_offset, line = read_at(self.files.path(plan.row.input_file_id), offset)
        request = self._prepared(plan, index, offset, next_offset, line)
        caller = self.caller(plan.row.owner)
        if request.error is not None or caller is None:
            self.refuse(plan, request, request.error, advance=False)
            return
        log.warning(
            "batch %s: creating the job of request %d again", plan.row.id, index
        )
        try:
            self.submitter.hold(caller, request)
        except GatewayError as exc:
            self.refuse(plan, request, exc, advance=False)
            return
        self.start(plan, request, caller)

    def _next(self, plan: Plan) -> Prepared | None:
        read = plan.reader.next()
        if read is None:
            plan.exhausted = True
            return None
        return self._prepared(plan, *read)

    def _prepared(
        self,
        plan: Plan,
        index: int,
        offset: int,
        next_offset: int,
        line: dict[str, Any],
    ) -> Prepared:
        """Request ``index`` of the batch, read from ``line`` and checked."""
        request = Prepared(
            index,
            offset,
            next_offset,
            str(line.get("custom_id", "")),
            job_id_for(plan.row.id, index),
        )
        self.submitter.prepare(self.caller(plan.row.owner), request, line)
        return request

    def refuse(
        self,
        plan: Plan,
        request: Prepared,
        error: GatewayError | None,
        advance: bool = True,
    ) -> None:
        """Record a request that will not run, with the error a direct call gets
        (``advance``: it is the next one, so move the cursor past it)."""
        error = error or revoked()
        line = outcomes.refused(request.job_id, request.custom_id, error)
        self.progress.finish(
            plan.row.id, request.index, Outcome.FAILED, refused_line=line
        )
        if advance:
            self.progress.skip(plan.row.id, request.index, request.next_offset)
        plan.running.discard(request.index)
        plan.pending = None

    def _conclude(self, plan: Plan) -> None:
        """End a batch whose requests have all ended (or been stopped)."""
        if plan.running:
            return
        row = plan.row
        ending = plan.ending
        if row.status == BatchStatus.FINALIZING:  # a dispatcher died finishing it
            expired = time.time() >= row.expires_at
            self.finisher.finish(row, Unanswered.BATCH_EXPIRED if expired else None)
        elif row.status == BatchStatus.IN_PROGRESS and plan.exhausted and not ending:
            self.finisher.finish(row, None)
        elif ending is not None:
            self._skip_rest(plan, ending)
            self.finisher.finish(row, ending)
        else:
            return
        plan.reader.close()
        self.plans.pop(row.id, None)

    def _skip_rest(self, plan: Plan, why: Unanswered) -> None:
        """Record every request not yet dispatched as never answered."""
        if plan.pending is not None:
            pending, plan.pending = plan.pending, None
            self._unanswered(
                plan, pending.index, pending.custom_id, pending.next_offset, why
            )
        while (read := plan.reader.next()) is not None:
            index, _, next_offset, line = read
            self._unanswered(
                plan, index, str(line.get("custom_id", "")), next_offset, why
            )
        plan.exhausted = True

    def _unanswered(
        self, plan: Plan, index: int, custom_id: str, next_offset: int, why: Unanswered
    ) -> None:
        line = outcomes.unanswered(job_id_for(plan.row.id, index), custom_id, why)
        self.progress.finish(plan.row.id, index, Outcome.FAILED, refused_line=line)
        self.progress.skip(plan.row.id, index, next_offset)
