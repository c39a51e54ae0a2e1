"""Deploys as the API shows them: one rollout execution each. Pure: no AWS calls.

A deploy's id is its Step Functions execution name, ``<app>-<release>-<UTC time>-<4 hex>``,
so deploys of an app list by prefix and read in order. Its view is built from the
execution's description and the state the last task left in the history.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from slipway.rollout.request import DEPLOY, KINDS, RESTART, ROLLBACK, RolloutRequest
from slipway.rollout.steps import BATCH_STATES, step
from slipway.rollout.strategy import Strategy
from slipway_release import names

__all__ = ["DEPLOY", "KINDS", "RESTART", "ROLLBACK", "deploy_id", "deploy_of", "execution_input", "view"]

_STARTED = "[0-9]{8}T[0-9]{6}Z-[0-9a-f]{4}"  # UTC start, then 4 random hex digits
# As documents spell it (the OpenAPI document's deploy parameter); the parser below names its parts.
DEPLOY_ID_PATTERN = f"{names.APP_NAME}-{names.RELEASE_ID}-{_STARTED}"
DEPLOY_ID = re.compile(f"(?P<app>{names.APP_NAME})-(?P<release>{names.RELEASE_ID})-{_STARTED}")


def deploy_id(app: str, release: str, now: datetime, suffix: str) -> str:
    """The execution name of a deploy started at ``now``."""
    return f"{app}-{release}-{now.strftime('%Y%m%dT%H%M%SZ')}-{suffix}"


def deploy_of(deploy: str) -> tuple[str, str] | None:
    """The (app, release) a deploy id names, or ``None`` if it is not a deploy id.

    Unambiguous although app names may hold ``-r1``: only one split leaves a time stamp after the release.
    """
    match = DEPLOY_ID.fullmatch(deploy)
    return (match.group("app"), match.group("release")) if match else None


def execution_input(
    *, app: str, env: str, release: str, user: str, kind: str, strategy: Strategy, process: str | None = None
) -> dict[str, Any]:
    """The rollout state machine's input (:class:`slipway.rollout.request.RolloutRequest`): what to
    deploy and who asked, never where (the rollout derives its fleet itself); ``process``: a restart
    of only that Procfile process type."""
    return RolloutRequest(
        app=app, env=env, release=release, user=user, kind=kind, strategy=strategy, process=process
    ).to_json()


def last_state(events: Iterable[Mapping[str, Any]]) -> tuple[str | None, dict[str, Any]]:
    """The latest state entered, and the latest state a task returned, from an execution history."""
    entered: str | None = None
    state: dict[str, Any] = {}
    for event in events:
        if event["type"].endswith("StateEntered"):
            entered = event["stateEnteredEventDetails"]["name"]
        elif event["type"] == "TaskStateExited":
            output = event["stateExitedEventDetails"].get("output")
            if output:
                state = json.loads(output)
    return entered, state


def timeline(events: Iterable[Mapping[str, Any]], stopped_at: Any = None) -> list[dict[str, Any]]:
    """The rollout's steps in words, in order: each with its batch (1-based; ``None`` outside the
    batches) and how many batches the plan then had (a rollback plans its own), when it started
    and how long it took (``None`` while it runs). Consecutive states
    with the same words and batch are one step."""
    entries: list[dict[str, Any]] = []
    for event in events:
        # Choice states decide in no time: their words would only repeat a step's.
        if not event["type"].endswith("StateEntered") or event["type"] == "ChoiceStateEntered":
            continue
        details = event["stateEnteredEventDetails"]
        batch, batches, rolling_back, restarting = None, None, False, False
        if details["name"] in BATCH_STATES:
            state = json.loads(details.get("input") or "{}")
            batch, batches = int(state.get("cursor", 0)) + 1, len(state.get("batches") or [])
            rolling_back, restarting = bool(state.get("rolling_back")), state.get("kind") == RESTART
        words = step(details["name"], rolling_back=rolling_back, restarting=restarting)
        if entries and (entries[-1]["step"], entries[-1]["batch"]) == (words, batch):
            continue
        entries.append({"step": words, "batch": batch, "batches": batches, "at": _when(event["timestamp"])})
    if not entries:
        return []
    ends = [entry["at"] for entry in entries[1:]] + [_when(stopped_at) if stopped_at is not None else None]
    return [
        {
            "step": entry["step"],
            "batch": entry["batch"],
            "batches": entry["batches"],
            "started_at": entry["at"].isoformat(),
            "seconds": None if end is None else round((end - entry["at"]).total_seconds(), 1),
        }
        for entry, end in zip(entries, ends, strict=True)
    ]


def _when(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def view(description: Mapping[str, Any], events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """What ``GET .../deploys/{id}`` answers: status, progress by batch, the timeline of its steps,
    the failure if any."""
    request = json.loads(description.get("input") or "{}")
    events = list(events)
    entered, state = last_state(events)
    batches = state.get("batches") or []
    # While rolling back, the batches are those putting instances back, done once restored.
    done = set(state.get("restored" if state.get("rolling_back") else "done") or [])
    result: dict[str, Any] = {
        "id": description["name"],
        "app": request.get("app"),
        "env": request.get("env"),
        "release": request.get("release"),
        "kind": request.get("kind"),
        "process": request.get("process"),
        "user": request.get("user"),
        "strategy": request.get("strategy"),
        "status": description["status"],
        "started_at": _time(description.get("startDate")),
        "stopped_at": _time(description.get("stopDate")),
        "step": step(entered),
        "previous": state.get("previous"),
        "batches": [
            {
                "instances": batch,
                "state": "done"
                if set(batch) <= done
                else ("current" if i == state.get("cursor") and description["status"] == "RUNNING" else "pending"),
            }
            for i, batch in enumerate(batches)
        ],
        "converged": state.get("converged") or [],
        "rolled_back": state.get("rolled_back") or [],
        "failure": state.get("failure"),
        "timeline": timeline(events, description.get("stopDate")),
    }
    if description["status"] == "FAILED":
        result["error"] = {"error": description.get("error"), "cause": description.get("cause")}
    return result


def _time(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, datetime) else str(value)
