"""``deploy --run rN --command B64``: one one-off command (``slipway run``) with the running
release's code and config, as the app's user, like the release phase.

Its output (stdout and stderr, in order) is this program's stdout, and goes to the journal as
``<app>-run`` like every process of the app; its exit status is this program's. The agent's own
outcomes have statuses of their own (:mod:`slipway_release.oneoff`): 125 refused (this instance
does not run that release), 124 stopped at its time limit. It takes no deploy lock: a long
console session must not hold up a deploy, and a deploy never removes the release that runs.
"""

from __future__ import annotations

import secrets
import sys
import time
from typing import TextIO

from slipway_release.manifest import load_schema
from slipway_release.oneoff import EXIT_REFUSED, EXIT_TIMED_OUT, MAX_TIMEOUT_SECONDS, PROCESS_TYPE
from slipway_release.runtimes import RUNTIMES_PATH

from . import host
from .cli import DeployArgs
from .report import reason
from .staged import instance_runtime, one_off_environment, staged_manifest
from .units import AppLayout, journal_command, one_off_command

PREFIX = "slipway run"


def run_one_off(
    args: DeployArgs, layout: AppLayout, out: TextIO = sys.stdout, runtimes_path: str = RUNTIMES_PATH
) -> int:
    """Run ``args.command``; return its exit status, or :data:`EXIT_REFUSED`/:data:`EXIT_TIMED_OUT`."""
    release_id = args.release.target
    assert args.command is not None
    deployed = (host.read_text(layout.deployed_file) or "").strip() or None
    if deployed != release_id:
        runs = f"runs {deployed}" if deployed else "runs no release of it"
        print(
            f"{PREFIX}: not run: this instance {runs}, not {release_id}; run it again once the deploy "
            f"has finished (slipway status {layout.app} {args.release.env})",
            file=out,
            flush=True,
        )
        return EXIT_REFUSED
    try:
        manifest = staged_manifest(layout, release_id, load_schema())
        environment = one_off_environment(layout, release_id, manifest, instance_runtime(manifest, runtimes_path))
    except Exception as error:  # a release the agent itself staged and runs: say why, never a traceback
        print(f"{PREFIX}: not run: {release_id} cannot be read on this instance ({reason(error)})", file=out)
        return EXIT_REFUSED
    run_id = secrets.token_hex(4)
    argv = one_off_command(layout, release_id, run_id, args.command, args.timeout_seconds, environment)
    started = time.monotonic()
    code = host.run_teed(argv, journal_command(f"{layout.app}-{PROCESS_TYPE}"), out, indent="")
    elapsed = time.monotonic() - started
    if code != 0 and elapsed >= args.timeout_seconds:
        print(
            f"{PREFIX}: stopped after {elapsed:.0f} s, its time limit; give a longer --timeout "
            f"(at most {MAX_TIMEOUT_SECONDS} s) or run the work as a process of the app",
            file=out,
            flush=True,
        )
        return EXIT_TIMED_OUT
    return code
