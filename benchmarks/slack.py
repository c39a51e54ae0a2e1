#!/usr/bin/env python3
"""How fast the /slipway Slack command is acknowledged (Slack gives up after 3 s).

The synthesized Platform-staging stack is deployed into moto's in-process mock (the local
platform's own simulated AWS), and the API function's handler answers signed slash commands
sent as API Gateway events, as Lambda would call it:

- warm: REQUESTS signed commands in one process (status, releases, config, help and a deploy
  start, in turn), p50 / p99 / max of the handler's time;
- cold: COLD_RUNS fresh processes, each importing the handler and answering one ``status``:
  the Python side of a cold start (Lambda's own sandbox start, ~100-300 ms, comes on top).

The AWS calls each command makes are counted; the model adds AWS_CALL_S per call for a real
account (moto answers in-process in well under a millisecond), in series.

Run: `make bench` or `.venv/bin/python benchmarks/slack.py [--requests 200]`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, cast
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "lambdas")]

from local.aws import LambdaContext, mock_platform  # noqa: E402
from local.platform import synthesize  # noqa: E402
from slipway import aws, operations  # noqa: E402
from slipway.slack.signature import sign  # noqa: E402

SECRET = "benchmark-signing-secret"
AWS_CALL_S = 0.02  # one AWS API call from Lambda in the same region, a typical figure
COLD_RUNS = 5
GOAL_P99_S = 1.0
EVENT = json.loads((ROOT / "tests" / "events" / "api_gateway_rest_proxy.json").read_text())
COMMANDS = ["status web staging", "releases web staging", "config web staging", "help", "deploy web staging r1"]


def slack_event(text: str) -> dict[str, Any]:
    """A signed slash command, as API Gateway hands it to the function; its own trigger_id, as Slack
    gives each command (the same command twice in a second would otherwise be a replay, refused)."""
    form = {"user_id": "U2CERLKJA", "user_name": "bench", "channel_id": "C024BE91L", "text": text, "response_url": ""}
    body = urllib.parse.urlencode({**form, "trigger_id": uuid.uuid4().hex})
    timestamp = str(int(time.time()))
    event: dict[str, Any] = copy.deepcopy(EVENT)
    event.update(
        httpMethod="POST", path="/slack/commands", body=body, isBase64Encoded=False, resource="/slack/commands"
    )
    event["headers"] = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": sign(SECRET, timestamp, body.encode()),
    }
    event["requestContext"].pop("authorizer", None)
    return event


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def warm(requests: int, template: dict[str, Any]) -> tuple[list[float], list[int]]:
    from slipway import api

    with mock_platform(template) as deployed:
        os.environ.update(deployed.environment)
        aws.client.cache_clear()
        operations.settings.cache_clear()
        settings = json.loads(deployed.environment["SLACK_JSON"])
        deployed.clients.secretsmanager.put_secret_value(SecretId=settings["signing_secret"], SecretString=SECRET)
        keys_bucket = deployed.fleet("web").bucket
        deployed.add_release("web", "r1")  # a release record as the writer makes one (schema-valid)
        calls = {"n": 0}
        real = aws.client

        class Counting:
            def __init__(self, client: Any) -> None:
                self.client = client

            def __getattr__(self, name: str) -> Any:
                attribute = getattr(self.client, name)
                if callable(attribute) and not name.startswith("_") and name not in ("exceptions", "meta"):

                    def counted(*args: Any, **kwargs: Any) -> Any:
                        if threading.get_ident() == main_thread:  # not the rollouts started meanwhile
                            calls["n"] += 1
                        return attribute(*args, **kwargs)

                    return counted
                return attribute

        main_thread = threading.get_ident()
        timings: list[float] = []
        made: list[int] = []
        context = LambdaContext("Platform-staging-Api")
        with mock.patch.object(aws, "client", lambda service: Counting(real(service))):
            for index in range(requests):
                text = COMMANDS[index % len(COMMANDS)]
                if text.startswith("deploy"):
                    deployed.clients.s3.delete_object(Bucket=keys_bucket, Key="web/staging/lock")
                event = slack_event(text)
                before = calls["n"]
                started = time.perf_counter()
                response = api.handler(event, cast(Any, context))
                timings.append(time.perf_counter() - started)
                made.append(calls["n"] - before)
                if response["statusCode"] != 200:
                    raise SystemExit(f"{text}: {response['statusCode']} {response['body']}")
                if text.startswith("deploy"):  # the ack is what is measured: stop the rollout it started
                    stop_running(deployed)
        stop_running(deployed)
        return timings, made


def stop_running(deployed: Any) -> None:
    """Stop the rollouts a deploy command started (moto refuses until the execution has begun: retry)."""
    sfn = deployed.clients.stepfunctions
    running = sfn.list_executions(stateMachineArn=deployed.settings.state_machine, statusFilter="RUNNING")
    for execution in running["executions"]:
        for _ in range(100):
            try:
                sfn.stop_execution(executionArn=execution["executionArn"])
                break
            except Exception:
                time.sleep(0.02)


COLD = """
import json, sys, time
started = time.perf_counter()
sys.path[:0] = [{root!r}, {root!r} + "/lambdas"]
from slipway import api
imported = time.perf_counter()
print(json.dumps({{"import_s": imported - started}}))
"""


def cold() -> list[float]:
    """Seconds to import the handler's module in a fresh interpreter (what a cold start adds)."""
    runs = []
    for _ in range(COLD_RUNS):
        out = subprocess.run(
            [sys.executable, "-c", COLD.format(root=str(ROOT))], capture_output=True, text=True, check=True
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1])["import_s"])
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    os.environ.pop("AWS_ENDPOINT_URL", None)
    os.environ["POWERTOOLS_LOG_LEVEL"] = "ERROR"  # the commands here have no response URL to follow in
    template = synthesize("staging")
    timings, made = warm(args.requests, template)
    imports = cold()
    per_command: dict[str, list[float]] = {}
    for index, seconds in enumerate(timings):
        per_command.setdefault(COMMANDS[index % len(COMMANDS)].split()[0], []).append(
            seconds + made[index] * AWS_CALL_S
        )
    modelled = [t + n * AWS_CALL_S for t, n in zip(timings, made, strict=True)]
    print(f"Slack command acknowledgement, {args.requests} signed requests (handler on moto, in-process)")
    p50, p99, top = statistics.median(timings), percentile(timings, 0.99), max(timings)
    print(f"  measured handler time: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {top * 1000:.1f} ms")
    print(f"  AWS calls per command: {min(made)} to {max(made)}; modelled at {AWS_CALL_S * 1000:.0f} ms each")
    m50, m99 = statistics.median(modelled), percentile(modelled, 0.99)
    print(f"  modelled ack: p50 {m50 * 1000:.0f} ms, p99 {m99 * 1000:.0f} ms")
    for name, values in per_command.items():
        v50, v99 = statistics.median(values), percentile(values, 0.99)
        print(f"    {name:<9} p50 {v50 * 1000:6.0f} ms  p99 {v99 * 1000:6.0f} ms")
    cold_p50 = statistics.median(imports)
    print(f"  cold: importing the handler {cold_p50 * 1000:.0f} ms (median of {COLD_RUNS}); a cold ack adds that")
    worst = max(percentile(modelled, 0.99), cold_p50 + percentile(modelled, 0.99))
    verdict = "SUPPORTED" if worst < GOAL_P99_S else "NOT SUPPORTED"
    print(
        f"claim: p99 under {GOAL_P99_S:.0f} s (Slack's limit is 3 s), cold included: {worst * 1000:.0f} ms: {verdict}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
