"""SSM Run Command on local instances: what the SSM agent would run, and what SSM reports of it.

:func:`shell_steps` reads a Command document (schema 2.2) as SSM does when a command is
sent: every parameter checked against its declaration (type, default, ``allowedPattern``;
a value that fails is refused at ``SendCommand`` with ``InvalidParameters``, as on AWS),
then each ``aws:runShellScript`` step's ``runCommand`` with ``{{ Name }}`` substituted.
:func:`outcome` turns how a step's script ended into an invocation's fields (status, exit
code, output cut where SSM cuts it); :func:`list_invocations` answers
``ListCommandInvocations``, which moto lacks, from the commands moto keeps.

Pure: :mod:`local.fleets` runs the scripts inside the instances and :mod:`local.hooks`
puts these answers into moto.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# What GetCommandInvocation keeps of a step's output, and ListCommandInvocations' Output.
MAX_STDOUT = 24_000
MAX_STDERR = 8_000
MAX_PLUGIN_OUTPUT = 2_500
DEFAULT_STEP_TIMEOUT = 3_600  # aws:runShellScript's timeoutSeconds when the document sets none
MAX_RESULTS = 50
TIMED_OUT_EXIT = 124  # what `timeout` returns for a script it stopped
# Where the SSM agent keeps a command's script on an instance.
ORCHESTRATION = "/var/lib/amazon/ssm/{instance}/document/orchestration/{command}/awsrunShellScript/{step}"
_REFERENCE = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")


class Refused(ValueError):
    """``SendCommand`` refuses the command; ``code`` is SSM's error code."""

    code = "ValidationException"


class InvalidParameters(Refused):
    """A parameter the document does not admit."""

    code = "InvalidParameters"


class InvalidDocument(Refused):
    """The document is not one the local agent can run."""

    code = "InvalidDocument"


class InvalidInstanceId(Refused):
    """An instance no fleet of the local platform has."""

    code = "InvalidInstanceId"


@dataclass(frozen=True)
class Step:
    """One ``aws:runShellScript`` step, ready to run."""

    name: str
    script: str
    timeout_seconds: int


def _values(declared: Mapping[str, Any], given: Mapping[str, Sequence[str]]) -> dict[str, str]:
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise InvalidParameters(f"the document declares no parameter {', '.join(unknown)}")
    values = {}
    for name, declaration in declared.items():
        if name in given:
            if len(given[name]) != 1:
                raise InvalidParameters(f'Parameter "{name}" is a String: give exactly one value')
            value = str(given[name][0])
        elif "default" in declaration:
            value = str(declaration["default"])
        else:
            raise InvalidParameters(f'Parameter "{name}" is required and has no default')
        pattern = declaration.get("allowedPattern")
        if pattern is not None and re.search(pattern, value) is None:
            raise InvalidParameters(f'Parameter "{name}" "{value}" failed to satisfy constraint: allowedPattern')
        values[name] = value
    return values


def shell_steps(content: Mapping[str, Any], parameters: Mapping[str, Sequence[str]]) -> list[Step]:
    """The steps the SSM agent would run for ``parameters``; refused as ``SendCommand`` refuses them."""
    if content.get("schemaVersion") != "2.2":
        raise InvalidDocument(f"schema {content.get('schemaVersion')!r}: the local SSM agent runs schema 2.2 documents")
    values = _values(content.get("parameters") or {}, parameters)

    def substitute(text: str) -> str:
        return _REFERENCE.sub(lambda found: str(values.get(found.group(1), found.group(0))), text)

    steps = []
    for step in content.get("mainSteps") or []:
        if step.get("action") != "aws:runShellScript":
            raise InvalidDocument(f"step {step.get('name')!r} is {step.get('action')}: only aws:runShellScript runs")
        inputs = step.get("inputs") or {}
        commands = inputs.get("runCommand") or []
        lines = [commands] if isinstance(commands, str) else list(commands)
        steps.append(
            Step(
                name=str(step.get("name")),
                script="\n".join(substitute(str(line)) for line in lines) + "\n",
                timeout_seconds=int(inputs.get("timeoutSeconds") or DEFAULT_STEP_TIMEOUT),
            )
        )
    if not steps:
        raise InvalidDocument("the document has no steps")
    return steps


def outcome(exit_code: int, stdout: str, stderr: str) -> dict[str, Any]:
    """An invocation's fields once its script ended (``timeout`` inside the instance exits 124)."""
    if exit_code == 0:
        status, details = "Success", "Success"
    elif exit_code == TIMED_OUT_EXIT:
        status, details = "TimedOut", "ExecutionTimedOut"
    else:
        status, details = "Failed", "Failed"
    return {
        "Status": status,
        "StatusDetails": details,
        "ResponseCode": exit_code,
        "StandardOutputContent": stdout[:MAX_STDOUT],
        "StandardErrorContent": stderr[:MAX_STDERR],
    }


def undeliverable(reason: str) -> dict[str, Any]:
    """An invocation that never ran: the instance went away or never came online."""
    return {
        "Status": "Failed" if reason == "Undeliverable" else "TimedOut",
        "StatusDetails": reason,
        "ResponseCode": -1,
        "StandardOutputContent": "",
        "StandardErrorContent": "",
    }


def command_status(statuses: Iterable[str]) -> tuple[str, str]:
    """A command's overall Status and StatusDetails from its invocations' statuses."""
    listed = list(statuses)
    if any(s in ("Pending", "InProgress", "Delayed") for s in listed):
        return "InProgress", "InProgress"
    for status in ("Failed", "TimedOut", "Cancelled"):
        if status in listed:
            return status, status
    return "Success", "Success"


def _timestamp(value: Any) -> Any:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else value


def _plugin_output(invocation: Mapping[str, Any]) -> str:
    out, err = str(invocation.get("StandardOutputContent", "")), str(invocation.get("StandardErrorContent", ""))
    return (out + (f"\n----------ERROR-------\n{err}" if err else ""))[:MAX_PLUGIN_OUTPUT]


def list_invocations(
    commands: Sequence[Any],
    *,
    command_id: str | None = None,
    instance_id: str | None = None,
    details: bool = False,
    max_results: int | None = None,
    next_token: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """``ListCommandInvocations`` over moto's commands (objects with moto's ``Command`` attributes),
    newest first, ``MaxResults`` per page (at most 50) and an index as ``NextToken``."""
    found = []
    for command in sorted(commands, key=lambda c: c.requested_date_time, reverse=True):
        if command_id and command.command_id != command_id:
            continue
        for invocation in command.invocations:
            if instance_id and invocation["InstanceId"] != instance_id:
                continue
            listed: dict[str, Any] = {
                "CommandId": command.command_id,
                "InstanceId": invocation["InstanceId"],
                "InstanceName": "",
                "Comment": command.comment,
                "DocumentName": command.document_name,
                "DocumentVersion": "$DEFAULT",
                "RequestedDateTime": command.requested_date_time,
                "Status": invocation["Status"],
                "StatusDetails": invocation["StatusDetails"],
                "StandardOutputUrl": "",
                "StandardErrorUrl": "",
                "ServiceRole": command.service_role_arn,
                "NotificationConfig": command.notification_config,
            }
            if details:
                listed["CommandPlugins"] = [
                    {
                        "Name": invocation.get("PluginName", "aws:runShellScript"),
                        "Status": invocation["Status"],
                        "StatusDetails": invocation["StatusDetails"],
                        "ResponseCode": invocation.get("ResponseCode", -1),
                        "ResponseStartDateTime": _timestamp(invocation.get("ExecutionStartDateTime")),
                        "ResponseFinishDateTime": _timestamp(invocation.get("ExecutionEndDateTime")),
                        "Output": _plugin_output(invocation),
                        "StandardOutputUrl": "",
                        "StandardErrorUrl": "",
                    }
                ]
            found.append(listed)
    start = int(next_token or 0)
    size = min(max_results or MAX_RESULTS, MAX_RESULTS)
    page = found[start : start + size]
    more = start + size < len(found)
    return page, str(start + size) if more else None
