"""Builds: what the release workflow asks CodeBuild (checked against botocore's model of the
AWS API, since moto runs no build), what it makes of CodeBuild's answers, and the whole
workflow on the synthesized stack deployed into moto, each build run by the image's build
program in the builder container (local.builds), as the local platform runs it."""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from api_events import call
from botocore.stub import Stubber

from local.aws import Deployed
from local.builds import LocalBuilds, codebuild_runs_builds
from local.instance import missing_prerequisites
from slipway import aws
from slipway.builds import tasks
from slipway.builds.requests import build_verdict, failure_reason, start_build_request
from slipway.settings import BuildSettings, Timing
from slipway_release.layout import SOURCE, AppKeys

BUILD = BuildSettings(project="Platform-staging-BuilderProjectX8664", log_group="Platform-staging-BuilderLogs")
KEYS = AppKeys("web", "staging")
UPLOAD = "0123456789abcdef0123456789abcdef"
BUILD_ID = f"{BUILD.project}:5a1b2c3d-0000-4000-8000-000000000001"


def test_the_start_build_request_is_exactly_this_and_valid_for_codebuild() -> None:
    request = start_build_request(BUILD, bucket="releases", keys=KEYS, upload_id=UPLOAD)
    assert request == {
        "projectName": BUILD.project,
        "environmentVariablesOverride": [
            {
                "name": "SLIPWAY_SOURCE",
                "value": f"s3://releases/uploads/web/staging/{UPLOAD}/source.tar.gz",
                "type": "PLAINTEXT",
            },
            {
                "name": "SLIPWAY_SLUG",
                "value": f"s3://releases/uploads/web/staging/{UPLOAD}/slug.tar.gz",
                "type": "PLAINTEXT",
            },
        ],
        "cacheOverride": {"type": "S3", "location": "releases/caches/web/staging"},
        "idempotencyToken": UPLOAD,
    }
    client = boto3.client("codebuild", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stubber:  # the Stubber refuses a request the AWS model does not allow
        stubber.add_response("start_build", {"build": {"id": BUILD_ID, "buildStatus": "IN_PROGRESS"}}, request)
        assert client.start_build(**request)["build"]["id"] == BUILD_ID


def _stubbed(monkeypatch: pytest.MonkeyPatch, **clients: Any) -> None:
    monkeypatch.setattr(aws, "client", lambda service: clients[service])


def test_checking_a_build_reads_its_status_and_a_failure_s_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = {"region_name": "us-east-1", "aws_access_key_id": "x", "aws_secret_access_key": "x"}
    codebuild, logs = boto3.client("codebuild", **credentials), boto3.client("logs", **credentials)
    _stubbed(monkeypatch, codebuild=codebuild, logs=logs)
    state = {"build_id": BUILD_ID, "checked_at": "2026-12-01T00:00:00+00:00", "timing": Timing().to_json()}
    stream = {"groupName": BUILD.log_group, "streamName": BUILD_ID.split(":")[1]}
    with Stubber(codebuild) as builds, Stubber(logs) as log:
        running = {"id": BUILD_ID, "buildStatus": "IN_PROGRESS", "currentPhase": "BUILD", "logs": stream}
        builds.add_response("batch_get_builds", {"builds": [running]}, {"ids": [BUILD_ID]})
        monkeypatch.setattr(tasks, "_now", lambda: __import__("datetime").datetime.fromisoformat(state["checked_at"]))
        assert tasks.check(state)["verdict"] == "WAIT"
        failed = {**running, "buildStatus": "FAILED", "currentPhase": "COMPLETED"}
        builds.add_response("batch_get_builds", {"builds": [failed]}, {"ids": [BUILD_ID]})
        result = json.dumps({"result": "failed", "error": "command 'false' exited 1"})
        lines = ["-----> Running build command: false", result, "[Container] Phase complete: BUILD State: FAILED"]
        log.add_response(
            "get_log_events",
            {"events": [{"timestamp": 1, "message": line} for line in lines]},
            {
                "logGroupName": stream["groupName"],
                "logStreamName": stream["streamName"],
                "startFromHead": False,
                "limit": 100,
            },
        )
        checked = tasks.check(state)
    assert (checked["verdict"], checked["reason"]) == ("FAILED", "command 'false' exited 1")


def test_a_failure_without_the_build_program_s_word_is_codebuild_s() -> None:
    build = {
        "buildStatus": "FAILED",
        "phases": [
            {"phaseType": "SUBMITTED", "phaseStatus": "SUCCEEDED"},
            {
                "phaseType": "INSTALL",
                "phaseStatus": "FAILED",
                "contexts": [{"statusCode": "COMMAND_EXECUTION_ERROR", "message": "exit status 1"}],
            },
        ],
    }
    assert failure_reason(build, ["provision: ERROR: …"]) == "the build failed in its install phase: exit status 1"
    assert [build_verdict({"buildStatus": s}) for s in ("IN_PROGRESS", "SUCCEEDED", "FAULT", "STOPPED")] == [
        "WAIT",
        "READY",
        "FAILED",
        "FAILED",
    ]


# The whole workflow, on the stack in moto with real builds.

needs_builder = pytest.mark.skipif(missing_prerequisites() is not None, reason=f"builds {missing_prerequisites()}")


@pytest.fixture
def building(deployed: Deployed, tmp_path: Path) -> Iterator[Deployed]:
    builds = LocalBuilds(deployed.clients, tmp_path)
    with codebuild_runs_builds(builds):
        yield deployed
    builds.close()


def source(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            archive.addfile(info, io.BytesIO(text.encode()))
    return buffer.getvalue()


def start(deployed: Deployed, data: bytes) -> dict[str, Any]:
    import hashlib

    status, created = call(
        "POST", "/apps/web/envs/staging/uploads", {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    )
    assert status == 201, created
    # In moto's in-process mock no server answers the presigned URL: the PUT goes through boto3.
    deployed.clients.s3.put_object(
        Bucket=deployed.settings.bucket, Key=KEYS.upload(created["upload_id"], SOURCE), Body=data
    )
    commit = "0123456789abcdef0123456789abcdef01234567"
    status, build = call(
        "POST",
        "/apps/web/envs/staging/releases",
        {"upload_id": created["upload_id"], "git": {"ref": "main", "commit": commit}, "description": "built here"},
    )
    assert status == 202, build
    return dict(build)


def follow(build: dict[str, Any], timeout: float = 240) -> tuple[dict[str, Any], list[str]]:
    """Read the build as `slipway release` does, until it ends: its last view and every log line."""
    lines: list[str] = []
    after: str | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, shown = call(
            "GET", f"/apps/web/envs/staging/builds/{build['id']}", query={"after": after} if after else None
        )
        assert status == 200, shown
        lines += shown["log"]
        after = shown["next"]
        if shown["status"] != "BUILDING" and not shown["log"]:
            return shown, lines
        time.sleep(0.5)
    raise AssertionError(f"the build did not end in {timeout} s: {lines[-5:]}")


@needs_builder
def test_an_upload_is_built_in_the_builder_and_becomes_a_release(building: Deployed) -> None:
    data = source({"Procfile": "web: python3 -m http.server $PORT\n", "index.html": "hello\n"})
    shown, lines = follow(start(building, data))
    assert (shown["status"], shown["release"], shown["error"]) == ("SUCCEEDED", "r1", None)
    assert "-----> Procfile app detected: no dependencies to install, runs as is" in lines
    status, release = call("GET", "/apps/web/envs/staging/releases/r1")
    assert status == 200 and release["description"] == "built here" and release["build"]["kind"] == "procfile"
    assert release["build"]["source_sha256"] == release["source"]["sha256"]
    names = {o["Key"] for o in building.clients.s3.list_objects_v2(Bucket=building.settings.bucket)["Contents"]}
    keys = AppKeys("web", "staging")
    assert {keys.slug(release["slug"]["sha256"]), keys.source(release["source"]["sha256"])} <= names
    assert not [n for n in names if n.startswith("uploads/") and not n.endswith("upload.json")]


@needs_builder
def test_a_build_that_fails_makes_no_release_and_says_why_in_one_line(building: Deployed) -> None:
    data = source({"Procfile": "web: python3 app.py\nbuild: exit 3\n", "app.py": "print(1)\n"})
    shown, lines = follow(start(building, data))
    assert (shown["status"], shown["release"]) == ("FAILED", None)
    assert shown["error"] == "command 'exit 3' exited 3"
    assert "-----> Running build command: exit 3" in lines
    assert call("GET", "/apps/web/envs/staging/releases")[1]["releases"] == []


def test_the_builder_role_allows_only_what_a_build_does(templates: dict[str, Any]) -> None:
    """The base image, the apps' sources, slugs and caches in S3, and the builder's own log group:
    no report groups (builds publish none) and no default /aws/codebuild/<project> log group."""
    template = templates["Platform-staging"]
    [role] = [
        lid
        for lid, r in template["Resources"].items()
        if r["Type"] == "AWS::IAM::Role" and lid.startswith("BuilderRole")
    ]
    statements = [
        statement
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::IAM::Policy" and {"Ref": role} in resource["Properties"]["Roles"]
        for statement in resource["Properties"]["PolicyDocument"]["Statement"]
    ]
    actions = {a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert actions == {"s3:GetObject", "s3:PutObject", "s3:ListBucket", "logs:CreateLogStream", "logs:PutLogEvents"}
    [logs] = [s for s in statements if s["Action"] == ["logs:CreateLogStream", "logs:PutLogEvents"]]
    [log_group] = [
        lid
        for lid, r in template["Resources"].items()
        if r["Type"] == "AWS::Logs::LogGroup" and lid.startswith("BuilderLogs")
    ]
    assert logs["Resource"] == {"Fn::GetAtt": [log_group, "Arn"]}
