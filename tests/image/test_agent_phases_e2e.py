"""The agent's two phases and its faults on real systemd: stage while serving, activate, activate
the previous release with S3 out of reach, and the agent SIGKILLed at each phase, then run again.

The app here is ``phased`` (its own port and releases; the session's instance is provisioned
for ``demo``, whose tests live in test_agent_e2e.py), so these tests do not disturb demo's.
Each test states its own precondition. Kills are exact: the agent stops itself at a named point
(``SLIPWAY_AGENT_PAUSE_AT``, host.pause_if), the test looks at the instance there, then
SIGKILLs the agent process from the host; or, for the release phase, the test kills it while
systemd reports the phase's unit running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from instance_harness import BUCKET, ENV, Poller, Publisher, get, tarball
from test_agent_e2e import APP_PY, DEPLOY, ENV_FILE, PROCFILE, good_source

from local.instance import free_port, missing_prerequisites
from slipway_release import oneoff

pytestmark = pytest.mark.e2e
if missing_prerequisites():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=f"instance e2e {missing_prerequisites()}")]

APP = "phased"
APP_DIR = f"/home/deploy/apps/{APP}"
PHASE_LOG = f"{APP_DIR}/home/phase.log"
# A release phase long enough to be killed in, that leaves a trace of each start and end.
SLOW_RELEASE = "release: echo start >> $HOME/phase.log; sleep 3; echo end >> $HOME/phase.log\n"


@pytest.fixture(scope="module")
def phased(instance_world):
    world = dict(instance_world)
    world["publisher"] = Publisher(world["client"], APP, ENV)
    world["port"] = free_port()
    world["next"] = 1
    return world


def publish(world, procfile: str = PROCFILE) -> tuple[str, str]:
    """Publish the next release of ``phased``; (id, URL)."""
    release_id = f"r{world['next']}"
    world["next"] += 1
    url = world["publisher"].publish(release_id, good_source(release_id, procfile), ENV_FILE, port=world["port"])
    return release_id, url


def url_of(release_id: str) -> str:
    return f"s3://{BUCKET}/{APP}/{ENV}/{release_id}"


def agent(world, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str, dict]:
    result = world["instance"].run([DEPLOY, *argv], env=env or world["env"], check=False, timeout=120)
    return result.returncode, result.stdout, result.stderr, json.loads(result.stdout.strip().splitlines()[-1])


def text(world, path: str) -> str | None:
    try:
        return world["instance"].path(path).read_text()
    except FileNotFoundError:
        return None


def deployed(world) -> str | None:
    return (text(world, f"{APP_DIR}/DEPLOYED") or "").strip() or None


def current(world) -> str:
    return os.readlink(world["instance"].path(f"{APP_DIR}/current"))


def serving(world) -> str | None:
    answer = get(world["port"])
    return answer[1].strip() if answer and answer[0] == 200 else None


def serving_record(world) -> dict | None:
    recorded = text(world, f"{APP_DIR}/SERVING")
    return json.loads(recorded) if recorded else None


def unit_of(world, process: str = "web.1") -> str:
    """The unit of ``process`` of the serving release (in its slot)."""
    record = serving_record(world)
    assert record is not None
    return f"slipway-{APP}-{process}.{record['slot']}.service"


def assert_agree(world, release_id: str) -> None:
    """SERVING, current, DEPLOYED, the front, the installed units (the serving slot's only) and the
    absence of a record in flight agree."""
    record = serving_record(world)
    assert record is not None and record["release"] == release_id
    assert deployed(world) == release_id
    assert current(world) == f"releases/{release_id}"
    assert text(world, f"{APP_DIR}/ACTIVATING") is None
    units = sorted(
        n for n in os.listdir(world["instance"].path("/etc/systemd/system")) if n.startswith(f"slipway-{APP}-")
    )
    assert units and all(n.endswith(f".{record['slot']}.service") for n in units), units
    front = text(world, f"/etc/slipway/front.d/{APP}.cfg") or ""
    assert f"server {record['slot']} 127.0.0.1:{record['port']}\n" in front, front
    deadline = time.monotonic() + 15
    while serving(world) != release_id and time.monotonic() < deadline:
        time.sleep(0.1)
    assert serving(world) == release_id
    assert json.loads(get(world["port"], "/env")[1])["cwd"] == f"{APP_DIR}/releases/{release_id}/app"


def running_release(world) -> str:
    """Make sure some good release of ``phased`` runs, its previous one staged too; return it."""
    if deployed(world) is None or serving(world) != deployed(world):
        for _ in range(2):
            _, url = publish(world)
            code, out, err, _ = agent(world, url)
            assert code == 0, out + err
    release = deployed(world)
    assert release is not None and serving(world) == release
    return release


def staged(world, procfile: str = PROCFILE) -> str:
    release_id, url = publish(world, procfile)
    code, out, err, _ = agent(world, "--stage", url)
    assert code == 0, out + err
    return release_id


class Started:
    """An agent started in the container; ``pid`` is its host pid (nsenter forks once, then execs)."""

    def __init__(self, world, argv: list[str], pause_at: str | None = None):
        env = {**world["env"], **({"SLIPWAY_AGENT_PAUSE_AT": pause_at} if pause_at else {})}
        self.process: subprocess.Popen[str] = world["instance"].popen([DEPLOY, *argv], env)
        self.pid = self._child()

    def _child(self) -> int:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
            if children:
                return int(children[0])
            time.sleep(0.01)
        raise AssertionError("the agent did not start")

    def wait_paused(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
                return
            if self.process.poll() is not None:
                raise AssertionError(f"the agent ended before pausing: {self.process.communicate()}")
            time.sleep(0.02)
        raise AssertionError("the agent did not reach its pause point")

    def kill(self) -> str:
        os.kill(self.pid, signal.SIGKILL)
        # nsenter stops itself when its child stops (to pass the stop on): let it see the kill and exit.
        os.kill(self.process.pid, signal.SIGCONT)
        out, _ = self.process.communicate(timeout=30)
        assert self.process.returncode != 0
        return out


# The two phases ------------------------------------------------------------------------------------


def test_stage_leaves_the_old_release_serving_and_staging_again_is_a_verified_no_op(phased):
    before = running_release(phased)
    release_id, url = publish(phased)
    with Poller(phased["port"]) as poller:
        code, out, err, result = agent(phased, "--stage", url)
    assert code == 0, out + err
    assert (result["mode"], result["phase"], result["result"], result["release"]) == (
        "stage",
        "stage",
        "staged",
        release_id,
    )
    assert "preflight" in result["durations"] and "switch" not in result["durations"]
    print(f"stage: {poller.ok} requests, {len(poller.failures)} failed; durations {result['durations']}")
    assert poller.failures == [] and poller.ok > 10 and poller.bodies == {before}
    assert current(phased) == f"releases/{before}" and deployed(phased) == before
    assert text(phased, f"{APP_DIR}/releases/{release_id}/STAGED") is not None
    code, out, err, again = agent(phased, "--stage", url)
    assert code == 0, out + err
    assert again["result"] == "unchanged" and "already staged and unchanged since (verified)" in out
    assert set(again["durations"]) <= {"download", "verify", "total"}, "no slug download, unpack or preflight"
    assert again["durations"]["total"] < result["durations"]["total"]


def test_activate_a_staged_release(phased):
    before = running_release(phased)
    release_id = staged(phased)
    code, out, err, result = agent(phased, "--activate", url_of(release_id))
    assert code == 0, out + err
    assert (result["mode"], result["phase"], result["result"]) == ("activate", "activate", "activated")
    assert (result["release"], result["previous"]) == (release_id, before)
    assert "download" not in result["durations"] and "preflight" not in result["durations"]
    assert_agree(phased, release_id)
    assert text(phased, f"{APP_DIR}/PREVIOUS") == f"{before}\n"


def test_activate_the_previous_release_needs_no_download(phased):
    running_release(phased)
    previous = (text(phased, f"{APP_DIR}/PREVIOUS") or "").strip()
    assert previous, "the precondition keeps a previous release"
    client = phased["client"]
    for listed in client.list_objects_v2(Bucket=BUCKET, Prefix=f"{APP}/{ENV}/{previous}/")["Contents"]:
        client.delete_object(Bucket=BUCKET, Key=listed["Key"])
    # And no S3 at all: any download would fail to connect.
    offline = {**phased["env"], "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{free_port()}"}
    code, out, err, result = agent(phased, "--activate", url_of(previous), env=offline)
    assert code == 0, out + err
    print(f"activate previous (S3 gone): durations {result['durations']}")
    assert_agree(phased, previous)


def test_restart_restarts_the_running_release_and_refuses_another(phased):
    release = running_release(phased)
    before = json.loads(get(phased["port"], "/env")[1])["pid"]
    code, out, err, result = agent(phased, "--restart", url_of(release))
    assert code == 0, out + err
    assert (result["mode"], result["phase"], result["result"], result["release"]) == (
        "restart",
        "restart",
        "restarted",
        release,
    )
    assert "restart" in result["durations"] and "download" not in result["durations"]
    print(f"restart: durations {result['durations']}")
    assert_agree(phased, release)
    assert json.loads(get(phased["port"], "/env")[1])["pid"] != before  # a new process
    # A release other than the one running is not restarted, and nothing changes.
    other = staged(phased)
    code, out, err, result = agent(phased, "--restart", url_of(other))
    assert (code, result["result"]) == (1, "failed"), out + err
    assert f"{other} not restarted: this instance runs {release}; deploy {other} instead" in err
    assert_agree(phased, release)


def test_restart_of_one_process_type_restarts_only_its_processes(phased):
    release_id = f"r{phased['next']}"
    phased["next"] += 1
    procfile = PROCFILE + "worker: sleep infinity\n"
    url = phased["publisher"].publish(
        release_id, good_source(release_id, procfile), ENV_FILE, port=phased["port"], formation={"worker": 1}
    )
    code, out, err, _ = agent(phased, url)
    assert code == 0, out + err

    def pid(unit: str) -> str:
        shown = phased["instance"].run(["systemctl", "show", "-p", "MainPID", "--value", unit])
        return shown.stdout.strip()

    web, worker = unit_of(phased, "web.1"), unit_of(phased, "worker.1")
    before = {web: pid(web), worker: pid(worker)}
    code, out, err, result = agent(phased, "--restart", url_of(release_id), "--process", "worker")
    assert (code, result["result"]) == (0, "restarted"), out + err
    assert pid(web) == before[web] and pid(worker) != before[worker]
    assert f"Restarting {release_id}'s worker processes" in out
    # A type the release does not run: refused, nothing restarted.
    code, out, err, result = agent(phased, "--restart", url_of(release_id), "--process", "clock")
    assert (code, result["result"]) == (1, "failed"), out + err
    assert (
        f"{release_id} not restarted: {release_id} runs no clock process on this instance (it runs web, worker)" in err
    )
    assert pid(web) == before[web]
    assert_agree(phased, release_id)


def test_activate_refuses_a_release_not_staged_and_names_how_to_stage_it(phased):
    before = running_release(phased)
    code, out, err, result = agent(phased, "--activate", url_of("r999"))
    assert code == 4, out + err
    assert err == (
        f"deploy: FAILED: r999 not activated: r999 is not staged on this instance; "
        f"stage it first: deploy --stage {url_of('r999')}\n"
    )
    assert (result["result"], result["exit_code"], result["phase"]) == ("failed", 4, "activate")
    assert_agree(phased, before)


def test_activate_by_id_is_this_instances_app(phased):
    code, out, err, result = agent(phased, "--activate", "r998")
    assert code == 4, out + err
    assert (result["app"], result["env"]) == ("demo", ENV)
    assert f"stage it first: deploy --stage s3://{BUCKET}/demo/{ENV}/r998" in err


# Kills ---------------------------------------------------------------------------------------------


def test_killed_while_staging_the_rerun_stages_and_nothing_partial_stays(phased):
    before = running_release(phased)
    release_id, url = publish(phased)
    run = Started(phased, ["--stage", url], pause_at="unpacked")
    run.wait_paused()
    assert (phased["instance"].path(f"{APP_DIR}/releases/.{release_id}.partial")).is_dir()
    run.kill()
    assert serving(phased) == before
    code, out, err, result = agent(phased, "--stage", url)
    assert code == 0 and result["result"] == "staged", out + err
    assert not [p for p in os.listdir(phased["instance"].path(f"{APP_DIR}/releases")) if p.startswith(".")]
    assert_agree(phased, before)


def test_killed_during_the_preflight_the_rerun_stops_its_process_and_stages(phased):
    before = running_release(phased)
    release_id, url = publish(phased, "web: sleep 2; python3 app.py\n")
    unit = f"slipway-{APP}-preflight-{release_id}.service"
    run = Started(phased, ["--stage", url])
    wait_active(phased, unit)
    run.kill()
    assert serving(phased) == before
    # Left running on its spare port by the killed agent; any next run stops it (here: another stage).
    assert phased["instance"].run(["systemctl", "is-active", unit], check=False).stdout.strip() == "active"
    _, other = publish(phased)
    code, out, err, result = agent(phased, "--stage", other)
    assert code == 0 and result["result"] == "staged", out + err
    assert phased["instance"].run(["systemctl", "is-active", unit], check=False).stdout.strip() != "active"
    code, out, err, result = agent(phased, "--stage", url)
    assert code == 0 and result["result"] == "staged", out + err
    assert_agree(phased, before)


def wait_active(world, unit: str) -> None:
    deadline = time.monotonic() + 30
    while world["instance"].run(["systemctl", "is-active", unit], check=False).stdout.strip() != "active":
        assert time.monotonic() < deadline, f"{unit} did not start"
        time.sleep(0.05)


def test_killed_during_the_release_phase_the_rerun_waits_for_it_and_runs_it_once(phased):
    running_release(phased)
    release_id = staged(phased, PROCFILE + SLOW_RELEASE)
    log = phased["instance"].path(PHASE_LOG)
    log.unlink(missing_ok=True)
    unit = f"slipway-{APP}-release-{release_id}.service"
    run = Started(phased, ["--activate", url_of(release_id)])
    wait_active(phased, unit)
    run.kill()
    code, out, err, result = agent(phased, "--activate", url_of(release_id))
    assert code == 0, out + err
    assert "already loaded" not in out + err
    assert f"Waiting for {unit}, left running by an interrupted deploy, to finish" in out
    assert result["durations"]["release_wait"] > 0.5
    # The orphan finished before the rerun's own phase began: never two at once.
    assert log.read_text().split() == ["start", "end", "start", "end"]
    assert_agree(phased, release_id)


@pytest.mark.parametrize(
    ("point", "outcome"), [("started", "restored"), ("switched", "restored"), ("committed", "finished")]
)
def test_killed_during_the_switch_the_front_units_and_serving_agree_after_the_rerun(phased, point, outcome):
    before = running_release(phased)
    old_slot = serving_record(phased)["slot"]
    release_id = staged(phased)
    with Poller(phased["port"]) as poller:
        run = Started(phased, ["--activate", url_of(release_id)], pause_at=point)
        run.wait_paused()
        # The agent stopped mid-switch: the new release runs in the other slot beside the old one, which
        # still runs; SERVING names the new one only from the commit on.
        assert text(phased, f"{APP_DIR}/ACTIVATING") is not None
        units = os.listdir(phased["instance"].path("/etc/systemd/system"))
        assert {f"slipway-{APP}-web.1.a.service", f"slipway-{APP}-web.1.b.service"} <= set(units)
        assert (serving_record(phased)["release"] == release_id) == (point == "committed")
        run.kill()
        # Any run repairs first: a stage of something else here.
        _, other_url = publish(phased)
        code, out, err, _ = agent(phased, "--stage", other_url)
    assert code == 0, out + err
    expected = release_id if outcome == "finished" else before
    if outcome == "finished":
        assert f"Finishing the activation of {release_id}, interrupted after it answered through the front" in out
        assert text(phased, f"{APP_DIR}/PREVIOUS") == f"{before}\n"
    else:
        assert f"An activation of {release_id} was interrupted; putting back {before}" in out
        assert serving_record(phased)["slot"] == old_slot
    assert_agree(phased, expected)
    # Kill, pause and repair, and not one request lost through the front.
    print(f"killed at {point}: {poller.ok} requests, {len(poller.failures)} failed")
    assert poller.failures == [] and poller.ok > 10
    # The bug this prevents: a later crash of the serving process bringing back an unchecked release.
    phased["instance"].run(["systemctl", "kill", "--signal=KILL", unit_of(phased)])
    time.sleep(1.5)
    assert_agree(phased, expected)


def test_an_activation_killed_before_a_reboot_is_repaired_before_the_app_starts(phased):
    before = running_release(phased)
    release_id = staged(phased)
    run = Started(phased, ["--activate", url_of(release_id)], pause_at="switched")
    run.wait_paused()
    run.kill()
    # What a boot runs before any app unit and the front (they are ordered after it; it is enabled at boot).
    instance = phased["instance"]
    web = unit_of(phased)
    for unit in (web, "slipway-front.service"):
        assert "slipway-recover.service" in instance.run(["systemctl", "show", "-p", "After", "--value", unit]).stdout
    assert instance.run(["systemctl", "is-enabled", "slipway-recover.service"]).stdout.strip() == "enabled"
    # A boot: nothing of the app runs, nor the front; then one transaction starts the repair, the app's
    # units and the front.
    instance.run(["systemctl", "stop", f"slipway-{APP}-*", "slipway-front.service"])
    started = instance.run(["systemctl", "start", "slipway-recover.service", web, "slipway-front.service"], check=False)
    journal = instance.run(["journalctl", "-u", "slipway-recover.service", "--no-pager", "-o", "cat"]).stdout
    assert started.returncode == 0, journal
    assert f"An activation of {release_id} was interrupted; putting back {before}" in journal
    assert f"deploy --recover: {APP}: " in journal
    assert_agree(phased, before)
    # Nothing left to repair: the next boot's repair changes nothing.
    instance.run(["systemctl", "restart", "slipway-recover.service"])
    assert_agree(phased, before)


# Disk full -----------------------------------------------------------------------------------------


@contextmanager
def small_filesystem(instance, app_dir: str, options: str):
    """A tmpfs over an app's directory inside the container, unmounted after."""
    instance.run(["mkdir", "-p", app_dir])
    instance.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", app_dir])
    try:
        yield
    finally:
        instance.run(["umount", app_dir])


def test_disk_full_names_the_filesystem_and_the_need_and_leaves_nothing(instance_world):
    instance = instance_world["instance"]
    app_dir = "/home/deploy/apps/tiny"
    with small_filesystem(instance, app_dir, "size=24m"):
        publisher = Publisher(instance_world["client"], "tiny", ENV)
        files = {"app.py": APP_PY, "Procfile": PROCFILE, "RELEASE": "r1", "zeros.bin": bytes(40_000_000)}
        url = publisher.publish("r1", tarball(files), ENV_FILE, port=free_port())
        result = instance.run([DEPLOY, "--stage", url], env=instance_world["env"], check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stderr.startswith(
            f"deploy: FAILED: r1 not staged: not enough disk space for unpacking r1: the filesystem mounted at "
            f"{app_dir} (holding {app_dir}/releases) has "
        )
        assert "MB free and this needs about 48." in result.stderr and result.stderr.count("\n") == 1
        assert "Errno" not in result.stderr
        # The tmpfs is mounted in the container's namespace: look from inside.
        left = instance.run(["find", app_dir, "-mindepth", "1", "-not", "-name", "deploy.lock"]).stdout.split()
        assert left == [f"{app_dir}/releases"], "no partial release, no download"


def test_running_out_while_unpacking_is_named_too_and_leaves_nothing(instance_world):
    # Space enough by bytes, not by files: the check before unpacking passes, the unpacking fails.
    instance = instance_world["instance"]
    app_dir = "/home/deploy/apps/many"
    with small_filesystem(instance, app_dir, "size=64m,nr_inodes=40"):
        publisher = Publisher(instance_world["client"], "many", ENV)
        files = {"app.py": APP_PY, "Procfile": PROCFILE, "RELEASE": "r1"}
        files.update({f"static/{n}.txt": str(n) for n in range(60)})
        url = publisher.publish("r1", tarball(files), ENV_FILE, port=free_port())
        result = instance.run([DEPLOY, "--stage", url], env=instance_world["env"], check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stderr == (
            f"deploy: FAILED: r1 not staged: no disk space left for unpacking r1: the filesystem mounted at {app_dir} "
            f"(holding {app_dir}/releases) has no free inodes (it holds as many files as it can); delete files "
            "there or give the instance a larger volume; nothing was running\n"
        )
        left = instance.run(["find", app_dir, "-mindepth", "1", "-not", "-name", "deploy.lock"]).stdout.split()
        assert left == [f"{app_dir}/releases"], "no partial release, no download"


def one_off(world, release_url: str, command: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """``deploy --run`` as the run document calls it (the command base64-encoded)."""
    argv = [DEPLOY, "--run", release_url, "--command", oneoff.encode(command), *extra]
    return world["instance"].run(argv, env=world["env"], check=False, timeout=120)


def test_a_one_off_runs_with_the_running_releases_code_and_config_and_passes_its_exit_status(phased):
    release = running_release(phased)
    marker = f"one-off-{time.monotonic_ns()}"
    result = one_off(
        phased, url_of(release), f'echo "{marker} in $(pwd) as $(id -un) SIMPLE=$SIMPLE"; echo err >&2; exit 7'
    )
    assert result.returncode == 7, result.stdout + result.stderr
    assert result.stdout.splitlines() == [f"{marker} in {APP_DIR}/releases/{release}/app as deploy SIMPLE=hello", "err"]
    # Its output is in the journal as <app>-run, forwarded like every process of the app.
    journal = phased["instance"].run(["journalctl", "-t", f"{APP}-run", "--no-pager", "-o", "cat"], check=False)
    assert marker in journal.stdout
    # It changed nothing of the serving release, and left no unit behind.
    assert_agree(phased, release)
    units = phased["instance"].run(["systemctl", "list-units", "--all", "--no-legend", f"slipway-{APP}-run-*"])
    assert units.stdout.strip() == ""


def test_a_one_off_of_a_release_not_running_is_refused_and_a_long_one_is_stopped_at_its_limit(phased):
    release = running_release(phased)
    other = staged(phased)
    refused = one_off(phased, url_of(other), "echo never")
    assert refused.returncode == oneoff.EXIT_REFUSED, refused.stdout + refused.stderr
    assert refused.stdout == (
        f"slipway run: not run: this instance runs {release}, not {other}; run it again once the deploy has "
        f"finished (slipway status {APP} {ENV})\n"
    )
    started = time.monotonic()
    stopped = one_off(phased, url_of(release), "echo started; sleep 30; echo never", "--timeout", "2")
    assert time.monotonic() - started < 15
    assert stopped.returncode == oneoff.EXIT_TIMED_OUT, stopped.stdout + stopped.stderr
    assert stopped.stdout.startswith("started\nslipway run: stopped after 2 s, its time limit; give a longer --timeout")
    units = phased["instance"].run(["systemctl", "list-units", "--all", "--no-legend", f"slipway-{APP}-run-*"])
    assert units.stdout.strip() == ""  # systemd stopped it: nothing outlives the SSM command
    bad = phased["instance"].run([DEPLOY, "--run", release], env=phased["env"], check=False)
    assert bad.returncode == 2 and "--run needs --command" in bad.stderr
