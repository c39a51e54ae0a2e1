"""What a local instance runs: its user data with the named adaptations (local.boot), and the
deploy document as the SSM agent runs it, with what SSM reports back (local.ssm)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from constructs.config import LogSettings
from constructs.deploy_document import deploy_document_content
from constructs.fleet import IMAGE_ON_INSTANCE, boot_commands
from local.boot import ADAPTATIONS, UserDataChanged, adapt_user_data
from local.boot import IMAGE_ON_INSTANCE as LOCAL_IMAGE
from local.ssm import (
    InvalidDocument,
    InvalidParameters,
    command_status,
    list_invocations,
    outcome,
    shell_steps,
    undeliverable,
)

USER_DATA = "\n".join(
    [
        "#!/bin/bash",
        *boot_commands(
            app="web",
            env="demo",
            bucket="platform-demo-releasebucket-1a2b",
            image_url="s3://cdk-hnb659fds-assets-123456789012-us-east-1/abc.zip",
            region="us-east-1",
            stack="Platform-demo",
            signal_resource="AppwebInstancesASG658A8D1C",
            logs=LogSettings(destination="logs.example.com:514", tls=True),
            log_group="Platform-demo-AppLogs-1a2b",
        ),
    ]
)


def test_the_user_data_runs_with_only_the_named_adaptations() -> None:
    assert LOCAL_IMAGE == IMAGE_ON_INSTANCE
    assert adapt_user_data(USER_DATA) == (
        "#!/bin/bash\n"
        "set -euo pipefail\n"
        "export AWS_DEFAULT_REGION=us-east-1\n"
        'signal() { echo "boot: would signal CloudFormation: exit code $1"; }\n'
        "trap 'signal 1' ERR\n"
        "SLIPWAY_APP=web SLIPWAY_ENV=demo SLIPWAY_BUCKET=platform-demo-releasebucket-1a2b SLIPWAY_LOG_DESTINATION="
        " SLIPWAY_LOG_TLS=true SLIPWAY_LOG_GROUP=Platform-demo-AppLogs-1a2b bash /opt/slipway/image/provision.sh\n"
        'current=$(python3 -c \'import os, sys, boto3; s3 = boto3.client("s3", '
        'endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3")); listed = s3.list_objects_v2(Bucket=sys.argv[1], '
        'Prefix=sys.argv[2]); print("\\t".join(o["Key"] for o in listed.get("Contents", [])) or "None")\''
        " platform-demo-releasebucket-1a2b web/demo/current)\n"
        'if [ "$current" = web/demo/current ]; then /home/deploy/bin/deploy'
        " s3://platform-demo-releasebucket-1a2b/web/demo/current; fi\n"
        "signal 0\n"
    )
    assert {a.name for a in ADAPTATIONS} == {"cfn-signal", "base image", "log forwarding", "current release"}


def test_user_data_that_changed_under_an_adaptation_stops_with_what_to_do() -> None:
    changed = USER_DATA.replace("aws s3 cp ", "aws s3 sync ")
    with pytest.raises(UserDataChanged, match=r"has 0 lines starting 'aws s3 cp '.*update local/boot\.py"):
        adapt_user_data(changed)


BUCKET = "platform-demo-releasebucket-1a2b"
# The document as moto holds it: its pattern with the bucket CloudFormation resolved.
DOCUMENT = deploy_document_content(bucket_pattern=re.escape(BUCKET), apps=["web", "billing"], env="demo")


@pytest.mark.parametrize(
    ("action", "argv", "process"),
    [
        (None, ["{url}"], None),
        ("deploy", ["{url}"], None),
        ("stage", ["--stage", "{url}"], None),
        ("activate", ["--activate", "{url}"], None),
        ("restart", ["--restart", "{url}"], None),
        ("restart", ["--restart", "{url}", "--process", "worker"], "worker"),
    ],
)
def test_the_deploy_document_runs_the_deploy_program_in_the_mode_asked(
    action: str | None, argv: list[str], process: str | None
) -> None:
    url = f"s3://{BUCKET}/web/demo/r3"
    parameters = {"ReleaseUrl": [url], **({"Action": [action]} if action else {})}
    if process:
        parameters["Process"] = [process]
    [step] = shell_steps(DOCUMENT, parameters)
    assert (step.name, step.timeout_seconds) == ("Deploy", 900)
    # The script as the SSM agent runs it, the deploy program replaced by one that prints its arguments.
    script = step.script.replace("exec /home/deploy/bin/deploy", "exec printf '%s\\n'")
    ran = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert ran.stdout.splitlines() == [a.format(url=url) for a in argv]


def test_an_action_the_document_does_not_admit_is_refused() -> None:
    with pytest.raises(InvalidParameters, match=re.escape('Parameter "Action" "reboot" failed to satisfy')):
        shell_steps(DOCUMENT, {"ReleaseUrl": [f"s3://{BUCKET}/web/demo/r3"], "Action": ["reboot"]})
    with pytest.raises(InvalidParameters, match=re.escape('Parameter "Process" "web; reboot" failed to satisfy')):
        shell_steps(
            DOCUMENT,
            {"ReleaseUrl": [f"s3://{BUCKET}/web/demo/r3"], "Action": ["restart"], "Process": ["web; reboot"]},
        )


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"ReleaseUrl": [f"s3://{BUCKET}/web/staging/r3"]}, "failed to satisfy constraint: allowedPattern"),
        ({"ReleaseUrl": [f"s3://{BUCKET}/web/demo/r3; rm -rf /"]}, "failed to satisfy constraint"),
        ({"ReleaseUrl": ["s3://other-bucket/web/demo/r3"]}, "failed to satisfy constraint"),
        ({"ReleaseUrl": [f"s3://{BUCKET}/web/demo/r1", f"s3://{BUCKET}/web/demo/r2"]}, "give exactly one value"),
        ({}, 'Parameter "ReleaseUrl" is required and has no default'),
        ({"ReleaseUrl": [f"s3://{BUCKET}/web/demo/r3"], "Other": ["x"]}, "declares no parameter Other"),
    ],
)
def test_a_parameter_the_document_does_not_admit_is_refused_before_anything_runs(
    parameters: dict[str, list[str]], message: str
) -> None:
    with pytest.raises(InvalidParameters, match=re.escape(message)):
        shell_steps(DOCUMENT, parameters)


def test_documents_the_local_agent_cannot_run_are_refused() -> None:
    with pytest.raises(InvalidDocument, match=r"runs schema 2\.2 documents"):
        shell_steps({**DOCUMENT, "schemaVersion": "1.2"}, {})
    other = {**DOCUMENT, "mainSteps": [{"action": "aws:runPowerShellScript", "name": "Win", "inputs": {}}]}
    with pytest.raises(InvalidDocument, match="'Win' is aws:runPowerShellScript"):
        shell_steps(other, {"ReleaseUrl": [f"s3://{BUCKET}/web/demo/r3"]})


def test_an_invocation_reports_the_scripts_exit_and_output_cut_where_ssm_cuts_it() -> None:
    assert outcome(0, "ok\n", "") == {
        "Status": "Success",
        "StatusDetails": "Success",
        "ResponseCode": 0,
        "StandardOutputContent": "ok\n",
        "StandardErrorContent": "",
    }
    failed = outcome(1, "x" * 30_000, "e" * 9_000)
    assert (failed["Status"], failed["StatusDetails"], failed["ResponseCode"]) == ("Failed", "Failed", 1)
    assert (len(failed["StandardOutputContent"]), len(failed["StandardErrorContent"])) == (24_000, 8_000)
    assert outcome(124, "", "")["Status"] == "TimedOut" and outcome(124, "", "")["StatusDetails"] == "ExecutionTimedOut"
    assert undeliverable("Undeliverable")["Status"] == "Failed"
    assert undeliverable("DeliveryTimedOut")["Status"] == "TimedOut"
    assert command_status(["Success", "InProgress"]) == ("InProgress", "InProgress")
    assert command_status(["Success", "Failed"]) == ("Failed", "Failed")
    assert command_status(["Success", "Success"]) == ("Success", "Success")


@dataclass
class FakeCommand:
    """The attributes of moto's Command that ListCommandInvocations reads."""

    command_id: str
    requested_date_time: datetime
    invocations: list[dict[str, Any]]
    comment: str = "slipway deploy web demo r3 by admin"
    document_name: str = "Platform-demo-Deploy"
    service_role_arn: str = ""
    notification_config: dict[str, Any] = field(default_factory=dict)


def _invocation(instance: str, status: str, out: str = "", err: str = "") -> dict[str, Any]:
    return {
        "InstanceId": instance,
        "Status": status,
        "StatusDetails": status,
        "ResponseCode": 0 if status == "Success" else 1,
        "PluginName": "Deploy",
        "ExecutionStartDateTime": "2025-01-01T00:00:00+00:00",
        "ExecutionEndDateTime": "2025-01-01T00:00:05+00:00",
        "StandardOutputContent": out,
        "StandardErrorContent": err,
    }


def test_list_command_invocations_newest_first_with_details_and_pages() -> None:
    old = FakeCommand("c-old", datetime(2025, 1, 1, tzinfo=UTC), [_invocation("i-1", "Success")])
    new = FakeCommand(
        "c-new",
        datetime(2025, 1, 2, tzinfo=UTC),
        [_invocation("i-1", "Success", "done\n"), _invocation("i-2", "Failed", "tried\n", "broke\n")],
    )
    listed, token = list_invocations([old, new])
    assert [(i["CommandId"], i["InstanceId"]) for i in listed] == [("c-new", "i-1"), ("c-new", "i-2"), ("c-old", "i-1")]
    assert token is None and "CommandPlugins" not in listed[0]
    [failed], _ = list_invocations([old, new], command_id="c-new", instance_id="i-2", details=True)
    assert failed["Status"] == "Failed" and failed["DocumentName"] == "Platform-demo-Deploy"
    [plugin] = failed["CommandPlugins"]
    assert plugin["Name"] == "Deploy" and plugin["ResponseCode"] == 1
    assert plugin["Output"] == "tried\n\n----------ERROR-------\nbroke\n"
    assert plugin["ResponseFinishDateTime"] == datetime(2025, 1, 1, 0, 0, 5, tzinfo=UTC)
    first, token = list_invocations([old, new], max_results=2)
    assert len(first) == 2 and token == "2"
    rest, token = list_invocations([old, new], max_results=2, next_token="2")
    assert [i["CommandId"] for i in rest] == ["c-old"] and token is None
