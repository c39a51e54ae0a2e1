"""What the API answers when AWS refuses a cycle or a one-off's output request for the caller's
reason: a 4xx naming it and what to do, never the 502 of an exception that escaped the handler.
On the synthesized stack deployed into moto (tests/moto_fleet.py), with real API Gateway events
(tests/api_events.py); what moto lacks (instance refresh) is stubbed against botocore's model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from unittest import mock

import boto3
import pytest
from api_events import call
from botocore.stub import Stubber
from moto_fleet import World, faulty

from local.aws import Deployed
from slipway import aws

RUNNING = "6c3a1a2e-9f1b-4c1e-8d3a-0123456789ab"
ENDED = "00000000-9f1b-4c1e-8d3a-0123456789ab"


@pytest.fixture
def world(deployed: Deployed) -> Iterator[World]:
    """A 4-instance web fleet (2 to 20), its faults on every control-plane client."""
    fleet = World(deployed, instances=4, min_size=2)
    with faulty(fleet):
        yield fleet


def test_cycling_while_an_instance_refresh_runs_is_a_409_naming_it(world: World) -> None:
    client = boto3.client("autoscaling", region_name="us-east-1")
    stubber = Stubber(client)
    stubber.add_response(
        "describe_auto_scaling_groups",
        world.clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[world.group]),
        {"AutoScalingGroupNames": [world.group]},
    )
    # Auto Scaling's own refusal, as its model names it (StartInstanceRefresh's InstanceRefreshInProgressFault).
    stubber.add_client_error(
        "start_instance_refresh",
        service_error_code="InstanceRefreshInProgress",
        service_message="An Instance Refresh is already in progress and blocks the execution of this Instance Refresh.",
        http_status_code=400,
    )
    stubber.add_response(
        "describe_instance_refreshes",
        {
            "InstanceRefreshes": [
                {
                    "InstanceRefreshId": RUNNING,
                    "AutoScalingGroupName": world.group,
                    "Status": "InProgress",
                    "PercentageComplete": 40,
                },
                {"InstanceRefreshId": ENDED, "AutoScalingGroupName": world.group, "Status": "Successful"},
            ]
        },
        {"AutoScalingGroupName": world.group},
    )
    other = aws.client
    stubbed = mock.patch.object(aws, "client", lambda service: client if service == "autoscaling" else other(service))
    with stubbed, stubber:
        status, refused = call("POST", "/apps/web/envs/staging/cycle", {"min_healthy_percent": 75})
    assert status == 409, refused
    assert refused["message"] == (
        f"web in staging is already being cycled: instance refresh {RUNNING} is InProgress (40% done); wait for it "
        "to end (the `slipway cycle` that started it shows its progress, as does "
        f"GET /apps/web/envs/staging/cycle/{RUNNING}), then cycle again"
    )
    stubber.assert_no_pending_responses()
    assert len(world.instances()) == 4  # nothing terminated


def _started(world: World) -> dict[str, Any]:
    status, started = call("POST", "/apps/web/envs/staging/runs", {"command": "echo hi", "timeout_seconds": 60})
    assert status == 202, started
    world.run_output(started["id"], started["instance"], ["hi"])
    return dict(started)


@pytest.mark.parametrize("after", ["not-a-token", "f/", "x/00000000000000000000000000000000000000000000000000000001"])
def test_a_one_off_s_output_from_a_token_this_api_did_not_give_is_a_400(world: World, after: str) -> None:
    started = _started(world)
    path = f"/apps/web/envs/staging/runs/{started['id']}"
    status, shown = call("GET", path)
    assert status == 200 and shown["output"] == ["hi"] and shown["next"], shown
    status, refused = call("GET", path, query={"after": after})
    assert status == 400, refused
    assert refused["message"] == (
        f"after={after[:40]!r} is not a token this API gave; pass the `next` value of the previous answer"
    )
    status, rest = call("GET", path, query={"after": shown["next"]})  # the token it gave still reads on
    assert status == 200 and rest["output"] == [], rest
