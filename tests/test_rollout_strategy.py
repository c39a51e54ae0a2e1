"""The rollout strategy: one model for the configuration, deploy requests and planning."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slipway.rollout.plan import Instance, plan_batches
from slipway.rollout.strategy import OPTIONS, Strategy, StrategyError, rollback_strategy


def test_no_options_keep_the_base() -> None:
    base = Strategy(canary=False, batch_size=3, batch_percent=None, bake_seconds=5)
    assert Strategy.parse(None, base) is base
    assert Strategy.parse({}, base) == base
    assert Strategy.parse(None) == Strategy()


def test_defaults() -> None:
    assert Strategy() == Strategy(canary=True, batch_size=None, batch_percent=25, bake_seconds=30)


def test_a_request_overrides_only_what_it_gives() -> None:
    parsed = Strategy.parse({"bake_seconds": 0, "canary": False})
    assert parsed == Strategy(canary=False, batch_size=None, batch_percent=25, bake_seconds=0)


def test_batch_size_replaces_a_base_percent_and_percent_replaces_a_base_size() -> None:
    assert Strategy.parse({"batch_size": 4}) == Strategy(batch_size=4, batch_percent=None)
    by_count = Strategy(batch_size=4, batch_percent=None)
    assert Strategy.parse({"batch_percent": 50}, by_count) == Strategy(batch_size=None, batch_percent=50)


strategies = st.one_of(
    st.builds(Strategy, batch_size=st.integers(1, 1000), batch_percent=st.none()),
    st.builds(Strategy, batch_size=st.none(), batch_percent=st.integers(1, 100)),
).flatmap(
    lambda base: st.builds(
        Strategy,
        canary=st.booleans(),
        batch_size=st.just(base.batch_size),
        batch_percent=st.just(base.batch_percent),
        bake_seconds=st.integers(0, 3600),
    )
)


@given(strategies, strategies)
def test_as_dict_round_trips_through_parse_over_any_base(strategy: Strategy, base: Strategy) -> None:
    assert Strategy.parse(strategy.as_dict(), base) == strategy


BAD_OPTIONS: dict[str, tuple[Any, str]] = {
    "not an object": ([("batch_size", 2)], "strategy: expected an object, got a list"),
    "unknown key, close to one": (
        {"batchsize": 2},
        "strategy.batchsize: is not a strategy option; remove it (did you mean 'batch_size'?)",
    ),
    "unknown key": (
        {"parallel": True},
        "strategy.parallel: is not a strategy option; remove it (the options are canary, batch_size, batch_percent, "
        "bake_seconds)",
    ),
    "batch_size 0": (
        {"batch_size": 0},
        "strategy.batch_size: 0 is out of range; give a number of instances per batch from 1 to 1000",
    ),
    "batch_size too many": ({"batch_size": 1001}, "strategy.batch_size: 1001 is out of range"),
    "batch_size text": ({"batch_size": "2"}, "strategy.batch_size: expected a whole number, got the string '2'"),
    "batch_size float": ({"batch_size": 2.0}, "strategy.batch_size: expected a whole number, got the number 2.0"),
    "batch_size true": ({"batch_size": True}, "strategy.batch_size: expected a whole number, got a boolean"),
    "percent 0": (
        {"batch_percent": 0},
        "strategy.batch_percent: 0 is out of range; give a whole percent of the fleet from 1 to 100",
    ),
    "percent 101": ({"batch_percent": 101}, "strategy.batch_percent: 101 is out of range"),
    "percent text": ({"batch_percent": "25%"}, "strategy.batch_percent: expected a whole number"),
    "both size and percent": (
        {"batch_size": 2, "batch_percent": 25},
        "strategy.batch_size: is given with batch_percent; give a batch size or a percent, not both",
    ),
    "bake negative": ({"bake_seconds": -1}, "strategy.bake_seconds: -1 is out of range; give 0 to 3600 seconds"),
    "bake over an hour": ({"bake_seconds": 3601}, "strategy.bake_seconds: 3601 is out of range"),
    "bake null": ({"bake_seconds": None}, "strategy.bake_seconds: expected a whole number, got null"),
    "canary 1": ({"canary": 1}, "strategy.canary: expected true or false, got the number 1"),
    "canary text": ({"canary": "yes"}, "strategy.canary: expected true or false, got the string 'yes'"),
    "canary null": ({"canary": None}, "strategy.canary: expected true or false, got null"),
    "surge, retired": (
        {"surge": True},
        "strategy.surge: is no longer an option: every instance switches in place, so a rollout never adds "
        "instances; remove it",
    ),
}


@pytest.mark.parametrize("raw, message", BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_a_wrong_option_is_refused_with_one_line_naming_it(raw: Any, message: str) -> None:
    with pytest.raises(StrategyError) as raised:
        Strategy.parse(raw)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_nulling_the_batch_options_keeps_the_base() -> None:
    # A client may send both keys with one of them null.
    assert Strategy.parse({"batch_size": None, "batch_percent": 50}) == Strategy(batch_percent=50)


def test_the_dataclass_checks_its_own_fields_too() -> None:
    with pytest.raises(StrategyError, match=r"strategy\.batch_percent: 0 is out of range"):
        Strategy(batch_percent=0)
    with pytest.raises(StrategyError, match="exactly one of batch_size and batch_percent"):
        Strategy(batch_size=2)


@given(st.sampled_from(sorted(o for o, rule in OPTIONS.items() if rule)), st.integers(-5000, 5000))
def test_whole_number_options_accept_exactly_their_range(option: str, value: int) -> None:
    rule = OPTIONS[option]
    assert rule is not None
    if rule.low <= value <= rule.high:
        assert getattr(Strategy.parse({option: value}), option) == value
    else:
        with pytest.raises(StrategyError, match=f"strategy.{option}: {value} is out of range"):
            Strategy.parse({option: value})


def test_batch_count_by_size_or_percent_of_the_fleet() -> None:
    assert Strategy(batch_size=3, batch_percent=None).batch_count(100) == 3
    assert Strategy(batch_percent=25).batch_count(10) == 3  # ceil(2.5)
    assert Strategy(batch_percent=1).batch_count(5) == 1  # at least one
    assert Strategy(batch_percent=100).batch_count(7) == 7


def test_a_rollback_goes_in_one_batch_without_canary_or_bake() -> None:
    chosen = rollback_strategy(Strategy(batch_percent=50, bake_seconds=60))
    assert chosen == Strategy(canary=False, batch_size=None, batch_percent=100, bake_seconds=0)
    fleet = [Instance(id=f"i-{n:02}", zone="us-east-1a" if n % 2 else "us-east-1b") for n in range(10)]
    assert [len(batch) for batch in plan_batches(fleet, strategy=chosen)] == [10]
