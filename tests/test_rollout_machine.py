"""The synthesized rollout state machine, executed by moto's Step Functions interpreter over
the synthesized stack deployed into moto, with the real task handlers run in-process for
every Lambda invocation (tests/moto_fleet.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from moto_fleet import KEYS, World, faster_rollout_clock, faulty

from local.aws import Deployed
from slipway import deploys
from slipway_release.layout import Pointer


@pytest.fixture
def fleet(deployed: Deployed) -> Callable[..., World]:
    """world(instances=, min_size=, max_size=): the web fleet of that shape."""
    return lambda **shape: World(deployed, **shape)


@pytest.fixture
def machine() -> Callable[..., Any]:
    """run(world, **state) -> (status, output) on the synthesized Platform-staging state machine."""

    def status_and_output(world: World, **state: Any) -> tuple[str, dict[str, Any]]:
        with faulty(world):
            execution = world.run(**state)
        return execution.status, execution.output

    return status_and_output


# What only a rollout that takes instances out of the load balancer would call.
OUT_OF_SERVICE_CALLS = {
    "autoscaling:enter_standby",
    "autoscaling:exit_standby",
    "autoscaling:set_desired_capacity",
    "elbv2:deregister_targets",
    "elbv2:register_targets",
}


def never_out_of_service(world: World) -> None:
    """No instance left service: none was in standby when a command reached it, nothing was
    deregistered, no capacity was added."""
    assert world.out_of_service == []
    assert OUT_OF_SERVICE_CALLS.isdisjoint(world.calls), world.calls
    assert set(world.lifecycle().values()) == {"InService"}


def test_clean_rollout_over_five_instances(machine: Callable[..., Any], fleet: Callable[..., World]) -> None:
    world = fleet(instances=5, min_size=2)
    status, output = machine(world)
    assert status == "SUCCEEDED", output
    assert world.current() == "r2"
    assert world.deployed() == {i: "r2" for i in world.instances()}
    # Staged everywhere at once first, while every instance serves; then activated batch by batch.
    assert world.staged == [(world.instances(), f"s3://{world.bucket}/web/staging/r2")]
    batches = [instances for instances, _ in world.sent]
    # The canary alone, then 50 % of five (3) a batch: the strategy alone sizes them, although the
    # fleet keeps two in service (switched in place, no instance leaves it).
    assert [len(b) for b in batches] == [1, 3, 1]
    assert sorted(i for b in batches for i in b) == world.instances()  # every instance exactly once
    assert set(world.actions.values()) == {"stage", "activate"}
    never_out_of_service(world)
    # Every command pinned r2's manifest, and current now pins it too.
    assert set(world.pinned) == {("r2", world.digests["r2"])}
    assert world.pointer().digest == world.digests["r2"]


@pytest.mark.parametrize(
    ("forged", "named"),
    [
        # A real deploy's input edited as someone who may start the machine could: another release, and a
        # fleet whose group has no instances (so nothing would deploy and current would move anyway).
        ({"release": "r2", "fleet": "EMPTY"}, "fleet"),
        ({"timing": {"poll_seconds": 0}}, "timing"),
        ({"bucket": "someone-elses-bucket"}, "bucket"),
        ({"env": "production"}, "acts on staging only"),
        ({"app": "nosuchapp"}, "has no app 'nosuchapp'"),
        ({"kind": "promote"}, "kind 'promote'"),
        ({"strategy": {"batch_size": 5000}}, "batch_size"),
    ],
)
def test_a_forged_input_is_refused_with_nothing_changed(
    fleet: Callable[..., World], forged: dict[str, Any], named: str
) -> None:
    world = fleet(instances=2, min_size=1)
    if forged.get("fleet") == "EMPTY":
        empty = world.deployed_stack.fleet("billing")  # a real fleet's settings, another group's
        world.deployed_stack.resize("billing", desired=0, minimum=0, maximum=2)
        forged = {**forged, "fleet": {**world.fleet.to_json(), "group": empty.group}}
    with faulty(world):  # the input exactly as given, not through World.run's keywords
        execution = world.deployed_stack.wait(world.deployed_stack.start({**world.state(), **forged}))
    status, output = execution.status, execution.output
    assert status == "FAILED" and output["error"] == "RequestRefused", output
    assert named in output["cause"]
    assert world.current() == "r1" and world.lock() is None
    assert world.sent == [] and world.staged == []


def test_a_release_record_rewritten_after_current_pinned_it_is_refused(fleet: Callable[..., World]) -> None:
    world = fleet(instances=2, min_size=1)
    # r1 serves; its release.json is rewritten as a role that may write release keys could (on AWS the
    # bucket policy refuses the write itself; here the rollout must not believe it either).
    rewritten = json.loads(world.manifests["r1"])
    rewritten["description"] = "not what was released"
    world.clients.s3.put_object(Bucket=world.bucket, Key=KEYS.release("r1", "release.json"), Body=json.dumps(rewritten))
    with faulty(world):
        execution = world.run()
    assert execution.status == "FAILED" and execution.output["error"] == "LockHeld", execution.output
    assert "no longer has the digest current pins" in execution.output["cause"]
    assert world.pointer().digest == world.digests["r1"] and world.lock() is None
    assert world.sent == [] and world.staged == []


def test_a_release_rewritten_during_its_rollout_never_becomes_current(
    machine: Callable[..., Any], fleet: Callable[..., World]
) -> None:
    world = fleet(instances=2, min_size=1)

    def rewrite(instances: list[str], url: str) -> None:  # once r2 is activated on the canary
        forged = {**json.loads(world.manifests["r2"]), "description": "swapped"}
        world.clients.s3.put_object(
            Bucket=world.bucket, Key=KEYS.release("r2", "release.json"), Body=json.dumps(forged)
        )

    world.faults.on_send = rewrite
    status, output = machine(world)
    assert status == "FAILED", output
    assert "changed since the rollout pinned it" in output["cause"]
    assert world.pointer() == Pointer("r1", world.digests["r1"])
    # Every command, the switch back included, pinned what the rollout read at its start.
    assert set(world.pinned) == {("r2", world.digests["r2"]), ("r1", world.digests["r1"])}


def test_a_release_that_cannot_be_staged_changes_nothing(
    machine: Callable[..., Any], fleet: Callable[..., World]
) -> None:
    world = fleet(instances=3, min_size=1)
    world.faults.stage_fails_on.add(world.instances()[1])
    status, output = machine(world)
    assert status == "FAILED" and output["error"] == "RolloutFailed"
    assert world.instances()[1] in output["cause"]
    assert world.sent == []  # no instance was switched, none rolled back
    assert world.current() == "r1" and world.lock() is None
    never_out_of_service(world)


def test_command_failure_on_the_canary_rolls_back(machine: Callable[..., Any], fleet: Callable[..., World]) -> None:
    world = fleet(instances=5, min_size=2)

    def on_send(instances: list[str], url: str) -> None:
        if url.endswith("/r2") and len(world.sent) == 1:
            world.faults.command_fails_on.update(instances)
        if url.endswith("/r1"):
            world.faults.command_fails_on.difference_update(instances)  # r1 runs fine

    world.faults.on_send = on_send
    status, output = machine(world)
    assert status == "FAILED"
    assert output["error"] == "RolloutFailed"
    [canary] = world.sent[0][0]
    assert canary in output["cause"]
    assert world.current() == "r1"  # current untouched
    assert world.sent[1:] == [([canary], f"s3://{world.bucket}/web/staging/r1")]  # rolled back to r1, once
    assert list(world.actions.values())[-1] == "activate"  # the staged previous release, no download
    assert world.deployed() == {canary: "r1"}
    never_out_of_service(world)  # switched back in place, in service throughout


def test_unhealthy_target_in_batch_two_rolls_back_every_changed_instance_at_once(
    machine: Callable[..., Any], fleet: Callable[..., World]
) -> None:
    world = fleet(instances=5, min_size=2)

    def on_send(instances: list[str], url: str) -> None:
        if url.endswith("/r2") and len(world.sent) == 2:
            world.faults.unhealthy.update(instances)
        if url.endswith("/r1"):
            world.faults.unhealthy.difference_update(instances)  # healthy again on r1

    world.faults.on_send = on_send
    status, output = machine(world)
    assert status == "FAILED", output
    canary, second = world.sent[0][0], world.sent[1][0]
    assert len(canary) == 1 and len(second) == 3  # 50 % of five
    # Both changed batches back in one, although the fleet keeps two in service: in place.
    assert world.sent[2:] == [(sorted(canary + second), f"s3://{world.bucket}/web/staging/r1")]
    assert list(world.actions.values())[-1] == "activate"
    assert world.current() == "r1" and world.lock() is None
    assert set(world.deployed().values()) == {"r1"}
    assert (
        f"unhealthy in the target group: {sorted(second)[0]} (unhealthy: Target.FailedHealthChecks)"
        in (output["cause"])
    )
    never_out_of_service(world)


def test_a_batch_that_turns_unhealthy_during_the_bake_rolls_back(
    machine: Callable[..., Any], fleet: Callable[..., World], monkeypatch: pytest.MonkeyPatch
) -> None:
    world = fleet(instances=3, min_size=1)
    faster_rollout_clock(monkeypatch)  # a 60 s bake in 3 s
    first = sorted(world.instances())[0]
    # The canary passes its first looks, then the load balancer finds it unhealthy (after the
    # agent's checks, which a release failing only later passes).
    world.faults.unhealthy_from_look[first] = 3
    timing = {"poll_seconds": 1, "command_timeout": 60, "lock_minutes": 30}
    status, output = machine(world, timing=timing, strategy={"batch_percent": 100, "bake_seconds": 60})
    assert status == "FAILED", output
    assert [instances for instances, _ in world.sent] == [[first], [first]]  # the canary, then back
    assert output["cause"] == f"unhealthy in the target group: {first} (unhealthy: Target.FailedHealthChecks)"
    assert world.looks[first] == 3  # looked at every second of the bake until it failed
    assert world.current() == "r1" and world.lock() is None


def test_a_first_deploy_waits_for_targets_that_served_nothing_to_pass_the_checks(
    machine: Callable[..., Any], fleet: Callable[..., World]
) -> None:
    world = fleet(instances=3, min_size=1)
    # Nothing deployed yet: every target fails the load balancer's checks until its release runs,
    # and passes them two looks after its switch (the load balancer's healthy threshold).
    world.faults.unhealthy.update(world.instances())

    def on_send(instances: list[str], url: str) -> None:
        for instance in instances:
            world.faults.healthy_from_look[instance] = world.looks.get(instance, 0) + 3

    world.faults.on_send = on_send
    status, output = machine(world)
    assert status == "SUCCEEDED", output
    assert world.current() == "r2" and world.deployed() == {i: "r2" for i in world.instances()}
    # Looked at before its switch (unhealthy: not serving), then until healthy: waited for, not failed.
    assert all(world.looks[i] == 4 for i in world.instances()), world.looks


def test_a_first_deploy_target_that_passed_the_checks_then_fails_them_fails_the_batch_at_once(
    machine: Callable[..., Any], fleet: Callable[..., World], monkeypatch: pytest.MonkeyPatch
) -> None:
    world = fleet(instances=1, min_size=1)
    world.faults.unhealthy.update(world.instances())  # nothing deployed yet
    faster_rollout_clock(monkeypatch)
    [canary] = world.instances()
    # Healthy from its 3rd look (the 2nd of the bake), unhealthy again from its 4th: once it has
    # served, it counts as any target that served.
    world.faults.healthy_from_look[canary] = 3
    world.faults.unhealthy_from_look[canary] = 4
    timing = {"poll_seconds": 1, "command_timeout": 60, "healthy_timeout": 300, "lock_minutes": 30}
    status, output = machine(world, timing=timing, strategy={"bake_seconds": 60})
    assert status == "FAILED", output
    assert output["cause"] == f"unhealthy in the target group: {canary} (unhealthy: Target.FailedHealthChecks)"
    assert world.looks[canary] == 4  # failed at the look that saw it, not at the 300 s timeout


def test_a_target_that_served_nothing_and_never_passes_the_checks_fails_at_the_timeout(
    machine: Callable[..., Any], fleet: Callable[..., World], monkeypatch: pytest.MonkeyPatch
) -> None:
    world = fleet(instances=2, min_size=1)
    world.faults.unhealthy.update(world.instances())  # nothing deployed yet, and the release never answers
    faster_rollout_clock(monkeypatch)  # the 20 s timeout in a second
    timing = {"poll_seconds": 1, "command_timeout": 60, "healthy_timeout": 20, "lock_minutes": 30}
    status, output = machine(world, timing=timing)
    assert status == "FAILED", output
    [canary] = world.sent[0][0]
    assert output["cause"].startswith("not healthy in the target group after 2")
    assert output["cause"].endswith(f"(timeout 20s): {canary} (unhealthy: Target.FailedHealthChecks)")
    assert world.sent == [
        ([canary], f"s3://{world.bucket}/web/staging/r2"),
        ([canary], f"s3://{world.bucket}/web/staging/r1"),
    ]
    assert world.current() == "r1" and world.lock() is None


def test_the_timeline_says_which_batches_roll_back(fleet: Callable[..., World]) -> None:
    world = fleet(instances=4, min_size=2)

    def on_send(instances: list[str], url: str) -> None:
        if url.endswith("/r2") and len(world.sent) == 2:  # the second batch fails its activation
            world.faults.command_fails_on.update(instances)
        if url.endswith("/r1"):
            world.faults.command_fails_on.difference_update(instances)

    world.faults.on_send = on_send
    with faulty(world):
        execution = world.run()
    assert execution.status == "FAILED", execution.output
    steps = [(entry["step"], entry["batch"]) for entry in deploys.timeline(execution.events)]
    assert ("switching a batch to the release", 2) in steps
    back = [entry for entry in deploys.timeline(execution.events) if entry["step"].startswith("rolling back: ")]
    assert {(entry["batch"], entry["batches"]) for entry in back} == {(1, 1)}  # both batches back in one
    assert steps[-1] == ("rolled back", None)


def test_a_rolling_restart_restarts_every_instance_batch_by_batch_and_leaves_current(
    fleet: Callable[..., World],
) -> None:
    world = fleet(instances=4, min_size=2)
    with faulty(world):
        execution = world.run(kind="restart", release="r1")
    assert execution.status == "SUCCEEDED", execution.output
    assert world.current() == "r1"
    batches = [instances for instances, _ in world.sent]
    assert len(batches[0]) == 1 and sorted(i for b in batches for i in b) == world.instances()  # canary first
    assert set(world.actions.values()) == {"stage", "restart"}  # staged (a verified no-op), then restarted
    assert world.deployed() == {i: "r1" for i in world.instances()}
    steps = {entry["step"] for entry in deploys.timeline(execution.events)}
    assert "restarting a batch" in steps and "switching a batch to the release" not in steps


def test_second_concurrent_deploy_is_refused(machine: Callable[..., Any], fleet: Callable[..., World]) -> None:
    world = fleet(instances=2, min_size=1)
    world.hold_lock(
        owner="bob",
        execution="arn:other",
        acquired_at="2026-11-26T03:00:00+00:00",
        expires_at="2999-01-01T00:00:00+00:00",
    )
    status, output = machine(world)
    assert status == "FAILED"
    assert output["error"] == "LockHeld" and "bob" in output["cause"]
    assert world.sent == [] and world.current() == "r1"


def test_stale_lock_is_taken_over(machine: Callable[..., Any], fleet: Callable[..., World]) -> None:
    world = fleet(instances=2, min_size=1)
    world.hold_lock(
        owner="bob",
        execution="arn:dead",
        acquired_at="2026-11-25T03:00:00+00:00",
        expires_at="2026-11-25T03:30:00+00:00",
    )
    status, output = machine(world)
    assert status == "SUCCEEDED", output
    assert world.current() == "r2"


def test_instance_launched_mid_rollout_is_converged(machine: Callable[..., Any], fleet: Callable[..., World]) -> None:
    world = fleet(instances=3, min_size=1)

    def scale_out(instances: list[str], url: str) -> None:
        if len(world.sent) == 1:  # while the canary deploys, the fleet scales out by one
            group = world.clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[world.group])
            desired = group["AutoScalingGroups"][0]["DesiredCapacity"]
            world.clients.autoscaling.set_desired_capacity(
                AutoScalingGroupName=world.group, DesiredCapacity=desired + 1
            )

    world.faults.on_send = scale_out
    status, output = machine(world)
    assert status == "SUCCEEDED", output
    assert len(world.instances()) == 4
    assert world.deployed() == {i: "r2" for i in world.instances()}
    late = [instances for instances, _ in world.sent][-1]
    assert len(late) == 1 and late[0] not in [i for b, _ in world.sent[:-1] for i in b]  # converged separately


def test_a_fleet_at_its_minimum_and_maximum_rolls_out_as_it_is(
    machine: Callable[..., Any], fleet: Callable[..., World]
) -> None:
    world = fleet(instances=2, min_size=2, max_size=2)
    status, output = machine(world, strategy={"canary": False, "batch_percent": 100, "bake_seconds": 0})
    assert status == "SUCCEEDED", output
    assert [sorted(instances) for instances, _ in world.sent] == [world.instances()]  # both at once, none added
    assert world.current() == "r2"
    never_out_of_service(world)


def test_more_instances_than_one_command_takes_get_several_commands(
    machine: Callable[..., Any], fleet: Callable[..., World]
) -> None:
    world = fleet(instances=60, min_size=30, max_size=60)
    status, output = machine(world, strategy={"canary": False, "batch_percent": 100, "bake_seconds": 0})
    assert status == "SUCCEEDED", output
    # SSM takes at most 50 instances a command: staged in two commands, activated in two.
    assert [len(instances) for instances, _ in world.staged] == [50, 10]
    assert [len(instances) for instances, _ in world.sent] == [50, 10]
    assert world.deployed() == {i: "r2" for i in world.instances()}
    assert world.current() == "r2"


def _client_error(code: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "Rate exceeded"}}, operation)


def test_a_throttled_call_is_retried_not_a_failed_deploy(
    machine: Callable[..., Any], fleet: Callable[..., World]
) -> None:
    world = fleet(instances=2, min_size=1)
    # Still throttled after the client's own retries: the task fails with Throttled, which the
    # state machine retries with backoff (constructs.workflow.RETRYABLE).
    world.faults.raises["elbv2:describe_target_health"] = [_client_error("Throttling", "DescribeTargetHealth")]
    world.faults.raises["ssm:send_command"] = [_client_error("ThrottlingException", "SendCommand")]
    status, output = machine(world)
    assert status == "SUCCEEDED", output
    assert world.current() == "r2" and world.lock() is None
    assert not world.faults.raises["elbv2:describe_target_health"] and not world.faults.raises["ssm:send_command"]


def test_another_error_is_a_failed_deploy_with_its_reason(
    machine: Callable[..., Any], fleet: Callable[..., World]
) -> None:
    world = fleet(instances=2, min_size=1)
    world.faults.raises["ssm:send_command"] = [_client_error("InvalidDocument", "SendCommand")]
    status, output = machine(world)
    assert status == "FAILED" and output["error"] == "RolloutFailed"
    assert "InvalidDocument" in output["cause"]
    assert world.current() == "r1" and world.lock() is None


def test_a_failing_rollback_still_gives_back_the_lock(machine: Callable[..., Any], fleet: Callable[..., World]) -> None:
    world = fleet(instances=3, min_size=1)
    world.faults.command_fails_on.update(world.instances())  # the canary fails: roll back ...
    # ... and the rollback's activation fails there too, and so does the last resort (a full deploy),
    # whose command cannot even be sent (stage, canary, rollback's activation, last resort).
    world.faults.raises["ssm:send_command"] = [None, None, None, _client_error("InternalServerError", "SendCommand")]
    status, output = machine(world)
    assert status == "FAILED" and output["error"] == "RolloutFailed", output
    [canary] = world.sent[0][0]
    assert output["cause"].startswith(f"the deploy command failed on {canary}")
    assert "; and switching back failed too (the deploy command failed on" in output["cause"]
    assert f"the command giving {canary} a full deploy of r1 could not be sent (ClientError" in output["cause"]
    assert world.lock() is None  # given back
    assert world.current() == "r1"
    assert world.calls["ssm:send_command"] == 4 and not world.faults.raises["ssm:send_command"]  # it was tried


def test_an_instance_that_does_not_take_the_release_after_the_switch_is_reported(
    machine: Callable[..., Any], fleet: Callable[..., World]
) -> None:
    world = fleet(instances=2, min_size=1)

    def scale_out(instances: list[str], url: str) -> None:
        if len(world.sent) == 1:  # while the canary deploys, the fleet scales out by one ...
            group = world.clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[world.group])
            desired = group["AutoScalingGroups"][0]["DesiredCapacity"]
            world.clients.autoscaling.set_desired_capacity(
                AutoScalingGroupName=world.group, DesiredCapacity=desired + 1
            )
        elif len(world.sent) == 3:  # ... and the converge command fails on the new instance
            world.faults.command_fails_on.update(instances)

    world.faults.on_send = scale_out
    status, output = machine(world)
    assert status == "FAILED" and output["error"] == "ConvergeFailed", output
    late = world.sent[-1][0]
    assert (
        f"r2 is current and on every instance of the plan, but the rollout's last step failed on {late[0]}"
        in (output["cause"])
    )
    assert "slipway cycle web staging --instance ID" in output["cause"]
    assert world.current() == "r2" and world.lock() is None


def test_a_cancel_mid_batch_rolls_back_what_changed(machine: Callable[..., Any], fleet: Callable[..., World]) -> None:
    world = fleet(instances=3, min_size=1)

    def cancel(instances: list[str], url: str) -> None:
        if len(world.sent) == 1:  # while the canary deploys, someone cancels (as the API writes it)
            listed = world.clients.stepfunctions.list_executions(
                stateMachineArn=world.deployed_stack.settings.state_machine
            )
            running = [e for e in listed["executions"] if e["status"] == "RUNNING"]
            assert len(running) == 1, listed
            name = running[0]["executionArn"].rsplit(":", 1)[1]
            request = json.dumps({"by": "bob", "at": "2026-12-01T12:00:00+00:00"}).encode()
            world.clients.s3.put_object(Bucket=world.bucket, Key=KEYS.cancel(name), Body=request)

    world.faults.on_send = cancel
    status, output = machine(world)
    assert status == "FAILED" and output["error"] == "RolloutFailed", output
    assert output["cause"] == "Cancelled: bob cancelled the rollout at 2026-12-01T12:00:00+00:00"
    [canary] = world.sent[0][0]
    assert world.sent[-1] == ([canary], f"s3://{world.bucket}/web/staging/r1")  # the canary put back
    assert world.current() == "r1" and world.lock() is None
    never_out_of_service(world)


def test_a_bake_longer_than_half_the_lock_renews_it(
    machine: Callable[..., Any], fleet: Callable[..., World], monkeypatch: pytest.MonkeyPatch
) -> None:
    world = fleet(instances=2, min_size=1)
    faster_rollout_clock(monkeypatch)  # the rollout's 35 s in under 2 s of this test's
    # A one-minute lock and a 35 s bake: the lock is renewed once less than half of it is left.
    timing = {"poll_seconds": 1, "command_timeout": 60, "lock_minutes": 1}
    status, output = machine(world, timing=timing, strategy={"canary": False, "batch_percent": 100, "bake_seconds": 35})
    assert status == "SUCCEEDED", output
    started = datetime.fromisoformat(output["started_at"])
    assert datetime.fromisoformat(output["lock_expires_at"]) > started + timedelta(minutes=1)
    assert world.lock() is None and world.current() == "r2"


# IAM: a service's action prefix where it differs from botocore's service name.
IAM_PREFIX = {"elbv2": "elasticloadbalancing"}


def _granted(template: dict[str, Any], role_prefix: str) -> set[str]:
    """Every action the policies of the role whose logical id starts ``role_prefix`` allow."""
    [role] = [
        lid for lid, r in template["Resources"].items() if r["Type"] == "AWS::IAM::Role" and lid.startswith(role_prefix)
    ]
    actions: set[str] = set()
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::IAM::Policy" and {"Ref": role} in resource["Properties"]["Roles"]:
            for statement in resource["Properties"]["PolicyDocument"]["Statement"]:
                listed = statement["Action"]
                actions.update([listed] if isinstance(listed, str) else listed)
    return actions


def test_the_tasks_role_allows_exactly_the_calls_the_tasks_make_but_s3_and_logs(
    fleet: Callable[..., World], templates: dict[str, dict[str, Any]]
) -> None:
    """Every AWS call the rollouts below made is granted, and nothing is granted that none made: a
    rollout that converges a late instance, then one whose canary fails and rolls back. (The S3
    grants are tested with the bucket adapter's calls; the log grants are Lambda's own.)"""
    import boto3

    called: set[str] = set()
    for fail_canary in (False, True):
        world = fleet(instances=3, min_size=1)

        def on_send(instances: list[str], url: str, world: World = world, fail: bool = fail_canary) -> None:
            if len(world.sent) == 1 and fail:
                world.faults.command_fails_on.update(instances)
            elif len(world.sent) == 1:  # the fleet scales out by one while the canary deploys
                world.clients.autoscaling.set_desired_capacity(AutoScalingGroupName=world.group, DesiredCapacity=4)
            if url.endswith("/r1"):
                world.faults.command_fails_on.clear()

        world.faults.on_send = on_send
        with faulty(world):
            world.run()
        for call in world.calls:
            service, method = call.split(":")
            if service in ("s3", "logs") or method == "get_paginator":
                continue
            mapping = boto3.client(service, region_name="us-east-1").meta.method_to_api_mapping
            called.add(f"{IAM_PREFIX.get(service, service)}:{mapping.get(method, method)}")
    granted = {
        a for a in _granted(templates["Platform-staging"], "RolloutTasksRole") if not a.startswith(("s3:", "logs:"))
    }
    assert called == granted


def _statements(template: dict[str, Any], role_prefix: str) -> list[dict[str, Any]]:
    """Every statement of the policies of the role whose logical id starts ``role_prefix``."""
    [role] = [
        lid for lid, r in template["Resources"].items() if r["Type"] == "AWS::IAM::Role" and lid.startswith(role_prefix)
    ]
    return [
        statement
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::IAM::Policy" and {"Ref": role} in resource["Properties"]["Roles"]
        for statement in resource["Properties"]["PolicyDocument"]["Statement"]
    ]


def test_the_tasks_read_only_the_alarms_cloudformation_names_after_their_stack(
    templates: dict[str, dict[str, Any]], assembly_dir: Path
) -> None:
    """DescribeAlarms on the alarms named Platform-<env>-*, and nothing else: the fleets' alarms have no names
    of their own, so CloudFormation names each after its app's nested stack, named after the stack."""
    for env in ("staging", "production"):
        stack = f"Platform-{env}"
        [alarms] = [
            s for s in _statements(templates[stack], "RolloutTasksRole") if "cloudwatch:DescribeAlarms" in s["Action"]
        ]
        assert alarms["Action"] == "cloudwatch:DescribeAlarms"
        assert alarms["Resource"] == {
            "Fn::Join": ["", ["arn:aws:cloudwatch:us-east-1:", {"Ref": "AWS::AccountId"}, f":alarm:{stack}-*"]]
        }
        own = json.loads((assembly_dir / f"{stack}.template.json").read_text())["Resources"].values()
        assert not [r for r in own if r["Type"] == "AWS::CloudWatch::Alarm"]  # all in the apps' nested stacks
        fleet_alarms = [r for r in templates[stack]["Resources"].values() if r["Type"] == "AWS::CloudWatch::Alarm"]
        assert fleet_alarms and not [r for r in fleet_alarms if "AlarmName" in r["Properties"]]
