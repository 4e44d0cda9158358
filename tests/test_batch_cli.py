"""The ``llmq batch`` CLI end to end, against the real stack: plain text and
JSONL, failed lines and retry, Ctrl-C that leaves the batch running and the
``wait`` that resumes it."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

import requests

from tests.batch_helpers import jsonl, request_line
from tests.conftest import Stack, bin_path, wait_until


def llmq_env(stack: Stack, key: str) -> dict[str, str]:
    return {
        **os.environ,
        "LLMQ_BASE_URL": stack.url,
        "LLMQ_API_KEY": key,
        "LLMQ_POLL_SECONDS": "0.2",
    }


def llmq(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [bin_path("llmq"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_plain_text_in_one_reply_per_line_out(
    stack: Stack, api_key: str, tmp_path: Path
) -> None:
    prompts = [f"问题 {i}" for i in range(20)]
    prompts[7] = ""  # an empty line stays a line
    (tmp_path / "in.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    done = llmq(
        llmq_env(stack, api_key),
        "batch",
        "run",
        str(tmp_path / "in.txt"),
        "-o",
        str(tmp_path / "out.txt"),
        "--model",
        "fake-model",
    )
    assert done.returncode == 0, done.stderr
    replies = (tmp_path / "out.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(replies) == 20
    assert all(
        r == "tok0 tok1 tok2 tok3 tok4 " for i, r in enumerate(replies) if i != 7
    )
    assert replies[7] == ""


def test_jsonl_with_a_failed_line_then_retry_of_just_that_line(
    stack: Stack, api_key: str, tmp_path: Path
) -> None:
    lines = [
        request_line("ok-1"),
        request_line("broken", model="no-such-model"),
        request_line("ok-2"),
    ]
    (tmp_path / "in.jsonl").write_bytes(jsonl(lines))
    env = llmq_env(stack, api_key)
    ran = llmq(
        env, "batch", "run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o")
    )
    assert ran.returncode == 1
    out = [json.loads(x) for x in (tmp_path / "o").read_text().splitlines()]
    assert [x["custom_id"] for x in out] == ["ok-1", "broken", "ok-2"]
    assert out[1]["response"]["body"]["error"]["code"] == "invalid_model"
    batch_id = re.findall(r"batch_[0-9a-f]{32}", ran.stderr)[0]
    status = llmq(env, "batch", "status", batch_id, "--json")
    assert json.loads(status.stdout)["request_counts"] == {
        "total": 3,
        "completed": 2,
        "failed": 1,
    }
    retried = llmq(env, "batch", "retry", batch_id, "-o", str(tmp_path / "r"))
    new_id = retried.stdout.strip().splitlines()[-1]
    assert new_id.startswith("batch_") and new_id != batch_id
    again = requests.get(
        f"{stack.url}/v1/batches/{new_id}",
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=10,
    ).json()
    assert again["request_counts"]["total"] == 1
    assert again["metadata"]["llmq_retry_of"] == batch_id
    cancel = llmq(env, "batch", "cancel", batch_id)
    assert cancel.returncode == 1 and "cannot be cancelled" in cancel.stderr


def test_ctrl_c_leaves_the_batch_running_and_wait_resumes_it(
    stack: Stack, api_key: str, tmp_path: Path
) -> None:
    ids = [f"s{i:03d}" for i in range(150)]
    slow = {"tokens": 3, "delay": 0.2}
    (tmp_path / "in.jsonl").write_bytes(
        jsonl([request_line(c, model="paced-model", fake=slow) for c in ids])
    )
    env = llmq_env(stack, api_key)
    proc = subprocess.Popen(
        [
            bin_path("llmq"),
            "batch",
            "run",
            str(tmp_path / "in.jsonl"),
            "-o",
            str(tmp_path / "o"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    auth = {"Authorization": f"Bearer {api_key}"}

    def running() -> bool:
        data = requests.get(f"{stack.url}/v1/batches", headers=auth, timeout=10).json()
        return any(b["status"] == "in_progress" for b in data["data"])

    wait_until(running, 30, "the CLI's batch to run")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    resume = re.search(r"resume with: (llmq batch wait .*)", err)
    assert resume, err
    assert not (tmp_path / "o").exists()
    batch_id = shlex.split(resume.group(1))[3]
    batch = requests.get(f"{stack.url}/v1/batches/{batch_id}", headers=auth, timeout=10)
    assert batch.json()["status"] == "in_progress"
    args = shlex.split(resume.group(1))[1:]
    waited = llmq(env, *args)
    assert waited.returncode == 0, waited.stderr
    out = [json.loads(x) for x in (tmp_path / "o").read_text().splitlines()]
    assert [x["custom_id"] for x in out] == ids
