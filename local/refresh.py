"""Auto Scaling instance refresh, which moto lacks, carried out by the local platform.

``StartInstanceRefresh`` with the ``Rolling`` strategy replaces every instance of a group,
as AWS does with ``MaxHealthyPercentage`` left at 100: it terminates a batch (the group
launches replacements at once, capacity kept), waits until the group serves at its
desired capacity again (every in-service instance healthy in the group's target groups)
and the instance warmup has passed, then takes the next batch. A batch is as large as
``MinHealthyPercentage`` allows and at least one instance. A fleet alarm of the
``AlarmSpecification`` in ``ALARM`` stops it: ``RollbackSuccessful`` with ``AutoRollback``
(the launch template is unchanged, so the instances already replaced are what a rollback
would launch), ``Failed`` without. Replacements that do not serve within the timeout
fail it. ``DescribeInstanceRefreshes`` and ``CancelInstanceRefresh`` report and stop it.

:func:`next_step` decides (pure, tested step by step); :class:`InstanceRefreshes` keeps
the refreshes and drives them through the AWS API of the local platform (Auto Scaling,
ELB, CloudWatch), so it works whatever the instances are: moto's, or real ones.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("local")

ACTIVE = ("Pending", "InProgress", "Cancelling", "RollbackInProgress", "Baking")


class RefreshError(Exception):
    """A request Auto Scaling refuses; ``code`` is its error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Refresh:
    """One instance refresh and where it stands."""

    id: str
    group: str
    min_healthy_percent: int
    warmup_seconds: int
    alarms: tuple[str, ...]
    auto_rollback: bool
    started_at: datetime
    preferences: Mapping[str, Any]
    status: str = "Pending"
    reason: str = ""
    ended_at: datetime | None = None
    to_replace: tuple[str, ...] = ()
    serving_since: float | None = None  # when the group last came back to full service (warmup)
    waiting_since: float | None = None  # when it last started waiting for replacements
    percent: int = 0

    def describe(self) -> dict[str, Any]:
        """This refresh as ``DescribeInstanceRefreshes`` lists it."""
        described: dict[str, Any] = {
            "InstanceRefreshId": self.id,
            "AutoScalingGroupName": self.group,
            "Status": self.status,
            "StatusReason": self.reason,
            "StartTime": self.started_at,
            "PercentageComplete": self.percent,
            "InstancesToUpdate": max(0, len(self.to_replace) - round(self.percent * len(self.to_replace) / 100)),
            "Preferences": dict(self.preferences),
        }
        if self.ended_at is not None:
            described["EndTime"] = self.ended_at
        return described


@dataclass(frozen=True)
class Group:
    """What a refresh needs to know of its group at one moment."""

    desired: int
    in_service: tuple[str, ...]  # instances InService, in launch order
    serving: frozenset[str]  # of those, healthy in every target group of the group
    firing: tuple[str, ...] = ()  # alarms of the refresh in ALARM


@dataclass(frozen=True)
class Step:
    """What to do now: ``terminate`` these instances, or nothing; the refresh as it now stands."""

    refresh: Refresh
    terminate: tuple[str, ...] = ()


def batch_size(desired: int, min_healthy_percent: int) -> int:
    """How many instances may be out of service at once: never below the minimum healthy, at least one."""
    return max(1, desired - math.ceil(desired * min_healthy_percent / 100))


def _ended(refresh: Refresh, status: str, reason: str, now: datetime) -> Step:
    return Step(replace(refresh, status=status, reason=reason, ended_at=now))


def next_step(
    refresh: Refresh, group: Group, *, now: datetime, clock: float, cancel: bool = False, serve_timeout: float = 600
) -> Step:
    """The refresh's next move given its group now (``clock``: a monotonic time for waits)."""
    if refresh.status not in ACTIVE:
        return Step(refresh)
    if cancel:
        return _ended(refresh, "Cancelled", "cancelled by CancelInstanceRefresh", now)
    if group.firing:
        alarms = ", ".join(group.firing)
        if refresh.auto_rollback:
            return _ended(
                refresh,
                "RollbackSuccessful",
                f"alarm {alarms} in ALARM: rolled back (the launch template did not change, so the instances "
                "replaced so far are what a rollback launches)",
                now,
            )
        return _ended(refresh, "Failed", f"alarm {alarms} in ALARM", now)
    if refresh.status == "Pending":
        refresh = replace(refresh, status="InProgress", to_replace=group.in_service, reason="")
    total = len(refresh.to_replace)
    remaining = [i for i in refresh.to_replace if i in group.in_service]
    missing = max(0, group.desired - len(group.serving))
    done = total - len(remaining) - missing
    refresh = replace(refresh, percent=100 if total == 0 else max(0, min(100, 100 * done // total)))
    if missing:
        waiting_since = refresh.waiting_since if refresh.waiting_since is not None else clock
        if clock - waiting_since > serve_timeout:
            return _ended(
                refresh,
                "Failed",
                f"{missing} replacement(s) did not pass the load balancer's health checks within {serve_timeout:.0f}s",
                now,
            )
        return Step(
            replace(
                refresh,
                waiting_since=waiting_since,
                serving_since=None,
                reason=f"waiting for {missing} instance(s) to pass health checks",
            )
        )
    refresh = replace(refresh, waiting_since=None)
    if not remaining:
        return _ended(replace(refresh, percent=100), "Successful", "", now)
    serving_since = refresh.serving_since if refresh.serving_since is not None else clock
    if done and clock - serving_since < refresh.warmup_seconds:
        return Step(replace(refresh, serving_since=serving_since, reason="waiting for instance warmup"))
    batch = tuple(remaining[: batch_size(group.desired, refresh.min_healthy_percent)])
    return Step(replace(refresh, serving_since=None, reason=f"replacing {', '.join(batch)}"), terminate=batch)


@dataclass
class InstanceRefreshes:
    """Every instance refresh of the local platform, driven from one thread.

    ``clients`` are boto3 clients of the local AWS (``autoscaling``, ``elbv2``,
    ``cloudwatch``); ``warmup_cap`` bounds the requested ``InstanceWarmup`` (the local
    pacing: an instance here needs no minute to settle its metrics).
    """

    clients: Any
    warmup_cap: int = 5
    interval: float = 0.5
    serve_timeout: float = 600
    _refreshes: dict[str, Refresh] = field(default_factory=dict)
    _cancel: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self, group: str, preferences: Mapping[str, Any], strategy: str = "Rolling") -> str:
        """``StartInstanceRefresh``: its id; :class:`RefreshError` as Auto Scaling refuses."""
        if strategy != "Rolling":
            raise RefreshError("ValidationError", f"strategy {strategy!r}: only Rolling instance refreshes exist")
        with self._lock:
            if any(r.group == group and r.status in ACTIVE for r in self._refreshes.values()):
                raise RefreshError(
                    "InstanceRefreshInProgress", f"an instance refresh of {group} is already in progress"
                )
        alarms = tuple((preferences.get("AlarmSpecification") or {}).get("Alarms") or ())
        refresh = Refresh(
            id=str(uuid.uuid4()),
            group=group,
            min_healthy_percent=int(preferences.get("MinHealthyPercentage", 90)),
            warmup_seconds=min(int(preferences.get("InstanceWarmup") or 0), self.warmup_cap),
            alarms=alarms,
            auto_rollback=bool(preferences.get("AutoRollback", False)),
            started_at=datetime.now(UTC),
            preferences=dict(preferences),
        )
        with self._lock:
            self._refreshes[refresh.id] = refresh
        self._ensure_running()
        log.info("instance refresh %s of %s started", refresh.id, group)
        return refresh.id

    def describe(self, group: str, ids: Sequence[str] = ()) -> list[dict[str, Any]]:
        """``DescribeInstanceRefreshes``: newest first."""
        with self._lock:
            found = [r for r in self._refreshes.values() if r.group == group and (not ids or r.id in ids)]
        return [r.describe() for r in sorted(found, key=lambda r: r.started_at, reverse=True)]

    def cancel(self, group: str) -> str:
        """``CancelInstanceRefresh``: the id of the refresh cancelled."""
        with self._lock:
            active = [r for r in self._refreshes.values() if r.group == group and r.status in ACTIVE]
            if not active:
                raise RefreshError("ActiveInstanceRefreshNotFound", f"no instance refresh of {group} is in progress")
            self._cancel.add(active[0].id)
            self._refreshes[active[0].id] = replace(active[0], status="Cancelling")
        return active[0].id

    def _ensure_running(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="instance-refreshes", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                active = [r for r in self._refreshes.values() if r.status in ACTIVE]
            for refresh in active:
                try:
                    self._advance(refresh)
                except Exception as error:  # a refresh that cannot go on fails, naming why
                    log.warning("instance refresh %s of %s failed: %s", refresh.id, refresh.group, error)
                    with self._lock:
                        self._refreshes[refresh.id] = replace(
                            refresh,
                            status="Failed",
                            reason=f"{type(error).__name__}: {error}",
                            ended_at=datetime.now(UTC),
                        )

    def _advance(self, refresh: Refresh) -> None:
        step = next_step(
            refresh,
            self._group(refresh),
            now=datetime.now(UTC),
            clock=time.monotonic(),
            cancel=refresh.id in self._cancel,
            serve_timeout=self.serve_timeout,
        )
        for instance in step.terminate:
            self.clients.autoscaling.terminate_instance_in_auto_scaling_group(
                InstanceId=instance, ShouldDecrementDesiredCapacity=False
            )
        if step.refresh.status != refresh.status:
            log.info(
                "instance refresh %s of %s: %s %s", refresh.id, refresh.group, step.refresh.status, step.refresh.reason
            )
        with self._lock:
            self._refreshes[refresh.id] = step.refresh

    def _group(self, refresh: Refresh) -> Group:
        described = self.clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[refresh.group])
        [group] = described["AutoScalingGroups"]
        in_service = tuple(
            i["InstanceId"]
            for i in group["Instances"]
            if i["LifecycleState"] == "InService" and i["HealthStatus"] == "Healthy"
        )
        healthy: set[str] = set(in_service)
        for target_group in group.get("TargetGroupARNs") or []:
            health = self.clients.elbv2.describe_target_health(TargetGroupArn=target_group)
            healthy &= {
                t["Target"]["Id"] for t in health["TargetHealthDescriptions"] if t["TargetHealth"]["State"] == "healthy"
            }
        firing: tuple[str, ...] = ()
        if refresh.alarms:
            alarms = self.clients.cloudwatch.describe_alarms(AlarmNames=list(refresh.alarms))["MetricAlarms"]
            firing = tuple(sorted(a["AlarmName"] for a in alarms if a["StateValue"] == "ALARM"))
        return Group(
            desired=int(group["DesiredCapacity"]), in_service=in_service, serving=frozenset(healthy), firing=firing
        )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
