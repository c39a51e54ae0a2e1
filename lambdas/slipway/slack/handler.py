"""The ``/slipway`` slash command: verify Slack's signature, check the rules, act, answer in 3 s.

``POST /slack/commands`` (no Basic auth: Slack signs the request instead). Reads answer at
once; a deploy, rollback, restart or cycle starts at once and its progress and outcome are posted to
the command's ``response_url`` by :func:`follow`, which this function runs asynchronously in
itself (an ``Event`` invocation per stretch of at most :data:`FOLLOW_SECONDS`), within what
Slack allows: :data:`MAX_POSTS` posts in the 30 minutes a response URL lives.

Each request is acted on once: a signed request is recorded in the release bucket
(:func:`slipway_release.layout.slack_request`) before anything else, with a conditional create
that fails for the second of two identical ones, so one captured and sent again within its five
minutes is refused as a replay, whichever instance of the function it reaches.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router

from slipway import aws, operations
from slipway.releases import ReleaseError
from slipway.settings import SlackSettings
from slipway.slack.commands import (
    USAGE,
    Command,
    CommandError,
    config_text,
    deploy_text,
    message,
    parse,
    releases_text,
    status_text,
)
from slipway.slack.rules import refusal
from slipway.slack.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureError, verify
from slipway.store import Bucket
from slipway_release.layout import slack_request

logger = Logger(child=True)
router = Router()

# Slack takes five posts to a response URL within 30 minutes of the command.
MAX_POSTS = 5
RESPONSE_URL_LIFETIME = 30 * 60
# One asynchronous stretch of following a deploy: well inside the function's 60 s timeout.
FOLLOW_SECONDS = 45
SECRET_CACHE_SECONDS = 300
FOLLOW_EVENT = "slack_follow"
REPLAY = "this request was already received (a replay); nothing was done"

_secret_cache: dict[str, tuple[float, str]] = {}


def _slack() -> SlackSettings:
    slack = operations.settings().slack
    if slack is None:
        raise ReleaseError(404, "Slack is not set up for this environment; add its slack settings to cdk.json")
    return slack


def _signing_secret(arn: str) -> str:
    cached = _secret_cache.get(arn)
    now = time.monotonic()
    if cached is not None and now - cached[0] < SECRET_CACHE_SECONDS:
        return cached[1]
    secret = str(aws.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]).strip()
    _secret_cache[arn] = (now, secret)
    return secret


def _json(payload: object, status: int = 200) -> Response[str]:
    return Response(status_code=status, content_type="application/json", body=json.dumps(payload))


# Slack posts a form, signed: the one route that takes neither Basic auth nor JSON.
COMMAND_ROUTE = "/slack/commands"


@router.post(COMMAND_ROUTE)
def slack_command() -> Response[str]:
    event = router.current_event
    # The bytes Slack signed, as they came: API Gateway base64-encodes a body that is not UTF-8 text
    # (never one of Slack's, whose forms are ASCII: its signature then fails, it does not raise).
    body = event.body or ""
    raw = base64.b64decode(body) if event.is_base64_encoded else body.encode()
    slack = _slack()
    try:
        verify(_signing_secret(slack.signing_secret), dict(event.headers or {}), raw, now=time.time())
    except SignatureError as error:
        logger.warning("Slack request refused", extra={"reason": str(error)})
        return _json({"message": f"not a request Slack signed: {error}"}, 401)
    sent = event.headers  # case-insensitive, as verify read them
    if not _first_receipt(sent.get(SIGNATURE_HEADER, ""), sent.get(TIMESTAMP_HEADER, "")):
        logger.warning("Slack request refused", extra={"reason": REPLAY})
        return _json({"message": REPLAY}, 401)
    form = {key: values[0] for key, values in parse_qs(raw.decode("utf-8", errors="replace")).items()}
    user, channel = form.get("user_id", ""), form.get("channel_id", "")
    who = f"{form.get('user_name') or user} (Slack {user})"
    try:
        command = parse(form.get("text", ""))
    except CommandError as error:
        return _json(message(str(error)))
    env = operations.settings().env
    if command.env and command.env != env:
        return _json(message(f"This command serves *{env}*; use the Slack command of *{command.env}* for it."))
    denied = refusal(slack.rules, command.action, user, channel, env)
    if denied:
        logger.info("Slack action refused", extra={"action": command.action, "app": command.app, "by": who})
        return _json(message(f":no_entry: {denied}."))
    try:
        answer = _act(command, who, form.get("response_url", ""), slack)
    except ReleaseError as error:
        return _json(message(f":warning: {error}"))
    logger.info("Slack action", extra={"action": command.action, "app": command.app, "env": env, "by": who})
    return _json(answer)


def _first_receipt(signature: str, timestamp: str) -> bool:
    """Record the verified request signed ``signature``; ``False`` if it was recorded already (a
    replay, or the same request arriving twice at once), and nothing is to be done.

    The signature is unique to the timestamp and body it signs, and is only accepted within five
    minutes of that timestamp: the record outlives that by far (the bucket expires it after a day).
    Any other failure to record raises, and nothing is done: a request is never acted on unrecorded.
    """
    bucket = Bucket(aws.client("s3"), operations.settings().bucket)
    with aws.throttling_is_retried():
        return bucket.create(slack_request(operations.settings().env, signature), f"{timestamp}\n".encode())


def _act(command: Command, who: str, response_url: str, slack: SlackSettings) -> dict[str, Any]:
    app, env = command.app, command.env
    if command.action == "help":
        return message(f"Slipway in *{operations.settings().env}*:\n{USAGE}")
    if command.action == "status":
        return message(status_text(operations.status(app, env)))
    if command.action == "releases":
        listing = operations.publisher(app, env).list_releases(limit=10, before=None)["releases"]
        return message(releases_text(app, env, listing))
    if command.action == "config":
        return message(config_text(app, env, operations.publisher(app, env).config()))
    operations.require_active_region()  # every action from here on changes something
    if command.action == "cycle":
        cycling = operations.cycle(app, env, instance=command.argument, min_healthy_percent=None)
        what = (
            f"`{command.argument}` (capacity kept)"
            if command.argument
            else f"every instance (instance refresh `{cycling['refresh']}`)"
        )
        return message(f":recycle: {who} is replacing {what} of *{app}* in *{env}*.", public=True)
    if command.action == "rollback":
        started = operations.rollback(app, env, strategy=None, user=who)
    elif command.action == "restart":
        started = operations.restart(app, env, strategy=None, user=who, process=command.argument)
    else:
        release = command.argument or operations.newest_release(app, env)
        started = operations.start_deploy(app, env, release, kind="deploy", strategy=None, user=who)
    job = {
        "app": app,
        "env": env,
        "deploy": started["id"],
        "response_url": response_url,
        "posts": 0,
        "milestone": 0,
        "since": time.time(),
        "function": router.lambda_context.invoked_function_arn,
    }
    _follow_later(job, slack)
    return message(f":rocket: {deploy_text(started)}", public=True)


def _follow_later(job: dict[str, Any], slack: SlackSettings) -> None:
    """Follow a deploy in the background: this same function, invoked again asynchronously."""
    if not _may_post(job["response_url"], slack):
        logger.warning("no response URL of Slack's own: the deploy is not followed in Slack")
        return
    payload = json.dumps({FOLLOW_EVENT: job})
    aws.client("lambda").invoke(FunctionName=job["function"], InvocationType="Event", Payload=payload)


def _may_post(url: str, slack: SlackSettings) -> bool:
    """Only to Slack's own hosts, over HTTPS (plain HTTP only to a host on loopback: the local platform)."""
    parts = urlsplit(url)
    if parts.hostname not in slack.response_hosts:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname == "127.0.0.1")


def follow(job: dict[str, Any]) -> dict[str, Any]:
    """Post a deploy's milestones (the canary done, half the fleet done) and its outcome to Slack;
    go on in a new invocation while the deploy runs and the response URL lives."""
    slack = _slack()
    poll = max(1, operations.settings().timing.poll_seconds)
    stretch_ends = time.monotonic() + FOLLOW_SECONDS
    while True:
        shown = operations.show_deploy(job["app"], job["env"], job["deploy"])
        batches = shown.get("batches") or []
        done = sum(1 for batch in batches if batch["state"] == "done")
        if shown["status"] != "RUNNING":
            _post(job, message(deploy_text(shown), public=True), slack)
            return {**job, "finished": shown["status"]}
        milestone = 2 if batches and done * 2 >= len(batches) else 1 if done else 0
        if milestone > job["milestone"] and job["posts"] < MAX_POSTS - 1:  # keep the last post for the outcome
            _post(job, message(deploy_text(shown), public=True), slack)
            job["milestone"] = milestone
        if time.time() - job["since"] > RESPONSE_URL_LIFETIME - FOLLOW_SECONDS:
            return {**job, "finished": "response URL expired"}
        if time.monotonic() + poll > stretch_ends:
            _follow_later(job, slack)
            return job
        time.sleep(poll)


def _post(job: dict[str, Any], payload: dict[str, Any], slack: SlackSettings) -> None:
    if job["posts"] >= MAX_POSTS or not _may_post(job["response_url"], slack):
        return
    job["posts"] += 1
    request = urllib.request.Request(
        job["response_url"], data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        urllib.request.urlopen(request, timeout=5).close()
    except (urllib.error.URLError, OSError) as error:
        logger.warning("posting to Slack failed", extra={"reason": str(error)})
