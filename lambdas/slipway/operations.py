"""What the control plane can be asked to do, one function per action, whoever asks.

The REST routes (:mod:`slipway.api`) and the Slack command (:mod:`slipway.slack.handler`) call
these with the caller's identity; they raise :class:`~slipway.releases.ReleaseError` with the
HTTP status that says why a request cannot be carried out. Configuration is
:class:`~slipway.settings.ControlPlaneSettings`: the function's environment and its apps' SSM
parameters, read again at most once every :data:`SETTINGS_MAX_AGE_SECONDS`.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from slipway import applogs, aws, deploys, runs
from slipway.builds import requests as builds
from slipway.publisher import Publisher
from slipway.releases import ReleaseError
from slipway.rollout.lock import Lock, decide, refusal
from slipway.rollout.request import RequestRefused
from slipway.rollout.strategy import Strategy, StrategyError, rollback_strategy
from slipway.settings import (
    PLATFORM_ENV,
    BuildSettings,
    ControlPlaneSettings,
    FleetSettings,
    SettingsError,
    active_region_parameter_name,
    app_parameters_path,
)
from slipway.store import Bucket
from slipway_release.procfile import PROCESS_TYPE

# How long a warm function goes on with the apps' parameters it read: a deploy of the stack that
# changes an app's settings (its fleet, limits, default strategy) reaches it within this.
SETTINGS_MAX_AGE_SECONDS = 60


class _Settings:
    """This function's configuration, read when first asked and again once it is older than
    :data:`SETTINGS_MAX_AGE_SECONDS` (one GetParametersByPath call per ten apps)."""

    def __init__(self) -> None:
        self._read: tuple[float, ControlPlaneSettings] | None = None

    def __call__(self) -> ControlPlaneSettings:
        now = time.monotonic()
        if self._read is None or now - self._read[0] >= SETTINGS_MAX_AGE_SECONDS:
            environ = dict(os.environ)
            if not environ.get(PLATFORM_ENV):
                raise SettingsError(f"the function's environment has no {PLATFORM_ENV}; deploy the Platform stack")
            with aws.throttling_is_retried():
                parameters = aws.read_parameters(aws.client("ssm"), app_parameters_path(environ[PLATFORM_ENV]))
            self._read = (now, ControlPlaneSettings.from_environ(environ, parameters))
        return self._read[1]

    def cache_clear(self) -> None:
        """Read everything again on the next call (tests, after they change the configuration)."""
        self._read = None


settings = _Settings()


def require_active_region() -> None:
    """Refuse a change (409) in a region that is not its environment's active one: a secondary
    region answers reads only until an operator makes it the active region (docs/regions.md).
    Read on every change, so a switch takes effect at once."""
    regions = settings().regions
    if regions is None:  # one region: it is always the active one
        return
    ssm = aws.client("ssm")
    here = ssm.meta.region_name
    name = active_region_parameter_name(settings().env)
    try:
        with aws.throttling_is_retried():
            active = ssm.get_parameter(Name=name)["Parameter"]["Value"].strip()
    except ssm.exceptions.ParameterNotFound:
        active = regions.primary
    if active not in (regions.primary, regions.secondary):
        raise SettingsError(
            f"the parameter {name} says {active!r}; it must name {regions.primary} or {regions.secondary}"
        )
    if active != here:
        other = regions.secondary if here == regions.primary else regions.primary
        raise ReleaseError(
            409,
            f"{settings().env} takes changes in {active}, not here in {here}: use {active}'s API; only if {active} "
            f"is down, make this region the active one: aws ssm put-parameter --overwrite --type String "
            f"--name {name} --value {here} --region {here} (and the same with --region {other} once it is back)",
        )


def health() -> dict[str, Any]:
    """Whether this region's control plane can serve (it reads its bucket): what Route 53's health
    check asks the primary before it sends the API's name to the secondary."""
    s3 = aws.client("s3")
    try:
        with aws.throttling_is_retried():
            s3.head_bucket(Bucket=settings().bucket)
    except aws.Throttled:
        raise  # 503 from the API's handler of throttling, which says so
    except Exception as error:  # any failure to read the bucket is "not healthy", said in one line
        raise ReleaseError(503, f"the release bucket cannot be read ({type(error).__name__})") from None
    return {"healthy": True, "env": settings().env, "region": s3.meta.region_name}


def publisher(app_name: str, env: str) -> Publisher:
    """The releases of ``app_name`` in ``env``; 404 for an app or environment this API does not serve."""
    config = settings()
    if env != config.env:
        raise ReleaseError(404, f"this API serves the {config.env} environment, not {env!r}; use {env}'s API URL")
    if app_name not in config.apps:
        known = ", ".join(sorted(config.apps)) or "none"
        raise ReleaseError(
            404, f"no app {app_name!r} in {env} (apps: {known}); add it to cdk.json and deploy the stack"
        )
    return Publisher(
        Bucket(aws.client("s3"), config.bucket),
        app=app_name,
        env=env,
        runtime=config.apps[app_name],
        max_source_bytes=config.max_source_bytes,
    )


def _building(app_name: str, env: str) -> tuple[Publisher, BuildSettings, str]:
    releases = publisher(app_name, env)
    config = settings()
    build = config.builds.get(app_name)
    if config.release_workflow is None or build is None:
        raise ReleaseError(503, f"builds are not set up for {app_name} in {env}; deploy the Platform-{env} stack")
    return releases, build, config.release_workflow


def create_release(
    app_name: str, env: str, *, upload_id: object, git: object, description: object, parts: object, user: str
) -> tuple[int, dict[str, Any]]:
    """Finalize an uploaded source; the release workflow builds it and its writer makes the release
    (202, the build)."""
    releases, _, workflow = _building(app_name, env)
    prepared = releases.finalize(upload_id=upload_id, git=git, description=description, parts=parts, user=user)
    name = builds.execution_name(app_name, prepared["upload_id"])
    request = builds.workflow_input(app=app_name, env=env, upload_id=prepared["upload_id"])
    try:
        aws.client("stepfunctions").start_execution(stateMachineArn=workflow, name=name, input=json.dumps(request))
    except Exception:
        releases.note_build(prepared["upload_id"], status=None)  # not building: finalizing again may start it
        raise
    return 202, releases.build(prepared["upload_id"])


def write_release(app_name: str, env: str, action: str, **request: Any) -> dict[str, Any]:
    """Ask the release writer (the one component that may write releases) to make one: a config
    change, a rollback or a promotion (:mod:`slipway.writer`). Its refusal is this request's."""
    publisher(app_name, env)  # 404 for an app or environment this API does not serve
    writer = settings().release_writer
    if writer is None:
        raise ReleaseError(503, f"the release writer is not set up in {env}; deploy the Platform-{env} stack")
    payload = {"action": action, "app": app_name, "env": env, **request}
    answer = aws.client("lambda").invoke(FunctionName=writer, Payload=json.dumps(payload).encode())
    body = json.loads(answer["Payload"].read() or b"null")
    if answer.get("FunctionError") or not isinstance(body, dict) or "status" not in body:
        cause = body.get("errorMessage") if isinstance(body, dict) else None
        raise ReleaseError(502, f"the release writer failed ({cause or answer.get('FunctionError')}); nothing changed")
    if body["status"] != 201:
        raise ReleaseError(int(body["status"]), str(body.get("message")))
    result: dict[str, Any] = body["result"]
    return result


def show_build(app_name: str, env: str, upload_id: str, *, after: str | None) -> dict[str, Any]:
    """A build's status, the release it made or why it failed, and its log from ``after`` on
    (the ``next`` token of the previous answer): what ``slipway release`` streams."""
    releases = publisher(app_name, env)
    shown = releases.build(upload_id)
    log: list[str] = []
    token = after
    if shown["build_id"]:
        [found] = aws.client("codebuild").batch_get_builds(ids=[shown["build_id"]])["builds"] or [{}]
        shown["phase"] = found.get("currentPhase")
        group, stream = (found.get("logs") or {}).get("groupName"), (found.get("logs") or {}).get("streamName")
        if group and stream:
            log, token = aws.read_log(aws.client("logs"), group, stream, after)
    return {**shown, "log": log, "next": token}


def _deploying(app_name: str, env: str) -> tuple[Publisher, FleetSettings, str]:
    releases = publisher(app_name, env)
    config = settings()
    fleet = config.fleets.get(app_name)
    if config.state_machine is None or fleet is None:
        raise ReleaseError(503, f"deploys are not set up for {app_name} in {env}; deploy the Platform-{env} stack")
    return releases, fleet, config.state_machine


def start_deploy(
    app_name: str, env: str, release: str, *, kind: str, strategy: object, user: str, process: str | None = None
) -> dict[str, Any]:
    """Start a rollout of ``release``; refused before anything starts if the app is locked or the
    release does not exist. The deploy's view, as :func:`show_deploy` gives it."""
    releases, fleet, machine = _deploying(app_name, env)
    try:
        # The app's own defaults (cdk.json `rollout`; a rollback's from them), then this deploy's options.
        base = rollback_strategy(fleet.strategy) if kind == deploys.ROLLBACK else fleet.strategy
        chosen = Strategy.parse(strategy, base)
    except StrategyError as error:
        raise ReleaseError(400, str(error)) from None
    releases.show(release)  # 404 for a release that does not exist
    refuse_if_locked(releases, kind)
    name = deploys.deploy_id(app_name, release, datetime.now(UTC), secrets.token_hex(2))
    try:
        request = deploys.execution_input(
            app=app_name, env=env, release=release, user=user, kind=kind, strategy=chosen, process=process
        )
    except RequestRefused as error:
        raise ReleaseError(400, str(error)) from None
    started = aws.client("stepfunctions").start_execution(stateMachineArn=machine, name=name, input=json.dumps(request))
    description = {"name": name, "status": "RUNNING", "input": json.dumps(request), "startDate": started["startDate"]}
    return deploys.view(description, [])


def newest_release(app_name: str, env: str) -> str:
    """The id of the newest release; 409 when nothing was published yet."""
    listing = publisher(app_name, env).list_releases(limit=1, before=None)["releases"]
    if not listing:
        raise ReleaseError(409, f"{app_name} has no releases in {env}; publish one with `slipway release`")
    return str(listing[0]["id"])


def rollback(app_name: str, env: str, *, strategy: object, user: str, to: object = None) -> dict[str, Any]:
    """Roll back as Heroku does: a new release copying ``to`` (default: the release that served before
    the current one), its slug and config, then deployed in one batch; so the newest release that
    deployed is what serves. Refused before anything is made while another rollout holds the lock."""
    releases, _, _ = _deploying(app_name, env)
    refuse_if_locked(releases, deploys.ROLLBACK)
    made = write_release(app_name, env, "rollback", to=to, user=user)
    return start_deploy(app_name, env, made["id"], kind=deploys.ROLLBACK, strategy=strategy, user=user)


def restart(app_name: str, env: str, *, strategy: object, user: str, process: object = None) -> dict[str, Any]:
    """Restart the current release on every instance, batch by batch as a rollout goes (a fresh
    copy started beside the running one and switched to, then baked): a rolling restart;
    ``current`` stays. ``process``: only the
    processes of that Procfile type (each instance refuses a type its release does not run)."""
    if process is not None and (not isinstance(process, str) or not PROCESS_TYPE.fullmatch(process)):
        raise ReleaseError(400, f"process must be a Procfile process type such as web or worker; got {process!r}")
    releases, _, _ = _deploying(app_name, env)
    current = releases.current()
    if current is None:
        raise ReleaseError(409, f"{app_name} in {env} runs no release yet; deploy one first")
    return start_deploy(app_name, env, current, kind=deploys.RESTART, strategy=strategy, user=user, process=process)


def list_deploys(app_name: str, env: str) -> list[dict[str, Any]]:
    _, _, machine = _deploying(app_name, env)
    sfn = aws.client("stepfunctions")
    executions = sfn.list_executions(stateMachineArn=machine, maxResults=100)["executions"]
    mine = [e for e in executions if (deploys.deploy_of(e["name"]) or ("",))[0] == app_name]
    shown = [deploys.view(sfn.describe_execution(executionArn=e["executionArn"]), []) for e in mine[:20]]
    return sorted(shown, key=lambda d: d["started_at"] or "", reverse=True)


def _execution(app_name: str, env: str, deploy: str) -> tuple[Publisher, str, dict[str, Any]]:
    """The deploy's release store, execution ARN and description; 404 for one that is not the app's."""
    releases, _, machine = _deploying(app_name, env)
    if (deploys.deploy_of(deploy) or ("",))[0] != app_name:
        raise ReleaseError(404, f"{deploy!r} is not a deploy of {app_name}; list them with `slipway deploys`")
    arn = machine.replace(":stateMachine:", ":execution:") + f":{deploy}"
    sfn = aws.client("stepfunctions")
    try:
        description: dict[str, Any] = sfn.describe_execution(executionArn=arn)
    except sfn.exceptions.ExecutionDoesNotExist:
        raise ReleaseError(404, f"no deploy {deploy} of {app_name} in {env}") from None
    return releases, arn, description


def cancel_deploy(app_name: str, env: str, deploy: str, *, user: str) -> dict[str, Any]:
    """Ask a running rollout to stop and roll back: it reads the request at its next step
    (:mod:`slipway.rollout.tasks`), then puts the changed instances back, as after a failure."""
    releases, _, description = _execution(app_name, env, deploy)
    if description["status"] != "RUNNING":
        raise ReleaseError(409, f"deploy {deploy} has already ended ({description['status']}); nothing to cancel")
    request = {"by": user, "at": datetime.now(UTC).isoformat(timespec="seconds")}
    releases.bucket.put(releases.keys.cancel(deploy), json.dumps(request).encode())
    return {**deploys.view(description, []), "cancel": request}


def show_deploy(app_name: str, env: str, deploy: str) -> dict[str, Any]:
    """A deploy's status, step, batches, and its failure if it failed."""
    _, arn, description = _execution(app_name, env, deploy)
    sfn = aws.client("stepfunctions")
    pages = sfn.get_paginator("get_execution_history").paginate(executionArn=arn)
    events: Iterable[dict[str, Any]] = (e for page in pages for e in page["events"])
    return deploys.view(description, events)


def refuse_if_locked(releases: Publisher, doing: str) -> None:
    """409 naming the holder while another rollout holds the app's deploy lock."""
    held = releases.bucket.read(releases.keys.lock)
    now = datetime.now(UTC)
    if held is not None:
        try:
            existing = Lock.from_json(held.body)
        except ValueError as error:
            raise ReleaseError(409, str(error)) from None
        if decide(existing, now=now) == "refuse":
            raise ReleaseError(409, f"cannot {doing} {releases.app} in {releases.env}: {refusal(existing, now)}")


def _group(fleet: FleetSettings) -> dict[str, Any]:
    found = aws.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[fleet.group])
    if not found["AutoScalingGroups"]:
        raise ReleaseError(503, f"the fleet's Auto Scaling group {fleet.group} does not exist; deploy the stack")
    group: dict[str, Any] = found["AutoScalingGroups"][0]
    return group


def status(app_name: str, env: str) -> dict[str, Any]:
    """The current release, who is deploying what, the fleet's capacity and every instance's health."""
    releases, fleet, _ = _deploying(app_name, env)
    group = _group(fleet)
    health = aws.client("elbv2").describe_target_health(TargetGroupArn=fleet.target_group)["TargetHealthDescriptions"]
    targets = {t["Target"]["Id"]: t["TargetHealth"]["State"] for t in health}
    held = releases.bucket.read(releases.keys.lock)
    lock = Lock.from_json(held.body) if held else None
    return {
        "app": app_name,
        "env": env,
        "current": releases.current(),
        "previous": releases.previous(),  # what a rollback deploys
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
                "release": releases.instance_release(i["InstanceId"]),
            }
            for i in sorted(group["Instances"], key=lambda i: (i["AvailabilityZone"], i["InstanceId"]))
        ],
    }


def cycle(app_name: str, env: str, *, instance: object, min_healthy_percent: object) -> dict[str, Any]:
    """Replace one instance (capacity kept), or every instance by a guarded instance refresh."""
    releases, fleet, _ = _deploying(app_name, env)
    refuse_if_locked(releases, "cycle")
    group = _group(fleet)
    autoscaling = aws.client("autoscaling")
    if instance is not None:
        members = {i["InstanceId"] for i in group["Instances"]}
        if instance not in members:
            raise ReleaseError(404, f"{instance!r} is not an instance of {app_name} in {env}; see `slipway status`")
        # The group launches a replacement at once: capacity is kept.
        autoscaling.terminate_instance_in_auto_scaling_group(InstanceId=instance, ShouldDecrementDesiredCapacity=False)
        return {"kind": "instance", "instance": instance, "status": "replacing"}
    percent = 90 if min_healthy_percent is None else min_healthy_percent
    if not isinstance(percent, int) or isinstance(percent, bool) or not 0 <= percent <= 100:
        raise ReleaseError(400, "min_healthy_percent must be a whole number from 0 to 100 (default 90)")
    try:
        refresh = autoscaling.start_instance_refresh(**instance_refresh_request(fleet, percent))
    except autoscaling.exceptions.InstanceRefreshInProgressFault:  # Auto Scaling runs one refresh at a time
        raise ReleaseError(409, _cycling_already(autoscaling, fleet, app_name, env)) from None
    return {"kind": "fleet", "refresh": refresh["InstanceRefreshId"], "status": "Pending"}


# The states of an instance refresh that has not ended: Auto Scaling starts no other meanwhile.
REFRESH_RUNNING = ("Pending", "InProgress", "Cancelling", "RollbackInProgress", "Baking")


def _cycling_already(autoscaling: Any, fleet: FleetSettings, app_name: str, env: str) -> str:
    """Why the fleet cannot be cycled now: the instance refresh that runs, and what to do."""
    found = autoscaling.describe_instance_refreshes(AutoScalingGroupName=fleet.group)["InstanceRefreshes"]
    running = next((r for r in found if r.get("Status") in REFRESH_RUNNING), None)
    if running is None:  # it ended between the two calls
        return f"an instance refresh of {app_name} in {env} was running and has just ended; cycle again"
    refresh = running["InstanceRefreshId"]
    return (
        f"{app_name} in {env} is already being cycled: instance refresh {refresh} is {running['Status']} "
        f"({running.get('PercentageComplete', 0)}% done); wait for it to end (the `slipway cycle` that started "
        f"it shows its progress, as does GET /apps/{app_name}/envs/{env}/cycle/{refresh}), then cycle again"
    )


def start_run(app_name: str, env: str, *, command: object, timeout: object, user: str) -> dict[str, Any]:
    """Run ``command`` once on an in-service instance with the current release (``slipway run``);
    refused, nothing sent, for a bad command or time limit, or when no release is current."""
    releases, fleet, _ = _deploying(app_name, env)
    config = settings().runs
    if config is None:
        raise ReleaseError(503, f"one-off commands are not set up in {env}; deploy the Platform-{env} stack")
    text, limit = runs.check(command, timeout)
    current = releases.current()
    if current is None:
        raise ReleaseError(409, f"no release of {app_name} is current in {env}; deploy one first (slipway deploy)")
    instances = _group(fleet)["Instances"]
    # What each instance in service runs, as the last rollout recorded it (the others are never chosen).
    known = {
        i["InstanceId"]: releases.instance_release(i["InstanceId"])
        for i in instances
        if i.get("LifecycleState") == "InService"
    }
    instance = runs.choose_instance(instances, known, current)
    request = runs.send_run_request(
        config, instance=instance, app=app_name, env=env, release=current, command=text, timeout=limit, user=user
    )
    sent = aws.client("ssm").send_command(**request)["Command"]
    return {**runs.view(sent, None), "command": text, "timeout_seconds": limit, "output": [], "next": None}


def show_run(app_name: str, env: str, run_id: str, *, after: str | None) -> dict[str, Any]:
    """A one-off's status, its exit status once done, and its output from ``after`` on."""
    publisher(app_name, env)
    config = settings().runs
    if config is None:
        raise ReleaseError(503, f"one-off commands are not set up in {env}; deploy the Platform-{env} stack")
    ssm = aws.client("ssm")
    missing = ReleaseError(404, f"no one-off {run_id} of {app_name} in {env}")
    try:
        found = ssm.list_commands(CommandId=run_id)["Commands"]
    except ssm.exceptions.InvalidCommandId:
        raise missing from None
    prefix = runs.comment_prefix(app_name, env)
    mine = [c for c in found if c.get("DocumentName") == config.document and c.get("Comment", "").startswith(prefix)]
    if not mine or not mine[0].get("InstanceIds"):
        raise missing
    command = mine[0]
    instance = command["InstanceIds"][0]
    try:
        invocation = ssm.get_command_invocation(CommandId=run_id, InstanceId=instance)
    except ssm.exceptions.InvocationDoesNotExist:  # just sent: SSM has not delivered it yet
        invocation = None
    lines, token = aws.read_log(aws.client("logs"), config.log_group, runs.output_stream(run_id, instance), after)
    shown = runs.view(command, invocation)
    if shown["done"] and token is None and invocation is not None:
        # No stream at all (the instance could not write it): what SSM kept of the output.
        lines = str(invocation.get("StandardOutputContent", "")).splitlines()
    return {**shown, "output": lines, "next": token}


def app_logs(
    app_name: str, env: str, *, start: str | None, instance: str | None, process: str | None, after: str | None
) -> dict[str, Any]:
    """The app's log lines from ``start`` (ms) on, of one instance and/or process type if given."""
    publisher(app_name, env)
    group = settings().app_logs
    if group is None:
        raise ReleaseError(
            503, f"app logs do not go to CloudWatch Logs in {env}; set logs.cloudwatch in cdk.json and deploy the stack"
        )
    return applogs.read(
        aws.client("logs"),
        group,
        app_name,
        start=applogs.parse_start(start),
        instance=instance or None,
        process=process or None,
        after=after or None,
    )


SCALE_KEYS = ("min", "desired", "max")


def scale(app_name: str, env: str, *, requested: dict[str, Any]) -> dict[str, Any]:
    """Set the fleet's capacity (any of min, desired, max) within what cdk.json allows.

    A value left out keeps the group's own; desired follows min and max when only they move
    (as Auto Scaling does). Refused, changing nothing, while a rollout holds the lock (it plans
    over the instances in service: a scale-in would take some of its batches away), or when a
    value given leaves the configured limits."""
    releases, fleet, _ = _deploying(app_name, env)
    given = {key: requested[key] for key in SCALE_KEYS if requested.get(key) is not None}
    if not given:
        raise ReleaseError(400, 'give at least one of min, desired and max, e.g. {"desired": 3}')
    for key, value in given.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ReleaseError(400, f"{key} must be a whole number of instances, 0 or more; got {value!r}")
        if not fleet.min_capacity <= value <= fleet.max_capacity:
            raise ReleaseError(
                400,
                f"{key} {value} is outside what {app_name} in {env} may scale to: {fleet.min_capacity} to "
                f"{fleet.max_capacity} instances (min_capacity and max_capacity in cdk.json, which a platform "
                "engineer changes)",
            )
    refuse_if_locked(releases, "scale")
    group = _group(fleet)
    before = {"min": group["MinSize"], "desired": group["DesiredCapacity"], "max": group["MaxSize"]}
    low, high = given.get("min", before["min"]), given.get("max", before["max"])
    if low > high:
        raise ReleaseError(400, f"min {low} would be above max {high}; give a min at most the max")
    desired = given.get("desired", min(max(before["desired"], low), high))
    if not low <= desired <= high:
        raise ReleaseError(400, f"desired {desired} is outside min {low} and max {high}; give one from {low} to {high}")
    after = {"min": low, "desired": desired, "max": high}
    aws.client("autoscaling").update_auto_scaling_group(
        AutoScalingGroupName=fleet.group, MinSize=low, MaxSize=high, DesiredCapacity=desired
    )
    return {
        "app": app_name,
        "env": env,
        "before": before,
        "after": after,
        "limits": {"min": fleet.min_capacity, "max": fleet.max_capacity},
    }


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


def show_cycle(app_name: str, env: str, refresh: str) -> dict[str, Any]:
    _, fleet, _ = _deploying(app_name, env)
    found = aws.client("autoscaling").describe_instance_refreshes(
        AutoScalingGroupName=fleet.group, InstanceRefreshIds=[refresh]
    )["InstanceRefreshes"]
    if not found:
        raise ReleaseError(404, f"no cycle {refresh} of {app_name} in {env}")
    shown = found[0]
    return {
        "refresh": refresh,
        "status": shown["Status"],
        "percent": shown.get("PercentageComplete", 0),
        "reason": shown.get("StatusReason", ""),
    }


def list_apps() -> dict[str, Any]:
    """Every app this API serves: its URL, current release, default strategy and how many of its
    instances are in service (one Auto Scaling call for all of them)."""
    config = settings()
    groups: dict[str, dict[str, Any]] = {}
    names = [fleet.group for fleet in config.fleets.values()]
    if names:
        pages = (
            aws.client("autoscaling")
            .get_paginator("describe_auto_scaling_groups")
            .paginate(AutoScalingGroupNames=names)
        )
        groups = {g["AutoScalingGroupName"]: g for page in pages for g in page["AutoScalingGroups"]}
    apps = []
    for name in sorted(config.apps):
        fleet = config.fleets.get(name)
        group = groups.get(fleet.group) if fleet else None
        apps.append(
            {
                "name": name,
                "url": fleet.url if fleet else None,
                "current": publisher(name, config.env).current(),
                "strategy": (fleet.strategy if fleet else Strategy()).as_dict(),
                "instances": None
                if group is None
                else {
                    "desired": group["DesiredCapacity"],
                    "in_service": sum(1 for i in group["Instances"] if i["LifecycleState"] == "InService"),
                },
            }
        )
    return {"env": config.env, "apps": apps}
