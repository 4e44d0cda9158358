"""``python -m workers.launcher``: the Procfile's worker line, one Celery worker
process per core.

A worker process runs its jobs as greenlets on one core, so a machine's cores are
used only by as many processes: the launcher starts ``LLMQ_WORKER_PROCESSES`` of
them (default: the cores this process may run on), each with the gevent pool and
``LLMQ_WORKER_CONCURRENCY`` jobs in flight (Celery reads it from the app's
settings), on the interactive queue; and ``LLMQ_BULK_WORKER_PROCESSES`` (1) on
the bulk queue alone, at a lower CPU priority (``BULK_NICENESS``), so batch
requests take only the CPU interactive jobs leave. Arguments after the module
name go to every worker (``--loglevel DEBUG``). Beside them it runs one
retention process (workers/retention.py), which
moves finished jobs to the database, and one batch dispatcher
(workers/batches.py), which feeds batch requests to the workers. A process that
dies after it started is started again; one that dies within ``STARTUP_SECONDS``
stops the rest (a bad setting or an unreachable broker is no reason to loop).
SIGTERM and SIGINT reach every worker once, as SIGTERM: Celery's warm shutdown,
in which running jobs finish or go back to the queue
(``LLMQ_WORKER_GRACE_SECONDS``); a terminal's Ctrl-C already sends the workers
SIGINT themselves, and a second SIGINT would make Celery's shutdown cold.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from common.config import load_settings
from common.queues import QUEUE_BULK, QUEUE_INTERACTIVE

log = logging.getLogger("workers.launcher")

#: A worker that exits sooner than this after its start is not started again.
STARTUP_SECONDS = 5.0
#: Pause before starting a worker again.
RESTART_DELAY_SECONDS = 1.0
#: prctl option: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1
#: How much lower the bulk workers' CPU priority is (nice): while interactive
#: workers want a core, the kernel gives them about ten times the bulk workers'
#: share, so a batch never slows an interactive stream down; idle, the bulk
#: workers have every core.
BULK_NICENESS = 10
#: The numbers the retention process and the batch dispatcher go by among the
#: workers.
RETENTION = -1
BATCHES = -2
#: The housekeeping processes and their modules.
HOUSEKEEPERS = {RETENTION: "workers.retention", BATCHES: "workers.batches"}


def cores() -> int:
    """Cores this process may run on (its CPU affinity, as a container sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _die_with_parent() -> None:
    """In a worker (Linux): receive SIGTERM when the launcher dies, even killed,
    so no worker is left behind it (PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: a killed launcher leaves its workers to the supervisor


def _die_with_parent_niced() -> None:
    """In a bulk worker: die with the launcher, at the bulk workers' priority."""
    _die_with_parent()
    os.nice(BULK_NICENESS)


def worker_command(
    name: str,
    extra: Sequence[str] = (),
    queues: str = f"{QUEUE_INTERACTIVE},{QUEUE_BULK}",
) -> list[str]:
    """The Celery worker command line for worker ``name``, taking ``queues``."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "worker",
        "--pool",
        "gevent",
        "--queues",
        queues,
        "--loglevel",
        "INFO",
        "--hostname",
        f"{name}@%h",
        *extra,
    ]


class Launcher:
    """Starts the worker processes, restarts the ones that die, stops them all."""

    def __init__(self, count: int, extra: Sequence[str], bulk: int = 0) -> None:
        self.count = count
        self.bulk = bulk
        self.extra = list(extra)
        self.stopping = False
        #: pid -> (worker number, start time)
        self.workers: dict[int, tuple[int, float]] = {}

    def start(self, number: int) -> None:
        prepare = _die_with_parent
        if number in HOUSEKEEPERS:
            command = [sys.executable, "-m", HOUSEKEEPERS[number]]
        elif number >= self.count:
            command = worker_command(
                f"bulk-{os.getpid()}-{number}", self.extra, QUEUE_BULK
            )
            prepare = _die_with_parent_niced
        else:
            queues = (
                QUEUE_INTERACTIVE if self.bulk else f"{QUEUE_INTERACTIVE},{QUEUE_BULK}"
            )
            command = worker_command(
                f"worker-{os.getpid()}-{number}", self.extra, queues
            )
        proc = subprocess.Popen(command, preexec_fn=prepare)
        self.workers[proc.pid] = (number, time.monotonic())

    def stop(self, signum: int, _frame: FrameType | None = None) -> None:
        """Pass a stop signal on to every worker, once, as SIGTERM."""
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping %d worker(s) on signal %d", len(self.workers), signum)
        for pid in self.workers:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass  # it has exited; wait() collects it

    def run(self) -> int:
        """Run until every worker has stopped; the exit status to leave with."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for number in [*range(self.count + self.bulk), *HOUSEKEEPERS]:
            self.start(number)
        status = 0
        while self.workers:
            pid, code = os.wait()
            number, started = self.workers.pop(pid)
            exit_code = os.waitstatus_to_exitcode(code)
            if self.stopping:
                continue
            if time.monotonic() - started < STARTUP_SECONDS:
                log.error("worker %d exited at start (%d); stopping", number, exit_code)
                status = exit_code or 1
                self.stop(signal.SIGTERM)
                continue
            log.warning("worker %d exited (%d); starting it again", number, exit_code)
            time.sleep(RESTART_DELAY_SECONDS)
            if not self.stopping:
                self.start(number)
        return status


def main(argv: Sequence[str] | None = None) -> int:
    """Start the workers the settings ask for and supervise them."""
    logging.basicConfig(level=logging.INFO, format="[launcher] %(message)s")
    settings = load_settings()
    count = settings.worker_processes or cores()
    log.info(
        "starting %d worker process(es) and %d for the bulk queue, "
        "%d jobs in flight each",
        count,
        settings.bulk_worker_processes,
        settings.worker_concurrency,
    )
    extra = sys.argv[1:] if argv is None else argv
    return Launcher(count, extra, settings.bulk_worker_processes).run()


if __name__ == "__main__":
    sys.exit(main())
