"""The rollout's health gates: every target state, command status and alarm state, and
the timeouts, decide HEALTHY, WAIT or FAILED with a reason naming what is at fault."""

from __future__ import annotations

import pytest

from slipway.rollout.health import Decision, Verdict, alarms_verdict, batch_verdict, command_verdict

HEALTHY, WAIT, FAILED = Verdict.HEALTHY, Verdict.WAIT, Verdict.FAILED

# Target health -----------------------------------------------------------------------------------

# Every state of Elastic Load Balancing's TargetHealth, for one target of a batch that served
# before its switch: only unhealthy fails it.
TARGET_STATES = {
    "healthy": (HEALTHY, "no target of 1 unhealthy"),
    "initial": (HEALTHY, "no target of 1 unhealthy"),
    "draining": (HEALTHY, "no target of 1 unhealthy"),
    "unused": (HEALTHY, "no target of 1 unhealthy"),
    "unavailable": (HEALTHY, "no target of 1 unhealthy"),
    "unhealthy": (FAILED, "unhealthy in the target group: i-1 (unhealthy)"),
    "unhealthy.draining": (FAILED, "unhealthy in the target group: i-1 (unhealthy.draining)"),
    "some-future-state": (HEALTHY, "no target of 1 unhealthy"),
}


def served(states: dict[str, str], batch: list[str], **reasons: str) -> Decision:
    """The verdict on a batch whose every target served before its switch."""
    return batch_verdict(states, batch, unserved=[], waited_seconds=0, timeout_seconds=300, reasons=reasons)


@pytest.mark.parametrize("state, expected", TARGET_STATES.items(), ids=TARGET_STATES.keys())
def test_each_target_state_of_a_target_that_served(state: str, expected: tuple[Verdict, str]) -> None:
    decision = served({"i-1": state}, ["i-1"])
    assert (decision.verdict, decision.reason) == expected
    assert decision.subjects == (("i-1",) if expected[0] is FAILED else ())


def test_an_unhealthy_target_fails_with_elbs_reason_and_names_only_the_unhealthy() -> None:
    decision = batch_verdict(
        {"i-2": "unhealthy", "i-1": "healthy", "i-3": "initial", "i-4": "unhealthy"},
        ["i-1", "i-2", "i-3", "i-4"],
        unserved=[],
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


@pytest.mark.parametrize("state", sorted(TARGET_STATES), ids=sorted(TARGET_STATES))
def test_a_target_that_did_not_serve_is_waited_for_until_healthy_then_fails_at_the_timeout(state: str) -> None:
    """A first deploy: nothing answered before the switch, so unhealthy is where it starts from."""
    before = batch_verdict({"i-1": state}, ["i-1"], unserved=["i-1"], waited_seconds=299, timeout_seconds=300)
    at = batch_verdict({"i-1": state}, ["i-1"], unserved=["i-1"], waited_seconds=300, timeout_seconds=300)
    if state == "healthy":
        assert before.verdict is at.verdict is HEALTHY
        return
    assert before == Decision(
        WAIT,
        f"waiting for 1 target(s) that did not serve before to pass the load balancer's checks: i-1 ({state})",
        ("i-1",),
    )
    assert at == Decision(FAILED, f"not healthy in the target group after 300s (timeout 300s): i-1 ({state})", ("i-1",))


def test_a_target_not_described_is_not_unhealthy() -> None:
    assert served({}, ["i-1"]) == Decision(HEALTHY, "no target of 1 unhealthy")


def test_only_the_batch_counts_not_other_targets() -> None:
    states = {"i-1": "healthy", "i-2": "healthy", "i-9": "unhealthy"}
    assert served(states, ["i-2", "i-1"]) == Decision(HEALTHY, "no target of 2 unhealthy")


def test_an_empty_batch_is_not_unhealthy() -> None:
    assert served({"i-1": "unhealthy"}, []) == Decision(HEALTHY, "no target of 0 unhealthy")


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
