"""The control plane's REST API (``openapi.json``) behind API Gateway: thin routes over
:mod:`slipway.publisher` and the rollout state machine.

Configuration is :class:`slipway.settings.ControlPlaneSettings`, parsed once from the
function's environment as the constructs wrote it. The caller is the user the Basic auth
authorizer put in the request context.
"""

from __future__ import annotations

import json
import os
import secrets
from datetime import UTC, datetime
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError, UnauthorizedError
from aws_lambda_powertools.utilities.typing import LambdaContext

from slipway import aws, deploys
from slipway.publisher import Publisher
from slipway.releases import ReleaseError, release_number
from slipway.rollout.lock import Lock, decide, refusal
from slipway.rollout.strategy import Strategy, StrategyError
from slipway.settings import ControlPlaneSettings, FleetSettings
from slipway.store import Bucket

logger = Logger()  # never logs request bodies: they carry config values
app = APIGatewayRestResolver()

APP = "/apps/<app_name>/envs/<env>"


@cache
def settings() -> ControlPlaneSettings:
    """This function's configuration, parsed once per execution environment."""
    return ControlPlaneSettings.from_environ(os.environ)


def _publisher(app_name: str, env: str) -> Publisher:
    config = settings()
    if env != config.env:
        raise NotFoundError(f"this API serves the {config.env} environment, not {env!r}; use {env}'s API URL")
    if app_name not in config.apps:
        known = ", ".join(sorted(config.apps)) or "none"
        raise NotFoundError(f"no app {app_name!r} in {env} (apps: {known}); add it to cdk.json and deploy the stack")
    return Publisher(
        Bucket(aws.client("s3"), config.bucket),
        app=app_name,
        env=env,
        runtime=config.apps[app_name],
        max_source_bytes=config.max_source_bytes,
    )


def _user() -> str:
    user = app.current_event.request_context.authorizer.get("user")
    if not user:  # API Gateway runs the authorizer first; without a user, the wiring is wrong
        raise UnauthorizedError("no authenticated user")
    return str(user)


def _body() -> dict[str, Any]:
    try:
        body = app.current_event.json_body
    except (ValueError, TypeError):  # not JSON, or not UTF-8 (ValueError covers both)
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


def _deploying(app_name: str, env: str) -> tuple[Publisher, FleetSettings, str]:
    publisher = _publisher(app_name, env)
    config = settings()
    fleet = config.fleets.get(app_name)
    if config.state_machine is None or fleet is None:
        raise ReleaseError(503, f"deploys are not set up for {app_name} in {env}; deploy the Platform-{env} stack")
    return publisher, fleet, config.state_machine


def _start(app_name: str, env: str, release: str, kind: str, strategy: object) -> Response[str]:
    publisher, fleet, machine = _deploying(app_name, env)
    try:
        # The app's own defaults (cdk.json `rollout`), then this deploy's options.
        chosen = Strategy.parse(strategy, fleet.strategy)
    except StrategyError as error:
        raise ReleaseError(400, str(error)) from None
    publisher.show(release)  # 404 for a release that does not exist
    _refuse_if_locked(publisher, app_name, env, "deploy")
    now = datetime.now(UTC)
    name = deploys.deploy_id(app_name, release, now, secrets.token_hex(2))
    request = deploys.execution_input(
        app=app_name,
        env=env,
        release=release,
        user=_user(),
        kind=kind,
        fleet=fleet,
        strategy=chosen,
        timing=settings().timing,
    )
    started = aws.client("stepfunctions").start_execution(stateMachineArn=machine, name=name, input=json.dumps(request))
    logger.info("deploy started", extra={"app": app_name, "env": env, "release": release, "kind": kind, "by": _user()})
    description = {"name": name, "status": "RUNNING", "input": json.dumps(request), "startDate": started["startDate"]}
    return _json(202, deploys.view(description, []))


@app.post(f"{APP}/deploys")
def start_deploy(app_name: str, env: str) -> Response[str]:
    body = _body()
    release = body.get("release")
    if not isinstance(release, str):
        raise ReleaseError(400, 'send {"release": "r7"}: the release to deploy (see `slipway releases`)')
    release_number(release)
    return _start(app_name, env, release, "deploy", body.get("strategy"))


@app.post(f"{APP}/rollback")
def rollback(app_name: str, env: str) -> Response[str]:
    body = _body() if app.current_event.body else {}
    publisher, _, _ = _deploying(app_name, env)
    previous = publisher.previous()
    if previous is None:
        raise ReleaseError(409, f"{app_name} in {env} has no earlier deployed release to roll back to")
    return _start(app_name, env, previous, "rollback", body.get("strategy"))


@app.get(f"{APP}/deploys")
def list_deploys(app_name: str, env: str) -> Response[str]:
    _, _, machine = _deploying(app_name, env)
    sfn = aws.client("stepfunctions")
    executions = sfn.list_executions(stateMachineArn=machine, maxResults=100)["executions"]
    mine = [e for e in executions if (deploys.deploy_of(e["name"]) or ("",))[0] == app_name]
    shown = [deploys.view(sfn.describe_execution(executionArn=e["executionArn"]), []) for e in mine[:20]]
    return _json(200, {"deploys": sorted(shown, key=lambda d: d["started_at"] or "", reverse=True)})


@app.get(f"{APP}/deploys/<deploy>")
def show_deploy(app_name: str, env: str, deploy: str) -> Response[str]:
    _, _, machine = _deploying(app_name, env)
    if (deploys.deploy_of(deploy) or ("",))[0] != app_name:
        raise NotFoundError(f"{deploy!r} is not a deploy of {app_name}; list them with `slipway deploys`")
    arn = machine.replace(":stateMachine:", ":execution:") + f":{deploy}"
    sfn = aws.client("stepfunctions")
    try:
        description = sfn.describe_execution(executionArn=arn)
    except sfn.exceptions.ExecutionDoesNotExist:
        raise NotFoundError(f"no deploy {deploy} of {app_name} in {env}") from None
    events = sfn.get_paginator("get_execution_history").paginate(executionArn=arn)
    return _json(200, deploys.view(description, (e for page in events for e in page["events"])))


def _refuse_if_locked(publisher: Publisher, app_name: str, env: str, doing: str) -> None:
    held = publisher.bucket.read(publisher.keys.lock)
    now = datetime.now(UTC)
    if held is not None:
        try:
            existing = Lock.from_json(held.body)
        except ValueError as error:
            raise ReleaseError(409, str(error)) from None
        if decide(existing, now=now) == "refuse":
            raise ReleaseError(409, f"cannot {doing} {app_name} in {env}: {refusal(existing, now)}")


def _group(fleet: FleetSettings) -> dict[str, Any]:
    found = aws.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[fleet.group])
    if not found["AutoScalingGroups"]:
        raise ReleaseError(503, f"the fleet's Auto Scaling group {fleet.group} does not exist; deploy the stack")
    group: dict[str, Any] = found["AutoScalingGroups"][0]
    return group


@app.get(f"{APP}/status")
def status(app_name: str, env: str) -> Response[str]:
    publisher, fleet, _ = _deploying(app_name, env)
    group = _group(fleet)
    health = aws.client("elbv2").describe_target_health(TargetGroupArn=fleet.target_group)["TargetHealthDescriptions"]
    targets = {t["Target"]["Id"]: t["TargetHealth"]["State"] for t in health}
    held = publisher.bucket.read(publisher.keys.lock)
    lock = Lock.from_json(held.body) if held else None
    return _json(
        200,
        {
            "app": app_name,
            "env": env,
            "current": publisher.current(),
            "deploying": None
            if lock is None or decide(lock, now=datetime.now(UTC)) != "refuse"
            else {"release": lock.release, "by": lock.owner, "since": lock.acquired_at.isoformat()},
            "capacity": {"min": group["MinSize"], "desired": group["DesiredCapacity"], "max": group["MaxSize"]},
            "instances": [
                {
                    "id": i["InstanceId"],
                    "zone": i["AvailabilityZone"],
                    "lifecycle": i["LifecycleState"],
                    "health": i["HealthStatus"],
                    "target": targets.get(i["InstanceId"], "unregistered"),
                    # What the last rollout put there; None for an instance that booted since
                    # (it runs the `current` of its boot) or whose rollback did not finish.
                    "release": publisher.instance_release(i["InstanceId"]),
                }
                for i in sorted(group["Instances"], key=lambda i: (i["AvailabilityZone"], i["InstanceId"]))
            ],
        },
    )


@app.post(f"{APP}/cycle")
def cycle(app_name: str, env: str) -> Response[str]:
    body = _body() if app.current_event.body else {}
    publisher, fleet, _ = _deploying(app_name, env)
    _refuse_if_locked(publisher, app_name, env, "cycle")
    group = _group(fleet)
    instance = body.get("instance")
    autoscaling = aws.client("autoscaling")
    if instance is not None:
        members = {i["InstanceId"] for i in group["Instances"]}
        if instance not in members:
            raise NotFoundError(f"{instance!r} is not an instance of {app_name} in {env}; see `slipway status`")
        # The group launches a replacement at once: capacity is kept.
        autoscaling.terminate_instance_in_auto_scaling_group(InstanceId=instance, ShouldDecrementDesiredCapacity=False)
        logger.info("instance cycled", extra={"app": app_name, "env": env, "instance": instance, "by": _user()})
        return _json(202, {"kind": "instance", "instance": instance, "status": "replacing"})
    percent = body.get("min_healthy_percent", 90)
    if not isinstance(percent, int) or isinstance(percent, bool) or not 0 <= percent <= 100:
        raise ReleaseError(400, "min_healthy_percent must be a whole number from 0 to 100 (default 90)")
    refresh = autoscaling.start_instance_refresh(**instance_refresh_request(fleet, percent))
    logger.info("fleet cycled", extra={"app": app_name, "env": env, "refresh": refresh["InstanceRefreshId"]})
    return _json(202, {"kind": "fleet", "refresh": refresh["InstanceRefreshId"], "status": "Pending"})


def instance_refresh_request(fleet: FleetSettings, min_healthy_percent: int) -> dict[str, Any]:
    """The StartInstanceRefresh request that replaces a whole fleet: rolling, never below
    ``min_healthy_percent`` in service, stopped and rolled back if a fleet alarm fires."""
    preferences: dict[str, Any] = {
        "MinHealthyPercentage": min_healthy_percent,
        "InstanceWarmup": 60,
        "SkipMatching": False,
        "AutoRollback": True,
    }
    if fleet.alarms:
        preferences["AlarmSpecification"] = {"Alarms": list(fleet.alarms)}
    return {"AutoScalingGroupName": fleet.group, "Strategy": "Rolling", "Preferences": preferences}


@app.get(f"{APP}/cycle/<refresh>")
def show_cycle(app_name: str, env: str, refresh: str) -> Response[str]:
    _, fleet, _ = _deploying(app_name, env)
    found = aws.client("autoscaling").describe_instance_refreshes(
        AutoScalingGroupName=fleet.group, InstanceRefreshIds=[refresh]
    )["InstanceRefreshes"]
    if not found:
        raise NotFoundError(f"no cycle {refresh} of {app_name} in {env}")
    shown = found[0]
    return _json(
        200,
        {
            "refresh": refresh,
            "status": shown["Status"],
            "percent": shown.get("PercentageComplete", 0),
            "reason": shown.get("StatusReason", ""),
        },
    )


@logger.inject_lambda_context(log_event=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """The Lambda entry point."""
    return app.resolve(event, context)
