"""A one-off command (``slipway run``): its limits and how its text travels to an instance.

One definition for the API that sends it, the SSM run document that admits it and the agent
that runs it. The command is shell text, as Heroku's ``run`` and ``ssh`` take it; it crosses
SSM as unpadded URL-safe base64 (:func:`encode`), so the document's ``allowedPattern`` can admit
it without admitting any shell syntax into the document's own script. Pure.
"""

from __future__ import annotations

import base64
import binascii
import math
import re

MAX_COMMAND_BYTES = 2048
DEFAULT_TIMEOUT_SECONDS = 900
MAX_TIMEOUT_SECONDS = 3600
# Exit statuses the agent gives for its own outcomes (as `docker run` and `timeout` do), not the command's.
EXIT_TIMED_OUT = 124
EXIT_REFUSED = 125
# The journal's and syslog's name for one-off processes: `<app>-run`.
PROCESS_TYPE = "run"

_ENCODED_LENGTH = math.ceil(MAX_COMMAND_BYTES * 4 / 3)
# SSM parameter patterns (anchored for SSM; the agent matches them whole too).
ENCODED_PATTERN = f"^[A-Za-z0-9_-]{{1,{_ENCODED_LENGTH}}}$"
TIMEOUT_PATTERN = f"^[1-9][0-9]{{0,{len(str(MAX_TIMEOUT_SECONDS)) - 1}}}$"


class CommandError(ValueError):
    """The command or its time limit cannot be run; the message says what to give instead."""


def check_command(command: object) -> str:
    """``command`` if it is shell text a one-off may run; :class:`CommandError` naming the fix."""
    if not isinstance(command, str) or not command.strip():
        raise CommandError('give the command to run as text, e.g. "python manage.py migrate"')
    if "\x00" in command:
        raise CommandError("the command holds a NUL character, which no shell can run; remove it")
    try:
        size = len(command.encode("utf-8"))
    except UnicodeEncodeError:
        raise CommandError("the command is not valid UTF-8 text; remove the undecodable characters") from None
    if size > MAX_COMMAND_BYTES:
        raise CommandError(
            f"the command is {size} bytes, more than the {MAX_COMMAND_BYTES} a one-off takes; "
            "put it in a script in the app and run that"
        )
    return command


def check_timeout(seconds: object) -> int:
    """``seconds`` if it is a time limit a one-off may have; :class:`CommandError` naming the range."""
    if not isinstance(seconds, int) or isinstance(seconds, bool) or not 1 <= seconds <= MAX_TIMEOUT_SECONDS:
        raise CommandError(
            f"the time limit must be a whole number of seconds from 1 to {MAX_TIMEOUT_SECONDS} "
            f"(default {DEFAULT_TIMEOUT_SECONDS}); got {seconds!r}"
        )
    return seconds


def encode(command: str) -> str:
    """The command as the run document's ``Command`` parameter."""
    return base64.urlsafe_b64encode(check_command(command).encode("utf-8")).decode("ascii").rstrip("=")


def decode(encoded: str) -> str:
    """The command a ``Command`` parameter carries; :class:`CommandError` if it is not one :func:`encode` made."""
    if re.fullmatch(ENCODED_PATTERN.strip("^$"), encoded) is None:
        raise CommandError(f"the encoded command {encoded[:40]!r} is not unpadded URL-safe base64 of a command")
    try:
        text = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise CommandError(f"the encoded command {encoded[:40]!r} does not decode to UTF-8 text") from None
    return check_command(text)


def parse_timeout(text: str) -> int:
    """A ``TimeoutSeconds`` parameter as a number; :class:`CommandError` if out of range."""
    if re.fullmatch(TIMEOUT_PATTERN.strip("^$"), text) is None:
        raise CommandError(f"the time limit {text!r} is not a whole number of seconds")
    return check_timeout(int(text))
