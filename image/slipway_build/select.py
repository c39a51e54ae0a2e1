"""Which kind of app a source tree is, and which offered runtime it asks for. Pure.

Python apps name a version in ``.python-version`` (``3.11``, ``3.11.9``) or ``runtime.txt``
(``python-3.11.9``); Node apps a semver range in ``package.json``'s ``engines.node``
(``18``, ``18.x``, ``>=18``, ``^20.1``, ``~20.1``, ``18 - 20``, ``18 || 20``). Without a request
the newest offered line is chosen. A request the image cannot meet is one line naming the
file and what is offered.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from slipway_release.build import NODE, PROCFILE_KIND, PYTHON
from slipway_release.runtimes import DISPLAY, Offer, line_key, offered_lines

REQUIREMENTS, PYPROJECT, PACKAGE_JSON, PACKAGE_LOCK = (
    "requirements.txt",
    "pyproject.toml",
    "package.json",
    "package-lock.json",
)
PYTHON_VERSION_FILE, RUNTIME_TXT = ".python-version", "runtime.txt"
PROCFILE = "Procfile"
MAX_REQUEST_FILE_BYTES = 64 * 1024


class SelectError(ValueError):
    """The app cannot be built here; the message is the one line the developer reads."""


def detect_kind(root_files: set[str]) -> str:
    """``python``, ``node`` or ``procfile`` from the names of the files at the source's root.

    Python wins when both kinds are present (a Python app with a package.json for its
    front-end tooling is more common than the reverse).
    """
    if REQUIREMENTS in root_files or PYPROJECT in root_files:
        return PYTHON
    if PACKAGE_JSON in root_files:
        if PACKAGE_LOCK not in root_files:
            raise SelectError(
                f"{PACKAGE_JSON} has no {PACKAGE_LOCK} beside it; run `npm install` and commit {PACKAGE_LOCK} "
                "so every build installs the same packages"
            )
        return NODE
    if PROCFILE in root_files:
        return PROCFILE_KIND
    raise SelectError(
        f"nothing to build: the source's root has no {REQUIREMENTS}, {PYPROJECT}, {PACKAGE_JSON} or {PROCFILE}"
    )


# Versions -----------------------------------------------------------------------------------------

Version = tuple[int, int, int]
_PARTIAL = re.compile(r"v?([0-9]+|[xX*])(?:\.([0-9]+|[xX*]))?(?:\.([0-9]+|[xX*]))?")
_COMPARATOR = re.compile(r"(<=|>=|<|>|=|\^|~>?)?\s*(\S+)")


def parse_version(text: str) -> Version:
    """``(3, 11, 2)`` for ``3.11.2``."""
    parts = text.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"{text!r} is not a version x.y.z")
    return int(parts[0]), int(parts[1]), int(parts[2])


def _partial(text: str) -> list[int | None]:
    """``[18, None, None]`` for ``18`` or ``18.x``; ``ValueError`` for anything else."""
    match = _PARTIAL.fullmatch(text)
    if match is None:
        raise ValueError(text)
    parts: list[int | None] = []
    for group in match.groups():
        if group is None or group in "xX*":
            parts.append(None)
        else:
            parts.append(int(group))
    # After a wildcard everything is a wildcard: 1.x.3 means 1.x.
    for index in range(len(parts)):
        if parts[index] is None:
            return parts[:index] + [None] * (3 - index)
    return parts


def _floor(parts: list[int | None]) -> Version:
    return (parts[0] or 0, parts[1] or 0, parts[2] or 0)


def _bump(parts: list[int | None]) -> Version:
    """The first version past a partial: 1 -> 2.0.0, 1.2 -> 1.3.0."""
    known = [p for p in parts if p is not None]
    if len(known) == 1:
        return (known[0] + 1, 0, 0)
    if len(known) == 2:
        return (known[0], known[1] + 1, 0)
    raise ValueError("nothing to bump")


Comparator = tuple[str, Version]


def _expand_comparator(operator: str, text: str) -> list[Comparator]:
    parts = _partial(text)
    known = sum(p is not None for p in parts)
    if known == 0:
        return [] if operator in ("", "=", ">=", "<=", "^", "~", "~>") else [("<", (0, 0, 0))]
    floor = _floor(parts)
    if operator in ("", "="):
        return [("=", floor)] if known == 3 else [(">=", floor), ("<", _bump(parts))]
    if operator == ">=":
        return [(">=", floor)]
    if operator == ">":
        return [(">", floor)] if known == 3 else [(">=", _bump(parts))]
    if operator == "<":
        return [("<", floor)]
    if operator == "<=":
        return [("<=", floor)] if known == 3 else [("<", _bump(parts))]
    if operator in ("~", "~>"):
        upper = (floor[0] + 1, 0, 0) if known == 1 else (floor[0], floor[1] + 1, 0)
        return [(">=", floor), ("<", upper)]
    # ^: the first non-zero part of what was given must not change.
    major, minor, patch = floor
    if major > 0 or known == 1:
        upper = (major + 1, 0, 0)
    elif minor > 0 or known == 2:
        upper = (0, minor + 1, 0)
    else:
        upper = (0, 0, patch + 1)
    return [(">=", floor), ("<", upper)]


def parse_range(text: str) -> list[list[Comparator]]:
    """An npm semver range as alternatives (``||``) of comparator sets that must all hold.

    Supports what ``engines.node`` uses: exact and partial versions, x-ranges, the operators
    ``< <= > >= =``, ``^``, ``~`` and hyphen ranges. Prerelease tags are refused.
    """
    alternatives = []
    for alternative in text.split("||"):
        words = alternative.split()
        comparators: list[Comparator] = []
        try:
            if len(words) == 3 and words[1] == "-":
                low, high = _partial(words[0]), _partial(words[2])
                if any(p is not None for p in low):
                    comparators.append((">=", _floor(low)))
                known = sum(p is not None for p in high)
                if known == 3:
                    comparators.append(("<=", _floor(high)))
                elif known:
                    comparators.append(("<", _bump(high)))
            else:
                # ">= 18" is one comparator: join an operator with the version after it.
                joined = re.sub(r"(<=|>=|<|>|=|\^|~>?)\s+", r"\1", alternative.strip())
                for word in joined.split():
                    match = _COMPARATOR.fullmatch(word)
                    if match is None:
                        raise ValueError(word)
                    comparators.extend(_expand_comparator(match.group(1) or "", match.group(2)))
        except ValueError:
            raise ValueError(
                f"{text!r} is not a version range (use e.g. 18, 18.x, >=18, ^20.1, ~20.1, 18 - 20 or 18 || 20)"
            ) from None
        alternatives.append(comparators)
    return alternatives


def satisfies(version: Version, ranges: list[list[Comparator]]) -> bool:
    """True if ``version`` meets every comparator of at least one alternative."""
    tests = {
        "=": lambda v, b: v == b,
        "<": lambda v, b: v < b,
        "<=": lambda v, b: v <= b,
        ">": lambda v, b: v > b,
        ">=": lambda v, b: v >= b,
    }
    return any(all(tests[op](version, bound) for op, bound in comparators) for comparators in ranges)


# Requests -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What an app asked for (``text``) and where (``where``); no request means the newest."""

    name: str
    text: str | None
    where: str | None


def python_request(files: Mapping[str, str]) -> Request:
    """The Python version asked for, from ``.python-version`` (first) or ``runtime.txt``."""
    text = files.get(PYTHON_VERSION_FILE)
    if text is not None:
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
        if lines:
            return Request(PYTHON, lines[0], PYTHON_VERSION_FILE)
    text = files.get(RUNTIME_TXT)
    if text is not None and text.strip():
        value = text.strip()
        if not value.startswith("python-"):
            raise SelectError(f"{RUNTIME_TXT} says {value[:40]!r}; write the version as python-3.11 or python-3.11.9")
        return Request(PYTHON, value[len("python-") :], RUNTIME_TXT)
    return Request(PYTHON, None, None)


def node_request(package_json: str) -> Request:
    """The Node.js range asked for in ``package.json``'s ``engines.node``."""
    try:
        data = json.loads(package_json)
    except ValueError as error:
        raise SelectError(f"{PACKAGE_JSON} is not valid JSON ({error})") from None
    engines = data.get("engines") if isinstance(data, dict) else None
    wanted = engines.get("node") if isinstance(engines, dict) else None
    if wanted is None:
        return Request(NODE, None, None)
    if not isinstance(wanted, str):
        raise SelectError(f'{PACKAGE_JSON} engines.node must be a version range such as ">=18"')
    return Request(NODE, wanted.strip(), f"{PACKAGE_JSON} engines.node")


def choose(request: Request, offers: Mapping[str, Mapping[str, Offer]]) -> Offer:
    """The offer that meets ``request``: the newest that does; :class:`SelectError` otherwise."""
    name = request.name
    lines = offered_lines(offers, name)
    offered = ", ".join(lines) or "none"
    if not lines:
        raise SelectError(f"{DISPLAY[name]} is needed, but this platform offers no {DISPLAY[name]} runtime")
    if request.text is None:
        return offers[name][lines[-1]]
    if name == PYTHON:
        matching = _python_matches(request, lines)
    else:
        try:
            ranges = parse_range(request.text)
        except ValueError as error:
            raise SelectError(f"{request.where}: {error}") from None
        matching = [line for line in lines if satisfies(parse_version(offers[name][line].version), ranges)]
    if not matching:
        raise SelectError(
            f"{DISPLAY[name]} {request.text} requested in {request.where}; this platform offers {offered}"
        )
    return offers[name][max(matching, key=line_key)]


def _python_matches(request: Request, lines: list[str]) -> list[str]:
    """Lines meeting a Python request: ``3`` any 3.x, ``3.11`` and ``3.11.9`` the 3.11 line.

    A patch level is read as its line: the image carries its distribution's patch release.
    """
    text = request.text or ""
    match = re.fullmatch(r"([0-9]+)(?:\.([0-9]+)(?:\.([0-9]+))?)?(?:\.x|\.\*)?", text)
    if match is None:
        raise SelectError(f"{request.where} says {text[:40]!r}; write a Python version such as 3.11 or 3.11.9")
    major, minor = match.group(1), match.group(2)
    return [line for line in lines if line.split(".")[0] == major and (minor is None or line.split(".")[1] == minor)]
