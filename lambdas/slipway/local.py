"""A local control plane: the real handlers behind an HTTP front that speaks API Gateway.

``python -m slipway.local --env staging`` starts moto (S3 and Secrets Manager) on
loopback, creates the environment's release bucket and credentials secret, and serves
the API on ``127.0.0.1``: each request becomes a REST API request-authorizer event for
:mod:`slipway.authorizer` and, if allowed, a REST proxy event for :mod:`slipway.api` —
the same event shapes and the same 401 with ``WWW-Authenticate`` that API Gateway
gives. The apps are those of ``cdk.json``. Nothing here runs in Lambda.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, cast
from urllib.parse import parse_qsl, urlsplit

REGION = "us-east-1"
ACCOUNT = "123456789012"
API_ID = "local"
STAGE = "api"
OPENAPI = Path(__file__).with_name("openapi.json")
METHODS = ("get", "put", "post", "patch", "delete")


def routes(spec: Mapping[str, Any]) -> list[tuple[str, str, re.Pattern[str]]]:
    """``(METHOD, resource template, matcher)`` for every operation of the OpenAPI document."""
    found = []
    for template, item in spec["paths"].items():
        pattern = re.compile("^" + re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$")
        found += [(method.upper(), template, pattern) for method in item if method in METHODS]
    return found


@dataclass(frozen=True)
class Request:
    """An HTTP request as API Gateway sees it, matched to an OpenAPI operation."""

    method: str
    path: str
    resource: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    path_parameters: Mapping[str, str]
    source_ip: str
    now: datetime


def _request_context(request: Request) -> dict[str, Any]:
    method, path, resource, now = request.method, request.path, request.resource, request.now
    return {
        "accountId": ACCOUNT,
        "apiId": API_ID,
        "domainName": f"{API_ID}.execute-api.{REGION}.amazonaws.com",
        "domainPrefix": API_ID,
        "extendedRequestId": str(uuid.uuid4()),
        "httpMethod": method,
        "identity": {"sourceIp": request.source_ip, "userAgent": request.headers.get("User-Agent")},
        "path": f"/{STAGE}{path}",
        "protocol": "HTTP/1.1",
        "requestId": str(uuid.uuid4()),
        "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
        "requestTimeEpoch": int(now.timestamp() * 1000),
        "resourceId": "local",
        "resourcePath": resource,
        "stage": STAGE,
    }


def authorizer_event(request: Request) -> dict[str, Any]:
    """The event API Gateway sends a REST API REQUEST authorizer."""
    method, path, headers, query = request.method, request.path, request.headers, request.query
    return {
        "type": "REQUEST",
        "methodArn": f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{API_ID}/{STAGE}/{method}{path}",
        "resource": request.resource,
        "path": path,
        "httpMethod": method,
        "headers": dict(headers),
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": dict(query),
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()},
        "pathParameters": dict(request.path_parameters),
        "stageVariables": None,
        "requestContext": _request_context(request),
    }


def proxy_event(request: Request, *, body: bytes, authorizer: Mapping[str, Any]) -> dict[str, Any]:
    """The event API Gateway sends a Lambda proxy integration, after the authorizer allowed the request."""
    headers, query = request.headers, request.query
    context = _request_context(request)
    context["authorizer"] = dict(authorizer)
    try:
        text, encoded = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(body).decode("ascii"), True
    return {
        "resource": request.resource,
        "path": request.path,
        "httpMethod": request.method,
        "headers": dict(headers),
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": dict(query) or None,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} or None,
        "pathParameters": dict(request.path_parameters) or None,
        "stageVariables": None,
        "requestContext": context,
        "body": text if body else None,
        "isBase64Encoded": encoded,
    }


class _Context:
    """Enough of a Lambda context for Powertools' logger."""

    function_name = "slipway-local"
    memory_limit_in_mb = 1024
    invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:slipway-local"

    def __init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())


class Front(BaseHTTPRequestHandler):
    """Turns HTTP requests into API Gateway events for the authorizer and the API."""

    protocol_version = "HTTP/1.1"
    table: ClassVar[list[tuple[str, str, re.Pattern[str]]]] = []

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"local: {self.command} {self.path} {args[1] if len(args) > 1 else ''}\n")

    def _serve(self) -> None:
        from slipway import api, authorizer

        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items()}
        query = dict(parse_qsl(url.query))
        now = datetime.now(UTC)
        match = next(
            ((t, m.groupdict()) for meth, t, p in self.table if meth == self.command for m in [p.match(url.path)] if m),
            None,
        )
        if match is None:
            self._reply(404, {}, json.dumps({"message": f"no route for {self.command} {url.path}"}))
            return
        resource, parameters = match
        request = Request(self.command, url.path, resource, headers, query, parameters, self.client_address[0], now)
        started = time.monotonic()
        try:
            allowed = authorizer.handler(authorizer_event(request), _Context())
        except Exception as error:
            if str(error) != authorizer.UNAUTHORIZED:
                raise
            # API Gateway's UNAUTHORIZED gateway response, as the ControlPlane configures it.
            self._reply(401, {"WWW-Authenticate": 'Basic realm="Slipway"'}, json.dumps({"message": "Unauthorized"}))
            return
        context = {
            **allowed.get("context", {}),
            "principalId": allowed["principalId"],
            "integrationLatency": int((time.monotonic() - started) * 1000),
        }
        response = api.handler(proxy_event(request, body=body, authorizer=context), cast(Any, _Context()))
        self._reply(response["statusCode"], response.get("headers") or {}, response.get("body") or "")

    def _reply(self, status: int, headers: Mapping[str, str], body: str) -> None:
        data = body.encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if not any(name.lower() == "content-type" for name in headers):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def state_machine_definition(template: Mapping[str, Any], function_arn: str) -> str:
    """The synthesized rollout definition with the task Lambda's ARN put in for its token."""
    [machine] = [r for r in template["Resources"].values() if r["Type"] == "AWS::StepFunctions::StateMachine"]
    rendered = []
    for part in machine["Properties"]["DefinitionString"]["Fn::Join"][1]:
        if isinstance(part, str):
            rendered.append(part)
        elif "Fn::GetAtt" in part and part["Fn::GetAtt"][1] == "Arn":
            rendered.append(function_arn)
        else:
            raise ValueError(f"unexpected token in the rollout definition: {part}")
    return "".join(rendered)


def run_rollout_task(
    self: Any, function_name: str, qualifier: Any, body: Any, headers: Any, response_headers: Any
) -> bytes:
    """moto's Lambda, for the rollout function: run the real task handler in this process."""
    from slipway.rollout import tasks

    try:
        result = tasks.handler(json.loads(body), None)
    except Exception as error:  # what Lambda reports for an unhandled exception
        response_headers["x-amz-function-error"] = "Unhandled"
        result = {"errorType": type(error).__name__, "errorMessage": str(error)}
    return json.dumps(result).encode()


def simulated_fleets(env: str, apps: Mapping[str, Any], template: Mapping[str, Any], bucket: str) -> None:
    """Fleets on moto for each app (2 simulated instances over two zones behind a target group)
    and the synthesized rollout state machine, its tasks run in this process.

    The instances are moto's: SSM reports every deploy command a success. They exercise the
    rollout's orchestration (lock, batches, health gates, promote, rollback), not the agent.
    """
    import boto3
    from moto.awslambda_simple.models import LambdaSimpleBackend
    from moto.core.config import default_user_config

    default_user_config["stepfunctions"] = {"execute_state_machine": True}
    default_user_config["lambda"] = {"use_docker": False}
    LambdaSimpleBackend.invoke = run_rollout_task  # type: ignore[method-assign]
    ec2, autoscaling, elb = boto3.client("ec2"), boto3.client("autoscaling"), boto3.client("elbv2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}{zone}")["Subnet"][
            "SubnetId"
        ]
        for i, zone in enumerate("ab")
    ]
    image = ec2.describe_images()["Images"][0]["ImageId"]
    document = f"Platform-{env}-Deploy"
    boto3.client("ssm").create_document(
        Name=document,
        DocumentType="Command",
        Content=json.dumps(
            {
                "schemaVersion": "2.2",
                "description": "deploy (simulated)",
                "parameters": {"ReleaseUrl": {"type": "String"}},
                "mainSteps": [
                    {
                        "action": "aws:runShellScript",
                        "name": "Deploy",
                        "inputs": {"runCommand": ["/home/deploy/bin/deploy {{ ReleaseUrl }}"]},
                    }
                ],
            }
        ),
    )
    fleets = {}
    for app in apps:
        target_group = elb.create_target_group(Name=f"{app}-{env}", Protocol="HTTP", Port=5000, VpcId=vpc)[
            "TargetGroups"
        ][0]["TargetGroupArn"]
        autoscaling.create_launch_configuration(LaunchConfigurationName=app, ImageId=image, InstanceType="t3.small")
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=f"{app}-{env}",
            LaunchConfigurationName=app,
            MinSize=1,
            MaxSize=4,
            DesiredCapacity=2,
            VPCZoneIdentifier=",".join(subnets),
            TargetGroupARNs=[target_group],
            Tags=[{"Key": "slipway:env", "Value": env, "PropagateAtLaunch": True}],
        )
        fleets[app] = {
            "group": f"{app}-{env}",
            "target_group": target_group,
            "alarms": [],
            "document": document,
            "bucket": bucket,
        }
    role = boto3.client("iam").create_role(RoleName="rollout", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("index.py", "")
    function = boto3.client("lambda").create_function(
        FunctionName="rollout-tasks",
        Runtime="python3.13",
        Role=role,
        Handler="slipway.rollout.tasks.handler",
        Code={"ZipFile": code.getvalue()},
    )["FunctionArn"]
    machine = boto3.client("stepfunctions").create_state_machine(
        name=f"Platform-{env}-Rollout", roleArn=role, definition=state_machine_definition(template, function)
    )["stateMachineArn"]
    os.environ.update(
        STATE_MACHINE_ARN=machine,
        FLEETS_JSON=json.dumps(fleets),
        ROLLOUT_TIMING=json.dumps({"poll_seconds": 1, "command_timeout": 120, "healthy_timeout": 60}),
    )


def start(
    *,
    env: str,
    apps: Mapping[str, Mapping[str, Any]],
    users: Mapping[str, str],
    port: int = 0,
    max_source_bytes: int | None = None,
    template: Mapping[str, Any] | None = None,
) -> tuple[ThreadingHTTPServer, Any]:
    """Start moto and the front for ``env``; configure this process as the Lambda would be."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request lines drown the front's
    aws = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    aws.start()
    host, aws_port = aws.get_host_and_port()
    bucket = f"slipway-{env}-releases"
    os.environ.update(
        AWS_ACCESS_KEY_ID="local",
        AWS_SECRET_ACCESS_KEY="local",
        AWS_DEFAULT_REGION=REGION,
        AWS_ENDPOINT_URL=f"http://{host}:{aws_port}",
        # moto's Step Functions interpreter calls Lambda at localhost:$MOTO_PORT from inside the server.
        MOTO_PORT=str(aws_port),
        RELEASE_BUCKET=bucket,
        PLATFORM_ENV=env,
        APPS_JSON=json.dumps(apps),
        POWERTOOLS_SERVICE_NAME="slipway",
        POWERTOOLS_LOG_LEVEL="WARNING",
    )
    if max_source_bytes is not None:
        os.environ["MAX_SOURCE_BYTES"] = str(max_source_bytes)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    secret = boto3.client("secretsmanager").create_secret(
        Name=f"slipway-{env}-credentials", SecretString=json.dumps(dict(users))
    )
    os.environ["CREDENTIALS_SECRET_ARN"] = secret["ARN"]
    if template is not None:
        simulated_fleets(env, apps, template, bucket)
    Front.table = routes(json.loads(OPENAPI.read_text()))
    server = ThreadingHTTPServer(("127.0.0.1", port), Front)
    return server, aws


def apps_of(env: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The apps of ``env`` as the ControlPlane passes them (``APPS_JSON``), from cdk.json, and
    the synthesized ``Platform-<env>`` template (for its rollout state machine)."""
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root))
    from app import build_app, cdk_json_context  # the same configuration `cdk synth` uses
    from constructs.config import PlatformConfig

    context = cdk_json_context()
    config = PlatformConfig.from_context(context["platform"])
    environment = config.environment(env)  # KeyError for an unknown environment
    apps = {
        app.name: {"port": s.port, "health_check_path": s.health_check_path, "formation": s.processes}
        for app in config.apps
        for s in [app.settings_for(env)]
    }
    with tempfile.TemporaryDirectory(prefix="slipway-synth-") as outdir:
        assembly = build_app(context=context, outdir=outdir).synth()
        template: dict[str, Any] = assembly.get_stack_by_name(environment.stack_name).template
    return apps, template


def launch(env: str, password: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start a local control plane for ``env`` in a child process; return it and what it printed
    (``url``, ``user``, ``password``, ``aws_endpoint``, ``apps``). The caller terminates it."""
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-m", "slipway.local", "--env", env, "--password", password],
        cwd=root,
        env={
            **os.environ,
            "PYTHONPATH": f"{root / 'lambdas'}:{root}",
            "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(timeout=10)
        raise RuntimeError(f"the local control plane for {env} did not start (exit {process.returncode})")
    info: dict[str, Any] = json.loads(line)
    return process, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slipway.local", description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="staging", help="the environment of cdk.json to serve (default staging)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password", default=None, help="default: generated and printed")
    args = parser.parse_args(argv)
    try:
        apps, template = apps_of(args.env)
    except KeyError:
        print(f"local: no environment {args.env!r} in cdk.json", file=sys.stderr)
        return 2
    password = args.password or secrets.token_urlsafe(18)
    server, aws = start(env=args.env, apps=apps, users={args.user: password}, port=args.port, template=template)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    print(
        json.dumps(
            {
                "url": url,
                "env": args.env,
                "user": args.user,
                "password": password,
                "aws_endpoint": os.environ["AWS_ENDPOINT_URL"],
                "apps": sorted(apps),
            }
        ),
        flush=True,
    )
    print(f"local: serving {args.env} at {url} (apps: {', '.join(sorted(apps))})", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        aws.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
