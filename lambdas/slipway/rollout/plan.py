"""Rollout planning: which instances switch together, in which order. No AWS calls.

Every instance switches in place (docs/switch.md): the new release starts beside the one
that serves and the instance's front moves to it, so no instance leaves the load balancer
and a batch's size is the strategy's alone (ARCHITECTURE.md section 7): a canary of one
instance first, then batches by count or percent, spread across availability zones. A
rollback puts every changed instance back at once (:func:`plan_rollback`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, zip_longest

from slipway.rollout.strategy import Strategy


@dataclass(frozen=True)
class Instance:
    """An in-service EC2 instance of a fleet and its availability zone."""

    id: str
    zone: str


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


def _distinct(instances: Sequence[Instance]) -> None:
    duplicates = sorted(i for i, n in Counter(i.id for i in instances).items() if n > 1)
    if duplicates:
        raise ValueError(f"instance {duplicates[0]} is listed more than once; list each in-service instance once")


def plan_batches(instances: Sequence[Instance], *, strategy: Strategy) -> tuple[tuple[str, ...], ...]:
    """The batches of a rollout over a fleet's in-service ``instances``, in order.

    Every instance is in exactly one batch. With ``strategy.canary`` and at least two
    instances the first batch is a single instance; the others are
    ``strategy.batch_count`` instances each (the last may be smaller), spread across zones.
    The same input always gives the same plan.
    """
    _distinct(instances)
    if not instances:
        return ()
    order = _spread(instances)
    size = strategy.batch_count(len(order))
    batches: list[tuple[str, ...]] = []
    if strategy.canary and len(order) >= 2:
        batches.append((order.pop(0),))
    batches.extend(tuple(order[start : start + size]) for start in range(0, len(order), size))
    return tuple(batches)


def plan_rollback(changed: Sequence[Instance]) -> tuple[tuple[str, ...], ...]:
    """The batches that put the ``changed`` instances back on the previous release: one, all of them.

    Each keeps the previous release staged and switches back in place, the release it serves
    answering until the previous one does: no instance leaves the load balancer, so nothing
    limits the batch, and the previous release is one the fleet ran before (no canary, no bake).
    """
    _distinct(changed)
    return (tuple(_spread(changed)),) if changed else ()
