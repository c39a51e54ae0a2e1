"""Which HTTP statuses mean healthy: the load balancer's matcher syntax, parsed once.

``health_check.codes`` in release.json (and the fleet's configuration) uses the syntax of
an Application Load Balancer target group's matcher: one status (``"200"``), several
(``"200,302"``), a range (``"200-299"``) or a mix (``"200-299,302"``), statuses from 200 to
499. The deploy agent's health checks and the target group's matcher read the same text
with :func:`parse_codes`, so an instance is healthy to the agent exactly when it is to the
load balancer.
"""

from __future__ import annotations

import re

DEFAULT_CODES = "200"
# What a target group's HTTP matcher admits.
LOWEST, HIGHEST = 200, 499
MAX_LENGTH = 100
_PART = re.compile(r"([0-9]{3})(?:-([0-9]{3}))?")
SYNTAX = 'statuses from 200 to 499 as "200", "200,302" or "200-299"'


class HealthCodesError(ValueError):
    """The text is not a matcher the load balancer would accept."""


def parse_codes(text: str) -> frozenset[int]:
    """The statuses ``text`` names: ``parse_codes("200-204,302") == {200, 201, 202, 203, 204, 302}``.

    Refuses (with :class:`HealthCodesError` naming the part) empty parts, spaces, anything
    that is not a three-digit status or a ``low-high`` range with ``low < high``, statuses
    outside 200 to 499, and a status given twice (alone or inside a range).
    """
    if not isinstance(text, str) or not text:
        raise HealthCodesError(f"health check codes {text!r} are empty; use {SYNTAX}")
    if len(text) > MAX_LENGTH:
        raise HealthCodesError(f"health check codes are longer than {MAX_LENGTH} characters; use ranges")
    codes: set[int] = set()
    for part in text.split(","):
        match = _PART.fullmatch(part)
        if match is None:
            raise HealthCodesError(f"health check codes {text!r}: {part!r} is not a status or a range; use {SYNTAX}")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) else low
        for status in (low, high):
            if not LOWEST <= status <= HIGHEST:
                raise HealthCodesError(
                    f"health check codes {text!r}: {status} is outside {LOWEST}-{HIGHEST}, what a load balancer "
                    "health check can match"
                )
        if match.group(2) and low >= high:
            raise HealthCodesError(f"health check codes {text!r}: range {part!r} must go from low to high")
        span = set(range(low, high + 1))
        if span & codes:
            raise HealthCodesError(f"health check codes {text!r}: {min(span & codes)} is named twice")
        codes |= span
    return frozenset(codes)


def describe(codes: frozenset[int]) -> str:
    """The shortest matcher text for ``codes`` (ranges for runs): ``describe(parse_codes(t))`` reads back."""
    ordered = sorted(codes)
    parts: list[str] = []
    first = 0
    while first < len(ordered):
        last = first
        while last + 1 < len(ordered) and ordered[last + 1] == ordered[last] + 1:
            last += 1
        parts.append(str(ordered[first]) if first == last else f"{ordered[first]}-{ordered[last]}")
        first = last + 1
    return ",".join(parts)
