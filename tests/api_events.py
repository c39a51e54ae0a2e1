"""Calling the API's handler with real API Gateway REST proxy events (tests/events/)."""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path
from typing import Any

from slipway import api

EVENTS = Path(__file__).parent / "events"
TEMPLATES = [
    (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"), template)
    for _, template in sorted(api.QUERY_NAMES, key=lambda key: key[1].count("{"))
]


def resource(path: str) -> str:
    """The resource API Gateway matched: the document's path template (fewest variables first)."""
    return next((template for pattern, template in TEMPLATES if pattern.match(path)), "/{proxy+}")


class Context:
    """The attributes of a Lambda context object that Powertools' logger reads."""

    function_name = "Platform-staging-Api"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:Platform-staging-Api"
    aws_request_id = "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"


def call(
    method: str,
    path: str,
    body: object = None,
    query: dict[str, str] | None = None,
    user: str | None = "alice",
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """Send one request through the handler as API Gateway would; ``raw`` sends bytes as they are
    (API Gateway passes a body that is not UTF-8 base64-encoded)."""
    event = copy.deepcopy(json.loads((EVENTS / "api_gateway_rest_proxy.json").read_text()))
    text = None if body is None else json.dumps(body)
    encoded = False
    if raw is not None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text, encoded = base64.b64encode(raw).decode("ascii"), True
    event.update(
        httpMethod=method,
        path=path,
        resource=resource(path),
        queryStringParameters=query,
        body=text,
        isBase64Encoded=encoded,
    )
    # As the CLI and the console send every change: JSON (the handler refuses anything else).
    sent = {"Content-Type": "application/json"} if method not in ("GET", "HEAD") else {}
    event["headers"] = {**event["headers"], **sent, **(headers or {})}
    event["requestContext"].update(httpMethod=method, path=f"/api{path}", resourcePath=resource(path))
    if user is None:
        del event["requestContext"]["authorizer"]["user"]
    else:
        event["requestContext"]["authorizer"].update(principalId=user, user=user)
    response = api.handler(event, Context())
    return response["statusCode"], json.loads(response["body"]) if response["body"] else None
