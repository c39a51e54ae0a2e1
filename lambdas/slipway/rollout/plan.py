"""Rollout planning: which instances go out of service together, in which order. No AWS calls.

A rollout replaces the release on a fleet batch by batch (ARCHITECTURE.md section 6): a
canary of one instance first, then batches by count or percent, spread across availability
zones, never so large that the fleet drops below its minimum healthy count. A fleet too
small to take even one instance out is first grown ("surge"): the state machine adds the
instances, waits until they serve (they boot the old ``current``), and plans again over
the larger fleet, so they are deployed in a batch like the others.
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from itertools import chain, zip_longest
from typing import Any, TypeGuard

MAX_BAKE_SECONDS = 3600


@dataclass(frozen=True)
class Instance:
    """An in-service EC2 instance of a fleet and its availability zone."""

    id: str
    zone: str


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass: `"batch_size": true` must not mean one instance.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_field(key: str, value: object) -> None:
    """Raise ``ValueError`` naming ``strategy.<key>`` and a valid example if ``value`` is wrong for it."""
    if key in ("canary", "surge"):
        if not isinstance(value, bool):
            raise ValueError(f"strategy.{key} must be true or false; got {value!r}")
    elif key == "batch_size":
        if value is not None and (not _is_int(value) or value < 1):
            raise ValueError(f"strategy.batch_size must be a number of instances of at least 1, e.g. 2; got {value!r}")
    elif key == "batch_percent":
        if value is not None and (not _is_int(value) or not 1 <= value <= 100):
            raise ValueError(f"strategy.batch_percent must be a whole percent from 1 to 100, e.g. 25; got {value!r}")
    elif key == "bake_seconds" and (not _is_int(value) or not 0 <= value <= MAX_BAKE_SECONDS):
        raise ValueError(
            f"strategy.bake_seconds must be whole seconds from 0 to {MAX_BAKE_SECONDS}, e.g. 30; got {value!r}"
        )


@dataclass(frozen=True)
class Strategy:
    """How a rollout proceeds; per app in the configuration, overridable per deploy.

    Example request options: ``{"canary": true, "batch_percent": 25, "bake_seconds": 30}``
    or ``{"batch_size": 2, "surge": false}``. ``batch_size`` (a count) wins over
    ``batch_percent`` (of the fleet) when both are set on the dataclass; a request may
    give only one of them.
    """

    canary: bool = True
    batch_size: int | None = None
    batch_percent: int | None = 25
    bake_seconds: int = 30
    surge: bool = True

    def __post_init__(self) -> None:
        for key, value in asdict(self).items():
            _check_field(key, value)
        if self.batch_size is None and self.batch_percent is None:
            raise ValueError("strategy needs batch_size (instances per batch) or batch_percent (of the fleet)")

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None, defaults: Strategy) -> Strategy:
        """``defaults`` with the options of a request applied; ``ValueError`` names a wrong option.

        Giving ``batch_size`` clears the default ``batch_percent`` and vice versa, so the
        request's choice is the one that applies.
        """
        if raw is None:
            return defaults
        if not isinstance(raw, Mapping):
            raise ValueError(f'strategy must be an object such as {{"batch_percent": 25}}; got {raw!r}')
        known = sorted(asdict(defaults))
        for key in raw:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                raise ValueError(f"strategy has no option {key!r}; {hint}the options are {', '.join(known)}")
        for key, value in raw.items():
            _check_field(key, value)
        changes = dict(raw)
        if raw.get("batch_size") is not None and raw.get("batch_percent") is not None:
            raise ValueError("strategy gives both batch_size and batch_percent; give only one of them")
        if raw.get("batch_size") is not None:
            changes.setdefault("batch_percent", None)
        if raw.get("batch_percent") is not None:
            changes.setdefault("batch_size", None)
        return replace(defaults, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The options as JSON data; ``Strategy.parse(s.as_dict(), Strategy()) == s``."""
        return asdict(self)

    def batch_count(self, fleet: int) -> int:
        """Instances per batch (after the canary) for a fleet of ``fleet`` in-service instances."""
        if self.batch_size is not None:
            return self.batch_size
        assert self.batch_percent is not None  # __post_init__ guarantees one of the two
        return max(1, math.ceil(self.batch_percent * fleet / 100))


@dataclass(frozen=True)
class RolloutPlan:
    """The batches of instance ids in order, and how many instances to launch before the first."""

    batches: tuple[tuple[str, ...], ...]
    surge: int


def _spread(instances: Sequence[Instance]) -> list[str]:
    """Instance ids ordered round-robin over zones (zones by name, ids by name within a zone).

    Cutting this order into consecutive batches takes each batch, and each run of
    consecutive batches, from as many zones as possible: within it, a zone has at most
    one instance more than another unless the other has none left.
    """
    zones: dict[str, list[str]] = {}
    for instance in sorted(instances, key=lambda i: (i.zone, i.id)):
        zones.setdefault(instance.zone, []).append(instance.id)
    rounds = zip_longest(*zones.values())
    return [instance_id for instance_id in chain.from_iterable(rounds) if instance_id is not None]


def plan_batches(instances: Sequence[Instance], *, strategy: Strategy, min_healthy: int) -> RolloutPlan:
    """Plan the rollout of a fleet's in-service ``instances``, keeping ``min_healthy`` in service.

    Every instance is in exactly one batch. With ``strategy.canary`` and at least two
    instances the first batch is a single instance. A batch never takes the fleet below
    ``min_healthy``; if even one instance cannot go out, the plan surges by just enough new
    instances (or, with ``strategy.surge`` off, refuses with ``ValueError``). The same input
    always gives the same plan.
    """
    if min_healthy < 0:
        raise ValueError(f"min_healthy must be 0 or more; got {min_healthy}")
    duplicates = sorted(i for i, n in Counter(i.id for i in instances).items() if n > 1)
    if duplicates:
        raise ValueError(f"instance {duplicates[0]} is listed more than once; list each in-service instance once")
    count = len(instances)
    if count == 0:
        return RolloutPlan(batches=(), surge=0)
    room = count - min_healthy
    surge = 0
    if room < 1:
        if not strategy.surge:
            raise ValueError(
                f"the fleet has {count} in-service instance(s) and must keep {min_healthy} healthy, so none can "
                "go out of service; allow surge (strategy.surge: true) or lower the fleet's min_capacity"
            )
        # Just enough new instances that one can go out while min_healthy stay in service.
        surge, room = min_healthy + 1 - count, 1
    size = min(strategy.batch_count(count), room)
    order = _spread(instances)
    batches: list[tuple[str, ...]] = []
    if strategy.canary and count >= 2:
        batches.append((order.pop(0),))
    batches.extend(tuple(order[start : start + size]) for start in range(0, len(order), size))
    return RolloutPlan(batches=tuple(batches), surge=surge)
