"""Each function's bucket grants equal the calls its own code makes, key by key.

The synthesized staging stack runs on moto (tests/moto_fleet.py) and real flows go through it:
a source published and built (the release workflow and its writer), a config change, a rollback, a
promotion from production, a deploy, a cancel, the API's reads and a refused upload. Every S3 call
is recorded with the function that made it (the API, the release writer and its workflow's tasks,
which share one role, and the rollout's tasks), then checked against that function's role: each
call is allowed on its exact key, and each statement's key pattern was used by some call. So no
role holds a write it does not need, and none lacks one it does.
"""

from __future__ import annotations

import contextvars
import fnmatch
import hashlib
import json
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import boto3
import pytest
from api_events import call
from moto_fleet import APP, ENV, World, faulty
from slugs import host_build

from local import aws as local_aws
from local.aws import Deployed
from slipway import aws, operations
from slipway.store import Bucket
from slipway_release.layout import SLUG, AppKeys

# Which function's code is running: set around each handler this test or moto's Lambda runs.
FUNCTION: contextvars.ContextVar[str] = contextvars.ContextVar("function", default="test")
API, WRITER, ROLLOUT = "ControlPlaneApiFunction", "ReleaseWorkflow", "RolloutTasksFunction"
# The role each function runs with (the release writer shares its workflow's tasks role).
ROLES = {API: "ControlPlaneApiFunctionRole", WRITER: "ReleaseWorkflowTasksRole", ROLLOUT: "RolloutTasksRole"}
# The IAM actions an S3 operation needs, on the object (or the bucket, for listings).
ACTIONS = {
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "UploadPartCopy": "s3:PutObject",
    "DeleteObject": "s3:DeleteObject",
    "DeleteObjects": "s3:DeleteObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "ListObjectsV2": "s3:ListBucket",
    "HeadBucket": "s3:ListBucket",
}
# Grants no flow here reaches, and why they are there.
NOT_REACHED = {
    # S3 answers a missing key with 404 only to a role that may list the bucket (else 403): the grant
    # changes the answers of GetObject, which the flows make; it is its own call only for a listing.
    ("s3:ListBucket", "arn:aws:s3:::BUCKET"): "the listings of release ids are made; kept for every role",
    # Only when a copy loses a race to the same key (an abort of its own multipart upload).
    ("s3:AbortMultipartUpload", "*"): "a copy that finds its slug written meanwhile aborts its upload",
    # When a rollback does not finish, the rollout forgets what those instances run (their records);
    # test_rollout_machine.py's failing rollback reaches it.
    ("s3:DeleteObject", "arn:aws:s3:::BUCKET/*/staging/instances/*"): "a rollback that failed too",
    # Promotions of releases written before slugs were stored by digest read them beside the manifest.
    ("s3:GetObject", "legacy"): "version 2 releases of another environment",
    ("s3:GetObjectVersion", "legacy"): "version 2 releases' slugs and sources, copied into slugs/ and sources/",
}


def _recorder(calls: list[tuple[str, str, str]]) -> Callable[..., None]:
    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        bucket, key = params.get("Bucket", ""), params.get("Key")
        if model.name != "DeleteObjects":  # authorized key by key, below
            calls.append((FUNCTION.get(), model.name, f"arn:aws:s3:::{bucket}" + (f"/{key}" if key else "")))
        if model.name == "UploadPartCopy":  # it also reads its source, a version of it when one is named
            source = params["CopySource"]
            if isinstance(source, str):  # botocore's own handler may have written it "bucket/key?versionId=v"
                where, _, query = urllib.parse.unquote(source).partition("?versionId=")
                source = {"Bucket": where.split("/", 1)[0], "Key": where.split("/", 1)[1], "VersionId": query}
            action = "GetObjectVersion" if source.get("VersionId") else "GetObject"
            calls.append((FUNCTION.get(), action, f"arn:aws:s3:::{source['Bucket']}/{source['Key']}"))
        if model.name == "DeleteObjects":
            for item in params["Delete"]["Objects"]:
                calls.append((FUNCTION.get(), "DeleteObject", f"arn:aws:s3:::{bucket}/{item['Key']}"))

    return record


@pytest.fixture
def recorded(deployed: Deployed) -> Iterator[tuple[World, list[tuple[str, str, str]]]]:
    """The staging stack with web's fleet, and every S3 call any function makes from now on."""
    calls: list[tuple[str, str, str]] = []
    boto3.setup_default_session()
    boto3.DEFAULT_SESSION.events.register("before-parameter-build.s3.*", _recorder(calls))  # type: ignore[union-attr]
    aws.client.cache_clear()
    aws.environment_client.cache_clear()
    physical = {name: logical for logical, name in deployed.stack.of_type("AWS::Lambda::Function").items()}
    real = local_aws.run_handler

    def attributed(handler: str, event: Any, function_name: str) -> Any:
        logical = physical.get(function_name, function_name)
        name = next((f for f in (API, WRITER, ROLLOUT) if logical.startswith(f)), logical)
        token = FUNCTION.set(name)
        try:
            return real(handler, event, function_name)
        finally:
            FUNCTION.reset(token)

    presigned = {"presigned_put": "PutObject", "presigned_part": "UploadPart", "presigned_get": "GetObject"}
    patches = [mock.patch.object(local_aws, "run_handler", attributed)]
    for method, operation in presigned.items():  # what the client does with the URL, as this role
        patches.append(mock.patch.object(Bucket, method, _presigning(getattr(Bucket, method), operation, calls)))
    world = World(deployed, instances=2, min_size=1)
    with faulty(world), patches[0], patches[1], patches[2], patches[3]:
        yield world, calls


def _presigning(method: Callable[..., str], operation: str, calls: list[tuple[str, str, str]]) -> Callable[..., str]:
    def presign(self: Bucket, key: str, *args: Any) -> str:
        calls.append((FUNCTION.get(), operation, f"arn:aws:s3:::{self.name}/{key}"))
        return method(self, key, *args)

    return presign


def api(method: str, path: str, body: object = None) -> tuple[int, Any]:
    token = FUNCTION.set(API)
    try:
        return call(method, path, body)
    finally:
        FUNCTION.reset(token)


def _source() -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in {"Procfile": b"web: python3 app.py\n", "app.py": b"print(1)\n"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _flows(world: World) -> None:
    """What users do, through the API and the workflows."""
    s3, bucket = world.clients.s3, world.bucket
    keys = AppKeys(APP, ENV)
    # Publish: the API presigns and checks the upload; the workflow builds it and its writer releases it.
    source = _source()
    status, upload = api("POST", f"/apps/{APP}/envs/{ENV}/uploads", {"size": len(source), "sha256": _sha(source)})
    assert status == 201, upload
    s3.put_object(Bucket=bucket, Key=keys.upload(upload["upload_id"], "source.tar.gz"), Body=source)
    s3.put_object(Bucket=bucket, Key=keys.upload(upload["upload_id"], SLUG), Body=host_build(source))  # the builder
    status, build = api(
        "POST",
        f"/apps/{APP}/envs/{ENV}/releases",
        {"upload_id": upload["upload_id"], "git": {"ref": "main", "commit": "0" * 40}},
    )
    assert status == 202, build
    built = _wait_release(build["id"])
    # A refused upload is deleted at once.
    status, bad = api("POST", f"/apps/{APP}/envs/{ENV}/uploads", {"size": 4, "sha256": _sha(b"nope")})
    s3.put_object(Bucket=bucket, Key=keys.upload(bad["upload_id"], "source.tar.gz"), Body=b"nope")
    assert (
        api(
            "POST",
            f"/apps/{APP}/envs/{ENV}/releases",
            {"upload_id": bad["upload_id"], "git": {"ref": "m", "commit": "1" * 40}},
        )[0]
        == 422
    )
    # Deploy it, change config, roll back: the rollout's tasks move current; the writer makes releases.
    _deploy(world, f"/apps/{APP}/envs/{ENV}/deploys", {"release": built, "strategy": {"bake_seconds": 0}})
    assert api("PATCH", f"/apps/{APP}/envs/{ENV}/config", {"set": {"A": "1"}})[0] == 200
    _deploy(world, f"/apps/{APP}/envs/{ENV}/rollback", {"strategy": {"bake_seconds": 0}})
    # A deploy cancelled on its way (the API writes the request; the rollout reads it and rolls back).
    status, started = api(
        "POST", f"/apps/{APP}/envs/{ENV}/deploys", {"release": "r2", "strategy": {"bake_seconds": 30}}
    )
    assert status == 202, started
    time.sleep(0.5)
    assert api("POST", f"/apps/{APP}/envs/{ENV}/deploys/{started['id']}/cancel", {})[0] == 202
    world.deployed_stack.wait(_arn(world, started["id"]))
    # A promotion from production, read from production's bucket (named by its parameter).
    origin = "production-releases"
    s3.create_bucket(Bucket=origin)
    world.clients.ssm.put_parameter(Name="/slipway/production/release-bucket", Value=origin, Type="String")
    made = json.loads(s3.get_object(Bucket=bucket, Key=keys.release(built, "release.json"))["Body"].read())
    production = AppKeys(APP, "production")
    record = {**made, "id": "r9", "env": "production", "base": None}
    s3.put_object(Bucket=origin, Key=production.release("r9", "release.json"), Body=json.dumps(record))
    for key, target in ((keys.slug, production.slug), (keys.source, production.source)):
        digest = made["slug" if key == keys.slug else "source"]["sha256"]
        body = s3.get_object(Bucket=bucket, Key=key(digest))["Body"].read()
        s3.put_object(Bucket=origin, Key=target(digest), Body=body)
    s3.delete_object(Bucket=bucket, Key=keys.slug(made["slug"]["sha256"]))  # so it is copied, not found
    s3.delete_object(Bucket=bucket, Key=keys.source(made["source"]["sha256"]))
    status, promoted = api("POST", f"/apps/{APP}/envs/{ENV}/promotions", {"from": "production", "release": "r9"})
    assert status == 201, promoted
    # A Slack command, recorded once by its signature (a replay would find the record).
    from slipway.slack import handler as slack_handler
    from slipway.slack.signature import sign

    settings = json.loads(world.deployed_stack.environment["SLACK_JSON"])
    world.clients.secretsmanager.put_secret_value(SecretId=settings["signing_secret"], SecretString="secret")
    slack_handler._secret_cache.clear()
    body, stamp = (
        b"command=%2Fslipway&text=help&user_id=U1&channel_id=C1&response_url=https%3A%2F%2Fhooks.slack.com%2Fx",
        str(int(time.time())),
    )
    token = FUNCTION.set(API)
    try:
        answer = call(
            "POST",
            "/slack/commands",
            raw=body,
            user=None,
            headers={"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": sign("secret", stamp, body)},
        )
    finally:
        FUNCTION.reset(token)
    assert answer[0] == 200, answer
    # The API's reads.
    for path in ("releases", f"releases/{built}", f"releases/{built}/source", "config", "status", "deploys"):
        assert api("GET", f"/apps/{APP}/envs/{ENV}/{path}")[0] == 200, path


def _wait_release(build: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, shown = api("GET", f"/apps/{APP}/envs/{ENV}/builds/{build}")
        if shown.get("release"):
            return str(shown["release"])
        assert shown["status"] != "FAILED", shown
        time.sleep(0.1)
    raise AssertionError(f"build {build} made no release in {timeout} s")


def _arn(world: World, deploy: str) -> str:
    machine = world.deployed_stack.settings.state_machine
    assert machine is not None
    return machine.replace(":stateMachine:", ":execution:") + f":{deploy}"


def _deploy(world: World, path: str, body: dict[str, Any]) -> None:
    status, started = api("POST", path, body)
    assert status == 202, started
    assert world.deployed_stack.wait(_arn(world, started["id"])).status == "SUCCEEDED"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _s3_statements(template: dict[str, Any], role_prefix: str) -> list[tuple[str, list[str]]]:
    """The role's S3 statements: (action, key patterns as ARNs, the release bucket written BUCKET)."""
    [role] = [
        lid for lid, r in template["Resources"].items() if r["Type"] == "AWS::IAM::Role" and lid.startswith(role_prefix)
    ]
    found = []
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::IAM::Policy" or {"Ref": role} not in resource["Properties"]["Roles"]:
            continue
        for statement in resource["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            for action in actions:
                if action.startswith("s3:"):
                    found.append((action, [_text(r) for r in resources]))
    return found


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value == {"Fn::GetAtt": ["ReleaseBucket", "Arn"]}:
        return "arn:aws:s3:::BUCKET"
    if "Fn::Join" in value:
        return "".join(_text(part) for part in value["Fn::Join"][1])
    if value == {"Ref": "AWS::Partition"}:
        return "aws"
    return "TOKEN"


def test_each_function_s_bucket_grants_equal_the_calls_it_makes(
    recorded: tuple[World, list[tuple[str, str, str]]],
    templates: dict[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world, calls = recorded
    operations.settings.cache_clear()
    _flows(world)
    bucket = world.bucket
    template = templates["Platform-staging"]
    for function, role in ROLES.items():
        statements = _s3_statements(template, role)
        made = {
            (ACTIONS.get(operation, f"s3:{operation}"), arn.replace(f"arn:aws:s3:::{bucket}", "arn:aws:s3:::BUCKET"))
            for who, operation, arn in calls
            if who == function
        }
        assert made, f"{function} made no S3 call: the recording is broken"
        for action, arn in sorted(made):
            allowed = any(
                a == action and any(fnmatch.fnmatchcase(arn, p) for p in patterns) for a, patterns in statements
            )
            assert allowed, f"{function} calls {action} on {arn}, which its role does not grant"
        for action, patterns in statements:
            for pattern in patterns:
                used = any(a == action and fnmatch.fnmatchcase(arn, pattern) for a, arn in made)
                legacy = "/r*/slug.tar.gz" in pattern or "/r*/source.tar.gz" in pattern
                exempt = (
                    (action, pattern) in NOT_REACHED
                    or (action, "*") in NOT_REACHED
                    or (legacy and (action, "legacy") in NOT_REACHED)
                )
                assert used or exempt, f"{function}'s role grants {action} on {pattern}, which no call of it used"
