"""The control plane's REST API (``openapi.json``) behind API Gateway: thin routes over
:mod:`slipway.operations` and :mod:`slipway.publisher`, the Slack command's route
(:mod:`slipway.slack.handler`) and the web console's page (:mod:`slipway.console`).

The caller is the user the Basic auth authorizer put in the request context. Browsers keep
Basic credentials and send them to this origin whoever asks, so a request that changes
anything must be one no other site's page can make: JSON (a cross-origin JSON request needs a
CORS preflight this API never grants), and not marked cross-site by the browser.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.exceptions import UnauthorizedError
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
from aws_lambda_powertools.utilities.typing import LambdaContext

from slipway import aws, console, operations
from slipway.operations import publisher as _publisher
from slipway.releases import ReleaseError, release_number
from slipway.settings import SettingsError
from slipway.slack import handler as slack_handler
from slipway_release.envfile import MAX_ENVIRONMENT_BYTES

logger = Logger()  # never logs request bodies: they carry config values
app = APIGatewayRestResolver()

APP = "/apps/<app_name>/envs/<env>"


def _user() -> str:
    user = app.current_event.request_context.authorizer.get("user")
    if not user:  # API Gateway runs the authorizer first; without a user, the wiring is wrong
        raise UnauthorizedError("no authenticated user")
    return str(user)


# The largest body a request may have. The largest legitimate one is a config change setting a
# whole environment: at most MAX_ENVIRONMENT_BYTES (1 MiB) of NAME=value, and JSON (json.dumps,
# as the CLI and the console send it) writes a character outside ASCII as a \uXXXX escape: 6
# bytes for a 2-byte character, 12 for a 4-byte one, at most 3 times the text (only control
# characters, which text holds a few of, grow more: 6 bytes for 1). The next largest is a
# release's two lists of parts, at most 2 x 10,000 (S3's limit) of about 70 bytes: 1.4 MB.
# Four environments' worth (4 MiB) is above both; Lambda takes at most 6 MB per request anyway.
MAX_BODY_BYTES = 4 * MAX_ENVIRONMENT_BYTES
# How deeply a body may nest arrays and objects: no operation's body nests more than 3 levels
# (openapi.json); Python's json parser recurses once per level and fails at about a thousand.
MAX_BODY_DEPTH = 32
# A JSON string (escapes included), and the characters that open or close a level.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _nesting(text: str) -> int:
    """How deeply ``text`` nests arrays and objects, counted without recursion (what is not
    well-formed JSON is left for the parser to refuse)."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(itertools.accumulate(1 if c in "[{" else -1 for c in brackets), default=0)


def _body() -> dict[str, Any]:
    event = app.current_event
    raw = event.body or ""
    # A first look before decoding anything: base64 carries 3 bytes in 4 characters.
    carried = len(raw) * 3 // 4 if event.is_base64_encoded else len(raw)
    too_large = ReleaseError(
        413,
        f"the request body is larger than the {MAX_BODY_BYTES} bytes this API takes (a whole environment's "
        f"config is at most {MAX_ENVIRONMENT_BYTES}); send a smaller request",
    )
    if carried > MAX_BODY_BYTES:
        raise too_large
    try:
        text = event.decoded_body or ""
        size = len(text.encode("utf-8"))
    except (ValueError, TypeError):  # not base64 of UTF-8, or not UTF-8 (ValueError covers both)
        raise ReleaseError(400, "the request body must be a JSON object in UTF-8") from None
    if size > MAX_BODY_BYTES:
        raise too_large
    if _nesting(text) > MAX_BODY_DEPTH:
        raise ReleaseError(
            400,
            f"the request body nests arrays and objects deeper than {MAX_BODY_DEPTH} levels; send the object "
            "the operation takes (openapi.json: none nests more than 3)",
        )
    try:
        body = event.json_body
    except (ValueError, TypeError):  # not JSON
        raise ReleaseError(400, "the request body must be a JSON object in UTF-8") from None
    if not isinstance(body, dict):
        raise ReleaseError(400, "the request body must be a JSON object")
    return body


def _json(status: int, payload: object) -> Response[str]:
    return Response(status_code=status, content_type="application/json", body=json.dumps(payload))


@app.exception_handler(ReleaseError)
def _release_error(error: ReleaseError) -> Response[str]:
    logger.info("request refused", extra={"status": error.status, "reason": str(error)})
    return _json(error.status, {"message": str(error)})


@app.exception_handler(SettingsError)
def _settings_error(error: SettingsError) -> Response[str]:
    """The platform's own configuration is wrong (a deployment problem): said, never a traceback."""
    logger.error("the control plane is misconfigured", extra={"reason": str(error)})
    return _json(500, {"message": f"the Slipway control plane is misconfigured: {error}"})


@app.exception_handler(aws.Throttled)
def _throttled(error: aws.Throttled) -> Response[str]:
    logger.warning("an AWS call stayed throttled", extra={"reason": str(error)})
    return _json(503, {"message": f"AWS is throttling the control plane ({error}); try again in a few seconds"})


def _query_names(document: dict[str, Any]) -> dict[tuple[str, str], frozenset[str]]:
    """The query parameters each operation of the document takes, by (method, path template)."""
    names: dict[tuple[str, str], frozenset[str]] = {}
    for path, item in document["paths"].items():
        shared = item.get("parameters", [])
        for method, operation in item.items():
            if method == "parameters":
                continue
            parameters = [*shared, *operation.get("parameters", [])]
            names[method.upper(), path] = frozenset(p["name"] for p in parameters if p["in"] == "query")
    return names


# The one definition of each operation's query parameters is the API's own document.
QUERY_NAMES = _query_names(json.loads((Path(__file__).with_name("openapi.json")).read_text()))


def _known_query(resolver: APIGatewayRestResolver, next_middleware: NextMiddleware) -> Response[Any]:
    """Refuse a query parameter the operation does not take, rather than ignore a misspelt one."""
    event = resolver.current_event
    given = set(event.query_string_parameters or {})
    takes = QUERY_NAMES.get((event.http_method, event.resource))
    if takes is not None and given - takes:
        unknown = ", ".join(repr(name) for name in sorted(given - takes))
        offered = ", ".join(sorted(takes)) or "none"
        operation = f"{event.http_method} {event.resource}"
        raise ReleaseError(400, f"{operation} takes no query parameter {unknown}; it takes: {offered}")
    return next_middleware(resolver)


# Methods that change nothing; every other one must pass :func:`_same_site_json`.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _same_site_json(resolver: APIGatewayRestResolver, next_middleware: NextMiddleware) -> Response[Any]:
    """Refuse a changing request another site's page could have sent with the browser's credentials."""
    event = resolver.current_event
    if event.http_method not in SAFE_METHODS and event.path != slack_handler.COMMAND_ROUTE:
        if (event.headers.get("sec-fetch-site") or "").lower() == "cross-site":
            raise ReleaseError(403, "this request came from another site's page; use the console or the CLI")
        content_type = (event.headers.get("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise ReleaseError(
                415,
                f"send a JSON body with Content-Type: application/json (got {content_type or 'none'}); {{}} if empty",
            )
    return next_middleware(resolver)


def _active_region(resolver: APIGatewayRestResolver, next_middleware: NextMiddleware) -> Response[Any]:
    """Refuse a change in a region that is not the environment's active one (the Slack command's
    changing actions check it themselves: its route carries reads too)."""
    event = resolver.current_event
    if event.http_method not in SAFE_METHODS and event.path != slack_handler.COMMAND_ROUTE:
        operations.require_active_region()
    return next_middleware(resolver)


app.use(middlewares=[_known_query, _same_site_json, _active_region])


def _served(served: console.Served) -> Response[str]:
    return Response(status_code=served.status, headers=served.headers, body=served.body)


@app.get("/")
def console_page() -> Response[str]:
    event = app.current_event
    base = console.base_path(event.request_context.path or event.path, event.path)
    return _served(console.page(base=base, env=operations.settings().env))


@app.get("/console/<asset>")
def console_asset(asset: str) -> Response[str]:
    served = console.asset(asset)
    if served is None:
        raise ReleaseError(404, f"the console has no {asset!r}; open the console at the API's URL")
    return _served(served)


@app.get("/health")
def health() -> Response[str]:
    """Unauthenticated (Route 53's health check asks it): says only whether the bucket can be read."""
    return _json(200, operations.health())


@app.get("/apps")
def list_apps() -> Response[str]:
    return _json(200, operations.list_apps())


@app.post(f"{APP}/uploads")
def create_upload(app_name: str, env: str) -> Response[str]:
    body = _body()
    upload = _publisher(app_name, env).create_upload(size=body.get("size"), sha256=body.get("sha256"), user=_user())
    return _json(201, upload)


@app.post(f"{APP}/releases")
def create_release(app_name: str, env: str) -> Response[str]:
    body = _body()
    status, made = operations.create_release(
        app_name,
        env,
        upload_id=body.get("upload_id"),
        git=body.get("git"),
        description=body.get("description"),
        parts=body.get("parts"),
        user=_user(),
    )
    logger.info("build started", extra={"app": app_name, "env": env, "build": made["id"], "by": _user()})
    return _json(status, made)


@app.post(f"{APP}/promotions")
def promote(app_name: str, env: str) -> Response[str]:
    """Release here another environment's release: the writer reads it from that environment's bucket."""
    body = _body()
    made = operations.write_release(
        app_name,
        env,
        "promotion",
        **{"from": body.get("from")},
        release=body.get("release"),
        description=body.get("description"),
        user=_user(),
    )
    logger.info(
        "release promoted",
        extra={"app": app_name, "env": env, "from": body.get("from"), "release": made["id"], "by": _user()},
    )
    return _json(201, made)


@app.get(f"{APP}/builds/<build>")
def show_build(app_name: str, env: str, build: str) -> Response[str]:
    after = (app.current_event.query_string_parameters or {}).get("after")
    return _json(200, operations.show_build(app_name, env, build, after=after))


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
    changed = operations.write_release(
        app_name,
        env,
        "config",
        set=set_vars,
        unset=unset,
        description=body.get("description"),
        base=body.get("base"),
        user=_user(),
    )
    # Names only: values may be secrets.
    logger.info("config changed", extra={"app": app_name, "env": env, "names": sorted({*set_vars, *map(str, unset)})})
    return _json(200, changed)


@app.post(f"{APP}/deploys")
def start_deploy(app_name: str, env: str) -> Response[str]:
    body = _body()
    release = body.get("release")
    if not isinstance(release, str):
        raise ReleaseError(400, 'send {"release": "r7"}: the release to deploy (see `slipway releases`)')
    release_number(release)
    started = operations.start_deploy(
        app_name, env, release, kind="deploy", strategy=body.get("strategy"), user=_user()
    )
    logger.info("deploy started", extra={"app": app_name, "env": env, "release": release, "by": _user()})
    return _json(202, started)


@app.post(f"{APP}/rollback")
def rollback(app_name: str, env: str) -> Response[str]:
    to = (_body() if app.current_event.body else {}).get("to")
    return _start_of_current(app_name, env, functools.partial(operations.rollback, to=to))


@app.post(f"{APP}/restart")
def restart(app_name: str, env: str) -> Response[str]:
    process = (_body() if app.current_event.body else {}).get("process")
    return _start_of_current(app_name, env, functools.partial(operations.restart, process=process))


def _start_of_current(app_name: str, env: str, start: Callable[..., dict[str, Any]]) -> Response[str]:
    """A rollout the platform picks the release of (a rollback, a restart), with the body's strategy."""
    body = _body() if app.current_event.body else {}
    started = start(app_name, env, strategy=body.get("strategy"), user=_user())
    logger.info(
        f"{started['kind']} started", extra={"app": app_name, "env": env, "release": started["release"], "by": _user()}
    )
    return _json(202, started)


@app.get(f"{APP}/deploys")
def list_deploys(app_name: str, env: str) -> Response[str]:
    return _json(200, {"deploys": operations.list_deploys(app_name, env)})


@app.get(f"{APP}/deploys/<deploy>")
def show_deploy(app_name: str, env: str, deploy: str) -> Response[str]:
    return _json(200, operations.show_deploy(app_name, env, deploy))


@app.post(f"{APP}/deploys/<deploy>/cancel")
def cancel_deploy(app_name: str, env: str, deploy: str) -> Response[str]:
    _body()  # JSON like every change, {} when there is nothing to say
    cancelling = operations.cancel_deploy(app_name, env, deploy, user=_user())
    logger.info("cancel requested", extra={"app": app_name, "env": env, "deploy": deploy, "by": _user()})
    return _json(202, cancelling)


@app.get(f"{APP}/status")
def status(app_name: str, env: str) -> Response[str]:
    return _json(200, operations.status(app_name, env))


@app.post(f"{APP}/cycle")
def cycle(app_name: str, env: str) -> Response[str]:
    body = _body() if app.current_event.body else {}
    cycling = operations.cycle(
        app_name, env, instance=body.get("instance"), min_healthy_percent=body.get("min_healthy_percent")
    )
    logger.info("cycle started", extra={"app": app_name, "env": env, **cycling, "by": _user()})
    return _json(202, cycling)


@app.post(f"{APP}/scale")
def scale(app_name: str, env: str) -> Response[str]:
    scaled = operations.scale(app_name, env, requested=_body())
    logger.info("scaled", extra={**scaled, "by": _user()})
    return _json(200, scaled)


@app.get(f"{APP}/logs")
def show_logs(app_name: str, env: str) -> Response[str]:
    query = app.current_event.query_string_parameters or {}
    return _json(
        200,
        operations.app_logs(
            app_name,
            env,
            start=query.get("start"),
            instance=query.get("instance"),
            process=query.get("process"),
            after=query.get("after"),
        ),
    )


@app.post(f"{APP}/runs")
def start_run(app_name: str, env: str) -> Response[str]:
    body = _body()
    started = operations.start_run(
        app_name, env, command=body.get("command"), timeout=body.get("timeout_seconds"), user=_user()
    )
    # Who ran what, where: the audit record of a one-off (the command is the user's own text).
    logger.info(
        "one-off started",
        extra={
            "app": app_name,
            "env": env,
            "release": started["release"],
            "instance": started["instance"],
            "run": started["id"],
            "command": started["command"],
            "by": _user(),
        },
    )
    return _json(202, started)


@app.get(f"{APP}/runs/<run>")
def show_run(app_name: str, env: str, run: str) -> Response[str]:
    after = (app.current_event.query_string_parameters or {}).get("after")
    return _json(200, operations.show_run(app_name, env, run, after=after))


@app.get(f"{APP}/cycle/<refresh>")
def show_cycle(app_name: str, env: str, refresh: str) -> Response[str]:
    return _json(200, operations.show_cycle(app_name, env, refresh))


app.include_router(slack_handler.router)


@logger.inject_lambda_context(log_event=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """The Lambda entry point: API Gateway's requests, and the Slack command's own follow-ups."""
    if slack_handler.FOLLOW_EVENT in event:
        return slack_handler.follow(event[slack_handler.FOLLOW_EVENT])
    return app.resolve(event, context)
