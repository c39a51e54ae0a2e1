"""The demo environment: a local-only ``demo`` environment derived from ``cdk.json``, and ``make demo``.

``demo`` is staging's environment settings with one app, ``web``, at its own defaults
from ``cdk.json`` (min 2, max 6: staging's overrides are staging's) and three instances
(``desired_capacity: 3``), so that a rollout has batches, a cycle has a fleet to keep
serving and scaling has room; bakes last 5 s instead of 30 so a deploy takes about a
minute. ``cdk.json`` is not changed: ``cdk synth`` never sees this environment.

``python -m local.demo`` (``make demo``) starts the platform for it with real instances,
publishes the bundled sample app (``local/sample/``) through the ``slipway`` CLI from a
git checkout of it, deploys it across the three instances, prints the app's URL, the API
URL and the credentials, and serves until Ctrl-C or SIGTERM, then stops everything.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEMO_ENV = "demo"
DEMO_APP = "web"
DEMO_INSTANCES = 3
SAMPLE = Path(__file__).resolve().parent / "sample"


def demo_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """``context`` (cdk.json's) with the ``demo`` environment and only its app (pure)."""
    derived = copy.deepcopy(dict(context))
    platform = derived["platform"]
    if DEMO_ENV in platform["environments"]:
        raise ValueError(f"cdk.json defines an environment {DEMO_ENV!r}: serve it with --env {DEMO_ENV} as it is")
    platform["environments"] = {DEMO_ENV: platform["environments"]["staging"]}
    app = platform["apps"][DEMO_APP]
    app["environments"] = {DEMO_ENV: {"desired_capacity": DEMO_INSTANCES, "rollout": {"bake_seconds": 5}}}
    platform["apps"] = {DEMO_APP: app}
    return derived


def context_for(env: str) -> dict[str, Any]:
    """The context to synthesize ``env`` with: cdk.json's, or the demo's for ``demo`` when cdk.json has none."""
    from app import cdk_json_context

    context = cdk_json_context()
    if env == DEMO_ENV and DEMO_ENV not in context["platform"]["environments"]:
        return demo_context(context)
    return context


def sample_checkout(directory: Path) -> Path:
    """A git repository holding the sample app, as a developer's checkout would."""
    checkout = directory / "sample"
    shutil.copytree(SAMPLE, checkout, ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-c", "user.name=Slipway demo", "-c", "user.email=demo@slipway.invalid"]
    for argv in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "sample app"]):
        subprocess.run([*git, *argv], cwd=checkout, check=True, capture_output=True)
    return checkout


def slipway(info: Mapping[str, Any], *args: str, cwd: Path) -> None:
    """Run the slipway CLI against the platform, its output shown; exit on failure."""
    command = shutil.which("slipway") or str(Path(sys.executable).parent / "slipway")
    env = {
        **os.environ,
        f"SLIPWAY_URL_{DEMO_ENV.upper()}": info["url"],
        "SLIPWAY_USER": info["user"],
        "SLIPWAY_PASSWORD": info["password"],
    }
    print(f"$ slipway {' '.join(args)}", flush=True)
    if subprocess.run([command, *args], cwd=cwd, env=env, check=False).returncode != 0:
        raise SystemExit(f"demo: `slipway {' '.join(args)}` failed (above)")


def main(argv: list[str] | None = None) -> int:
    from local.__main__ import Stopped, serve_until_stopped, show_platform_log, stop_on_signals
    from local.platform import LocalPlatform, PlatformError

    parser = argparse.ArgumentParser(prog="python -m local.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--password", default=None, help="the API's password for admin (default: generated)")
    args = parser.parse_args(argv)
    show_platform_log()
    stop_on_signals()
    password = args.password or secrets.token_urlsafe(18)
    # No context here: the stack is synthesized in a child process (local.platform.synthesize_apart),
    # so this process never starts jsii's Node.js.
    platform = LocalPlatform(DEMO_ENV, users={"admin": password})
    print(f"demo: starting {DEMO_ENV} with {DEMO_INSTANCES} real instances of {DEMO_APP} ...", flush=True)
    try:
        platform.start()
        info = platform.info()
        with tempfile.TemporaryDirectory(prefix="slipway-demo-") as directory:
            checkout = sample_checkout(Path(directory))
            slipway(info, "release", DEMO_APP, DEMO_ENV, "-m", "the sample app", cwd=checkout)
            slipway(info, "deploy", DEMO_APP, DEMO_ENV, cwd=checkout)
    except PlatformError as error:
        platform.stop()
        print(f"demo: {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Stopped):
        print("demo: stopping", file=sys.stderr, flush=True)
        platform.stop()
        return 130
    except BaseException:
        platform.stop()
        raise
    url = info["app_urls"][DEMO_APP]
    print(
        "\n".join(
            [
                "",
                f"The sample app serves at {url} (HAProxy in front of {DEMO_INSTANCES} instances).",
                f"The API: {info['url']}  user {info['user']}  password {info['password']}",
                "Try, in another terminal:",
                f"  export SLIPWAY_URL_{DEMO_ENV.upper()}={info['url']} SLIPWAY_USER={info['user']} "
                f"SLIPWAY_PASSWORD={info['password']}",
                f"  curl {url}/ ; slipway status {DEMO_APP} {DEMO_ENV}",
                f"  slipway config {DEMO_APP} {DEMO_ENV} set GREETING=hi && slipway deploy {DEMO_APP} {DEMO_ENV}",
                f"  slipway cycle {DEMO_APP} {DEMO_ENV}",
                "Ctrl-C stops every instance and process the demo started.",
                json.dumps(info),
            ]
        ),
        flush=True,
    )
    return serve_until_stopped(platform)


if __name__ == "__main__":
    sys.exit(main())
