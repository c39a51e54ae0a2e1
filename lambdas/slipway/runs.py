"""One-off commands (``slipway run``): one instance of the fleet runs a command with the current
release's code and config through the ``Platform-<env>-Run`` document, its output streaming to
CloudWatch Logs while it runs and its exit status passed back.

The requests are built by pure functions (tests assert their text); :func:`start` and :func:`show`
send them. Who ran what is in the API's log and in the SSM command's comment.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from slipway.releases import ReleaseError
from slipway.settings import RunSettings
from slipway_release import oneoff

# The run document's parameters (constructs.deploy_document.run_document_content declares them).
RELEASE_PARAMETER, COMMAND_PARAMETER, TIMEOUT_PARAMETER = "Release", "Command", "TimeoutSeconds"
# The document's one step: SSM names the output streams `<command>/<instance>/<step>/stdout`.
STEP = "Run"
# SSM keeps a command's comment to 100 characters.
MAX_COMMENT = 100
# How long SSM may take to deliver the command to the instance (SendCommand's TimeoutSeconds).
DELIVERY_TIMEOUT_SECONDS = 60
DONE = frozenset({"Success", "Failed", "TimedOut", "Cancelled", "Cancelling"})


def comment(app: str, env: str, release: str, user: str) -> str:
    """The command's comment: whose one-off of which release (SSM's history keeps it)."""
    return f"{comment_prefix(app, env)}{release} by {user}"[:MAX_COMMENT]


def comment_prefix(app: str, env: str) -> str:
    """How every one-off of ``app`` in ``env`` begins its comment (at most 66 characters: never cut)."""
    return f"slipway run {app} {env} "


def send_run_request(
    runs: RunSettings, *, instance: str, app: str, env: str, release: str, command: str, timeout: int, user: str
) -> dict[str, Any]:
    """The ``SendCommand`` request of one one-off on ``instance``; its output streams to the run log group."""
    return {
        "DocumentName": runs.document,
        "InstanceIds": [instance],
        "Parameters": {
            RELEASE_PARAMETER: [release],
            COMMAND_PARAMETER: [oneoff.encode(command)],
            TIMEOUT_PARAMETER: [str(oneoff.check_timeout(timeout))],
        },
        "Comment": comment(app, env, release, user),
        "TimeoutSeconds": DELIVERY_TIMEOUT_SECONDS,
        "CloudWatchOutputConfig": {"CloudWatchLogGroupName": runs.log_group, "CloudWatchOutputEnabled": True},
    }


def output_stream(command_id: str, instance: str) -> str:
    """The log stream SSM writes the one-off's output to."""
    return f"{command_id}/{instance}/{STEP}/stdout"


def choose_instance(
    instances: Sequence[Mapping[str, Any]], runs_release: Mapping[str, str | None], current: str
) -> str:
    """An in-service instance to run on, one known to run ``current`` if any (picked at random,
    so one-offs spread over the fleet); 409 if none is in service."""
    serving = [str(i["InstanceId"]) for i in instances if i.get("LifecycleState") == "InService"]
    if not serving:
        raise ReleaseError(409, "no instance is in service to run the command on; see `slipway status`")
    known = [i for i in serving if runs_release.get(i) == current]
    return secrets.choice(known or serving)


def check(command: object, timeout: object) -> tuple[str, int]:
    """The command and time limit of a request; 400 naming the fix (the agent checks them again)."""
    try:
        return oneoff.check_command(command), oneoff.check_timeout(
            oneoff.DEFAULT_TIMEOUT_SECONDS if timeout is None else timeout
        )
    except oneoff.CommandError as error:
        raise ReleaseError(400, str(error)) from None


def view(command: Mapping[str, Any], invocation: Mapping[str, Any] | None) -> dict[str, Any]:
    """A one-off as the API shows it, from ``ListCommands``' command and its invocation."""
    status = str((invocation or {}).get("Status") or command.get("Status") or "Pending")
    done = status in DONE
    code = (invocation or {}).get("ResponseCode")
    instances = list(command.get("InstanceIds") or [])
    return {
        "id": command["CommandId"],
        "instance": instances[0] if instances else None,
        "release": (command.get("Parameters") or {}).get(RELEASE_PARAMETER, [None])[0],
        "status": status,
        "done": done,
        "exit_code": code if done and isinstance(code, int) and code >= 0 else None,
        "comment": command.get("Comment", ""),
    }
