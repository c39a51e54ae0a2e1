"""The control plane's AWS clients: one lazy getter, so no module creates a client at import.

Clients retry throttled and transient errors with backoff (botocore's standard mode) before
a caller sees them: a throttled API call is not a failed deploy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

MAX_ATTEMPTS = 8
# The error codes AWS services answer a throttled call with (botocore's own list, and Lambda's).
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
    }
)


class Throttled(Exception):
    """An AWS call was still throttled after the client's own retries. Step Functions retries a task
    that raises it with backoff (``constructs.workflow``): a throttled call is not a failed deploy."""


@cache
def client(service: str) -> Any:
    """The boto3 client of ``service``, created on first use and shared afterwards."""
    import boto3  # imported on first use: tests and the local platform set credentials first
    from botocore.config import Config

    return boto3.client(service, config=Config(retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS}))


@cache
def environment_client(service: str, env: str, region: str) -> Any:
    """A client of ``service`` in the region of environment ``env`` (another environment of this
    account: where a promotion reads the release it ships). On AWS that is the region's own endpoint;
    the local platform, where each environment is an AWS of its own, points it at that one."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        service, region_name=region, config=Config(retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS})
    )


@contextmanager
def throttling_is_retried() -> Iterator[None]:
    """Raise :class:`Throttled` for a throttled AWS call, whatever the service called it."""
    from botocore.exceptions import ClientError

    try:
        yield
    except ClientError as error:
        if is_throttled(error):
            code = error.response["Error"]["Code"]
            raise Throttled(f"{error.operation_name} was throttled ({code}); retried with backoff") from error
        raise


def is_throttled(error: Exception) -> bool:
    """Is ``error`` an AWS call refused for its rate (to be retried, never a failure)?"""
    response = getattr(error, "response", None)
    return isinstance(response, dict) and response.get("Error", {}).get("Code", "") in THROTTLING_CODES


def read_log(logs: Any, group: str, stream: str, after: str | None) -> tuple[list[str], str | None]:
    """A log stream's lines from ``after`` (a token this returned) on, and the token to read on from;
    400 (:class:`~slipway.releases.ReleaseError`) for an ``after`` CloudWatch Logs cannot read."""
    request: dict[str, Any] = {"logGroupName": group, "logStreamName": stream, "startFromHead": True}
    if after:
        request["nextToken"] = after
    try:
        page = logs.get_log_events(**request)
    except logs.exceptions.ResourceNotFoundException:  # its writer (CodeBuild, the SSM agent) makes it on start
        return [], after
    except logs.exceptions.InvalidParameterException:
        if not after:  # the group and stream are the platform's own: not the caller's to fix
            raise
        from slipway.releases import ReleaseError  # here: the authorizer imports this module too, lightly

        raise ReleaseError(
            400, f"after={after[:40]!r} is not a token this API gave; pass the `next` value of the previous answer"
        ) from None
    return [event["message"].rstrip("\n") for event in page["events"]], page.get("nextForwardToken") or after


def read_parameters(ssm: Any, path: str) -> dict[str, str]:
    """The values of the SSM parameters directly under ``path``, by their last name component."""
    found: dict[str, str] = {}
    for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=path, Recursive=False):
        for parameter in page["Parameters"]:
            found[parameter["Name"].rpartition("/")[2]] = parameter["Value"]
    return found
