"""The SSM requests a rollout makes, built by pure functions so tests assert their exact text.

The code that sends them is :mod:`slipway.rollout.tasks`; this module only says what is sent.
"""

from __future__ import annotations

from typing import Any

from slipway.settings import FleetSettings
from slipway_release.layout import parse_release_url

# The deploy document's one parameter (constructs.deploy_document.RELEASE_URL_PARAMETER).
RELEASE_URL_PARAMETER = "ReleaseUrl"
# SSM keeps a command's comment to 100 characters.
MAX_COMMENT = 100


def send_deploy_request(
    fleet: FleetSettings, *, instances: list[str], url: str, kind: str, user: str, timeout_seconds: int
) -> dict[str, Any]:
    """The ``SendCommand`` request that runs the deploy document on ``instances`` for ``url``.

    Output goes to the fleet's deploy log group (one stream per command and instance), so
    what the deploy program printed stays readable after SSM's own 24,000-character
    excerpt is cut; the comment says who deployed what, as the execution history does.
    """
    release = parse_release_url(url)
    comment = f"slipway {kind} {release.app} {release.env} {release.target} by {user}"
    return {
        "DocumentName": fleet.document,
        "InstanceIds": list(instances),
        "Parameters": {RELEASE_URL_PARAMETER: [url]},
        "Comment": comment[:MAX_COMMENT],
        "TimeoutSeconds": timeout_seconds,
        "CloudWatchOutputConfig": {"CloudWatchLogGroupName": fleet.output_log_group, "CloudWatchOutputEnabled": True},
    }
