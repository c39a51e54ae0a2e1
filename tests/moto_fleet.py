"""A fleet on moto and the synthesized rollout state machine running on moto's Step
Functions interpreter, with the real task handlers run in-process for every Lambda
invocation. Shared by tests/test_rollout_machine.py and benchmarks/rollout.py."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import boto3
from moto import mock_aws
from moto.awslambda_simple.models import LambdaSimpleBackend

from slipway.local import run_rollout_task, state_machine_definition
from slipway.rollout import tasks

REGION = "us-east-1"
BUCKET = "slipway-staging-releases"
DOCUMENT = "Platform-staging-Deploy"
ZONES = ["us-east-1a", "us-east-1b", "us-east-1c"]
MOTO_CONFIG = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}


@dataclass
class Faults:
    """What the fake world does wrong, by instance id."""

    command_fails_on: set[str] = field(default_factory=set)
    unhealthy: set[str] = field(default_factory=set)
    on_send: Callable[[list[str], str], None] | None = None


class World:
    """A fleet on moto: ASG over three zones behind a target group, a release bucket, alarms."""

    def __init__(self, instances: int, min_size: int, max_size: int = 20) -> None:
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
            MaxSize=max_size,
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
        self.calls: dict[str, int] = {}  # AWS API calls the tasks made, by service:operation

    def hold_lock(self, *, owner: str, execution: str, acquired_at: str, expires_at: str) -> None:
        """Leave the app's deploy lock as another rollout would (live or dead by ``expires_at``)."""
        lock = {
            "owner": owner,
            "execution": execution,
            "release": "r2",
            "acquired_at": acquired_at,
            "expires_at": expires_at,
        }
        self.s3.put_object(Bucket=BUCKET, Key="web/staging/lock", Body=json.dumps(lock).encode())

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
            return _Bent(
                client, world.calls, send_command=self._send(client), get_command_invocation=self._invocation(client)
            )
        if service == "elbv2":

            def health(**kwargs: Any) -> Any:
                answer = client.describe_target_health(**kwargs)
                for target in answer["TargetHealthDescriptions"]:
                    if target["Target"]["Id"] in world.faults.unhealthy:
                        target["TargetHealth"] = {"State": "unhealthy", "Reason": "Target.FailedHealthChecks"}
                return answer

            return _Bent(client, world.calls, describe_target_health=health)
        return _Bent(client, world.calls)

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
    """A client with some methods replaced; every call counted in the world's ``calls``."""

    def __init__(self, client: Any, calls: dict[str, int], **overrides: Callable[..., Any]) -> None:
        self._client, self._calls, self._overrides = client, calls, overrides

    def __getattr__(self, name: str) -> Any:
        method = self._overrides.get(name) or getattr(self._client, name)
        if not callable(method) or name.startswith("_") or name in ("exceptions", "meta"):
            return method

        def counted(*args: Any, **kwargs: Any) -> Any:
            service = self._client.meta.service_model.service_name
            self._calls[f"{service}:{name}"] = self._calls.get(f"{service}:{name}", 0) + 1
            return method(*args, **kwargs)

        return counted


@dataclass
class Execution:
    status: str
    output: dict[str, Any]
    events: list[dict[str, Any]]


class Runner:
    """Runs executions of the state machine ``arn`` against a world; ``runner(world, **state)``."""

    def __init__(self, arn: str, sfn: Any, real: Callable[[str], Any]) -> None:
        self.arn, self.sfn, self.real = arn, sfn, real

    def start(self, world: World, state: dict[str, Any]) -> str:
        return str(self.sfn.start_execution(stateMachineArn=self.arn, input=json.dumps(state))["executionArn"])

    def wait(self, execution_arn: str) -> Execution:
        deadline = time.monotonic() + 120
        while True:
            described = self.sfn.describe_execution(executionArn=execution_arn)
            if described["status"] != "RUNNING" or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        output = json.loads(described.get("output") or "{}")
        if described["status"] == "FAILED":
            output = {"error": described.get("error"), "cause": described.get("cause")}
        events = self.sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
        return Execution(described["status"], output, events)

    def faulty(self, world: World) -> Any:
        """Route the tasks' AWS clients through ``world``'s faults (a context manager)."""
        return mock.patch.object(tasks, "_client", FaultyClients(world, self.real))

    def __call__(self, world: World, **state: Any) -> Execution:
        with self.faulty(world):
            return self.wait(self.start(world, world.state(**state)))


@contextmanager
def rollout_machine(template: dict[str, Any]) -> Iterator[Runner]:
    """Inside a moto mock: create the state machine from ``template``; yield run(world, **state)."""
    with mock.patch.object(LambdaSimpleBackend, "invoke", run_rollout_task), mock_aws(config=MOTO_CONFIG):
        real = tasks._client
        real.cache_clear()
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
            name="rollout", roleArn=role, definition=state_machine_definition(template, function)
        )["stateMachineArn"]

        runner = Runner(arn, sfn, real)
        try:
            yield runner
        finally:
            real.cache_clear()
