"""Time the build program on a real instance: the Flask and Express fixture apps, cold and warm.

Boots an nspawn instance of the local platform (local.instance: needs root, systemd-container
and mmdebstrap; see image/README.md), provisioned by image/provision.sh, and builds each app's
source with the image's own /home/deploy/bin/build, as CodeBuild would: first with an empty
cache directory (cold: every package comes from PyPI or npm), then again with the cache the
previous build left (warm: the same lock file rebuilt). Prints the median and max of the
build program's own total and of its install phase, and the slug sizes, against the goals
(warm: Flask <= 30 s, Express <= 45 s).

    .venv/bin/python benchmarks/build.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from local.instance import (  # noqa: E402
    BuildRun,
    booted_instance,
    build,
    missing_prerequisites,
    provision,
    source_archive,
    trust_host_certificates,
)

APPS = ROOT / "tests" / "image" / "apps"  # the fixture apps' files (data, not test code)
GOALS = {"flask": 30.0, "express": 45.0}


def seconds(run: BuildRun, phase: str) -> float:
    durations = run.result.get("durations")
    assert isinstance(durations, dict)
    return float(durations.get(phase, 0.0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="cold and warm builds per app (default 3)")
    args = parser.parse_args()
    reason = missing_prerequisites()
    if reason:
        print(f"build benchmark: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as work, booted_instance(Path(work)) as instance:
        provision(instance, {})
        registry_env = trust_host_certificates(instance)
        print(f"build benchmark: {args.runs} cold and {args.runs} warm builds per app, {os.cpu_count()} cores")
        print(
            "model: Debian 12 instance in systemd-nspawn on this machine (python 3.11, node 18 from runtimes.json); "
            "packages from the public registries over this machine's network; cold = empty --cache directory, "
            "warm = the cache the previous build of the same lock file left; times are the build program's "
            "own (unpack, install, build command, byte-compile, slug), not the copy of source and slug"
        )
        failed = False
        for app in ("flask", "express"):
            source = source_archive(APPS / app)
            cold: list[BuildRun] = []
            warm: list[BuildRun] = []
            for attempt in range(args.runs):
                cache = f"/var/cache/slipway-bench/{app}-{attempt}"
                cold.append(build(instance, source, name=app, cache=cache, env=registry_env))
                warm.append(build(instance, source, name=app, cache=cache, env=registry_env))
            for run in cold + warm:
                if run.code != 0:
                    print(f"{app}: build failed: {run.stderr.strip()}", file=sys.stderr)
                    return 1
            sizes = sorted({int(str(run.result["slug_size"])) for run in cold + warm})
            cached = instance.run(["du", "-sm", f"/var/cache/slipway-bench/{app}-0"]).stdout.split()[0]
            for label, runs in (("cold", cold), ("warm", warm)):
                totals = [seconds(run, "total") for run in runs]
                installs = [seconds(run, "install") for run in runs]
                print(
                    f"{app:8} {label}: total median {statistics.median(totals):6.2f}s max {max(totals):6.2f}s; "
                    f"install median {statistics.median(installs):6.2f}s"
                )
            worst_warm = max(seconds(run, "total") for run in warm)
            verdict = "meets" if worst_warm <= GOALS[app] else "MISSES"
            failed |= worst_warm > GOALS[app]
            print(
                f"{app:8} slug {sizes[-1] / 1024 / 1024:.1f} MB, cache {cached} MB; "
                f"warm worst {worst_warm:.2f}s {verdict} the goal <= {GOALS[app]:.0f}s"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
