"""Slack's request signing, v0: HMAC-SHA256 of ``v0:<timestamp>:<raw body>`` under the app's
signing secret, sent as ``X-Slack-Signature: v0=<hex>``. Pure; constant-time comparison.

https://docs.slack.dev/authentication/verifying-requests-from-slack
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

VERSION = "v0"
# Slack's own advice: refuse a request more than five minutes old (or from the future), so a
# captured request cannot be replayed later.
MAX_AGE_SECONDS = 300
TIMESTAMP_HEADER, SIGNATURE_HEADER = "X-Slack-Request-Timestamp", "X-Slack-Signature"


class SignatureError(ValueError):
    """The request is not one Slack signed now; the message says which check failed."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Slack-Signature`` value Slack sends for ``body`` at ``timestamp``."""
    base = f"{VERSION}:{timestamp}:".encode() + body
    return f"{VERSION}=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), None)


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, now: float) -> None:
    """Raise :class:`SignatureError` unless Slack signed ``body`` with ``secret`` within five minutes of ``now``."""
    timestamp = _header(headers, TIMESTAMP_HEADER)
    signature = _header(headers, SIGNATURE_HEADER)
    if not timestamp or not signature:
        raise SignatureError(f"{TIMESTAMP_HEADER} or {SIGNATURE_HEADER} is missing")
    if not timestamp.isdigit():
        raise SignatureError(f"{TIMESTAMP_HEADER} {timestamp[:20]!r} is not a Unix time")
    if abs(now - int(timestamp)) > MAX_AGE_SECONDS:
        raise SignatureError(
            f"the request is more than {MAX_AGE_SECONDS} s old or ahead; Slack retries are not replayed"
        )
    if not hmac.compare_digest(sign(secret, timestamp, body).encode(), signature.encode()):
        raise SignatureError("the signature does not match the signing secret")
