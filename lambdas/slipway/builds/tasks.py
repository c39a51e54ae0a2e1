"""The release workflow's tasks: start the build, follow it, publish its slug as a release.

One Lambda, one small function per state, like the rollout's tasks; its role is the release
writer's (:mod:`slipway.writer`), the only one that may write releases. The input (set by the API
when it finalizes an upload) says only what to build; the project, the bucket, what the release
records and the pacing come from the environment's own settings (:mod:`slipway.configured`),
read again by each task::

    app, env, upload_id, execution         what is built (who asked is in the upload's record)
    timing: {...}                          slipway.settings.Timing (start, for the Wait states)
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
from slipway.configured import Configured, NotConfigured, configured
from slipway.publisher import FAILED
from slipway.releases import ReleaseError
from slipway.settings import Timing
from slipway.store import Bucket
from slipway.writer import ReleaseWriter

State = dict[str, Any]
LOG_TAIL = 100


class BuildError(Exception):
    """A step of the release workflow cannot go on; the workflow records why and fails."""


def _now() -> datetime:
    return datetime.now(UTC)


def _configured(state: State) -> Configured:
    try:
        found = configured(str(state["app"]), str(state["env"]))
    except NotConfigured as error:
        raise BuildError(str(error)) from None
    if found.settings.build is None:
        raise BuildError(f"{state['app']} has no builder in {state['env']}; deploy the Platform-{state['env']} stack")
    return found


def _writer(state: State) -> ReleaseWriter:
    found = _configured(state)
    return ReleaseWriter(
        Bucket(aws.client("s3"), found.bucket), app=found.app, env=found.env, runtime=found.settings.runtime
    )


def start(state: State) -> State:
    """Start the build of the upload's source on the app's CodeBuild project."""
    unknown = sorted(set(state) - {"app", "env", "upload_id", "execution"})
    if unknown:
        raise BuildError(f"the release workflow's input names {', '.join(unknown)}: it takes app, env and upload_id")
    found = _configured(state)
    assert found.settings.build is not None
    writer = _writer(state)
    request = start_build_request(
        found.settings.build, bucket=found.bucket, keys=writer.keys, upload_id=str(state["upload_id"])
    )
    started = aws.client("codebuild").start_build(**request)["build"]
    writer.uploads.note_build(state["upload_id"], build_id=started["id"])
    return {
        **state,
        "build_id": started["id"],
        "checked_at": _now().isoformat(),
        "timing": found.timing.to_json(),
    }


def check(state: State) -> State:
    """Where the build stands: ``WAIT``, ``READY`` or ``FAILED`` with the reason."""
    [build] = aws.client("codebuild").batch_get_builds(ids=[state["build_id"]])["builds"]
    verdict = build_verdict(build)
    if verdict == "FAILED":
        return {**state, "verdict": verdict, "reason": failure_reason(build, _log_tail(build))}
    waited = (_now() - datetime.fromisoformat(state["checked_at"])).total_seconds()
    timeout = Timing.from_json(state["timing"]).build_timeout  # what start read from the settings
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
        release = _writer(state).publish_build(state["upload_id"])
    except ReleaseError as error:
        raise BuildError(str(error)) from None
    return {**state, "release": release["id"]}


def fail(state: State) -> State:
    """Note why the build made no release (a failed build, or a step that raised)."""
    # A step that raised says why under "error"; a failed build's check, under "reason" (which a
    # successful check also leaves: the step after it may still fail).
    reason = _caught(state) if state.get("error") else state.get("reason") or _caught(state)
    _writer(state).uploads.note_build(state["upload_id"], status=FAILED, error=reason)
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
    if "execution" in event:  # Step Functions names the execution; an input that does is not believed
        state["execution"] = event["execution"]
    with aws.throttling_is_retried():
        return TASKS[event["task"]](state)
