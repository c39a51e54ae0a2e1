"""The release workflow's tasks: start the build, follow it, publish its slug as a release.

One Lambda, one small function per state, like the rollout's tasks. The state (set by the
API when it finalizes an upload)::

    app, env, upload_id, execution         what is built (who asked is in the upload's record)
    build: {...}                           slipway.settings.BuildSettings (as JSON)
    runtime: {...}                         slipway.settings.AppRuntime: what the release records
    bucket, timing: {...}                  the release bucket; slipway.settings.Timing
    build_id, checked_at                   the CodeBuild build being followed (start)
    verdict, reason                        the latest check (check)
    release                                the release made (publish)

Every step notes where the build stands in the upload's record, which ``GET .../builds/{id}``
reads: a failed build makes no release and says why there.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from slipway import aws
from slipway.builds.requests import build_verdict, failure_reason, start_build_request
from slipway.publisher import FAILED, Publisher
from slipway.releases import ReleaseError
from slipway.settings import AppRuntime, BuildSettings, Timing
from slipway.store import Bucket

State = dict[str, Any]
LOG_TAIL = 100


class BuildError(Exception):
    """A step of the release workflow cannot go on; the workflow records why and fails."""


def _now() -> datetime:
    return datetime.now(UTC)


def _publisher(state: State) -> Publisher:
    return Publisher(
        Bucket(aws.client("s3"), state["bucket"]),
        app=state["app"],
        env=state["env"],
        runtime=AppRuntime.from_json(state["runtime"]),
        max_source_bytes=0,  # nothing is uploaded here: the limit was applied when the source was
    )


def start(state: State) -> State:
    """Start the build of the upload's source on the app's CodeBuild project."""
    publisher = _publisher(state)
    request = start_build_request(
        BuildSettings.from_json(state["build"]),
        bucket=state["bucket"],
        keys=publisher.keys,
        upload_id=state["upload_id"],
    )
    started = aws.client("codebuild").start_build(**request)["build"]
    publisher.note_build(state["upload_id"], build_id=started["id"])
    return {**state, "build_id": started["id"], "checked_at": _now().isoformat()}


def check(state: State) -> State:
    """Where the build stands: ``WAIT``, ``READY`` or ``FAILED`` with the reason."""
    [build] = aws.client("codebuild").batch_get_builds(ids=[state["build_id"]])["builds"]
    verdict = build_verdict(build)
    if verdict == "FAILED":
        return {**state, "verdict": verdict, "reason": failure_reason(build, _log_tail(build))}
    waited = (_now() - datetime.fromisoformat(state["checked_at"])).total_seconds()
    timeout = Timing.from_json(state["timing"]).build_timeout
    if verdict == "WAIT" and waited > timeout:
        aws.client("codebuild").stop_build(id=state["build_id"])
        return {**state, "verdict": "FAILED", "reason": f"the build did not finish in {timeout} s and was stopped"}
    return {**state, "verdict": verdict, "reason": build.get("currentPhase", "")}


def _log_tail(build: Mapping[str, Any]) -> list[str]:
    logs = build.get("logs", {})
    if not logs.get("groupName") or not logs.get("streamName"):
        return []
    client = aws.client("logs")
    try:
        events = client.get_log_events(
            logGroupName=logs["groupName"], logStreamName=logs["streamName"], startFromHead=False, limit=LOG_TAIL
        )["events"]
    except client.exceptions.ResourceNotFoundException:
        return []
    return [event["message"] for event in events]


def publish(state: State) -> State:
    """The build succeeded: its slug (checked like any upload) becomes the next release."""
    try:
        release = _publisher(state).publish_upload(state["upload_id"])
    except ReleaseError as error:
        raise BuildError(str(error)) from None
    return {**state, "release": release["id"]}


def fail(state: State) -> State:
    """Note why the build made no release (a failed build, or a step that raised)."""
    reason = state.get("reason") or _caught(state)
    _publisher(state).note_build(state["upload_id"], status=FAILED, error=reason)
    return {**state, "reason": reason}


def _caught(state: State) -> str:
    error = state.get("error") or {}
    cause = error.get("Cause", "")
    with contextlib.suppress(ValueError, AttributeError):  # Lambda's error payload, when it is one
        cause = json.loads(cause).get("errorMessage", cause)
    return f"{error.get('Error', 'error')}: {cause}" if error else "the build failed"


TASKS: dict[str, Callable[[State], State]] = {"start": start, "check": check, "publish": publish, "fail": fail}


def handler(event: Mapping[str, Any], context: Any) -> State:
    """The Lambda entry point: ``{"task": "<name>", "state": {...}}``."""
    state = dict(event["state"])
    state.setdefault("execution", event.get("execution", ""))
    with aws.throttling_is_retried():
        return TASKS[event["task"]](state)
