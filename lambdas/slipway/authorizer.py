"""API Gateway REST request authorizer: HTTP Basic credentials checked against Secrets Manager.

The secret (``CREDENTIALS_SECRET_ARN``) is a JSON object of users and their passwords,
``{"admin": "<password>", "ana": "<password>"}``. A request with a matching
``Authorization: Basic base64(user:password)`` header gets a policy allowing every
method of the API's stage, and the user name in the authorizer context
(``$context.authorizer.user``, ``event.requestContext.authorizer.user``), so every
action records who did it. Anything else is answered 401 by API Gateway.

Parsing, checking and the policy are pure functions; :func:`handler` and
:func:`load_users` are the only I/O. Neither passwords nor the header are ever logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from slipway import aws

logger = logging.getLogger(__name__)
logger.setLevel(logging.INFO)

# How long a Lambda execution environment keeps the users it read from Secrets Manager.
# A password change or a removed user takes effect within this time plus API Gateway's
# own cache of authorizer results (ControlPlane's AUTHORIZER_CACHE, 5 minutes).
CREDENTIALS_CACHE_SECONDS = 300.0
# The exact message that makes API Gateway answer 401 (and send WWW-Authenticate).
UNAUTHORIZED = "Unauthorized"


@dataclass(frozen=True)
class Credentials:
    """A user name and password as sent by the client."""

    user: str
    password: str

    def __repr__(self) -> str:
        # Keep the password out of tracebacks and debug output.
        return f"Credentials(user={self.user!r}, password=<hidden>)"


def header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """The value of header ``name`` in ``headers``, matched without regard to case.

    REST APIs pass headers with the client's own spelling (``authorization`` from HTTP/2
    clients, ``Authorization`` from curl).
    """
    wanted = name.lower()
    for key, value in (headers or {}).items():
        if key.lower() == wanted:
            return value
    return None


def parse_basic_authorization(value: str | None) -> Credentials | None:
    """The credentials in an ``Authorization: Basic <base64(user:password)>`` value, or ``None``.

    The scheme is case-insensitive (RFC 7617); the encoded part must be valid base64 of
    UTF-8 text with a colon after a non-empty user name (the password may contain colons).
    """
    if not value:
        return None
    scheme, _, encoded = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    if not colon or not user:
        return None
    return Credentials(user=user, password=password)


def basic_authorization(user: str, password: str) -> str:
    """The ``Authorization`` header value for ``user`` and ``password`` (what clients send)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _digest(text: str) -> bytes:
    # Comparing fixed-length digests keeps the lengths of stored names and passwords
    # out of the timing too (compare_digest itself may leak the length).
    return hashlib.sha256(text.encode("utf-8")).digest()


def authenticate(credentials: Credentials, users: Mapping[str, str]) -> str | None:
    """The user that ``credentials`` prove to be, or ``None``.

    Every stored user is compared, each in constant time, and the results combined
    without short-circuiting: the time taken does not tell which user exists or how
    much of a password was right. A stored empty password never matches.
    """
    sent_user, sent_password = _digest(credentials.user), _digest(credentials.password)
    matched: str | None = None
    for user, password in users.items():
        same_user = hmac.compare_digest(sent_user, _digest(user))
        same_password = hmac.compare_digest(sent_password, _digest(password))
        if same_user & same_password & bool(password):
            matched = user
    return matched


def stage_wildcard(method_arn: str) -> str:
    """Every method of the stage that ``method_arn`` belongs to.

    ``arn:aws:execute-api:us-east-1:123456789012:abcdef123/v1/GET/apps/web`` gives
    ``arn:aws:execute-api:us-east-1:123456789012:abcdef123/v1/*``. API Gateway caches the
    policy per Authorization header and reuses it for the user's next requests, which
    may be to any route: a policy for the first method alone would deny the others.
    """
    api, _, rest = method_arn.partition("/")
    stage = rest.partition("/")[0]
    if not api.startswith("arn:") or ":execute-api:" not in api or not stage:
        raise ValueError(f"not an execute-api method ARN: {method_arn!r}")
    return f"{api}/{stage}/*"


def allow(user: str, method_arn: str) -> dict[str, Any]:
    """The authorizer response that lets ``user`` call every method of the stage."""
    return {
        "principalId": user,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": stage_wildcard(method_arn)}],
        },
        "context": {"user": user},
    }


def parse_users(secret_string: str) -> dict[str, str]:
    """The ``{user: password}`` object stored in the credentials secret.

    Raises ``ValueError`` naming the problem (never a value) when the secret is not such
    an object: that is a broken deployment, answered 500, not a wrong password.
    """
    try:
        users = json.loads(secret_string)
    except json.JSONDecodeError:
        raise ValueError('the credentials secret is not JSON; store an object like {"admin": "<password>"}') from None
    if not isinstance(users, dict) or not all(
        isinstance(user, str) and isinstance(password, str) for user, password in users.items()
    ):
        raise ValueError("the credentials secret must be a JSON object of user names to password strings")
    return users


def authorize(event: Mapping[str, Any], users: Mapping[str, str]) -> dict[str, Any]:
    """The Allow response for a request authorizer ``event``; raise ``Exception("Unauthorized")`` otherwise."""
    credentials = parse_basic_authorization(header(event.get("headers"), "Authorization"))
    if credentials is None:
        logger.info("denied: no Authorization header with Basic credentials")
        raise Exception(UNAUTHORIZED)
    user = authenticate(credentials, users)
    if user is None:
        logger.info("denied: wrong user name or password")
        raise Exception(UNAUTHORIZED)
    logger.info("allowed %s", user)
    return allow(user, str(event["methodArn"]))


# I/O: the users, read from Secrets Manager and kept for CREDENTIALS_CACHE_SECONDS.

_cache: dict[str, tuple[float, dict[str, str]]] = {}


def load_users(secret_arn: str, *, now: float | None = None) -> dict[str, str]:
    """The users stored in the secret ``secret_arn``, cached for a few minutes per execution environment."""
    now = time.monotonic() if now is None else now
    cached = _cache.get(secret_arn)
    if cached is not None and now - cached[0] < CREDENTIALS_CACHE_SECONDS:
        return cached[1]
    response = aws.client("secretsmanager").get_secret_value(SecretId=secret_arn)
    users = parse_users(response["SecretString"])
    _cache[secret_arn] = (now, users)
    return users


def reset() -> None:
    """Forget the cached users and clients (tests, and a fresh start after a mock)."""
    _cache.clear()
    aws.client.cache_clear()


def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    """Lambda entry point for the API's REQUEST authorizer."""
    return authorize(event, load_users(os.environ["CREDENTIALS_SECRET_ARN"]))
