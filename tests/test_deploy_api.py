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
def runner(templates: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Iterator[Runner]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
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
    api._s3.cache_clear()
    api._sfn.cache_clear()
    api._settings.cache_clear()
    with runner.faulty(fleet):
        yield fleet
    api._s3.cache_clear()
    api._sfn.cache_clear()


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
    shown = deploy(runner, "/apps/web/envs/staging/rollback", {"strategy": {"bake_seconds": 0}})
    assert (shown["status"], shown["release"], shown["kind"]) == ("SUCCEEDED", "r1", "rollback")
    assert world.current() == "r1"
    assert set(world.deployed().values()) == {"r1"}


def test_failed_deploy_shows_the_instance_and_its_output(runner: Runner, world: World) -> None:
    world.faults.on_send = lambda instances, url: (
        world.faults.command_fails_on.update(instances) if url.endswith("/r2") and len(world.sent) == 1 else None
    )
    shown = deploy(runner, "/apps/web/envs/staging/deploys", {"release": "r2", "strategy": {"bake_seconds": 0}})
    assert shown["status"] == "FAILED"
    [canary] = world.sent[0][0]
    assert shown["failure"]["instance"] == canary
    assert "r2 failed its preflight" in shown["failure"]["output"]
    assert shown["rolled_back"] == [canary]
    assert world.current() == "r1"


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
    world.s3.put_object(
        Bucket=BUCKET,
        Key="web/staging/lock",
        Body=json.dumps(
            {
                "owner": "bob",
                "execution": "arn:other",
                "release": "r2",
                "acquired_at": "2026-11-26T03:00:00Z",
                "expires_at": "2999-01-01T00:00:00Z",
            }
        ).encode(),
    )
    status, refused = call("POST", "/apps/web/envs/staging/deploys", {"release": "r2"})
    assert status == 409 and "bob" in refused["message"]
    assert runner.sfn.list_executions(stateMachineArn=runner.arn)["executions"] == []
