"""The rollout's health gates: every target state, command status and alarm state, and
the timeouts, decide HEALTHY, WAIT or FAILED with a reason naming what is at fault."""

from __future__ import annotations

import pytest

from slipway.rollout.health import Decision, Verdict, alarms_verdict, command_verdict, targets_verdict

HEALTHY, WAIT, FAILED = Verdict.HEALTHY, Verdict.WAIT, Verdict.FAILED

# Target health -----------------------------------------------------------------------------------

# Every state of Elastic Load Balancing's TargetHealth, for one instance, before the timeout.
TARGET_STATES = {
    "healthy": (HEALTHY, "1 target(s) healthy"),
    "initial": (WAIT, "waiting for 1 of 1 target(s): i-1 (initial)"),
    "draining": (WAIT, "waiting for 1 of 1 target(s): i-1 (draining)"),
    "unused": (WAIT, "waiting for 1 of 1 target(s): i-1 (unused)"),
    "unavailable": (WAIT, "waiting for 1 of 1 target(s): i-1 (unavailable)"),
    "unhealthy": (FAILED, "unhealthy in the target group: i-1 (unhealthy)"),
    "unhealthy.draining": (FAILED, "unhealthy in the target group: i-1 (unhealthy.draining)"),
    "some-future-state": (WAIT, "waiting for 1 of 1 target(s): i-1 (some-future-state)"),
}


@pytest.mark.parametrize("state, expected", TARGET_STATES.items(), ids=TARGET_STATES.keys())
def test_each_target_state_before_the_timeout(state: str, expected: tuple[Verdict, str]) -> None:
    decision = targets_verdict({"i-1": state}, ["i-1"], waited_seconds=10, timeout_seconds=300)
    assert (decision.verdict, decision.reason) == expected
    assert decision.subjects == (() if expected[0] is HEALTHY else ("i-1",))


@pytest.mark.parametrize("state", sorted(TARGET_STATES), ids=sorted(TARGET_STATES))
def test_each_target_state_at_the_timeout(state: str) -> None:
    decision = targets_verdict({"i-1": state}, ["i-1"], waited_seconds=300, timeout_seconds=300)
    if state == "healthy":
        assert decision.verdict is HEALTHY
    elif state.startswith("unhealthy"):
        assert decision.reason == f"unhealthy in the target group: i-1 ({state})"
    else:
        assert decision == Decision(FAILED, f"not healthy after 300s (timeout 300s): i-1 ({state})", ("i-1",))


def test_an_unhealthy_target_fails_with_elbs_reason_and_names_only_the_unhealthy() -> None:
    decision = targets_verdict(
        {"i-2": "unhealthy", "i-1": "healthy", "i-3": "initial", "i-4": "unhealthy"},
        ["i-1", "i-2", "i-3", "i-4"],
        waited_seconds=5,
        timeout_seconds=300,
        reasons={"i-2": "Target.ResponseCodeMismatch: Health checks failed with these codes: [502]"},
    )
    assert decision == Decision(
        FAILED,
        "unhealthy in the target group: "
        "i-2 (unhealthy: Target.ResponseCodeMismatch: Health checks failed with these codes: [502]), i-4 (unhealthy)",
        ("i-2", "i-4"),
    )


def test_a_target_not_yet_registered_is_waited_for_then_fails() -> None:
    assert targets_verdict({}, ["i-1"], waited_seconds=0, timeout_seconds=60) == Decision(
        WAIT, "waiting for 1 of 1 target(s): i-1 (not registered)", ("i-1",)
    )
    assert targets_verdict({}, ["i-1"], waited_seconds=61, timeout_seconds=60).verdict is FAILED


def test_only_the_batch_counts_not_other_targets() -> None:
    states = {"i-1": "healthy", "i-2": "healthy", "i-9": "unhealthy"}
    assert targets_verdict(states, ["i-2", "i-1"], waited_seconds=0, timeout_seconds=60) == Decision(
        HEALTHY, "2 target(s) healthy"
    )


def test_waiting_names_only_the_targets_not_yet_healthy() -> None:
    states = {"i-1": "healthy", "i-2": "initial"}
    assert targets_verdict(states, ["i-1", "i-2"], waited_seconds=3, timeout_seconds=60) == Decision(
        WAIT, "waiting for 1 of 2 target(s): i-2 (initial)", ("i-2",)
    )


def test_no_targets_is_healthy() -> None:
    assert targets_verdict({"i-1": "unhealthy"}, [], waited_seconds=0, timeout_seconds=60) == Decision(
        HEALTHY, "no targets to check"
    )


# Command invocations -----------------------------------------------------------------------------

COMMAND_STATUSES = {
    "Success": (HEALTHY, "the deploy command succeeded on 1 instance(s)"),
    "Pending": (WAIT, "waiting for the deploy command on 1 of 1: i-1 Pending"),
    "InProgress": (WAIT, "waiting for the deploy command on 1 of 1: i-1 InProgress"),
    "Delayed": (WAIT, "waiting for the deploy command on 1 of 1: i-1 Delayed"),
    "Failed": (FAILED, "the deploy command failed on i-1 Failed"),
    "TimedOut": (FAILED, "the deploy command failed on i-1 TimedOut"),
    "Cancelled": (FAILED, "the deploy command failed on i-1 Cancelled"),
    "Cancelling": (FAILED, "the deploy command failed on i-1 Cancelling"),
    "Undeliverable": (FAILED, "the deploy command failed on i-1 Undeliverable"),
    "Terminated": (FAILED, "the deploy command failed on i-1 Terminated"),
    "DeliveryTimedOut": (FAILED, "the deploy command failed on i-1 DeliveryTimedOut"),
    "ExecutionTimedOut": (FAILED, "the deploy command failed on i-1 ExecutionTimedOut"),
    "AccessDenied": (FAILED, "the deploy command failed on i-1 (unexpected status 'AccessDenied')"),
}


@pytest.mark.parametrize("status, expected", COMMAND_STATUSES.items(), ids=COMMAND_STATUSES.keys())
def test_each_command_status_before_the_timeout(status: str, expected: tuple[Verdict, str]) -> None:
    decision = command_verdict({"i-1": status}, waited=10, timeout=600)
    assert (decision.verdict, decision.reason) == expected
    assert decision.subjects == (() if expected[0] is HEALTHY else ("i-1",))


@pytest.mark.parametrize("status", sorted(COMMAND_STATUSES), ids=sorted(COMMAND_STATUSES))
def test_each_command_status_at_the_timeout(status: str) -> None:
    decision = command_verdict({"i-1": status}, waited=600, timeout=600)
    expected_verdict, reason = COMMAND_STATUSES[status]
    if expected_verdict is WAIT:
        assert decision == Decision(FAILED, f"the deploy command did not finish in 600s on i-1 {status}", ("i-1",))
    else:
        assert decision == Decision(expected_verdict, reason, decision.subjects)


def test_a_failure_is_decided_at_once_even_while_others_run() -> None:
    invocations = {"i-3": "InProgress", "i-2": "Failed", "i-1": "Success", "i-4": "ExecutionTimedOut"}
    assert command_verdict(invocations, waited=1, timeout=600) == Decision(
        FAILED, "the deploy command failed on i-2 Failed, i-4 ExecutionTimedOut", ("i-2", "i-4")
    )


def test_waiting_names_the_instances_still_running() -> None:
    invocations = {"i-1": "Success", "i-2": "InProgress", "i-3": "Pending"}
    assert command_verdict(invocations, waited=1, timeout=600) == Decision(
        WAIT, "waiting for the deploy command on 2 of 3: i-2 InProgress, i-3 Pending", ("i-2", "i-3")
    )


def test_success_on_every_instance() -> None:
    assert command_verdict({"i-1": "Success", "i-2": "Success"}, waited=1, timeout=600) == Decision(
        HEALTHY, "the deploy command succeeded on 2 instance(s)"
    )


def test_no_invocation_listed_yet_waits_then_fails() -> None:
    assert command_verdict({}, waited=1, timeout=600) == Decision(WAIT, "no command invocation listed yet")
    assert command_verdict({}, waited=600, timeout=600) == Decision(
        FAILED, "no command invocation listed after 600s (timeout 600s)"
    )


# Alarms ------------------------------------------------------------------------------------------

ALARM_STATES = {
    "OK": Decision(HEALTHY, "1 alarm(s) quiet"),
    "INSUFFICIENT_DATA": Decision(HEALTHY, "1 alarm(s) quiet"),
    "ALARM": Decision(FAILED, "alarm firing: web-5xx", ("web-5xx",)),
    "BROKEN": Decision(FAILED, "alarm in an unexpected state: web-5xx ('BROKEN')", ("web-5xx",)),
}


@pytest.mark.parametrize("state, expected", ALARM_STATES.items(), ids=ALARM_STATES.keys())
def test_each_alarm_state(state: str, expected: Decision) -> None:
    assert alarms_verdict({"web-5xx": state}) == expected


def test_every_firing_alarm_is_named() -> None:
    states = {"web-unhealthy-hosts": "ALARM", "web-latency": "OK", "web-5xx": "ALARM"}
    assert alarms_verdict(states) == Decision(
        FAILED, "alarm firing: web-5xx, web-unhealthy-hosts", ("web-5xx", "web-unhealthy-hosts")
    )


def test_no_alarms_is_healthy() -> None:
    assert alarms_verdict({}) == Decision(HEALTHY, "no alarms to watch")


def test_the_verdict_names_are_what_the_state_machine_routes_on() -> None:
    assert [v.name for v in Verdict] == ["HEALTHY", "WAIT", "FAILED"]
