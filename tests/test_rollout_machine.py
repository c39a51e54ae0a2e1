"""The synthesized rollout state machine, executed by moto's Step Functions interpreter,
with the real task handlers run in-process for every Lambda invocation."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.awslambda_simple.models import LambdaSimpleBackend

from slipway.rollout import tasks

REGION = "us-east-1"
BUCKET = "slipway-staging-releases"
DOCUMENT = "Platform-staging-Deploy"
ZONES = ["us-east-1a", "us-east-1b", "us-east-1c"]
MOTO_CONFIG = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}


def _definition(template: dict[str, Any], function_arn: str) -> str:
    """The state machine's definition with the task Lambda's ARN put in for its token."""
    [machine] = [r for r in template["Resources"].values() if r["Type"] == "AWS::StepFunctions::StateMachine"]
    parts = machine["Properties"]["DefinitionString"]["Fn::Join"][1]
    rendered = []
    for part in parts:
        if isinstance(part, str):
            rendered.append(part)
        elif "Fn::GetAtt" in part and part["Fn::GetAtt"][1] == "Arn":
            rendered.append(function_arn)
        else:
            raise AssertionError(f"unexpected token in the definition: {part}")
    return "".join(rendered)


@dataclass
class Faults:
    """What the fake world does wrong, by instance id."""

    command_fails_on: set[str] = field(default_factory=set)
    unhealthy: set[str] = field(default_factory=set)
    on_send: Callable[[list[str], str], None] | None = None


class World:
    """A fleet on moto: ASG over three zones behind a target group, a release bucket, alarms."""

    def __init__(self, instances: int, min_size: int) -> None:
        self.ec2 = boto3.client("ec2", region_name=REGION)
        self.asg = boto3.client("autoscaling", region_name=REGION)
        self.elb = boto3.client("elbv2", region_name=REGION)
        self.s3 = boto3.client("s3", region_name=REGION)
        vpc = self.ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnets = [
            self.ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=zone)["Subnet"]["SubnetId"]
            for i, zone in enumerate(ZONES)
        ]
        self.target_group = self.elb.create_target_group(
            Name="web-staging", Protocol="HTTP", Port=5000, VpcId=vpc, TargetType="instance"
        )["TargetGroups"][0]["TargetGroupArn"]
        image = self.ec2.describe_images()["Images"][0]["ImageId"]
        self.asg.create_launch_configuration(LaunchConfigurationName="web", ImageId=image, InstanceType="t3.small")
        self.asg.create_auto_scaling_group(
            AutoScalingGroupName="web-staging",
            LaunchConfigurationName="web",
            MinSize=min_size,
            MaxSize=20,
            DesiredCapacity=instances,
            VPCZoneIdentifier=",".join(subnets),
            TargetGroupARNs=[self.target_group],
            Tags=[{"Key": "slipway:env", "Value": "staging", "PropagateAtLaunch": True}],
        )
        self.s3.create_bucket(Bucket=BUCKET)
        self.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        for release in ("r1", "r2"):
            self.s3.put_object(
                Bucket=BUCKET,
                Key=f"web/staging/{release}/release.json",
                Body=json.dumps({"id": release, "app": "web", "env": "staging"}).encode(),
            )
        self.s3.put_object(Bucket=BUCKET, Key="web/staging/current", Body=b"r1\n")
        self.cloudwatch = boto3.client("cloudwatch", region_name=REGION)
        self.cloudwatch.put_metric_alarm(
            AlarmName="web-staging-5xx",
            MetricName="HTTPCode_Target_5XX_Count",
            Namespace="AWS/ApplicationELB",
            Statistic="Sum",
            Period=60,
            EvaluationPeriods=1,
            Threshold=5,
            ComparisonOperator="GreaterThanThreshold",
        )
        boto3.client("ssm", region_name=REGION).create_document(
            Name=DOCUMENT,
            DocumentType="Command",
            Content=json.dumps(
                {
                    "schemaVersion": "2.2",
                    "description": "deploy",
                    "parameters": {"ReleaseUrl": {"type": "String"}},
                    "mainSteps": [
                        {
                            "action": "aws:runShellScript",
                            "name": "deploy",
                            "inputs": {"runCommand": ["/home/deploy/bin/deploy {{ ReleaseUrl }}"]},
                        }
                    ],
                }
            ),
        )
        self.sent: list[tuple[list[str], str]] = []
        self.faults = Faults()

    def instances(self) -> list[str]:
        group = self.asg.describe_auto_scaling_groups(AutoScalingGroupNames=["web-staging"])["AutoScalingGroups"][0]
        return sorted(i["InstanceId"] for i in group["Instances"])

    def current(self) -> str:
        return self.s3.get_object(Bucket=BUCKET, Key="web/staging/current")["Body"].read().decode().strip()

    def deployed(self) -> dict[str, str]:
        """The release each instance got last, by the commands sent."""
        last: dict[str, str] = {}
        for instances, url in self.sent:
            for instance in instances:
                last[instance] = url.rsplit("/", 1)[1]
        return last

    def state(self, **overrides: Any) -> dict[str, Any]:
        return {
            "app": "web",
            "env": "staging",
            "release": "r2",
            "user": "alice",
            "kind": "deploy",
            "fleet": {
                "group": "web-staging",
                "target_group": self.target_group,
                "alarms": ["web-staging-5xx"],
                "document": DOCUMENT,
                "bucket": BUCKET,
            },
            "strategy": {"canary": True, "batch_percent": 50, "bake_seconds": 0},
            "timing": {"poll_seconds": 0, "command_timeout": 60, "healthy_timeout": 60, "lock_minutes": 30},
            **overrides,
        }


class FaultyClients:
    """tasks._client with SSM and ELB answers bent by the world's faults."""

    def __init__(self, world: World, real: Callable[[str], Any]) -> None:
        self.world, self.real = world, real

    def __call__(self, service: str) -> Any:
        client = self.real(service)
        world = self.world
        if service == "ssm":
            return _Bent(client, send_command=self._send(client), get_command_invocation=self._invocation(client))
        if service == "elbv2":

            def health(**kwargs: Any) -> Any:
                answer = client.describe_target_health(**kwargs)
                for target in answer["TargetHealthDescriptions"]:
                    if target["Target"]["Id"] in world.faults.unhealthy:
                        target["TargetHealth"] = {"State": "unhealthy", "Reason": "Target.FailedHealthChecks"}
                return answer

            return _Bent(client, describe_target_health=health)
        return client

    def _send(self, client: Any) -> Callable[..., Any]:
        def send(**kwargs: Any) -> Any:
            url = kwargs["Parameters"]["ReleaseUrl"][0]
            self.world.sent.append((list(kwargs["InstanceIds"]), url))
            if self.world.faults.on_send:
                self.world.faults.on_send(list(kwargs["InstanceIds"]), url)
            return client.send_command(**kwargs)

        return send

    def _invocation(self, client: Any) -> Callable[..., Any]:
        def invocation(**kwargs: Any) -> Any:
            answer = client.get_command_invocation(**kwargs)
            if kwargs["InstanceId"] in self.world.faults.command_fails_on:
                answer.update(
                    Status="Failed",
                    StandardOutputContent="-----> Deploying r2\n",
                    StandardErrorContent="deploy: FAILED: r2 not deployed: r2 failed its preflight",
                )
            return answer

        return invocation


class _Bent:
    def __init__(self, client: Any, **overrides: Callable[..., Any]) -> None:
        self._client, self._overrides = client, overrides

    def __getattr__(self, name: str) -> Any:
        return self._overrides.get(name) or getattr(self._client, name)


@pytest.fixture
def machine(templates: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """Start the synthesized state machine on moto; returns run(world, **state) -> (status, output)."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)

    def invoke(self: Any, function_name: str, qualifier: Any, body: Any, headers: Any, response_headers: Any) -> bytes:
        try:
            result = tasks.handler(json.loads(body), None)
        except Exception as error:  # what Lambda does with an unhandled exception
            response_headers["x-amz-function-error"] = "Unhandled"
            result = {"errorType": type(error).__name__, "errorMessage": str(error)}
        return json.dumps(result).encode()

    monkeypatch.setattr(LambdaSimpleBackend, "invoke", invoke)
    with mock_aws(config=MOTO_CONFIG):
        tasks._client.cache_clear()
        real = tasks._client
        iam = boto3.client("iam", region_name=REGION)
        role = iam.create_role(RoleName="tasks", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        code = io.BytesIO()
        with zipfile.ZipFile(code, "w") as archive:
            archive.writestr("index.py", "")
        function = boto3.client("lambda", region_name=REGION).create_function(
            FunctionName="rollout-tasks",
            Runtime="python3.13",
            Role=role,
            Handler="index.handler",
            Code={"ZipFile": code.getvalue()},
        )["FunctionArn"]
        sfn = boto3.client("stepfunctions", region_name=REGION)
        arn = sfn.create_state_machine(
            name="rollout", roleArn=role, definition=_definition(templates["Platform-staging"], function)
        )["stateMachineArn"]

        def run(world: World, **state: Any) -> tuple[str, dict[str, Any]]:
            monkeypatch.setattr(tasks, "_client", FaultyClients(world, real))
            execution = sfn.start_execution(stateMachineArn=arn, input=json.dumps(world.state(**state)))
            deadline = time.monotonic() + 60
            while True:
                described = sfn.describe_execution(executionArn=execution["executionArn"])
                if described["status"] != "RUNNING" or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            output = json.loads(described.get("output") or "{}")
            if described["status"] == "FAILED":
                output = {"error": described.get("error"), "cause": described.get("cause")}
            return described["status"], output

        yield run
        real.cache_clear()


def test_clean_rollout_over_five_instances(machine: Callable[..., Any]) -> None:
    world = World(instances=5, min_size=2)
    status, output = machine(world)
    assert status == "SUCCEEDED", output
    assert world.current() == "r2"
    assert world.deployed() == {i: "r2" for i in world.instances()}
    batches = [instances for instances, _ in world.sent]
    assert len(batches[0]) == 1  # the canary goes alone
    assert sorted(i for b in batches for i in b) == world.instances()  # every instance exactly once


def test_command_failure_on_the_canary_rolls_back(machine: Callable[..., Any]) -> None:
    world = World(instances=5, min_size=2)
    world.faults.on_send = lambda instances, url: (
        world.faults.command_fails_on.update(instances) if url.endswith("/r2") and len(world.sent) == 1 else None
    )
    status, output = machine(world)
    assert status == "FAILED"
    assert output["error"] == "RolloutFailed"
    [canary] = world.sent[0][0]
    assert canary in output["cause"]
    assert world.current() == "r1"  # current untouched
    assert world.sent[-1] == ([canary], f"s3://{BUCKET}/web/staging/r1")  # rolled back to r1
    assert world.deployed() == {canary: "r1"}


def test_unhealthy_target_in_batch_two_rolls_back_batches_one_and_two(machine: Callable[..., Any]) -> None:
    world = World(instances=5, min_size=2)
    world.faults.on_send = lambda instances, url: (
        world.faults.unhealthy.update(instances) if url.endswith("/r2") and len(world.sent) == 2 else None
    )
    status, output = machine(world)
    assert status == "FAILED", output
    changed = sorted(world.sent[0][0] + world.sent[1][0])
    assert world.sent[-1] == (changed, f"s3://{BUCKET}/web/staging/r1")
    assert world.current() == "r1"
    assert set(world.deployed().values()) == {"r1"}


def test_second_concurrent_deploy_is_refused(machine: Callable[..., Any]) -> None:
    world = World(instances=2, min_size=1)
    world.s3.put_object(
        Bucket=BUCKET,
        Key="web/staging/lock",
        Body=json.dumps(
            {
                "owner": "bob",
                "execution": "arn:other",
                "release": "r2",
                "acquired_at": "2026-11-26T03:00:00+00:00",
                "expires_at": "2999-01-01T00:00:00+00:00",
            }
        ).encode(),
    )
    status, output = machine(world)
    assert status == "FAILED"
    assert output["error"] == "LockHeld" and "bob" in output["cause"]
    assert world.sent == [] and world.current() == "r1"


def test_stale_lock_is_taken_over(machine: Callable[..., Any]) -> None:
    world = World(instances=2, min_size=1)
    world.s3.put_object(
        Bucket=BUCKET,
        Key="web/staging/lock",
        Body=json.dumps(
            {
                "owner": "bob",
                "execution": "arn:dead",
                "release": "r2",
                "acquired_at": "2026-11-25T03:00:00+00:00",
                "expires_at": "2026-11-25T03:30:00+00:00",
            }
        ).encode(),
    )
    status, output = machine(world)
    assert status == "SUCCEEDED", output
    assert world.current() == "r2"


def test_instance_launched_mid_rollout_is_converged(machine: Callable[..., Any]) -> None:
    world = World(instances=3, min_size=1)

    def scale_out(instances: list[str], url: str) -> None:
        if len(world.sent) == 1:  # while the canary deploys, the fleet scales out by one
            group = world.asg.describe_auto_scaling_groups(AutoScalingGroupNames=["web-staging"])
            desired = group["AutoScalingGroups"][0]["DesiredCapacity"]
            world.asg.set_desired_capacity(AutoScalingGroupName="web-staging", DesiredCapacity=desired + 1)

    world.faults.on_send = scale_out
    status, output = machine(world)
    assert status == "SUCCEEDED", output
    assert len(world.instances()) == 4
    assert world.deployed() == {i: "r2" for i in world.instances()}
    late = [instances for instances, _ in world.sent][-1]
    assert len(late) == 1 and late[0] not in [i for b, _ in world.sent[:-1] for i in b]  # converged separately


def test_fleet_at_its_minimum_surges_first_and_gives_the_capacity_back(machine: Callable[..., Any]) -> None:
    world = World(instances=2, min_size=2)
    status, output = machine(world)
    assert status == "SUCCEEDED", output
    group = world.asg.describe_auto_scaling_groups(AutoScalingGroupNames=["web-staging"])["AutoScalingGroups"][0]
    assert group["DesiredCapacity"] == 2  # the surge instance is given back
    # Three instances were deployed one at a time, never leaving fewer than two in service.
    assert [len(instances) for instances, _ in world.sent] == [1, 1, 1]
    assert world.current() == "r2"
