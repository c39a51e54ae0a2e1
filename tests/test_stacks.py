"""Whole stacks: snapshots, cfn-lint, cdk-nag, determinism, and synthesis from the command line."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_s3 as s3
from syrupy.assertion import SnapshotAssertion
from syrupy.extensions.json import JSONSnapshotExtension

from app import build_app
from local.platform import merged_template

STACKS = ["Platform-production", "Platform-staging"]
APPS_IN_EXAMPLE = 2  # web and billing, each an app stack nested in every environment's
ASSET_HASH = re.compile(r"[0-9a-f]{64}")
# cfn-lint findings that are deliberate, each with its reason; anything else fails.
CFN_LINT_ACCEPTED = {
    "W3010": "availability zones are pinned by configuration (availability_zones), as committed context",
    "W3005": "an explicit DependsOn that CDK adds next to a GetAtt: in its own restrict-default-security-group "
    "custom resource, and from each Lambda function to its role",
}


def normalized(template: dict[str, Any]) -> Any:
    """The template with asset hashes masked: a snapshot guards structure, not image/ contents."""
    return json.loads(ASSET_HASH.sub("<asset-hash>", json.dumps(template, sort_keys=True)))


def clean_env(**extra: str) -> dict[str, str]:
    """The process environment without any AWS credentials or profile."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CDK_"))}
    env.update(
        HOME=str(Path(os.environ.get("TMPDIR", "/tmp"))),
        AWS_EC2_METADATA_DISABLED="true",
        JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20",
        **extra,
    )
    return env


def test_one_stack_per_environment(templates: dict[str, dict[str, Any]]) -> None:
    assert sorted(templates) == STACKS


@pytest.mark.parametrize("stack", STACKS)
def test_snapshot(templates: dict[str, dict[str, Any]], stack: str, snapshot: SnapshotAssertion) -> None:
    assert normalized(templates[stack]) == snapshot(extension_class=JSONSnapshotExtension)


def test_synthesis_is_deterministic(
    templates: dict[str, dict[str, Any]], example_context: dict[str, Any], synth: Callable[..., Any]
) -> None:
    # Same commit, same template: byte for byte, asset hashes included.
    assert synth(example_context) == templates


@pytest.mark.parametrize("configuration", ["example", "every option"])
def test_cfn_lint_finds_no_errors(configuration: str, request: pytest.FixtureRequest) -> None:
    outdir: Path = request.getfixturevalue("assembly_dir" if configuration == "example" else "every_option_dir")
    paths = sorted(str(p) for p in outdir.glob("*.template.json"))
    # Every template CDK wrote: each environment's stack and its apps' nested stacks, as they are.
    # (every option adds production's copy in its secondary region)
    assert len(paths) == (len(STACKS) + (configuration == "every option")) * (1 + APPS_IN_EXAMPLE)
    unexpected = _cfn_lint_unexpected(paths)
    assert unexpected == [], "\n".join(unexpected)


def _cfn_lint_unexpected(paths: list[str]) -> list[str]:
    """cfn-lint's findings on ``paths`` that are not accepted (CFN_LINT_ACCEPTED), one line each."""
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    result = subprocess.run([str(cfn_lint), "--format", "json", *paths], capture_output=True, text=True, check=False)
    assert result.returncode in (0, 2, 4, 6), result.stderr  # 2 errors, 4 warnings: reported below
    findings = json.loads(result.stdout or "[]")
    return [
        f"{f['Rule']['Id']} {f['Message']} ({f['Filename']})"
        for f in findings
        if f["Rule"]["Id"] not in CFN_LINT_ACCEPTED
    ]


def test_a_hundred_apps_synthesize_and_lint(example_context: dict[str, Any], tmp_path: Path) -> None:
    """One environment of 100 apps: cdk-nag passes (synthesis raises otherwise), the environment's
    stack stays far from CloudFormation's 500 resources (two per app) and its 1 MB, each app's
    nested stack holds its fleet, no role needs managed policies, and cfn-lint finds nothing."""
    context = copy.deepcopy(example_context)
    platform = context["platform"]
    platform["environments"] = {"staging": platform["environments"]["staging"]}
    platform["apps"] = {f"app{i:03d}": platform["apps"]["billing"] for i in range(100)}
    build_app(context=context, outdir=str(tmp_path)).synth()
    parent = json.loads((tmp_path / "Platform-staging.template.json").read_text())
    nested = sorted(tmp_path.glob("*.nested.template.json"))
    assert len(nested) == 100
    counts = [len(json.loads(path.read_text())["Resources"]) for path in nested]
    assert len(parent["Resources"]) < 400 and max(counts) < 50
    assert (tmp_path / "Platform-staging.template.json").stat().st_size < 1_000_000  # what CloudFormation reads
    types = {r["Type"] for r in parent["Resources"].values()}
    assert "AWS::AutoScaling::AutoScalingGroup" not in types and "AWS::CloudFormation::Stack" in types
    # The control plane's grants cover the environment's apps with one pattern per key: no role's
    # policy grows with the apps into managed policies (IAM allows a role 10 by default).
    assert "AWS::IAM::ManagedPolicy" not in types
    # cfn-lint on the environment's stack and two app stacks (the 100 differ only in the app's name;
    # linting all of them would take two minutes).
    paths = [str(tmp_path / "Platform-staging.template.json"), str(nested[0]), str(nested[-1])]
    assert _cfn_lint_unexpected(paths) == []


def _nag_report(assembly_dir: Path) -> dict[str, Any]:
    report = json.loads((assembly_dir / "validation-report.json").read_text())
    [nag] = [plugin for plugin in report["pluginReports"] if plugin["pluginName"] == "AwsSolutions"]
    return nag  # type: ignore[no-any-return]


@pytest.mark.parametrize("configuration", ["example", "every option"])
def test_cdk_nag_finds_nothing_unacknowledged(configuration: str, request: pytest.FixtureRequest) -> None:
    # build_app registers the AwsSolutions pack; synthesis raises on any unacknowledged finding.
    nag = _nag_report(request.getfixturevalue("assembly_dir" if configuration == "example" else "every_option_dir"))
    assert nag["conclusion"] == "success"
    assert nag["violations"] == []


def test_every_acknowledgment_has_a_reason_and_matches_a_finding(
    example_context: dict[str, Any], assembly_dir: Path
) -> None:
    app = build_app(context=example_context)
    acknowledged = {
        (node.node.path, rule): reason
        for node in app.node.find_all()
        for entry in node.node.metadata
        if entry.type == cdk.Validations.ACKNOWLEDGED_RULES_METADATA_KEY
        for rule, reason in entry.data.items()
        if rule.startswith("AwsSolutions::")
    }
    assert acknowledged
    for (path, rule), reason in acknowledged.items():
        assert len(reason) >= 60, f"{path} {rule}: give a specific reason"
    # An acknowledgment that suppresses nothing is stale: remove it.
    used = {(s["acknowledgedAt"], s["acknowledgedId"]) for s in _nag_report(assembly_dir)["suppressedViolations"]}
    assert set(acknowledged) - used == set()


def test_cdk_nag_stops_synthesis_on_an_unacknowledged_finding(example_context: dict[str, Any], tmp_path: Path) -> None:
    app = build_app(context=example_context, outdir=str(tmp_path))
    stack = app.node.find_child("Platform-staging")
    assert isinstance(stack, cdk.Stack)
    s3.Bucket(stack, "UnloggedBucket")  # no access logs, no TLS-only policy
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    violations = _nag_report(tmp_path)["violations"]
    assert {"AwsSolutions-S1", "AwsSolutions-S10"} <= {v["ruleName"] for v in violations}
    assert all("UnloggedBucket" in c["constructPath"] for v in violations for c in v["violatingConstructs"])


def test_python_app_synthesizes_every_stack_without_credentials(repo: Path, tmp_path: Path) -> None:
    # Run from elsewhere: the app finds cdk.json next to itself, and writes ./cdk.out.
    result = subprocess.run(
        [sys.executable, str(repo / "app.py")],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for stack in STACKS:
        assert f"{stack}: cdk.out/{stack}.template.json" in result.stdout
        assert (tmp_path / "cdk.out" / f"{stack}.template.json").is_file()


BAD_CONFIGURATIONS = {
    "capacity": (
        lambda platform: platform["apps"]["web"].update(min_capacity=9),
        "error: invalid platform configuration: platform.apps.web.min_capacity: 9 is greater than max_capacity 6;"
        " lower min_capacity or raise max_capacity",
    ),
    # Once a 33-line jsii traceback that never named the region.
    "region": (
        lambda platform: platform["environments"]["staging"].update(region="us-east-9"),
        "error: invalid platform configuration: platform.environments.staging.region: 'us-east-9' is not an AWS "
        "region (botocore",
    ),
}


@pytest.mark.parametrize("change, line", BAD_CONFIGURATIONS.values(), ids=BAD_CONFIGURATIONS.keys())
def test_bad_configuration_gives_one_line_and_a_nonzero_exit(
    repo: Path, example_platform: dict[str, Any], change: Callable[[dict[str, Any]], None], line: str
) -> None:
    platform = json.loads(json.dumps(example_platform))
    change(platform)
    result = subprocess.run(
        [sys.executable, "app.py"],
        cwd=repo,
        env=clean_env(CDK_CONTEXT_JSON=json.dumps({"platform": platform}), CDK_OUTDIR="/nonexistent"),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    [printed] = result.stderr.splitlines()
    assert printed.startswith(line), printed


def test_cdk_cli_synthesizes_the_same_templates(
    repo: Path, templates: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    cli = repo / ".tools" / "node_modules" / ".bin" / "cdk"
    assert cli.exists(), "the pinned cdk CLI is missing: `make test` installs it"
    env = clean_env(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", CDK_DISABLE_CLI_TELEMETRY="true")
    result = subprocess.run(
        [str(cli), "synth", "--quiet", "--no-notices", "--output", str(tmp_path)],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    for stack in STACKS:
        written = json.loads((tmp_path / f"{stack}.template.json").read_text())
        assert merged_template(written, tmp_path) == templates[stack]  # its apps' nested stacks included


def test_more_apps_than_one_stack_holds_is_one_clear_line(repo: Path, example_platform: dict[str, Any]) -> None:
    """Each app adds two resources to the environment's stack (its nested stack and its settings'
    parameter), so CloudFormation's 500 stop it at about 160 apps; the limit is lowered here (CDK's
    own context key) to reach it with the example's two."""
    context = {"platform": example_platform, "@aws-cdk/core:stackResourceLimit": 150}
    result = subprocess.run(
        [sys.executable, "app.py"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env=clean_env(CDK_CONTEXT_JSON=json.dumps(context), CDK_OUTDIR=str(repo / "cdk.out" / "x")),
    )
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert re.fullmatch(
        r"error: Platform-(staging|production) would hold \d+ resources, over CloudFormation's 150 per stack; "
        r"run fewer apps per environment \(each adds 2 to it: its nested stack and its settings' parameter\)",
        line,
    ), result.stderr[-2000:]
