#!/usr/bin/env python3
"""CDK entry point: one ``Platform-<env>`` stack per environment of the ``platform`` configuration
(and ``Platform-<env>-<region>`` for an environment with a secondary region).

The configuration is the ``platform`` context key. The ``cdk`` CLI passes ``cdk.json``'s
context itself; ``python app.py`` reads the same file, so both synthesize the same
templates. ``cdk synth -c platform='{...}'`` or ``CDK_CONTEXT_JSON`` override it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

ROOT = Path(__file__).resolve().parent
# The constructs speak the vocabulary the Lambda code defines (release formats and bucket
# layout in slipway_release, the rollout's states and strategy in slipway): import it from
# the Lambda asset's root, as Lambda does.
if str(ROOT / "lambdas") not in sys.path:
    sys.path.insert(0, str(ROOT / "lambdas"))

from constructs.api_contract import ApiContract  # noqa: E402
from constructs.config import ConfigError, PlatformConfig  # noqa: E402
from constructs.platform import PlatformStack  # noqa: E402

CDK_JSON = ROOT / "cdk.json"
# The control plane's API contract: the REST API gets exactly its routes.
OPENAPI = ROOT / "lambdas" / "slipway" / "openapi.json"
# Context the cdk CLI passes to every synthesis; `python app.py` passes the same so
# both write identical templates.
CLI_CONTEXT = {"aws:cdk:enable-path-metadata": True, "aws:cdk:enable-asset-metadata": True}


def cdk_json_context() -> dict[str, Any]:
    """The context the cdk CLI would pass: ``cdk.json``'s, plus the CLI's own defaults."""
    context: dict[str, Any] = json.loads(CDK_JSON.read_text())["context"]
    return {**CLI_CONTEXT, **context}


def build_app(context: dict[str, Any] | None = None, outdir: str | None = None) -> cdk.App:
    """Build the CDK app; raise :class:`ConfigError` when the configuration is invalid."""
    app = cdk.App(context=cdk_json_context() if context is None else context, outdir=outdir)
    config = PlatformConfig.from_context(_platform_context(app))
    contract = ApiContract.from_openapi(json.loads(OPENAPI.read_text()))
    stacks = {}
    for environment in config.stacks():
        stacks[environment.stack_name] = PlatformStack(
            app, environment.stack_name, config=config, environment=environment, api=contract
        )
        if environment.is_secondary:
            # The secondary's bucket must exist before the primary's replication rule names it: `cdk deploy
            # Platform-<env>` deploys the secondary's stack first.
            stacks[config.environment(environment.name).stack_name].add_stack_dependency(stacks[environment.stack_name])
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True))
    return app


def _platform_context(app: cdk.App) -> object:
    raw = app.node.try_get_context("platform")
    if isinstance(raw, str):  # `cdk synth -c platform='{...}'` passes JSON text
        try:
            return json.loads(raw)
        except json.JSONDecodeError as error:
            raise ConfigError("platform", f"is not valid JSON ({error})", "pass a JSON object") from None
    return raw


def main() -> int:
    # The cdk CLI chooses the output folder (CDK_OUTDIR); run directly, use the CLI's default.
    outdir = None if "CDK_OUTDIR" in os.environ else "cdk.out"
    try:
        app = build_app(outdir=outdir)
    except ConfigError as error:
        print(f"error: invalid platform configuration: {error}", file=sys.stderr)
        return 2
    try:
        assembly = app.synth()
    except RuntimeError as error:
        too_many = re.search(
            r"Number of resources in stack '([^']+)': (\d+) is greater than allowed maximum of (\d+)", str(error)
        )
        if too_many:
            stack, count, limit = too_many.groups()
            print(
                f"error: {stack} would hold {count} resources, over CloudFormation's {limit} per stack; "
                "run fewer apps per environment (each adds 2 to it: its nested stack and its settings' parameter)",
                file=sys.stderr,
            )
            return 1
        if "ValidationFailed" not in str(error):
            raise
        print(
            "error: cdk-nag found unacknowledged findings (listed above); fix them or acknowledge each "
            "with a reason next to the construct",
            file=sys.stderr,
        )
        return 1
    if outdir is not None:  # the cdk CLI reports where it wrote the templates itself
        for stack in assembly.stacks:
            print(f"{stack.stack_name}: {Path(assembly.directory) / stack.template_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
