"""The demo (local.demo): its environment derived from cdk.json, the sample app it publishes, and
what the local platform says when real instances cannot run here."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from local.demo import DEMO_ENV, SAMPLE, demo_context
from local.instance import free_port
from local.platform import missing_prerequisites
from slipway_release.procfile import parse_procfile, resolve_formation


def test_the_demo_environment_is_staging_with_web_at_its_own_defaults_and_three_instances(
    example_context: dict[str, Any],
) -> None:
    before = copy.deepcopy(example_context)
    derived = demo_context(example_context)
    assert example_context == before  # cdk.json's context is not changed
    platform = derived["platform"]
    assert platform["environments"] == {DEMO_ENV: example_context["platform"]["environments"]["staging"]}
    web = example_context["platform"]["apps"]["web"]
    assert platform["apps"] == {
        "web": {**web, "environments": {DEMO_ENV: {"desired_capacity": 3, "rollout": {"bake_seconds": 5}}}}
    }
    assert (web["min_capacity"], web["max_capacity"]) == (2, 6)  # room to roll out in batches and to scale
    with pytest.raises(ValueError, match=r"cdk\.json defines an environment 'demo'"):
        demo_context(derived)


def test_the_demo_stack_runs_three_instances_of_web(example_context: dict[str, Any], synth: Any) -> None:
    template = synth(demo_context(example_context))["Platform-demo"]
    [group] = [
        r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::AutoScaling::AutoScalingGroup"
    ]
    assert (group["MinSize"], group["DesiredCapacity"], group["MaxSize"]) == ("2", "3", "6")


def test_the_sample_is_a_procfile_app_that_serves_its_release_and_health(
    example_platform: dict[str, Any], tmp_path: Path
) -> None:
    processes = parse_procfile((SAMPLE / "Procfile").read_text())
    assert resolve_formation(processes, example_platform["apps"]["web"]["formation"]) == [("web", 1)]
    # As the agent lays it out: releases/<id>/{release.json, source/}, run from source/.
    release = tmp_path / "r7"
    (release / "source").mkdir(parents=True)
    (release / "release.json").write_text(json.dumps({"id": "r7"}))
    for name in ("app.py", "Procfile"):
        (release / "source" / name).write_text((SAMPLE / name).read_text())
    port = free_port()
    env = {"PATH": os.environ["PATH"], "PORT": str(port), "GREETING": "Hi"}
    command = [*processes["web"].replace("python3", sys.executable, 1).split(), "--host", "127.0.0.1"]
    app = subprocess.Popen(command, cwd=release / "source", env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert app.stdout is not None and app.stdout.readline().strip() == f"r7 listening on 127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as answer:
                    body = answer.read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert body.startswith("Hi from r7 on ")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
            assert (answer.status, answer.read()) == (200, b"ok\n")
    finally:
        app.terminate()
        app.wait(timeout=10)


def test_without_root_or_packages_the_platform_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert missing_prerequisites() == (
        "real instances need root (network namespaces, systemd-nspawn); run as root, or with --simulated"
    )
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr("shutil.which", lambda tool: None if tool == "haproxy" else f"/usr/bin/{tool}")
    assert missing_prerequisites() == (
        "real instances need host packages: apt-get install haproxy (make instance-packages)"
    )
