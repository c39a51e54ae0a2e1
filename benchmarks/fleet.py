#!/usr/bin/env python3
"""Wall time of rollouts, a rollback and a fleet cycle on the local platform's real instances,
with the requests that failed meanwhile.

Starts ``python -m local --env demo`` (local/demo.py: web at three real instances behind
HAProxy; needs root), publishes the sample app (local/sample) with the ``slipway`` CLI and
deploys it, then measures, each with the load generator (local.load: one thread of
sequential GETs through the load balancer, a new connection each):

    rollout over 3   a new release, the app's default strategy (canary, then 25 % batches)
    rollback         a new release copying the one before (its slug staged on every instance:
                     linked, not downloaded, and no preflight), in one batch
    fleet cycle      every instance replaced (instance refresh, 90 % kept in service)
    scale 3 -> 6     desired capacity raised until 6 targets are healthy
    rollout over 6   a new release over the 6 instances

and the day-two verbs, without load: ``slipway run -- true`` end to end (5 runs, median and
slowest: the API, SSM's delivery to one instance, the agent's systemd-run, the streamed output
read back), the time from starting ``slipway run`` to its first output line, and the time from
a one-off's end until ``slipway logs`` shows the line it wrote (rsyslog, the CloudWatch agent's
file shipping, FilterLogEvents through the API; looked for every 0.2 s).

Nothing is modelled: these are wall times on this machine. What they depend on is the
demo environment's timing, printed with the figures: the rollout's checks (looking every 1 s),
the bake (``--bake``, 0 by default here: a bake is a fixed wait that would only add itself to
each batch), and for the cycle and the scale the target group's health check (interval,
healthy threshold), its deregistration delay (draining ends as soon as a target has no
request in flight, as on ALB) and the instance refresh's warmup (capped at 5 s locally).
Rollouts switch each instance in place, so the load balancer's checks and draining are not
in their path.

Run: `make bench` or `.venv/bin/python benchmarks/fleet.py [--bake 0]` (as root).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "lambdas")]

from local.demo import DEMO_APP, DEMO_ENV, sample_checkout  # noqa: E402
from local.load import Load  # noqa: E402
from local.platform import REFRESH_WARMUP_CAP, launch, missing_prerequisites  # noqa: E402
from slipway.rollout.steps import STEPS  # noqa: E402

# The phases a rollout's time is split into, by the words the API gives its states.
PHASES = {STEPS["CheckStageCommand"]: "stage", STEPS["CheckCommand"]: "activate", STEPS["CheckBake"]: "bake"}

PASSWORD = "benchmark"
SLIPWAY = shutil.which("slipway") or str(Path(sys.executable).parent / "slipway")


class Bench:
    def __init__(self, info: dict[str, Any], checkout: Path, bake: int) -> None:
        self.info, self.checkout, self.bake = info, checkout, bake
        self.rows: list[tuple[str, str, float, Load, str]] = []

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            f"SLIPWAY_URL_{DEMO_ENV.upper()}": self.info["url"],
            "SLIPWAY_USER": self.info["user"],
            "SLIPWAY_PASSWORD": PASSWORD,
        }

    def slipway(self, *args: str) -> str:
        result = subprocess.run(
            [SLIPWAY, *args],
            cwd=self.checkout,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
        if result.returncode != 0:
            raise SystemExit(f"slipway {' '.join(args)} failed: {result.stdout}{result.stderr}")
        return result.stdout

    def status(self) -> dict[str, Any]:
        shown: dict[str, Any] = json.loads(self.slipway("--json", "status", DEMO_APP, DEMO_ENV))
        return shown

    def serving(self) -> int:
        return sum(1 for i in self.status()["instances"] if i["lifecycle"] == "InService" and i["target"] == "healthy")

    def publish(self, message: str) -> str:
        return str(json.loads(self.slipway("--json", "release", DEMO_APP, DEMO_ENV, "-m", message))["id"])

    def measure(self, name: str, what: str, action: Callable[[], object]) -> None:
        url = f"{self.info['app_urls'][DEMO_APP]}/"
        started = time.monotonic()
        with Load(url) as load:
            said = action()
        # A rollout's last line says how it went: "...: 6 instance(s) in 4 batch(es) in 41.2 s; r3 is current".
        found = re.search(r"(\d+ instance\(s\) in \d+ batch\(es\))", said if isinstance(said, str) else "")
        split = ""
        if found:
            what = f"{what}: {found.group(1)}"
            split = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in self.phases().items())
        self.rows.append((name, what, time.monotonic() - started, load, split))
        print(f"  {name}: {time.monotonic() - started:.1f}s, {load.summary()}", file=sys.stderr, flush=True)

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.info["aws_endpoint"],
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )

    def phases(self) -> dict[str, float]:
        """Seconds the latest rollout spent in each phase, from its timeline as the API gives it."""
        [latest, *_] = json.loads(self.slipway("--json", "deploys", DEMO_APP, DEMO_ENV))["deploys"]
        shown = json.loads(self.slipway("--json", "deploys", DEMO_APP, DEMO_ENV, "--follow", latest["id"]))
        totals = dict.fromkeys([*PHASES.values(), "rest"], 0.0)
        for entry in shown["timeline"]:
            totals[PHASES.get(entry["step"], "rest")] += entry["seconds"] or 0.0
        return totals

    def deploy(self, release: str) -> Callable[[], object]:
        return lambda: self.slipway(
            "deploy", DEMO_APP, DEMO_ENV, release, "--bake", str(self.bake), "--interval", "0.5"
        )

    def day_two(self) -> list[str]:
        """``slipway run`` and ``slipway logs`` latencies, as the lines of a table."""
        walls = []
        for _ in range(5):
            started = time.monotonic()
            self.slipway("run", DEMO_APP, DEMO_ENV, "--", "true")
            walls.append(time.monotonic() - started)
        started = time.monotonic()
        following = subprocess.Popen(
            [SLIPWAY, "run", DEMO_APP, DEMO_ENV, "--", "echo first; sleep 2"],
            cwd=self.checkout,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert following.stdout is not None
        following.stdout.readline()
        first_line = time.monotonic() - started
        following.wait(timeout=120)
        marker = f"bench-{time.monotonic_ns()}"
        self.slipway("run", DEMO_APP, DEMO_ENV, "--", f"echo {marker}")
        ended = time.monotonic()
        while marker not in self.slipway("logs", DEMO_APP, DEMO_ENV, "--process", "run", "--since", "10m"):
            if time.monotonic() - ended > 120:
                raise SystemExit("slipway logs never showed the one-off's line")
            time.sleep(0.2)
        in_logs = time.monotonic() - ended
        walls.sort()
        return [
            f"| `slipway run -- true` (5 runs) | {walls[2]:.1f} s median, {walls[-1]:.1f} s slowest |",
            f"| `slipway run` to its first output line | {first_line:.1f} s |",
            f"| a one-off's line in `slipway logs` after it ended | {in_logs:.1f} s |",
        ]

    def scale(self, desired: int) -> None:
        autoscaling = self.client("autoscaling")
        members = {i["id"] for i in self.status()["instances"]}
        [group] = [
            g["AutoScalingGroupName"]
            for g in autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
            if {i["InstanceId"] for i in g["Instances"]} == members
        ]
        autoscaling.set_desired_capacity(AutoScalingGroupName=group, DesiredCapacity=desired)
        deadline = time.monotonic() + 300
        while self.serving() < desired:
            if time.monotonic() > deadline:
                raise SystemExit(f"the fleet did not reach {desired} healthy instances in 300 s")
            time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bake", type=int, default=0, help="bake seconds per batch (default 0)")
    args = parser.parse_args()
    problem = missing_prerequisites()
    if problem:
        print(f"benchmarks/fleet.py: {problem}", file=sys.stderr)
        return 1
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="slipway-bench-") as directory:
        process, info = launch(DEMO_ENV, PASSWORD, real_instances=True, log_file=Path(directory) / "platform.log")
        boot = time.monotonic() - started
        try:
            bench = Bench(info, sample_checkout(Path(directory)), args.bake)
            timing = _timing(info)
            first = bench.publish("first")
            t0 = time.monotonic()
            bench.slipway("deploy", DEMO_APP, DEMO_ENV, first, "--bake", str(args.bake), "--interval", "0.5")
            first_deploy = time.monotonic() - t0
            second = bench.publish("second")
            bench.measure("rollout over 3", "canary, then 25 % batches", bench.deploy(second))
            bench.measure(
                "rollback",
                f"a new release copying {first}, its slug staged",
                lambda: bench.slipway("rollback", DEMO_APP, DEMO_ENV, "--bake", str(args.bake), "--interval", "0.5"),
            )
            bench.measure(
                "fleet cycle",
                "3 instances replaced one at a time",
                lambda: bench.slipway("cycle", DEMO_APP, DEMO_ENV, "--interval", "0.5"),
            )
            bench.measure("scale 3 -> 6", "3 instances boot, deploy current, pass checks", lambda: bench.scale(6))
            third = bench.publish("third")
            bench.measure("rollout over 6", "canary, then 25 % batches", bench.deploy(third))
            day_two = bench.day_two()
        finally:
            process.terminate()
            process.wait(timeout=120)
    print(
        f"Platform up with 3 real instances in {boot:.1f}s; first deploy (nothing served before) {first_deploy:.1f}s."
    )
    print(
        f"Timing: {timing}; bake {args.bake} s; rollout checks look every 1 s; "
        f"refresh warmup at most {REFRESH_WARMUP_CAP} s."
    )
    print()
    print("| operation | what | wall time | of which (summed over batches) | failed / total requests |")
    print("|---|---|---:|---|---:|")
    for name, what, seconds, load, split in bench.rows:
        print(f"| {name} | {what} | {seconds:.1f} s | {split or '—'} | {len(load.failures)} / {load.total} |")
    print()
    print("| day two | time |")
    print("|---|---:|")
    for line in day_two:
        print(line)
    return 0


def _timing(info: dict[str, Any]) -> str:
    import boto3

    elbv2 = boto3.client(
        "elbv2",
        endpoint_url=info["aws_endpoint"],
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    [group] = [g for g in elbv2.describe_target_groups()["TargetGroups"] if g["Port"] == 5000]
    attributes = {
        a["Key"]: a["Value"]
        for a in elbv2.describe_target_group_attributes(TargetGroupArn=group["TargetGroupArn"])["Attributes"]
    }
    return (
        f"health check every {group['HealthCheckIntervalSeconds']} s, healthy after {group['HealthyThresholdCount']}, "
        f"unhealthy after {group['UnhealthyThresholdCount']}; deregistration delay "
        f"{attributes['deregistration_delay.timeout_seconds']} s (ends early when idle)"
    )


if __name__ == "__main__":
    sys.exit(main())
