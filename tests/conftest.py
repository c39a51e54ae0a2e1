"""Shared fixtures: the example platform synthesized once per session, and helpers
to synthesize variants of it."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

from aws_cdk.assertions import Template
from configurations import every_option
from end_to_end import ENVS, PASSWORD, SLIPWAY, Run

from app import build_app, cdk_json_context
from local.hooks import REGISTRY_VARIABLE
from local.platform import launch, merged_template


def synth_templates(context: dict[str, Any], outdir: Path) -> dict[str, dict[str, Any]]:
    """Synthesize the app for ``context`` (nag included) and return each stack's template."""
    assembly = build_app(context=context, outdir=str(outdir)).synth()
    return {stack.stack_name: merged_template(stack.template, outdir) for stack in assembly.stacks}


@pytest.fixture
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials in us-east-1 and no endpoint: boto3 talks to moto's in-process mock."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


@pytest.fixture
def moto_s3(fake_aws: None, moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The session's moto server, reset, as boto3's endpoint."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")).close()
    return moto_server


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server on loopback for the whole session; tests reset what they use."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root."""
    return Path(__file__).resolve().parent.parent


@pytest.fixture
def synth(tmp_path: Path) -> Callable[[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Synthesize the app for a context into a fresh folder; each stack's template by name."""
    return lambda context: synth_templates(context, tmp_path / "synth")


@pytest.fixture(scope="session")
def example_context() -> dict[str, Any]:
    """The context of the repository's cdk.json (the example configuration)."""
    return cdk_json_context()


@pytest.fixture(scope="session")
def example_platform(example_context: dict[str, Any]) -> dict[str, Any]:
    platform: dict[str, Any] = example_context["platform"]
    return platform


@pytest.fixture(scope="session")
def assembly_dir(tmp_path_factory: pytest.TempPathFactory, example_context: dict[str, Any]) -> Path:
    outdir = tmp_path_factory.mktemp("cdk.out")
    build_app(context=example_context, outdir=str(outdir)).synth()
    return outdir


@pytest.fixture(scope="session")
def templates(assembly_dir: Path) -> dict[str, dict[str, Any]]:
    """Every stack of the example configuration, by stack name, its apps' nested stacks merged in
    (as the local platform deploys it; cfn-lint reads every file as CDK wrote it)."""
    return {
        path.name.removesuffix(".template.json"): merged_template(json.loads(path.read_text()), assembly_dir)
        for path in sorted(assembly_dir.glob("*.template.json"))
        if not path.name.endswith(".nested.template.json")
    }


@pytest.fixture(scope="session")
def staging(templates: dict[str, dict[str, Any]]) -> Template:
    return Template.from_json(templates["Platform-staging"])


@pytest.fixture(scope="session")
def production(templates: dict[str, dict[str, Any]]) -> Template:
    return Template.from_json(templates["Platform-production"])


@pytest.fixture(scope="session")
def every_option_dir(tmp_path_factory: pytest.TempPathFactory, example_context: dict[str, Any]) -> Path:
    context = copy.deepcopy(example_context)
    every_option(context["platform"])
    outdir = tmp_path_factory.mktemp("every-option")
    build_app(context=context, outdir=str(outdir)).synth()  # raises on any cdk-nag finding
    return outdir


@pytest.fixture
def synth_variant(
    example_context: dict[str, Any], tmp_path: Path
) -> Callable[[Callable[[dict[str, Any]], None]], dict[str, Template]]:
    """Synthesize the example platform after ``change(platform)`` edits a copy of it."""

    def synth(change: Callable[[dict[str, Any]], None]) -> dict[str, Template]:
        context = copy.deepcopy(example_context)
        change(context["platform"])
        return {name: Template.from_json(t) for name, t in synth_templates(context, tmp_path / "out").items()}

    return synth


@pytest.fixture
def deployed(templates: dict[str, dict[str, Any]], fake_aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The synthesized Platform-staging stack deployed into moto's in-process mock, as the local
    platform deploys it; this process configured as its functions are (tests/moto_fleet.py)."""
    from moto_fleet import platform

    with platform(templates["Platform-staging"], monkeypatch) as stack:
        yield stack


def resources_of_type(template: Template, resource_type: str) -> dict[str, Any]:
    found: dict[str, Any] = template.find_resources(resource_type)
    return found


# End to end: the local platform, a developer's checkout, the installed `slipway` command.


@pytest.fixture(scope="session")
def local_platforms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    """Local control planes for staging and production, as two separate services, shared by the
    end-to-end tests of the CLI and the console (started together: each synthesizes its stack).
    They find each other (a promotion reads the other's bucket) in a registry of this session's own."""
    os.environ[REGISTRY_VARIABLE] = str(tmp_path_factory.mktemp("environments"))
    with ThreadPoolExecutor() as pool:
        started = dict(zip(ENVS, pool.map(lambda env: launch(env, PASSWORD), ENVS), strict=True))
    yield {env: info for env, (_, info) in started.items()}
    for process, _ in started.values():
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A git repository of a small app, as a developer has it."""
    repo = tmp_path / "app"
    repo.mkdir()
    # billing's formation (cdk.json) runs workers: its Procfile must define them.
    (repo / "Procfile").write_text("web: python3 app.py\nworker: python3 app.py --work\n")
    (repo / "app.py").write_text("print('hello')\n")
    git = ["git", "-c", "user.name=Dev", "-c", "user.email=dev@example.com"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "first"], cwd=repo, check=True)
    return repo


@pytest.fixture
def slipway(local_platforms: dict[str, dict[str, Any]], checkout: Path, tmp_path: Path) -> Run:
    assert SLIPWAY.exists(), "the slipway command is not installed: `make test` installs it"

    def run(
        *args: str, user: str = "admin", password: str = PASSWORD, cwd: Path | None = None, **environ: str
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPWAY_")}
        env.update(
            HOME=str(tmp_path),
            SLIPWAY_URL_STAGING=local_platforms["staging"]["url"],
            SLIPWAY_URL_PRODUCTION=local_platforms["production"]["url"],
            SLIPWAY_USER=user,
            SLIPWAY_PASSWORD=password,
        )
        env.update(environ)
        return subprocess.run(
            [str(SLIPWAY), *args],
            cwd=cwd or checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run
