"""The one error a command reports: a line the user reads, and exit status 1."""

from __future__ import annotations

EXIT_FAILED, EXIT_USAGE = 1, 2


class CliError(Exception):
    """What went wrong, as the one line the user reads."""
