"""DeployDocument: the SSM Command document rollouts deploy through, its allowed pattern and its IAM."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam
from aws_cdk.assertions import Template
from cdk_nag import AwsSolutionsChecks

from constructs.deploy_document import (
    DeployDocument,
    RunDocument,
    bucket_name_pattern,
    deploy_document_content,
    release_url_pattern,
    run_document_content,
)
from constructs.release_store import ReleaseStore
from slipway_release import oneoff

BUCKET = "platform-staging-releasebucket-1a2b3c4d5e6f"
# The apps of cdk.json, in its order.
APPS = ["web", "billing"]
ARN = ["arn:", {"Ref": "AWS::Partition"}]


def _one(template: Template, resource_type: str, prefix: str) -> tuple[str, dict[str, Any]]:
    found = {k: v for k, v in template.find_resources(resource_type).items() if k.startswith(prefix)}
    assert len(found) == 1, f"expected one {resource_type} named {prefix}*, found {list(found)}"
    return next(iter(found.items()))


def test_document_content_exact_text() -> None:
    assert deploy_document_content(bucket_pattern=re.escape(BUCKET), apps=APPS, env="staging") == {
        "schemaVersion": "2.2",
        "description": "Slipway deploy in staging: runs /home/deploy/bin/deploy with a release URL (stage, activate, "
        "both, or restart).",
        "parameters": {
            "ReleaseUrl": {
                "type": "String",
                "description": "The release to deploy: s3://<release bucket>/<app>/staging/r<N> or .../current",
                "allowedPattern": (
                    "^s3://platform\\-staging\\-releasebucket\\-1a2b3c4d5e6f/(web|billing)/staging/"
                    "(r[1-9][0-9]{0,8}|current)$"
                ),
            },
            "Action": {
                "type": "String",
                "description": "stage: download and prepare only; activate: switch to the staged release; deploy: "
                "both; restart: restart the running release",
                "default": "deploy",
                "allowedPattern": "^(deploy|stage|activate|restart)$",
            },
            "Digest": {
                "type": "String",
                "description": "The sha256 of the release's release.json that the rollout pinned: the instance "
                "refuses any other, before staging and before activating (empty: the one current pins, for "
                ".../current)",
                "default": "",
                "allowedPattern": "^([0-9a-f]{64})?$",
            },
            "Process": {
                "type": "String",
                "description": "restart only: the Procfile process type to restart (empty: every process)",
                "default": "",
                "allowedPattern": "^([A-Za-z0-9_]{1,30})?$",
            },
        },
        "mainSteps": [
            {
                "action": "aws:runShellScript",
                "name": "Deploy",
                "inputs": {
                    "runCommand": [
                        'process="{{ Process }}"',
                        'digest="{{ Digest }}"',
                        'case "{{ Action }}" in',
                        "  stage) exec /home/deploy/bin/deploy --stage {{ ReleaseUrl }}"
                        ' ${digest:+--digest "$digest"} ;;',
                        "  activate) exec /home/deploy/bin/deploy --activate {{ ReleaseUrl }}"
                        ' ${digest:+--digest "$digest"} ;;',
                        "  restart) exec /home/deploy/bin/deploy --restart {{ ReleaseUrl }}"
                        ' ${digest:+--digest "$digest"} ${process:+--process "$process"} ;;',
                        '  *) exec /home/deploy/bin/deploy {{ ReleaseUrl }} ${digest:+--digest "$digest"} ;;',
                        "esac",
                    ],
                    "timeoutSeconds": "900",
                },
            }
        ],
    }


@pytest.mark.parametrize(
    "digest", ["", "a" * 65, "A" * 64, "$(reboot)" + "a" * 55, "a" * 63 + " ", "a" * 64 + "\nreboot"]
)
def test_the_digest_pattern_admits_only_a_sha256_or_nothing(digest: str) -> None:
    pattern = deploy_document_content(bucket_pattern=re.escape(BUCKET), apps=APPS, env="staging")["parameters"][
        "Digest"
    ]["allowedPattern"]
    assert re.fullmatch(pattern, "3f" * 32)
    assert (re.search(pattern, digest) is not None) == (digest == "")


@pytest.mark.parametrize("action", ["deploy", "stage", "activate", "restart"])
def test_the_action_pattern_admits_the_four_modes(action: str) -> None:
    content = deploy_document_content(bucket_pattern=re.escape(BUCKET), apps=APPS, env="staging")
    assert re.fullmatch(content["parameters"]["Action"]["allowedPattern"], action)


@pytest.mark.parametrize("action", ["", "Stage", "stage; rm -rf /", "--stage", "deploy stage", "activate now"])
def test_the_action_pattern_refuses_anything_else(action: str) -> None:
    content = deploy_document_content(bucket_pattern=re.escape(BUCKET), apps=APPS, env="staging")
    assert re.search(content["parameters"]["Action"]["allowedPattern"], action) is None


GOOD_URLS = [
    f"s3://{BUCKET}/web/staging/r1",
    f"s3://{BUCKET}/web/staging/r7",
    f"s3://{BUCKET}/web/staging/r123456789",
    f"s3://{BUCKET}/web/staging/current",
    f"s3://{BUCKET}/billing/staging/r42",
    f"s3://{BUCKET}/billing/staging/current",
]

BAD_URLS = [
    # not a release id
    f"s3://{BUCKET}/web/staging/r0",
    f"s3://{BUCKET}/web/staging/r01",
    f"s3://{BUCKET}/web/staging/r1234567890",
    f"s3://{BUCKET}/web/staging/r",
    f"s3://{BUCKET}/web/staging/R1",
    f"s3://{BUCKET}/web/staging/currently",
    f"s3://{BUCKET}/web/staging/",
    f"s3://{BUCKET}/web/staging/current/",
    f"s3://{BUCKET}/web/staging/r1/release.json",
    # path traversal
    f"s3://{BUCKET}/web/staging/../production/current",
    f"s3://{BUCKET}/web/staging/r1/../../../billing/production/current",
    f"s3://{BUCKET}/web/../production/current",
    f"s3://{BUCKET}/../web/staging/current",
    # other environments, apps and buckets
    f"s3://{BUCKET}/web/production/current",
    f"s3://{BUCKET}/web/staging2/current",
    f"s3://{BUCKET}/shop/staging/current",
    f"s3://{BUCKET}/webx/staging/current",
    f"s3://{BUCKET}/web|billing/staging/current",
    f"s3://{BUCKET}//staging/current",
    f"s3://{BUCKET}/uploads/web/staging/current",
    "s3://platform-production-releasebucket-999/web/staging/current",
    f"s3://{BUCKET}-evil/web/staging/current",
    f"s3://evil-{BUCKET}/web/staging/current",
    f"s3://{BUCKET}.evil.example.com/web/staging/current",
    f"https://{BUCKET}.s3.amazonaws.com/web/staging/current",
    f"S3://{BUCKET}/web/staging/current",
    f"file:///{BUCKET}/web/staging/current",
    # shell text around a good URL
    f"s3://{BUCKET}/web/staging/current; rm -rf /",
    f"s3://{BUCKET}/web/staging/current && curl evil.example.com",
    f"s3://{BUCKET}/web/staging/current | sh",
    f"s3://{BUCKET}/web/staging/r1$(reboot)",
    f"s3://{BUCKET}/web/staging/`reboot`",
    f"s3://{BUCKET}/web/staging/current\nreboot",
    f"s3://{BUCKET}/web/staging/current\rreboot",
    f"s3://{BUCKET}/web/staging/current --max-unpacked-bytes 1",
    f"s3://{BUCKET}/web/staging/current ",
    f" s3://{BUCKET}/web/staging/current",
    f"'s3://{BUCKET}/web/staging/current'",
    f"s3://{BUCKET}/web/staging/current>/etc/passwd",
    f"-h s3://{BUCKET}/web/staging/current",
    f"s3://{BUCKET}/web/staging/current\x00",
    "",
]


@pytest.fixture(scope="module")
def pattern() -> re.Pattern[str]:
    return re.compile(release_url_pattern(bucket_pattern=re.escape(BUCKET), apps=APPS, env="staging"))


@pytest.mark.parametrize("url", GOOD_URLS)
def test_allowed_pattern_admits_releases_of_the_environments_apps(pattern: re.Pattern[str], url: str) -> None:
    assert pattern.search(url)


@pytest.mark.parametrize("url", BAD_URLS)
def test_allowed_pattern_refuses_anything_else(pattern: re.Pattern[str], url: str) -> None:
    # search, not fullmatch: the pattern must anchor itself, whatever way SSM applies it.
    assert pattern.search(url) is None


def test_dots_in_a_bucket_name_match_only_dots() -> None:
    stack = cdk.Stack()
    bucket_pattern = stack.resolve(bucket_name_pattern("releases.example.com"))
    assert bucket_pattern == "releases\\.example\\.com"
    pattern = re.compile(release_url_pattern(bucket_pattern=bucket_pattern, apps=["web"], env="staging"))
    assert pattern.search("s3://releases.example.com/web/staging/current")
    assert pattern.search("s3://releasesXexampleYcom/web/staging/current") is None


@pytest.mark.parametrize(
    "apps, env, message",
    [
        (["web"], "Staging", "env 'Staging' is not an environment name"),
        (["web"], "staging/..", "env 'staging/..' is not an environment name"),
        (["web"], "staging\n", "env 'staging\\\\n' is not an environment name"),
        ([], "staging", "apps is empty"),
        (["web\n"], "staging", "app 'web\\\\n' is not an app name"),
        (["web", "a|b"], "staging", "app 'a|b' is not an app name"),
        (["web", ".*"], "staging", r"app '\.\*' is not an app name"),
        (["web", "web"], "staging", "duplicate names"),
    ],
)
def test_bad_names_are_refused_with_the_fix(apps: list[str], env: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        deploy_document_content(bucket_pattern=re.escape(BUCKET), apps=apps, env=env)


@pytest.mark.parametrize("env", ["staging", "production"])
def test_each_environment_has_its_named_document(templates: dict[str, dict[str, Any]], env: str) -> None:
    template = Template.from_json(templates[f"Platform-{env}"])
    props = _one(template, "AWS::SSM::Document", "DeployDocument")[1]["Properties"]
    assert (props["Name"], props["DocumentType"], props["DocumentFormat"]) == (
        f"Platform-{env}-Deploy",
        "Command",
        "JSON",
    )
    # A fixed name: a changed content becomes a new version, not a replacement that would collide.
    assert props["UpdateMethod"] == "NewVersion"
    content = props["Content"]
    parameter = content["parameters"]["ReleaseUrl"]
    # The bucket is this stack's release bucket, its dots escaped at deploy time.
    assert parameter["allowedPattern"] == {
        "Fn::Join": [
            "",
            [
                "^s3://",
                {"Fn::Join": ["\\.", {"Fn::Split": [".", {"Ref": "ReleaseBucket"}]}]},
                f"/(web|billing)/{env}/(r[1-9][0-9]{{0,8}}|current)$",
            ],
        ]
    }
    # The rest is exactly the pure function's content, and the deployed pattern is the tested one.
    expected = deploy_document_content(bucket_pattern=re.escape(BUCKET), apps=APPS, env=env)
    deployed_pattern = "".join(
        re.escape(BUCKET) if isinstance(part, dict) else part for part in parameter.pop("allowedPattern")["Fn::Join"][1]
    )
    assert deployed_pattern == expected["parameters"]["ReleaseUrl"].pop("allowedPattern")
    assert content == expected


def test_command_output_is_kept_a_year(staging: Template) -> None:
    props = _one(staging, "AWS::Logs::LogGroup", "DeployDocumentOutput")[1]["Properties"]
    assert props == {"RetentionInDays": 365}


@pytest.mark.parametrize("app", APPS)
def test_instances_write_command_output_and_app_logs_to_their_log_groups_only(staging: Template, app: str) -> None:
    deploy_output = _one(staging, "AWS::Logs::LogGroup", "DeployDocumentOutput")[0]
    run_output = _one(staging, "AWS::Logs::LogGroup", "RunDocumentOutput")[0]
    app_logs = _one(staging, "AWS::Logs::LogGroup", "AppLogs")[0]
    policy = _one(staging, "AWS::IAM::Policy", f"App{app}FleetInstanceRole")[1]
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    logs_statements = [s for s in statements if json.dumps(s["Action"]).count("logs:")]
    assert logs_statements == [
        {
            "Action": ["logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"],
            "Effect": "Allow",
            "Resource": [
                {"Fn::GetAtt": [app_logs, "Arn"]},
                {"Fn::GetAtt": [deploy_output, "Arn"]},
                {"Fn::GetAtt": [run_output, "Arn"]},
            ],
        }
    ]


@pytest.fixture(scope="module")
def sender(tmp_path_factory: pytest.TempPathFactory) -> tuple[Template, Path]:
    """A stack with the document and a role it is granted to, checked by cdk-nag."""
    outdir = tmp_path_factory.mktemp("grant-send")
    app = cdk.App(outdir=str(outdir))
    stack = cdk.Stack(app, "Sender", env=cdk.Environment(region="eu-west-1"))
    document = DeployDocument(
        stack, "Deploy", env_name="staging", apps=APPS, release_store=ReleaseStore(stack, "Releases")
    )
    role = iam.Role(stack, "Rollout", assumed_by=iam.ServicePrincipal("states.amazonaws.com"))
    document.grant_send(role)
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True))
    assembly = app.synth()  # raises on any unacknowledged finding
    return Template.from_json(assembly.get_stack_by_name("Sender").template), outdir


def test_sender_may_run_only_this_document_on_the_environments_tagged_instances(
    sender: tuple[Template, Path],
) -> None:
    template = sender[0]
    document = _one(template, "AWS::SSM::Document", "DeployDocument")[0]
    _, policy = _one(template, "AWS::IAM::Policy", "DeploySend")
    assert policy["Properties"]["Roles"] == [{"Ref": _one(template, "AWS::IAM::Role", "Rollout")[0]}]
    account = {"Ref": "AWS::AccountId"}
    assert policy["Properties"]["PolicyDocument"]["Statement"] == [
        {
            "Action": "ssm:SendCommand",
            "Effect": "Allow",
            "Resource": {"Fn::Join": ["", [*ARN, ":ssm:eu-west-1:", account, ":document/", {"Ref": document}]]},
        },
        {
            "Action": "ssm:SendCommand",
            "Condition": {
                "StringEquals": {"ssm:resourceTag/slipway:env": "staging", "ssm:resourceTag/slipway:app": APPS}
            },
            "Effect": "Allow",
            "Resource": {"Fn::Join": ["", [*ARN, ":ec2:eu-west-1:", account, ":instance/*"]]},
        },
        {
            "Action": ["ssm:GetCommandInvocation", "ssm:ListCommandInvocations"],
            "Effect": "Allow",
            "Resource": "*",
        },
    ]


def test_sender_policy_acknowledgments_each_match_a_finding(sender: tuple[Template, Path]) -> None:
    report = json.loads((sender[1] / "validation-report.json").read_text())
    [nag] = [plugin for plugin in report["pluginReports"] if plugin["pluginName"] == "AwsSolutions"]
    assert nag["violations"] == []
    suppressed = {(s["acknowledgedAt"], s["acknowledgedId"]) for s in nag["suppressedViolations"]}
    policy_path = next(path for path, _ in suppressed if "/Deploy/Send" in path)
    assert {rule for path, rule in suppressed if path == policy_path} == {
        "AwsSolutions::AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ec2:eu-west-1:<AWS::AccountId>:instance/*]",
        "AwsSolutions::AwsSolutions-IAM5[Resource::*]",
    }


# The one-off document (slipway run) ---------------------------------------------------------------


def test_run_document_content_exact_text() -> None:
    content = run_document_content(env="staging")
    assert content["mainSteps"] == [
        {
            "action": "aws:runShellScript",
            "name": "Run",
            "inputs": {
                "runCommand": [
                    "exec /home/deploy/bin/deploy --run {{ Release }} --command {{ Command }} "
                    "--timeout {{ TimeoutSeconds }}"
                ],
                "timeoutSeconds": str(oneoff.MAX_TIMEOUT_SECONDS + 60),
            },
        }
    ]
    assert set(content["parameters"]) == {"Release", "Command", "TimeoutSeconds"}
    assert content["parameters"]["TimeoutSeconds"]["default"] == str(oneoff.DEFAULT_TIMEOUT_SECONDS)


@pytest.mark.parametrize(
    "command",
    ["python manage.py migrate", "echo $HOME; ls -la | wc -l && exit 3", "é" * 1024, "x" * oneoff.MAX_COMMAND_BYTES],
)
def test_the_run_document_admits_every_command_the_api_encodes_and_the_agent_decodes_it(command: str) -> None:
    pattern = run_document_content(env="staging")["parameters"]["Command"]["allowedPattern"]
    encoded = oneoff.encode(command)
    assert re.search(pattern, encoded)
    assert oneoff.decode(encoded) == command


@pytest.mark.parametrize(
    "value", ["cHl0aG9u; rm -rf /", "$(reboot)", "YQ==", "a b", "", "A" * (oneoff.MAX_COMMAND_BYTES * 4 // 3 + 2)]
)
def test_the_run_document_refuses_any_shell_text_in_the_command(value: str) -> None:
    pattern = run_document_content(env="staging")["parameters"]["Command"]["allowedPattern"]
    assert re.search(pattern, value) is None
    with pytest.raises(oneoff.CommandError):
        oneoff.decode(value)


@pytest.mark.parametrize(
    ("value", "admitted"),
    [
        ("1", True),
        ("3600", True),
        ("900", True),
        ("0", False),
        ("3601", False),
        ("10000", False),
        ("60;reboot", False),
        ("", False),
    ],
)
def test_the_run_document_and_the_agent_admit_the_same_time_limits(value: str, admitted: bool) -> None:
    pattern = run_document_content(env="staging")["parameters"]["TimeoutSeconds"]["allowedPattern"]
    by_document = re.search(pattern, value) is not None
    try:
        oneoff.parse_timeout(value)
        by_agent = True
    except oneoff.CommandError:
        by_agent = False
    # The document admits up to four digits; the agent (and the API) hold the range.
    assert by_agent is admitted
    assert by_document or not by_agent


def test_commands_over_the_limit_or_not_text_are_refused_with_the_fix() -> None:
    with pytest.raises(oneoff.CommandError, match="2049 bytes, more than the 2048"):
        oneoff.encode("x" * 2049)
    with pytest.raises(oneoff.CommandError, match="give the command to run"):
        oneoff.check_command("   ")
    with pytest.raises(oneoff.CommandError, match="NUL"):
        oneoff.check_command("echo \x00")
    with pytest.raises(oneoff.CommandError, match="from 1 to 3600"):
        oneoff.check_timeout(True)


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> tuple[Template, Path]:
    """A stack with the run document granted to an API-like role, checked by cdk-nag."""
    outdir = tmp_path_factory.mktemp("grant-run")
    app = cdk.App(outdir=str(outdir))
    stack = cdk.Stack(app, "Runner", env=cdk.Environment(region="eu-west-1"))
    document = RunDocument(stack, "Run", env_name="staging", apps=APPS)
    role = iam.Role(stack, "Api", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    document.grant_run(role)
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True))
    assembly = app.synth()  # raises on any unacknowledged finding
    return Template.from_json(assembly.get_stack_by_name("Runner").template), outdir


def test_the_api_may_run_only_the_run_document_on_tagged_instances_and_read_its_output(
    runner: tuple[Template, Path],
) -> None:
    template = runner[0]
    document = _one(template, "AWS::SSM::Document", "RunDocument")[0]
    output = _one(template, "AWS::Logs::LogGroup", "RunOutput")[0]
    props = _one(template, "AWS::SSM::Document", "RunDocument")[1]["Properties"]
    assert props["Name"] == "Platform-staging-Run"
    assert props["Content"] == run_document_content(env="staging")
    statements = [
        statement
        for _, policy in template.find_resources("AWS::IAM::Policy").items()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]
    account = {"Ref": "AWS::AccountId"}
    assert statements == [
        {
            "Action": "ssm:SendCommand",
            "Effect": "Allow",
            "Resource": {"Fn::Join": ["", [*ARN, ":ssm:eu-west-1:", account, ":document/", {"Ref": document}]]},
        },
        {
            "Action": "ssm:SendCommand",
            "Condition": {
                "StringEquals": {"ssm:resourceTag/slipway:env": "staging", "ssm:resourceTag/slipway:app": APPS}
            },
            "Effect": "Allow",
            "Resource": {"Fn::Join": ["", [*ARN, ":ec2:eu-west-1:", account, ":instance/*"]]},
        },
        {"Action": ["ssm:GetCommandInvocation", "ssm:ListCommands"], "Effect": "Allow", "Resource": "*"},
        {"Action": "logs:GetLogEvents", "Effect": "Allow", "Resource": {"Fn::GetAtt": [output, "Arn"]}},
    ]
    report = json.loads((runner[1] / "validation-report.json").read_text())
    [nag] = [plugin for plugin in report["pluginReports"] if plugin["pluginName"] == "AwsSolutions"]
    assert nag["violations"] == []
