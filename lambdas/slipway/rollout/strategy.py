"""How a rollout proceeds: the one definition of the strategy, its options and their ranges. Pure.

The same model validates an app's ``rollout`` settings in ``cdk.json`` (at synthesis), the
``strategy`` of a deploy request (in the API), and is what the tasks plan with. Each
option's rule is stated once, in :data:`OPTIONS`; a wrong value raises
:class:`StrategyError` naming the option, the problem and the fix, which the configuration
turns into its one-line error and the API into a 400.

Example: ``{"canary": true, "batch_percent": 25, "bake_seconds": 30}`` (the defaults), or
``{"batch_size": 2}``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, NamedTuple


class StrategyError(ValueError):
    """A strategy option is wrong: ``option``, what is wrong with it, and what to write instead."""

    def __init__(self, option: str, problem: str, fix: str) -> None:
        super().__init__(f"strategy{'.' + option if option else ''}: {problem}; {fix}")
        self.option, self.problem, self.fix = option, problem, fix


class _Range(NamedTuple):
    low: int
    high: int
    fix: str


# Whole-number options and their ranges; canary is true or false.
OPTIONS: dict[str, _Range | None] = {
    "canary": None,
    "batch_size": _Range(1, 1000, "give a number of instances per batch from 1 to 1000, e.g. 2"),
    "batch_percent": _Range(1, 100, "give a whole percent of the fleet from 1 to 100, e.g. 25"),
    "bake_seconds": _Range(0, 3600, "give 0 to 3600 seconds of alarm watching after each batch, e.g. 30"),
}
# Options earlier versions had, and why they are gone: a strategy that names one is refused saying so.
RETIRED = {
    "surge": "is no longer an option: every instance switches in place, so a rollout never adds instances",
}


def describe_json(value: object) -> str:
    """A JSON value in words, for a message that says what was given: ``the string '2'``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, Mapping):
        return "an object"
    return "a list" if isinstance(value, (list, tuple)) else type(value).__name__


def _check(option: str, value: object) -> None:
    rule = OPTIONS[option]
    if rule is None:
        if not isinstance(value, bool):
            raise StrategyError(option, f"expected true or false, got {describe_json(value)}", "write true or false")
        return
    # bool is an int in Python, never in a strategy: "batch_size": true must not mean one instance.
    if not isinstance(value, int) or isinstance(value, bool):
        raise StrategyError(option, f"expected a whole number, got {describe_json(value)}", rule.fix)
    if not rule.low <= value <= rule.high:
        raise StrategyError(option, f"{value} is out of range", rule.fix)


@dataclass(frozen=True)
class Strategy:
    """A rollout's options; exactly one of ``batch_size`` (a count) and ``batch_percent`` is set."""

    canary: bool = True
    batch_size: int | None = None
    batch_percent: int | None = 25
    bake_seconds: int = 30

    def __post_init__(self) -> None:
        for option, value in asdict(self).items():
            if value is not None or option not in ("batch_size", "batch_percent"):
                _check(option, value)
        if (self.batch_size is None) == (self.batch_percent is None):
            raise StrategyError(
                "batch_size", "exactly one of batch_size and batch_percent must be set", "give one of them"
            )

    @classmethod
    def parse(cls, raw: object, base: Strategy | None = None) -> Strategy:
        """``base`` (default: the defaults) with the options of ``raw`` applied.

        Giving ``batch_size`` clears the base's ``batch_percent`` and vice versa; giving both
        is refused. Unknown options are refused with the closest known one.
        """
        start = base or cls()
        if raw is None:
            return start
        if not isinstance(raw, Mapping):
            raise StrategyError(
                "",
                f"expected an object, got {describe_json(raw)}",
                'write it as {"batch_percent": 25, "bake_seconds": 30}',
            )
        for option in raw:
            if option in RETIRED:
                raise StrategyError(str(option), RETIRED[option], "remove it")
            if option not in OPTIONS:
                close = difflib.get_close_matches(str(option), list(OPTIONS), n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"the options are {', '.join(OPTIONS)}"
                raise StrategyError(str(option), "is not a strategy option", f"remove it ({hint})")
        if raw.get("batch_size") is not None and raw.get("batch_percent") is not None:
            raise StrategyError("batch_size", "is given with batch_percent", "give a batch size or a percent, not both")
        changes: dict[str, Any] = {}
        for option, value in raw.items():
            if option in ("batch_size", "batch_percent") and value is None:
                continue
            _check(option, value)
            changes[option] = value
        if "batch_size" in changes:
            changes["batch_percent"] = None
        elif "batch_percent" in changes:
            changes["batch_size"] = None
        return replace(start, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The options as JSON, only the batch option that is set: ``Strategy.parse(s.as_dict()) == s``."""
        chosen = asdict(self)
        return {option: value for option, value in chosen.items() if value is not None}

    def batch_count(self, fleet: int) -> int:
        """Instances per batch (after the canary) for a fleet of ``fleet`` in-service instances."""
        if self.batch_size is not None:
            return self.batch_size
        assert self.batch_percent is not None  # __post_init__ guarantees one of the two
        return max(1, math.ceil(self.batch_percent * fleet / 100))


def rollback_strategy(base: Strategy) -> Strategy:
    """How a rollback goes, from the app's strategy: back to a release the fleet ran and keeps
    staged, so no canary and no bake, every instance in one batch (each switches in place)."""
    return replace(base, canary=False, batch_size=None, batch_percent=100, bake_seconds=0)
