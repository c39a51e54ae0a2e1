"""One environment of the platform on this machine: its synthesized stack deployed into moto,
its functions run in-process, its API behind the local front, and its fleets real.

:class:`LocalPlatform` synthesizes ``Platform-<env>`` from ``cdk.json`` (or a given
context) exactly as ``cdk synth`` does, starts a moto server on loopback, bootstraps it,
deploys the template (:mod:`local.aws`), gives this process the environment the stack
gave its functions, and serves the stage's API (:mod:`local.gateway`) on ``127.0.0.1``.

With real instances (the default; needs root), the platform also takes a bridge
(:mod:`local.network`), serves moto on the bridge's host address too (where instances
reach S3), boots every instance of every fleet's Auto Scaling group as a container, puts
an HAProxy in front of each fleet and keeps all of it in step with moto
(:mod:`local.fleets`), with moto's SSM, ELB and Auto Scaling hooked to them
(:mod:`local.hooks`). ``simulated=True`` keeps moto's instances instead: commands report
success at once and every target is healthy (the CLI tests, the publish benchmark).
Either way instance refreshes (``slipway cycle`` of a whole fleet) are carried out
locally (:mod:`local.refresh`).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from local import aws, hooks
from local.builds import LocalBuilds, codebuild_runs_builds
from local.gateway import Gateway
from local.template import REGION

ROOT = Path(__file__).resolve().parents[1]
# The local pacing of rollouts: moto answers at once, so checks need not wait 5 s apart.
LOCAL_TIMING = {"poll_seconds": 1}
# An instance refresh waits at most this long for a replacement's warmup (the request asks 60 s:
# a local instance has no metrics to settle).
REFRESH_WARMUP_CAP = 5
# Time for the instances of a new stack to boot, provision and deploy `current`.
BOOT_WAIT = 300
CREDENTIALS_VARIABLE = "CREDENTIALS_SECRET_ARN"
HOST_TOOLS = {
    "systemd-nspawn": "systemd-container",
    "nsenter": "util-linux",
    "ip": "iproute2",
    "haproxy": "haproxy",
    "mmdebstrap": "mmdebstrap",
}

log = logging.getLogger("local")


class PlatformError(RuntimeError):
    """The local platform cannot start; the message says what to do."""


def synthesize(env: str, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``Platform-<env>`` template as ``cdk synth`` writes it from ``cdk.json`` (or ``context``;
    for ``demo``, the demo's when cdk.json has none: :func:`local.demo.context_for`);
    ``KeyError`` for an environment the configuration does not define."""
    from app import build_app
    from constructs.config import PlatformConfig
    from local.demo import context_for

    context = dict(context or context_for(env))
    environment = PlatformConfig.from_context(context["platform"]).environment(env)
    with tempfile.TemporaryDirectory(prefix="slipway-synth-") as outdir:
        assembly = build_app(context=context, outdir=outdir).synth()
        return merged_template(assembly.get_stack_by_name(environment.stack_name).template, Path(outdir))


def merged_template(template: Mapping[str, Any], outdir: Path) -> dict[str, Any]:
    """``template`` with its nested stacks (their files in the assembly ``outdir``) merged in, as the
    local platform deploys it into moto (:func:`local.template.flatten`)."""
    from local.template import flatten

    return flatten(template, lambda path: json.loads((outdir / path).read_text()))


def synthesize_apart(env: str, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:func:`synthesize` in a child process, so that jsii's Node.js process (about 600 MiB) does not
    live on with the platform, and Ctrl-C during or after it never reaches a Node.js that is gone."""
    program = (
        "import json, sys; from local.platform import synthesize; "
        "request = json.load(sys.stdin); json.dump(synthesize(request['env'], request['context']), sys.stdout)"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        input=json.dumps({"env": env, "context": context}),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": f"{ROOT}:{ROOT / 'lambdas'}",
            "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        },
        start_new_session=True,  # Ctrl-C is the platform's to handle
        check=False,
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        if "KeyError" in last:
            raise KeyError(env)
        raise PlatformError(f"synthesizing Platform-{env} failed: {last}")
    template: dict[str, Any] = json.loads(result.stdout)
    return template


def missing_prerequisites() -> str | None:
    """Why real instances cannot run here, or ``None``."""
    if os.geteuid() != 0:
        return "real instances need root (network namespaces, systemd-nspawn); run as root, or with --simulated"
    absent = sorted({package for tool, package in HOST_TOOLS.items() if shutil.which(tool) is None})
    if absent:
        return f"real instances need host packages: apt-get install {' '.join(absent)} (make instance-packages)"
    return None


class LocalPlatform:
    """``Platform-<env>`` on moto, its API on ``url``. Use as a context manager, or start and stop."""

    def __init__(
        self,
        env: str,
        *,
        users: Mapping[str, str] | None = None,
        port: int = 0,
        context: Mapping[str, Any] | None = None,
        simulated: bool = False,
    ) -> None:
        self.env, self.port, self.context, self.simulated = env, port, context, simulated
        self.users = dict(users or {})
        self.url = ""
        self.app_urls: dict[str, str] = {}
        self.fleets: Any = None
        self.bridge: Any = None
        self._cleanup = ExitStack()

    def start(self) -> LocalPlatform:
        """Start everything; on any failure, stop what was started and raise."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from moto.core.config import default_user_config
        from moto.server import ThreadedMotoServer

        from local.refresh import InstanceRefreshes

        if not self.simulated:
            problem = missing_prerequisites()
            if problem:
                raise PlatformError(problem)
        template = synthesize_apart(self.env, self.context)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request lines drown everything
        # moto's Step Functions interpreter logs a rollout's designed end in its Fail state as an error;
        # the outcome is the execution's, which the API shows.
        logging.getLogger("moto.stepfunctions.parser").setLevel(logging.CRITICAL)
        if not self.simulated:
            from local.instance import rootfs
            from local.network import Bridge

            rootfs()  # built once (about a minute) before anything boots from it
            self.bridge = Bridge.create()
            self._cleanup.callback(self.bridge.close)
            self.workdir = Path(tempfile.mkdtemp(prefix="slipway-local-"))
            self._cleanup.callback(shutil.rmtree, self.workdir, True)
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        self._cleanup.callback(moto.stop)
        host, port = moto.get_host_and_port()
        self.aws_endpoint = f"http://{host}:{port}"
        if self.bridge is not None:
            # Instances reach only the bridge: moto serves there too, never on another address.
            on_bridge = ThreadedMotoServer(ip_address=self.bridge.plan.host_address, port=port, verbose=False)
            on_bridge.start()
            self._cleanup.callback(on_bridge.stop)
        default_user_config.update(aws.MOTO_CONFIG)
        os.environ.update(
            AWS_ACCESS_KEY_ID="local",
            AWS_SECRET_ACCESS_KEY="local",
            AWS_DEFAULT_REGION=REGION,
            AWS_ENDPOINT_URL=self.aws_endpoint,
            # moto's Step Functions interpreter calls Lambda at localhost:$MOTO_PORT from inside the server.
            MOTO_PORT=str(port),
            POWERTOOLS_LOG_LEVEL="WARNING",
        )
        clients = aws.default_clients()
        refreshes = InstanceRefreshes(clients=aws.default_clients(), warmup_cap=REFRESH_WARMUP_CAP)
        self._cleanup.callback(refreshes.stop)
        registry = hooks.EnvironmentRegistry()
        for hook in (
            hooks.invoke_in_process(),
            hooks.list_command_invocations(),
            hooks.commands_reach_only_their_instances(),
            hooks.instance_refreshes(refreshes),
            hooks.other_environments(registry),
            hooks.write_once_releases(),
        ):
            self._cleanup.enter_context(hook)
        # Where this environment's AWS is, for another local environment promoting one of its releases.
        registry.add(self.env, self.aws_endpoint)
        self._cleanup.callback(registry.remove, self.env)
        aws.bootstrap(clients)
        self.stack = aws.deploy_stack(clients, f"Platform-{self.env}", template)
        self.environment = aws.function_environment(clients, self.stack)
        # What the API is configured with (its environment and the apps' parameters), read once.
        self.settings = aws.Deployed(clients, self.stack, self.environment).settings
        os.environ.update(self.environment)
        os.environ["ROLLOUT_TIMING"] = json.dumps(LOCAL_TIMING)
        self._set_users(clients)
        # The builder: CodeBuild's builds run here (local.builds), under a directory of this platform's.
        builds_dir = Path(tempfile.mkdtemp(prefix=f"slipway-builds-{self.env}-"))
        self._cleanup.callback(shutil.rmtree, builds_dir, True)
        builds = LocalBuilds(clients, builds_dir)
        self._cleanup.callback(builds.close)
        self._cleanup.enter_context(codebuild_runs_builds(builds))
        if self.bridge is not None:
            self._start_fleets(clients, f"http://{self.bridge.plan.host_address}:{port}")
        handlers = {
            logical: clients.lambda_.get_function_configuration(FunctionName=physical)
            for logical, physical in self.stack.of_type("AWS::Lambda::Function").items()
        }

        def invoke(logical: str, event: dict[str, Any]) -> Any:
            configuration = handlers[logical]
            return aws.run_handler(configuration["Handler"], event, configuration["FunctionName"])

        from local.front import serve

        self.gateway = Gateway.from_template(template)
        front = serve(self.gateway, invoke, port=self.port)
        self._cleanup.callback(front.server_close)
        threading.Thread(target=front.serve_forever, name="local-front", daemon=True).start()
        self._cleanup.callback(front.shutdown)
        self.url = f"http://127.0.0.1:{front.server_address[1]}/{self.gateway.stage}"

    def _start_fleets(self, clients: aws.Clients, endpoint: str) -> None:
        from local.boot import instance_environment
        from local.fleets import Fleets

        fleets = Fleets(
            bridge=self.bridge,
            specs=[self._fleet_spec(clients, app) for app in self.apps],
            workdir=self.workdir,
            environment=instance_environment(endpoint, REGION),
            user_data=lambda instance: _user_data(clients, instance),
            logs=clients.logs,
        )
        self._cleanup.callback(fleets.stop)
        fleets.start()
        self.fleets = fleets
        for hook in (
            hooks.commands_run_on_instances(fleets),
            hooks.target_health_from_load_balancer(fleets),
            hooks.group_attachments_as_on_aws(),
        ):
            self._cleanup.enter_context(hook)
        self.app_urls = fleets.urls()
        failed = fleets.wait_ready(BOOT_WAIT)
        if failed:
            log.warning("instances whose boot failed (their targets stay unhealthy): %s", ", ".join(failed))

    def _fleet_spec(self, clients: aws.Clients, app: str) -> Any:
        from local.fleets import FleetSpec
        from local.haproxy import Balancer, HealthCheck
        from local.instance import free_port

        fleet = self.settings.fleets[app]
        [group] = clients.elbv2.describe_target_groups(TargetGroupArns=[fleet.target_group])["TargetGroups"]
        attributes = {
            a["Key"]: a["Value"]
            for a in clients.elbv2.describe_target_group_attributes(TargetGroupArn=fleet.target_group)["Attributes"]
        }
        balancer = Balancer(
            name=app,
            listen_host="127.0.0.1",
            listen_port=free_port(),
            socket=self.workdir / f"{app}.sock",
            check=HealthCheck.from_target_group(group),
            deregistration_delay_seconds=int(attributes.get("deregistration_delay.timeout_seconds", 300)),
            algorithm=attributes.get("load_balancing.algorithm.type", "round_robin"),
        )
        return FleetSpec(app, fleet.group, fleet.target_group, int(group["Port"]), balancer)

    def _set_users(self, clients: aws.Clients) -> None:
        """The API's users: those given replace the generated admin, as an operator would with put-secret-value."""
        secret = self.environment[CREDENTIALS_VARIABLE]
        if self.users:
            clients.secretsmanager.put_secret_value(SecretId=secret, SecretString=json.dumps(self.users))
        else:
            self.users = json.loads(clients.secretsmanager.get_secret_value(SecretId=secret)["SecretString"])

    @property
    def apps(self) -> list[str]:
        return sorted(self.settings.apps)

    def info(self) -> dict[str, Any]:
        """What a client needs: the API URL, a user and password, the local AWS endpoint and release
        bucket, the apps and, with real instances, each app's URL (its load balancer: the local value
        of the stack's ``App<app>Url`` output) and the bridge the instances are on."""
        user, password = next(iter(self.users.items()))
        shown: dict[str, Any] = {
            "url": self.url,
            "env": self.env,
            "user": user,
            "password": password,
            "aws_endpoint": self.aws_endpoint,
            "bucket": self.environment["RELEASE_BUCKET"],
            "apps": self.apps,
            "instances": "simulated" if self.simulated else "real",
        }
        if self.bridge is not None:
            shown["app_urls"] = self.app_urls
            shown["bridge"] = self.bridge.plan.name
            shown["workdir"] = str(self.workdir)
        return shown

    def stop(self) -> None:
        """Stop everything started, in reverse order; every step runs even if one before failed."""
        self._cleanup.close()

    def __enter__(self) -> LocalPlatform:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _user_data(clients: aws.Clients, instance_id: str) -> str:
    """The user data an instance was launched with (its launch template's, as moto resolved it)."""
    answer = clients.ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    return base64.b64decode(answer["UserData"]["Value"]).decode()


def launch(
    env: str,
    password: str,
    *,
    real_instances: bool = False,
    extra: list[str] | None = None,
    log_file: Path | None = None,
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start ``python -m local`` for ``env`` in a child process; return it and what it printed
    (:meth:`LocalPlatform.info`). The caller terminates it (SIGTERM stops everything it started).

    For tests and benchmarks of the control plane the fleets are moto's (``--simulated``);
    ``real_instances`` boots them for real (needs root). The platform's stderr goes to ``log_file``.
    """
    argv = [sys.executable, "-m", "local", "--env", env, "--password", password, *(extra or [])]
    if not real_instances:
        argv.append("--simulated")
    with open(log_file or os.devnull, "w") as stderr:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={
                **os.environ,
                "PYTHONPATH": f"{ROOT}:{ROOT / 'lambdas'}",
                "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
            },
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(timeout=30)
        said = f": {log_file.read_text()[-3000:]}" if log_file is not None else ""
        raise RuntimeError(f"the local platform for {env} did not start (exit {process.returncode}){said}")
    info: dict[str, Any] = json.loads(line)
    # The functions log to stdout, as on Lambda: keep reading it, or a full pipe stalls every
    # request at its first log line.
    threading.Thread(target=_drain, args=(process.stdout,), daemon=True).start()
    return process, info


def _drain(stream: Any) -> None:
    for _ in stream:
        pass
