"""Rollout planning: batch plans by property (every instance once, canary first, minimum
healthy kept, zones spread, deterministic) and by exact example."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slipway.rollout.plan import Instance, RolloutPlan, plan_batches, plan_rollback
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
        Strategy,
        canary=st.booleans(),
        batch_size=st.integers(1, 30),
        batch_percent=st.none(),
        bake_seconds=st.just(0),
        surge=st.booleans(),
    ),
    st.builds(
        Strategy,
        canary=st.booleans(),
        batch_size=st.none(),
        batch_percent=st.integers(1, 100),
        bake_seconds=st.just(0),
        surge=st.booleans(),
    ),
)


def plan_or_refusal(fleet: list[Instance], strategy: Strategy, min_healthy: int) -> RolloutPlan | None:
    """The plan; ``None`` where the planner must refuse (too small a fleet and no surge)."""
    if fleet and len(fleet) - min_healthy < 1 and not strategy.surge:
        with pytest.raises(ValueError, match=r"allow surge .* or lower the fleet's min_capacity"):
            plan_batches(fleet, strategy=strategy, min_healthy=min_healthy)
        return None
    return plan_batches(fleet, strategy=strategy, min_healthy=min_healthy)


@given(fleets(), strategies, st.integers(0, 70))
def test_every_instance_is_in_exactly_one_batch(fleet: list[Instance], strategy: Strategy, min_healthy: int) -> None:
    plan = plan_or_refusal(fleet, strategy, min_healthy)
    if plan is not None:
        planned = [i for batch in plan.batches for i in batch]
        assert sorted(planned) == sorted(i.id for i in fleet)
        assert all(plan.batches), "no empty batch"


@given(fleets(), strategies, st.integers(0, 70))
def test_the_canary_is_a_single_first_instance(fleet: list[Instance], strategy: Strategy, min_healthy: int) -> None:
    plan = plan_or_refusal(fleet, strategy, min_healthy)
    if plan is not None and strategy.canary and len(fleet) >= 2:
        assert len(plan.batches[0]) == 1


@given(fleets(), strategies, st.integers(0, 70))
def test_batches_are_the_requested_size_but_never_break_the_minimum(
    fleet: list[Instance], strategy: Strategy, min_healthy: int
) -> None:
    plan = plan_or_refusal(fleet, strategy, min_healthy)
    if plan is None or not fleet:
        return
    count = len(fleet)
    rest = plan.batches[1:] if strategy.canary and count >= 2 else plan.batches
    if plan.surge:
        assert count - min_healthy < 1 and plan.surge == min_healthy + 1 - count
        assert {len(b) for b in plan.batches} == {1}
    else:
        size = min(strategy.batch_count(count), count - min_healthy)
        assert max(len(b) for b in plan.batches) <= max(1, count - min_healthy)
        # Full batches of the planned size; only the last may be smaller.
        if rest:
            assert all(len(b) == size for b in rest[:-1]) and 1 <= len(rest[-1]) <= size
    for batch in plan.batches:
        assert count + plan.surge - len(batch) >= min_healthy


@given(fleets(), strategies, st.integers(0, 70))
def test_surge_only_when_the_fleet_cannot_spare_one(
    fleet: list[Instance], strategy: Strategy, min_healthy: int
) -> None:
    plan = plan_or_refusal(fleet, strategy, min_healthy)
    if plan is not None:
        assert (plan.surge > 0) == (bool(fleet) and len(fleet) - min_healthy < 1)


def unbalanced(window: list[str], left: Counter[str], zone_of: dict[str, str]) -> list[str]:
    """Zones that this run of batches takes 2+ fewer instances from than another zone,
    although they still have instances left to deploy after it."""
    taken = Counter(zone_of[i] for i in window)
    most = max(taken.values())
    return [zone for zone, n in left.items() if n > 0 and taken[zone] < most - 1]


@settings(deadline=None)  # checks every run of batches: quadratic in the number of batches
@given(fleets(), strategies, st.integers(0, 70))
def test_batches_spread_across_zones(fleet: list[Instance], strategy: Strategy, min_healthy: int) -> None:
    """Every batch, and every run of consecutive batches, takes from as many zones as it can:
    a zone gives at most one instance fewer than another unless it has none left afterwards.
    So no batch drains one zone while others still have many to go."""
    plan = plan_or_refusal(fleet, strategy, min_healthy)
    if plan is None:
        return
    zone_of = {i.id: i.zone for i in fleet}
    for first in range(len(plan.batches)):
        scheduled = [i for batch in plan.batches[:first] for i in batch]
        for last in range(first, len(plan.batches)):
            window = [i for batch in plan.batches[first : last + 1] for i in batch]
            left = Counter(zone_of.values()) - Counter(zone_of[i] for i in scheduled + window)
            assert not unbalanced(window, left, zone_of), (first, last, plan)


@given(fleets(), strategies, st.integers(0, 70), st.randoms())
def test_the_same_fleet_in_any_order_gives_the_same_plan(
    fleet: list[Instance], strategy: Strategy, min_healthy: int, random: Any
) -> None:
    plan = plan_or_refusal(fleet, strategy, min_healthy)
    shuffled = list(fleet)
    random.shuffle(shuffled)
    assert plan_or_refusal(shuffled, strategy, min_healthy) == plan


def test_an_empty_fleet_has_nothing_to_do() -> None:
    assert plan_batches([], strategy=Strategy(), min_healthy=2) == RolloutPlan(batches=(), surge=0)


def test_an_instance_listed_twice_is_refused() -> None:
    fleet = [Instance("i-1", "a"), Instance("i-1", "a"), Instance("i-2", "b")]
    with pytest.raises(ValueError, match="instance i-1 is listed more than once"):
        plan_batches(fleet, strategy=Strategy(), min_healthy=0)


def test_a_negative_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="min_healthy must be 0 or more; got -1"):
        plan_batches([Instance("i-1", "a")], strategy=Strategy(), min_healthy=-1)


# plan_batches: exact plans ------------------------------------------------------------------------


def fleet_of(count: int, zones: str = "abc") -> list[Instance]:
    """``i-01``… spread over the zones in turn: i-01 in a, i-02 in b, i-03 in c, i-04 in a…"""
    return [Instance(f"i-{n:02d}", f"us-east-1{zones[(n - 1) % len(zones)]}") for n in range(1, count + 1)]


def test_one_instance_that_may_go_out_is_a_single_batch_without_canary() -> None:
    assert plan_batches(fleet_of(1), strategy=Strategy(), min_healthy=0) == RolloutPlan(batches=(("i-01",),), surge=0)


def test_one_instance_that_must_stay_healthy_surges_by_one() -> None:
    assert plan_batches(fleet_of(1), strategy=Strategy(), min_healthy=1) == RolloutPlan(batches=(("i-01",),), surge=1)


def test_too_small_a_fleet_without_surge_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError) as raised:
        plan_batches(fleet_of(2), strategy=Strategy(surge=False), min_healthy=2)
    assert str(raised.value) == (
        "the fleet has 2 in-service instance(s) and must keep 2 healthy, so none can go out of service; "
        "allow surge (strategy.surge: true) or lower the fleet's min_capacity"
    )


def test_two_instances_canary_then_the_other() -> None:
    plan = plan_batches(fleet_of(2), strategy=Strategy(), min_healthy=1)
    assert plan == RolloutPlan(batches=(("i-01",), ("i-02",)), surge=0)


def test_two_instances_at_minimum_two_surge_by_one() -> None:
    plan = plan_batches(fleet_of(2), strategy=Strategy(), min_healthy=2)
    assert plan == RolloutPlan(batches=(("i-01",), ("i-02",)), surge=1)


def test_five_instances_in_three_zones() -> None:
    # a: i-01 i-04, b: i-02 i-05, c: i-03; 25% of 5 is 2 per batch after the canary.
    plan = plan_batches(fleet_of(5), strategy=Strategy(), min_healthy=2)
    assert plan == RolloutPlan(batches=(("i-01",), ("i-02", "i-03"), ("i-04", "i-05")), surge=0)


def test_five_instances_capped_by_the_minimum() -> None:
    plan = plan_batches(fleet_of(5), strategy=Strategy(canary=False, batch_size=4, batch_percent=None), min_healthy=3)
    assert plan == RolloutPlan(batches=(("i-01", "i-02"), ("i-03", "i-04"), ("i-05",)), surge=0)


def test_five_instances_with_zones_of_unequal_size() -> None:
    fleet = [Instance(f"i-{n}", zone) for n, zone in enumerate(["b", "a", "a", "a", "c"], start=1)]
    plan = plan_batches(fleet, strategy=Strategy(canary=False, batch_size=2, batch_percent=None), min_healthy=0)
    # Round-robin a b c a a: the last batch can only come from zone a.
    assert plan == RolloutPlan(batches=(("i-2", "i-1"), ("i-5", "i-3"), ("i-4",)), surge=0)


def test_ten_instances() -> None:
    plan = plan_batches(fleet_of(10), strategy=Strategy(), min_healthy=2)
    # Zone order a (01 04 07 10), b (02 05 08), c (03 06 09): round-robin 01 02 03 04 05 06 07 08 09 10.
    assert plan == RolloutPlan(
        batches=(("i-01",), ("i-02", "i-03", "i-04"), ("i-05", "i-06", "i-07"), ("i-08", "i-09", "i-10")), surge=0
    )


def test_ten_instances_in_batches_of_four_without_canary() -> None:
    plan = plan_batches(
        fleet_of(10, zones="ab"), strategy=Strategy(canary=False, batch_size=4, batch_percent=None), min_healthy=0
    )
    assert plan == RolloutPlan(
        batches=(("i-01", "i-02", "i-03", "i-04"), ("i-05", "i-06", "i-07", "i-08"), ("i-09", "i-10")), surge=0
    )


def test_a_hundred_instances() -> None:
    fleet = [Instance(f"i-{n:03d}", f"us-east-1{'abc'[n % 3]}") for n in range(100)]
    plan = plan_batches(fleet, strategy=Strategy(), min_healthy=50)
    assert [len(b) for b in plan.batches] == [1, 25, 25, 25, 24] and plan.surge == 0
    assert plan.batches[0] == ("i-000",)
    # Round-robin a, b, c over ids sorted within each zone: a holds 000 003 …, b 001 004 …, c 002 005 …
    assert plan.batches[1][:6] == ("i-001", "i-002", "i-003", "i-004", "i-005", "i-006")
    assert plan.batches[-1][-2:] == ("i-098", "i-099")
    zones = [Counter("abc"[int(i[2:]) % 3] for i in batch) for batch in plan.batches[1:]]
    assert [sorted(z.values()) for z in zones] == [[8, 8, 9], [8, 8, 9], [8, 8, 9], [8, 8, 8]]


def test_a_hundred_instances_half_at_a_time_stop_at_the_minimum() -> None:
    fleet = fleet_of(100)
    plan = plan_batches(fleet, strategy=Strategy(canary=False, batch_percent=60), min_healthy=90)
    assert [len(b) for b in plan.batches] == [10] * 10 and plan.surge == 0


# plan_rollback --------------------------------------------------------------------------------


@given(fleet=fleets(max_size=40), data=st.data())
@settings(max_examples=200, deadline=None)
def test_a_rollback_puts_every_changed_instance_back_once_failing_first_never_below_the_minimum(
    fleet: list[Instance], data: st.DataObject
) -> None:
    changed = data.draw(st.lists(st.sampled_from(fleet), unique=True)) if fleet else []
    failing = {i.id for i in data.draw(st.lists(st.sampled_from(changed), unique=True))} if changed else set()
    serving = len(fleet)
    min_healthy = data.draw(st.integers(0, serving))
    batches = plan_rollback(changed, failing=failing, serving=serving, min_healthy=min_healthy)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == sorted(i.id for i in changed)  # each changed instance exactly once
    assert all(batches)  # no empty batch
    if failing:
        assert failing <= set(batches[0])  # the batch caught mid-switch is put back first
    room = max(1, serving - min_healthy)
    # A batch takes out no more than the room; the failing batch is out already and takes up its share.
    if failing:
        assert len(set(batches[0]) - failing) <= max(0, room - len(failing))
    assert all(len(batch) <= room for batch in batches[1 if failing else 0 :])


def test_a_rollback_of_ten_keeping_five_goes_in_two_batches_the_failing_one_first() -> None:
    fleet = [Instance(f"i-{n:02d}", ZONES[n % 2]) for n in range(10)]
    batches = plan_rollback(fleet[:6], failing={"i-05"}, serving=10, min_healthy=5)
    assert batches == (("i-05", "i-00", "i-01", "i-02", "i-03"), ("i-04",))
    # Nothing failing (a cancel between batches): batches as large as the room, zones spread.
    assert plan_rollback(fleet, failing=set(), serving=10, min_healthy=5) == (
        ("i-00", "i-01", "i-02", "i-03", "i-04"),
        ("i-05", "i-06", "i-07", "i-08", "i-09"),
    )
    # A fleet at its minimum still rolls back, one instance at a time.
    assert plan_rollback(fleet[:2], failing=set(), serving=2, min_healthy=2) == (("i-00",), ("i-01",))
