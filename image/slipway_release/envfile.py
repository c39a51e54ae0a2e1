"""The release env file: parsed as data, rendered for systemd.

A release's env file holds ``export KEY=value`` lines with shell-style
quoting. It is never sourced or executed: :func:`parse_env` reads it with the
meaning a POSIX shell would give those lines, and refuses anything whose
meaning would depend on running a shell (expansions, command substitution,
several words, control operators).

systemd reads the result through ``EnvironmentFile=``. Its parser (systemd
252, Debian 12 and Amazon Linux 2023) keeps every character of a
double-quoted value once ``"``, ``\\``, ``$`` and backquote are escaped,
newlines and control characters included. What it cannot carry, and
:func:`check_carriable` refuses, is a NUL byte (no environment can hold one)
and an assignment longer than the kernel's per-string limit for ``execve``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Linux refuses to execve a process whose single environment string
# ("KEY=value" plus its NUL) exceeds MAX_ARG_STRLEN (32 pages).
MAX_ASSIGNMENT_BYTES = 131072
# The whole environment shares ARG_MAX (a quarter of the 8 MiB default stack)
# with the command line; keep well inside it.
MAX_ENVIRONMENT_BYTES = 1024 * 1024

# Names the platform sets itself: a value from the env file would be
# silently overridden (systemd lets EnvironmentFile= win over Environment=,
# so it would instead silently break the web port).
RESERVED_NAMES = frozenset({"PORT"})

# Outside quotes these characters would make a shell do something other than
# assign a literal: expand, split into words, or end the command.
_UNQUOTED_FORBIDDEN = {
    "$": "would expand a variable",
    "`": "would run a command",
    ";": "would end the command",
    "&": "would end the command",
    "|": "would start a pipeline",
    "<": "would redirect input",
    ">": "would redirect output",
    "(": "is a shell operator",
    ")": "is a shell operator",
    "~": "may expand to a home directory",
}
_DOUBLE_QUOTE_ESCAPABLE = '$`"\\\n'
_SYSTEMD_ESCAPED = '"\\`$'


class EnvFileError(ValueError):
    """The env file cannot be read as data, or systemd could not carry it."""


def parse_env(text: str) -> dict[str, str]:
    """Parse env file text into an ordered ``{name: value}`` mapping.

    Accepted lines: blank lines, ``# comments``, and ``[export ]NAME=WORD``
    where WORD is one shell word made of unquoted characters (``\\x`` escapes
    ``x``), ``'single-quoted'`` text (literal, may span lines) and
    ``"double-quoted"`` text (``\\`` escapes ``$ ` " \\`` and newline, may span
    lines). A backslash-newline continues the line, as in a shell.

    Raises :class:`EnvFileError` naming the line and the fix for anything a
    shell would not read as a plain literal assignment, and for a name
    assigned twice.
    """
    if "\x00" in text:
        raise EnvFileError("env file contains a NUL byte; environment values cannot hold one")
    values: dict[str, str] = OrderedDict()
    first_line: dict[str, int] = {}
    pos, line = 0, 1
    length = len(text)
    while pos < length:
        pos, line = _skip_blank(text, pos, line)
        if pos >= length:
            break
        if text[pos] == "#":
            pos = _end_of_line(text, pos)
            continue
        if text[pos] == "\r":
            raise _carriage_return(line)
        start_line = line
        pos = _skip_export(text, pos)
        match = NAME_PATTERN.match(text, pos)
        if not match or match.end() >= length or text[match.end()] != "=":
            raise EnvFileError(
                f"env file line {start_line}: expected 'export NAME=value' with NAME made of "
                f"letters, digits and '_', got {_excerpt(text, pos)!r}"
            )
        name = match.group(0)
        value, pos, line = _read_word(text, match.end() + 1, line, name)
        pos, line = _expect_end_of_assignment(text, pos, line, name)
        if name in values:
            raise EnvFileError(
                f"env file line {start_line}: {name} is already set on line {first_line[name]}; "
                "keep one assignment per name"
            )
        values[name] = value
        first_line[name] = start_line
    return dict(values)


def _skip_blank(text: str, pos: int, line: int) -> tuple[int, int]:
    while pos < len(text) and text[pos] in " \t\n":
        if text[pos] == "\n":
            line += 1
        pos += 1
    return pos, line


def _end_of_line(text: str, pos: int) -> int:
    newline = text.find("\n", pos)
    return len(text) if newline < 0 else newline


def _skip_export(text: str, pos: int) -> int:
    match = re.compile(r"export[ \t]+").match(text, pos)
    return match.end() if match else pos


def _carriage_return(line: int) -> EnvFileError:
    # A shell keeps an unquoted CR as part of the value, which is never what
    # a file saved with Windows line endings meant.
    return EnvFileError(
        f"env file line {line}: unquoted carriage return (Windows line ending); "
        "save the file with LF line endings, or quote a value that must contain one"
    )


def _excerpt(text: str, pos: int) -> str:
    return text[pos : _end_of_line(text, pos)][:40]


def _read_word(text: str, pos: int, line: int, name: str) -> tuple[str, int, int]:
    """Read one shell word starting at ``pos``; return (value, pos, line)."""
    out = []
    length = len(text)
    while pos < length:
        char = text[pos]
        if char in " \t\n":
            break
        if char == "\r":
            raise _carriage_return(line)
        if char == "'":
            end = text.find("'", pos + 1)
            if end < 0:
                raise EnvFileError(f"env file line {line}: {name}: single quote is never closed")
            chunk = text[pos + 1 : end]
            out.append(chunk)
            line += chunk.count("\n")
            pos = end + 1
        elif char == '"':
            pos, line = _read_double_quoted(text, pos + 1, line, name, out)
        elif char == "\\":
            if pos + 1 >= length:
                raise EnvFileError(f"env file line {line}: {name}: the file ends after a backslash")
            if text[pos + 1] == "\n":
                line += 1
            else:
                out.append(text[pos + 1])
            pos += 2
        elif char in _UNQUOTED_FORBIDDEN:
            raise EnvFileError(
                f"env file line {line}: {name}: unquoted {char!r} {_UNQUOTED_FORBIDDEN[char]} in a "
                f"shell; put the value in single quotes, e.g. {name}='...'"
            )
        else:
            out.append(char)
            pos += 1
    return "".join(out), pos, line


def _read_double_quoted(text: str, pos: int, line: int, name: str, out: list[str]) -> tuple[int, int]:
    length = len(text)
    while pos < length:
        char = text[pos]
        if char == '"':
            return pos + 1, line
        if char == "\\" and pos + 1 < length and text[pos + 1] in _DOUBLE_QUOTE_ESCAPABLE:
            if text[pos + 1] == "\n":
                line += 1
            else:
                out.append(text[pos + 1])
            pos += 2
            continue
        if char in "$`":
            raise EnvFileError(
                f"env file line {line}: {name}: {char!r} inside double quotes "
                f"{_UNQUOTED_FORBIDDEN[char]} in a shell; escape it as '\\{char}' or use single quotes"
            )
        if char == "\n":
            line += 1
        out.append(char)
        pos += 1
    raise EnvFileError(f"env file line {line}: {name}: double quote is never closed")


def _expect_end_of_assignment(text: str, pos: int, line: int, name: str) -> tuple[int, int]:
    """After a value only blanks and a comment may follow on its line."""
    length = len(text)
    while pos < length and text[pos] in " \t":
        pos += 1
    if pos >= length or text[pos] == "\n":
        return pos, line
    if text[pos] == "#":
        return _end_of_line(text, pos), line
    if text[pos] == "\r":
        raise _carriage_return(line)
    raise EnvFileError(
        f"env file line {line}: {name}: the value is followed by {_excerpt(text, pos)!r}; a shell "
        f"would read that as another word, so quote the whole value, e.g. {name}='a b'"
    )


def render_env(values: Mapping[str, str]) -> str:
    """Render ``values`` as canonical env file text that :func:`parse_env` reads back.

    Every value is single-quoted, with ``'`` written as ``'\\''``, which a
    shell and the parser both read as the exact original text.
    """
    lines = []
    for name, value in values.items():
        _check_name(name)
        lines.append("export {}='{}'\n".format(name, value.replace("'", "'\\''")))
    return "".join(lines)


def _check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise EnvFileError(
            f"env name {name!r} is not a valid variable name; use letters, digits and '_', not starting with a digit"
        )


def check_carriable(values: Mapping[str, str]) -> None:
    """Refuse values that systemd and the kernel cannot pass to a process exactly.

    Raises :class:`EnvFileError` naming the variable and the limit.
    """
    total = 0
    for name, value in values.items():
        _check_name(name)
        if name in RESERVED_NAMES:
            raise EnvFileError(
                f"env file sets {name}, which the platform assigns itself (the web port); "
                f"remove {name} from the app's config"
            )
        if "\x00" in value:
            raise EnvFileError(f"env value {name} contains a NUL byte; no environment can hold one")
        try:
            size = len(f"{name}={value}".encode()) + 1
        except UnicodeEncodeError:
            raise EnvFileError(f"env value {name} is not valid UTF-8 text; systemd drops such variables") from None
        if size > MAX_ASSIGNMENT_BYTES:
            raise EnvFileError(
                f"env value {name} is {size} bytes; Linux passes at most {MAX_ASSIGNMENT_BYTES} "
                "bytes per variable, so store large data in S3 and put its location in the env"
            )
        total += size
    if total > MAX_ENVIRONMENT_BYTES:
        raise EnvFileError(
            f"env file totals {total} bytes; keep the environment under {MAX_ENVIRONMENT_BYTES} "
            "bytes (large data belongs in S3, with its location in the env)"
        )


def render_environment_file(values: Mapping[str, str]) -> str:
    """Render a systemd ``EnvironmentFile=`` that carries ``values`` exactly.

    Each value is double-quoted with ``"``, ``\\``, ``$`` and backquote
    escaped; systemd keeps every other character inside double quotes as is,
    including newlines. Call :func:`check_carriable` first.
    """
    lines = ["# Written by the Slipway deploy agent from the release env file.\n"]
    for name, value in values.items():
        escaped = "".join("\\" + c if c in _SYSTEMD_ESCAPED else c for c in value)
        lines.append(f'{name}="{escaped}"\n')
    return "".join(lines)
