"""What an operator and the control plane read: steps on stdout, one failure line on stderr,
phase timings, and the final JSON line."""

from __future__ import annotations

import json
from dataclasses import dataclass

from slipway_release.layout import ReleaseUrl
from slipway_release.report import StepReport

from . import host
from .space import NoSpace, explain_no_space, is_no_space


class DeployFailed(Exception):
    """A step failed; the message is the one line an operator reads."""


class NotStaged(DeployFailed):
    """``--activate`` of a release this instance has not staged (or whose staged copy changed)."""


class NoSuchProcess(DeployFailed):
    """``--restart --process`` of a process type the release does not run; nothing was done."""


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

    ``mode`` is what was asked (``deploy``, ``stage``, ``activate``, ``restart``); ``phase`` the
    phase the run ended in (``stage``, ``activate`` or ``restart``; for a failure, the one that failed).
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
class Report(StepReport):
    """The agent's steps (``slipway_release.report``), its failure line ``deploy: FAILED: ...``, and
    a unit's last journal lines."""

    failure_prefix: str = "deploy: FAILED: "

    def show_log(self, unit: str) -> None:
        """The last lines ``unit`` wrote to the journal, indented."""
        result = host.run(["journalctl", "--no-pager", "-o", "cat", "-n", "10", "-u", unit], check=False)
        for line in result.stdout.strip().splitlines()[-10:]:
            self.detail(f"| {line}")


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
