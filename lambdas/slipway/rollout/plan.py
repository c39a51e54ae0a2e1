"""Rollout planning: which instances go out of service together, in which order. No AWS calls.

A rollout replaces the release on a fleet batch by batch (ARCHITECTURE.md section 6): a
canary of one instance first, then batches by count or percent, spread across availability
zones, never so large that the fleet drops below its minimum healthy count. A fleet too
small to take even one instance out is first grown ("surge"): the state machine adds the
instances, waits until they serve (they boot the old ``current``), and plans again over
the larger fleet, so they are deployed in a batch like the others.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from itertools import chain, zip_longest

from slipway.rollout.strategy import Strategy


@dataclass(frozen=True)
class Instance:
    """An in-service EC2 instance of a fleet and its availability zone."""

    id: str
    zone: str


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


def plan_rollback(
    changed: Sequence[Instance], *, failing: Collection[str], serving: int, min_healthy: int
) -> tuple[tuple[str, ...], ...]:
    """Batches that put the ``changed`` instances back on the previous release, fastest first.

    ``failing`` (the batch that was being switched, out of service or unhealthy) goes in the
    first batch, with as many of the others as the room allows; the rest follow in batches
    as large as keeping ``min_healthy`` of the ``serving`` instances allows, spread across
    zones. ``serving`` counts the instances that take traffic when none is out (the failing
    ones included), so the room is ``serving - min_healthy``, and at least one.
    """
    first = [i.id for i in sorted(changed, key=lambda i: i.id) if i.id in failing]
    rest = _spread([i for i in changed if i.id not in failing])
    room = max(1, serving - min_healthy)
    head = max(0, room - len(first))
    batches = [tuple(first + rest[:head])] if first else []
    rest = rest[head:] if first else rest
    batches.extend(tuple(rest[start : start + room]) for start in range(0, len(rest), room))
    return tuple(b for b in batches if b)
