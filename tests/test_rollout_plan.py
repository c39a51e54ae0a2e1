"""Rollout planning: batch plans by property (every instance once, canary first, the strategy's
batch size, zones spread, deterministic) and by exact example."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slipway.rollout.plan import Instance, plan_batches, plan_rollback
from slipway.rollout.strategy import Strategy

# plan_batches: properties -------------------------------------------------------------------------

ZONES = ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d"]


@st.composite
def fleets(draw: st.DrawFn, max_size: int = 60) -> list[Instance]:
    """In-service instances with distinct ids over up to four zones, in any order."""
    zones = draw(st.lists(st.sampled_from(ZONES), min_size=1, max_size=4, unique=True))
    numbers = draw(st.lists(st.integers(0, 10**6), max_size=max_size, unique=True))
    return [Instance(id=f"i-{n:017x}", zone=draw(st.sampled_from(zones))) for n in numbers]


strategies = st.one_of(
    st.builds(
        Strategy, canary=st.booleans(), batch_size=st.integers(1, 30), batch_percent=st.none(), bake_seconds=st.just(0)
    ),
    st.builds(
        Strategy,
        canary=st.booleans(),
        batch_size=st.none(),
        batch_percent=st.integers(1, 100),
        bake_seconds=st.just(0),
    ),
)


@given(fleets(), strategies)
def test_every_instance_is_in_exactly_one_batch(fleet: list[Instance], strategy: Strategy) -> None:
    plan = plan_batches(fleet, strategy=strategy)
    planned = [i for batch in plan for i in batch]
    assert sorted(planned) == sorted(i.id for i in fleet)
    assert all(plan), "no empty batch"


@given(fleets(), strategies)
def test_the_canary_is_a_single_first_instance(fleet: list[Instance], strategy: Strategy) -> None:
    plan = plan_batches(fleet, strategy=strategy)
    if strategy.canary and len(fleet) >= 2:
        assert len(plan[0]) == 1


@given(fleets(), strategies)
def test_batches_are_the_strategys_size_whatever_the_fleet_keeps_in_service(
    fleet: list[Instance], strategy: Strategy
) -> None:
    """Every instance switches in place, so nothing but the strategy sizes a batch."""
    plan = plan_batches(fleet, strategy=strategy)
    if not fleet:
        return
    rest = plan[1:] if strategy.canary and len(fleet) >= 2 else plan
    size = strategy.batch_count(len(fleet))
    # Full batches of the strategy's size; only the last may be smaller.
    if rest:
        assert all(len(b) == size for b in rest[:-1]) and 1 <= len(rest[-1]) <= size


def unbalanced(window: list[str], left: Counter[str], zone_of: dict[str, str]) -> list[str]:
    """Zones that this run of batches takes 2+ fewer instances from than another zone,
    although they still have instances left to deploy after it."""
    taken = Counter(zone_of[i] for i in window)
    most = max(taken.values())
    return [zone for zone, n in left.items() if n > 0 and taken[zone] < most - 1]


@settings(deadline=None)  # checks every run of batches: quadratic in the number of batches
@given(fleets(), strategies)
def test_batches_spread_across_zones(fleet: list[Instance], strategy: Strategy) -> None:
    """Every batch, and every run of consecutive batches, takes from as many zones as it can:
    a zone gives at most one instance fewer than another unless it has none left afterwards.
    So no batch takes one zone while others still have many to go."""
    plan = plan_batches(fleet, strategy=strategy)
    zone_of = {i.id: i.zone for i in fleet}
    for first in range(len(plan)):
        scheduled = [i for batch in plan[:first] for i in batch]
        for last in range(first, len(plan)):
            window = [i for batch in plan[first : last + 1] for i in batch]
            left = Counter(zone_of.values()) - Counter(zone_of[i] for i in scheduled + window)
            assert not unbalanced(window, left, zone_of), (first, last, plan)


@given(fleets(), strategies, st.randoms())
def test_the_same_fleet_in_any_order_gives_the_same_plan(
    fleet: list[Instance], strategy: Strategy, random: Any
) -> None:
    plan = plan_batches(fleet, strategy=strategy)
    shuffled = list(fleet)
    random.shuffle(shuffled)
    assert plan_batches(shuffled, strategy=strategy) == plan


def test_an_empty_fleet_has_nothing_to_do() -> None:
    assert plan_batches([], strategy=Strategy()) == ()


def test_an_instance_listed_twice_is_refused() -> None:
    fleet = [Instance("i-1", "a"), Instance("i-1", "a"), Instance("i-2", "b")]
    with pytest.raises(ValueError, match="instance i-1 is listed more than once"):
        plan_batches(fleet, strategy=Strategy())
    with pytest.raises(ValueError, match="instance i-1 is listed more than once"):
        plan_rollback(fleet)


# plan_batches: exact plans ------------------------------------------------------------------------


def fleet_of(count: int, zones: str = "abc") -> list[Instance]:
    """``i-01``… spread over the zones in turn: i-01 in a, i-02 in b, i-03 in c, i-04 in a…"""
    return [Instance(f"i-{n:02d}", f"us-east-1{zones[(n - 1) % len(zones)]}") for n in range(1, count + 1)]


def test_one_instance_is_a_single_batch_without_canary() -> None:
    assert plan_batches(fleet_of(1), strategy=Strategy()) == (("i-01",),)


def test_two_instances_canary_then_the_other() -> None:
    assert plan_batches(fleet_of(2), strategy=Strategy()) == (("i-01",), ("i-02",))


def test_five_instances_in_three_zones() -> None:
    # a: i-01 i-04, b: i-02 i-05, c: i-03; 25% of 5 is 2 per batch after the canary.
    assert plan_batches(fleet_of(5), strategy=Strategy()) == (("i-01",), ("i-02", "i-03"), ("i-04", "i-05"))


def test_five_instances_with_zones_of_unequal_size() -> None:
    fleet = [Instance(f"i-{n}", zone) for n, zone in enumerate(["b", "a", "a", "a", "c"], start=1)]
    plan = plan_batches(fleet, strategy=Strategy(canary=False, batch_size=2, batch_percent=None))
    # Round-robin a b c a a: the last batch can only come from zone a.
    assert plan == (("i-2", "i-1"), ("i-5", "i-3"), ("i-4",))


def test_ten_instances() -> None:
    # Zone order a (01 04 07 10), b (02 05 08), c (03 06 09): round-robin 01 02 03 04 05 06 07 08 09 10.
    assert plan_batches(fleet_of(10), strategy=Strategy()) == (
        ("i-01",),
        ("i-02", "i-03", "i-04"),
        ("i-05", "i-06", "i-07"),
        ("i-08", "i-09", "i-10"),
    )


def test_ten_instances_in_batches_of_four_without_canary() -> None:
    plan = plan_batches(fleet_of(10, zones="ab"), strategy=Strategy(canary=False, batch_size=4, batch_percent=None))
    assert plan == (("i-01", "i-02", "i-03", "i-04"), ("i-05", "i-06", "i-07", "i-08"), ("i-09", "i-10"))


def test_a_hundred_instances() -> None:
    fleet = [Instance(f"i-{n:03d}", f"us-east-1{'abc'[n % 3]}") for n in range(100)]
    plan = plan_batches(fleet, strategy=Strategy())
    assert [len(b) for b in plan] == [1, 25, 25, 25, 24]
    assert plan[0] == ("i-000",)
    # Round-robin a, b, c over ids sorted within each zone: a holds 000 003 …, b 001 004 …, c 002 005 …
    assert plan[1][:6] == ("i-001", "i-002", "i-003", "i-004", "i-005", "i-006")
    assert plan[-1][-2:] == ("i-098", "i-099")
    zones = [Counter("abc"[int(i[2:]) % 3] for i in batch) for batch in plan[1:]]
    assert [sorted(z.values()) for z in zones] == [[8, 8, 9], [8, 8, 9], [8, 8, 9], [8, 8, 8]]


def test_a_hundred_instances_all_at_once() -> None:
    plan = plan_batches(fleet_of(100), strategy=Strategy(canary=False, batch_percent=100))
    assert [len(b) for b in plan] == [100]


# plan_rollback --------------------------------------------------------------------------------


@given(fleets(max_size=100))
def test_a_rollback_puts_every_changed_instance_back_at_once(changed: list[Instance]) -> None:
    batches = plan_rollback(changed)
    assert len(batches) == (1 if changed else 0)
    assert sorted(i for batch in batches for i in batch) == sorted(i.id for i in changed)


def test_a_rollback_is_one_batch_spread_over_zones() -> None:
    assert plan_rollback(fleet_of(4, zones="ab")[::-1]) == (("i-01", "i-02", "i-03", "i-04"),)
