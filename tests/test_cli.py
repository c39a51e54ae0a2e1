"""The `slipway` CLI end to end: a git checkout of an app, the installed command, and the
local control plane (real handlers and authorizer behind an API Gateway-shaped front); and,
in this process, what it does before and besides any platform (its arguments, its API URL,
answers that are not the API's)."""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from end_to_end import PASSWORD, SLIPWAY, Run, releases

from slipway_cli.client import path as api_path
from slipway_cli.main import main, parse


def test_release_config_and_promote_end_to_end(slipway: Run, checkout: Path) -> None:
    before = len(releases(slipway, "billing", "staging"))
    result = slipway("release", "billing", "staging", "-m", "first cut")
    assert result.returncode == 0, result.stderr
    first = f"r{before + 1}"
    assert result.stdout.startswith(f"Published billing {first} to staging (main @ ")
    assert result.stdout.strip().endswith("; Procfile only)")  # built: no runtime asked for
    # The build's log streamed as it ran (stderr, like the progress), the build program's steps in it.
    assert "-----> Procfile app detected: no dependencies to install, runs as is" in result.stderr
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True).stdout.strip()
    [newest, *_] = releases(slipway, "billing", "staging")
    assert (newest["id"], newest["git"], newest["created_by"]) == (first, {"ref": "main", "commit": commit}, "admin")
    assert newest["description"] == "first cut"
    assert newest["formation"] == {"web": 1, "worker": 2}  # from cdk.json

    tricky = "multi\nline 'quoted' $HOME `x` é"
    result = slipway("config", "billing", "staging", "set", f"SECRET={tricky}", "PLAIN=1")
    assert result.returncode == 0, result.stderr
    assert f"released as r{before + 2} (on r{before + 1}'s slug;" in result.stdout  # nothing serves: the newest
    shown = json.loads(slipway("--json", "config", "billing", "staging").stdout)
    assert shown["vars"]["SECRET"] == tricky and shown["vars"]["PLAIN"] == "1"
    assert slipway("config", "billing", "staging", "unset", "PLAIN").returncode == 0

    listing = slipway("releases", "billing", "staging")
    assert f"r{before + 3}" in listing.stdout and "admin" in listing.stdout and "Procfile only" in listing.stdout
    # A config change never builds: its release runs the slug of the one before, and says what changed.
    by_id = {r["id"]: r for r in releases(slipway, "billing", "staging")}
    assert by_id[f"r{before + 2}"]["slug"] == by_id[first]["slug"] == by_id[f"r{before + 3}"]["slug"]
    assert by_id[f"r{before + 2}"]["config_changes"] == {"set": ["PLAIN", "SECRET"], "unset": []}
    assert by_id[f"r{before + 3}"]["config_changes"] == {"set": [], "unset": ["PLAIN"]}

    # The release is named: without --release, promote takes staging's current release when there is one,
    # and an earlier test may have deployed one.
    result = slipway("promote", "billing", "staging", "production", "--release", f"r{before + 3}")
    assert result.returncode == 0, result.stderr
    promoted = releases(slipway, "billing", "production")[0]
    assert result.stdout.strip() == (
        f"Promoted billing staging r{before + 3} to production as {promoted['id']} (the same slug, verified by "
        "production; Procfile only; production's config)"
    )
    # Production read the release from staging's own bucket and says so: nothing came from the client.
    assert promoted["base"] == {"env": "staging", "release": f"r{before + 3}", "reason": "promotion"}
    # The same bytes: source and slug, and the build manifest that says how the slug was made.
    assert promoted["source"] == newest["source"] and promoted["git"] == newest["git"]
    assert promoted["slug"] == newest["slug"] and promoted["build"] == newest["build"]
    assert promoted["description"].startswith(f"promoted from staging r{before + 3}")
    assert json.loads(slipway("--json", "config", "billing", "production").stdout)["vars"] == {}


def test_large_source_goes_up_in_parts(slipway: Run, checkout: Path) -> None:
    # 40 MB of incompressible data: three 16 MiB parts, sent in parallel.
    (checkout / "blob.bin").write_bytes(os.urandom(40 * 1024 * 1024))
    subprocess.run(["git", "add", "blob.bin"], cwd=checkout, check=True)
    subprocess.run(
        ["git", "-c", "user.name=D", "-c", "user.email=d@e", "commit", "-qm", "blob"], cwd=checkout, check=True
    )
    result = slipway("--json", "release", "web", "staging")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["source"]["size"] > 40 * 1024 * 1024


def test_wrong_credentials_are_one_line_and_change_nothing(slipway: Run) -> None:
    before = releases(slipway, "web", "staging")
    result = slipway("release", "web", "staging", password="wrong")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("slipway: ") and "refused the credentials of admin (HTTP 401)" in line
    assert releases(slipway, "web", "staging") == before


def test_credentials_from_netrc(slipway: Run, local_platforms: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    (tmp_path / ".netrc").write_text(f"machine 127.0.0.1 login admin password {PASSWORD}\n")
    (tmp_path / ".netrc").chmod(0o600)
    result = slipway("releases", "web", "staging", user="", password="")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "args, environ, message",
    [
        (("releases", "web", "qa"), {}, "no API URL for qa: set SLIPWAY_URL_QA (or SLIPWAY_URL)"),
        (("releases", "shop", "staging"), {}, "no app 'shop' in staging"),
        (("release", "web", "staging", "--ref", "no-such-branch"), {}, "git rev-parse"),
        (("config", "web", "staging", "set", "NOEQUALS"), {}, "is not NAME=value"),
        (("config", "web", "staging", "set", "PORT=80"), {}, "the platform assigns itself"),
        (("releases", "web", "staging"), {"SLIPWAY_URL_STAGING": "http://127.0.0.1:9"}, "cannot reach"),
        (("scale", "web", "staging"), {}, "scale web staging needs --min, --desired or --max"),
        (("scale", "web", "staging", "--max", "9"), {}, "max 9 is outside what web in staging may scale to: 1 to 2"),
    ],
)
def test_errors_are_one_clear_line(slipway: Run, args: tuple[str, ...], environ: dict[str, str], message: str) -> None:
    result = slipway(*args, **environ)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("slipway: ") and message in line


def test_source_without_procfile_is_refused(slipway: Run, checkout: Path) -> None:
    subprocess.run(["git", "rm", "-q", "Procfile"], cwd=checkout, check=True)
    subprocess.run(
        ["git", "-c", "user.name=D", "-c", "user.email=d@e", "commit", "-qm", "oops"], cwd=checkout, check=True
    )
    before = releases(slipway, "web", "staging")
    result = slipway("release", "web", "staging")
    assert result.returncode == 1
    assert "no Procfile at its root" in result.stderr and "(HTTP 422)" in result.stderr
    assert releases(slipway, "web", "staging") == before


@pytest.mark.parametrize("authorization", [None, "Basic bm90OmFkbWlu", "Bearer abc"])
def test_missing_or_wrong_credentials_get_401_with_a_browser_prompt(
    local_platforms: dict[str, dict[str, Any]], slipway: Run, authorization: str | None
) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=local_platforms["staging"]["aws_endpoint"],
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )

    def stored() -> list[str]:
        return [o["Key"] for o in s3.list_objects_v2(Bucket=local_platforms["staging"]["bucket"]).get("Contents", [])]

    before = stored()
    headers = {"Content-Type": "application/json"} | ({"Authorization": authorization} if authorization else {})
    request = urllib.request.Request(
        f"{local_platforms['staging']['url']}/apps/web/envs/staging/uploads",
        method="POST",
        headers=headers,
        data=json.dumps({"size": 10, "sha256": "0" * 64}).encode(),
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 401
    assert refused.value.headers["WWW-Authenticate"] == 'Basic realm="Slipway"'
    assert stored() == before  # not even an upload record


def test_deploy_and_rollback_from_the_cli(slipway: Run) -> None:
    # These platforms run simulated fleets (the stack's Auto Scaling groups with moto's instances):
    # this follows the real rollout state machine and its tasks end to end, not the instance agent
    # (tests/test_local_instances.py does, through real instances behind a real load balancer).
    # web in staging runs 1 to 2 instances, one now: it switches in place, in one batch.
    assert slipway("release", "web", "staging", "-m", "one").returncode == 0
    first = releases(slipway, "web", "staging")[0]["id"]
    result = slipway("deploy", "web", "staging", first, "--bake", "0", "--interval", "0.2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"Deploying web {first} to staging (deploy web-{first}-")
    # Each step in words, with its batch and how long it took; no raw state names.
    steps = [re.fullmatch(r"  (.+?)(?: — batch (\d) of 1)? \((\d+\.\d) s\)", line) for line in lines[1:-1]]
    assert all(steps), lines
    words = [(m.group(1), m.group(2)) for m in steps if m]
    assert words[0] == ("taking the deploy lock", None)
    assert ("staging the release on every instance (while they serve)", None) in words
    assert ("switching a batch to the release", "1") in words
    assert ("baking (watching alarms and the batch's health)", "1") in words
    assert words[-1] == ("deployed", None)
    assert ("moving to the next batch", None) not in words  # a Choice state is no step of its own
    assert not any(re.search(r"[A-Z][a-z]+[A-Z]|\?", w) for w, _ in words)  # e.g. WaitCommand, Healthy?
    assert re.fullmatch(
        rf"Deployed web {first} to staging: 1 instance\(s\) in 1 batch\(es\) in \d+\.\d s; {first} is current",
        lines[-1],
    )
    assert slipway("config", "web", "staging", "set", "GREETING=hi").returncode == 0
    second = releases(slipway, "web", "staging")[0]["id"]
    result = slipway("--json", "deploy", "web", "staging", "--bake", "0", "--interval", "0.2")  # the newest
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["release"] == second
    listed = releases(slipway, "web", "staging")
    assert [r["id"] for r in listed if r["current"]] == [second]

    result = slipway("rollback", "web", "staging", "--bake", "0", "--interval", "0.2")
    assert result.returncode == 0, result.stderr
    # A new release copying the first one is what rolls out and serves (as on Heroku).
    third = releases(slipway, "web", "staging")[0]
    assert (third["description"], third["current"]) == (f"rollback to {first}", True)
    assert re.fullmatch(
        rf"Rolled back web in staging to {first} as {third['id']}: 1 instance\(s\) in 1 batch\(es\) in \d+\.\d s; "
        rf"{third['id']} is current",
        result.stdout.splitlines()[-1],
    )
    listing = slipway("releases", "web", "staging").stdout
    assert re.search(rf"\* +{third['id']} .* copy of {first} +rollback to {first}", listing), listing
    assert re.search(rf"  +{second} .* config on {first} +config: GREETING", listing), listing
    deploys = slipway("deploys", "web", "staging").stdout.splitlines()
    assert [line.split()[1:3] for line in deploys[:3]] == [
        ["SUCCEEDED", "rollback"],
        ["SUCCEEDED", "deploy"],
        ["SUCCEEDED", "deploy"],
    ]


def _get(platform: dict[str, Any], path: str) -> Any:
    """GET ``path`` of the platform's API as admin."""
    request = urllib.request.Request(platform["url"] + path)
    token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def test_a_rollout_is_followed_again_and_cancelled_from_the_cli(
    slipway: Run, local_platforms: dict[str, dict[str, Any]], checkout: Path, tmp_path: Path
) -> None:
    assert slipway("release", "web", "staging", "-m", "to cancel").returncode == 0
    release = releases(slipway, "web", "staging")[0]["id"]
    before = json.loads(slipway("--json", "status", "web", "staging").stdout)["current"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SLIPWAY_")}
    environ.update(
        HOME=str(tmp_path),
        SLIPWAY_URL_STAGING=local_platforms["staging"]["url"],
        SLIPWAY_USER="admin",
        SLIPWAY_PASSWORD=PASSWORD,
    )
    # A rollout with a long bake, followed from another terminal that then presses Ctrl-C.
    process = subprocess.Popen(
        [str(SLIPWAY), "deploy", "web", "staging", release, "--no-canary", "--bake", "600", "--interval", "0.2"],
        cwd=checkout,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # until the rollout bakes its first batch
            listed = json.loads(slipway("--json", "deploys", "web", "staging").stdout)["deploys"]
            running = [d for d in listed if d["status"] == "RUNNING"]
            if (
                running
                and _get(local_platforms["staging"], f"/apps/web/envs/staging/deploys/{running[0]['id']}")["step"]
                == "baking (watching alarms and the batch's health)"
            ):
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the rollout never reached its bake")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    deploy = running[0]["id"]
    assert process.returncode == 1
    assert stderr.splitlines()[-1] == (
        f"slipway: stopped following {deploy}; the rollout goes on. Follow it: slipway deploys web staging "
        f"--follow {deploy}; cancel it: slipway deploy web staging --cancel"
    )
    assert json.loads(slipway("--json", "deploys", "web", "staging").stdout)["deploys"][0]["status"] == "RUNNING"

    # Cancelled mid-bake: the rollout stops at its next check and rolls back what it changed.
    result = slipway("deploy", "web", "staging", "--cancel", "--interval", "0.2")
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (
        f"Cancelling {deploy}: it stops at its next step and rolls back what it changed"
    )
    assert "rolling back" in result.stdout
    last = result.stderr.splitlines()[-1]
    assert last.startswith(
        f"slipway: web {release} was not deployed to staging: Cancelled: admin cancelled the rollout at "
    )
    assert last.endswith(f"{before} is still current" if before else "no release is current yet")
    # Followed again once it ended: the same outcome, read from its history.
    followed = slipway("deploys", "web", "staging", "--follow", deploy, "--interval", "0.2")
    assert followed.returncode == 1 and followed.stderr.splitlines()[-1] == last
    assert json.loads(slipway("--json", "status", "web", "staging").stdout)["current"] == before
    nothing = slipway("deploy", "web", "staging", "--cancel")
    assert (nothing.returncode, nothing.stderr.strip()) == (
        1,
        "slipway: no rollout of web is running in staging (see `slipway deploys web staging`)",
    )


def test_deploy_of_a_missing_release_is_one_line(slipway: Run) -> None:
    result = slipway("deploy", "web", "staging", "r999")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line == "slipway: web has no release r999 in staging (HTTP 404)"


def test_status_and_cycling_one_instance_from_the_cli(slipway: Run) -> None:
    # billing in staging runs 1 to 2 instances (cdk.json): the stack's group starts at its minimum.
    shown = json.loads(slipway("--json", "status", "billing", "staging").stdout)
    assert shown["capacity"] == {"min": 1, "desired": 1, "max": 2} and len(shown["instances"]) == 1
    text = slipway("status", "billing", "staging").stdout.splitlines()
    assert text[0].startswith("billing in staging: current ") and len(text) == 2
    victim = shown["instances"][0]["id"]
    result = slipway("cycle", "billing", "staging", "--instance", victim, "--interval", "0.2", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"Replaced {victim}: 1 of 1 instances of billing in staging serve"
    after = json.loads(slipway("--json", "status", "billing", "staging").stdout)
    assert victim not in [i["id"] for i in after["instances"]] and len(after["instances"]) == 1


def browser_recorder(tmp_path: Path) -> tuple[str, Path]:
    """A $BROWSER that writes the URL it is asked to open to a file."""
    opened = tmp_path / "opened.txt"
    script = tmp_path / "browser.sh"
    script.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {opened}\n')
    script.chmod(0o755)
    return f"{script} %s", opened


def test_open_opens_the_app_s_url_and_console_the_console(
    slipway: Run, local_platforms: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    browser, opened = browser_recorder(tmp_path)
    listing = json.loads(slipway("--json", "open", "web", "staging", BROWSER=browser).stdout)
    assert listing["opened"] is True and opened.read_text() == listing["url"]
    assert listing["url"].startswith("http://") and "elb" in listing["url"]  # the fleet's load balancer

    result = slipway("console", "staging", BROWSER=browser)
    assert result.returncode == 0, result.stderr
    page = local_platforms["staging"]["url"] + "/"
    assert opened.read_text() == page
    assert result.stdout.strip() == f"Opening the staging console: {page}"
    slipway("console", "staging", "billing", BROWSER=browser)
    assert opened.read_text() == page + "#/apps/billing"


def test_open_of_an_unknown_app_is_one_line(slipway: Run, tmp_path: Path) -> None:
    browser, opened = browser_recorder(tmp_path)
    result = slipway("open", "nope", "staging", BROWSER=browser)
    assert result.returncode == 1 and not opened.exists()
    assert result.stderr.strip() == (
        "slipway: no app 'nope' in staging (apps: billing, web); add it to cdk.json and deploy the stack"
    )


def test_cycling_a_whole_fleet_from_the_cli(slipway: Run) -> None:
    # moto has no instance refresh: the local platform carries it out (local.refresh), here over
    # moto's instances, which are healthy as soon as they launch.
    def instances() -> set[str]:
        return {i["id"] for i in json.loads(slipway("--json", "status", "web", "staging").stdout)["instances"]}

    before = instances()
    result = slipway("cycle", "web", "staging", "--interval", "0.2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "Cycled every instance of web in staging"
    after = instances()
    assert len(after) == len(before) and not after & before


def test_a_build_that_fails_exits_1_with_its_reason_and_releases_nothing(slipway: Run, checkout: Path) -> None:
    before = [r["id"] for r in releases(slipway, "web", "staging")]
    (checkout / "Procfile").write_text("web: python3 app.py\nbuild: python3 -c 'import sys; sys.exit(4)'\n")
    git = ["git", "-c", "user.name=Dev", "-c", "user.email=dev@example.com"]
    subprocess.run([*git, "commit", "-qam", "a build step that fails"], cwd=checkout, check=True)
    result = slipway("release", "web", "staging")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "slipway: the build of web failed: command \"python3 -c 'import sys; sys.exit(4)'\" exited 4; "
        "nothing was released"
    )
    assert "-----> Running build command: python3 -c 'import sys; sys.exit(4)'" in result.stderr
    assert [r["id"] for r in releases(slipway, "web", "staging")] == before


def test_promoting_an_environment_to_itself_is_refused(slipway: Run) -> None:
    result = slipway("promote", "web", "staging", "staging")
    assert (result.returncode, result.stderr.strip()) == (
        1,
        "slipway: cannot promote web from staging to itself; name another environment",
    )


def test_apps_lists_each_environment_s_apps_current_release_and_url(slipway: Run) -> None:
    listed = json.loads(slipway("--json", "apps", "staging").stdout)
    assert [a["name"] for a in listed] == ["billing", "web"]
    assert all(app["url"].startswith("http") for app in listed)
    # Without an environment: every one the CLI has an API URL for, by name.
    lines = slipway("apps").stdout.splitlines()
    assert [line for line in lines if line.startswith("===")] == ["=== production", "=== staging"]
    staging = lines[lines.index("=== staging") + 1 :]
    for app, line in zip(listed, staging, strict=True):
        instances = app["instances"]
        assert line.split()[:3] == [
            app["name"],
            app["current"] or "-",
            f"{instances['in_service']}/{instances['desired']}",
        ]
        assert line.endswith(app["url"])
    # No environment given and none configured: one line saying what to set.
    result = slipway("apps", SLIPWAY_URL_STAGING="", SLIPWAY_URL_PRODUCTION="")
    assert result.returncode == 1
    assert result.stderr.startswith("slipway: no environment to list: give one (slipway apps staging)")


# The CLI on its own, no platform: its arguments, its API URL, and answers that are not the API's.


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], environ: dict[str, str]) -> str:
    """Run ``slipway argv`` in this process: it must fail with one line on stderr, which is returned."""
    assert main(argv, {"SLIPWAY_USER": "admin", "SLIPWAY_PASSWORD": "not-this", "HOME": "/nonexistent", **environ}) == 1
    out, err = capsys.readouterr()
    [line] = err.splitlines()
    assert out == "" and line.startswith("slipway: ") and "Traceback" not in err
    return line.removeprefix("slipway: ")


FIX = "set it to the ApiUrl output of the Platform-staging stack, e.g. https://abc123.execute-api.us-east-1.amazonaws.com/v1"


@pytest.mark.parametrize(
    "url, message",
    [
        ("notaurl", f"SLIPWAY_URL_STAGING is 'notaurl', not an http(s) URL with a host; {FIX}"),
        ("ftp://x", f"SLIPWAY_URL_STAGING is 'ftp://x', not an http(s) URL with a host; {FIX}"),
        ("http://", f"SLIPWAY_URL_STAGING is 'http://', not an http(s) URL with a host; {FIX}"),
        ("http://[::1", f"SLIPWAY_URL_STAGING is 'http://[::1', not a URL; {FIX}"),
        ("http://h:port/v1", f"SLIPWAY_URL_STAGING is 'http://h:port/v1', not a URL; {FIX}"),
        ("https://h/v1?x=1", f"SLIPWAY_URL_STAGING is 'https://h/v1?x=1': the API URL has no query or fragment; {FIX}"),
    ],
)
def test_an_api_url_that_is_not_one_is_one_line_naming_the_variable(
    capsys: pytest.CaptureFixture[str], url: str, message: str
) -> None:
    assert one_line_error(capsys, ["releases", "web", "staging"], {"SLIPWAY_URL_STAGING": url}) == message


def test_the_variable_named_is_the_one_the_url_came_from(capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(capsys, ["releases", "web", "staging"], {"SLIPWAY_URL": "ftp://x"})
    assert line.startswith("SLIPWAY_URL is 'ftp://x', not an http(s) URL with a host; ")


@pytest.mark.parametrize(
    "url, shown",
    [
        ("http://admin:secret@127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1"),
        ("https://admin:s%40cret@api.example.com/v1", "https://api.example.com/v1"),
        ("https://:secret@api.example.com/v1", "https://api.example.com/v1"),
    ],
)
def test_an_api_url_with_credentials_is_refused_without_echoing_them(
    capsys: pytest.CaptureFixture[str], url: str, shown: str
) -> None:
    line = one_line_error(capsys, ["releases", "web", "staging"], {"SLIPWAY_URL_STAGING": url})
    assert line == (
        f"SLIPWAY_URL_STAGING carries credentials: give the URL without them ({shown}) and the user and password "
        "in SLIPWAY_USER and SLIPWAY_PASSWORD, or in ~/.netrc"
    )


@pytest.mark.parametrize(
    "url", ["http://admin:se/cret@127.0.0.1/v1", "http://admin:se?cret@h/v1", "http://admin:se#cret@h/v1", "a:secret@h"]
)
def test_a_password_that_cuts_the_url_short_is_not_echoed_either(capsys: pytest.CaptureFixture[str], url: str) -> None:
    line = one_line_error(capsys, ["releases", "web", "staging"], {"SLIPWAY_URL_STAGING": url})
    assert "cret" not in line and ":se" not in line and "secret" not in line, line


@pytest.fixture
def foreign() -> Iterator[tuple[str, list[tuple[int, str, bytes]]]]:
    """A server on loopback that is not the Slipway API (an app's load balancer, say): it answers
    every request with the next of the (status, content type, body) the test appends."""
    answers: list[tuple[int, str, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, content_type, body = answers[0] if len(answers) == 1 else answers.pop(0)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answers
    server.shutdown()
    server.server_close()


PAGE = b"<!doctype html><html><body>Hello from web</body></html>"
UNLIKE = "does not answer like the Slipway API"
SET_IT = "set SLIPWAY_URL_STAGING to the ApiUrl output of the Platform-staging stack"


@pytest.mark.parametrize(
    "argv, answer, why",
    [
        (["releases", "web", "staging"], (200, "text/html", PAGE), "the answer is not JSON"),
        (
            ["releases", "web", "staging"],
            (200, "application/json", b'{"status": "ok"}'),
            "its answer has no 'releases'",
        ),
        (["status", "web", "staging"], (200, "application/json", b"[1, 2]"), "the answer is not a JSON object"),
        (["apps", "staging"], (200, "text/plain", b""), "the answer is not JSON"),
        (["releases", "web", "staging"], (404, "text/html", PAGE), "HTTP 404 Not Found without the API's JSON"),
        (["deploys", "web", "staging"], (200, "application/json", b"{}"), "its answer has no 'deploys'"),
    ],
)
def test_a_url_that_is_not_the_api_is_one_line_naming_the_variable(
    capsys: pytest.CaptureFixture[str],
    foreign: tuple[str, list[tuple[int, str, bytes]]],
    argv: list[str],
    answer: tuple[int, str, bytes],
    why: str,
) -> None:
    url, answers = foreign
    answers.append(answer)
    line = one_line_error(capsys, argv, {"SLIPWAY_URL_STAGING": url})
    assert line.startswith(f"{url} {UNLIKE} (") and why in line and line.endswith(SET_IT), line


def test_a_path_that_is_no_route_of_the_api_is_one_line_naming_the_arguments(
    capsys: pytest.CaptureFixture[str], foreign: tuple[str, list[tuple[int, str, bytes]]]
) -> None:
    url, answers = foreign
    answers.append((403, "application/json", b'{"message":"Missing Authentication Token"}'))  # API Gateway's
    line = one_line_error(capsys, ["releases", "", "staging"], {"SLIPWAY_URL_STAGING": url})
    assert line == (
        "GET /apps//envs/staging/releases is no operation of the Slipway API (HTTP 403: Missing Authentication "
        "Token); check the app '' (slipway apps staging lists them) and the environment 'staging', and that "
        "SLIPWAY_URL_STAGING is the ApiUrl output of the Platform-staging stack"
    )


@pytest.mark.parametrize(
    "app, env, rest, sent",
    [
        ("../web", "staging", ("releases",), "/apps/..%2Fweb/envs/staging/releases"),
        ("..", "staging", ("releases",), "/apps/%2E%2E/envs/staging/releases"),
        ("web", ".", (), "/apps/web/envs/%2E"),
        ("web", "staging", ("releases", "../../x"), "/apps/web/envs/staging/releases/..%2F..%2Fx"),
        ("web", "staging", ("deploys", "a/b c?d#e"), "/apps/web/envs/staging/deploys/a%2Fb%20c%3Fd%23e"),
    ],
)
def test_each_argument_is_one_path_segment(app: str, env: str, rest: tuple[str, ...], sent: str) -> None:
    assert api_path(app, env, *rest) == sent


@pytest.mark.parametrize(
    "argv, timeout, words",
    [
        (["run", "web", "staging", "--timeout", "0", "--", "true"], 0, ["true"]),
        (["--json", "run", "web", "staging", "--timeout", "60", "--", "./manage", "--timeout", "5"], 60, None),
        (["run", "web", "staging", "--", "ls", "-la", "--", "x"], None, ["ls", "-la", "--", "x"]),
        (["run", "web", "staging", "echo", "--", "-n"], None, ["echo", "--", "-n"]),
        (["run", "web", "staging", "python", "manage.py"], None, ["python", "manage.py"]),
    ],
)
def test_run_s_options_are_options_and_its_command_what_follows_the_dashes(
    argv: list[str], timeout: int | None, words: list[str] | None
) -> None:
    args = parse(argv)
    assert (args.command, args.app, args.env, args.timeout) == ("run", "web", "staging", timeout)
    assert args.words == (words or ["./manage", "--timeout", "5"])


def test_run_with_a_time_limit_out_of_range_is_refused_by_the_api(slipway: Run) -> None:
    # The range is the API's (slipway_release.oneoff, and openapi.json's RunRequest, which API Gateway checks
    # first): the CLI sends --timeout as given, after the dashes' command.
    result = slipway("run", "web", "staging", "--timeout", "0", "--", "true")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "slipway: the request body does not match the API (openapi.json): [0 is less than the minimum of 1] (HTTP 400)"
    )


def test_an_app_name_that_climbs_the_path_is_one_line_naming_it(slipway: Run) -> None:
    result = slipway("releases", "../web", "staging")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("slipway: no app '..%2Fweb' in staging (apps: billing, web)"), line
