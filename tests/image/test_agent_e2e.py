"""The deploy agent on real systemd: provisioned by image/provision.sh, releases from moto S3,
slugs made by the real build program (procfile apps, built on this machine).

Each test states its own precondition (a good release is running) instead of relying on
test order, so the module can run alone, in any order, or in part. The instance is the
session's (conftest.py), shared with the build tests.
"""

from __future__ import annotations

import json
import time

import pytest
from instance_harness import APP, LOG_GROUP, Poller, get, provision_env, slug_build, tarball

from local.instance import missing_prerequisites, provision

pytestmark = pytest.mark.e2e
if missing_prerequisites():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=f"instance e2e {missing_prerequisites()}")]

DEPLOY = "/home/deploy/bin/deploy"
APP_PY = """\
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RELEASE = open("RELEASE").read().strip()
KEYS = ["SIMPLE", "QUOTED", "MULTI", "UNICODE", "TAB", "PORT", "DYNO"]
# BREAK_ON_DYNO/BREAK_WITH make a release that passes its preflight (DYNO=web.preflight) and
# breaks as the real process (DYNO=web.1): it exits, or answers every request with HTTP 500.
BROKEN = os.environ.get("BREAK_ON_DYNO") == os.environ["DYNO"] and os.environ.get("BREAK_WITH")
if BROKEN == "exit":
    print(f"{RELEASE} exiting on port {os.environ['PORT']}", flush=True)
    sys.exit(4)

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/env":
            body = json.dumps({"env": {k: os.environ.get(k) for k in KEYS}, "argv": sys.argv[1:],
                               "cwd": os.getcwd(), "uid": os.getuid(), "pid": os.getpid()})
        else:
            body = RELEASE + "\\n"
        data = body.encode()
        self.send_response(500 if BROKEN == "500" else 200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
print(f"{RELEASE} listening on {os.environ['PORT']}", flush=True)
server.serve_forever()
"""
PROCFILE = """web: python3 app.py --label '100% "sure"' $DYNO\n"""
ENV_FILE = (
    "# config for demo\n"
    "export SIMPLE=hello\n"
    "export QUOTED='it'\\''s $HOME `id` \"x\" \\ back'\n"
    'export MULTI="line one\nline two \\$ \\"q\\""\n'
    "export UNICODE='ünï €'\n"
    "export TAB='a\tb'\n"
)
ENV_VALUES = {
    "SIMPLE": "hello",
    "QUOTED": 'it\'s $HOME `id` "x" \\ back',
    "MULTI": 'line one\nline two $ "q"',
    "UNICODE": "ünï €",
    "TAB": "a\tb",
}


def good_source(release_id: str, procfile: str = PROCFILE) -> bytes:
    return tarball({"app.py": APP_PY, "Procfile": procfile, "RELEASE": release_id})


@pytest.fixture(scope="module")
def world(instance_world):
    """The session's instance with demo's first good release published."""
    world = instance_world
    if "good" not in world:
        world["good"] = world["publisher"].publish("r1", good_source("r1"), ENV_FILE, port=world["port"])
    return world


def journal_lines(instance, identifier: str, text: str, timeout: float = 10) -> list[str]:
    """The journal's lines of ``identifier``, waiting until one holds ``text`` (journald is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = instance.run(["journalctl", "--no-pager", "-o", "cat", "-t", identifier]).stdout.splitlines()
        if any(text in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


def deploy(world, url: str) -> tuple[int, str, str, dict]:
    result = world["instance"].run([DEPLOY, url], env=world["env"], check=False)
    last = result.stdout.strip().splitlines()[-1]
    return result.returncode, result.stdout, result.stderr, json.loads(last)


def ensure_good_release_running(world) -> str:
    """Deploy r1 unless some good release already answers; return the body it serves."""
    answer = get(world["port"])
    if answer is None:
        code, out, err, _ = deploy(world, world["good"])
        assert code == 0, out + err
        answer = get(world["port"])
    assert answer is not None and answer[0] == 200
    return answer[1]


def test_provision_is_idempotent_and_configures_logs_and_metrics(world):
    instance = world["instance"]
    again = provision(instance, provision_env(world["sink"]))
    assert "rsyslog:" not in again.stdout, "a second run with the same settings must not restart rsyslog"
    assert "provision: runtimes: python 3.11 (3.11." in again.stdout and ", node 18 (18." in again.stdout
    runtimes = json.loads(instance.path("/etc/slipway/runtimes.json").read_text())
    assert (
        set(runtimes) == {"python", "node"}
        and list(runtimes["python"]) == ["3.11"]
        and list(runtimes["node"]) == ["18"]
    )
    python = runtimes["python"]["3.11"]
    assert instance.run([f"{python['bin']}/python", "--version"]).stdout.strip() == f"Python {python['version']}"
    assert instance.run([f"{python['bin']}/pip", "--version"]).stdout.startswith("pip ")
    node = runtimes["node"]["18"]
    assert instance.run([f"{node['bin']}/node", "--version"]).stdout.strip() == f"v{node['version']}"
    assert instance.run(["env", f"PATH={node['bin']}:/usr/bin:/bin", "npm", "--version"]).stdout.strip()
    forward = instance.path("/etc/rsyslog.d/60-slipway-forward.conf").read_text()
    assert f'target="127.0.0.1" port="{world["sink"].port}" protocol="tcp"' in forward
    assert 'startswith "demo-"' in forward
    config = json.loads(instance.path("/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.json").read_text())
    assert config["agent"]["omit_hostname"] is False
    assert set(config["metrics"]["metrics_collected"]) == {"cpu", "mem", "disk", "net", "statsd"}
    # The app's log file goes to the environment's log group, one stream per app and instance.
    assert config["logs"]["logs_collected"]["files"]["collect_list"] == [
        {
            "file_path": "/var/log/slipway/demo.log",
            "log_group_name": LOG_GROUP,
            "log_stream_name": "demo/{instance_id}",
            "timezone": "UTC",
        }
    ]
    assert instance.run(["stat", "-L", "-c", "%U %a", "/home/deploy", "/home/deploy/bin/deploy"]).stdout.split("\n")[
        :2
    ] == [
        "root 755",
        "root 755",
    ]


def test_good_release_serves_with_exact_env_and_command(world):
    ensure_good_release_running(world)
    instance = world["instance"]
    body = json.loads(get(world["port"], "/env")[1])
    # Through the front on the app's port; the process listens on its slot's (docs/switch.md).
    serving = json.loads(instance.path("/home/deploy/apps/demo/SERVING").read_text())
    assert serving["port"] != world["port"]
    assert body["env"] == {**ENV_VALUES, "PORT": str(serving["port"]), "DYNO": "web.1"}
    assert body["argv"] == ["--label", '100% "sure"', "web.1"]
    assert body["cwd"].startswith("/home/deploy/apps/demo/releases/") and body["cwd"].endswith("/app")
    assert body["uid"] != 0
    deployed = instance.path("/home/deploy/apps/demo/DEPLOYED").read_text().strip()
    assert deployed in world["publisher"].published
    unit = f"/etc/systemd/system/slipway-demo-web.1.{serving['slot']}.service"
    verify = instance.run(["systemd-analyze", "verify", unit], check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert instance.run(["stat", "-c", "%a", f"/home/deploy/apps/demo/releases/{deployed}/env"]).stdout.strip() == "600"


def test_deploying_current_again_changes_nothing(world):
    ensure_good_release_running(world)
    deployed = world["instance"].path("/home/deploy/apps/demo/DEPLOYED").read_text().strip()
    url = world["publisher"].set_current(deployed)
    code, out, err, result = deploy(world, url)
    assert code == 0, out + err
    assert (result["result"], result["release"]) == ("unchanged", deployed)


def test_app_logs_are_json_lines_in_the_file_the_cloudwatch_agent_ships(world):
    ensure_good_release_running(world)
    path = world["instance"].path("/var/log/slipway/demo.log")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (path.exists() and "listening on" in path.read_text()):
        time.sleep(0.2)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    [listening, *_] = [line for line in lines if "listening on" in line["message"]]
    assert set(listening) == {"time", "process", "message"} and listening["process"] == "demo-web"
    assert {line["process"].split("-", 1)[0] for line in lines} == {"demo"}  # only this app's processes


def test_app_logs_reach_the_syslog_destination(world):
    ensure_good_release_running(world)
    line = world["sink"].wait_for("listening on", timeout=20)
    assert line is not None, f"no app log line forwarded; got {world['sink'].lines[-5:]}"
    assert "demo-web" in line


def test_crashing_release_is_rejected_without_a_single_failed_request(world):
    before = ensure_good_release_running(world)
    crash = "web: python3 -c 'import sys; print(\"r2 crashing\", flush=True); sys.exit(3)'\n"
    url = world["publisher"].publish("r2", good_source("r2", procfile=crash), ENV_FILE, port=world["port"])
    with Poller(world["port"]) as poller:
        code, out, err, result = deploy(world, url)
    assert code == 1, out + err
    assert "r2 not deployed: r2 failed its preflight: its web process exited (status 3)" in err
    assert err.count("\n") == 1, "one clear line"
    assert result["result"] == "failed" and result["release"] == "r2"
    assert poller.failures == [], f"{len(poller.failures)} failed requests during a rejected deploy"
    assert poller.ok > 10 and poller.bodies == {before.strip()}


def test_release_without_procfile_is_rejected_clearly(world):
    before = ensure_good_release_running(world)
    # The build program refuses such a source, and the publisher too; a hand-made slug can still lack one.
    slug_of_r1 = world["publisher"].client.get_object(
        Bucket=world["publisher"].bucket, Key=f"{APP}/test/r1/slug.tar.gz"
    )
    build = slug_build(slug_of_r1["Body"].read())
    slug = tarball({"app.py": APP_PY, "RELEASE": "r3", ".slipway/build.json": json.dumps(build)})
    url = world["publisher"].publish("r3", slug, ENV_FILE, port=world["port"], slug=slug)
    code, _out, err, _result = deploy(world, url)
    assert code == 1
    assert "r3 not deployed: r3's slug has no Procfile at its root; add one" in err
    assert get(world["port"])[1] == before


def test_escaping_tarball_writes_nothing_outside_its_release(world):
    import tarfile

    before = ensure_good_release_running(world)
    instance = world["instance"]
    link = tarfile.TarInfo("config")
    link.type, link.linkname = tarfile.SYMTYPE, "../../../../../../tmp"
    climb = tarfile.TarInfo("../../../escaped.txt")
    # A slug the build program would never make: the agent's unpacker is the last line of defence.
    slug = tarball({"app.py": APP_PY, "Procfile": PROCFILE, "RELEASE": "r4"}, extra=[link, climb])
    build = slug_build(
        world["publisher"]
        .client.get_object(Bucket=world["publisher"].bucket, Key=f"{APP}/test/r1/slug.tar.gz")["Body"]
        .read()
    )
    url = world["publisher"].publish("r4", slug, ENV_FILE, port=world["port"], slug=slug, build=build)
    listing = ["find", "/home/deploy", "/tmp", "/etc/systemd/system", "-xdev"]
    files_before = set(instance.run(listing).stdout.split())
    code, _out, err, _ = deploy(world, url)
    assert code == 1
    assert "refusing slug.tar.gz: entry '../../../escaped.txt' climbs out with '..'" in err
    new = {path for path in set(instance.run(listing).stdout.split()) - files_before if "/releases/r4" not in path}
    assert new == set()
    assert get(world["port"])[1] == before


def test_good_release_switches_and_runs_its_release_phase(world):
    ensure_good_release_running(world)
    procfile = PROCFILE + "release: echo release phase ran as $(id -un) in $DYNO\n"
    url = world["publisher"].publish("r5", good_source("r5", procfile=procfile), ENV_FILE, port=world["port"])
    with Poller(world["port"]) as poller:
        code, out, err, result = deploy(world, url)
    assert code == 0, out + err
    assert "release phase ran as deploy in release.1" in out
    journal = journal_lines(world["instance"], f"{APP}-release", "release phase ran as deploy")
    assert any("release phase ran as deploy in release.1" in line for line in journal), journal
    forwarded = world["sink"].wait_for("release phase ran as deploy", timeout=20)
    assert forwarded is not None and f"{APP}-release" in forwarded
    assert result["result"] == "deployed" and result["release"] == "r5"
    assert get(world["port"])[1] == "r5\n"
    assert world["instance"].path("/home/deploy/apps/demo/DEPLOYED").read_text() == "r5\n"
    # A good release moves the fixed port by a restart: clients see refused connections for
    # the old process's stop plus the new one's boot (reported, and bounded here).
    print(f"switch: {len(poller.failures)} failed requests over {poller.outage:.3f}s; durations {result['durations']}")
    assert poller.outage < 3.0


def test_second_concurrent_deploy_waits_for_the_first(world):
    ensure_good_release_running(world)
    publisher, port = world["publisher"], world["port"]
    slow = PROCFILE + "release: sleep 3\n"
    first_url = publisher.publish("r6", good_source("r6", procfile=slow), ENV_FILE, port=port)
    second_url = publisher.publish("r7", good_source("r7"), ENV_FILE, port=port)
    instance = world["instance"]
    first = instance.popen([DEPLOY, first_url], world["env"])
    time.sleep(1.0)
    second = instance.popen([DEPLOY, second_url], world["env"])
    first_out, first_err = first.communicate(timeout=120)
    second_out, second_err = second.communicate(timeout=120)
    assert first.returncode == 0, first_out + first_err
    assert second.returncode == 0, second_out + second_err
    assert "Waiting for the deploy running as pid" in second_out
    assert json.loads(second_out.strip().splitlines()[-1])["durations"]["lock_wait"] > 1.0
    assert get(port)[1] == "r7\n"
    assert instance.path("/home/deploy/apps/demo/DEPLOYED").read_text() == "r7\n"


@pytest.mark.parametrize(
    ("release_id", "break_with", "reason"),
    [("r8", "exit", "exited (status 4"), ("r9", "500", "(it answered HTTP 500; healthy is 200)")],
    ids=["exits-once-started", "answers-500-once-started"],
)
def test_release_unhealthy_once_started_is_rolled_back_and_never_served(world, release_id, break_with, reason):
    before = ensure_good_release_running(world)
    instance, port, timeout = world["instance"], world["port"], 3
    previous = instance.path("/home/deploy/apps/demo/DEPLOYED").read_text().strip()
    env_text = ENV_FILE + f"export BREAK_ON_DYNO=web.1\nexport BREAK_WITH={break_with}\n"
    url = world["publisher"].publish(release_id, good_source(release_id), env_text, port=port, timeout=timeout)
    with Poller(port) as poller:
        code, out, err, result = deploy(world, url)
    assert code == 1, out + err
    assert f"Starting {release_id} in slot" in out, "the preflight must pass: this is about failing once started"
    assert "Switching the front" not in out  # it failed in its own slot: the front never sent it a request
    assert err.startswith(f"deploy: FAILED: {release_id} not deployed: {release_id} started but is not healthy: ")
    assert reason in err and err.endswith(f"; rolled back to {previous}\n"), err
    assert err.count("\n") == 1, "one clear line"
    assert (result["result"], result["release"], result["previous"]) == ("failed", release_id, previous)
    assert result["exit_code"] == 1 and err == f"deploy: FAILED: {result['error']}\n"
    assert instance.run(["readlink", "/home/deploy/apps/demo/current"]).stdout.strip() == f"releases/{previous}"
    assert instance.path("/home/deploy/apps/demo/DEPLOYED").read_text() == f"{previous}\n"
    assert get(port) == (200, before)
    assert json.loads(get(port, "/env")[1])["cwd"] == f"/home/deploy/apps/demo/releases/{previous}/app"
    # The old release served throughout, beside the broken one in the other slot: not one request failed,
    # none was answered by the broken release.
    print(
        f"rollback ({break_with}): {poller.ok} requests, {len(poller.failures)} failed; durations {result['durations']}"
    )
    assert poller.failures == [] and poller.ok > 10
    assert poller.bodies == {before.strip()}
