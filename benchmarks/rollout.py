#!/usr/bin/env python3
"""Modelled wall time of a rollout over fleets of 2, 10 and 100 instances and of a rollback, from real
executions on moto.

For each fleet size the synthesized Platform-staging stack is deployed into moto (the local
platform's own simulated AWS, local.aws), web's Auto Scaling group resized, and the
synthesized rollout state machine runs on moto's Step Functions interpreter with the real
task handlers in-process, with every Wait (polls, bake) set to 0 so it finishes in seconds.
From the execution's history, and the AWS calls each task made, the rollout's wall time is
then MODELLED with the fixed per-step latencies below:

    a step taking s seconds (stage, activate, bake): its check starts at once and watches it,
        looking every LOOK_S for up to WATCH_S in one Lambda invocation; a step not done by
        then waits POLL_S (a Wait state) and is watched again. It is seen done at
        ceil(s / LOOK_S) x LOOK_S (plus POLL_S per extra watch), each extra watch a Wait, a
        check Task and a Choice (3 transitions, 1 Lambda invocation); the zero-wait run
        checked each step about once, so its checks are replaced by the modelled ones
    waits  = stage (once, every instance at once) + Σ over batches (activate + bake)
    control plane = transitions x TRANSITION_S + Lambda invocations x LAMBDA_S
    modelled wall time = waits + control plane;  overhead = control plane / wall time

Every instance switches in place (docs/switch.md): the release starts beside the serving one
and the instance's front moves to it, so no batch leaves the load balancer: nothing to drain,
no re-registration to wait for (the load balancer's two passing checks), and batches are
sized by the strategy alone, whatever minimum the fleet keeps in service. A bake of 0 still
looks once (alarms and the batch's targets). A rollback (kind rollback: no canary, no bake,
one batch) goes back to a release every instance keeps staged, so its stage step only
verifies.

Run: `make bench` or `.venv/bin/python benchmarks/rollout.py [--fleets 2 10 100] [--batch-percent 50]`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

# The repository root (app.py, local/, constructs/ ahead of the pip package of that name) and
# the Lambda asset's root (slipway, slipway_release), as the local platform runs them.
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "lambdas")]

from local.aws import Deployed, mock_platform  # noqa: E402
from local.platform import synthesize  # noqa: E402
from local.template import REGION  # noqa: E402
from slipway import aws, deploys  # noqa: E402
from slipway.rollout import tasks  # noqa: E402
from slipway.rollout.strategy import Strategy, rollback_strategy  # noqa: E402
from slipway.settings import ROLLOUT_TIMING, Timing  # noqa: E402
from slipway_release.layout import AppKeys, Pointer  # noqa: E402

# Simulated latencies (seconds), fixed.
SSM_DISPATCH_S = 2.0  # SendCommand until the instance's SSM agent runs the document
APP_BOOT_S = 3.0  # the app's web process from start to answering its health check
STAGE_S = SSM_DISPATCH_S + 1.0 + APP_BOOT_S  # `deploy --stage`: download, verify, unpack (measured: 0.8 s
# for 50 MB on this machine's agent), then the preflight boot on a spare port; every instance at once
STAGED_S = SSM_DISPATCH_S + 0.5  # `deploy --stage` of a release the instance keeps staged: verified only
# `deploy --activate`: the release started beside the serving one, the front switched, the old one
# stopped (measured 0.8 s, benchmarks/agent.py), no release phase; the app's boot to healthy
ACTIVATE_S = SSM_DISPATCH_S + 0.8 + APP_BOOT_S
POLL_S = float(Timing().poll_seconds)  # the Wait between two watches
WATCH_S = float(Timing().watch_seconds)  # a check watches its step this long ...
LOOK_S = tasks.WATCH_INTERVAL_SECONDS  # ... looking again this often
TRANSITION_S = 0.05  # one Step Functions state transition
LAMBDA_S = 0.1  # one Lambda task invocation, the AWS calls it makes included
API_CALL_S = 0.03  # one AWS API call: not in the model above, only in its sensitivity column

STATES_PER_POLL = 3  # Wait, check Task, Choice
OVERHEAD_LIMIT = 0.05
FLAT_TOLERANCE = 0.01


@dataclass(frozen=True)
class PollLoop:
    """A check → Choice → Wait loop of the state machine and how long its step takes."""

    start: str  # the state after which a run of the loop begins
    check: str
    seconds: float
    per_batch: bool


def watched_step(seconds: float) -> tuple[float, int, int]:
    """A step of ``seconds`` under a watching check that starts at once: when it is seen done,
    in how many check invocations, and with how many looks in all.

    A watch looks at once and then every LOOK_S for WATCH_S; a step not done by then waits
    POLL_S (a Wait state) for the next watch."""
    start, invocations, looks = 0.0, 0, 0
    per_watch = int(WATCH_S // LOOK_S)  # looks after the first, within one watch
    while True:
        invocations += 1
        if seconds <= start + per_watch * LOOK_S:
            more = max(0, math.ceil((seconds - start) / LOOK_S))
            return start + more * LOOK_S, invocations, looks + more + 1
        looks += per_watch + 1
        start += per_watch * LOOK_S + POLL_S


def loops(*, stage_s: float, bake_s: float) -> tuple[PollLoop, ...]:
    """The state machine's poll loops, with the modelled duration of each step."""
    return (
        PollLoop(start="Stage", check="CheckStageCommand", seconds=stage_s, per_batch=False),
        PollLoop(start="Send", check="CheckCommand", seconds=ACTIVATE_S, per_batch=True),
        PollLoop(start="Send", check="CheckBake", seconds=bake_s, per_batch=True),
    )


FIRST_BATCH_STATE, LAST_BATCH_STATE = "Send", "MoreBatches?"
# Goals (bake 0): a rollout over 2 / 10 / 100 instances, and a rollback of 10.
GOALS = {("deploy", 2): 45.0, ("deploy", 10): 60.0, ("deploy", 100): 90.0, ("rollback", 10): 20.0}


@dataclass(frozen=True)
class Scenario:
    """One execution: a fleet of ``instances`` keeping ``minimum`` in service, deploying or rolling back."""

    instances: int
    minimum: int
    kind: str = "deploy"

    @property
    def label(self) -> str:
        at_min = " at min" if self.minimum == self.instances else ""
        return f"{self.instances}{at_min}{' rollback' if self.kind == 'rollback' else ''}"


@dataclass
class Step:
    """One state entered by the execution; for a Task, the AWS calls its Lambda invocation made."""

    name: str
    task: bool
    calls: int = 0


@dataclass
class Measured:
    """What one execution on moto did."""

    status: str
    output: dict[str, Any]
    steps: list[Step]
    batch_sizes: list[int]
    calls: int
    calls_by_operation: dict[str, int]


@dataclass
class Modelled:
    """The same rollout with real latencies."""

    transitions: int
    invocations: int
    calls: int
    stage_s: float
    batch_s: float  # one batch, its control plane included
    control_s: float
    wall_s: float

    @property
    def overhead(self) -> float:
        return self.control_s / self.wall_s

    def overhead_with_api(self) -> float:
        """The overhead if every AWS call also took API_CALL_S, in series with the rest."""
        api = self.calls * API_CALL_S
        return (self.control_s + api) / (self.wall_s + api)


class CountingClients:
    """:func:`slipway.aws.client`, every call the tasks make counted by service:operation."""

    def __init__(self, real: Callable[[str], Any]) -> None:
        self.real = real
        self.calls: dict[str, int] = {}

    def __call__(self, service: str) -> Any:
        client, calls = self.real(service), self.calls

        class Counted:
            def __getattr__(self, name: str) -> Any:
                method = getattr(client, name)
                if not callable(method) or name.startswith("_") or name in ("exceptions", "meta"):
                    return method

                def counted(*args: Any, **kwargs: Any) -> Any:
                    calls[f"{service}:{name}"] = calls.get(f"{service}:{name}", 0) + 1
                    return method(*args, **kwargs)

                return counted

        return Counted()

    def cache_clear(self) -> None:
        self.real.cache_clear()  # type: ignore[attr-defined]


@contextmanager
def counted_tasks(counting: CountingClients, log: list[tuple[str, int]]) -> Iterator[None]:
    """Record (task, AWS calls it made) for every task the state machine runs, in order."""

    def counted(name: str, task: Callable[[tasks.State], tasks.State]) -> Callable[[tasks.State], tasks.State]:
        def run(state: tasks.State) -> tasks.State:
            before = sum(counting.calls.values())
            try:
                return task(state)
            finally:
                log.append((name, sum(counting.calls.values()) - before))

        return run

    with (
        mock.patch.dict(tasks.TASKS, {name: counted(name, task) for name, task in tasks.TASKS.items()}),
        mock.patch.object(aws, "client", counting),
    ):
        yield


def _fleet(deployed: Deployed, scenario: Scenario) -> None:
    """web's group as ``scenario``, releases r1 and r2; r1 current for a deploy (of r2), r2 for a
    rollback (to r1)."""
    instances = scenario.instances
    deployed.resize("web", desired=instances, minimum=scenario.minimum, maximum=max(4, instances * 2))
    keys, bucket = AppKeys("web", "staging"), deployed.fleet("web").bucket
    made = {release: deployed.add_release("web", release) for release in ("r1", "r2")}
    current = "r2" if scenario.kind == "rollback" else "r1"
    pointer = Pointer(current, hashlib.sha256(made[current]).hexdigest())
    deployed.clients.s3.put_object(Bucket=bucket, Key=keys.current, Body=pointer.render())


def execute(template: dict[str, Any], scenario: Scenario, batch_percent: int) -> Measured:
    """A clean rollout of r2 (or rollback to r1) over a fresh moto fleet, every wait 0."""
    strategy = Strategy.parse({"canary": True, "batch_percent": batch_percent, "bake_seconds": 0})
    if scenario.kind == "rollback":
        strategy = rollback_strategy(strategy)  # as the API starts a rollback
    with mock_platform(template) as deployed:
        os.environ.update(deployed.environment)
        # Every wait 0: the rollout reads its pacing from its function's environment, as on the local platform.
        os.environ[ROLLOUT_TIMING] = json.dumps(
            Timing(poll_seconds=0, watch_seconds=0, command_timeout=60, healthy_timeout=60, lock_minutes=30).to_json()
        )
        aws.client.cache_clear()
        _fleet(deployed, scenario)
        state = deploys.execution_input(
            app="web",
            env="staging",
            release="r1" if scenario.kind == "rollback" else "r2",
            user="bench",
            kind=scenario.kind,
            strategy=strategy,
        )
        counting = CountingClients(aws.client)
        log: list[tuple[str, int]] = []
        with counted_tasks(counting, log):
            execution = deployed.wait(deployed.start(state))
        aws.client.cache_clear()
    entered = [e for e in execution.events if e["type"].endswith("StateEntered")]
    task_states = [e for e in entered if e["type"] == "TaskStateEntered"]
    if len(task_states) != len(log):
        raise SystemExit(f"{scenario.label}: {len(task_states)} Task states in the history, {len(log)} tasks run")
    calls = iter(log)
    steps = []
    for event in entered:
        is_task = event["type"] == "TaskStateEntered"
        steps.append(Step(event["stateEnteredEventDetails"]["name"], is_task, next(calls)[1] if is_task else 0))
    return Measured(
        status=execution.status,
        output=execution.output,
        steps=steps,
        batch_sizes=[len(batch) for batch in execution.output.get("batches", [])],
        calls=sum(counting.calls.values()),
        calls_by_operation=dict(counting.calls),
    )


def model(measured: Measured, *, bake_s: float, stage_s: float) -> Modelled:
    """Replace the zero-wait run's polls by those of the fixed latencies; add up the wall time."""
    names = [s.name for s in measured.steps]
    first, last = names.index(FIRST_BATCH_STATE), len(names) - 1 - names[::-1].index(LAST_BATCH_STATE)
    in_batches = [first <= i <= last for i in range(len(names))]
    transitions = {True: sum(in_batches), False: len(names) - sum(in_batches)}
    invocations = {
        part: sum(1 for s, b in zip(measured.steps, in_batches, strict=True) if s.task and b == part)
        for part in (True, False)
    }
    calls = measured.calls
    waits = {True: 0.0, False: 0.0}
    for loop in loops(stage_s=stage_s, bake_s=bake_s):
        for checks, final_check_calls in _loop_runs(measured.steps, loop):
            seen, modelled_checks, looks = watched_step(loop.seconds)
            extra = modelled_checks - checks
            transitions[loop.per_batch] += extra * STATES_PER_POLL
            invocations[loop.per_batch] += extra
            calls += (looks - checks) * final_check_calls
            waits[loop.per_batch] += seen
    batches = len(measured.output["batches"])

    def control(part: bool) -> float:
        return transitions[part] * TRANSITION_S + invocations[part] * LAMBDA_S

    control_s = control(True) + control(False)
    return Modelled(
        transitions=transitions[True] + transitions[False],
        invocations=invocations[True] + invocations[False],
        calls=calls,
        stage_s=waits[False],
        batch_s=(waits[True] + control(True)) / batches,
        control_s=control_s,
        wall_s=waits[True] + waits[False] + control_s,
    )


def _loop_runs(steps: list[Step], loop: PollLoop) -> list[tuple[int, int]]:
    """Each run of ``loop``: how many checks it made, and the AWS calls of its last check.

    A check's calls do not depend on its verdict, so every modelled extra look makes the
    calls of the check that found the step done.
    """
    runs: list[list[int]] = []
    current: list[int] | None = None
    for step in steps:
        if step.name == loop.start:
            current = [0, 0]
            runs.append(current)
        elif current is not None and step.name == loop.check:
            current[0] += 1
            current[1] = step.calls
    return [(checks, made) for checks, made in runs if checks]


def _batch_sizes(sizes: list[int]) -> str:
    """Batch sizes in order, repeats folded: ``1+25x3+24``."""
    runs: list[list[int]] = []
    for size in sizes:
        if runs and runs[-1][0] == size:
            runs[-1][1] += 1
        else:
            runs.append([size, 1])
    return "+".join(f"{size}x{count}" if count > 1 else str(size) for size, count in runs)


def scenarios(fleets: list[int], at_minimum: list[int], rollbacks: list[int]) -> list[Scenario]:
    """Each fleet keeping half its size in service; those ``at_minimum`` keeping all; rollbacks."""
    chosen = [Scenario(n, max(1, n // 2)) for n in fleets]
    chosen += [Scenario(n, n) for n in at_minimum]
    chosen += [Scenario(n, max(1, n // 2), kind="rollback") for n in rollbacks]
    return chosen


# Calls that would take an instance out of service or add capacity: a rollout makes none.
OUT_OF_SERVICE_CALLS = (
    "autoscaling:enter_standby",
    "autoscaling:exit_standby",
    "autoscaling:set_desired_capacity",
    "elbv2:deregister_targets",
    "elbv2:register_targets",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleets", type=int, nargs="+", default=[2, 10, 100], help="fleet sizes (instances)")
    parser.add_argument(
        "--at-minimum", type=int, nargs="*", default=[2], help="fleet sizes also run keeping every instance in service"
    )
    parser.add_argument("--rollbacks", type=int, nargs="*", default=[10], help="fleet sizes also rolled back")
    parser.add_argument(
        "--batch-percent",
        type=int,
        default=Strategy().batch_percent,
        help="batch size after the canary, in percent (default: the platform's default strategy's)",
    )
    parser.add_argument("--bake", type=float, nargs="+", default=[0, 30], help="bake seconds per batch, each modelled")
    args = parser.parse_args()
    if min(args.fleets + args.at_minimum + args.rollbacks) < 1:
        parser.error("--fleets, --at-minimum, --rollbacks: give fleet sizes of at least 1 instance")
    if not 1 <= args.batch_percent <= 100:
        parser.error("--batch-percent: give a whole percent from 1 to 100, e.g. 50")
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=REGION)
    os.environ.pop("AWS_ENDPOINT_URL", None)  # moto's in-process mock, never a server

    started = time.perf_counter()
    template = synthesize("staging")
    print(f"synthesized Platform-staging in {time.perf_counter() - started:.1f} s")
    print(
        f"latencies: stage {STAGE_S:g} s (staged already: {STAGED_S:g} s), activate in place {ACTIVATE_S:g} s; "
        f"checks watch {WATCH_S:g} s looking every {LOOK_S:g} s, Waits {POLL_S:g} s; transition {TRANSITION_S:g} s, "
        f"Lambda {LAMBDA_S:g} s"
    )
    print(
        f"strategy: canary, then {args.batch_percent}% batches (a rollback: no canary, no bake, one batch); each "
        "fleet over the staging stack's two zones, min in service as shown\n"
    )
    header = (
        f"{'bake':>4} {'fleet':<14} {'min':>3} {'batches':>7} {'sizes':<14} {'transitions':>11} {'(moto)':>6} "
        f"{'Lambda':>6} {'API calls':>9} {'(model)':>7} {'wall s':>7} {'stage s':>7} {'per batch s':>11} "
        f"{'overhead':>8} {'+API 30ms':>9} {'goal s':>6}"
    )
    print(header)
    rows: list[tuple[Scenario, Modelled]] = []
    goals: list[tuple[Scenario, float]] = []
    failures: list[str] = []
    measured_runs = {
        s: execute(template, s, args.batch_percent) for s in scenarios(args.fleets, args.at_minimum, args.rollbacks)
    }
    for bake_s in args.bake:
        for scenario, measured in measured_runs.items():
            if measured.status != "SUCCEEDED":
                failures.append(f"{scenario.label}: the execution ended {measured.status}: {measured.output}")
                print(f"{scenario.label:<14} FAILED on moto ({measured.status}); not modelled")
                continue
            if scenario.kind == "rollback" and bake_s != args.bake[0]:
                continue  # a rollback does not bake
            rollback = scenario.kind == "rollback"
            modelled = model(measured, bake_s=0 if rollback else bake_s, stage_s=STAGED_S if rollback else STAGE_S)
            if bake_s == args.bake[0] and not rollback and scenario.minimum < scenario.instances:
                rows.append((scenario, modelled))
            goal = GOALS.get((scenario.kind, scenario.instances)) if bake_s == 0 else None
            if goal is not None and scenario.minimum < scenario.instances:
                goals.append((scenario, modelled.wall_s))
            figures = [
                f"{0 if rollback else bake_s:>4g} {scenario.label:<14} {scenario.minimum:>3}",
                f"{len(measured.output['batches']):>7} {_batch_sizes(measured.batch_sizes):<14}",
                f"{modelled.transitions:>11} {len(measured.steps):>6} {modelled.invocations:>6}",
                f"{measured.calls:>9} {modelled.calls:>7} {modelled.wall_s:>7.1f} {modelled.stage_s:>7.1f}",
                f"{modelled.batch_s:>11.2f} {modelled.overhead:>8.1%} {modelled.overhead_with_api():>9.1%}",
                f"{goal if goal is not None else '':>6}",
            ]
            print(" ".join(figures))
    print(
        "\ntransitions and Lambda invocations are modelled (the moto run's zero-wait checks replaced by "
        "the modelled watches); (moto) is the run's own count. API calls are measured on moto; "
        "(model) adds those of the modelled extra looks. wall = stage + control plane + batches."
    )
    for failure in failures:
        print(f"FAILED: {failure}")
    if not rows:
        raise SystemExit("no fleet size rolled out on moto; nothing to model")
    left_out = f"; {len(failures)} scenario(s) FAILED and are left out" if failures else ""
    for scenario, wall_s in goals:
        goal = GOALS[(scenario.kind, scenario.instances)]
        verdict = "MET" if wall_s <= goal else "NOT MET"
        print(f"goal: {scenario.label}, bake 0: {wall_s:.1f} s against {goal:g} s: {verdict}")
    per_batch = [m.batch_s for _, m in rows]
    spread = max(per_batch) / min(per_batch) - 1
    if len(rows) < 2:
        verdict = "CANNOT TELL from one fleet size"
    else:
        verdict = "SUPPORTED" if spread <= FLAT_TOLERANCE else "NOT SUPPORTED"
    print(
        f"\nclaim 1, wall time is flat in fleet size beyond the batch count: time per batch "
        f"{min(per_batch):.2f} to {max(per_batch):.2f} s across {', '.join(s.label for s, _ in rows)} instances "
        f"(spread {spread:.2%}, tolerance {FLAT_TOLERANCE:.0%}): {verdict}{left_out}"
    )
    worst = max(m.overhead for _, m in rows)
    print(
        f"claim 2, control-plane overhead under {OVERHEAD_LIMIT:.0%} of the modelled time: at most {worst:.1%}: "
        f"{'SUPPORTED' if worst < OVERHEAD_LIMIT else 'NOT SUPPORTED'}{left_out}"
    )
    worst_api = max(m.overhead_with_api() for _, m in rows)
    print(
        f"  (sensitivity, outside the model: if each AWS call also took {API_CALL_S * 1000:.0f} ms in series, "
        f"the overhead would reach {worst_api:.1%})"
    )
    moved = {
        call: n
        for m in measured_runs.values()
        for call, n in m.calls_by_operation.items()
        if call in OUT_OF_SERVICE_CALLS
    }
    print(
        f"claim 3, no instance leaves service and no capacity is added: {sum(moved.values())} standby, "
        f"(de)registration or capacity calls in {len(measured_runs)} executions: "
        f"{'SUPPORTED' if not moved else 'NOT SUPPORTED ' + str(moved)}"
    )
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
