"""The control plane's REST API (``openapi.json``) behind API Gateway: thin routes over
:mod:`slipway.publisher`.

Configuration comes from the function's environment: ``RELEASE_BUCKET``, ``PLATFORM_ENV``
(the one environment this API serves), ``APPS_JSON`` (``{app: {"port",
"health_check_path", "formation"}}``) and optionally ``MAX_SOURCE_BYTES``. The caller is
the user the Basic auth authorizer put in the request context.
"""

from __future__ import annotations

import json
import os
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError, UnauthorizedError
from aws_lambda_powertools.utilities.typing import LambdaContext

from slipway.publisher import Publisher
from slipway.releases import AppRuntime, ReleaseError
from slipway.store import Bucket

DEFAULT_MAX_SOURCE_BYTES = 1024 * 1024 * 1024

logger = Logger()  # never logs request bodies: they carry config values
app = APIGatewayRestResolver()

APP = "/apps/<app_name>/envs/<env>"


@cache
def _s3() -> Any:
    import boto3  # imported on first use: no client at import time

    return boto3.client("s3")


@cache
def _settings() -> tuple[str, str, dict[str, AppRuntime], int]:
    apps = {
        name: AppRuntime(port=v["port"], health_check_path=v["health_check_path"], formation=v["formation"])
        for name, v in json.loads(os.environ["APPS_JSON"]).items()
    }
    limit = int(os.environ.get("MAX_SOURCE_BYTES", DEFAULT_MAX_SOURCE_BYTES))
    return os.environ["RELEASE_BUCKET"], os.environ["PLATFORM_ENV"], apps, limit


def _publisher(app_name: str, env: str) -> Publisher:
    bucket, platform_env, apps, limit = _settings()
    if env != platform_env:
        raise NotFoundError(f"this API serves the {platform_env} environment, not {env!r}; use {env}'s API URL")
    if app_name not in apps:
        known = ", ".join(sorted(apps)) or "none"
        raise NotFoundError(f"no app {app_name!r} in {env} (apps: {known}); add it to cdk.json and deploy the stack")
    return Publisher(Bucket(_s3(), bucket), app=app_name, env=env, runtime=apps[app_name], max_source_bytes=limit)


def _user() -> str:
    user = app.current_event.request_context.authorizer.get("user")
    if not user:  # API Gateway runs the authorizer first; without a user, the wiring is wrong
        raise UnauthorizedError("no authenticated user")
    return str(user)


def _body() -> dict[str, Any]:
    try:
        body = app.current_event.json_body
    except (json.JSONDecodeError, TypeError):
        raise ReleaseError(400, "the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ReleaseError(400, "the request body must be a JSON object")
    return body


def _json(status: int, payload: object) -> Response[str]:
    return Response(status_code=status, content_type="application/json", body=json.dumps(payload))


@app.exception_handler(ReleaseError)
def _release_error(error: ReleaseError) -> Response[str]:
    logger.info("request refused", extra={"status": error.status, "reason": str(error)})
    return _json(error.status, {"message": str(error)})


@app.post(f"{APP}/uploads")
def create_upload(app_name: str, env: str) -> Response[str]:
    body = _body()
    upload = _publisher(app_name, env).create_upload(size=body.get("size"), sha256=body.get("sha256"), user=_user())
    return _json(201, upload)


@app.post(f"{APP}/releases")
def create_release(app_name: str, env: str) -> Response[str]:
    body = _body()
    release = _publisher(app_name, env).finalize(
        upload_id=body.get("upload_id"),
        git=body.get("git"),
        description=body.get("description"),
        parts=body.get("parts"),
        promoted_from=body.get("promoted_from"),
        user=_user(),
    )
    logger.info("release published", extra={"app": app_name, "env": env, "release": release["id"], "by": _user()})
    return _json(201, release)


@app.get(f"{APP}/releases")
def list_releases(app_name: str, env: str) -> Response[str]:
    query = app.current_event.query_string_parameters or {}
    try:
        limit = int(query.get("limit", 20))
    except ValueError:
        raise ReleaseError(400, "limit must be a whole number from 1 to 100") from None
    if not 1 <= limit <= 100:
        raise ReleaseError(400, "limit must be a whole number from 1 to 100")
    return _json(200, _publisher(app_name, env).list_releases(limit=limit, before=query.get("before")))


@app.get(f"{APP}/releases/<release>")
def show_release(app_name: str, env: str, release: str) -> Response[str]:
    return _json(200, _publisher(app_name, env).show(release))


@app.get(f"{APP}/releases/<release>/source")
def download_source(app_name: str, env: str, release: str) -> Response[str]:
    return _json(200, _publisher(app_name, env).download(release))


@app.get(f"{APP}/config")
def show_config(app_name: str, env: str) -> Response[str]:
    return _json(200, {"vars": _publisher(app_name, env).config()})


@app.patch(f"{APP}/config")
def update_config(app_name: str, env: str) -> Response[str]:
    body = _body()
    set_vars, unset = body.get("set", {}), body.get("unset", [])
    if not isinstance(set_vars, dict) or not isinstance(unset, list) or not (set_vars or unset):
        raise ReleaseError(400, 'send {"set": {"NAME": "value"}} and/or {"unset": ["NAME"]}')
    changed = _publisher(app_name, env).change_config(
        set_vars=set_vars, unset=unset, description=body.get("description"), user=_user()
    )
    # Names only: values may be secrets.
    logger.info("config changed", extra={"app": app_name, "env": env, "names": sorted({*set_vars, *map(str, unset)})})
    return _json(200, changed)


@logger.inject_lambda_context(log_event=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """The Lambda entry point."""
    return app.resolve(event, context)
