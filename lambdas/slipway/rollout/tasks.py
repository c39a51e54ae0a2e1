"""The rollout state machine's tasks: one Lambda, one small function per state.

Every task takes the execution's state (a JSON object), does one step through AWS
(Auto Scaling, ELB, SSM, CloudWatch, S3) and returns the state updated. Decisions are
the pure functions of :mod:`slipway.rollout.plan`, :mod:`~slipway.rollout.lock` and
:mod:`~slipway.rollout.health`; checks return a ``verdict`` the state machine's Choice
states route on (``WAIT`` loops through a Wait state, ``FAILED`` rolls back).

State fields (set by the API that starts the execution, or by earlier tasks)::

    app, env, release, user, execution      who deploys what
    fleet: {group, target_group, alarms, document, bucket}
    strategy: {...}                          plan.Strategy options
    timing: {poll_seconds, command_timeout, healthy_timeout, lock_minutes}
    previous                                 current before the rollout (lock)
    batches, cursor, done                    the plan and progress (plan, advance)
    command: {id, instances, sent_at}        the command being waited for
    checked_at, verdict, reason, failure     the latest check's outcome
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from slipway.publisher import Publisher
from slipway.releases import AppRuntime, ReleaseError
from slipway.rollout.health import alarms_verdict, command_verdict, targets_verdict
from slipway.rollout.lock import DeployLock, LockHeld
from slipway.rollout.plan import Instance, Strategy, plan_batches
from slipway.store import Bucket

State = dict[str, Any]
OUTPUT_TAIL = 2000


class RolloutError(Exception):
    """A step cannot go on; Step Functions sees the class name as the error and rolls back."""


class LockRefused(Exception):
    """Another rollout holds the app's lock: refuse without touching anything."""


@cache
def _client(service: str) -> Any:
    import boto3  # imported on first use: no client at import time

    return boto3.client(service)


def _now() -> datetime:
    return datetime.now(UTC)


def _elapsed(state: State, key: str) -> float:
    return (_now() - datetime.fromisoformat(state[key])).total_seconds()


def _publisher(state: State) -> Publisher:
    # Rollouts never publish: the runtime settings only matter to new releases.
    runtime = AppRuntime(port=0, health_check_path="/", formation={})
    return Publisher(
        Bucket(_client("s3"), state["fleet"]["bucket"]),
        app=state["app"],
        env=state["env"],
        runtime=runtime,
        max_source_bytes=0,
    )


def _release_url(state: State, release: str) -> str:
    return f"s3://{state['fleet']['bucket']}/{state['app']}/{state['env']}/{release}"


# Lock and plan --------------------------------------------------------------------------------


def lock(state: State) -> State:
    """Take the app's deploy lock; note the current release to roll back to."""
    deploy_lock = DeployLock(Bucket(_client("s3"), state["fleet"]["bucket"]))
    try:
        deploy_lock.acquire(
            state["app"],
            state["env"],
            owner=state["user"],
            execution=state["execution"],
            release=state["release"],
            ttl=timedelta(minutes=state["timing"]["lock_minutes"]),
            now=_now(),
        )
    except (LockHeld, ValueError) as held:  # ValueError: a corrupt lock object, whose message says what to do
        raise LockRefused(str(held)) from None
    publisher = _publisher(state)
    try:
        publisher.show(state["release"])  # refuse a release that does not exist, before touching instances
    except ReleaseError as error:
        deploy_lock.release(state["app"], state["env"], execution=state["execution"])
        raise LockRefused(str(error)) from None
    return {**state, "previous": publisher.current(), "started_at": _now().isoformat(), "done": [], "surged": 0}


def _in_service(group: str) -> tuple[list[Instance], Mapping[str, Any]]:
    described = _client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[group])
    if not described["AutoScalingGroups"]:
        raise RolloutError(f"the fleet's Auto Scaling group {group} does not exist; deploy the stack")
    asg = described["AutoScalingGroups"][0]
    instances = [
        Instance(id=i["InstanceId"], zone=i["AvailabilityZone"])
        for i in asg["Instances"]
        if i["LifecycleState"] == "InService" and i["HealthStatus"] == "Healthy"
    ]
    return instances, asg


def plan(state: State) -> State:
    """Plan the batches over the in-service instances; surge first if the fleet is too small."""
    instances, asg = _in_service(state["fleet"]["group"])
    if len(instances) < asg["DesiredCapacity"] or (state["surged"] and not _serving(state, instances)):
        if state["surged"] and _elapsed(state, "surge_started") > _surge_timeout(state):
            raise RolloutError(
                f"the {state['surged']} instance(s) added to keep {asg['MinSize']} in service did not pass the load "
                "balancer's health check in time; see the fleet's launch activity and the instances' boot log"
            )
        return {**state, "verdict": "WAIT", "reason": f"{len(instances)} of {asg['DesiredCapacity']} serving"}
    strategy = Strategy.parse(state.get("strategy"), Strategy())
    rollout = plan_batches(instances, strategy=strategy, min_healthy=asg["MinSize"])
    if rollout.surge:
        wanted = asg["DesiredCapacity"] + rollout.surge
        if wanted > asg["MaxSize"]:
            raise RolloutError(
                f"keeping {asg['MinSize']} instances in service needs {rollout.surge} more during the rollout, but "
                f"the fleet's maximum is {asg['MaxSize']}; raise max_capacity or lower min_capacity in cdk.json"
            )
        _client("autoscaling").set_desired_capacity(
            AutoScalingGroupName=state["fleet"]["group"],
            DesiredCapacity=wanted,
        )
        return {
            **state,
            "verdict": "WAIT",
            "surged": state["surged"] + rollout.surge,
            "surge_started": _now().isoformat(),
            "reason": f"surging by {rollout.surge} to keep {asg['MinSize']} in service",
        }
    return {
        **state,
        "verdict": "READY",
        "batches": [list(b) for b in rollout.batches],
        "cursor": 0,
        "bake_seconds": strategy.bake_seconds,
        "planned": sorted(i.id for i in instances),
    }


def _serving(state: State, instances: list[Instance]) -> bool:
    """Are all in-service instances healthy in the target group (a surge instance counts only once it is)?"""
    health = _client("elbv2").describe_target_health(TargetGroupArn=state["fleet"]["target_group"])
    states = {t["Target"]["Id"]: t["TargetHealth"]["State"] for t in health["TargetHealthDescriptions"]}
    return all(states.get(i.id) == "healthy" for i in instances)


def _surge_timeout(state: State) -> float:
    # A new instance boots, provisions, deploys `current`, then passes the health check.
    timing = state["timing"]
    return float(timing["command_timeout"] + timing["healthy_timeout"])


# One batch ------------------------------------------------------------------------------------


def _batch(state: State) -> list[str]:
    batch: list[str] = state["batches"][state["cursor"]]
    return batch


def detach(state: State) -> State:
    """Take the batch out of traffic: standby (no replacement launched) and deregistration (draining)."""
    batch = _batch(state)
    _client("autoscaling").enter_standby(
        AutoScalingGroupName=state["fleet"]["group"],
        InstanceIds=batch,
        ShouldDecrementDesiredCapacity=True,
    )
    _client("elbv2").deregister_targets(
        TargetGroupArn=state["fleet"]["target_group"], Targets=[{"Id": i} for i in batch]
    )
    return {**state, "standby": batch, "checked_at": _now().isoformat()}


def drained(state: State) -> State:
    """Has the load balancer finished draining the batch?"""
    health = _client("elbv2").describe_target_health(TargetGroupArn=state["fleet"]["target_group"])
    still = [
        t["Target"]["Id"]
        for t in health["TargetHealthDescriptions"]
        if t["Target"]["Id"] in state["standby"] and t["TargetHealth"]["State"] != "unused"
    ]
    verdict = "WAIT" if still and _elapsed(state, "checked_at") < state["timing"]["healthy_timeout"] else "READY"
    return {**state, "verdict": verdict, "reason": f"draining {', '.join(still)}" if still else "drained"}


def send(state: State) -> State:
    """Send the deploy command for the release to the batch."""
    return _send(state, _batch(state), _release_url(state, state["release"]))


def _send(state: State, instances: list[str], url: str) -> State:
    command = _client("ssm").send_command(
        DocumentName=state["fleet"]["document"],
        InstanceIds=instances,
        Parameters={"ReleaseUrl": [url]},
        Comment=f"slipway {state['kind']} {state['app']} {state['env']} {url.rsplit('/', 1)[1]} by {state['user']}"[
            :100
        ],
        TimeoutSeconds=state["timing"]["command_timeout"],
    )["Command"]
    return {
        **state,
        "command": {"id": command["CommandId"], "instances": instances, "url": url},
        "checked_at": _now().isoformat(),
    }


def command_done(state: State) -> State:
    """Where the command stands on every instance; the failing instance's output if one failed."""
    command = state["command"]
    invocations = {i: _invocation(command["id"], i) for i in command["instances"]}
    statuses = {i: invocation["Status"] for i, invocation in invocations.items()}
    result = command_verdict(statuses, waited=_elapsed(state, "checked_at"), timeout=state["timing"]["command_timeout"])
    update: State = {"verdict": result.verdict.name, "reason": result.reason}
    if result.verdict.name == "FAILED":
        failed = result.subjects[0] if result.subjects else command["instances"][0]
        output = (
            invocations[failed].get("StandardOutputContent", "")
            + "\n"
            + invocations[failed].get("StandardErrorContent", "")
        ).strip()
        update["failure"] = {"instance": failed, "reason": result.reason, "output": output[-OUTPUT_TAIL:]}
    return {**state, **update}


def _invocation(command_id: str, instance: str) -> dict[str, Any]:
    ssm = _client("ssm")
    try:
        found: dict[str, Any] = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance)
    except ssm.exceptions.InvocationDoesNotExist:
        return {"Status": "Pending"}  # SSM has not registered the invocation yet
    return found


def attach(state: State) -> State:
    """Put the batch back: out of standby, registered with the target group."""
    batch = state.get("standby") or []
    if batch:
        _client("autoscaling").exit_standby(AutoScalingGroupName=state["fleet"]["group"], InstanceIds=batch)
        _client("elbv2").register_targets(
            TargetGroupArn=state["fleet"]["target_group"], Targets=[{"Id": i} for i in batch]
        )
    return {**state, "standby": [], "attached": batch, "checked_at": _now().isoformat()}


def healthy(state: State) -> State:
    """Are the batch's targets healthy in the target group?"""
    health = _client("elbv2").describe_target_health(
        TargetGroupArn=state["fleet"]["target_group"], Targets=[{"Id": i} for i in state["attached"]]
    )
    described = health["TargetHealthDescriptions"]
    states = {t["Target"]["Id"]: t["TargetHealth"]["State"] for t in described}
    reasons = {
        t["Target"]["Id"]: t["TargetHealth"].get("Description") or t["TargetHealth"].get("Reason", "")
        for t in described
    }
    result = targets_verdict(
        states,
        state["attached"],
        waited_seconds=_elapsed(state, "checked_at"),
        timeout_seconds=state["timing"]["healthy_timeout"],
        reasons=reasons,
    )
    update: State = {"verdict": result.verdict.name, "reason": result.reason}
    if result.verdict.name == "FAILED":
        unhealthy = result.subjects[0] if result.subjects else state["attached"][0]
        update["failure"] = {"instance": unhealthy, "reason": result.reason, "output": ""}
    return {**state, **update}


def alarms(state: State) -> State:
    """After the bake time: is any of the fleet's alarms firing?"""
    names = state["fleet"].get("alarms") or []
    found = _client("cloudwatch").describe_alarms(AlarmNames=names)["MetricAlarms"] if names else []
    result = alarms_verdict({a["AlarmName"]: a["StateValue"] for a in found})
    update: State = {"verdict": result.verdict.name, "reason": result.reason}
    if result.verdict.name == "FAILED":
        update["failure"] = {"instance": None, "reason": result.reason, "output": ""}
    return {**state, **update}


def _record(state: State, instances: list[str], release: str | None) -> None:
    """Note which release each instance runs (``<app>/<env>/instances/<id>``), for status;
    ``None`` forgets it (the instance's release is not known)."""
    bucket = Bucket(_client("s3"), state["fleet"]["bucket"])
    keys = [f"{state['app']}/{state['env']}/instances/{i}" for i in instances]
    if release is None:
        bucket.delete(*keys)
        return
    for key in keys:
        bucket.put(key, f"{release}\n".encode())


def advance(state: State) -> State:
    """The batch is done: note its release and move to the next batch."""
    _record(state, _batch(state), state["release"])
    done = [*state["done"], *_batch(state)]
    cursor = state["cursor"] + 1
    return {**state, "done": done, "cursor": cursor, "more": cursor < len(state["batches"])}


# The end --------------------------------------------------------------------------------------


def promote(state: State) -> State:
    """Every batch is on the release: move ``current`` (compare-and-swap against the rollout's start)."""
    publisher = _publisher(state)
    try:
        publisher.move_current(state["release"], expected=state["previous"])
    except ReleaseError as error:
        raise RolloutError(str(error)) from None
    if state["previous"]:  # what `slipway rollback` goes back to
        publisher.bucket.put(f"{state['app']}/{state['env']}/previous", f"{state['previous']}\n".encode())
    return state


def converge(state: State) -> State:
    """Instances launched during the rollout booted the old ``current``: deploy the release to them."""
    instances, _ = _in_service(state["fleet"]["group"])
    late = sorted(i.id for i in instances if i.id not in state["done"])
    if not late:
        return {**state, "verdict": "READY", "converged": []}
    return {**_send(state, late, _release_url(state, state["release"])), "verdict": "WAIT", "converged": late}


def unsurge(state: State) -> State:
    """Give back the capacity added for the rollout."""
    if state.get("surged"):
        _, asg = _in_service(state["fleet"]["group"])
        _client("autoscaling").set_desired_capacity(
            AutoScalingGroupName=state["fleet"]["group"],
            DesiredCapacity=max(asg["MinSize"], asg["DesiredCapacity"] - state["surged"]),
        )
    return {**state, "surged": 0}


def unlock(state: State) -> State:
    """Note where the late and the rolled-back instances ended up, then release the lock."""
    failed = state.get("verdict") == "FAILED"  # the last command (converge or rollback) did not succeed
    if state.get("rolled_back"):
        _record(state, state["rolled_back"], None if failed else state.get("previous"))
    elif state.get("converged"):
        _record(state, state["converged"], None if failed else state["release"])
    DeployLock(Bucket(_client("s3"), state["fleet"]["bucket"])).release(
        state["app"], state["env"], execution=state["execution"]
    )
    return state


def rollback(state: State) -> State:
    """Put the instances already changed back on the previous release; ``current`` is untouched."""
    attach(state)  # a batch caught in standby goes back into service first
    changed = sorted({*state.get("done", []), *(_batch(state) if state.get("batches") else [])})
    update: State = {"rolled_back": changed, "failure": state.get("failure") or _caught(state)}
    if not changed or not state.get("previous"):
        return {**state, **update, "verdict": "READY"}
    sent = _send({**state, **update, "kind": "rollback"}, changed, _release_url(state, state["previous"]))
    return {**sent, "verdict": "WAIT"}


def _caught(state: State) -> State:
    """The failure of a task that raised (Step Functions put its error under ``$.error``)."""
    error = state.get("error") or {}
    cause = error.get("Cause", "")
    with contextlib.suppress(ValueError, AttributeError):  # Lambda's error payload, when it is one
        cause = json.loads(cause).get("errorMessage", cause)
    return {"instance": None, "reason": f"{error.get('Error', 'error')}: {cause}", "output": ""}


TASKS: dict[str, Callable[[State], State]] = {
    "lock": lock,
    "plan": plan,
    "detach": detach,
    "drained": drained,
    "send": send,
    "command_done": command_done,
    "attach": attach,
    "healthy": healthy,
    "alarms": alarms,
    "advance": advance,
    "promote": promote,
    "converge": converge,
    "unsurge": unsurge,
    "unlock": unlock,
    "rollback": rollback,
}


def handler(event: Mapping[str, Any], context: Any) -> State:
    """The Lambda entry point: ``{"task": "<name>", "state": {...}}``."""
    state = dict(event["state"])
    state.setdefault("execution", event.get("execution", ""))
    return TASKS[event["task"]](state)
