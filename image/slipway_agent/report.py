"""What an operator and the control plane read: steps on stdout, one failure line on stderr,
phase timings, and the final JSON line."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

from slipway_release.layout import ReleaseUrl

from . import host
from .space import NoSpace, explain_no_space, is_no_space


class DeployFailed(Exception):
    """A step failed; the message is the one line an operator reads."""


class NotStaged(DeployFailed):
    """``--activate`` of a release this instance has not staged (or whose staged copy changed)."""


def result_line(
    url: ReleaseUrl,
    mode: str,
    phase: str | None,
    release: str | None,
    previous: str | None,
    result: str,
    exit_code: int,
    error: str | None,
    durations: dict[str, float],
) -> str:
    """The final machine-readable line, for the control plane to echo back.

    ``mode`` is what was asked (``deploy``, ``stage``, ``activate``); ``phase`` the phase
    the run ended in (``stage`` or ``activate``; for a failure, the one that failed).
    """
    return json.dumps(
        {
            "app": url.app,
            "env": url.env,
            "mode": mode,
            "phase": phase,
            "release": release,
            "previous": previous,
            "result": result,
            "exit_code": exit_code,
            "error": error,
            "durations": {name: round(seconds, 3) for name, seconds in durations.items()},
        },
        sort_keys=True,
    )


@dataclass
class Report:
    """Human-readable steps on stdout, timing of each phase, the failure line on stderr."""

    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    durations: dict[str, float] = field(default_factory=dict)

    def step(self, message: str) -> None:
        print(f"-----> {message}", file=self.out, flush=True)

    def detail(self, message: str) -> None:
        print(f"       {message}", file=self.out, flush=True)

    def failure(self, message: str) -> None:
        print(f"deploy: FAILED: {message}", file=self.err, flush=True)

    def show_log(self, unit: str) -> None:
        """The last lines ``unit`` wrote to the journal, indented."""
        result = host.run(["journalctl", "--no-pager", "-o", "cat", "-n", "10", "-u", unit], check=False)
        for line in result.stdout.strip().splitlines()[-10:]:
            self.detail(f"| {line}")

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.durations[name] = self.durations.get(name, 0.0) + time.monotonic() - started


def reason(error: BaseException) -> str:
    """The sentence for a failure. Our own errors (DeployFailed, ValueError/LookupError
    subclasses, CommandFailed, NoSpace) already read as one, and so does a full disk; anything
    else (a bug, a network error) is named by its type."""
    if isinstance(error, (DeployFailed, ValueError, LookupError, host.CommandFailed, NoSpace)):
        return str(error)
    if is_no_space(error):  # a small write the steps do not size (a record, a unit file)
        filename = getattr(error, "filename", None)
        return str(explain_no_space(f"writing {filename}" if filename else "the deploy", filename or "/", None))
    return f"{type(error).__name__}: {error}"
