"""One environment of the platform on this machine: its synthesized stack deployed into moto,
its functions run in-process, its API behind the local front.

:class:`LocalPlatform` synthesizes ``Platform-<env>`` from ``cdk.json`` exactly as ``cdk synth``
does, starts a moto server on loopback, bootstraps it, deploys the template
(:mod:`local.aws`), gives this process the environment the stack gave its functions, and
serves the stage's API (:mod:`local.gateway`) on ``127.0.0.1``. Fleets are the Auto Scaling
groups the stack created, with moto's instances.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from local import aws
from local.builds import LocalBuilds, codebuild_runs_builds
from local.gateway import Gateway
from local.template import REGION

ROOT = Path(__file__).resolve().parents[1]
# The local pacing of rollouts: moto answers at once, so checks need not wait 5 s apart.
LOCAL_TIMING = {"poll_seconds": 1}
CREDENTIALS_VARIABLE = "CREDENTIALS_SECRET_ARN"


def synthesize(env: str, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``Platform-<env>`` template as ``cdk synth`` writes it from ``cdk.json`` (or ``context``);
    ``KeyError`` for an environment ``cdk.json`` does not define."""
    from app import build_app, cdk_json_context
    from constructs.config import PlatformConfig

    context = dict(context or cdk_json_context())
    environment = PlatformConfig.from_context(context["platform"]).environment(env)
    with tempfile.TemporaryDirectory(prefix="slipway-synth-") as outdir:
        assembly = build_app(context=context, outdir=outdir).synth()
        template: dict[str, Any] = assembly.get_stack_by_name(environment.stack_name).template
    return template


class LocalPlatform:
    """``Platform-<env>`` on moto, its API on ``url``. Use as a context manager, or start and stop."""

    def __init__(self, env: str, *, users: Mapping[str, str] | None = None, port: int = 0) -> None:
        self.env, self.port = env, port
        self.users = dict(users or {})
        self.url = ""

    def start(self) -> LocalPlatform:
        from moto.core.config import default_user_config
        from moto.server import ThreadedMotoServer

        template = synthesize(self.env)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request lines drown everything
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.aws_endpoint = f"http://{host}:{port}"
        default_user_config.update(aws.MOTO_CONFIG)
        self._in_process = aws.invoke_in_process()
        self._in_process.__enter__()
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
        aws.bootstrap(clients)
        self.stack = aws.deploy_stack(clients, f"Platform-{self.env}", template)
        self.environment = aws.function_environment(clients, self.stack)
        os.environ.update(self.environment)
        os.environ["ROLLOUT_TIMING"] = json.dumps(LOCAL_TIMING)
        self._set_users(clients)
        # The builder: CodeBuild's builds run here (local.builds), under a directory of this platform's.
        self._workdir = Path(tempfile.mkdtemp(prefix=f"slipway-local-{self.env}-"))
        self._builds = LocalBuilds(clients, self._workdir)
        self._building = codebuild_runs_builds(self._builds)
        self._building.__enter__()
        handlers = {
            logical: clients.lambda_.get_function_configuration(FunctionName=physical)
            for logical, physical in self.stack.of_type("AWS::Lambda::Function").items()
        }

        def invoke(logical: str, event: dict[str, Any]) -> Any:
            configuration = handlers[logical]
            return aws.run_handler(configuration["Handler"], event, configuration["FunctionName"])

        from local.front import serve

        self.gateway = Gateway.from_template(template)
        self._front = serve(self.gateway, invoke, port=self.port)
        self.url = f"http://127.0.0.1:{self._front.server_address[1]}/{self.gateway.stage}"
        self._serving = threading.Thread(target=self._front.serve_forever, name="local-front", daemon=True)
        self._serving.start()
        return self

    def _set_users(self, clients: aws.Clients) -> None:
        """The API's users: those given replace the generated admin, as an operator would with put-secret-value."""
        secret = self.environment[CREDENTIALS_VARIABLE]
        if self.users:
            clients.secretsmanager.put_secret_value(SecretId=secret, SecretString=json.dumps(self.users))
        else:
            self.users = json.loads(clients.secretsmanager.get_secret_value(SecretId=secret)["SecretString"])

    @property
    def apps(self) -> list[str]:
        return sorted(json.loads(self.environment["APPS_JSON"]))

    def info(self) -> dict[str, Any]:
        """What a client needs: the API URL, a user and password, the local AWS endpoint and release
        bucket, the apps."""
        user, password = next(iter(self.users.items()))
        return {
            "url": self.url,
            "env": self.env,
            "user": user,
            "password": password,
            "aws_endpoint": self.aws_endpoint,
            "bucket": self.environment["RELEASE_BUCKET"],
            "apps": self.apps,
        }

    def stop(self) -> None:
        self._front.shutdown()
        self._front.server_close()
        self._building.__exit__(None, None, None)
        self._builds.close()
        shutil.rmtree(self._workdir, ignore_errors=True)
        self._in_process.__exit__(None, None, None)
        self._moto.stop()

    def __enter__(self) -> LocalPlatform:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def launch(env: str, password: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start ``python -m local`` for ``env`` in a child process; return it and what it printed
    (:meth:`LocalPlatform.info`). The caller terminates it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "local", "--env", env, "--password", password],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": f"{ROOT}:{ROOT / 'lambdas'}",
            "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(timeout=10)
        raise RuntimeError(f"the local platform for {env} did not start (exit {process.returncode})")
    info: dict[str, Any] = json.loads(line)
    # The functions log to stdout, as on Lambda: keep reading it, or a full pipe stalls every
    # request at its first log line.
    threading.Thread(target=_drain, args=(process.stdout,), daemon=True).start()
    return process, info


def _drain(stream: Any) -> None:
    for _ in stream:
        pass
