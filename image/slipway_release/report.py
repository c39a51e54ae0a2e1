"""What the instance's programs print as they work: Heroku-style steps on stdout, tool output
indented under them, the time of each phase, and one failure line on stderr.

Shared by the deploy agent (``slipway_agent.report``) and the build program
(``slipway_build.builder``); each names its failure line (``deploy: FAILED: ``, ``build: ``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class StepReport:
    """Steps on ``out``, timing of each phase, the failure line on ``err`` after ``failure_prefix``."""

    failure_prefix: str
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    durations: dict[str, float] = field(default_factory=dict)

    def step(self, message: str) -> None:
        print(f"-----> {message}", file=self.out, flush=True)

    def detail(self, message: str) -> None:
        print(f"       {message}", file=self.out, flush=True)

    def failure(self, message: str) -> None:
        print(f"{self.failure_prefix}{message}", file=self.err, flush=True)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.durations[name] = self.durations.get(name, 0.0) + time.monotonic() - started
