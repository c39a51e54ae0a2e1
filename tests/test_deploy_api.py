"""Deploys through the API: start, follow and roll back, on the synthesized stack deployed
into moto and its state machine (tests/moto_fleet.py), with real API Gateway events
(tests/api_events.py). The API is configured exactly as the stack configured its function."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from api_events import call
from moto_fleet import KEYS, World, faulty

from local.aws import Deployed
from slipway import aws
from slipway_release import oneoff
from slipway_release.layout import AppKeys, Pointer


@pytest.fixture
def world(deployed: Deployed) -> Iterator[World]:
    """A 4-instance web fleet (2 to 20), its faults on every control-plane client."""
    fleet = World(deployed, instances=4, min_size=2)
    with faulty(fleet):
        yield fleet


def execution_arn(world: World, deploy: str) -> str:
    machine = world.deployed_stack.settings.state_machine
    assert machine is not None
    return machine.replace(":stateMachine:", ":execution:") + f":{deploy}"


def executions(world: World) -> list[Any]:
    machine = world.deployed_stack.settings.state_machine
    return list(world.clients.stepfunctions.list_executions(stateMachineArn=machine)["executions"])


def deploy(world: World, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    status, started = call("POST", path, body)
    assert status == 202, started
    world.deployed_stack.wait(execution_arn(world, started["id"]))
    status, shown = call("GET", f"/apps/web/envs/staging/deploys/{started['id']}")
    assert status == 200, shown
    return dict(shown)


def test_deploy_then_follow_it_to_the_end(world: World) -> None:
    shown = deploy(
        world,
        "/apps/web/envs/staging/deploys",
        {"release": "r2", "strategy": {"bake_seconds": 0, "batch_percent": 50}},
    )
    assert (shown["status"], shown["release"], shown["kind"], shown["user"]) == ("SUCCEEDED", "r2", "deploy", "alice")
    assert shown["previous"] == "r1"
    assert [b["state"] for b in shown["batches"]] == ["done"] * len(shown["batches"])
    assert sorted(i for b in shown["batches"] for i in b["instances"]) == world.instances()
    assert len(shown["batches"][0]["instances"]) == 1  # canary
    assert world.current() == "r2"
    status, listed = call("GET", "/apps/web/envs/staging/deploys")
    assert status == 200 and [d["id"] for d in listed["deploys"]] == [shown["id"]]


def test_rollback_deploys_the_previous_release(world: World) -> None:
    deploy(world, "/apps/web/envs/staging/deploys", {"release": "r2", "strategy": {"bake_seconds": 0}})
    assert {i["release"] for i in call("GET", "/apps/web/envs/staging/status")[1]["instances"]} == {"r2"}
    shown = deploy(world, "/apps/web/envs/staging/rollback", {"strategy": {"bake_seconds": 0}})
    # As on Heroku: a new release, r3, copying r1 (its slug and config), is what rolls out and serves.
    assert (shown["status"], shown["release"], shown["kind"]) == ("SUCCEEDED", "r3", "rollback")
    r1, r3 = (call("GET", f"/apps/web/envs/staging/releases/{r}")[1] for r in ("r1", "r3"))
    assert r3["description"] == "rollback to r1" and r3["base"] == {
        "env": "staging",
        "release": "r1",
        "reason": "rollback",
    }
    assert (r3["slug"], r3["env_sha256"], r3["build"]) == (r1["slug"], r1["env_sha256"], r1["build"])
    assert world.current() == "r3" and r3["current"] is True
    assert set(world.deployed().values()) == {"r3"}
    assert {i["release"] for i in call("GET", "/apps/web/envs/staging/status")[1]["instances"]} == {"r3"}


def test_failed_deploy_shows_the_instance_and_its_output(world: World) -> None:
    def fail_r2_on_the_canary(instances: list[str], url: str) -> None:
        if url.endswith("/r2") and len(world.sent) == 1:
            world.faults.command_fails_on.update(instances)
        else:  # the previous release deploys fine: the rollback succeeds
            world.faults.command_fails_on.difference_update(instances)

    world.faults.on_send = fail_r2_on_the_canary
    shown = deploy(world, "/apps/web/envs/staging/deploys", {"release": "r2", "strategy": {"bake_seconds": 0}})
    assert shown["status"] == "FAILED"
    [canary] = world.sent[0][0]
    assert shown["failure"]["instance"] == canary
    assert "r2 failed its preflight" in shown["failure"]["output"]
    assert shown["rolled_back"] == [canary]
    assert world.current() == "r1"
    fleet = call("GET", "/apps/web/envs/staging/status")[1]["instances"]
    assert {i["id"]: i["release"] for i in fleet}[canary] == "r1"  # rolled back, and noted


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/apps/web/envs/staging/deploys", {}, 400, 'send {"release": "r7"}'),
        ("/apps/web/envs/staging/deploys", {"release": "r9"}, 404, "no release r9"),
        ("/apps/web/envs/staging/deploys", {"release": "r2", "strategy": {"batch_pct": 5}}, 400, "batch_pct"),
        ("/apps/web/envs/staging/deploys", {"release": "r2", "strategy": 5}, 400, "strategy: expected an object"),
        ("/apps/web/envs/staging/rollback", {}, 409, "no earlier deployed release"),
    ],
)
def test_bad_deploy_requests_start_nothing(
    world: World, path: str, body: dict[str, Any], status: int, message: str
) -> None:
    answer, refused = call("POST", path, body)
    assert answer == status and message in refused["message"], refused
    assert executions(world) == []


def test_a_held_lock_is_refused_before_starting(world: World) -> None:
    world.hold_lock(
        owner="bob", execution="arn:other", acquired_at="2026-11-26T03:00:00Z", expires_at="2999-01-01T00:00:00Z"
    )
    status, refused = call("POST", "/apps/web/envs/staging/deploys", {"release": "r2"})
    assert status == 409 and "bob" in refused["message"]
    assert executions(world) == []


def test_status_shows_current_capacity_and_every_instance(world: World) -> None:
    status, shown = call("GET", "/apps/web/envs/staging/status")
    assert status == 200, shown
    assert (shown["current"], shown["deploying"]) == ("r1", None)
    assert shown["capacity"] == {"min": 2, "desired": 4, "max": 20}
    assert sorted(i["id"] for i in shown["instances"]) == world.instances()
    assert {(i["lifecycle"], i["health"], i["target"]) for i in shown["instances"]} == {
        ("InService", "Healthy", "healthy")
    }


def test_cycling_one_instance_keeps_capacity(world: World) -> None:
    victim = world.instances()[0]
    status, cycling = call("POST", "/apps/web/envs/staging/cycle", {"instance": victim})
    assert (status, cycling) == (202, {"kind": "instance", "instance": victim, "status": "replacing"})
    after = world.instances()
    assert victim not in after and len(after) == 4  # a replacement, not a smaller fleet


def test_cycling_an_unknown_instance_is_refused(world: World) -> None:
    status, refused = call("POST", "/apps/web/envs/staging/cycle", {"instance": "i-0123456789abcdef0"})
    assert status == 404 and "is not an instance of web in staging" in refused["message"]
    assert len(world.instances()) == 4


def test_cycling_the_fleet_starts_a_guarded_instance_refresh(world: World) -> None:
    # moto has no instance refresh: check the exact request against the AWS model instead.
    import boto3
    from botocore.stub import Stubber

    client = boto3.client("autoscaling", region_name="us-east-1")
    stubber = Stubber(client)
    real = world.clients.autoscaling  # moto answers the group's description
    stubber.add_response(
        "describe_auto_scaling_groups",
        real.describe_auto_scaling_groups(AutoScalingGroupNames=[world.group]),
        {"AutoScalingGroupNames": [world.group]},
    )
    stubber.add_response(
        "start_instance_refresh",
        {"InstanceRefreshId": "6c3a1a2e-9f1b-4c1e-8d3a-0123456789ab"},
        {
            "AutoScalingGroupName": world.group,
            "Strategy": "Rolling",
            "Preferences": {
                "MinHealthyPercentage": 75,
                "InstanceWarmup": 60,
                "SkipMatching": False,
                "AutoRollback": True,
                # The fleet's three alarms, under the names the stack gave them.
                "AlarmSpecification": {"Alarms": list(world.fleet.alarms)},
            },
        },
    )
    other = aws.client
    # Patched only for this call: the world's own patch of aws.client (tests/moto_fleet.faulty) is
    # undone when the fixture ends, and nothing of this test's may outlive it.
    stubbed = mock.patch.object(aws, "client", lambda service: client if service == "autoscaling" else other(service))
    with stubbed, stubber:
        status, cycling = call("POST", "/apps/web/envs/staging/cycle", {"min_healthy_percent": 75})
    assert (status, cycling) == (
        202,
        {"kind": "fleet", "refresh": "6c3a1a2e-9f1b-4c1e-8d3a-0123456789ab", "status": "Pending"},
    )
    stubber.assert_no_pending_responses()


def test_cycling_is_refused_during_a_rollout(world: World) -> None:
    world.hold_lock(
        owner="bob", execution="arn:other", acquired_at="2026-11-26T03:00:00Z", expires_at="2999-01-01T00:00:00Z"
    )
    status, refused = call("POST", "/apps/web/envs/staging/cycle", {})
    assert status == 409 and refused["message"].startswith("cannot cycle web in staging: ")
    status, shown = call("GET", "/apps/web/envs/staging/status")
    assert shown["deploying"]["by"] == "bob"


def test_the_apps_configured_rollout_is_the_default(world: World) -> None:
    """billing's rollout in cdk.json (50 % batches, 60 s bake) reaches its deploys through the stack."""
    keys = AppKeys("billing", "staging")
    made = {release: world.deployed_stack.add_release("billing", release) for release in ("r1", "r2")}
    current = Pointer("r1", hashlib.sha256(made["r1"]).hexdigest()).render()
    world.clients.s3.put_object(Bucket=world.bucket, Key=keys.current, Body=current)
    world.deployed_stack.resize("billing", desired=4, minimum=2, maximum=4)
    status, started = call("POST", "/apps/billing/envs/staging/deploys", {"release": "r2"})
    assert status == 202, started
    assert started["strategy"] == {"canary": True, "batch_percent": 50, "bake_seconds": 60}
    arn = execution_arn(world, started["id"])
    baking = wait_for_state(world, arn, "WaitBake")
    assert baking["bake_seconds"] == 60
    assert [len(batch) for batch in baking["batches"]] == [1, 2, 1]  # the canary, then 50 % of 4
    world.clients.stepfunctions.stop_execution(executionArn=arn)


def test_a_deploys_own_options_win_over_the_apps(world: World) -> None:
    shown = deploy(
        world,
        "/apps/web/envs/staging/deploys",
        {"release": "r2", "strategy": {"canary": False, "batch_size": 2, "bake_seconds": 0}},
    )
    assert shown["status"] == "SUCCEEDED"
    assert shown["strategy"] == {"canary": False, "batch_size": 2, "bake_seconds": 0}
    assert [len(b["instances"]) for b in shown["batches"]] == [2, 2]  # no canary, pairs


def wait_for_state(world: World, arn: str, name: str, timeout: float = 60) -> dict[str, Any]:
    """The input of state ``name`` once the execution enters it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = world.clients.stepfunctions.get_execution_history(executionArn=arn, maxResults=1000)["events"]
        for event in events:
            details = event.get("stateEnteredEventDetails")
            if details and details["name"] == name:
                return dict(json.loads(details["input"]))
        time.sleep(0.05)
    entered = [e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e]
    described = world.clients.stepfunctions.describe_execution(executionArn=arn)
    raise AssertionError(
        f"the execution did not reach {name} within {timeout} s: it went {entered}, "
        f"{described['status']}: {described.get('error')} {described.get('cause')}"
    )


def _capacity(world: World) -> dict[str, int]:
    group = world.clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[world.group])
    found = group["AutoScalingGroups"][0]
    return {"min": found["MinSize"], "desired": found["DesiredCapacity"], "max": found["MaxSize"]}


def test_scaling_within_the_configured_limits_changes_capacity(world: World) -> None:
    # web in staging may scale from 1 to 2 instances (cdk.json); the world's group runs 4 of 2 to 20.
    assert (world.fleet.min_capacity, world.fleet.max_capacity) == (1, 2)
    status, scaled = call("POST", "/apps/web/envs/staging/scale", {"min": 1, "desired": 2, "max": 2})
    assert status == 200, scaled
    assert scaled["before"] == {"min": 2, "desired": 4, "max": 20}
    assert scaled["after"] == {"min": 1, "desired": 2, "max": 2} == _capacity(world)
    assert scaled["limits"] == {"min": 1, "max": 2}
    assert len(world.instances()) == 2  # two instances stopped
    # Only min: desired follows it within the bounds, max is kept.
    status, scaled = call("POST", "/apps/web/envs/staging/scale", {"min": 2})
    assert status == 200 and scaled["after"] == {"min": 2, "desired": 2, "max": 2}, scaled


@pytest.mark.parametrize(
    "body, message",
    [
        ({}, "give at least one of min, desired and max"),
        ({"max": 3}, "max 3 is outside what web in staging may scale to: 1 to 2 instances (min_capacity"),
        ({"desired": 0}, "desired 0 is outside what web in staging may scale to: 1 to 2 instances"),
        ({"desired": "2"}, "desired must be a whole number of instances"),
        ({"min": 2, "max": 1}, "min 2 would be above max 1"),
    ],
)
def test_a_scale_outside_the_limits_is_refused_and_changes_nothing(
    world: World, body: dict[str, Any], message: str
) -> None:
    before = _capacity(world)
    status, refused = call("POST", "/apps/web/envs/staging/scale", body)
    assert status == 400 and message in refused["message"], refused
    assert _capacity(world) == before


def test_scaling_is_refused_during_a_rollout(world: World) -> None:
    world.hold_lock(
        owner="bob", execution="arn:other", acquired_at="2026-11-26T03:00:00Z", expires_at="2999-01-01T00:00:00Z"
    )
    before = _capacity(world)
    status, refused = call("POST", "/apps/web/envs/staging/scale", {"desired": 2})
    assert status == 409 and refused["message"].startswith("cannot scale web in staging: "), refused
    assert _capacity(world) == before


def test_restart_is_a_rollout_of_the_current_release(world: World) -> None:
    shown = deploy(world, "/apps/web/envs/staging/restart", {"strategy": {"bake_seconds": 0}})
    assert (shown["kind"], shown["release"], shown["status"]) == ("restart", "r1", "SUCCEEDED"), shown
    assert world.current() == "r1"
    assert set(world.actions.values()) == {"stage", "restart"}


def test_restart_of_one_process_type_sends_it_to_every_instance(world: World) -> None:
    shown = deploy(world, "/apps/web/envs/staging/restart", {"process": "worker", "strategy": {"bake_seconds": 0}})
    assert (shown["kind"], shown["process"], shown["status"]) == ("restart", "worker", "SUCCEEDED"), shown
    restarts = [c for c in _commands(world) if c["Parameters"].get("Action") == ["restart"]]
    assert restarts and all(c["Parameters"]["Process"] == ["worker"] for c in restarts)
    assert {i for c in restarts for i in c["InstanceIds"]} == set(world.instances())
    assert all(c["Comment"].endswith("(restart worker) by alice") for c in restarts)
    status, refused = call("POST", "/apps/web/envs/staging/restart", {"process": "web; reboot"})
    assert status == 400 and "process must be a Procfile process type" in refused["message"], refused


def test_restart_before_any_release_is_current_is_refused(world: World) -> None:
    world.clients.s3.delete_object(Bucket=world.bucket, Key=KEYS.current)
    status, refused = call("POST", "/apps/web/envs/staging/restart", {})
    assert status == 409 and refused["message"] == "web in staging runs no release yet; deploy one first", refused
    assert executions(world) == []


# One-off commands (slipway run) ----------------------------------------------------------------


def _commands(world: World) -> list[dict[str, Any]]:
    return list(world.clients.ssm.list_commands()["Commands"])


def test_a_one_off_runs_once_on_an_in_service_instance_with_the_current_release(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    status, started = call(
        "POST", "/apps/web/envs/staging/runs", {"command": "python manage.py migrate --noinput", "timeout_seconds": 60}
    )
    assert status == 202, started
    assert started["release"] == "r1" and started["instance"] in world.instances(), started
    assert (started["command"], started["timeout_seconds"]) == ("python manage.py migrate --noinput", 60)
    [sent] = [c for c in _commands(world) if c["CommandId"] == started["id"]]
    assert sent["DocumentName"] == "Platform-staging-Run"
    assert sent["InstanceIds"] == [started["instance"]]
    assert sent["Comment"] == "slipway run web staging r1 by alice"
    assert sent["Parameters"]["Release"] == ["r1"] and sent["Parameters"]["TimeoutSeconds"] == ["60"]
    assert oneoff.decode(sent["Parameters"]["Command"][0]) == "python manage.py migrate --noinput"
    # Who ran what, where: the API's log says it.
    [audit] = [vars(r) for r in caplog.records if r.getMessage() == "one-off started"]
    assert (audit["by"], audit["command"], audit["instance"], audit["release"], audit["run"]) == (
        "alice",
        "python manage.py migrate --noinput",
        started["instance"],
        "r1",
        started["id"],
    )
    # The SSM agent streams the output to the run log group while the command runs.
    world.run_output(started["id"], started["instance"], ["Applying 0001... OK", "done"])
    status, shown = call("GET", f"/apps/web/envs/staging/runs/{started['id']}")
    assert status == 200, shown
    assert shown["output"] == ["Applying 0001... OK", "done"] and shown["next"], shown
    assert (shown["status"], shown["done"], shown["exit_code"]) == ("Success", True, 0)
    status, rest = call("GET", f"/apps/web/envs/staging/runs/{started['id']}", query={"after": shown["next"]})
    assert status == 200 and rest["output"] == [], rest


@pytest.mark.parametrize(
    "body, message",
    [
        ({"command": "  "}, "give the command to run as text"),
        ({"command": "x" * 2049}, "2049 bytes, more than the 2048 a one-off takes"),
        ({"command": "ls", "timeout_seconds": 0}, "from 1 to 3600 (default 900); got 0"),
        ({"command": "ls", "timeout_seconds": 3601}, "from 1 to 3600"),
    ],
)
def test_a_bad_one_off_is_refused_and_nothing_is_sent(world: World, body: dict[str, Any], message: str) -> None:
    before = len(_commands(world))
    status, refused = call("POST", "/apps/web/envs/staging/runs", body)
    assert status == 400 and message in refused["message"], refused
    assert len(_commands(world)) == before


def test_a_one_off_before_any_release_is_current_is_refused(world: World) -> None:
    world.clients.s3.delete_object(Bucket=world.bucket, Key=KEYS.current)
    status, refused = call("POST", "/apps/web/envs/staging/runs", {"command": "ls"})
    assert status == 409 and "no release of web is current in staging" in refused["message"], refused
    assert _commands(world) == []


def test_only_this_apps_one_offs_can_be_read(world: World) -> None:
    deploy(world, "/apps/web/envs/staging/restart", {"strategy": {"bake_seconds": 0}})
    [deploy_command, *_] = _commands(world)
    status, refused = call("GET", f"/apps/web/envs/staging/runs/{deploy_command['CommandId']}")
    assert status == 404 and refused["message"].startswith("no one-off "), refused
    status, refused = call("GET", "/apps/web/envs/staging/runs/00000000-0000-0000-0000-000000000000")
    assert status == 404, refused


# App logs (slipway logs) -----------------------------------------------------------------------


def _log(world: World, stream: str, *events: tuple[int, str]) -> None:
    group = world.deployed_stack.settings.app_logs
    assert group is not None
    world.clients.logs.create_log_stream(logGroupName=group, logStreamName=stream)
    world.clients.logs.put_log_events(
        logGroupName=group, logStreamName=stream, logEvents=[{"timestamp": t, "message": m} for t, m in events]
    )


def _line(process: str, message: str) -> str:
    """What rsyslog's SlipwayJson template writes (image/provision.sh): msg keeps its leading space."""
    return json.dumps({"time": "2026-12-01T18:00:00+00:00", "process": process, "message": f" {message}"})


def test_logs_are_the_apps_lines_in_time_order_by_instance_and_process(world: World) -> None:
    now = int(time.time() * 1000)
    _log(world, "web/i-0aaa", (now + 1, _line("web-web", "GET / 200")), (now + 4, _line("web-run", "migrated")))
    _log(world, "web/i-0bbb", (now + 2, _line("web-worker", "job 1 done")), (now + 3, "not the agent's JSON"))
    _log(world, "billing/i-0ccc", (now + 2, _line("billing-web", "another app")))
    status, shown = call("GET", "/apps/web/envs/staging/logs", query={"start": str(now)})
    assert status == 200, shown
    assert [(line["instance"], line["process"], line["message"]) for line in shown["lines"]] == [
        ("i-0aaa", "web", "GET / 200"),
        ("i-0bbb", "worker", "job 1 done"),
        ("i-0bbb", None, "not the agent's JSON"),
        ("i-0aaa", "run", "migrated"),
    ]
    assert shown["next"] is None and shown["lines"][0]["timestamp"] == now + 1
    status, shown = call("GET", "/apps/web/envs/staging/logs", query={"start": str(now), "process": "run"})
    assert [line["message"] for line in shown["lines"]] == ["migrated"]
    status, shown = call("GET", "/apps/web/envs/staging/logs", query={"start": str(now + 2), "instance": "i-0bbb"})
    assert [line["message"] for line in shown["lines"]] == ["job 1 done", "not the agent's JSON"]


def test_a_bad_logs_request_is_refused_with_the_form(world: World) -> None:
    status, refused = call("GET", "/apps/web/envs/staging/logs", query={"start": "an hour ago"})
    assert status == 400 and "start must be milliseconds since 1970" in refused["message"], refused
    status, refused = call("GET", "/apps/nope/envs/staging/logs")
    assert status == 404, refused
