"""``llmq``, the console script: ``llmq batch ...`` runs a file of prompts or
chat requests as a batch on llmq and writes the results (API.md section 6).

It starts fast: besides click, rich and requests it imports only the CLI's own
modules (common/batches/client.py, cli_files.py, cli_steps.py).
"""

from __future__ import annotations

import functools
import json
import shlex
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, ParamSpec

import click

from common.batches.cli_files import (
    InputFormat,
    Layout,
    jsonl_layout,
    prepare_input,
    read_custom_ids,
    select_requests,
)
from common.batches.cli_steps import (
    EXIT_INTERRUPTED,
    META_FORMAT,
    META_INPUT,
    META_LINES,
    META_RETRY_OF,
    Session,
    batch_metadata,
    connect,
    describe_batch,
    download,
    echo,
    fail,
    finish,
    object_id,
    submit,
    validation_errors,
    wait_for_end,
)
from common.batches.client import CHAT_ENDPOINT, BatchClient, ClientError, ConfigError
from common.batches.statuses import ENDED, BatchStatus

#: OpenAI's longest metadata value.
METADATA_VALUE_MAX_CHARS = 512

P = ParamSpec("P")


def _reports_errors(command: Callable[P, None]) -> Callable[P, None]:
    """Print a ClientError as ``error: ...`` and exit 1 (a ConfigError: exit 2)."""

    @functools.wraps(command)
    def reporting(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            command(*args, **kwargs)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from exc
        except (ClientError, OSError) as exc:
            fail(str(exc))

    return reporting


def _parse_metadata(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE")
        pairs[key] = text
    return pairs


_base_url_option = click.option(
    "--base-url",
    metavar="URL",
    help="llmq's URL, with or without /v1 [env: LLMQ_BASE_URL, else "
    "OPENAI_BASE_URL; default: http://127.0.0.1:8000].",
)
_api_key_option = click.option(
    "--api-key",
    metavar="KEY",
    help="API key [env: LLMQ_API_KEY, else OPENAI_API_KEY].",
)
_input_option = click.option(
    "--input",
    "input_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The batch's INPUT, read for its custom_ids (JSONL) or line count "
    "(text). Not needed for a batch `llmq batch run` made: its metadata says.",
)
_batch_id_argument = click.argument("batch_id", metavar="ID")


def _output_option(required: bool) -> Callable[[Callable[P, None]], Callable[P, None]]:
    return click.option(
        "-o",
        "--output",
        required=required,
        type=click.Path(dir_okay=False, path_type=Path),
        help="Where the results go, in input order.",
    )


def _resume_command(
    session: Session, batch_id: str, output: Path, input_path: Path | None
) -> str:
    words = ["llmq", "batch", "wait", batch_id, "-o", str(output)]
    if input_path is not None:
        words += ["--input", str(input_path)]
    if session.base_url_option:
        words += ["--base-url", session.base_url_option]
    command = shlex.join(words)
    return f"{command} (with your --api-key)" if session.key_from_option else command


def _follow(
    session: Session,
    batch: dict[str, Any],
    output: Path,
    layout: Layout | None = None,
    input_path: Path | None = None,
) -> NoReturn:
    """Wait for the batch, write OUTPUT and exit with the outcome.

    Ctrl-C leaves the batch running and prints the command that resumes.
    """
    batch_id = object_id(batch)
    try:
        ended = wait_for_end(session, batch)
        code = finish(session, ended, output, layout, input_path)
    except KeyboardInterrupt:
        resume = _resume_command(session, batch_id, output, input_path)
        echo(f"\nbatch {batch_id} keeps running; resume with: {resume}")
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code)


@click.group()
@click.version_option(package_name="llmq", prog_name="llmq")
def main() -> None:
    """llmq's command-line client."""


@main.group()
def batch() -> None:
    """Run files of prompts or chat requests as batches (OpenAI's Batch API)."""


def _cli_metadata(input_path: Path, layout: Layout) -> dict[str, str]:
    """What ``wait`` needs to write a batch's results without INPUT."""
    metadata = {
        META_INPUT: input_path.name[:METADATA_VALUE_MAX_CHARS],
        META_FORMAT: str(layout.format),
    }
    if layout.format is InputFormat.TEXT:
        metadata[META_LINES] = str(len(layout.custom_ids))
    return metadata


@batch.command()
@click.argument(
    "input_path",
    metavar="INPUT",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@_output_option(required=True)
@click.option(
    "--model",
    help="The model: required for plain text INPUT; for JSONL, set in the "
    "bodies that name none.",
)
@click.option(
    "--metadata",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_parse_metadata,
    help="Batch metadata; repeatable.",
)
@_base_url_option
@_api_key_option
@_reports_errors
def run(
    input_path: Path,
    output: Path,
    model: str | None,
    metadata: dict[str, str],
    base_url: str | None,
    api_key: str | None,
) -> None:
    """Run INPUT as a batch and write its results to OUTPUT.

    INPUT is OpenAI batch JSONL (a custom_id on every line) or plain text with
    one prompt per line. OUTPUT holds, in input order, for JSONL the result
    lines (successes and failures), for text one reply per line (backslash and
    newline escaped as \\\\ and \\n; a failed or empty line is empty).

    Exit status 0 if every request succeeded, else 1. Ctrl-C (130) leaves the
    batch running and prints the `llmq batch wait` command that resumes.
    """
    session = connect(base_url, api_key)
    with tempfile.TemporaryDirectory(prefix="llmq-") as workdir:
        upload = Path(workdir) / f"{input_path.stem or 'input'}.jsonl"
        layout = prepare_input(input_path, upload, model)
        metadata = {**metadata, **_cli_metadata(input_path, layout)}
        created = submit(session.client, upload, metadata)
    _follow(session, created, output, layout)


@batch.command()
@_batch_id_argument
@_output_option(required=True)
@_input_option
@_base_url_option
@_api_key_option
@_reports_errors
def wait(
    batch_id: str,
    output: Path,
    input_path: Path | None,
    base_url: str | None,
    api_key: str | None,
) -> None:
    """Wait for batch ID, then write its results to OUTPUT as `run` does.

    The metadata `run` sets on a batch says whether INPUT was text and how
    many lines it had, so INPUT is not needed: line N of OUTPUT answers the
    request with custom_id line-N. Ctrl-C (130) leaves the batch running.
    """
    session = connect(base_url, api_key)
    _follow(session, session.client.get_batch(batch_id), output, None, input_path)


@batch.command("download")
@_batch_id_argument
@_output_option(required=True)
@_input_option
@_base_url_option
@_api_key_option
@_reports_errors
def download_results(
    batch_id: str,
    output: Path,
    input_path: Path | None,
    base_url: str | None,
    api_key: str | None,
) -> None:
    """Write the results of ended batch ID to OUTPUT as `wait` does, not waiting."""
    session = connect(base_url, api_key)
    found = session.client.get_batch(batch_id)
    status = found.get("status")
    if status not in ENDED:
        raise ClientError(
            f"batch {batch_id} is {status}, not ended; wait for it with: "
            + shlex.join(["llmq", "batch", "wait", batch_id, "-o", str(output)])
        )
    sys.exit(finish(session, found, output, None, input_path))


@batch.command()
@_batch_id_argument
@click.option("--json", "as_json", is_flag=True, help="Print the batch object.")
@_base_url_option
@_api_key_option
@_reports_errors
def status(
    batch_id: str, as_json: bool, base_url: str | None, api_key: str | None
) -> None:
    """Show batch ID: status, request counts, file ids and timestamps."""
    found = connect(base_url, api_key).client.get_batch(batch_id)
    if as_json:
        click.echo(json.dumps(found, indent=2, ensure_ascii=False))
        return
    click.echo("\n".join(describe_batch(found)))


@batch.command()
@_batch_id_argument
@_base_url_option
@_api_key_option
@_reports_errors
def cancel(batch_id: str, base_url: str | None, api_key: str | None) -> None:
    """Cancel batch ID: queued requests never start, running ones stop."""
    found = connect(base_url, api_key).client.cancel_batch(batch_id)
    click.echo(f"batch {object_id(found)} {found.get('status')}")


def _check_retryable(old: dict[str, Any]) -> None:
    status = old.get("status")
    if status not in ENDED:
        raise ClientError(
            f"batch {object_id(old)} is still {status}; retry it once it has ended"
        )
    problems = validation_errors(old)
    if status == BatchStatus.FAILED and problems:
        echo("\n".join(problems))
        raise ClientError(
            f"batch {object_id(old)} failed validation: fix its input and run it again"
        )


def _retry_input(
    client: BatchClient, old: dict[str, Any], work: Path
) -> tuple[Path, list[str]]:
    """The batch input of the requests of ``old`` that did not succeed."""
    outputs = download(client, old.get("output_file_id"), work / "output.jsonl")
    succeeded = set(read_custom_ids(outputs)) if outputs else set()
    original = download(client, old.get("input_file_id"), work / "input.jsonl")
    if original is None:
        raise ClientError(f"batch {object_id(old)} names no input file")
    dest = work / "retry.jsonl"
    return dest, select_requests(original, dest, succeeded)


@batch.command()
@_batch_id_argument
@_output_option(required=False)
@_base_url_option
@_api_key_option
@_reports_errors
def retry(
    batch_id: str, output: Path | None, base_url: str | None, api_key: str | None
) -> None:
    """Run the requests of ended batch ID that failed or never ran, as a new batch.

    Prints the new batch's id. With -o, waits for it and writes its results as
    `run` does: the retried requests only (for text INPUT, on their own lines
    of OUTPUT, the other lines empty).
    """
    session = connect(base_url, api_key)
    old = session.client.get_batch(batch_id)
    _check_retryable(old)
    metadata = {**batch_metadata(old), META_RETRY_OF: batch_id}
    endpoint = old.get("endpoint")
    with tempfile.TemporaryDirectory(prefix="llmq-") as workdir:
        upload, custom_ids = _retry_input(session.client, old, Path(workdir))
        if not custom_ids:
            echo(f"nothing to retry: every request of batch {batch_id} succeeded")
            return
        created = submit(
            session.client,
            upload,
            metadata,
            endpoint if isinstance(endpoint, str) else CHAT_ENDPOINT,
            f"retry-of-{batch_id}.jsonl",
        )
    click.echo(object_id(created))
    if output is not None:
        text = metadata.get(META_FORMAT) == InputFormat.TEXT
        _follow(session, created, output, None if text else jsonl_layout(custom_ids))


if __name__ == "__main__":
    main()
