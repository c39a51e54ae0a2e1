"""Moto as the local AWS: an account bootstrapped as ``cdk bootstrap`` would, each ``Platform-<env>``
stack deployed from its synthesized template, and Lambda functions run in-process.

The same code serves the local platform (a moto server on loopback that the CLI, the
instances and the handlers reach over HTTP) and the tests (moto's in-process mock): every
function takes the boto3 clients to use. Lambda functions run as their configuration says:
the module and function their ``Handler`` names, in this process, with the environment
the stack gave them (:func:`function_environment`).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import logging
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from unittest import mock

from local.template import ACCOUNT, REGION, Adapted, Deferred, adapt, resolved_properties
from slipway.aws import read_parameters
from slipway.settings import PLATFORM_ENV, ControlPlaneSettings, FleetSettings, app_parameters_path
from slipway_release.layout import MANIFEST, AppKeys

# moto executes Step Functions definitions, and runs Lambda without Docker (see invoke_in_process).
MOTO_CONFIG: Any = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}
# What `cdk bootstrap` leaves in an account: the asset bucket and the version stacks check.
BOOTSTRAP_QUALIFIER = "hnb659fds"
BOOTSTRAP_VERSION = "30"
# Public parameters moto does not have, and their local values (see local.template).
POWERTOOLS_LAYER = f"arn:aws:lambda:{REGION}:017000801446:layer:AWSLambdaPowertoolsPythonV3-python313-arm64:1"


class Clients:
    """boto3 clients of one local account, created on first use."""

    def __init__(self, factory: Callable[[str], Any]) -> None:
        self._factory = factory
        self._made: dict[str, Any] = {}

    def __getattr__(self, service: str) -> Any:
        if service.startswith("_"):
            raise AttributeError(service)
        if service not in self._made:
            self._made[service] = self._factory(service.rstrip("_").replace("_", "-"))
        return self._made[service]


def default_clients() -> Clients:
    """Clients from boto3's default session: moto's mock, or the endpoint in ``AWS_ENDPOINT_URL``."""
    import boto3

    return Clients(lambda service: boto3.client(service, region_name=REGION))


def bootstrap(clients: Clients) -> str:
    """What ``cdk bootstrap`` creates that stacks rely on; returns the asset bucket's name."""
    bucket = f"cdk-{BOOTSTRAP_QUALIFIER}-assets-{ACCOUNT}-{REGION}"
    clients.s3.create_bucket(Bucket=bucket)
    clients.ssm.put_parameter(
        Name=f"/cdk-bootstrap/{BOOTSTRAP_QUALIFIER}/version", Value=BOOTSTRAP_VERSION, Type="String", Overwrite=True
    )
    return bucket


@dataclass(frozen=True)
class Stack:
    """A deployed stack: its outputs and the physical id of each resource, by logical id."""

    name: str
    outputs: Mapping[str, str]
    resources: Mapping[str, str]
    adapted: Adapted

    def physical(self, logical_id: str) -> str:
        return self.resources[logical_id]

    def of_type(self, resource_type: str) -> dict[str, str]:
        """Logical id → physical id of every resource of ``resource_type`` in the original template."""
        found = {}
        for logical, resource in self.adapted.original["Resources"].items():
            if resource["Type"] == resource_type and logical in self.resources:
                found[logical] = self.resources[logical]
        return found


def _empty_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("README", "the local platform runs this function's handler in-process\n")
    return buffer.getvalue()


def deploy_stack(clients: Clients, name: str, template: Mapping[str, Any]) -> Stack:
    """Deploy ``template`` as stack ``name`` into moto, with the adaptations of :mod:`local.template`."""
    adapted = adapt(
        template,
        stack=name,
        public_parameters={
            "/aws/service/powertools/python/arm64/python3.13/3.37.0": POWERTOOLS_LAYER,
        },
    )
    code = _empty_zip()
    for bucket, key in adapted.lambda_code:
        clients.s3.put_object(Bucket=bucket, Key=key, Body=code)
    parameters = [
        {"ParameterKey": item.parameter, "ParameterValue": _create(clients, item, {})}
        for item in adapted.deferred
        if item.when == "before"
    ]
    clients.cloudformation.create_stack(
        StackName=name,
        TemplateBody=json.dumps(adapted.template),
        Parameters=parameters,
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
    )
    described = clients.cloudformation.describe_stacks(StackName=name)["Stacks"][0]
    if described["StackStatus"] != "CREATE_COMPLETE":
        raise RuntimeError(
            f"{name} did not deploy into moto: {described['StackStatus']} {described.get('StackStatusReason')}"
        )
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
    paginator = clients.cloudformation.get_paginator("list_stack_resources")
    resources = {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for page in paginator.paginate(StackName=name)
        for r in page["StackResourceSummaries"]
    }
    for logical, attributes in adapted.target_group_attributes:
        clients.elbv2.modify_target_group_attributes(TargetGroupArn=resources[logical], Attributes=attributes)
    for logical in adapted.versioned_buckets:
        clients.s3.put_bucket_versioning(Bucket=resources[logical], VersioningConfiguration={"Status": "Enabled"})
    for item in adapted.deferred:
        if item.when == "before":
            resources[item.logical_id] = next(
                p["ParameterValue"] for p in parameters if p["ParameterKey"] == item.parameter
            )
        else:
            resources[item.logical_id] = _create(clients, item, resolved_properties(outputs, item))
    return Stack(name=name, outputs=outputs, resources=resources, adapted=adapted)


def _create(clients: Clients, item: Deferred, properties: Mapping[str, Any]) -> str:
    """Create one deferred resource through its API; its physical id (what ``Ref`` gives)."""
    if item.type == "AWS::SecretsManager::Secret":
        generate = item.properties["GenerateSecretString"]
        password = clients.secretsmanager.get_random_password(
            PasswordLength=generate["PasswordLength"],
            ExcludePunctuation=generate.get("ExcludePunctuation", False),
            IncludeSpace=generate.get("IncludeSpace", False),
        )["RandomPassword"]
        # As Secrets Manager generates it: the password alone, or put into a JSON template under a key.
        if "GenerateStringKey" in generate:
            text = json.dumps({**json.loads(generate["SecretStringTemplate"]), generate["GenerateStringKey"]: password})
        else:
            text = password
        created = clients.secretsmanager.create_secret(
            Name=item.name, Description=item.properties.get("Description", ""), SecretString=text
        )
        return str(created["ARN"])
    if item.type == "AWS::CloudWatch::Alarm":
        clients.cloudwatch.put_metric_alarm(**properties)
        return item.name
    if item.type == "AWS::StepFunctions::StateMachine":
        clients.stepfunctions.create_state_machine(
            name=item.name,
            definition=properties["DefinitionString"],
            roleArn=properties["RoleArn"],
            type=properties.get("StateMachineType", "STANDARD"),
        )
        return item.ref
    if item.type == "AWS::AutoScaling::ScalingPolicy":
        clients.autoscaling.put_scaling_policy(PolicyName=item.name, **properties)
        return item.name
    if item.type == "AWS::EC2::SecurityGroupEgress":
        permission: dict[str, Any] = {
            "IpProtocol": properties["IpProtocol"],
            "FromPort": properties["FromPort"],
            "ToPort": properties["ToPort"],
        }
        if "DestinationSecurityGroupId" in properties:
            permission["UserIdGroupPairs"] = [{"GroupId": properties["DestinationSecurityGroupId"]}]
        else:
            permission["IpRanges"] = [{"CidrIp": properties["CidrIp"]}]
        clients.ec2.authorize_security_group_egress(GroupId=properties["GroupId"], IpPermissions=[permission])
        return item.name
    if item.type == "AWS::CodeBuild::Project":
        clients.codebuild.create_project(**codebuild_project(item.name, properties))
        return item.name
    raise ValueError(f"no local way to create {item.type} ({item.logical_id})")


def codebuild_project(name: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    """CreateProject's request for a CloudFormation ``AWS::CodeBuild::Project``'s properties."""
    environment = properties["Environment"]
    logs = (properties.get("LogsConfig") or {}).get("CloudWatchLogs") or {}
    request: dict[str, Any] = {
        "name": name,
        "source": {
            "type": properties["Source"]["Type"],
            "buildspec": properties["Source"].get("BuildSpec", ""),
            # moto wants a location even for NO_SOURCE, which AWS does not: the builds fetch their own.
            "location": properties["Source"].get("Location") or "builds fetch their source themselves",
        },
        "artifacts": {"type": properties["Artifacts"]["Type"]},
        "environment": {
            "type": environment["Type"],
            "image": environment["Image"],
            "computeType": environment["ComputeType"],
            "environmentVariables": [
                {"name": v["Name"], "value": v["Value"], "type": v.get("Type", "PLAINTEXT")}
                for v in environment.get("EnvironmentVariables", [])
            ],
        },
        "serviceRole": properties["ServiceRole"],
        "timeoutInMinutes": int(properties.get("TimeoutInMinutes", 60)),
    }
    if logs:
        request["logsConfig"] = {
            "cloudWatchLogs": {"status": logs.get("Status", "ENABLED"), "groupName": logs["GroupName"]}
        }
    return request


# Lambda refuses a function whose environment (every key and value, UTF-8) exceeds 4 KB; moto does not.
ENVIRONMENT_LIMIT_BYTES = 4 * 1024


def environment_size(variables: Mapping[str, str]) -> int:
    """The size Lambda counts against :data:`ENVIRONMENT_LIMIT_BYTES`."""
    return sum(len(key.encode()) + len(value.encode()) for key, value in variables.items())


def function_environment(clients: Clients, stack: Stack) -> dict[str, str]:
    """The environment variables of every Lambda function of ``stack``, merged.

    The handlers run in one process, so their variables share one environment: a
    variable two functions set differently is refused rather than silently overwritten.
    A function whose environment Lambda would refuse (over 4 KB) is refused here too.
    """
    merged: dict[str, str] = {}
    for physical in stack.of_type("AWS::Lambda::Function").values():
        configuration = clients.lambda_.get_function_configuration(FunctionName=physical)
        variables = (configuration.get("Environment") or {}).get("Variables", {})
        if environment_size(variables) > ENVIRONMENT_LIMIT_BYTES:
            raise ValueError(
                f"the environment of {physical} is {environment_size(variables)} bytes; Lambda refuses more than "
                f"{ENVIRONMENT_LIMIT_BYTES}"
            )
        for key, value in variables.items():
            if merged.get(key, value) != value:
                raise ValueError(f"two functions of {stack.name} set {key} differently; they cannot share a process")
            merged[key] = value
    return merged


class LambdaContext:
    """What Lambda passes handlers as ``context``: the parts Powertools reads."""

    memory_limit_in_mb = 1024

    def __init__(self, function_name: str) -> None:
        self.function_name = function_name
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function_name}"
        self.aws_request_id = str(uuid.uuid4())


def run_handler(handler: str, event: Any, function_name: str) -> Any:
    """Call the handler ``module.function`` with ``event``, as Lambda would."""
    module, _, function = handler.rpartition(".")
    return getattr(importlib.import_module(module), function)(event, LambdaContext(function_name))


def _invoke(self: Any, function_name: str, qualifier: Any, body: Any, headers: Any, response_headers: Any) -> bytes:
    """moto's Lambda without Docker: run the function's handler in this process; an ``Event``
    invocation in a thread of its own, answered at once, as Lambda queues it."""
    function = self.get_function(function_name, qualifier)
    event = json.loads(body or "{}")
    if (headers or {}).get("X-Amz-Invocation-Type") == "Event":
        threading.Thread(
            target=_run_quietly, args=(function.handler, event, function.function_name), daemon=True
        ).start()
        return b""
    try:
        result = run_handler(function.handler, event, function.function_name)
    except Exception as error:  # what Lambda reports for an unhandled exception
        response_headers["x-amz-function-error"] = "Unhandled"
        result = {"errorType": type(error).__name__, "errorMessage": str(error)}
    return json.dumps(result).encode()


def _run_quietly(handler: str, event: Any, function_name: str) -> None:
    """An asynchronous invocation: its result goes nowhere; an error is logged as Lambda would log it."""
    try:
        run_handler(handler, event, function_name)
    except Exception:
        logging.getLogger("local.lambda").exception("asynchronous invocation of %s failed", function_name)


@contextmanager
def invoke_in_process() -> Iterator[None]:
    """While inside: moto's Lambda (and so its Step Functions interpreter) runs handlers in this process."""
    from moto.awslambda_simple.models import LambdaSimpleBackend

    with mock.patch.object(LambdaSimpleBackend, "invoke", _invoke):
        yield


@dataclass(frozen=True)
class Execution:
    """How an execution of the rollout state machine ended, its output and its history."""

    status: str
    output: dict[str, Any]
    events: list[dict[str, Any]]


@dataclass
class Deployed:
    """A ``Platform-<env>`` stack deployed into moto, seen as its functions see it."""

    clients: Clients
    stack: Stack
    environment: dict[str, str]

    @property
    def settings(self) -> ControlPlaneSettings:
        """What the API function is configured with: its environment and its apps' parameters, parsed."""
        path = app_parameters_path(self.environment[PLATFORM_ENV])
        return ControlPlaneSettings.from_environ(self.environment, read_parameters(self.clients.ssm, path))

    def fleet(self, app: str) -> FleetSettings:
        return self.settings.fleets[app]

    def add_release(self, app: str, release_id: str) -> bytes:
        """A release record of ``app`` as the publisher writes one (schema-valid, naming itself), for a
        simulated fleet, whose instances never read its slug; its ``release.json`` bytes."""
        from slipway.releases import Artifact, build_manifest

        env = self.environment[PLATFORM_ENV]
        made = Artifact(hashlib.sha256(f"{app} {release_id}".encode()).hexdigest(), 1)
        manifest = build_manifest(
            release_id=release_id,
            app=app,
            env=env,
            slug=made,
            build={
                "version": 1,
                "kind": "procfile",
                "runtime": None,
                "env": {"PATH": [], "PYTHONPATH": []},
                "source_sha256": made.sha256,
                "built_at": "2026-01-01T00:00:00Z",
            },
            source=made,
            git_ref="main",
            git_commit="0" * 40,
            env_text="",
            config_changes={"set": [], "unset": []},
            created_by="test",
            created_at="2026-01-01T00:00:00Z",
            description="",
            runtime=self.settings.apps[app],
            parent=None,
        )
        body = json.dumps(manifest).encode()
        bucket = self.settings.bucket
        self.clients.s3.put_object(Bucket=bucket, Key=AppKeys(app, env).release(release_id, MANIFEST), Body=body)
        return body

    def resize(self, app: str, *, desired: int, minimum: int, maximum: int) -> None:
        """Set the app's Auto Scaling group to ``minimum..maximum`` with ``desired`` instances."""
        self.clients.autoscaling.update_auto_scaling_group(
            AutoScalingGroupName=self.fleet(app).group, MinSize=minimum, MaxSize=maximum, DesiredCapacity=desired
        )

    def instances(self, app: str) -> list[str]:
        group = self.clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[self.fleet(app).group])
        return sorted(i["InstanceId"] for i in group["AutoScalingGroups"][0]["Instances"])

    def start(self, state: Mapping[str, Any]) -> str:
        """Start a rollout with ``state`` as its input; the execution's ARN. Each gets a name of its
        own, as the API gives them (moto names every unnamed execution alike)."""
        machine = self.settings.state_machine
        assert machine is not None
        started = self.clients.stepfunctions.start_execution(
            stateMachineArn=machine, name=f"rollout-{uuid.uuid4().hex}", input=json.dumps(dict(state))
        )
        return str(started["executionArn"])

    def wait(self, execution_arn: str, timeout: float = 120) -> Execution:
        """Wait for an execution to end (or ``timeout`` seconds): its status, output and history."""
        deadline = time.monotonic() + timeout
        while True:
            described = self.clients.stepfunctions.describe_execution(executionArn=execution_arn)
            if described["status"] != "RUNNING" or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        output = json.loads(described.get("output") or "{}")
        if described["status"] == "FAILED":
            output = {"error": described.get("error"), "cause": described.get("cause")}
        events = self.clients.stepfunctions.get_execution_history(executionArn=execution_arn, maxResults=1000)
        return Execution(described["status"], output, events["events"])


@contextmanager
def mock_platform(template: Mapping[str, Any], name: str = "Platform-staging") -> Iterator[Deployed]:
    """Moto's in-process mock with ``template`` deployed as ``name`` (for tests and benchmarks).

    The caller sets fake credentials first; boto3 clients created inside talk to the mock.
    """
    from moto import mock_aws

    from local.hooks import commands_reach_only_their_instances, list_command_invocations

    with (
        mock_aws(config=MOTO_CONFIG),
        invoke_in_process(),
        list_command_invocations(),
        commands_reach_only_their_instances(),
    ):
        clients = default_clients()
        bootstrap(clients)
        stack = deploy_stack(clients, name, template)
        yield Deployed(clients, stack, function_environment(clients, stack))


class LogStream:
    """A log stream in CloudWatch Logs (a build's log, a command's output), written a few lines at a time."""

    def __init__(self, logs: Any, group: str | None, stream: str) -> None:
        self.logs, self.group, self.stream = logs, group, stream
        self.pending: list[str] = []
        self.flushed = 0.0
        if group:
            # A stream written before (the same instance's file, read again) is added to.
            with suppress(logs.exceptions.ResourceAlreadyExistsException):
                logs.create_log_stream(logGroupName=group, logStreamName=stream)

    def line(self, text: str) -> None:
        self.pending.append(text)
        if time.monotonic() - self.flushed > 0.5:
            self.flush()

    def flush(self) -> None:
        if not self.group or not self.pending:
            self.pending.clear()
            return
        stamp = int(time.time() * 1000)
        events = [{"timestamp": stamp, "message": line} for line in self.pending]
        self.pending = []
        self.logs.put_log_events(logGroupName=self.group, logStreamName=self.stream, logEvents=events)
        self.flushed = time.monotonic()
