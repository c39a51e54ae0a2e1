"""The apps' logs (``slipway logs``): every process's lines, release phase, one-offs and deploy
output included, as the CloudWatch agent ships them to the environment's log group.

On an instance (``image/provision.sh``) rsyslog writes the journal lines of ``<app>-*`` as JSON
(``time``, ``process``, ``message``) to one file the agent ships to the stream
``<app>/<instance id>``. This module reads them back in time order. Pure but for :func:`read`,
which pages ``FilterLogEvents`` with the client it is given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from slipway.releases import ReleaseError

PAGE_EVENTS = 1000  # FilterLogEvents' own limit per call
MAX_PAGES = 5  # per request: the rest comes with the next request's `after`


def stream_prefix(app: str, instance: str | None = None) -> str:
    """The streams of ``app`` (of one of its instances): ``web/`` or ``web/i-0abc``."""
    return f"{app}/{instance or ''}"


def entry(event: Mapping[str, Any], app: str) -> dict[str, Any]:
    """One log line as the API shows it; a line that is not the agent's JSON is shown as it is."""
    instance = str(event["logStreamName"]).split("/", 1)[-1]
    message, process = str(event.get("message", "")), None
    try:
        parsed = json.loads(message)
        if isinstance(parsed, dict) and "message" in parsed:
            # rsyslog's msg keeps the one space that followed "tag:" in the syslog line.
            message, process = str(parsed["message"]).removeprefix(" "), str(parsed.get("process") or "")
    except ValueError:
        pass
    return {
        "id": str(event.get("eventId", "")),
        "timestamp": int(event["timestamp"]),
        "time": datetime.fromtimestamp(int(event["timestamp"]) / 1000, UTC).isoformat(timespec="milliseconds"),
        "instance": instance,
        "process": process.removeprefix(f"{app}-") if process else None,
        "message": message.rstrip("\n"),
    }


def parse_start(text: str | None) -> int:
    """The ``start`` query value: milliseconds since the epoch; 400 naming the form."""
    try:
        start = int(text) if text else 0
    except ValueError:
        raise ReleaseError(
            400, f"start must be milliseconds since 1970 as digits, e.g. 1764612000000; got {text!r}"
        ) from None
    if start < 0:
        raise ReleaseError(400, "start must be 0 or more milliseconds since 1970")
    return start


def read(
    logs: Any, group: str, app: str, *, start: int, instance: str | None, process: str | None, after: str | None
) -> dict[str, Any]:
    """The lines of ``app`` from ``start`` on (of one instance and/or process type), oldest first,
    and the token to read on from (``None``: nothing more now; ask again with a later start)."""
    prefix = stream_prefix(app, instance)
    request: dict[str, Any] = {"logGroupName": group, "logStreamNamePrefix": prefix, "startTime": start}
    events: list[dict[str, Any]] = []
    token = after
    for _ in range(MAX_PAGES):
        if token:
            request["nextToken"] = token
        try:
            page = logs.filter_log_events(**request, limit=PAGE_EVENTS)
        except logs.exceptions.ResourceNotFoundException:
            raise ReleaseError(503, f"the apps' log group {group} does not exist; deploy the stack") from None
        events += page["events"]
        token = page.get("nextToken")
        if not token:
            break
    # The prefix again, and time order across streams: what FilterLogEvents promises, which moto does not keep.
    mine = sorted(
        (e for e in events if str(e["logStreamName"]).startswith(prefix)),
        key=lambda e: (e["timestamp"], str(e.get("eventId", ""))),
    )
    lines = [entry(e, app) for e in mine]
    if process:
        lines = [line for line in lines if line["process"] == process]
    return {"lines": lines, "next": token}
