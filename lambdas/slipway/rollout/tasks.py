"""The rollout state machine's tasks: one Lambda, one small function per state.

Every task takes the execution's state (a JSON object), does one step through AWS
(Auto Scaling, ELB, SSM, CloudWatch, S3) and returns the state updated. Decisions are
the pure functions of :mod:`slipway.rollout.plan`, :mod:`~slipway.rollout.lock` and
:mod:`~slipway.rollout.health`; checks return a ``verdict`` the state machine's Choice
states route on (``WAIT`` loops through a Wait state, ``FAILED`` rolls back).

State fields (the input, :class:`~slipway.rollout.request.RolloutRequest`, or set by the tasks)::

    app, env, release, user, kind, strategy  what to deploy, how, and who asked (the input)
    execution                                this execution (Step Functions names it)
    fleet: {...}, timing: {...}              slipway.settings.FleetSettings and Timing, derived by lock
                                             from the environment's settings (never the input)
    previous, lock_expires_at                current before the rollout, and the lock's expiry (lock)
    batches, cursor, done, activating        the plan and progress (plan, send, advance)
    unserved, baking_since                   the batch's targets not healthy before its switch, and
                                             when its bake began (send, baked)
    rolling_back, rolled_back, restored      after a failure: the batch that puts the changed
                                             instances back on ``previous`` (rollback, advance)
    command: {ids, instances, url, action}   the command being waited for ({command id: its instances})
    checked_at, verdict, reason, failure     the latest check's outcome

Every instance switches in place (docs/switch.md): the agent starts the release beside the one
that serves and moves the instance's front to it, so no batch leaves the load balancer, and the
fleet's minimum in service does not limit a batch.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from slipway import aws
from slipway.configured import NotConfigured, configured
from slipway.publisher import AppReleases
from slipway.releases import ReleaseError
from slipway.rollout.commands import ACTIVATE, DEPLOY, RESTART, STAGE, send_deploy_requests
from slipway.rollout.health import TARGET_HEALTHY, alarms_verdict, batch_verdict, command_verdict
from slipway.rollout.lock import DeployLock, LockHeld, LockLost
from slipway.rollout.plan import Instance, plan_batches, plan_rollback
from slipway.rollout.request import RESTART as RESTART_KIND
from slipway.rollout.request import ROLLBACK, RequestRefused, RolloutRequest
from slipway.rollout.strategy import Strategy
from slipway.settings import FleetSettings, Timing
from slipway.store import Bucket
from slipway_release.layout import MANIFEST, AppKeys, release_url

State = dict[str, Any]
OUTPUT_TAIL = 2000
# A watching check (command_done, baked) looks again this often within its watch.
WATCH_INTERVAL_SECONDS = 1.0


class RolloutError(Exception):
    """A step cannot go on; Step Functions sees the class name as the error and rolls back."""


class Cancelled(Exception):
    """Someone asked the rollout to stop (``POST .../deploys/<id>/cancel``): it rolls back."""


class LockRefused(Exception):
    """Another rollout holds the app's lock: refuse without touching anything."""


def _now() -> datetime:
    return datetime.now(UTC)


def _elapsed(state: State, key: str) -> float:
    return (_now() - datetime.fromisoformat(state[key])).total_seconds()


def _fleet(state: State) -> FleetSettings:
    return FleetSettings.from_json(state["fleet"])


def _timing(state: State) -> Timing:
    return Timing.from_json(state["timing"])


def _releases(state: State) -> AppReleases:
    return AppReleases(Bucket(aws.client("s3"), _fleet(state).bucket), app=state["app"], env=state["env"])


def _deploy_lock(state: State) -> DeployLock:
    return DeployLock(Bucket(aws.client("s3"), _fleet(state).bucket))


def _release_url(state: State, release: str) -> str:
    return release_url(_fleet(state).bucket, state["app"], state["env"], release)


# Lock and plan --------------------------------------------------------------------------------


def derive(request: RolloutRequest) -> tuple[FleetSettings, Timing]:
    """The app's fleet (its group, target group, alarms, document, bucket) and the rollout's pacing,
    from this environment's own settings (:mod:`slipway.configured`), never from the input.
    :class:`RequestRefused` for an app or environment it does not hold."""
    try:
        found = configured(request.app, request.env)
    except NotConfigured as error:
        raise RequestRefused(str(error)) from None
    if found.settings.fleet is None:
        raise RequestRefused(f"{request.app} has no fleet in {request.env}; deploy the Platform-{request.env} stack")
    return found.settings.fleet, found.timing


def lock(state: State) -> State:
    """Check the input and derive what the rollout acts on, take the app's deploy lock, and note the
    current release to roll back to. An input that is not a rollout of this environment, or a
    release that does not exist, is refused with nothing changed."""
    request = RolloutRequest.from_json({key: value for key, value in state.items() if key != "execution"})
    fleet, timing = derive(request)
    state = {**request.to_json(), "execution": state["execution"], "fleet": fleet.to_json(), "timing": timing.to_json()}
    deploy_lock = _deploy_lock(state)
    try:
        held = deploy_lock.acquire(
            state["app"],
            state["env"],
            owner=state["user"],
            execution=state["execution"],
            release=state["release"],
            ttl=timedelta(minutes=_timing(state).lock_minutes),
            now=_now(),
        )
    except (LockHeld, ValueError) as refused:  # ValueError: a corrupt lock object, whose message says what to do
        raise LockRefused(str(refused)) from None
    try:
        pinned = _pin(_releases(state), state["release"])
    except ReleaseError as error:
        deploy_lock.release(state["app"], state["env"], execution=state["execution"])
        raise LockRefused(str(error)) from None
    return {
        **state,
        **pinned,
        "started_at": _now().isoformat(),
        "lock_expires_at": held.expires_at.isoformat(),
        "done": [],
    }


def _pin(releases: AppReleases, release: str) -> State:
    """The digests the rollout pins, before it touches an instance: the release's manifest (valid,
    naming itself), and current's, which must still be the one current pinned when it moved (what
    a rollback switches back to). ``ReleaseError`` for a release that does not exist or whose record
    changed since it was made or made current."""
    _, digest = releases.verified(release)
    pointer = releases.pointer()
    if pointer is None:
        return {"digest": digest, "previous": None, "previous_digest": None}
    _, previous_digest = releases.verified(pointer.release)
    if pointer.digest is not None and pointer.digest != previous_digest:
        raise ReleaseError(
            422,
            f"{releases.keys.release(pointer.release, MANIFEST)} no longer has the digest current pins "
            f"({pointer.digest[:12]}…): the record of what serves was changed after it was made; nothing was deployed",
        )
    return {"digest": digest, "previous": pointer.release, "previous_digest": previous_digest}


def keep_lock(state: State) -> State:
    """Renew the deploy lock once half its time is gone, so a long rollout keeps the app to itself.

    ``LockLost`` (the lock expired and another rollout took it, or it was removed) stops
    this rollout: it no longer has the app to itself.
    """
    expires = state.get("lock_expires_at")
    if not expires:
        return state
    ttl = timedelta(minutes=_timing(state).lock_minutes)
    if datetime.fromisoformat(expires) - _now() > ttl / 2:
        return state
    try:
        renewed = _deploy_lock(state).renew(
            state["app"], state["env"], execution=state["execution"], ttl=ttl, now=_now()
        )
    except LockLost as lost:
        if "error" in state or "rolled_back" in state:
            return state  # already rolling back: finish putting the instances back
        raise RolloutError(str(lost)) from None
    return {**state, "lock_expires_at": renewed.expires_at.isoformat()}


def _group(group: str) -> Mapping[str, Any]:
    described = aws.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[group])
    if not described["AutoScalingGroups"]:
        raise RolloutError(f"the fleet's Auto Scaling group {group} does not exist; deploy the stack")
    found: Mapping[str, Any] = described["AutoScalingGroups"][0]
    return found


def _in_service(group: str) -> list[Instance]:
    asg = _group(group)
    return [
        Instance(id=i["InstanceId"], zone=i["AvailabilityZone"])
        for i in asg["Instances"]
        if i["LifecycleState"] == "InService" and i["HealthStatus"] == "Healthy"
    ]


def plan(state: State) -> State:
    """Plan the batches over the in-service instances, by the strategy alone: each instance
    switches in place, so none leaves the load balancer. Instances that come into service later
    boot ``current`` and get the release at the end (converge)."""
    instances = _in_service(_fleet(state).group)
    strategy = Strategy.parse(state.get("strategy"))
    return {
        **state,
        "batches": [list(b) for b in plan_batches(instances, strategy=strategy)],
        "cursor": 0,
        "bake_seconds": strategy.bake_seconds,
        "planned": sorted(i.id for i in instances),
    }


# One batch ------------------------------------------------------------------------------------


def _batch(state: State) -> list[str]:
    batch: list[str] = state["batches"][state["cursor"]]
    return batch


def _target(state: State) -> str:
    """The release the batches switch to: the rollout's, or the previous one while rolling back."""
    return str(state["previous"] if state.get("rolling_back") else state["release"])


def stage(state: State) -> State:
    """Stage the release on every planned instance at once, while they all serve: download, verify,
    unpack and preflight; nothing they serve changes."""
    return _send(state, state["planned"], state["release"], action=STAGE)


def send(state: State) -> State:
    """Activate the staged release on the batch, in place: the release phase, the release started
    beside the serving one and checked, the instance's front switched to it, checked through the
    front. While rolling back, the previous release, which every changed instance keeps staged;
    for a rolling restart, a fresh copy of the release the batch runs."""
    restarting = state["kind"] == RESTART_KIND and not state.get("rolling_back")
    target, batch = _target(state), _batch(state)
    unserved: list[str] = []
    if not state.get("rolling_back"):  # the bake waits for those not serving yet (a first deploy), not fails them
        states, _ = _target_health(state, batch)
        unserved = [i for i in batch if states.get(i) != TARGET_HEALTHY]
    if restarting:
        sent = _send(state, batch, target, action=RESTART, process=state.get("process"))
    else:
        sent = _send(state, batch, target, action=ACTIVATE)
    return {**sent, "activating": batch, "unserved": unserved}


def _send(
    state: State, instances: list[str], release: str, *, action: str = DEPLOY, process: str | None = None
) -> State:
    """Send the deploy document for ``release`` (the rollout's, or the previous one) to ``instances``,
    with the manifest digest the rollout pinned for it, which each instance checks before it stages
    and again before it activates (one command per 50 instances, SSM's limit)."""
    url = _release_url(state, release)
    requests = send_deploy_requests(
        _fleet(state),
        instances=instances,
        url=url,
        digest=state["digest"] if release == state["release"] else state["previous_digest"],
        kind=ROLLBACK if state.get("rolled_back") is not None else state["kind"],
        user=state["user"],
        timeout_seconds=_timing(state).command_timeout,
        action=action,
        process=process,
    )
    ssm = aws.client("ssm")
    ids = {ssm.send_command(**request)["Command"]["CommandId"]: request["InstanceIds"] for request in requests}
    return {
        **state,
        "command": {"ids": ids, "instances": instances, "url": url, "action": action},
        "checked_at": _now().isoformat(),
    }


def command_done(state: State) -> State:
    """Where the command stands on every instance; the failing instance's output if one failed.

    One ``ListCommandInvocations`` page per 50 instances, whatever the batch's size; the
    full output only of the instance that failed.
    """
    command = state["command"]
    statuses = {i: "Pending" for i in command["instances"]}  # until SSM registers the invocation
    for command_id in command["ids"]:
        statuses.update(_statuses(command_id))
    result = command_verdict(statuses, waited=_elapsed(state, "checked_at"), timeout=_timing(state).command_timeout)
    update: State = {"verdict": result.verdict.name, "reason": result.reason}
    if result.verdict.name == "FAILED":
        failed = result.subjects[0] if result.subjects else command["instances"][0]
        [command_id] = [c for c, instances in command["ids"].items() if failed in instances]
        invocation = _invocation(command_id, failed)
        output = (
            invocation.get("StandardOutputContent", "") + "\n" + invocation.get("StandardErrorContent", "")
        ).strip()
        update["failure"] = {"instance": failed, "reason": result.reason, "output": output[-OUTPUT_TAIL:]}
    return {**state, **update}


def _statuses(command_id: str) -> dict[str, str]:
    pages = aws.client("ssm").get_paginator("list_command_invocations")
    return {
        invocation["InstanceId"]: invocation["Status"]
        for page in pages.paginate(CommandId=command_id, PaginationConfig={"PageSize": 50})
        for invocation in page["CommandInvocations"]
    }


def _invocation(command_id: str, instance: str) -> dict[str, Any]:
    ssm = aws.client("ssm")
    try:
        found: dict[str, Any] = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance)
    except ssm.exceptions.InvocationDoesNotExist:
        return {"Status": "Pending"}  # SSM has not registered the invocation yet
    return found


def baked(state: State) -> State:
    """The bake: FAILED at once if one of the fleet's alarms fires or a target of the batch that
    served before its switch turns unhealthy in the load balancer (the release may fail after the
    agent's checks passed); WAIT until those that did not serve (a first deploy) pass the load
    balancer's checks, and until the bake time has passed since the batch switched.

    Not while rolling back: the alarm that stopped the rollout may still be firing, and an
    instance found unhealthy takes the load balancer's checks to be healthy again; the previous
    release is what the fleet ran before, and the agent checked it through each front."""
    if state.get("rolling_back"):
        return {**state, "verdict": "READY", "reason": "rolling back: no bake"}
    since = state.get("baking_since") or _now().isoformat()
    names = list(_fleet(state).alarms)
    found = aws.client("cloudwatch").describe_alarms(AlarmNames=names)["MetricAlarms"] if names else []
    result = alarms_verdict({a["AlarmName"]: a["StateValue"] for a in found})
    update: State = {"verdict": result.verdict.name, "reason": result.reason}
    if result.verdict.name == "FAILED":
        update["failure"] = {"instance": None, "reason": result.reason, "output": ""}
        return {**state, **update, "baking_since": None}
    states, reasons = _target_health(state, _batch(state))
    unserved = state.get("unserved") or []
    targets = batch_verdict(
        states,
        _batch(state),
        unserved=unserved,
        waited_seconds=(_now() - datetime.fromisoformat(since)).total_seconds(),
        timeout_seconds=_timing(state).healthy_timeout,
        reasons=reasons,
    )
    if targets.verdict.name == "FAILED":
        update = {"verdict": "FAILED", "reason": targets.reason}
        update["failure"] = {"instance": targets.subjects[0], "reason": targets.reason, "output": ""}
    elif targets.verdict.name == "WAIT":
        update = {"verdict": "WAIT", "reason": targets.reason}
    elif (_now() - datetime.fromisoformat(since)).total_seconds() < state["bake_seconds"]:
        update.update(verdict="WAIT", reason=f"baking since {since}: {result.reason}")
    # A target seen healthy has served from then on: turning unhealthy later fails the batch at once.
    serving_now = [i for i in unserved if states.get(i) == TARGET_HEALTHY]
    return {
        **state,
        **update,
        "unserved": [i for i in unserved if i not in serving_now],
        "baking_since": since if update["verdict"] == "WAIT" else None,
    }


def _target_health(state: State, instances: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Each of ``instances``' state in the fleet's target group, and ELB's reason for it."""
    described = aws.client("elbv2").describe_target_health(
        TargetGroupArn=_fleet(state).target_group, Targets=[{"Id": i} for i in instances]
    )["TargetHealthDescriptions"]
    return (
        {t["Target"]["Id"]: t["TargetHealth"]["State"] for t in described},
        {
            t["Target"]["Id"]: t["TargetHealth"].get("Description") or t["TargetHealth"].get("Reason", "")
            for t in described
        },
    )


def advance(state: State) -> State:
    """The batch is done: note its release and move to the next batch."""
    _releases(state).record_instances(_batch(state), _target(state))
    cursor = state["cursor"] + 1
    progress = "restored" if state.get("rolling_back") else "done"
    return {
        **state,
        progress: [*state.get(progress, []), *_batch(state)],
        "rolling_back": bool(state.get("rolling_back")),
        "activating": [],
        "cursor": cursor,
        "more": cursor < len(state["batches"]),
    }


# The end --------------------------------------------------------------------------------------


def promote(state: State) -> State:
    """Every batch is on the release: move ``current`` (compare-and-swap against the rollout's start).
    A rolling restart leaves ``current`` where it is: it is the release restarted."""
    if state["kind"] == RESTART_KIND:
        return {**state, "promoted": True}
    try:
        _releases(state).move_current(state["release"], digest=state["digest"], expected=state["previous"])
    except ReleaseError as error:
        raise RolloutError(str(error)) from None
    return {**state, "promoted": True}


def converge(state: State) -> State:
    """Instances launched during the rollout booted the old ``current``: deploy the release to them."""
    instances = _in_service(_fleet(state).group)
    late = sorted(i.id for i in instances if i.id not in state["done"])
    if not late:
        return {**state, "verdict": "READY", "converged": []}
    return {**_send(state, late, state["release"]), "verdict": "WAIT", "converged": late}


def unlock(state: State) -> State:
    """Note where the late and the rolled-back instances ended up, then release the lock."""
    failed = state.get("verdict") == "FAILED"  # the last command (converge or rollback) did not succeed
    releases = _releases(state)
    if state.get("rolled_back"):
        # Those the rollback's batches restored were noted as they went (advance).
        rest = [i for i in state["rolled_back"] if i not in state.get("restored", [])]
        releases.record_instances(rest, None if failed else state.get("previous"))
    elif state.get("converged"):
        releases.record_instances(state["converged"], None if failed else state["release"])
    _deploy_lock(state).release(state["app"], state["env"], execution=state["execution"])
    return state


def rollback(state: State) -> State:
    """Put the instances already changed back on the previous release; ``current`` is untouched.

    In one batch through the same steps as the rollout (verdict ``BATCHES``), activating the
    previous release each instance keeps staged, in place. If a step of that fails too, the
    instances not yet back get the previous release in one command (verdict ``WAIT``, the last
    resort: a full deploy, downloaded again), and the failure says both."""
    if state.get("rolling_back"):
        return _rollback_by_full_deploy(state)
    failure = state.get("failure") or _caught(state)
    try:
        return _rollback_in_place(state, failure)
    except Exception as error:  # reported in the failure, which must survive it
        if aws.is_throttled(error):
            raise
        reason = f"{failure['reason']}; and the rollback could not start ({type(error).__name__}: {error})"
        return {**state, "failure": {**failure, "reason": reason}, "rolled_back": [], "verdict": "READY"}


def _rollback_in_place(state: State, failure: State) -> State:
    # Changed: the batches done, and the batch whose activation was sent. Staging changed nothing.
    changed = {*state.get("done", []), *state.get("activating", [])}
    update: State = {"rolled_back": [], "restored": [], "failure": failure}
    if not changed or not state.get("previous"):
        return {**state, **update, "verdict": "READY"}
    members = {i["InstanceId"]: i for i in _group(_fleet(state).group)["Instances"]}
    present = sorted(i for i in changed if i in members)  # those terminated meanwhile need nothing
    update["rolled_back"] = present
    if not present:
        return {**state, **update, "verdict": "READY"}
    batches = plan_rollback([Instance(id=i, zone=members[i]["AvailabilityZone"]) for i in present])
    return {
        **state,
        **update,
        "rolling_back": True,
        "rollback_cause": failure,
        "batches": [list(b) for b in batches],
        "cursor": 0,
        "verdict": "BATCHES",
        "reason": f"rolling back {len(present)} instance(s) to {state['previous']}, all at once",
    }


def _rollback_by_full_deploy(state: State) -> State:
    """The last resort: switching back in place failed; those not back get a full deploy of the
    previous release (downloaded, staged and activated again), in one command."""
    cause: State = state["rollback_cause"]
    noted: State | None = state.get("failure")
    then = noted if noted and state.get("verdict") == "FAILED" else _caught(state)
    remaining = [i for i in state["rolled_back"] if i not in state.get("restored", [])]
    failed_too = f"{cause['reason']}; and switching back failed too ({then['reason']})"
    reason = f"{failed_too}, so {', '.join(remaining) or 'no instance'} got a full deploy of {state['previous']}"
    update: State = {"rolling_back": False, "failure": {**cause, "reason": reason}}
    if not remaining:
        return {**state, **update, "verdict": "READY"}
    try:
        sent = _send({**state, **update}, remaining, state["previous"])
    except Exception as error:  # reported in the failure, which must survive it
        if aws.is_throttled(error):
            raise
        reason = (
            f"{failed_too}, and the command giving {', '.join(remaining)} a full deploy of {state['previous']} could "
            f"not be sent ({type(error).__name__}: {error}); see slipway status {state['app']} {state['env']}"
        )
        return {**state, **update, "failure": {**cause, "reason": reason}, "verdict": "READY"}
    return {**sent, "verdict": "WAIT"}


def converge_failed(state: State) -> State:
    """After ``current`` moved, instances launched meanwhile did not take the release (or a step after
    the move failed): the deploy is reported failed, not rolled back, with what to do."""
    noted: State | None = state.get("failure")
    cause: State = noted if noted and state.get("verdict") == "FAILED" else _caught(state)
    where = f" on {cause['instance']}" if cause.get("instance") else ""
    reason = (
        f"{state['release']} is current and on every instance of the plan, but the rollout's last step failed"
        f"{where}: {cause['reason']}; replace the instance that did not take it "
        f"(slipway cycle {state['app']} {state['env']} --instance ID), or deploy again"
    )
    return {**state, "failure": {**cause, "reason": reason}}


def unlock_failed(state: State) -> State:
    """The deploy lock could not be released even after retries: say so, and when it frees itself."""
    error = _caught(state)
    before = state.get("failure")
    expires = state.get("lock_expires_at") or "its expiry"
    reason = f"the deploy lock could not be released ({error['reason']}); it frees itself at {expires}"
    return {**state, "failure": {**error, "reason": f"{before['reason']}; and {reason}" if before else reason}}


def _caught(state: State) -> State:
    """The failure of a task that raised (Step Functions put its error under ``$.error``)."""
    error = state.get("error") or {}
    cause = error.get("Cause", "")
    with contextlib.suppress(ValueError, AttributeError):  # Lambda's error payload, when it is one
        cause = json.loads(cause).get("errorMessage", cause)
    return {"instance": None, "reason": f"{error.get('Error', 'error')}: {cause}", "output": ""}


def watching(check: Callable[[State], State]) -> Callable[[State], State]:
    """``check`` repeated every :data:`WATCH_INTERVAL_SECONDS` while it says ``WAIT``, for up to
    ``timing.watch_seconds``: the step is seen done within a second of ending, and one Lambda
    invocation covers most steps, where a Wait state would round each up to ``poll_seconds``.
    Each look first reads the cancel request, so a cancel is seen as soon."""

    def watched(state: State) -> State:
        deadline = time.monotonic() + _timing(state).watch_seconds
        while True:
            state = check(state)
            if state["verdict"] != "WAIT" or time.monotonic() + WATCH_INTERVAL_SECONDS > deadline:
                return state
            time.sleep(WATCH_INTERVAL_SECONDS)
            stop_if_cancelled(state)

    watched.__doc__ = check.__doc__
    return watched


TASKS: dict[str, Callable[[State], State]] = {
    "lock": lock,
    "plan": plan,
    "stage": stage,
    "send": send,
    "command_done": watching(command_done),
    "baked": watching(baked),
    "advance": advance,
    "promote": promote,
    "converge": converge,
    "unlock": unlock,
    "rollback": rollback,
    "converge_failed": converge_failed,
    "unlock_failed": unlock_failed,
}


# Tasks that run while the rollout holds the lock and must keep it: all but taking and releasing it.
_HOLDING_LOCK = set(TASKS) - {"lock", "unlock", "unlock_failed"}
# Where a cancel request stops the rollout: any step before ``current`` moves, except rolling back.
_CANCELLABLE = {"plan", "stage", "send", "command_done", "baked", "advance"}


def stop_if_cancelled(state: State) -> None:
    """Raise :class:`Cancelled` if someone asked this rollout to stop (the API's cancel request)."""
    if state.get("promoted") or "rolled_back" in state or "error" in state:
        return  # past the switch, or already putting instances back
    deploy = state["execution"].rsplit(":", 1)[-1]
    found = Bucket(aws.client("s3"), _fleet(state).bucket).read(AppKeys(state["app"], state["env"]).cancel(deploy))
    if found is not None:
        request = json.loads(found.body)
        raise Cancelled(
            f"{request.get('by', 'someone')} cancelled the rollout at {request.get('at', 'an unknown time')}"
        )


def handler(event: Mapping[str, Any], context: Any) -> State:
    """The Lambda entry point: ``{"task": "<name>", "state": {...}, "execution": "<id>"}``."""
    state = dict(event["state"])
    if "execution" in event:  # Step Functions names the execution; an input that does is not believed
        state["execution"] = event["execution"]
    state.setdefault("execution", "")
    task = event["task"]
    with aws.throttling_is_retried():
        if task in _HOLDING_LOCK:
            state = keep_lock(state)
        if task in _CANCELLABLE:
            stop_if_cancelled(state)
        return TASKS[task](state)
