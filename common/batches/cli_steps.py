"""The steps the ``llmq batch`` commands are made of: connect, submit, wait
with a progress bar, write the results and report them on stderr."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from common.batches.cli_files import (
    InputFormat,
    Layout,
    ResultSummary,
    count_lines,
    jsonl_layout,
    read_custom_ids,
    text_layout,
    write_results,
)
from common.batches.client import (
    CHAT_ENDPOINT,
    BatchClient,
    ClientError,
    resolve_api_key,
    resolve_base_url,
    resolve_poll_seconds,
)
from common.batches.statuses import ENDED, BatchStatus

#: How long polling rides out a restart of llmq before it gives up.
RECONNECT_GRACE_SECONDS = 120.0
#: The exit status of a command stopped by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130
#: Metadata the CLI sets on the batches it creates.
META_INPUT = "llmq_cli_input"
META_FORMAT = "llmq_cli_format"
META_LINES = "llmq_cli_lines"
META_RETRY_OF = "llmq_retry_of"
VALIDATION_ERRORS_SHOWN = 20
#: The timestamps of a batch object, in the order they happen.
TIMESTAMPS = (
    "created_at",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expires_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


@dataclass(frozen=True)
class Session:
    """A client, and what a resume command must repeat of the command line."""

    client: BatchClient
    poll_seconds: float
    base_url_option: str | None
    key_from_option: bool


def connect(base_url: str | None, api_key: str | None) -> Session:
    """A session from the options, else the environment.

    Raises:
        ConfigError: no key, or a bad ``LLMQ_POLL_SECONDS``.
    """
    client = BatchClient(
        resolve_base_url(base_url, os.environ), resolve_api_key(api_key, os.environ)
    )
    poll_seconds = resolve_poll_seconds(os.environ)
    return Session(client, poll_seconds, base_url, bool(api_key))


def echo(message: str) -> None:
    """Tell the user (on stderr: stdout is kept for ids and JSON)."""
    click.echo(message, err=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: <message>`` and exit."""
    echo(f"error: {message}")
    sys.exit(code)


def object_id(obj: dict[str, Any]) -> str:
    """The ``id`` of an object llmq answered."""
    value = obj.get("id")
    if not isinstance(value, str):
        raise ClientError(f"llmq answered an object without an id: {obj!r:.200}")
    return value


def batch_metadata(batch: dict[str, Any]) -> dict[str, str]:
    """A batch's metadata (string values only, as OpenAI's)."""
    found = batch.get("metadata")
    items = found.items() if isinstance(found, dict) else ()
    return {key: value for key, value in items if isinstance(value, str)}


def request_counts(batch: dict[str, Any]) -> tuple[int, int, int]:
    """A batch's ``request_counts``: total, completed, failed."""
    counts = batch.get("request_counts")
    counts = counts if isinstance(counts, dict) else {}
    found = (counts.get(name) for name in ("total", "completed", "failed"))
    total, completed, failed = (n if isinstance(n, int) else 0 for n in found)
    return total, completed, failed


def validation_errors(batch: dict[str, Any]) -> list[str]:
    """The problems llmq found in a batch's input, one per line, numbered."""
    errors = batch.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else None
    lines = []
    for error in data if isinstance(data, list) else []:
        if isinstance(error, dict):
            where = f"line {error['line']}: " if error.get("line") else ""
            lines.append(f"  {where}{error.get('message')} ({error.get('code')})")
    if len(lines) > VALIDATION_ERRORS_SHOWN:
        more = len(lines) - VALIDATION_ERRORS_SHOWN
        lines[VALIDATION_ERRORS_SHOWN:] = [f"  ... and {more} more"]
    return lines


def submit(
    client: BatchClient,
    path: Path,
    metadata: dict[str, str],
    endpoint: str = CHAT_ENDPOINT,
    filename: str | None = None,
) -> dict[str, Any]:
    """Upload a batch input file and start a batch over it; the batch object.

    Ctrl-C here exits 130: no batch id is known yet to resume with.
    """
    try:
        uploaded = client.upload_file(path, filename)
        created = client.create_batch(object_id(uploaded), metadata, endpoint)
    except KeyboardInterrupt:
        fail("interrupted before the batch was created", EXIT_INTERRUPTED)
    total = request_counts(created)[0]
    counted = f" ({total} request{'' if total == 1 else 's'})" if total else ""
    echo(f"batch {object_id(created)} created{counted}")
    return created


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def describe_batch(found: dict[str, Any]) -> list[str]:
    """A batch object, one ``label  value`` row per field worth reading."""
    total, completed, failed = request_counts(found)
    done = f"{completed + failed} of {total} done, {failed} failed"
    rows = [("batch", object_id(found)), ("status", str(found.get("status")))]
    rows.append(("requests", done))
    for label in ("input_file_id", "output_file_id", "error_file_id"):
        if found.get(label):
            rows.append((label.removesuffix("_file_id") + " file", str(found[label])))
    for name in TIMESTAMPS:
        if isinstance(found.get(name), int | float):
            rows.append((name.removesuffix("_at"), _when(found[name])))
    metadata = batch_metadata(found)
    if metadata:
        rows.append(("metadata", ", ".join(f"{k}={v}" for k, v in metadata.items())))
    usage = found.get("usage")
    counted = usage.items() if isinstance(usage, dict) else ()
    tokens = [f"{k.removesuffix('_tokens')} {v}" for k, v in counted if type(v) is int]
    if tokens:
        rows.append(("tokens", ", ".join(tokens)))
    return [f"{label:<13}{value}" for label, value in rows] + validation_errors(found)


class _RateColumn(ProgressColumn):
    """Requests finished per second, over rich's recent window."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        shown = "-- lines/s" if speed is None else f"{speed:.1f} lines/s"
        return Text(shown, style="progress.data.speed")


def _show(progress: Progress, task: TaskID, batch: dict[str, Any]) -> None:
    total, completed, failed = request_counts(batch)
    progress.update(
        task,
        description=str(batch.get("status")),
        total=total or None,
        completed=completed + failed,
        failed=failed,
    )


def _next_poll(session: Session, batch_id: str) -> dict[str, Any]:
    """The batch after one poll interval, riding out a restart of llmq."""
    deadline = time.monotonic() + RECONNECT_GRACE_SECONDS
    while True:
        time.sleep(session.poll_seconds)
        try:
            return session.client.get_batch(batch_id)
        except ClientError as exc:
            if not exc.retryable or time.monotonic() > deadline:
                raise


def wait_for_end(session: Session, batch: dict[str, Any]) -> dict[str, Any]:
    """Poll until the batch ends, showing done, failed, rate and ETA on stderr."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=None),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed"),
        _RateColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as progress:
        task = progress.add_task("", total=None, failed=0)
        _show(progress, task, batch)
        while batch.get("status") not in ENDED:
            batch = _next_poll(session, object_id(batch))
            _show(progress, task, batch)
    return batch


def download(client: BatchClient, file_id: Any, dest: Path) -> Path | None:
    """Download a file named in a batch object to ``dest`` (None: no file)."""
    if not isinstance(file_id, str) or not file_id:
        return None
    client.download_file(file_id, dest)
    return dest


def _layout_for(
    session: Session, batch: dict[str, Any], input_path: Path | None, work: Path
) -> Layout:
    """Where each result goes, from ``--input``, the metadata or llmq's input."""
    metadata = batch_metadata(batch)
    if metadata.get(META_FORMAT) == InputFormat.TEXT:
        total = request_counts(batch)[0]
        if input_path is not None:
            return text_layout(count_lines(input_path), total)
        lines = metadata.get(META_LINES, "")
        if not lines.isdigit():
            raise ClientError("cannot tell how many lines INPUT has: pass --input")
        return text_layout(int(lines), total)
    if input_path is None:
        input_path = download(
            session.client, batch.get("input_file_id"), work / "input.jsonl"
        )
        if input_path is None:
            raise ClientError(f"batch {object_id(batch)} names no input file")
    return jsonl_layout(read_custom_ids(input_path))


def _report(batch: dict[str, Any], summary: ResultSummary, output: Path) -> None:
    counts = f"{summary.succeeded} succeeded, {summary.failed} failed"
    if summary.unfinished:
        counts += f", {summary.unfinished} unfinished"
    status = batch.get("status")
    echo(f"batch {object_id(batch)} {status}: {counts}; results in {output}")
    for failure in summary.failures:
        echo(f"  {failure}")
    if summary.failed > len(summary.failures):
        echo(f"  ... and {summary.failed - len(summary.failures)} more failures")


def finish(
    session: Session,
    batch: dict[str, Any],
    output: Path,
    layout: Layout | None = None,
    input_path: Path | None = None,
) -> int:
    """Write an ended batch's results to OUTPUT and report them.

    Args:
        layout: where each result goes; None to work it out from ``input_path``,
            the batch's metadata or its input file on llmq.

    Returns:
        The exit status: 0 if the batch completed and every request succeeded.
    """
    status = batch.get("status")
    problems = validation_errors(batch)
    if problems:
        echo(f"batch {object_id(batch)} {status}; problems in its input file:")
        echo("\n".join(problems))
    has_files = batch.get("output_file_id") or batch.get("error_file_id")
    if status == BatchStatus.FAILED and not has_files:
        echo(f"batch {object_id(batch)} failed; no results to write")
        return 1
    with tempfile.TemporaryDirectory(prefix="llmq-") as workdir:
        work = Path(workdir)
        layout = layout or _layout_for(session, batch, input_path, work)
        outputs, errors = (
            download(session.client, batch.get(name), work / f"{name}.jsonl")
            for name in ("output_file_id", "error_file_id")
        )
        summary = write_results(output, layout, outputs, errors, f"batch_{status}")
    _report(batch, summary, output)
    return 0 if status == BatchStatus.COMPLETED and summary.all_succeeded else 1
