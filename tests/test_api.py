"""The release API's handler on a local S3 (moto server on loopback), with real
API Gateway REST proxy events (tests/events/) and real presigned-URL uploads."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import jsonschema
import pytest
from api_events import Context, call, resource
from hypothesis import given, settings
from hypothesis import strategies as st
from moto.core.config import default_user_config
from slugs import host_build, slug_build

from local.aws import MOTO_CONFIG, invoke_in_process
from slipway import api, aws, console, operations, publisher
from slipway import writer as writer_module
from slipway.builds import tasks as build_tasks
from slipway.builds.requests import workflow_input
from slipway.releases import ReleaseError, change_config
from slipway.settings import RELEASE_WRITER, AppParameter, AppRuntime, BuildSettings, SettingsError, app_parameter_name
from slipway_release.envfile import parse_env
from slipway_release.layout import SLUG, AppKeys, Pointer

EVENTS = Path(__file__).parent / "events"
SCHEMA = json.loads((Path(__file__).parent.parent / "image" / "slipway_release" / "release.schema.json").read_text())
BUCKET = "releases"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
APPS = {
    "web": {"port": 5000, "health_check_path": "/health", "health_check_codes": "200", "formation": {"web": 1}},
    "billing": {
        "port": 8080,
        "health_check_path": "/healthz",
        "health_check_codes": "200-204",
        "formation": {"web": 1, "worker": 2},
    },
}
BUILDS = {app: BuildSettings(project=f"builder-{app}", log_group="builds") for app in APPS}


@pytest.fixture
def s3(moto_s3: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Any:
    """A fresh, versioned release bucket; the API configured for `staging`."""
    for name, value in {
        "RELEASE_BUCKET": BUCKET,
        "PLATFORM_ENV": "staging",
        "MAX_SOURCE_BYTES": str(64 * 1024 * 1024),
    }.items():
        monkeypatch.setenv(name, value)
    # Each app's settings, in its parameter as the stack writes it.
    ssm = boto3.client("ssm")
    for app, runtime in APPS.items():
        value = AppParameter(AppRuntime.from_json(runtime), build=BUILDS[app]).to_json()
        ssm.put_parameter(Name=app_parameter_name("staging", app), Value=json.dumps(value), Type="String")
    default_user_config.update(MOTO_CONFIG)  # Lambda in this process, and Step Functions interpreted
    # The release workflow: its executions are started and end at once (the tests play the builds).
    workflow = boto3.client("stepfunctions").create_state_machine(
        name="release-workflow",
        definition=json.dumps({"StartAt": "Wait", "States": {"Wait": {"Type": "Pass", "End": True}}}),
        roleArn="arn:aws:iam::123456789012:role/release-workflow",
    )
    monkeypatch.setenv("RELEASE_WORKFLOW_ARN", workflow["stateMachineArn"])
    # The release writer, a Lambda function of its own (run in this process), which the API invokes.
    role = boto3.client("iam").create_role(RoleName="writer", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    boto3.client("lambda").create_function(
        FunctionName="release-writer",
        Runtime="python3.13",
        Role=role,
        Handler="slipway.writer.handler",
        Code={"ZipFile": b"PK\x05\x06" + bytes(18)},
    )
    monkeypatch.setenv(RELEASE_WRITER, "release-writer")
    in_process = invoke_in_process()
    in_process.__enter__()
    request.addfinalizer(lambda: in_process.__exit__(None, None, None))
    aws.client.cache_clear()
    operations.settings.cache_clear()
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return client


def source_tarball(files: dict[str, bytes] | None = None) -> bytes:
    """A gzip tar like `git archive --format=tar.gz` makes: entries at the root."""
    files = {"Procfile": b"web: python app.py\n", "app.py": b"print('hi')\n"} if files is None else files
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def put(url: str, data: bytes) -> str:
    request = urllib.request.Request(url, data=data, method="PUT", headers={"Content-Type": "application/gzip"})
    with urllib.request.urlopen(request) as response:
        return str(response.headers["ETag"])


def upload(data: bytes, app: str = "web", declared: bytes | None = None) -> str:
    """Create an upload for ``declared`` (default: ``data``) and PUT ``data`` to it."""
    declared = data if declared is None else declared
    status, created = call(
        "POST",
        f"/apps/{app}/envs/staging/uploads",
        {"size": len(declared), "sha256": hashlib.sha256(declared).hexdigest()},
    )
    assert status == 201, created
    [part] = created["parts"]
    put(part["url"], data)
    return str(created["upload_id"])


def publish(data: bytes | None = None, app: str = "web", ref: str = "main", **extra: object) -> tuple[int, Any]:
    """Upload and finalize a source, then play its build: (201, the release), or the refusal."""
    source = source_tarball() if data is None else data
    upload_id = upload(source, app)
    status, build = call(
        "POST",
        f"/apps/{app}/envs/staging/releases",
        {"upload_id": upload_id, "git": {"ref": ref, "commit": COMMIT}, **extra},
    )
    if status != 202:
        return status, build
    assert (build["id"], build["status"]) == (upload_id, "BUILDING")
    return build_and_publish(app, upload_id, source)


def build_and_publish(app: str, upload_id: str, source: bytes) -> tuple[int, Any]:
    """What the release workflow does for a started build: CodeBuild's part played by the image's
    real build program on this machine (tests/slugs.py), then the workflow's own publish task."""
    boto3.client("s3").put_object(
        Bucket=BUCKET, Key=AppKeys(app, "staging").upload(upload_id, SLUG), Body=host_build(source)
    )
    published = build_tasks.publish(workflow_input(app=app, env="staging", upload_id=upload_id))
    status, release = call("GET", f"/apps/{app}/envs/staging/releases/{published['release']}")
    assert status == 200, release
    return 201, release


def keys(s3: Any, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def test_app_settings_are_read_from_their_parameters_and_again_after_their_max_age(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API serves the apps whose parameters exist; a parameter added or changed by a stack
    deploy reaches a warm function within SETTINGS_MAX_AGE_SECONDS, not on every request."""
    clock = [1000.0]
    monkeypatch.setattr(operations.time, "monotonic", lambda: clock[0])
    operations.settings.cache_clear()
    assert set(operations.settings().apps) == {"web", "billing"}
    status, refused = call("GET", "/apps/api/envs/staging/releases")
    assert status == 404 and "no app 'api' in staging (apps: billing, web)" in refused["message"]
    runtime = AppRuntime(port=9000, health_check_path="/up", formation={"web": 1})
    boto3.client("ssm").put_parameter(
        Name=app_parameter_name("staging", "api"), Value=json.dumps(AppParameter(runtime).to_json()), Type="String"
    )
    clock[0] += operations.SETTINGS_MAX_AGE_SECONDS - 1
    assert "api" not in operations.settings().apps  # still the settings read a moment ago
    clock[0] += 1
    assert operations.settings().apps["api"] == runtime
    assert call("GET", "/apps/api/envs/staging/releases")[0] == 200


def test_a_malformed_app_parameter_is_named(s3: Any) -> None:
    boto3.client("ssm").put_parameter(Name=app_parameter_name("staging", "api"), Value="{}", Type="String")
    operations.settings.cache_clear()
    with pytest.raises(SettingsError, match=r"the parameter /slipway/staging/apps/api: app settings are malformed"):
        operations.settings()
    status, answer = call("GET", "/apps/web/envs/staging/releases")  # said in one line, no traceback
    assert status == 500
    assert answer["message"].startswith("the Slipway control plane is misconfigured: the parameter /slipway/staging")


def test_publish_makes_an_immutable_release_valid_against_the_schema(s3: Any) -> None:
    data = source_tarball()
    status, release = publish(data, description="first")
    assert status == 201, release
    manifest = {k: v for k, v in release.items() if k != "current"}
    jsonschema.validate(manifest, SCHEMA)
    assert release["version"] == 3
    assert release["id"] == "r1" and release["parent"] is None and release["current"] is False
    assert release["base"] is None  # built from its own source
    assert release["created_by"] == "alice"
    assert release["source"] == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    [slug_key] = keys(s3, "web/staging/slugs/")
    slug = s3.get_object(Bucket=BUCKET, Key=slug_key)["Body"].read()
    assert release["slug"] == {"sha256": hashlib.sha256(slug).hexdigest(), "size": len(slug)}
    assert slug_key == AppKeys("web", "staging").slug(release["slug"]["sha256"])  # stored once, by its digest
    # The build manifest the slug carries, copied out of it: what the agent checks the slug against.
    assert release["build"] == slug_build(slug) and release["build"]["source_sha256"] == release["source"]["sha256"]
    assert release["formation"] == {"web": 1}
    assert release["health_check"] == {"path": "/health", "port": 5000, "codes": "200"}
    assert release["config_changes"] == {"set": [], "unset": []}
    assert keys(s3, "web/staging/") == sorted(
        [
            "web/staging/r1/env",
            "web/staging/r1/release.json",
            slug_key,
            f"web/staging/sources/{release['source']['sha256']}.tar.gz",
        ]
    )
    assert (
        s3.get_object(Bucket=BUCKET, Key=f"web/staging/sources/{release['source']['sha256']}.tar.gz")["Body"].read()
        == data
    )
    # The upload's copies are gone; its record says what it became.
    uploads = keys(s3, "uploads/web/staging/")
    assert [k.rsplit("/", 1)[1] for k in uploads] == ["upload.json"]
    assert publish()[1]["parent"] == "r1"


def test_concurrent_publishes_get_distinct_ids_and_none_is_lost(s3: Any) -> None:
    sources = [source_tarball({"Procfile": b"web: x\n", "n": str(i).encode()}) for i in range(8)]
    uploads = [upload(data) for data in sources]
    results: list[tuple[int, Any]] = [(0, None)] * len(uploads)
    barrier = threading.Barrier(len(uploads))

    for upload_id in uploads:
        status, _ = call(
            "POST",
            "/apps/web/envs/staging/releases",
            {"upload_id": upload_id, "git": {"ref": "main", "commit": COMMIT}},
        )
        assert status == 202

    def finalize(i: int) -> None:
        barrier.wait()  # eight builds done at once: their publishes race for ids
        results[i] = build_and_publish("web", uploads[i], sources[i])

    threads = [threading.Thread(target=finalize, args=(i,)) for i in range(len(uploads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [status for status, _ in results] == [201] * 8, results
    ids = sorted((r["id"] for _, r in results), key=lambda r: int(r[1:]))
    assert ids == [f"r{n}" for n in range(1, 9)]
    # Every release holds the source its own publisher uploaded: no writer overwrote another.
    for i, (_, release) in enumerate(results):
        source_key = AppKeys("web", "staging").source(release["source"]["sha256"])
        assert release["source"]["sha256"] == hashlib.sha256(sources[i]).hexdigest()
        assert s3.get_object(Bucket=BUCKET, Key=source_key)["Body"].read() == sources[i]


def tarball_of(entries: list[tuple[str, bytes, str]]) -> bytes:
    """A gzip tar of (name, tar type, file data or link target) entries, as a hostile uploader makes it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.addfile(tarfile.TarInfo("Procfile"), io.BytesIO(b""))
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            data = payload.encode() if kind == tarfile.REGTYPE else b""
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = payload
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


BAD_SOURCES = {
    "not gzip": (b"just some text", "not a readable gzip tar archive"),
    "gzip but not tar": (gzip.compress(b"x" * 4096), "not a readable gzip tar archive"),
    "no Procfile at the root": (source_tarball({"app/Procfile": b"web: x\n"}), "no Procfile at its root"),
    "Procfile is a directory": (source_tarball({"Procfile/x": b""}), "no Procfile at its root"),
    "Procfile without processes": (source_tarball({"Procfile": b"# nothing\n"}), "Procfile defines no process"),
    "Procfile line without a command": (source_tarball({"Procfile": b"web:\n"}), "process type 'web' has no command"),
    # What the instance agent refuses when it unpacks, refused here first, by the same rules.
    "absolute path": (tarball_of([("/etc/cron.d/x", tarfile.REGTYPE, "x")]), "has an absolute path"),
    "climbing out": (tarball_of([("../../etc/x", tarfile.REGTYPE, "x")]), "climbs out with '..'"),
    "escaping symlink": (tarball_of([("logs", tarfile.SYMTYPE, "../../var/log")]), "resolves outside the release"),
    "device": (tarball_of([("disk", tarfile.BLKTYPE, "")]), "is a block device"),
    "FIFO": (tarball_of([("pipe", tarfile.FIFOTYPE, "")]), "is a FIFO"),
    "duplicate entry": (
        tarball_of([("app.py", tarfile.REGTYPE, "1"), ("app.py", tarfile.REGTYPE, "2")]),
        "'app.py' appears twice",
    ),
}


@pytest.mark.parametrize("data, message", BAD_SOURCES.values(), ids=BAD_SOURCES.keys())
def test_bad_source_is_refused_and_nothing_is_written(s3: Any, data: bytes, message: str) -> None:
    status, body = publish(data)
    assert status == 422
    assert message in body["message"]
    assert keys(s3, "web/") == []


def test_a_source_whose_procfile_lacks_a_process_the_formation_runs_is_refused(s3: Any) -> None:
    # billing runs two workers per instance (cdk.json formation): its Procfile must define worker.
    status, body = publish(source_tarball({"Procfile": b"web: python app.py\n"}), app="billing")
    assert status == 422
    assert "formation names process type 'worker', which the Procfile does not define" in body["message"]
    assert keys(s3, "billing/") == []
    status, _ = publish(source_tarball({"Procfile": b"web: python app.py\nworker: python work.py\n"}), app="billing")
    assert status == 201


def test_a_gzip_bomb_is_refused_from_its_headers(s3: Any) -> None:
    """The unpacked size comes from the tar headers: an entry declaring 3 GiB (over the agent's
    2 GiB limit) is refused at its header, before any of its data would be inflated."""
    header = tarfile.TarInfo("zeros")
    header.size = 3 * 1024**3
    procfile = tarfile.TarInfo("Procfile")
    body = procfile.tobuf() + header.tobuf() + bytes(64 * 1024)  # the rest never arrives
    status, refused = publish(gzip.compress(body))
    assert status == 422 and f"unpacks to more than {2 * 1024**3} bytes" in refused["message"]
    assert keys(s3, "web/") == []


def test_source_that_differs_from_its_declaration_is_refused(s3: Any) -> None:
    good = source_tarball()
    upload_id = upload(source_tarball({"Procfile": b"web: other\n"}), declared=good)
    status, body = call(
        "POST", "/apps/web/envs/staging/releases", {"upload_id": upload_id, "git": {"ref": "main", "commit": COMMIT}}
    )
    assert status == 422 and "were declared" in body["message"]
    assert keys(s3, "web/") == []


def test_upload_never_put_is_refused(s3: Any) -> None:
    status, created = call("POST", "/apps/web/envs/staging/uploads", {"size": 10, "sha256": "0" * 64})
    status, body = call(
        "POST",
        "/apps/web/envs/staging/releases",
        {"upload_id": created["upload_id"], "git": {"ref": "main", "commit": COMMIT}},
    )
    assert status == 422 and "PUT the source" in body["message"]
    assert keys(s3, "web/") == []


def test_oversized_source_is_refused_before_upload(s3: Any) -> None:
    status, body = call("POST", "/apps/web/envs/staging/uploads", {"size": 65 * 1024 * 1024, "sha256": "0" * 64})
    assert status == 413 and "the limit is 67108864 bytes" in body["message"]
    assert keys(s3, "") == []


@pytest.mark.parametrize(
    "request_body, message",
    [
        ({"upload_id": "0" * 32, "git": {"ref": "main", "commit": "abc"}}, "not a full commit sha"),
        ({"upload_id": "0" * 32, "git": "main"}, "git must be"),
        ({"upload_id": "../etc", "git": {"ref": "main", "commit": COMMIT}}, "upload_id must be"),
        ({"upload_id": "0" * 32, "git": {"ref": "main", "commit": COMMIT}}, "does not exist or has expired"),
    ],
)
def test_bad_finalize_requests_name_the_input(s3: Any, request_body: dict[str, Any], message: str) -> None:
    status, body = call("POST", "/apps/web/envs/staging/releases", request_body)
    assert status in (400, 422) and message in body["message"]
    assert keys(s3, "web/") == []


def test_finalizing_twice_is_a_conflict(s3: Any) -> None:
    data = source_tarball()
    upload_id = upload(data)
    request = {"upload_id": upload_id, "git": {"ref": "main", "commit": COMMIT}}
    assert call("POST", "/apps/web/envs/staging/releases", request)[0] == 202
    status, body = call("POST", "/apps/web/envs/staging/releases", request)
    assert status == 409 and f"upload {upload_id} is being built" in body["message"]
    assert build_and_publish("web", upload_id, data)[1]["id"] == "r1"
    status, body = call("POST", "/apps/web/envs/staging/releases", request)
    assert status == 409 and "already published as r1" in body["message"]
    assert keys(s3, "web/staging/r2") == []


def test_large_sources_upload_in_parts(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publisher, "PART_SIZE", 5 * 1024 * 1024)  # S3's smallest part
    data = source_tarball(
        {"Procfile": b"web: x\n", "blob": bytes(range(256)) * (45 * 1024)}
    )  # ~11 MB, incompressible-ish
    data += b"\0" * max(0, 11 * 1024 * 1024 - len(data))  # gzip members end cleanly; tar ignores the padding
    status, created = call(
        "POST", "/apps/web/envs/staging/uploads", {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    )
    assert status == 201 and len(created["parts"]) == 3
    size = created["part_size"]
    parts = [
        {
            "part_number": p["part_number"],
            "etag": put(p["url"], data[(p["part_number"] - 1) * size : p["part_number"] * size]),
        }
        for p in created["parts"]
    ]
    status, build = call(
        "POST",
        "/apps/web/envs/staging/releases",
        {"upload_id": created["upload_id"], "git": {"ref": "main", "commit": COMMIT}, "parts": parts},
    )
    assert status == 202, build
    release = build_and_publish("web", created["upload_id"], data)[1]
    assert release["source"]["size"] == len(data)


def test_releases_list_newest_first_in_pages(s3: Any) -> None:
    for _ in range(5):
        assert publish()[0] == 201
    pages, before = [], None
    while True:
        status, listing = call(
            "GET", "/apps/web/envs/staging/releases", query={"limit": "2", **({"before": before} if before else {})}
        )
        assert status == 200
        pages.append([r["id"] for r in listing["releases"]])
        before = listing["next_before"]
        if before is None:
            break
    assert pages == [["r5", "r4"], ["r3", "r2"], ["r1"]]


def test_a_query_parameter_the_operation_does_not_take_is_refused(s3: Any) -> None:
    publish()
    status, body = call("GET", "/apps/web/envs/staging/releases", query={"limt": "2"})
    assert status == 400
    assert body["message"] == (
        "GET /apps/{app}/envs/{env}/releases takes no query parameter 'limt'; it takes: before, limit"
    )
    status, body = call("GET", "/apps/web/envs/staging/status", query={"verbose": "1"})
    assert status == 400 and body["message"].endswith("it takes: none")
    status, _ = call("GET", "/apps/web/envs/staging/releases", query={"limit": "1"})
    assert status == 200


def test_show_and_download(s3: Any) -> None:
    data = source_tarball()
    publish(data)
    status, release = call("GET", "/apps/web/envs/staging/releases/r1")
    assert status == 200 and release["id"] == "r1"
    status, download = call("GET", "/apps/web/envs/staging/releases/r1/source")
    assert status == 200 and download["sha256"] == hashlib.sha256(data).hexdigest()
    with urllib.request.urlopen(download["url"]) as response:
        assert response.read() == data


@pytest.mark.parametrize(
    "path, message",
    [
        ("/apps/web/envs/staging/releases/r9", "no release r9"),
        ("/apps/shop/envs/staging/releases", "no app 'shop' in staging (apps: billing, web)"),
        ("/apps/web/envs/production/releases", "serves the staging environment"),
        ("/apps/web/envs/staging/releases/latest", "not a release id"),
    ],
)
def test_unknown_things_are_named(s3: Any, path: str, message: str) -> None:
    status, body = call("GET", path)
    assert status in (400, 404) and message in body["message"]


TRICKY = {
    "MULTILINE": "line one\nline two\n",
    "QUOTES": 'it\'s "quoted" `and` $HOME ${X} \\ backslash',
    "UNICODE": "héllo 世界 🚀",
    "EMPTY": "",
    "SPACES": "  padded  ",
}


def test_config_change_makes_a_release_with_the_same_source(s3: Any) -> None:
    status, first = publish()
    status, changed = call("PATCH", "/apps/web/envs/staging/config", {"set": TRICKY})
    assert status == 200, changed
    assert changed["vars"] == TRICKY
    release = changed["release"]
    assert (release["id"], release["parent"], release["source"]) == ("r2", "r1", first["source"])
    assert release["created_by"] == "alice"
    assert call("GET", "/apps/web/envs/staging/config") == (200, {"vars": TRICKY})
    # The instance reads the release's env file with its own parser: every value exactly.
    env_file = s3.get_object(Bucket=BUCKET, Key="web/staging/r2/env")["Body"].read()
    assert parse_env(env_file.decode()) == TRICKY
    assert hashlib.sha256(env_file).hexdigest() == release["env_sha256"]
    status, unset = call("PATCH", "/apps/web/envs/staging/config", {"unset": ["EMPTY"]})
    assert "EMPTY" not in unset["vars"] and unset["release"]["id"] == "r3"


def serve(s3: Any, release: str) -> None:
    """Make ``release`` current, as a rollout that deployed it would (current pins its manifest)."""
    releases = operations.publisher("web", "staging")
    expected = releases.current()
    releases.move_current(release, digest=releases.verified(release)[1], expected=expected)


def test_a_config_change_builds_on_what_serves_not_the_newest_release(s3: Any) -> None:
    """After a broken r2 that never served, a config change runs r1's slug (what serves), says so, and
    lists only what it changes against r1; naming a base builds on that one instead."""
    _, r1 = publish()
    serve(s3, "r1")
    _, r2 = publish(source_tarball({"Procfile": b"web: python broken.py\n", "broken.py": b"raise SystemExit(1)\n"}))
    assert r2["slug"] != r1["slug"]
    status, changed = call("PATCH", "/apps/web/envs/staging/config", {"set": {"BAR": "1"}})
    assert status == 200, changed
    r3 = changed["release"]
    assert (changed["base"], r3["id"], r3["slug"], r3["parent"]) == ("r1", "r3", r1["slug"], "r2")
    assert r3["base"] == {"env": "staging", "release": "r1", "reason": "config"}
    assert r3["description"] == "config: BAR (on r1)" and r3["config_changes"] == {"set": ["BAR"], "unset": []}
    status, on_r2 = call("PATCH", "/apps/web/envs/staging/config", {"set": {"BAZ": "2"}, "base": "r2"})
    assert status == 200 and on_r2["base"] == "r2" and on_r2["release"]["slug"] == r2["slug"]
    assert parse_env(s3.get_object(Bucket=BUCKET, Key="web/staging/r4/env")["Body"].read().decode()) == {
        "BAR": "1",
        "BAZ": "2",
    }
    # Slugs are stored once by digest: two slugs for four releases, no copy per release.
    assert len(keys(s3, "web/staging/slugs/")) == 2


def test_a_rollback_is_a_new_release_copying_an_earlier_one_and_its_config(s3: Any) -> None:
    _, r1 = publish()
    serve(s3, "r1")
    call("PATCH", "/apps/web/envs/staging/config", {"set": {"V": "2"}})  # r2: r1's slug, V=2
    serve(s3, "r2")
    writer = writer_module.writer_for("web", "staging")
    r3 = writer.roll_back(to=None, user="bob")  # back to what served before r2: r1
    assert (r3["id"], r3["description"], r3["created_by"]) == ("r3", "rollback to r1", "bob")
    assert (r3["slug"], r3["env_sha256"]) == (r1["slug"], r1["env_sha256"])
    assert r3["base"] == {"env": "staging", "release": "r1", "reason": "rollback"}
    # Its config is the config from now on, as on Heroku: the next change builds on it.
    assert call("GET", "/apps/web/envs/staging/config") == (200, {"vars": {}})
    serve(s3, "r3")
    _, changed = call("PATCH", "/apps/web/envs/staging/config", {"set": {"W": "1"}})
    assert (changed["base"], changed["vars"], changed["release"]["slug"]) == ("r3", {"W": "1"}, r1["slug"])


def test_a_promotion_copies_and_verifies_the_other_environment_s_release_and_refuses_a_tampered_one(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staging receives production's releases from production's own bucket (named by its SSM
    parameter), never from the client: a slug whose bytes do not match production's record is
    refused, and nothing is released or stored here."""
    _, r1 = publish()
    origin = "production-releases"
    s3.create_bucket(Bucket=origin)
    s3.put_bucket_versioning(Bucket=origin, VersioningConfiguration={"Status": "Enabled"})
    boto3.client("ssm").put_parameter(Name="/slipway/production/release-bucket", Value=origin, Type="String")
    monkeypatch.setenv("PROMOTION_SOURCES", json.dumps({"production": "us-east-1"}))
    staging, production = AppKeys("web", "staging"), AppKeys("web", "production")
    slug = s3.get_object(Bucket=BUCKET, Key=staging.slug(r1["slug"]["sha256"]))["Body"].read()
    source = s3.get_object(Bucket=BUCKET, Key=staging.source(r1["source"]["sha256"]))["Body"].read()
    for release, body in (("r5", slug), ("r6", slug[:-10] + b"\0" * 10)):  # r6: its slug's bytes were changed
        record = {**{k: v for k, v in r1.items() if k != "current"}, "id": release, "env": "production"}
        s3.put_object(Bucket=origin, Key=production.release(release, "release.json"), Body=json.dumps(record))
        s3.put_object(Bucket=origin, Key=production.slug(r1["slug"]["sha256"]), Body=body)
        s3.put_object(Bucket=origin, Key=production.source(r1["source"]["sha256"]), Body=source)
        if release == "r6":
            s3.delete_object(Bucket=BUCKET, Key=staging.slug(r1["slug"]["sha256"]))  # so it must be copied
            before = keys(s3, "web/")
            status, refused = call(
                "POST", "/apps/web/envs/staging/promotions", {"from": "production", "release": release}
            )
            assert status == 422 and "sha256" in refused["message"], refused
            assert keys(s3, "web/") == before  # nothing released, no slug stored
            continue
        status, promoted = call("POST", "/apps/web/envs/staging/promotions", {"from": "production", "release": release})
        assert status == 201, promoted
        assert promoted["slug"] == r1["slug"] and promoted["base"]["env"] == "production"
        assert promoted["description"] == "promoted from production r5"
    # No slug rides with an upload any more: the API's contract has no place for one.
    schemas = json.loads((Path(api.__file__).parent / "openapi.json").read_text())["components"]["schemas"]
    assert (
        "slug" not in schemas["UploadRequest"]["properties"]
        and schemas["UploadRequest"]["additionalProperties"] is False
    )
    status, refused = call("POST", "/apps/web/envs/staging/promotions", {"from": "qa", "release": "r1"})
    assert status == 400 and "releases come here from production only" in refused["message"]


def test_an_id_whose_claim_never_completed_is_no_release(s3: Any) -> None:
    """A writer stopped between a release's env and its manifest leaves an id with no release: it is
    not listed, a config change does not build on it, and the next release takes the id after it."""
    _, r1 = publish()
    s3.put_object(Bucket=BUCKET, Key="web/staging/r2/env", Body=b"", IfNoneMatch="*")
    assert [r["id"] for r in call("GET", "/apps/web/envs/staging/releases")[1]["releases"]] == ["r1"]
    status, changed = call("PATCH", "/apps/web/envs/staging/config", {"set": {"A": "1"}})
    assert status == 200 and (changed["base"], changed["release"]["id"]) == ("r1", "r3"), changed


def test_config_before_the_first_release_waits_for_it(s3: Any) -> None:
    status, changed = call("PATCH", "/apps/web/envs/staging/config", {"set": {"A": "1"}})
    assert (status, changed["release"]) == (200, None)
    assert publish()[0] == 201
    assert s3.get_object(Bucket=BUCKET, Key="web/staging/r1/env")["Body"].read() == b"export A='1'\n"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"set": {"1BAD": "x"}}, "not a valid variable name"),
        ({"set": {"PORT": "80"}}, "the platform assigns itself"),
        ({"set": {"NUL": "a\x00b"}}, "NUL byte"),
        ({"set": {"BIG": "x" * 200_000}}, "at most 131072"),
        ({"set": {"NUM": 5}}, "values are strings"),
        ({"unset": ["MISSING"]}, "MISSING is not set"),
        ({}, "send"),
    ],
)
def test_bad_config_changes_are_refused_and_change_nothing(s3: Any, change: dict[str, Any], message: str) -> None:
    publish()
    before = keys(s3, "web/")
    status, body = call("PATCH", "/apps/web/envs/staging/config", change)
    assert status == 400 and message in body["message"]
    assert keys(s3, "web/") == before


@given(
    values=st.dictionaries(
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True).filter(lambda n: n != "PORT"),
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=200),
        max_size=8,
    )
)
@settings(max_examples=200)
def test_any_carriable_config_round_trips_through_the_env_file(values: dict[str, str]) -> None:
    from slipway_release.envfile import render_env

    assert parse_env(render_env(change_config({}, set_vars=values, unset=[]))) == values


def test_current_moves_only_by_compare_and_swap(s3: Any) -> None:
    publish()
    publish()
    releases = operations.publisher("web", "staging")
    pins = {release: releases.verified(release)[1] for release in ("r1", "r2")}
    releases.move_current("r1", digest=pins["r1"], expected=None)
    with pytest.raises(ReleaseError, match="current is r1, not unset"):
        releases.move_current("r2", digest=pins["r2"], expected=None)  # a stale view loses
    with pytest.raises(ReleaseError, match="changed since the rollout pinned it"):
        releases.move_current("r2", digest=pins["r1"], expected="r1")  # not the manifest pinned
    releases.move_current("r2", digest=pins["r2"], expected="r1")
    assert releases.current() == "r2" and releases.pointer() == Pointer("r2", pins["r2"])
    assert call("GET", "/apps/web/envs/staging/releases/r2")[1]["current"] is True


def test_a_request_without_an_authenticated_user_is_refused(s3: Any) -> None:
    status, _ = call("POST", "/apps/web/envs/staging/uploads", {"size": 10, "sha256": "0" * 64}, user=None)
    assert status == 401
    assert keys(s3, "") == []


def test_routes_are_exactly_the_openapi_operations() -> None:
    spec = json.loads((Path(api.__file__).parent / "openapi.json").read_text())
    documented = {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    routed = {(route.method, route.rule.pattern) for route in api.app._static_routes + api.app._dynamic_routes}
    assert len(routed) == len(documented)
    for method, path in documented:
        concrete = path.replace("{app}", "web").replace("{env}", "staging").replace("{release}", "r1")
        assert any(m == method and re.fullmatch(p, concrete) for m, p in routed), (method, path)


BODIES = {
    "not UTF-8": b"\xff\xfe{",
    "not JSON": b"{'set': 1",
    "JSON but not an object": b"[1, 2]",
    "empty": b"",
}
WITH_BODIES = [
    ("POST", "/apps/web/envs/staging/uploads"),
    ("POST", "/apps/web/envs/staging/releases"),
    ("PATCH", "/apps/web/envs/staging/config"),
    ("POST", "/apps/web/envs/staging/deploys"),
]


@pytest.mark.parametrize("method, path", WITH_BODIES)
@pytest.mark.parametrize("raw", BODIES.values(), ids=BODIES.keys())
def test_a_malformed_body_gets_a_json_400_and_changes_nothing(s3: Any, method: str, path: str, raw: bytes) -> None:
    status, body = call(method, path, raw=raw)
    assert status == 400, body
    assert isinstance(body["message"], str) and body["message"]
    assert keys(s3, "") == []


@pytest.mark.parametrize(
    "change, message",
    [
        ({}, 'send {"set": {"NAME": "value"}} and/or {"unset": ["NAME"]}'),
        ({"set": {}, "unset": []}, 'send {"set": {"NAME": "value"}} and/or {"unset": ["NAME"]}'),
        ({"set": {"A": 1}}, "A: values are strings"),
        ({"set": []}, 'send {"set": {"NAME": "value"}}'),
        ({"unset": [1]}, "unset must be a list of variable names"),
        ({"set": {"1BAD": "x"}}, "is not a valid variable name"),
    ],
)
def test_a_wrong_config_change_gets_a_400_naming_it(s3: Any, change: dict[str, Any], message: str) -> None:
    status, body = call("PATCH", "/apps/web/envs/staging/config", change)
    assert status == 400 and message in body["message"], body
    assert keys(s3, "web/") == []


def nested(depth: int) -> bytes:
    """A JSON object ``depth`` levels deep: arrays in an object."""
    return b'{"set": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


# Deep enough that Python's json parser would recurse past its limit: RecursionError, a 502.
TOO_DEEP = {
    "arrays": b"[" * 10_000 + b"]" * 10_000,
    "objects": b'{"a": ' * 10_000 + b"1" + b"}" * 10_000,
    "unclosed": b"[" * 10_000,
    "one level too many": nested(api.MAX_BODY_DEPTH + 1),
}


@pytest.mark.parametrize("method, path", [*WITH_BODIES, ("POST", "/apps/web/envs/staging/cycle")])
@pytest.mark.parametrize("raw", TOO_DEEP.values(), ids=TOO_DEEP.keys())
def test_a_body_nested_too_deep_gets_a_400_saying_so_and_changes_nothing(
    s3: Any, method: str, path: str, raw: bytes
) -> None:
    status, body = call(method, path, raw=raw)
    assert status == 400, body
    assert body["message"] == (
        f"the request body nests arrays and objects deeper than {api.MAX_BODY_DEPTH} levels; send the object "
        "the operation takes (openapi.json: none nests more than 3)"
    )
    assert keys(s3, "") == []


def test_nesting_up_to_the_limit_and_brackets_in_strings_pass_the_depth_check(s3: Any) -> None:
    status, body = call("PATCH", "/apps/web/envs/staging/config", raw=nested(api.MAX_BODY_DEPTH))
    assert status == 400 and body["message"].startswith('send {"set": {"NAME": "value"}}'), body  # parsed: its own 400
    brackets = '[{\\"' * 5_000  # escaped quotes and backslashes in a string do not end it
    status, changed = call("PATCH", "/apps/web/envs/staging/config", {"set": {"BRACKETS": brackets}})
    assert status == 200 and changed["vars"] == {"BRACKETS": brackets}, changed


@pytest.mark.parametrize(
    "raw",
    [
        b'{"set": {"A": "' + b"x" * (4 * 1024 * 1024) + b'"}}',
        b"\xff" * (4 * 1024 * 1024 + 1),  # not UTF-8: API Gateway passes it base64-encoded
    ],
    ids=["text", "base64"],
)
def test_a_body_over_the_size_limit_gets_a_413_saying_so_and_changes_nothing(s3: Any, raw: bytes) -> None:
    assert len(raw) > api.MAX_BODY_BYTES
    status, body = call("PATCH", "/apps/web/envs/staging/config", raw=raw)
    assert status == 413, body
    assert body["message"] == (
        f"the request body is larger than the {api.MAX_BODY_BYTES} bytes this API takes (a whole environment's "
        "config is at most 1048576); send a smaller request"
    )
    assert keys(s3, "") == []


def test_the_largest_config_change_the_platform_carries_is_under_the_size_limit(s3: Any) -> None:
    from slipway_release.envfile import MAX_ASSIGNMENT_BYTES, MAX_ENVIRONMENT_BYTES

    # Each variable as large as Linux passes one, of 2-byte characters (6 bytes each as JSON sends them),
    # as many as the environment holds: about 3 MiB of JSON.
    value = "é" * ((MAX_ASSIGNMENT_BYTES - len("VAR_0=") - 1) // 2)
    count = MAX_ENVIRONMENT_BYTES // MAX_ASSIGNMENT_BYTES
    change = {"set": {f"VAR_{i}": value for i in range(count)}}
    assert len(json.dumps(change)) > 3_000_000
    status, changed = call("PATCH", "/apps/web/envs/staging/config", change)
    assert status == 200, changed
    assert changed["vars"] == change["set"]


def test_a_build_s_log_from_a_token_this_api_did_not_give_is_a_400(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.stub import Stubber

    upload_id = upload(source_tarball())
    status, build = call(
        "POST", "/apps/web/envs/staging/releases", {"upload_id": upload_id, "git": {"ref": "main", "commit": COMMIT}}
    )
    assert status == 202, build
    build_id = "builder-web:5a1b2c3d-0000-4000-8000-000000000001"
    operations.publisher("web", "staging").note_build(upload_id, build_id=build_id)
    logs = boto3.client("logs")
    stream = {"groupName": "builds", "streamName": build_id.split(":")[1]}
    logs.create_log_group(logGroupName=stream["groupName"])
    logs.create_log_stream(logGroupName=stream["groupName"], logStreamName=stream["streamName"])
    logs.put_log_events(
        logGroupName=stream["groupName"],
        logStreamName=stream["streamName"],
        logEvents=[{"timestamp": int(time.time() * 1000), "message": "-----> building"}],
    )
    codebuild = boto3.client("codebuild")  # moto runs no build: CodeBuild's answer stubbed
    real = aws.client
    monkeypatch.setattr(aws, "client", lambda service: codebuild if service == "codebuild" else real(service))
    path = f"/apps/web/envs/staging/builds/{upload_id}"
    with Stubber(codebuild) as builds:
        running = {"id": build_id, "buildStatus": "IN_PROGRESS", "currentPhase": "BUILD", "logs": stream}
        for _ in range(3):
            builds.add_response("batch_get_builds", {"builds": [running]}, {"ids": [build_id]})
        status, shown = call("GET", path)
        assert status == 200 and shown["log"] == ["-----> building"] and shown["next"], shown
        status, refused = call("GET", path, query={"after": "not-a-token"})
        assert status == 400, refused
        assert refused["message"] == (
            "after='not-a-token' is not a token this API gave; pass the `next` value of the previous answer"
        )
        status, rest = call("GET", path, query={"after": shown["next"]})  # the real token still reads on
        assert status == 200 and rest["log"] == [], rest


# Browsers: the console's page, and changes no other site's page can make with the browser's credentials.


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("POST", "/apps/web/envs/staging/rollback", {"Content-Type": "application/x-www-form-urlencoded"}),
        ("POST", "/apps/web/envs/staging/cycle", {"Content-Type": "text/plain"}),
        ("PATCH", "/apps/web/envs/staging/config", {"Content-Type": "multipart/form-data; boundary=x"}),
    ],
)
def test_a_change_that_is_not_json_is_refused_415(s3: Any, method: str, path: str, headers: dict[str, str]) -> None:
    # What an HTML form on another site can send, with a JSON-looking body (the text/plain trick).
    status, body = call(method, path, raw=b'{"set": {"A": "1"}}', headers=headers)
    assert status == 415
    assert body["message"].startswith("send a JSON body with Content-Type: application/json (got ")
    assert call("GET", "/apps/web/envs/staging/config")[1] == {"vars": {}}


def test_a_change_a_browser_marks_cross_site_is_refused_403(s3: Any) -> None:
    status, body = call(
        "PATCH", "/apps/web/envs/staging/config", {"set": {"A": "1"}}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert (status, body["message"]) == (403, "this request came from another site's page; use the console or the CLI")
    assert call("GET", "/apps/web/envs/staging/config")[1] == {"vars": {}}
    # The console's own calls are same-origin.
    ok = call("PATCH", "/apps/web/envs/staging/config", {"set": {"A": "1"}}, headers={"Sec-Fetch-Site": "same-origin"})
    assert ok[0] == 200


def _get(path: str, stage_path: str, query: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    """GET ``path`` through the handler as API Gateway sends it: not JSON, headers as the function gave them."""
    event = json.loads((EVENTS / "api_gateway_rest_proxy.json").read_text())
    event.update(httpMethod="GET", path=path, resource=resource(path), body=None, queryStringParameters=query)
    event["requestContext"].update(httpMethod="GET", path=stage_path)
    response = api.handler(event, Context())
    headers = {name: values[0] for name, values in response["multiValueHeaders"].items()}
    return response["statusCode"], headers, response["body"]


def test_the_console_page_names_its_assets_by_content_hash_under_the_stage(s3: Any) -> None:
    status, headers, page = _get("/", "/v1/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == console.CONTENT_SECURITY_POLICY
    assert '<base href="/v1/">' in page and 'data-env="staging"' in page
    for name in ("app.js", "app.css"):
        found = re.search(rf'"console/{re.escape(name)}\?v=([0-9a-f]{{12}})"', page)
        assert found is not None, name
        text = (Path(console.__file__).parent / name).read_text()
        assert found.group(1) == hashlib.sha256(text.encode()).hexdigest()[:12]
        status, headers, body = _get(f"/console/{name}", f"/v1/console/{name}", {"v": found.group(1)})
        assert (status, body) == (200, text)
        assert headers["Cache-Control"] == "private, max-age=31536000, immutable"
    assert _get("/console/secrets.txt", "/v1/console/secrets.txt")[0] == 404
    assert _get("/console/app.js", "/v1/console/app.js", {"x": "1"})[0] == 400


@pytest.mark.parametrize(
    ("request_path", "resource_path", "base"),
    [
        ("/v1/", "/", "/v1/"),  # the stage's own URL
        ("/v1", "/", "/v1/"),  # ... without its slash
        ("/", "/", "/"),  # a custom domain mapped at its root
        ("/slipway/", "/", "/slipway/"),  # ... or under a base path
        ("/v1/console/app.js", "/console/app.js", "/v1/"),
    ],
)
def test_the_console_s_base_is_where_the_api_hangs(request_path: str, resource_path: str, base: str) -> None:
    assert console.base_path(request_path, resource_path) == base
