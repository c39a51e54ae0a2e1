"""Command-line parsing, the S3 endpoint, pruning and the JSON result line."""

import json

import pytest

from slipway_agent.cli import DeployArgs, UsageError, parse_args, s3_endpoint
from slipway_agent.deploy import releases_to_prune, result_line
from slipway_release.archive import DEFAULT_MAX_UNPACKED_BYTES
from slipway_release.layout import ReleaseUrl


def test_parse_release_and_current_urls():
    assert parse_args(["s3://rel-bucket/billing/staging/r7"]) == DeployArgs(
        ReleaseUrl("rel-bucket", "billing", "staging", "r7"), DEFAULT_MAX_UNPACKED_BYTES
    )
    args = parse_args(["--max-unpacked-bytes", "1000", "s3://b.x-1/api/production/current"])
    assert args == DeployArgs(ReleaseUrl("b.x-1", "api", "production", "current"), 1000)
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
    ],
)
def test_usage_errors(argv, message):
    with pytest.raises(UsageError) as caught:
        parse_args(argv)
    assert message in str(caught.value)


def test_s3_endpoint_prefers_the_s3_specific_variable():
    assert s3_endpoint({}) is None
    assert s3_endpoint({"AWS_ENDPOINT_URL": "http://a"}) == "http://a"
    assert s3_endpoint({"AWS_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL_S3": "http://s3"}) == "http://s3"


def test_prune_keeps_the_highest_ids_and_the_protected():
    names = ["r1", "r2", "r10", "r3", "r4", "r5", "r6", ".r7.partial", "notes"]
    assert releases_to_prune(names, 5, {"r1"}) == ["r2"]
    assert releases_to_prune(names, 5, set()) == ["r2", "r1"]
    assert releases_to_prune(["r1"], 5, set()) == []


def test_result_line_is_one_json_object():
    line = result_line(
        ReleaseUrl("b", "billing", "staging", "current"), "r7", "r6", "deployed", 0, None, {"download": 0.12345}
    )
    assert "\n" not in line
    assert json.loads(line) == {
        "app": "billing",
        "env": "staging",
        "release": "r7",
        "previous": "r6",
        "result": "deployed",
        "exit_code": 0,
        "error": None,
        "durations": {"download": 0.123},
    }
