"""A cheap asyncio load client (on uvloop): raw HTTP/1.1 keep-alive, SSE scanned
as bytes.

Run: ``python -m bench.load '<json spec>'``; prints one JSON result. The spec
names the target (host, port, path, key), the request body, ``concurrency``,
``requests`` per connection, and whether to stream.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import uvloop

_CONTENT = b'"content":"'
#: The text of every token the bench upstream sends; one SSE line may carry several
#: (llmq merges deltas that pile up), so tokens are counted, not lines.
_TOKEN = b"tok "
#: A request still unanswered after this long counts as an error.
REQUEST_TIMEOUT_SECONDS = 120.0
_EMPTY = b'"content":""'


@dataclass
class Sample:
    """One request: time to first token, total time, tokens seen, error if any."""

    ttft: float | None
    total: float
    tokens: int
    error: str | None = None


class Connection:
    """One keep-alive connection that sends requests one after another."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def call(self, path: str, headers: str, body: bytes, stream: bool) -> Sample:
        start = time.perf_counter()
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(
                    self.host, self.port, limit=1 << 20
                )
            assert self.reader is not None
            self.writer.write(
                b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n%s\r\n%s"
                % (path.encode(), self.host.encode(), len(body), headers.encode(), body)
            )
            return await self._response(self.reader, start, stream)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            await self.close()
            return Sample(None, time.perf_counter() - start, 0, type(exc).__name__)

    async def _response(
        self, reader: asyncio.StreamReader, start: float, stream: bool
    ) -> Sample:
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        lower = head.lower()
        chunked = b"transfer-encoding: chunked" in lower
        sample = Sample(None, 0.0, 0)
        if chunked:
            pending = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                data = await reader.readexactly(size + 2)
                if size == 0:
                    break
                pending = self._scan(pending + data[:-2], sample, start)
        else:
            length = int(lower.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            body = await reader.readexactly(length)
            if status == 200 and not stream:
                content = json.loads(body)["choices"][0]["message"]["content"] or ""
                sample.tokens = content.encode().count(_TOKEN)
                sample.ttft = time.perf_counter() - start
        if b"connection: close" in lower:
            await self.close()
        sample.total = time.perf_counter() - start
        if status != 200:
            sample.error = f"HTTP {status}"
        return sample

    @staticmethod
    def _scan(data: bytes, sample: Sample, start: float) -> bytes:
        lines = data.split(b"\n")
        for line in lines[:-1]:
            if line.startswith(b"data: ") and _CONTENT in line and _EMPTY not in line:
                if sample.ttft is None:
                    sample.ttft = time.perf_counter() - start
                sample.tokens += line.count(_TOKEN) or 1
            elif line.startswith(b'data: {"error"'):
                sample.error = "stream error"
        return lines[-1]

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = self.reader = None


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``spec`` and return its samples and wall time."""
    body = json.dumps(spec["body"]).encode()
    headers = "".join(f"{k}: {v}\r\n" for k, v in spec.get("headers", {}).items())
    stream = bool(spec["body"].get("stream"))
    samples: list[Sample] = []

    async def user(number: int) -> None:
        # Arrivals spread evenly over the ramp, so the run reaches a steady state
        # of ``concurrency`` streams instead of starting them all in one burst.
        await asyncio.sleep(number * spec.get("ramp", 0.0) / spec["concurrency"])
        conn = Connection(spec["host"], spec["port"])
        for _ in range(spec["requests"]):
            began = time.perf_counter()
            try:
                samples.append(
                    await asyncio.wait_for(
                        conn.call(spec["path"], headers, body, stream),
                        REQUEST_TIMEOUT_SECONDS,
                    )
                )
            except TimeoutError:
                samples.append(Sample(None, time.perf_counter() - began, 0, "timeout"))
                await conn.close()
        await conn.close()

    cpu = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(user(n) for n in range(spec["concurrency"])))
    wall = time.perf_counter() - start
    return {
        "wall": wall,
        "cpu": time.process_time() - cpu,
        "samples": [asdict(s) for s in samples],
    }


if __name__ == "__main__":
    print(json.dumps(uvloop.run(run(json.loads(sys.argv[1])))))
