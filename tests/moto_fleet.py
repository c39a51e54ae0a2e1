"""The synthesized ``Platform-staging`` stack on moto (the local platform's own simulated AWS,
:func:`local.aws.mock_platform`), with faults a test chooses: a command that fails on an
instance, a target that turns unhealthy, something that happens when a command is sent.

The web fleet is resized per test; releases r1 and r2 of web exist and r1 is current. The
rollout tasks' AWS clients (:func:`slipway.aws.client`) are bent by the faults and count
every call."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import pytest

from local.aws import Deployed, Execution, mock_platform
from slipway import aws, deploys
from slipway.rollout import tasks
from slipway.rollout.strategy import Strategy
from slipway.runs import output_stream
from slipway.settings import ROLLOUT_TIMING, Timing
from slipway_release.layout import AppKeys, Pointer, parse_pointer

APP, ENV = "web", "staging"
KEYS = AppKeys(APP, ENV)
TIMING = Timing(poll_seconds=0, watch_seconds=0, command_timeout=60, healthy_timeout=60, lock_minutes=30)
CLOCK_SPEEDUP = 20


def faster_rollout_clock(monkeypatch: pytest.MonkeyPatch, factor: float = CLOCK_SPEEDUP) -> None:
    """From now on the rollout tasks' clock (``tasks._now``: bakes, lock expiries and renewals, the
    command's timeout) runs ``factor`` times faster than the wall clock: a 30 s bake takes 1.5 s.
    The same logic runs; only the time it reads is scaled."""
    start = datetime.now(UTC)
    monkeypatch.setattr(tasks, "_now", lambda: start + (datetime.now(UTC) - start) * factor)


@dataclass
class Faults:
    """What the fake world does wrong, by instance id."""

    command_fails_on: set[str] = field(default_factory=set)  # activations and full deploys
    stage_fails_on: set[str] = field(default_factory=set)  # staging
    unhealthy: set[str] = field(default_factory=set)
    # instance -> the how-manieth DescribeTargetHealth naming it finds it unhealthy (or healthy), and every later one
    unhealthy_from_look: dict[str, int] = field(default_factory=dict)
    healthy_from_look: dict[str, int] = field(default_factory=dict)
    on_send: Callable[[list[str], str], None] | None = None
    # "service:method" -> what its next calls do, one per call: raise the error before reaching
    # moto, or pass through (None)
    raises: dict[str, list[Exception | None]] = field(default_factory=dict)


class World:
    """The deployed stack, web's fleet sized for one test, and what the rollout sent."""

    def __init__(self, deployed: Deployed, *, instances: int, min_size: int, max_size: int = 20) -> None:
        self.deployed_stack = deployed
        self.clients = deployed.clients
        self.fleet = deployed.fleet(APP)
        self.bucket = self.fleet.bucket
        deployed.resize(APP, desired=instances, minimum=min_size, maximum=max_size)
        self.manifests = {release: deployed.add_release(APP, release) for release in ("r1", "r2")}
        self.digests = {release: hashlib.sha256(body).hexdigest() for release, body in self.manifests.items()}
        current = Pointer("r1", self.digests["r1"]).render()
        self.clients.s3.put_object(Bucket=self.bucket, Key=KEYS.current, Body=current)
        self.sent: list[tuple[list[str], str]] = []  # activations and full deploys, in order
        self.staged: list[tuple[list[str], str]] = []  # stage commands, in order
        self.actions: dict[str, str] = {}  # command id -> its Action
        self.faults = Faults()
        self.calls: dict[str, int] = {}  # AWS API calls through slipway.aws.client, by service:operation
        self.looks: dict[str, int] = {}  # DescribeTargetHealth answers naming each instance
        self.out_of_service: list[str] = []  # instances not InService when a command was sent to them
        self.pinned: list[tuple[str, str]] = []  # (release, manifest digest) of every deploy command sent

    @property
    def group(self) -> str:
        return self.fleet.group

    def hold_lock(self, *, owner: str, execution: str, acquired_at: str, expires_at: str) -> None:
        """Leave the app's deploy lock as another rollout would (live or dead by ``expires_at``)."""
        lock = {
            "owner": owner,
            "execution": execution,
            "release": "r2",
            "acquired_at": acquired_at,
            "expires_at": expires_at,
        }
        self.clients.s3.put_object(Bucket=self.bucket, Key=KEYS.lock, Body=json.dumps(lock).encode())

    def failing(self, command_id: str) -> set[str]:
        """The instances on which command ``command_id`` fails, by its action."""
        faults = self.faults
        return faults.stage_fails_on if self.actions.get(command_id) == "stage" else faults.command_fails_on

    def lock(self) -> dict[str, Any] | None:
        """The app's deploy lock, or ``None`` when no rollout holds it."""
        try:
            body = self.clients.s3.get_object(Bucket=self.bucket, Key=KEYS.lock)["Body"].read()
        except self.clients.s3.exceptions.NoSuchKey:
            return None
        lock: dict[str, Any] = json.loads(body)
        return lock

    def lifecycle(self) -> dict[str, str]:
        """Each instance's Auto Scaling lifecycle state (InService, Standby, ...)."""
        group = self.clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[self.group])
        return {i["InstanceId"]: i["LifecycleState"] for i in group["AutoScalingGroups"][0]["Instances"]}

    def instances(self) -> list[str]:
        return self.deployed_stack.instances(APP)

    def run_output(self, run_id: str, instance: str, lines: list[str]) -> None:
        """What the SSM agent streams of a one-off's output to the run log group while it runs."""
        runs = self.deployed_stack.settings.runs
        assert runs is not None
        stream = output_stream(run_id, instance)
        self.clients.logs.create_log_stream(logGroupName=runs.log_group, logStreamName=stream)
        self.clients.logs.put_log_events(
            logGroupName=runs.log_group,
            logStreamName=stream,
            logEvents=[{"timestamp": int(time.time() * 1000), "message": line} for line in lines],
        )

    def pointer(self) -> Pointer:
        """What ``current`` says."""
        return parse_pointer(self.clients.s3.get_object(Bucket=self.bucket, Key=KEYS.current)["Body"].read())

    def current(self) -> str:
        return self.pointer().release

    def deployed(self) -> dict[str, str]:
        """The release each instance got last, by the commands sent."""
        last: dict[str, str] = {}
        for instances, url in self.sent:
            for instance in instances:
                last[instance] = url.rsplit("/", 1)[1]
        return last

    def state(self, **overrides: Any) -> dict[str, Any]:
        """A rollout's input, as the API builds it, for r2 of web by alice."""
        strategy = Strategy.parse(overrides.pop("strategy", {"batch_percent": 50, "bake_seconds": 0}))
        state = deploys.execution_input(
            app=APP,
            env=ENV,
            release="r2",
            user="alice",
            kind="deploy",
            strategy=strategy,
        )
        return {**state, **overrides}

    def run(self, *, timing: dict[str, int] | None = None, **state: Any) -> Execution:
        """One rollout to its end, with the world's faults; ``timing``: the rollout function's pacing
        (its environment's ROLLOUT_TIMING, over :data:`TIMING`), which no input can set."""
        with rollout_timing(timing or {}):
            return self.deployed_stack.wait(self.deployed_stack.start(self.state(**state)))


@contextmanager
def rollout_timing(overrides: dict[str, int]) -> Iterator[None]:
    """While inside, the rollout tasks' environment paces them with ``overrides`` over :data:`TIMING`."""
    before = os.environ.get(ROLLOUT_TIMING)
    os.environ[ROLLOUT_TIMING] = json.dumps({**TIMING.to_json(), **overrides})
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ROLLOUT_TIMING, None)
        else:
            os.environ[ROLLOUT_TIMING] = before


class FaultyClients:
    """:func:`slipway.aws.client` with SSM and ELB answers bent by the world's faults."""

    def __init__(self, world: World, real: Callable[[str], Any]) -> None:
        self.world, self.real = world, real

    def __call__(self, service: str) -> Any:
        client = self.real(service)
        world = self.world
        if service == "ssm":
            return _Bent(
                client,
                world.calls,
                world.faults,
                send_command=self._send(client),
                get_command_invocation=self._invocation(client),
                get_paginator=self._paginator(client),
            )
        if service == "elbv2":

            def health(**kwargs: Any) -> Any:
                answer = client.describe_target_health(**kwargs)
                for target in answer["TargetHealthDescriptions"]:
                    instance = target["Target"]["Id"]
                    looked = world.looks[instance] = world.looks.get(instance, 0) + 1
                    recovers = world.faults.healthy_from_look.get(instance)
                    if recovers is not None and looked >= recovers:
                        world.faults.unhealthy.discard(instance)
                    turns = world.faults.unhealthy_from_look.get(instance)  # a later turn wins
                    if turns is not None and looked >= turns:
                        world.faults.unhealthy.add(instance)
                    if instance in world.faults.unhealthy:
                        target["TargetHealth"] = {"State": "unhealthy", "Reason": "Target.FailedHealthChecks"}
                return answer

            return _Bent(client, world.calls, world.faults, describe_target_health=health)
        return _Bent(client, world.calls, world.faults)

    def cache_clear(self) -> None:
        self.real.cache_clear()  # type: ignore[attr-defined]

    def _send(self, client: Any) -> Callable[..., Any]:
        def send(**kwargs: Any) -> Any:
            if "ReleaseUrl" not in kwargs["Parameters"]:  # not a deploy (a one-off of slipway run)
                return client.send_command(**kwargs)
            url = kwargs["Parameters"]["ReleaseUrl"][0]
            action = kwargs["Parameters"].get("Action", ["deploy"])[0]
            self.world.pinned.append((url.rsplit("/", 1)[1], kwargs["Parameters"]["Digest"][0]))
            states = self.world.lifecycle()
            self.world.out_of_service += [i for i in kwargs["InstanceIds"] if states.get(i) != "InService"]
            if action == "stage":  # prepares, changes nothing served: kept apart from what was deployed
                self.world.staged.append((list(kwargs["InstanceIds"]), url))
            else:
                self.world.sent.append((list(kwargs["InstanceIds"]), url))
                if self.world.faults.on_send:
                    self.world.faults.on_send(list(kwargs["InstanceIds"]), url)
            sent = client.send_command(**kwargs)
            self.world.actions[sent["Command"]["CommandId"]] = action
            return sent

        return send

    def _paginator(self, client: Any) -> Callable[..., Any]:
        def paginator(name: str) -> Any:
            real = client.get_paginator(name)
            return _FailingPages(real, self.world) if name == "list_command_invocations" else real

        return paginator

    def _invocation(self, client: Any) -> Callable[..., Any]:
        def invocation(**kwargs: Any) -> Any:
            answer = client.get_command_invocation(**kwargs)
            if kwargs["InstanceId"] in self.world.failing(kwargs["CommandId"]):
                answer.update(
                    Status="Failed",
                    StandardOutputContent="-----> Deploying r2\n",
                    StandardErrorContent="deploy: FAILED: r2 not deployed: r2 failed its preflight",
                )
            return answer

        return invocation


class _FailingPages:
    """A ``ListCommandInvocations`` paginator whose pages show the world's failing instances as failed."""

    def __init__(self, paginator: Any, world: World) -> None:
        self.paginator, self.world = paginator, world

    def paginate(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.world.calls["ssm:ListCommandInvocations"] = self.world.calls.get("ssm:ListCommandInvocations", 0)
        for page in self.paginator.paginate(**kwargs):
            self.world.calls["ssm:ListCommandInvocations"] += 1
            for invocation in page["CommandInvocations"]:
                if invocation["InstanceId"] in self.world.failing(invocation["CommandId"]):
                    invocation["Status"] = "Failed"
            yield page


class _Bent:
    """A client with some methods replaced; every call counted in the world's ``calls``."""

    def __init__(self, client: Any, calls: dict[str, int], faults: Faults, **overrides: Callable[..., Any]) -> None:
        self._client, self._calls, self._faults, self._overrides = client, calls, faults, overrides

    def __getattr__(self, name: str) -> Any:
        method = self._overrides.get(name) or getattr(self._client, name)
        if not callable(method) or name.startswith("_") or name in ("exceptions", "meta"):
            return method

        def counted(*args: Any, **kwargs: Any) -> Any:
            service = self._client.meta.service_model.service_name
            self._calls[f"{service}:{name}"] = self._calls.get(f"{service}:{name}", 0) + 1
            pending = self._faults.raises.get(f"{service}:{name}")
            error = pending.pop(0) if pending else None
            if error is not None:
                raise error
            return method(*args, **kwargs)

        return counted


@contextmanager
def platform(template: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployed]:
    """The staging stack deployed into moto; this process configured as its functions are."""
    with mock_platform(template) as deployed:
        for name, value in deployed.environment.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv(ROLLOUT_TIMING, json.dumps(TIMING.to_json()))
        aws.client.cache_clear()
        from slipway import operations

        operations.settings.cache_clear()
        try:
            yield deployed
        finally:
            aws.client.cache_clear()
            operations.settings.cache_clear()


@contextmanager
def faulty(world: World) -> Iterator[World]:
    """Route every AWS client of the control plane through the world's faults."""
    real = aws.client
    # An earlier test's world still patched in would bend this one's calls with its dead moto.
    assert not isinstance(real, FaultyClients), "aws.client is still an earlier test's FaultyClients"
    with mock.patch.object(aws, "client", FaultyClients(world, real)):
        yield world
