"""Deploys through the API: start, follow and roll back, on the synthesized state machine
running on moto (tests/moto_fleet.py), with real API Gateway events (tests/api_events.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from api_events import call
from moto_fleet import BUCKET, REGION, Runner, World, rollout_machine

from slipway import api


@pytest.fixture
def runner(templates: dict[str, dict[str, Any]], fake_aws: None) -> Iterator[Runner]:
    with rollout_machine(templates["Platform-staging"]) as machine:
        yield machine


@pytest.fixture
def world(runner: Runner, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """A 4-instance fleet, and the API configured for it as the stack configures it."""
    fleet = World(instances=4, min_size=2)
    state = fleet.state()
    monkeypatch.setenv("RELEASE_BUCKET", BUCKET)
    monkeypatch.setenv("PLATFORM_ENV", "staging")
    monkeypatch.setenv("APPS_JSON", json.dumps({"web": {"port": 5000, "health_check_path": "/", "formation": {}}}))
    monkeypatch.setenv("STATE_MACHINE_ARN", runner.arn)
    monkeypatch.setenv("FLEETS_JSON", json.dumps({"web": state["fleet"]}))
    monkeypatch.setenv("ROLLOUT_TIMING", json.dumps({"poll_seconds": 0, "command_timeout": 60, "healthy_timeout": 60}))
    clients = (api._s3, api._sfn, api._aws, api._settings)  # a test may replace one; clear the originals
    for cached in clients:
        cached.cache_clear()
    with runner.faulty(fleet):
        yield fleet
    for cached in clients:
        cached.cache_clear()


def execution_arn(runner: Runner, deploy: str) -> str:
    return runner.arn.replace(":stateMachine:", ":execution:") + f":{deploy}"


def deploy(runner: Runner, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    status, started = call("POST", path, body)
    assert status == 202, started
    runner.wait(execution_arn(runner, started["id"]))
    status, shown = call("GET", f"/apps/web/envs/staging/deploys/{started['id']}")
    assert status == 200, shown
    return dict(shown)


def test_deploy_then_follow_it_to_the_end(runner: Runner, world: World) -> None:
    shown = deploy(
        runner,
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


def test_rollback_deploys_the_previous_release(runner: Runner, world: World) -> None:
    deploy(runner, "/apps/web/envs/staging/deploys", {"release": "r2", "strategy": {"bake_seconds": 0}})
    assert {i["release"] for i in call("GET", "/apps/web/envs/staging/status")[1]["instances"]} == {"r2"}
    shown = deploy(runner, "/apps/web/envs/staging/rollback", {"strategy": {"bake_seconds": 0}})
    assert (shown["status"], shown["release"], shown["kind"]) == ("SUCCEEDED", "r1", "rollback")
    assert world.current() == "r1"
    assert set(world.deployed().values()) == {"r1"}
    assert {i["release"] for i in call("GET", "/apps/web/envs/staging/status")[1]["instances"]} == {"r1"}


def test_failed_deploy_shows_the_instance_and_its_output(runner: Runner, world: World) -> None:
    def fail_r2_on_the_canary(instances: list[str], url: str) -> None:
        if url.endswith("/r2") and len(world.sent) == 1:
            world.faults.command_fails_on.update(instances)
        else:  # the previous release deploys fine: the rollback succeeds
            world.faults.command_fails_on.difference_update(instances)

    world.faults.on_send = fail_r2_on_the_canary
    shown = deploy(runner, "/apps/web/envs/staging/deploys", {"release": "r2", "strategy": {"bake_seconds": 0}})
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
        ("/apps/web/envs/staging/deploys", {"release": "r2", "strategy": 5}, 400, "strategy must be an object"),
        ("/apps/web/envs/staging/rollback", {}, 409, "no earlier deployed release"),
    ],
)
def test_bad_deploy_requests_start_nothing(
    runner: Runner, world: World, path: str, body: dict[str, Any], status: int, message: str
) -> None:
    answer, refused = call("POST", path, body)
    assert answer == status and message in refused["message"], refused
    assert runner.sfn.list_executions(stateMachineArn=runner.arn)["executions"] == []


def test_a_held_lock_is_refused_before_starting(runner: Runner, world: World) -> None:
    world.hold_lock(
        owner="bob", execution="arn:other", acquired_at="2026-11-26T03:00:00Z", expires_at="2999-01-01T00:00:00Z"
    )
    status, refused = call("POST", "/apps/web/envs/staging/deploys", {"release": "r2"})
    assert status == 409 and "bob" in refused["message"]
    assert runner.sfn.list_executions(stateMachineArn=runner.arn)["executions"] == []


def test_status_shows_current_capacity_and_every_instance(runner: Runner, world: World) -> None:
    status, shown = call("GET", "/apps/web/envs/staging/status")
    assert status == 200, shown
    assert (shown["current"], shown["deploying"]) == ("r1", None)
    assert shown["capacity"] == {"min": 2, "desired": 4, "max": 20}
    assert sorted(i["id"] for i in shown["instances"]) == world.instances()
    assert {(i["lifecycle"], i["health"], i["target"]) for i in shown["instances"]} == {
        ("InService", "Healthy", "healthy")
    }


def test_cycling_one_instance_keeps_capacity(runner: Runner, world: World) -> None:
    victim = world.instances()[0]
    status, cycling = call("POST", "/apps/web/envs/staging/cycle", {"instance": victim})
    assert (status, cycling) == (202, {"kind": "instance", "instance": victim, "status": "replacing"})
    after = world.instances()
    assert victim not in after and len(after) == 4  # a replacement, not a smaller fleet


def test_cycling_an_unknown_instance_is_refused(runner: Runner, world: World) -> None:
    status, refused = call("POST", "/apps/web/envs/staging/cycle", {"instance": "i-0123456789abcdef0"})
    assert status == 404 and "is not an instance of web in staging" in refused["message"]
    assert len(world.instances()) == 4


def test_cycling_the_fleet_starts_a_guarded_instance_refresh(
    runner: Runner, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # moto has no instance refresh: check the exact request against the AWS model instead.
    import boto3
    from botocore.stub import Stubber

    client = boto3.client("autoscaling", region_name=REGION)
    stubber = Stubber(client)
    real = boto3.client("autoscaling", region_name=REGION)  # moto answers the group's description
    stubber.add_response(
        "describe_auto_scaling_groups",
        real.describe_auto_scaling_groups(AutoScalingGroupNames=["web-staging"]),
        {"AutoScalingGroupNames": ["web-staging"]},
    )
    stubber.add_response(
        "start_instance_refresh",
        {"InstanceRefreshId": "6c3a1a2e-9f1b-4c1e-8d3a-0123456789ab"},
        {
            "AutoScalingGroupName": "web-staging",
            "Strategy": "Rolling",
            "Preferences": {
                "MinHealthyPercentage": 75,
                "InstanceWarmup": 60,
                "SkipMatching": False,
                "AutoRollback": True,
                "AlarmSpecification": {"Alarms": ["web-staging-5xx"]},
            },
        },
    )
    monkeypatch.setattr(api, "_aws", lambda service: client if service == "autoscaling" else real)
    with stubber:
        status, cycling = call("POST", "/apps/web/envs/staging/cycle", {"min_healthy_percent": 75})
    assert (status, cycling) == (
        202,
        {"kind": "fleet", "refresh": "6c3a1a2e-9f1b-4c1e-8d3a-0123456789ab", "status": "Pending"},
    )
    stubber.assert_no_pending_responses()


def test_cycling_is_refused_during_a_rollout(runner: Runner, world: World) -> None:
    world.hold_lock(
        owner="bob", execution="arn:other", acquired_at="2026-11-26T03:00:00Z", expires_at="2999-01-01T00:00:00Z"
    )
    status, refused = call("POST", "/apps/web/envs/staging/cycle", {})
    assert status == 409 and refused["message"].startswith("cannot cycle web in staging: ")
    status, shown = call("GET", "/apps/web/envs/staging/status")
    assert shown["deploying"]["by"] == "bob"


def test_the_apps_configured_rollout_is_the_default(
    runner: Runner, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = {**world.state()["fleet"], "strategy": {"canary": False, "batch_size": 2, "bake_seconds": 0}}
    monkeypatch.setenv("FLEETS_JSON", json.dumps({"web": fleet}))
    shown = deploy(runner, "/apps/web/envs/staging/deploys", {"release": "r2"})
    assert shown["status"] == "SUCCEEDED"
    assert [len(b["instances"]) for b in shown["batches"]] == [2, 2]  # no canary, pairs
    # A deploy's own options win over the app's.
    shown = deploy(runner, "/apps/web/envs/staging/deploys", {"release": "r1", "strategy": {"canary": True}})
    assert [len(b["instances"]) for b in shown["batches"]] == [1, 2, 1]
