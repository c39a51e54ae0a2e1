"""The whole platform on one machine, end to end through the load balancer: `python -m local --env
demo` with real instances (three containers of web behind HAProxy), driven with the slipway CLI
while a load generator (local.load) counts what clients see.

One platform serves the whole module (booting it takes about 30 s); the tests run in file order
and each says what it starts from. Every count of failed requests below is asserted to be zero
where the design guarantees it, and the comment says why. Stopping the platform (SIGTERM) must
leave nothing: no container, network namespace, bridge, mount or HAProxy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from local.demo import DEMO_ENV, DEMO_INSTANCES, SAMPLE
from local.load import Load
from local.network import BridgePlan, leftovers
from local.platform import launch, missing_prerequisites
from slipway_release.layout import AppKeys

pytestmark = pytest.mark.e2e
if missing_prerequisites():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=f"local instances: {missing_prerequisites()}")]

APP, ENV = "web", DEMO_ENV
PASSWORD = "local-instances-e2e"
SLIPWAY = Path(sys.executable).parent / "slipway"
BODY = re.compile(r"^(?P<greeting>.+) from (?P<release>r\d+) on (?P<instance>i-[0-9a-f]+)$")
# Fast enough to run the module in a few minutes: bakes are not what these tests are about.
FAST = ("--bake", "0", "--interval", "0.5")
# The releases deployed so far, oldest first: what a rollback goes back to.
DEPLOYED: list[str] = []


def _processes_under(pid: int) -> dict[int, str]:
    """Every process descending from ``pid``: id → command line."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, queue = {}, [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            try:
                found[child] = (Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")).decode().strip()
            except OSError:
                continue
            queue.append(child)
    return found


def _still_running(seen: dict[int, str]) -> list[str]:
    alive = []
    for pid, cmdline in seen.items():
        try:
            now = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if now == cmdline:
            alive.append(f"{pid} {cmdline[:80]}")
    return alive


@dataclass
class Platform:
    """The running platform, the CLI pointed at it, and what the tests have seen."""

    pid: int
    info: dict[str, Any]
    log: Path
    checkout: Path
    home: Path
    processes: dict[int, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{self.info['app_urls'][APP]}/"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPWAY_")}
        env.update(
            HOME=str(self.home),
            SLIPWAY_URL_DEMO=self.info["url"],
            SLIPWAY_USER=self.info["user"],
            SLIPWAY_PASSWORD=PASSWORD,
        )
        return env

    def slipway(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SLIPWAY), *args],
            cwd=cwd or self.checkout,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=600,
        )

    def started(self, *args: str) -> subprocess.Popen[str]:
        """``slipway ARGS`` running, its output read as it comes (the caller waits for it)."""
        return subprocess.Popen(
            [str(SLIPWAY), *args],
            cwd=self.checkout,
            env=self._env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def ok(self, *args: str, cwd: Path | None = None) -> str:
        result = self.slipway(*args, cwd=cwd)
        assert result.returncode == 0, f"slipway {' '.join(args)}: {result.stdout}{result.stderr}\n{self.tail()}"
        return result.stdout

    def tail(self) -> str:
        return "platform log: " + "\n".join(self.log.read_text().splitlines()[-30:])

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.info["aws_endpoint"],
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )

    def containers(self) -> int:
        """How many containers the platform runs now."""
        running = _processes_under(self.pid)
        self.processes.update(running)
        return sum(1 for cmdline in running.values() if cmdline.startswith("systemd-nspawn "))

    def status(self) -> dict[str, Any]:
        shown: dict[str, Any] = json.loads(self.ok("--json", "status", APP, ENV))
        self.processes.update(_processes_under(self.pid))  # what runs now, to prove it is gone at the end
        return shown

    def release(self, release_id: str) -> dict[str, Any]:
        """A release's manifest, as the API shows it."""
        listed = json.loads(self.ok("--json", "releases", APP, ENV, "--limit", "100"))["releases"]
        found: dict[str, Any] = next(r for r in listed if r["id"] == release_id)
        return found

    def serving(self) -> dict[str, str]:
        """Instance → release, for every instance in service and healthy in the load balancer."""
        return {
            i["id"]: i["release"]
            for i in self.status()["instances"]
            if i["lifecycle"] == "InService" and i["target"] == "healthy"
        }

    def publish(self, procfile: str | None = None, message: str = "e2e") -> str:
        """Publish the sample (with another Procfile if given) as a new release; its id."""
        cwd = self.checkout
        if procfile is not None:
            cwd = self.checkout.parent / f"variant-{time.monotonic_ns()}"
            _checkout(cwd, procfile)
        published = json.loads(self.ok("--json", "release", APP, ENV, "-m", message, cwd=cwd))
        return str(published["id"])


def _checkout(directory: Path, procfile: str | None = None) -> Path:
    shutil.copytree(SAMPLE, directory, ignore=shutil.ignore_patterns("__pycache__"))
    if procfile is not None:
        (directory / "Procfile").write_text(procfile)
    git = ["git", "-c", "user.name=E2E", "-c", "user.email=e2e@slipway.invalid"]
    for argv in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "sample"]):
        subprocess.run([*git, *argv], cwd=directory, check=True, capture_output=True)
    return directory


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """`python -m local --env demo` with real instances for the module; then proof it left nothing."""
    assert SLIPWAY.exists(), "the slipway command is not installed: `make test` installs it"
    directory = tmp_path_factory.mktemp("local-instances")
    log = directory / "platform.log"
    started = time.monotonic()
    process, info = launch(ENV, PASSWORD, real_instances=True, log_file=log)
    print(f"platform with {DEMO_INSTANCES} real instances up in {time.monotonic() - started:.1f}s")
    home = directory / "home"
    home.mkdir()
    running = Platform(process.pid, info, log, _checkout(directory / "sample"), home)
    running.processes.update(_processes_under(process.pid))
    try:
        yield running
    finally:
        running.processes.update(_processes_under(process.pid))
        process.terminate()
        try:
            code = process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait(timeout=30)
        plan = BridgePlan(int(info["bridge"].removeprefix("slipway")))
        left = {
            "processes": _still_running(running.processes),
            "network": leftovers(plan),
            "mounts": [line for line in Path("/proc/mounts").read_text().splitlines() if info["workdir"] in line],
            "files": [info["workdir"]] if Path(info["workdir"]).exists() else [],
        }
        assert code == 0, f"the platform exited {code} on SIGTERM\n{running.tail()}"
        assert left == {"processes": [], "network": [], "mounts": [], "files": []}, left
        assert len(running.processes) >= DEMO_INSTANCES + 1, running.processes  # containers and HAProxy were seen


def _bodies(load: Load) -> list[dict[str, str]]:
    return [m.groupdict() for body in load.bodies if (m := BODY.match(body))]


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def first(platform: Platform) -> str:
    """The sample's first release, deployed to the three instances (nothing served before it)."""
    assert platform.status()["current"] is None
    assert len(platform.status()["instances"]) == DEMO_INSTANCES
    release = platform.publish(message="first")
    platform.ok("deploy", APP, ENV, release, *FAST)
    _wait(lambda: len(platform.serving()) == DEMO_INSTANCES, 60, "three healthy targets")
    DEPLOYED.append(release)
    return release


def test_a_rollout_over_three_instances(platform: Platform, first: str) -> None:
    release = platform.publish(message="second")
    with Load(platform.url) as load:
        out = platform.ok("deploy", APP, ENV, release, *FAST)
    print(f"rollout over 3: {load.summary()}")
    assert re.fullmatch(
        rf"Deployed {APP} {release} to {ENV}: 3 instance\(s\) in 3 batch\(es\) in \d+\.\d s; {release} is current",
        out.splitlines()[-1],
    )
    # Zero by design: each instance switches in place (the release started beside the serving one,
    # checked, the instance's front moved to it, the old one stopped once its requests ended), so
    # no instance leaves the load balancer and none stops serving.
    assert load.failures == [], load.summary()
    served = _bodies(load)
    assert {b["release"] for b in served} == {first, release}
    assert len({b["instance"] for b in served if b["release"] == release}) == DEMO_INSTANCES
    assert set(platform.serving().values()) == {release}
    DEPLOYED.append(release)


def test_a_config_change(platform: Platform) -> None:
    out = platform.ok("config", APP, ENV, "set", "GREETING=Howdy")
    made = re.search(r"released as (r\d+) \(on (r\d+)'s slug", out)
    assert made and made.group(2) == DEPLOYED[-1], out  # on what serves
    release = made.group(1)
    with Load(platform.url) as load:
        platform.ok("deploy", APP, ENV, release, *FAST)
    print(f"config change: {load.summary()}")
    assert load.failures == [], load.summary()  # zero by design, as for any rollout
    after = [b for b in _bodies(load) if b["release"] == release]
    assert after and {b["greeting"] for b in after} == {"Howdy"}
    DEPLOYED.append(release)


def test_rollback_then_a_config_change_serves_the_code_rolled_back_to(platform: Platform) -> None:
    """Heroku's semantics: a build r_new deployed over r_old, a rollback (a new release copying r_old,
    its slug and config, is what rolls out, in one batch), then a config change and a deploy: what
    serves is r_old's code with the new variable, never the code just rolled back. 0 failed requests."""
    old = platform.status()["current"]
    newer = platform.publish(message="newer")  # a build of its own: a slug of its own
    platform.ok("deploy", APP, ENV, newer, *FAST)
    slug = {r: platform.release(r)["slug"]["sha256"] for r in (old, newer)}
    assert slug[old] != slug[newer]
    with Load(platform.url) as load:
        out = platform.ok("rollback", APP, ENV, *FAST)
    print(f"rollback: {load.summary()}")
    copy = platform.status()["current"]
    assert platform.release(copy)["base"] == {"env": ENV, "release": old, "reason": "rollback"}
    # Every instance at once, in place: each has old's slug staged (linked, nothing downloaded).
    assert re.fullmatch(
        rf"Rolled back {APP} in {ENV} to {old} as {copy}: 3 instance\(s\) in 1 batch\(es\) in \d+\.\d s; "
        rf"{copy} is current",
        out.splitlines()[-1],
    ), out
    assert load.failures == [], load.summary()
    assert set(platform.serving().values()) == {copy}
    assert {b["greeting"] for b in _bodies(load) if b["release"] == copy} == {"Howdy"}  # old's config too
    out = platform.ok("config", APP, ENV, "set", "GREETING=Again")
    made = re.search(r"released as (r\d+) \(on (r\d+)'s slug", out)
    assert made and made.group(2) == copy, out
    changed = made.group(1)
    with Load(platform.url) as load:
        platform.ok("deploy", APP, ENV, changed, *FAST)
    assert load.failures == [], load.summary()
    assert set(platform.serving().values()) == {changed}
    assert platform.release(changed)["slug"]["sha256"] == slug[old]  # old's code, not the one rolled back
    assert {b["greeting"] for b in _bodies(load) if b["release"] == changed} == {"Again"}
    DEPLOYED.append(changed)


def test_a_rolling_restart_under_load(platform: Platform) -> None:
    current = platform.status()["current"]
    with Load(platform.url) as load:
        out = platform.ok("restart", APP, ENV, *FAST)
    print(f"rolling restart: {load.summary()}")
    assert re.fullmatch(
        rf"Restarted {APP} {current} in {ENV}: 3 instance\(s\) in 3 batch\(es\) in \d+\.\d s; {current} is current",
        out.splitlines()[-1],
    )
    # Zero by design: each instance starts a fresh copy beside the serving one and switches to it.
    assert load.failures == [], load.summary()
    assert set(platform.serving().values()) == {current}
    # Each batch ran the deploy program's restart, on its instance, and it succeeded there.
    ssm = platform.client("ssm")
    restarts = [c for c in ssm.list_commands()["Commands"] if f"{current} (restart)" in c["Comment"]]
    assert len(restarts) == 3 and {c["Status"] for c in restarts} == {"Success"}
    assert sorted(i for c in restarts for i in c["InstanceIds"]) == sorted(platform.serving())


def test_a_release_whose_web_process_crashes_is_rolled_back(platform: Platform) -> None:
    before = platform.status()["current"]
    crashing = platform.publish("web: python3 -c 'import sys; print(\"crashing\"); sys.exit(3)'\n", "crashes")
    with Load(platform.url) as load:
        result = platform.slipway("deploy", APP, ENV, crashing, *FAST)
    print(f"crashing release: {load.summary()}")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"slipway: {APP} {crashing} was not deployed to {ENV} on i-"), result.stderr
    assert "the deploy command failed on i-" in line and f"{before} is still current" in line
    assert "failed its preflight: its web process exited (status 3)" in result.stderr  # the agent's own output
    # Zero by design: the release failed while being staged (its preflight on a spare port), on
    # every instance at once, while each kept serving the old release; none was switched.
    assert load.failures == [], load.summary()
    assert {b["release"] for b in _bodies(load)} == {before}
    assert platform.status()["current"] == before
    # A config change now builds on what serves, not on the refused release (the newest).
    out = platform.ok("config", APP, ENV, "set", "AFTER_REFUSAL=1")
    made = re.search(r"released as (r\d+) \(on (r\d+)'s slug", out)
    assert made and made.group(2) == before, out
    assert platform.release(made.group(1))["slug"] == platform.release(before)["slug"]
    # What SSM reports is the instance's: the real exit code and output of the deploy program.
    ssm = platform.client("ssm")
    [latest, *_] = sorted(ssm.list_commands()["Commands"], key=lambda c: c["RequestedDateTime"], reverse=True)
    assert crashing in latest["Comment"] and "(stage)" in latest["Comment"]  # the last command: no switch, no rollback
    failed = ssm.list_command_invocations(CommandId=latest["CommandId"], Details=True)["CommandInvocations"]
    assert len(failed) == 3 and {i["Status"] for i in failed} == {"Failed"}
    assert {i["CommandPlugins"][0]["ResponseCode"] for i in failed} == {1}
    answer = ssm.get_command_invocation(CommandId=latest["CommandId"], InstanceId=failed[0]["InstanceId"])
    assert answer["StandardErrorContent"].startswith(f"deploy: FAILED: {crashing} not staged: ")


def test_a_release_the_load_balancer_finds_unhealthy_is_rolled_back(platform: Platform) -> None:
    before = platform.status()["current"]
    # Healthy for its first 3 s: the deploy agent's checks pass (they come first), the load balancer's
    # then fail (two checks 5 s apart): the canary's bake watches its target and sees it.
    hidden = platform.publish("web: python3 app.py --unhealthy-after 3\n", "unhealthy after 3 s")
    with Load(platform.url) as load:
        result = platform.slipway("deploy", APP, ENV, hidden, "--bake", "20", "--interval", "0.5")
    print(f"release unhealthy in the load balancer: {load.summary()}")
    assert result.returncode == 1
    assert "unhealthy in the target group: i-" in result.stderr, result.stderr
    assert "Health checks failed" in result.stderr and f"{before} is still current" in result.stderr
    # Zero by design: only its health check fails; the load balancer stops sending it requests
    # once it finds it unhealthy, and the others serve.
    assert load.failures == [], load.summary()
    assert platform.status()["current"] == before
    # It served, on the canary only, until the bake saw its target unhealthy; then went back.
    assert len({b["instance"] for b in _bodies(load) if b["release"] == hidden}) == 1, load.summary()
    assert re.search(r"; rolled back i-[0-9a-f]+; ", result.stderr), result.stderr  # the canary alone
    _wait(lambda: len(platform.serving()) == DEMO_INSTANCES, 60, "the rolled-back instance to serve again")


def test_what_serves_cannot_be_changed_but_by_a_release_and_a_deploy(platform: Platform) -> None:
    """The attacks on the record, played under load: the current release's files rewritten or deleted
    (as any role could, the API's included: the bucket refuses it), and the rollout started with a real
    deploy's input edited (another release, an empty fleet: refused). Nothing changes; it keeps serving."""
    status = platform.status()
    current, bucket = status["current"], platform.info["bucket"]
    keys, s3 = AppKeys(APP, ENV), platform.client("s3")
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=keys.release(current, "release.json"))["Body"].read())
    with Load(platform.url) as load:
        for key in (keys.release(current, "release.json"), keys.slug(manifest["slug"]["sha256"])):
            for attempt in (
                lambda key=key: s3.put_object(Bucket=bucket, Key=key, Body=b"rewritten"),
                lambda key=key: s3.delete_object(Bucket=bucket, Key=key),
            ):
                with pytest.raises(ClientError, match="AccessDenied"):
                    attempt()
        sfn = platform.client("stepfunctions")
        [machine] = [m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"] if "Rollout" in m["name"]]
        real = next(e for e in sfn.list_executions(stateMachineArn=machine)["executions"])
        forged = {**json.loads(sfn.describe_execution(executionArn=real["executionArn"])["input"])}
        forged.update(release=current, fleet={"group": "nothing-here"})
        arn = sfn.start_execution(stateMachineArn=machine, name=f"forged-{time.time_ns()}", input=json.dumps(forged))[
            "executionArn"
        ]
        _wait(lambda: sfn.describe_execution(executionArn=arn)["status"] != "RUNNING", 30, "the forged rollout")
        ended = sfn.describe_execution(executionArn=arn)
    assert (ended["status"], ended.get("error")) == ("FAILED", "RequestRefused"), ended
    assert "fleet" in ended.get("cause", "")
    assert load.failures == [], load.summary()
    assert platform.status()["current"] == current and set(platform.serving().values()) == {current}
    assert (
        json.loads(s3.get_object(Bucket=bucket, Key=keys.release(current, "release.json"))["Body"].read()) == manifest
    )


def test_a_cancel_after_the_canary_puts_it_back_in_place(platform: Platform) -> None:
    before = platform.status()["current"]
    release = platform.publish(message="cancelled after the canary")
    with Load(platform.url) as load:
        # A bake of 5 s: an in-place batch switches in about a second, so without one the rollout
        # could end before the cancel reaches it.
        deploy = platform.started("deploy", APP, ENV, release, "--bake", "5", "--interval", "0.5")
        try:
            assert deploy.stdout is not None
            for line in deploy.stdout:  # each step as it ends: the canary is done once batch 2 begins
                if "batch 2 of 3" in line:
                    break
            else:
                pytest.fail(f"the deploy ended before its second batch: {deploy.communicate()}")
            # The canceller follows it to its end: rolled back, so the deploy did not happen (exit 1).
            cancelled = platform.slipway("deploy", APP, ENV, "--cancel", "--interval", "0.5")
            out, err = deploy.communicate(timeout=300)
        finally:
            if deploy.poll() is None:
                deploy.kill()
                deploy.wait()
    print(f"cancel after the canary, rolled back: {load.summary()}")
    assert deploy.returncode == 1 and cancelled.returncode == 1, out + err
    assert cancelled.stderr.splitlines()[-1] == err.splitlines()[-1], cancelled.stderr  # the same outcome
    assert "cancelled the rollout" in err and f"{before} is still current" in err, err
    # The canary and the second batch (switched, cancelled while it baked) back in one batch, in place.
    rolled = re.search(r"; rolled back (i-[0-9a-f, i-]+); ", err)
    assert rolled, err
    count = len(rolled.group(1).split(", "))
    back = re.findall(r"rolling back: switching a batch back to the previous release — batch (\d) of (\d)", out)
    assert count == 2 and back == [("1", "1")], out
    # Zero by design: the canary switches back in place like any batch.
    assert load.failures == [], load.summary()
    assert release in {b["release"] for b in _bodies(load)}  # the canary served it before the cancel
    _wait(lambda: len(platform.serving()) == DEMO_INSTANCES, 60, "every instance to serve again")
    assert set(platform.serving().values()) == {before}
    assert platform.status()["current"] == before


def test_cycling_one_instance(platform: Platform) -> None:
    victim = sorted(platform.serving())[0]
    with Load(platform.url) as load:
        out = platform.ok("cycle", APP, ENV, "--instance", victim, "--interval", "0.5", "--timeout", "120")
    print(f"cycle one instance: {load.summary()}")
    assert out.strip() == f"Replaced {victim}: 3 of 3 instances of {APP} in {ENV} serve"
    # Zero by design: the terminated instance is drained before its container stops, and its
    # replacement gets traffic once it has booted, deployed `current` and passed its checks.
    assert load.failures == [], load.summary()
    assert victim not in platform.serving()
    _wait(lambda: platform.containers() == DEMO_INSTANCES, 60, "the victim's container to stop")


def test_cycling_the_whole_fleet(platform: Platform) -> None:
    before = set(platform.serving())
    current = platform.status()["current"]
    with Load(platform.url) as load:
        out = platform.ok("cycle", APP, ENV, "--interval", "0.5")
    print(f"cycle the fleet: {load.summary()}")
    assert out.splitlines()[-1] == f"Cycled every instance of {APP} in {ENV}"
    # Zero by design: one instance at a time (90 % of 3 must stay in service), each drained first.
    assert load.failures == [], load.summary()
    after = platform.serving()
    assert len(after) == DEMO_INSTANCES and not set(after) & before
    _wait(lambda: platform.containers() == DEMO_INSTANCES, 60, "the replaced instances' containers to stop")
    assert {b["release"] for b in _bodies(load)} == {current}


def test_a_one_off_runs_with_the_current_release_streams_its_output_and_passes_its_exit_status(
    platform: Platform,
) -> None:
    current = platform.status()["current"]
    script = (
        "python3 -c \"import json; print('release', json.load(open('../release.json'))['id'])\"; echo err >&2; exit 3"
    )
    result = platform.slipway("run", APP, ENV, "--", script)
    assert result.returncode == 3, f"{result.stdout}{result.stderr}\n{platform.tail()}"
    assert result.stdout.splitlines() == [f"release {current}", "err"]
    assert result.stderr.startswith(f"Running `{script}` on i-") and f"({APP} {current} in {ENV})" in result.stderr
    # The output streams: the first line is here while the command still runs.
    following = platform.started("run", APP, ENV, "--", "echo first; sleep 8; echo second")
    assert following.stdout is not None
    started = time.monotonic()
    assert following.stdout.readline() == "first\n"
    print(f"run: first line after {time.monotonic() - started:.1f} s")
    assert following.poll() is None
    assert following.wait(timeout=60) == 0
    assert following.stdout.read() == "second\n"


def test_logs_show_a_line_a_process_writes_and_tail_follows_new_ones(platform: Platform) -> None:
    marker = f"logs-{time.monotonic_ns()}"
    platform.ok("run", APP, ENV, "--", f"echo {marker}")
    started = time.monotonic()

    def shown() -> str:
        return platform.ok("logs", APP, ENV, "--process", "run", "--since", "10m")

    _wait(lambda: marker in shown(), 60, "the one-off's line in slipway logs")
    print(f"logs: a line in slipway logs {time.monotonic() - started:.1f} s after its command ended")
    [line] = [line for line in shown().splitlines() if marker in line]
    assert re.fullmatch(rf"\S+ i-[0-9a-f]+ run: {marker}", line), line
    # --tail prints lines written after it started, until Ctrl-C.
    tail = platform.started("logs", APP, ENV, "--tail", "--since", "1s", "--interval", "0.5")
    try:
        time.sleep(2)
        later = f"tail-{time.monotonic_ns()}"
        platform.ok("run", APP, ENV, "--", f"echo {later}")
        assert tail.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if later in tail.stdout.readline():
                break
        else:
            raise AssertionError(f"slipway logs --tail never printed {later}")
    finally:
        tail.send_signal(signal.SIGINT)
        assert tail.wait(timeout=30) == 0


def test_scaling_from_three_to_four_serves_current_on_the_new_instance(platform: Platform) -> None:
    current = platform.status()["current"]
    before = set(platform.serving())
    with Load(platform.url) as load:
        out = platform.ok("scale", APP, ENV, "--desired", "4")
        assert out.strip() == f"Scaled {APP} in {ENV}: min 2, desired 3 -> 4, max 6 (it may scale from 2 to 6)"
        _wait(lambda: len(platform.serving()) == 4, 90, "a fourth healthy instance")
        [new] = set(platform.serving()) - before
        _wait(lambda: any(b["instance"] == new for b in _bodies(load)), 30, "the new instance to answer")
    print(f"scale 3 -> 4: {load.summary()}")
    # Zero by design: the new target gets traffic only once its checks pass.
    assert load.failures == [], load.summary()
    assert {b["release"] for b in _bodies(load) if b["instance"] == new} == {current}
    assert platform.containers() == 4
    with Load(platform.url) as load:
        platform.ok("scale", APP, ENV, "--desired", "3")
        _wait(lambda: platform.containers() == 3, 60, "the container of the instance scaled in to stop")
    print(f"scale 4 -> 3: {load.summary()}")
    # Zero by design: the instance scaled in is drained before its container stops.
    assert load.failures == [], load.summary()
    assert len(platform.serving()) == 3


def test_a_command_the_document_does_not_admit_is_refused_before_it_runs(platform: Platform) -> None:
    ssm = platform.client("ssm")
    [instance, *_] = sorted(platform.serving())
    bucket = platform.info["bucket"]
    for url in (f"s3://{bucket}/{APP}/{ENV}/r1; touch /tmp/pwned", f"s3://{bucket}/{APP}/staging/r1"):
        with pytest.raises(ClientError, match="InvalidParameters"):
            ssm.send_command(
                DocumentName="Platform-demo-Deploy", InstanceIds=[instance], Parameters={"ReleaseUrl": [url]}
            )
    with pytest.raises(ClientError, match="InvalidInstanceId"):
        ssm.send_command(
            DocumentName="Platform-demo-Deploy",
            InstanceIds=["i-00000000000000000"],
            Parameters={"ReleaseUrl": [f"s3://{bucket}/{APP}/{ENV}/current"]},
        )


def test_commands_run_in_the_instance_and_report_what_happened(platform: Platform) -> None:
    # Any Command document runs as the SSM agent would run it: here one that prints, and one that
    # outlives its step's timeout.
    ssm = platform.client("ssm")
    instance = sorted(platform.serving())[0]
    for name, command, timeout in (("Whoami", "hostname; echo to-stderr >&2; exit 0", "60"), ("Slow", "sleep 30", "1")):
        content = {
            "schemaVersion": "2.2",
            "description": name,
            "mainSteps": [
                {
                    "action": "aws:runShellScript",
                    "name": name,
                    "inputs": {"runCommand": [command], "timeoutSeconds": timeout},
                }
            ],
        }
        ssm.create_document(Name=name, DocumentType="Command", DocumentFormat="JSON", Content=json.dumps(content))
    results = {}
    for name in ("Whoami", "Slow"):
        sent = ssm.send_command(DocumentName=name, InstanceIds=[instance])["Command"]["CommandId"]

        def done(command: str = sent) -> bool:
            status = ssm.get_command_invocation(CommandId=command, InstanceId=instance)["Status"]
            return status not in ("Pending", "InProgress")

        _wait(done, 60, f"command {name}")
        results[name] = ssm.get_command_invocation(CommandId=sent, InstanceId=instance)
    whoami, slow = results["Whoami"], results["Slow"]
    assert (whoami["Status"], whoami["ResponseCode"]) == ("Success", 0)
    assert (whoami["StandardOutputContent"], whoami["StandardErrorContent"]) == (f"{instance}\n", "to-stderr\n")
    assert (slow["Status"], slow["StatusDetails"]) == ("TimedOut", "ExecutionTimedOut")
