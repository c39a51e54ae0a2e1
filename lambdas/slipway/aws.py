"""The control plane's AWS clients: one lazy getter, so no module creates a client at import.

Clients retry throttled and transient errors with backoff (botocore's standard mode) before
a caller sees them: a throttled API call is not a failed deploy.
"""

from __future__ import annotations

from functools import cache
from typing import Any

MAX_ATTEMPTS = 8


@cache
def client(service: str) -> Any:
    """The boto3 client of ``service``, created on first use and shared afterwards."""
    import boto3  # imported on first use: tests and the local platform set credentials first
    from botocore.config import Config

    return boto3.client(service, config=Config(retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS}))
