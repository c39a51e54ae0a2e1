"""The SSM requests a rollout makes, built by pure functions so tests assert their exact text.

The code that sends them is :mod:`slipway.rollout.tasks`; this module only says what is sent.
"""

from __future__ import annotations

from typing import Any

from slipway.settings import FleetSettings
from slipway_release.layout import parse_release_url
from slipway_release.names import is_sha256

# The deploy document's parameters (constructs.deploy_document): the release, and what to do with it.
RELEASE_URL_PARAMETER = "ReleaseUrl"
ACTION_PARAMETER = "Action"
PROCESS_PARAMETER = "Process"  # a restart of only one Procfile process type; empty: all
# The sha256 of the release's release.json, as the rollout pinned it: the instance refuses a
# release whose manifest is not that one, before staging and again before activating.
DIGEST_PARAMETER = "Digest"
# The deploy program's modes (image/README.md): stage only (download, verify, unpack, preflight;
# the serving release untouched), activate a staged release, both, or restart the running one.
STAGE, ACTIVATE, DEPLOY, RESTART = "stage", "activate", "deploy", "restart"
ACTIONS = (DEPLOY, STAGE, ACTIVATE, RESTART)
# SSM keeps a command's comment to 100 characters, and takes at most 50 instance ids a command.
MAX_COMMENT = 100
MAX_INSTANCES_PER_COMMAND = 50


def send_deploy_requests(
    fleet: FleetSettings,
    *,
    instances: list[str],
    url: str,
    digest: str,
    kind: str,
    user: str,
    timeout_seconds: int,
    action: str = DEPLOY,
    process: str | None = None,
) -> list[dict[str, Any]]:
    """The ``SendCommand`` requests that run the deploy document on ``instances`` for ``url``, whose
    manifest must have sha256 ``digest``:
    one per :data:`MAX_INSTANCES_PER_COMMAND` instances (SSM refuses more in one command), in
    order. ``action`` is one of :data:`ACTIONS`.

    Output goes to the fleet's deploy log group (one stream per command and instance), so
    what the deploy program printed stays readable after SSM's own 24,000-character
    excerpt is cut; the comment says who deployed what, as the execution history does.
    """
    if action not in ACTIONS:
        raise ValueError(f"action {action!r} is not one of {ACTIONS}")
    if process is not None and action != RESTART:
        raise ValueError(f"a process type ({process!r}) goes only with the restart action, not {action!r}")
    release = parse_release_url(url)
    if not is_sha256(digest):
        raise ValueError(f"digest {digest!r} is not a sha256 (64 lowercase hex digits)")
    what = f"{action} {process}" if process else action
    comment = f"slipway {kind} {release.app} {release.env} {release.target} ({what}) by {user}"
    parameters = {RELEASE_URL_PARAMETER: [url], ACTION_PARAMETER: [action], DIGEST_PARAMETER: [digest]}
    if process:
        parameters[PROCESS_PARAMETER] = [process]
    return [
        {
            "DocumentName": fleet.document,
            "InstanceIds": list(instances[start : start + MAX_INSTANCES_PER_COMMAND]),
            "Parameters": parameters,
            "Comment": comment[:MAX_COMMENT],
            "TimeoutSeconds": timeout_seconds,
            "CloudWatchOutputConfig": {
                "CloudWatchLogGroupName": fleet.output_log_group,
                "CloudWatchOutputEnabled": True,
            },
        }
        for start in range(0, len(instances), MAX_INSTANCES_PER_COMMAND)
    ]
