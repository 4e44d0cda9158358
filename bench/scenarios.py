"""The load shapes of API.md section 12, full size and tiny (``--smoke``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    """One load shape of API.md section 12."""

    name: str
    concurrency: int
    requests: int  # per connection
    stream: bool
    tokens: int
    delay: float  # seconds between tokens
    target: str
    #: Seconds over which the connections start (0: all at once).
    ramp: float = 0.0
    #: Through a key with a balance: each request held, settled, ledgered.
    metered: bool = False

    @property
    def shape(self) -> str:
        """The section-12 shape it measures (a metered variant's plain name)."""
        return self.name.removesuffix("-metered")


SCENARIOS = [
    Scenario("unloaded", 1, 50, True, 50, 0.0, "added TTFT p50 <= 5 ms"),
    Scenario(
        "realistic",
        100,
        2,
        True,
        100,
        0.02,
        "added TTFT p50 <= 10 ms, p99 <= 50 ms; tokens/s >= 95 % of direct; 0 errors",
        ramp=2.0,
    ),
    Scenario("capacity", 32, 100, False, 1, 0.0, ">= 700 req/s"),
    Scenario("capacity-metered", 32, 100, False, 1, 0.0, ">= 700 req/s", metered=True),
    Scenario("saturation", 50, 2, True, 50, 0.002, ">= 10,000 tokens/s relayed"),
    Scenario(
        "saturation-metered",
        50,
        2,
        True,
        50,
        0.002,
        ">= 10,000 tokens/s relayed",
        metered=True,
    ),
    Scenario(
        "scale",
        1000,
        1,
        True,
        100,
        0.1,
        "0 errors, TTFT p99 <= 1 s, llmq <= 1 GB resident, Redis connections bounded",
        ramp=10.0,
    ),
]
SMOKE = [
    Scenario("unloaded", 1, 3, True, 5, 0.0, "correct"),
    Scenario("capacity", 4, 5, False, 1, 0.0, "correct"),
    Scenario("capacity-metered", 4, 5, False, 1, 0.0, "correct", metered=True),
    Scenario("scale", 20, 1, True, 10, 0.01, "correct"),
]
