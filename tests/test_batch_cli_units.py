"""The ``llmq`` CLI's parts that need no llmq: settings, INPUT conversion,
OUTPUT merging, error reporting and how little it imports."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from click.testing import CliRunner
from werkzeug.formparser import parse_form_data

from common.batches.cli import main
from common.batches.cli_files import (
    InputFormat,
    Layout,
    detect_format,
    escape_reply,
    jsonl_layout,
    prepare_input,
    prepare_jsonl,
    select_requests,
    text_layout,
    text_to_jsonl,
    write_results,
)
from common.batches.client import (
    DEFAULT_BASE_URL,
    ClientError,
    ConfigError,
    _MultipartBody,
    normalize_base_url,
    resolve_api_key,
    resolve_base_url,
    resolve_poll_seconds,
)

ROOT = Path(__file__).resolve().parents[1]
NO_ENV = {
    name: None
    for name in ("LLMQ_BASE_URL", "OPENAI_BASE_URL", "LLMQ_API_KEY", "OPENAI_API_KEY")
}


@pytest.mark.parametrize(
    ("given", "root"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000"),
        (" https://gw.example/llmq/v1 ", "https://gw.example/llmq"),
        ("localhost:8000", "http://localhost:8000"),
    ],
)
def test_base_url_is_normalized_with_or_without_v1(given, root):
    assert normalize_base_url(given) == root


@pytest.mark.parametrize(
    ("option", "environ", "root"),
    [
        ("http://opt/v1", {"LLMQ_BASE_URL": "http://llmq"}, "http://opt"),
        (
            None,
            {"LLMQ_BASE_URL": "http://llmq", "OPENAI_BASE_URL": "http://oa"},
            "http://llmq",
        ),
        (None, {"LLMQ_BASE_URL": "", "OPENAI_BASE_URL": "http://oa/v1"}, "http://oa"),
        (None, {}, DEFAULT_BASE_URL),
    ],
)
def test_base_url_comes_from_option_then_llmq_then_openai_env(option, environ, root):
    assert resolve_base_url(option, environ) == root


@pytest.mark.parametrize(
    ("option", "environ", "key"),
    [
        ("opt", {"LLMQ_API_KEY": "llmq"}, "opt"),
        (None, {"LLMQ_API_KEY": "llmq", "OPENAI_API_KEY": "oa"}, "llmq"),
        (None, {"LLMQ_API_KEY": " ", "OPENAI_API_KEY": "oa"}, "oa"),
    ],
)
def test_api_key_comes_from_option_then_llmq_then_openai_env(option, environ, key):
    assert resolve_api_key(option, environ) == key


def test_missing_api_key_is_a_config_error():
    with pytest.raises(ConfigError, match="LLMQ_API_KEY"):
        resolve_api_key(None, {"OPENAI_API_KEY": ""})


def test_missing_api_key_exits_2_before_any_request():
    result = CliRunner().invoke(main, ["batch", "status", "batch_x"], env=NO_ENV)
    assert result.exit_code == 2
    assert "no API key" in result.stderr


@pytest.mark.parametrize(("text", "seconds"), [("", 1.0), ("0.05", 0.05), ("2", 2.0)])
def test_poll_interval_comes_from_env(text, seconds):
    assert resolve_poll_seconds({"LLMQ_POLL_SECONDS": text}) == seconds


@pytest.mark.parametrize("text", ["abc", "0", "-1", "nan", "inf"])
def test_bad_poll_interval_is_a_config_error(text):
    with pytest.raises(ConfigError, match="LLMQ_POLL_SECONDS"):
        resolve_poll_seconds({"LLMQ_POLL_SECONDS": text})


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_text_lines_become_requests_numbered_by_input_line(tmp_path):
    src, dest = tmp_path / "in.txt", tmp_path / "in.jsonl"
    src.write_bytes(
        "\ufefffirst\n\n  \r\nthird: héllo 🌍\r\n \tfourth\\n\nlast".encode()
    )
    layout = text_to_jsonl(src, dest, "m")
    requests = _lines(dest)
    assert [r["custom_id"] for r in requests] == [
        "line-1",
        "line-4",
        "line-5",
        "line-6",
    ]
    prompts = [r["body"]["messages"][0]["content"] for r in requests]
    assert prompts == ["first", "third: héllo 🌍", " \tfourth\\n", "last"]
    assert all(r["body"]["model"] == "m" and r["method"] == "POST" for r in requests)
    assert {r["url"] for r in requests} == {"/v1/chat/completions"}
    assert "héllo 🌍".encode() in dest.read_bytes()
    assert layout == text_layout(6, 4)
    assert layout.custom_ids[3] == "line-4"


@pytest.mark.parametrize(
    ("content", "found"),
    [
        ('\n\n{"custom_id": "a", "body": {}}\nnot json\n', InputFormat.JSONL),
        ('\ufeff{"custom_id": "a"}\n', InputFormat.JSONL),
        ('{"prompt": "a JSON object without custom_id"}\n', InputFormat.TEXT),
        ('["custom_id"]\n', InputFormat.TEXT),
        ("what is 2+2?\n", InputFormat.TEXT),
        ("", InputFormat.TEXT),
    ],
)
def test_jsonl_is_detected_by_a_custom_id_on_the_first_line(tmp_path, content, found):
    path = tmp_path / "in"
    path.write_text(content, encoding="utf-8")
    assert detect_format(path) is found


def _request(custom_id: str, **body: object) -> str:
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions"}
    return json.dumps({**line, "body": {"messages": [], **body}})


def test_jsonl_gets_model_only_where_the_body_names_none(tmp_path):
    src, dest = tmp_path / "in.jsonl", tmp_path / "up.jsonl"
    lines = [_request("b", model="explicit"), "", _request("a"), _request("c")]
    src.write_text("\n".join(lines), encoding="utf-8")
    layout = prepare_jsonl(src, dest, "filled")
    assert layout == jsonl_layout(["b", "a", "c"])
    written = dest.read_text(encoding="utf-8").split("\n")
    assert written[1] == "" and len(written) == 5  # line numbers kept
    models = [json.loads(line)["body"]["model"] for line in written if line]
    assert models == ["explicit", "filled", "filled"]


def test_jsonl_without_model_is_copied_unchanged(tmp_path):
    src, dest = tmp_path / "in.jsonl", tmp_path / "up.jsonl"
    src.write_text(_request("a") + "\n" + _request("b") + "\n", encoding="utf-8")
    prepare_input(src, dest, None)
    assert dest.read_bytes() == src.read_bytes()


def test_plain_text_needs_a_model(tmp_path):
    (tmp_path / "in.txt").write_text("hi\n")
    with pytest.raises(ConfigError, match="--model"):
        prepare_input(tmp_path / "in.txt", tmp_path / "up.jsonl", None)


@pytest.mark.parametrize(
    ("content", "message"), [(b"\n \n", "no prompt"), (b"caf\xe9\n", "not UTF-8")]
)
def test_unusable_input_is_a_client_error(tmp_path, content, message):
    (tmp_path / "in.txt").write_bytes(content)
    with pytest.raises(ClientError, match=message):
        prepare_input(tmp_path / "in.txt", tmp_path / "up.jsonl", "m")


def _success(custom_id: str, reply: str) -> str:
    body = {"object": "chat.completion", "choices": [{"message": {"content": reply}}]}
    response = {"status_code": 200, "request_id": "r", "body": body}
    return json.dumps(
        {"id": "x", "custom_id": custom_id, "response": response, "error": None}
    )


def _refused(custom_id: str) -> str:
    error = {"message": "unknown model", "type": "x", "code": "invalid_model"}
    response = {"status_code": 400, "request_id": "r", "body": {"error": error}}
    return json.dumps(
        {"id": "x", "custom_id": custom_id, "response": response, "error": None}
    )


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_jsonl_results_are_merged_into_input_order(tmp_path):
    layout = jsonl_layout(["z", "y", "x", "w", "v"])
    outputs = _write(tmp_path / "out.jsonl", [_success("x", "3"), _success("z", "1")])
    errors = _write(tmp_path / "err.jsonl", [_refused("w"), _refused("y")])
    dest = tmp_path / "OUTPUT"
    summary = write_results(dest, layout, outputs, errors, "batch_cancelled")
    written = _lines(dest)
    assert [line["custom_id"] for line in written] == ["z", "y", "x", "w", "v"]
    assert written[0] == json.loads(_success("z", "1"))
    assert written[1] == json.loads(_refused("y"))
    assert written[4]["response"] is None
    assert written[4]["error"]["code"] == "batch_cancelled"
    assert (summary.succeeded, summary.failed, summary.unfinished) == (2, 2, 1)
    assert summary.failures == [
        "y: unknown model (invalid_model)",
        "w: unknown model (invalid_model)",
    ]
    assert not summary.all_succeeded
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_text_results_answer_input_lines_one_per_line(tmp_path):
    layout = text_layout(5, 4)  # line 2 was empty: no request
    replies = [_success("line-4", "a\\b\nc\r\nd"), _success("line-1", "héllo")]
    outputs = _write(tmp_path / "out.jsonl", replies)
    errors = _write(tmp_path / "err.jsonl", [_refused("line-3")])
    dest = tmp_path / "OUTPUT.txt"
    summary = write_results(dest, layout, outputs, errors, "batch_expired")
    assert dest.read_text(encoding="utf-8") == "héllo\n\n\na\\\\b\\nc\\r\\nd\n\n"
    assert (summary.succeeded, summary.failed, summary.unfinished) == (2, 1, 1)
    assert summary.failures == ["line-3: unknown model (invalid_model)"]


def test_results_of_a_completed_batch_without_failures(tmp_path):
    outputs = _write(tmp_path / "out.jsonl", [_success("line-1", "ok")])
    dest = tmp_path / "OUTPUT.txt"
    summary = write_results(dest, text_layout(1, 1), outputs, None, "batch_completed")
    assert summary.all_succeeded and dest.read_text() == "ok\n"


def test_a_result_outside_the_input_is_reported(tmp_path):
    outputs = _write(tmp_path / "out.jsonl", [_success("line-9", "?")])
    with pytest.raises(ClientError, match="--input"):
        write_results(tmp_path / "o", text_layout(2, 2), outputs, None, "batch_x")


@pytest.mark.parametrize(
    ("reply", "line"),
    [("a\nb", "a\\nb"), ("C:\\new", "C:\\\\new"), ("\\n", "\\\\n"), ("é", "é")],
)
def test_replies_are_escaped_onto_one_line(reply, line):
    assert escape_reply(reply) == line


def test_retry_input_holds_the_requests_that_did_not_succeed(tmp_path):
    src = _write(tmp_path / "in.jsonl", [_request(c) for c in "abcd"])
    dest = tmp_path / "retry.jsonl"
    assert select_requests(src, dest, {"a", "c"}) == ["b", "d"]
    assert [line["custom_id"] for line in _lines(dest)] == ["b", "d"]


def test_layout_slots_follow_the_custom_ids():
    layout = Layout(InputFormat.JSONL, ["q", "p"], 2)
    assert layout.slots() == {"q": 0, "p": 1}


def test_upload_body_is_multipart_read_from_the_file(tmp_path):
    content = "".join(_request(f"c{n}") + "\n" for n in range(2000)).encode()
    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    with path.open("rb") as file:
        body = _MultipartBody({"purpose": "batch"}, 'my "input".jsonl', file)
        sent = b"".join(body)
    assert len(sent) == len(body)
    environ = {
        "REQUEST_METHOD": "POST",
        "CONTENT_TYPE": body.content_type,
        "CONTENT_LENGTH": str(len(sent)),
        "wsgi.input": BytesIO(sent),
    }
    _, form, files = parse_form_data(environ)
    assert form["purpose"] == "batch"
    assert files["file"].filename == 'my "input".jsonl'
    assert files["file"].read() == content


class _ErrorHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        error = {"message": "No batch here", "type": "x", "code": "not_found"}
        body = json.dumps({"error": error, "param": None}).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def error_server() -> Iterator[str]:
    """A loopback server answering every GET with OpenAI's 404 envelope."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ErrorHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_server_error_is_printed_with_its_code_and_exits_1(error_server):
    args = ["batch", "status", "b", "--base-url", error_server, "--api-key", "k"]
    result = CliRunner().invoke(main, args, env=NO_ENV)
    assert result.exit_code == 1
    assert result.stderr == "error: No batch here (not_found)\n"


def test_connection_refused_is_a_clear_error(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "in.txt").write_text("hi\n")
    args = ["batch", "run", str(tmp_path / "in.txt"), "-o", str(tmp_path / "out")]
    args += ["--model", "m", "--base-url", f"http://127.0.0.1:{port}"]
    result = CliRunner().invoke(main, args, env={**NO_ENV, "LLMQ_API_KEY": "k"})
    assert result.exit_code == 1
    assert "cannot reach llmq" in result.stderr
    assert "connection refused" in result.stderr


HEAVY = ("gevent", "celery", "kombu", "sqlalchemy", "flask", "pydantic", "werkzeug")
#: The CLI's own modules: everything else under common is the server's.
CLI_MODULES = {
    "common",
    "common.batches",
    "common.batches.cli",
    "common.batches.cli_files",
    "common.batches.cli_steps",
    "common.batches.client",
    "common.batches.statuses",
}


def test_importing_the_cli_loads_no_server_code():
    script = (
        "import json, sys, common.batches.cli; print(json.dumps(sorted(sys.modules)))"
    )
    found = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    modules = json.loads(found.stdout)
    heavy = [m for m in modules if m.split(".")[0] in HEAVY]
    ours = {m for m in modules if m.split(".")[0] in ("common", "web", "workers")}
    assert heavy == [], f"the CLI imports {heavy}"
    assert ours == CLI_MODULES, f"the CLI imports {sorted(ours - CLI_MODULES)}"
