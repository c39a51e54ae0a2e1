"""What a rollout sends and says, as exact text: the SendCommand request, and the words for
every state of the synthesized state machine."""

from __future__ import annotations

import json
from typing import Any

import pytest

from slipway.rollout.commands import MAX_INSTANCES_PER_COMMAND, send_deploy_requests
from slipway.rollout.steps import STEPS
from slipway.settings import FleetSettings

FLEET = FleetSettings(
    group="Platform-staging-AppwebInstancesASG-1",
    target_group="arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/1",
    alarms=("web-5xx",),
    document="Platform-staging-Deploy",
    output_log_group="Platform-staging-DeployDocumentOutput-1",
    bucket="platform-staging-releasebucket-1",
    url="http://web-staging-1.us-east-1.elb.amazonaws.com",
)
DIGEST = "3f" * 32  # the release.json's sha256 the rollout pinned


def test_the_deploy_command_request_is_exactly_this() -> None:
    [request] = send_deploy_requests(
        FLEET,
        instances=["i-0a", "i-0b"],
        url="s3://platform-staging-releasebucket-1/web/staging/r7",
        digest=DIGEST,
        kind="deploy",
        user="alice",
        timeout_seconds=900,
        action="stage",
    )
    assert request == {
        "DocumentName": "Platform-staging-Deploy",
        "InstanceIds": ["i-0a", "i-0b"],
        "Parameters": {
            "ReleaseUrl": ["s3://platform-staging-releasebucket-1/web/staging/r7"],
            "Action": ["stage"],
            # The manifest the instance must find: it refuses any other before staging and activating.
            "Digest": [DIGEST],
        },
        "Comment": "slipway deploy web staging r7 (stage) by alice",
        "TimeoutSeconds": 900,
        # The deploy program's output reaches the log group the stack made for it.
        "CloudWatchOutputConfig": {
            "CloudWatchLogGroupName": "Platform-staging-DeployDocumentOutput-1",
            "CloudWatchOutputEnabled": True,
        },
    }


def test_a_long_comment_is_cut_to_what_ssm_keeps() -> None:
    [request] = send_deploy_requests(
        FLEET,
        instances=["i-0a"],
        url="s3://bkt/web/staging/r7",
        digest=DIGEST,
        kind="rollback",
        user="x" * 200,
        timeout_seconds=60,
    )
    assert len(request["Comment"]) == 100
    assert request["Comment"].startswith("slipway rollback web staging r7 (deploy) by xxx")


def test_an_action_the_document_does_not_know_is_refused() -> None:
    with pytest.raises(ValueError, match="action 'reboot' is not one of"):
        send_deploy_requests(
            FLEET,
            instances=["i-0a"],
            url="s3://bkt/web/staging/r7",
            digest=DIGEST,
            kind="deploy",
            user="a",
            timeout_seconds=60,
            action="reboot",
        )


def test_more_instances_than_one_command_takes_go_in_several_commands_in_order() -> None:
    instances = [f"i-{n:03d}" for n in range(120)]
    requests = send_deploy_requests(
        FLEET,
        instances=instances,
        url="s3://bkt/web/staging/r7",
        digest=DIGEST,
        kind="deploy",
        user="a",
        timeout_seconds=60,
    )
    assert [len(r["InstanceIds"]) for r in requests] == [50, 50, 20]
    assert [i for r in requests for i in r["InstanceIds"]] == instances
    assert all(r["Parameters"] == requests[0]["Parameters"] for r in requests)


def test_the_limit_per_command_is_ssms_own() -> None:
    import botocore.session

    model = botocore.session.get_session().get_service_model("ssm").operation_model("SendCommand")
    assert model.input_shape.members["InstanceIds"].metadata["max"] == MAX_INSTANCES_PER_COMMAND


def _definition(template: dict[str, Any]) -> dict[str, Any]:
    [machine] = [
        r
        for logical_id, r in template["Resources"].items()
        if r["Type"] == "AWS::StepFunctions::StateMachine" and logical_id.startswith("Rollout")
    ]
    text = "".join(p if isinstance(p, str) else "ARN" for p in machine["Properties"]["DefinitionString"]["Fn::Join"][1])
    definition: dict[str, Any] = json.loads(text)
    return definition


def _states(template: dict[str, Any]) -> set[str]:
    return set(_definition(template)["States"])


def test_every_task_catches_every_error_so_no_failure_strands_the_lock(
    templates: dict[str, dict[str, Any]],
) -> None:
    states = _definition(templates["Platform-staging"])["States"]
    tasks = {name: state for name, state in states.items() if state["Type"] == "Task"}
    assert len(tasks) >= 10
    uncaught = [
        name
        for name, state in tasks.items()
        if not any("States.ALL" in c["ErrorEquals"] for c in state.get("Catch", []))
    ]
    assert uncaught == []
    # ... and, failing the unlock itself, the execution says so (LockLeft) rather than end silently.
    assert {c["Next"] for c in states["Unlock"]["Catch"]} == {"UnlockFailed"}


def test_every_state_of_the_synthesized_machine_has_its_words_and_no_words_are_for_nothing(
    templates: dict[str, dict[str, Any]],
) -> None:
    for template in templates.values():
        states = _states(template)
        assert states - set(STEPS) == set(), "states the API would report by their raw names"
        assert set(STEPS) - states == set(), "words for states the machine does not have"
