"""What the release workflow asks CodeBuild, and what it makes of the answers: pure.

:func:`start_build_request` is the exact ``StartBuild`` request (a test asserts its text and
botocore's model checks it); :func:`build_verdict` reads a ``BatchGetBuilds`` entry, and
:func:`failure_reason` finds the one line a person needs in a failed build's log.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from slipway.settings import BuildSettings
from slipway_release.layout import SLUG, SOURCE, AppKeys

# The builder's environment variables: where the source is, and where the slug goes.
SOURCE_VARIABLE, SLUG_VARIABLE = "SLIPWAY_SOURCE", "SLIPWAY_SLUG"

IN_PROGRESS = "IN_PROGRESS"
SUCCEEDED = "SUCCEEDED"
# CodeBuild's terminal statuses other than success.
FAILED = {"FAILED", "FAULT", "TIMED_OUT", "STOPPED"}


def start_build_request(build: BuildSettings, *, bucket: str, keys: AppKeys, upload_id: str) -> dict[str, Any]:
    """The ``StartBuild`` request that builds upload ``upload_id`` of ``keys``' app into its slug.

    The dependency cache is the app's own in this environment (``caches/<app>/<env>/``), so a
    rebuild with the same lock file reuses it; the upload id makes a retried start one build.
    """
    return {
        "projectName": build.project,
        "environmentVariablesOverride": [
            {"name": SOURCE_VARIABLE, "value": f"s3://{bucket}/{keys.upload(upload_id, SOURCE)}", "type": "PLAINTEXT"},
            {"name": SLUG_VARIABLE, "value": f"s3://{bucket}/{keys.upload(upload_id, SLUG)}", "type": "PLAINTEXT"},
        ],
        "cacheOverride": {"type": "S3", "location": f"{bucket}/{keys.caches.rstrip('/')}"},
        "idempotencyToken": upload_id,
    }


def build_verdict(build: Mapping[str, Any]) -> str:
    """``WAIT``, ``READY`` (succeeded) or ``FAILED`` for a ``BatchGetBuilds`` entry."""
    status = build.get("buildStatus", IN_PROGRESS)
    if status == SUCCEEDED:
        return "READY"
    if status in FAILED:
        return "FAILED"
    return "WAIT"


def failure_reason(build: Mapping[str, Any], log_lines: Iterable[str]) -> str:
    """The one line that says why a build failed: the build program's own error when it said one,
    else the failed phase's message from CodeBuild."""
    for line in reversed(list(log_lines)):
        text = line.strip()
        if text.startswith("{") and '"result"' in text:
            try:
                result = json.loads(text)
            except ValueError:
                continue
            if isinstance(result, dict) and result.get("result") == "failed" and result.get("error"):
                return str(result["error"])
    for phase in build.get("phases", []):
        if phase.get("phaseStatus") not in (None, SUCCEEDED):
            messages = [c.get("message", "") for c in phase.get("contexts", []) if c.get("message")]
            detail = f": {messages[-1]}" if messages else ""
            return f"the build failed in its {phase.get('phaseType', 'unknown').lower()} phase{detail}"
    return f"the build ended {build.get('buildStatus', 'without a status')}"


def execution_name(app: str, upload_id: str) -> str:
    """The release workflow's execution for an upload: one per upload, so a retried start is refused."""
    return f"{app}-{upload_id}"


def workflow_input(*, app: str, env: str, upload_id: str) -> dict[str, Any]:
    """The release workflow's input (see :mod:`slipway.builds.tasks`): what to build, never where or
    how (the tasks read the app's builder, bucket and pacing from the environment's settings)."""
    return {"app": app, "env": env, "upload_id": upload_id}
