"""Instance refresh, which moto lacks, as the local platform carries it out (local.refresh): each
decision step by step, then the engine through moto's Auto Scaling API with the hooks that add
the three requests (local.hooks), and the other hooks both modes share."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from local.aws import Deployed
from local.hooks import group_attachments_as_on_aws, instance_refreshes
from local.refresh import Group, InstanceRefreshes, Refresh, batch_size, next_step

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def _refresh(**changes: Any) -> Refresh:
    base = Refresh(
        id="r-1",
        group="web",
        min_healthy_percent=90,
        warmup_seconds=5,
        alarms=("web-5xx",),
        auto_rollback=True,
        started_at=NOW,
        preferences={"MinHealthyPercentage": 90},
    )
    return Refresh(**{**base.__dict__, **changes})


@pytest.mark.parametrize(
    ("desired", "percent", "size"), [(3, 90, 1), (3, 100, 1), (10, 75, 2), (10, 50, 5), (4, 0, 4), (1, 90, 1)]
)
def test_a_batch_is_what_the_minimum_healthy_allows_and_at_least_one(desired: int, percent: int, size: int) -> None:
    assert batch_size(desired, percent) == size


def test_a_refresh_replaces_one_batch_at_a_time_waiting_for_health_and_warmup() -> None:
    full = Group(desired=3, in_service=("a", "b", "c"), serving=frozenset("abc"))
    step = next_step(_refresh(), full, now=NOW, clock=0.0)
    assert step.terminate == ("a",) and step.refresh.status == "InProgress"
    assert step.refresh.to_replace == ("a", "b", "c") and step.refresh.percent == 0
    # The group launched d for a: until d passes its health checks, nothing more goes.
    booting = Group(desired=3, in_service=("b", "c", "d"), serving=frozenset("bc"))
    step = next_step(step.refresh, booting, now=NOW, clock=1.0)
    assert step.terminate == () and step.refresh.reason == "waiting for 1 instance(s) to pass health checks"
    # d serves: then the warmup (5 s), then b.
    served = Group(desired=3, in_service=("b", "c", "d"), serving=frozenset("bcd"))
    step = next_step(step.refresh, served, now=NOW, clock=10.0)
    assert step.terminate == () and step.refresh.reason == "waiting for instance warmup" and step.refresh.percent == 33
    step = next_step(step.refresh, served, now=NOW, clock=15.0)
    assert step.terminate == ("b",)
    step = next_step(step.refresh, Group(3, ("c", "d", "e"), frozenset("cde")), now=NOW, clock=16.0)
    step = next_step(step.refresh, Group(3, ("c", "d", "e"), frozenset("cde")), now=NOW, clock=21.0)
    assert step.terminate == ("c",)
    step = next_step(step.refresh, Group(3, ("d", "e", "f"), frozenset("def")), now=NOW, clock=22.0)
    assert (step.refresh.status, step.refresh.percent, step.refresh.ended_at) == ("Successful", 100, NOW)
    described = step.refresh.describe()
    assert (described["Status"], described["PercentageComplete"], described["InstancesToUpdate"]) == (
        "Successful",
        100,
        0,
    )


def test_a_firing_alarm_or_replacements_that_never_serve_stop_it() -> None:
    started = next_step(_refresh(), Group(3, ("a", "b", "c"), frozenset("abc")), now=NOW, clock=0.0).refresh
    firing = Group(3, ("b", "c", "d"), frozenset("bc"), firing=("web-5xx",))
    stopped = next_step(started, firing, now=NOW, clock=1.0).refresh
    assert stopped.status == "RollbackSuccessful" and stopped.reason.startswith("alarm web-5xx in ALARM: rolled back")
    assert next_step(_refresh(auto_rollback=False), firing, now=NOW, clock=1.0).refresh.status == "Failed"
    booting = Group(3, ("b", "c", "d"), frozenset("bc"))
    waiting = next_step(started, booting, now=NOW, clock=1.0, serve_timeout=60).refresh
    failed = next_step(waiting, booting, now=NOW, clock=62.0, serve_timeout=60).refresh
    assert failed.status == "Failed"
    assert failed.reason == "1 replacement(s) did not pass the load balancer's health checks within 60s"
    assert next_step(started, booting, now=NOW, clock=2.0, cancel=True).refresh.status == "Cancelled"


def test_the_engine_refreshes_a_group_through_moto(deployed: Deployed) -> None:
    app = "web"
    deployed.resize(app, desired=3, minimum=1, maximum=6)
    group = deployed.fleet(app).group
    before = set(deployed.instances(app))
    engine = InstanceRefreshes(clients=deployed.clients, warmup_cap=0, interval=0.05)
    client = boto3.client("autoscaling", region_name="us-east-1")
    try:
        with instance_refreshes(engine):
            started = client.start_instance_refresh(
                AutoScalingGroupName=group, Strategy="Rolling", Preferences={"MinHealthyPercentage": 60}
            )["InstanceRefreshId"]
            with pytest.raises(ClientError, match="InstanceRefreshInProgress"):
                client.start_instance_refresh(AutoScalingGroupName=group, Preferences={})
            deadline = time.monotonic() + 30
            while True:
                [shown] = client.describe_instance_refreshes(AutoScalingGroupName=group, InstanceRefreshIds=[started])[
                    "InstanceRefreshes"
                ]
                if shown["Status"] not in ("Pending", "InProgress") or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert (shown["Status"], shown["PercentageComplete"]) == ("Successful", 100)
            assert shown["Preferences"]["MinHealthyPercentage"] == 60
            with pytest.raises(ClientError, match="ActiveInstanceRefreshNotFound"):
                client.cancel_instance_refresh(AutoScalingGroupName=group)
            with pytest.raises(ClientError, match="AutoScalingGroup name not found"):
                client.describe_instance_refreshes(AutoScalingGroupName="no-such-group")
    finally:
        engine.stop()
    after = set(deployed.instances(app))
    assert len(after) == 3 and not after & before


def test_groups_keep_their_target_groups_registrations_as_on_aws(deployed: Deployed) -> None:
    app = "web"
    deployed.resize(app, desired=2, minimum=1, maximum=4)
    fleet = deployed.fleet(app)
    clients = deployed.clients

    def registered() -> set[str]:
        health = clients.elbv2.describe_target_health(TargetGroupArn=fleet.target_group)
        return {t["Target"]["Id"] for t in health["TargetHealthDescriptions"]}

    with group_attachments_as_on_aws():
        standby, kept = deployed.instances(app)
        clients.autoscaling.enter_standby(
            AutoScalingGroupName=fleet.group, InstanceIds=[standby], ShouldDecrementDesiredCapacity=True
        )
        clients.elbv2.deregister_targets(TargetGroupArn=fleet.target_group, Targets=[{"Id": standby}])
        # A change of capacity does not register the Standby instance again (moto alone would).
        clients.autoscaling.set_desired_capacity(AutoScalingGroupName=fleet.group, DesiredCapacity=2)
        launched = set(deployed.instances(app)) - {standby, kept}
        assert registered() == {kept, *launched}
        # A terminated instance leaves its target groups (moto alone would keep it registered).
        clients.autoscaling.terminate_instance_in_auto_scaling_group(
            InstanceId=kept, ShouldDecrementDesiredCapacity=False
        )
        assert kept not in registered()


def test_list_command_invocations_answers_in_moto_too(deployed: Deployed) -> None:
    # mock_platform adds ListCommandInvocations (moto lacks it); its invocations are moto's fiction here.
    # Only the instance the command names is in it (moto alone adds every instance of the account).
    app = "web"
    deployed.resize(app, desired=2, minimum=1, maximum=4)
    fleet = deployed.fleet(app)
    instance = deployed.instances(app)[0]
    url = f"s3://{fleet.bucket}/{app}/staging/r1"
    sent = deployed.clients.ssm.send_command(
        DocumentName=fleet.document, InstanceIds=[instance], Parameters={"ReleaseUrl": [url]}
    )["Command"]
    listed = deployed.clients.ssm.list_command_invocations(CommandId=sent["CommandId"], Details=True)
    [invocation] = listed["CommandInvocations"]
    assert (invocation["InstanceId"], invocation["Status"], invocation["DocumentName"]) == (
        instance,
        "Success",
        fleet.document,
    )
    assert invocation["CommandPlugins"][0]["ResponseCode"] == 0
