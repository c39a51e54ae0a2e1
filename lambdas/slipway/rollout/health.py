"""Health gates of a rollout as small pure decisions, in the shape of cdk-nag's rules. No AWS calls.

Each function takes what AWS reported (target health, command invocations, alarm states)
and returns a :class:`Decision`: ``HEALTHY`` (go on), ``WAIT`` (ask again later) or
``FAILED`` (roll back), with a one-line reason naming the instance or alarm at fault.
The state machine routes on the verdict's name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum
from typing import NamedTuple


class Verdict(Enum):
    """Where a health gate stands."""

    HEALTHY = "healthy"
    WAIT = "wait"
    FAILED = "failed"


class Decision(NamedTuple):
    """A verdict, the reason a person reads, and the instances (or alarms) it is about."""

    verdict: Verdict
    reason: str
    subjects: tuple[str, ...] = ()


# Elastic Load Balancing target states (DescribeTargetHealth). A target of a batch stays in the
# target group throughout its switch: if it served (was healthy) before, any "unhealthy*" state
# (also "unhealthy.draining") fails the batch at once; if it did not (a first deploy, nothing
# answering yet), it is waited for until healthy. Initial, draining, unused and unavailable,
# which a target that served reaches only by leaving the fleet (a scale-in), do not fail it.
TARGET_HEALTHY = "healthy"
UNHEALTHY = "unhealthy"

# SSM command invocation statuses (Status and StatusDetails of ListCommandInvocations).
COMMAND_SUCCESS = "Success"
COMMAND_PENDING = {"Pending", "InProgress", "Delayed"}
COMMAND_FAILED = {
    "Failed",
    "TimedOut",
    "Cancelled",
    "Cancelling",
    "Undeliverable",
    "Terminated",
    "DeliveryTimedOut",
    "ExecutionTimedOut",
}


def _listing(items: Iterable[str]) -> str:
    return ", ".join(items)


def batch_verdict(
    states: Mapping[str, str],
    batch: Iterable[str],
    *,
    unserved: Iterable[str],
    waited_seconds: float,
    timeout_seconds: float,
    reasons: Mapping[str, str] | None = None,
) -> Decision:
    """Are the targets of ``batch`` healthy in the target group after its switch, given ``states``
    (instance id → state)? ``unserved`` are those that were not healthy before it.

    A target that served and is now unhealthy fails at once: the deploy agent checked the release
    through the instance's front before it served, so a target that then fails the load
    balancer's checks (a release that fails only later) will not recover by itself. One that did
    not serve is waited for until healthy, and fails once ``waited_seconds`` reaches
    ``timeout_seconds``. ``reasons`` (instance id → ELB's reason) goes into a failure's message.
    """
    reasons = reasons or {}
    wanted, waiting_for = sorted(set(batch)), set(unserved)

    def described(instance: str) -> str:
        why = reasons.get(instance)
        return f"{instance} ({states.get(instance, 'not registered')}{': ' + why if why else ''})"

    unhealthy = [i for i in wanted if i not in waiting_for and states.get(i, "").startswith(UNHEALTHY)]
    if unhealthy:
        return Decision(
            Verdict.FAILED,
            f"unhealthy in the target group: {_listing(described(i) for i in unhealthy)}",
            tuple(unhealthy),
        )
    waiting = [i for i in wanted if i in waiting_for and states.get(i) != TARGET_HEALTHY]
    if not waiting:
        return Decision(Verdict.HEALTHY, f"no target of {len(wanted)} unhealthy")
    if waited_seconds >= timeout_seconds:
        return Decision(
            Verdict.FAILED,
            f"not healthy in the target group after {waited_seconds:.0f}s (timeout {timeout_seconds:.0f}s): "
            f"{_listing(described(i) for i in waiting)}",
            tuple(waiting),
        )
    return Decision(
        Verdict.WAIT,
        f"waiting for {len(waiting)} target(s) that did not serve before to pass the load balancer's checks: "
        f"{_listing(described(i) for i in waiting)}",
        tuple(waiting),
    )


def command_verdict(invocations: Mapping[str, str], *, waited: float, timeout: float) -> Decision:
    """Has the deploy command succeeded on every instance, given ``invocations`` (instance id → status)?

    A failed invocation fails at once; pending ones are waited for until ``timeout``. An
    unknown status fails: SSM's terminal statuses are a closed list, so a status outside it
    cannot be taken for success.
    """
    if not invocations:
        if waited >= timeout:
            return Decision(
                Verdict.FAILED, f"no command invocation listed after {waited:.0f}s (timeout {timeout:.0f}s)"
            )
        return Decision(Verdict.WAIT, "no command invocation listed yet")
    ordered = sorted(invocations.items())
    failed = [(i, s) for i, s in ordered if s != COMMAND_SUCCESS and s not in COMMAND_PENDING]
    if failed:
        described = _listing(f"{i} {s}" if s in COMMAND_FAILED else f"{i} (unexpected status {s!r})" for i, s in failed)
        return Decision(Verdict.FAILED, f"the deploy command failed on {described}", tuple(i for i, _ in failed))
    pending = [i for i, s in ordered if s in COMMAND_PENDING]
    if not pending:
        return Decision(Verdict.HEALTHY, f"the deploy command succeeded on {len(ordered)} instance(s)")
    described = _listing(f"{i} {invocations[i]}" for i in pending)
    if waited >= timeout:
        return Decision(
            Verdict.FAILED,
            f"the deploy command did not finish in {timeout:.0f}s on {described}",
            tuple(pending),
        )
    return Decision(
        Verdict.WAIT, f"waiting for the deploy command on {len(pending)} of {len(ordered)}: {described}", tuple(pending)
    )


ALARM_FIRING = "ALARM"
ALARM_QUIET = {"OK", "INSUFFICIENT_DATA"}


def alarms_verdict(alarm_states: Mapping[str, str]) -> Decision:
    """Is any of the fleet's alarms firing, given ``alarm_states`` (alarm name → state value)?

    ``INSUFFICIENT_DATA`` passes: an error-rate alarm has no data when nothing failed. An
    unknown state fails, naming the alarm, rather than hide a firing alarm.
    """
    ordered = sorted(alarm_states.items())
    firing = [name for name, state in ordered if state == ALARM_FIRING]
    if firing:
        return Decision(Verdict.FAILED, f"alarm firing: {_listing(firing)}", tuple(firing))
    unknown = [(name, state) for name, state in ordered if state not in ALARM_QUIET]
    if unknown:
        described = _listing(f"{name} ({state!r})" for name, state in unknown)
        return Decision(Verdict.FAILED, f"alarm in an unexpected state: {described}", tuple(n for n, _ in unknown))
    return Decision(Verdict.HEALTHY, f"{len(ordered)} alarm(s) quiet" if ordered else "no alarms to watch")
