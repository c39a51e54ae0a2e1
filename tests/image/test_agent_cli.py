"""Command-line parsing (the three forms), instance.env, the S3 endpoint and the JSON result line."""

import json

import pytest

from slipway_agent.cli import (
    ACTIVATE,
    DEPLOY,
    RESTART,
    RUN,
    STAGE,
    DeployArgs,
    UsageError,
    build_parser,
    parse_args,
    parse_instance_env,
    s3_endpoint,
)
from slipway_agent.deploy import EXIT_NOT_STAGED
from slipway_agent.report import result_line
from slipway_release.archive import DEFAULT_MAX_UNPACKED_BYTES
from slipway_release.layout import ReleaseUrl
from slipway_release.oneoff import encode


def test_parse_release_and_current_urls():
    assert parse_args(["s3://rel-bucket/billing/staging/r7"]) == DeployArgs(
        DEPLOY, ReleaseUrl("rel-bucket", "billing", "staging", "r7"), DEFAULT_MAX_UNPACKED_BYTES
    )
    args = parse_args(["--max-unpacked-bytes", "1000", "s3://b.x-1/api/production/current"])
    assert args == DeployArgs(DEPLOY, ReleaseUrl("b.x-1", "api", "production", "current"), 1000)
    assert args.release.keys.release("r3", "env") == "api/production/r3/env"
    assert str(args.release.of("r3")) == "s3://b.x-1/api/production/r3"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: url"),
        (["http://b/a/e/r1"], "must start with s3://"),
        (["s3://b/a/e"], "must have 4 parts"),
        (["s3://B_/a/e/r1"], "is not a valid S3 bucket name"),
        (["s3://bkt/App/e/r1"], "app 'App' must be 2 to 32 lowercase"),
        (["s3://bkt/ab/e/r0"], "a release id like r7, or 'current'"),
        (["s3://bkt/ab/e-1/r1"], "env 'e-1' must be lowercase letters and digits"),
        (["s3://bkt/ab/e/r1/"], "must have 4 parts"),
        (["--max-unpacked-bytes", "0", "s3://bkt/ab/e/r1"], "positive number of bytes"),
        (["--stage"], "the following arguments are required: url"),
        (["--stage", "--activate", "r1", "s3://bkt/ab/e/r1"], "not allowed with argument"),
        (["--activate", "r1", "s3://bkt/ab/e/r1"], "--activate takes the release alone"),
        (["--activate", "current"], "give a release id like r7"),
        (["--activate", "r0"], "give a release id like r7"),
        (["--activate", "s3://bkt/ab/e/current"], "--activate needs a release id, not current"),
        (["--activate", "s3://bkt/ab/e/r1/x"], "must have 4 parts"),
        (["--activate"], "expected one argument"),
        (["--restart", "r1", "--activate", "r1"], "not allowed with argument"),
        (["--restart", "r1", "s3://bkt/ab/e/r1"], "--restart takes the release alone"),
        (["--restart", "s3://bkt/ab/e/current"], "--restart needs a release id, not current"),
        (["--restart", "latest"], "--restart 'latest': give a release id like r7"),
    ],
)
def test_usage_errors(argv, message):
    with pytest.raises(UsageError) as caught:
        parse_args(argv, INSTANCE)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


INSTANCE = {"SLIPWAY_APP": "billing", "SLIPWAY_ENV": "staging", "SLIPWAY_BUCKET": "rel-bucket"}


def test_stage_takes_a_url_like_deploy():
    assert parse_args(["--stage", "s3://rel-bucket/billing/staging/current"]) == DeployArgs(
        STAGE, ReleaseUrl("rel-bucket", "billing", "staging", "current"), DEFAULT_MAX_UNPACKED_BYTES
    )
    assert parse_args(["s3://bkt/ab/e/r2", "--stage", "--max-unpacked-bytes", "5"]).mode == STAGE


def test_activate_a_release_id_of_this_instances_app():
    args = parse_args(["--activate", "r7"], INSTANCE)
    assert args == DeployArgs(
        ACTIVATE, ReleaseUrl("rel-bucket", "billing", "staging", "r7"), DEFAULT_MAX_UNPACKED_BYTES
    )
    # The URL names app and environment itself: instance.env is not needed, and not read.
    by_url = parse_args(["--activate", "s3://other/api/prod/r3"], {})
    assert by_url == DeployArgs(ACTIVATE, ReleaseUrl("other", "api", "prod", "r3"), DEFAULT_MAX_UNPACKED_BYTES)


@pytest.mark.parametrize(
    "instance_env",
    [{}, {"SLIPWAY_APP": "billing"}, {"SLIPWAY_APP": "Bad!", "SLIPWAY_ENV": "staging"}],
    ids=["unprovisioned", "no-env", "bad-app"],
)
def test_activate_by_id_needs_the_instance_to_name_its_app(instance_env):
    with pytest.raises(UsageError) as caught:
        parse_args(["--activate", "r7"], instance_env)
    assert "/etc/slipway/instance.env does not name them" in str(caught.value)
    assert "deploy --activate s3://<bucket>/<app>/<env>/r7" in str(caught.value)


def test_activate_without_a_bucket_in_instance_env_still_parses():
    args = parse_args(["--activate", "r2"], {"SLIPWAY_APP": "billing", "SLIPWAY_ENV": "staging"})
    assert str(args.release) == "s3://<bucket>/billing/staging/r2"


def test_restart_takes_its_release_as_activate_does():
    assert parse_args(["--restart", "r7"], INSTANCE) == DeployArgs(
        RESTART, ReleaseUrl("rel-bucket", "billing", "staging", "r7"), DEFAULT_MAX_UNPACKED_BYTES
    )
    assert parse_args(["--restart", "s3://other/api/prod/r3"], {}).release == ReleaseUrl("other", "api", "prod", "r3")
    with pytest.raises(UsageError, match=r"deploy --restart s3://<bucket>/<app>/<env>/r7"):
        parse_args(["--restart", "r7"], {})


def test_instance_env_is_key_value_lines():
    text = "SLIPWAY_APP=billing\nSLIPWAY_ENV=staging\n# note\n\nSLIPWAY_BUCKET=b=1\n"
    assert parse_instance_env(text) == {"SLIPWAY_APP": "billing", "SLIPWAY_ENV": "staging", "SLIPWAY_BUCKET": "b=1"}
    assert parse_instance_env(None) == {}


def test_help_names_every_exit_code():
    epilog = build_parser().epilog or ""
    for code in range(EXIT_NOT_STAGED + 1):
        assert f"{code} " in epilog


def test_s3_endpoint_prefers_the_s3_specific_variable():
    assert s3_endpoint({}) is None
    assert s3_endpoint({"AWS_ENDPOINT_URL": "http://a"}) == "http://a"
    assert s3_endpoint({"AWS_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL_S3": "http://s3"}) == "http://s3"


def test_result_line_is_one_json_object():
    line = result_line(
        ReleaseUrl("b", "billing", "staging", "current"),
        "deploy",
        "activate",
        "r7",
        "r6",
        "deployed",
        0,
        None,
        {"download": 0.12345},
    )
    assert "\n" not in line
    assert json.loads(line) == {
        "app": "billing",
        "env": "staging",
        "mode": "deploy",
        "phase": "activate",
        "release": "r7",
        "previous": "r6",
        "result": "deployed",
        "exit_code": 0,
        "error": None,
        "durations": {"download": 0.123},
    }


def test_run_takes_its_release_as_restart_does_and_a_base64_command():
    args = parse_args(["--run", "r7", "--command", encode("rake db:migrate && echo ok")], INSTANCE)
    assert args == DeployArgs(
        RUN,
        ReleaseUrl("rel-bucket", "billing", "staging", "r7"),
        DEFAULT_MAX_UNPACKED_BYTES,
        "rake db:migrate && echo ok",
    )
    assert parse_args(["--run", "r7", "--command", encode("ls"), "--timeout", "60"], INSTANCE).timeout_seconds == 60


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--run", "r7"], "--run needs --command"),
        (["--command", "bHM", "s3://b/api/prod/r1"], "--command goes with --run"),
        (["--run", "r7", "--command", "ls -la"], "is not unpadded URL-safe base64"),
        (["--run", "r7", "--command", "bHM", "--timeout", "0"], "not a whole number of seconds"),
        (["--run", "r7", "--command", "bHM", "--timeout", "3601"], "from 1 to 3600"),
        (["--run", "current", "--command", "bHM"], "--run 'current': give a release id like r7"),
    ],
)
def test_run_refuses_what_the_run_document_would_not_send(argv, message):
    with pytest.raises(UsageError, match=message):
        parse_args(argv, INSTANCE)


def test_restart_may_name_one_process_type():
    args = parse_args(["--restart", "r7", "--process", "worker"], INSTANCE)
    assert (args.mode, args.process) == (RESTART, "worker")
    with pytest.raises(UsageError, match="--process goes with --restart"):
        parse_args(["--activate", "r7", "--process", "worker"], INSTANCE)
    with pytest.raises(UsageError, match="is not a process type"):
        parse_args(["--restart", "r7", "--process", "web.1"], INSTANCE)
