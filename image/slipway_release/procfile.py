"""Procfile parsing and the process formation of a release."""

from __future__ import annotations

import re
from collections.abc import Mapping

PROCESS_TYPE = re.compile(r"[A-Za-z0-9_]{1,30}")
_LINE = re.compile(r"([^:\s]*)[ \t]*:[ \t]*(.*)")
RELEASE = "release"
BUILD = "build"
WEB = "web"
# One-off commands, never processes: ``build`` runs once when the slug is built, ``release``
# once per deploy before the switch.
ONE_OFF = (BUILD, RELEASE)


class ProcfileError(ValueError):
    """The Procfile or the formation cannot be turned into processes."""


def parse_procfile(text: str) -> dict[str, str]:
    """Parse Procfile text into an ordered ``{process type: command}`` mapping.

    Lines are ``type: command``; blank lines and ``#`` comments are skipped.
    Types use letters, digits and ``_`` (they become systemd unit names);
    commands run under ``bash -c`` with the release directory as working
    directory. The ``build`` and ``release`` types are the optional one-off build command and
    release phase (:data:`ONE_OFF`).
    """
    processes: dict[str, str] = {}
    # Split on LF only: str.splitlines() would also split on characters such as U+0085 that
    # are ordinary text to bash and to systemd.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip(" \t\r")
        if not line or line.startswith("#"):
            continue
        match = _LINE.fullmatch(line)
        if not match or not PROCESS_TYPE.fullmatch(match.group(1)):
            raise ProcfileError(
                f"Procfile line {number}: expected 'type: command' with a type of letters, digits "
                f"and '_', e.g. 'web: python app.py'; got {line[:60]!r}"
            )
        name, command = match.group(1), match.group(2).strip(" \t")
        if not command:
            raise ProcfileError(f"Procfile line {number}: process type {name!r} has no command")
        if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in command):
            raise ProcfileError(f"Procfile line {number}: the {name} command contains a control character")
        if name in processes:
            raise ProcfileError(f"Procfile line {number}: process type {name!r} is defined twice")
        processes[name] = command
    if not processes:
        raise ProcfileError("Procfile defines no process; add a line such as 'web: python app.py'")
    return processes


def resolve_formation(processes: Mapping[str, str], formation: Mapping[str, int]) -> list[tuple[str, int]]:
    """Return ``(type, count)`` for every long-running process type, in Procfile order.

    Types missing from ``formation`` run one ``web`` and zero of the others,
    as on Heroku. Refuses a formation that names an unknown type, scales a
    one-off type (``build``, ``release``), or runs more than one ``web`` process (the load
    balancer targets one port per instance: scale web with the fleet).
    """
    for name in formation:
        if name in ONE_OFF:
            when = "per build" if name == BUILD else "per deploy"
            raise ProcfileError(f"formation scales {name!r}, which runs once {when}; remove it from the formation")
        if name not in processes:
            raise ProcfileError(
                f"formation names process type {name!r}, which the Procfile does not define; "
                f"the Procfile has {', '.join(sorted(processes))}"
            )
    if formation.get(WEB, 1) > 1:
        raise ProcfileError(
            f"formation asks for {formation[WEB]} web processes; an instance runs one (the load "
            "balancer targets one port), so scale web with the fleet's instance count"
        )
    return [(name, formation.get(name, 1 if name == WEB else 0)) for name in processes if name not in ONE_OFF]
