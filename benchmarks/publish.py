#!/usr/bin/env python3
"""Publishing through the `slipway` CLI against the local control plane (moto S3 on loopback).

1. A 100 MB source: wall time of `slipway release` (git archive, sha256, presigned
   multipart upload, server-side verification and copy) against `aws s3 cp` of the
   same tarball to the same S3 server, in the same run, as a ratio.
2. Throughput: publishes per second with 8 `slipway release` clients at once on a
   small app, and a check that every publish got its own release id.

Run: `make bench` or `.venv/bin/python benchmarks/publish.py [--size-mb 100] [--runs 3]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PASSWORD = "benchmark-password"


def make_checkout(folder: Path, size_mb: int) -> Path:
    repo = folder / f"app-{size_mb}"
    repo.mkdir()
    (repo / "Procfile").write_text("web: python3 app.py\n")
    (repo / "app.py").write_text("print('hello')\n")
    if size_mb:
        (repo / "blob.bin").write_bytes(os.urandom(size_mb * 1024 * 1024))  # incompressible, like assets
    git = ["git", "-c", "user.name=Bench", "-c", "user.email=bench@example.com"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "bench"], cwd=repo, check=True)
    return repo


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed: {result.stderr.strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--publishes", type=int, default=5, help="per client")
    args = parser.parse_args()
    sys.path[:0] = [str(REPO), str(REPO / "lambdas")]  # as the local platform runs
    from local.platform import launch

    process, local = launch("staging", PASSWORD)
    try:
        env = {
            **os.environ,
            "SLIPWAY_URL_STAGING": local["url"],
            "SLIPWAY_USER": local["user"],
            "SLIPWAY_PASSWORD": PASSWORD,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            big = make_checkout(folder, args.size_mb)
            tarball = folder / "source.tar.gz"
            subprocess.run(["git", "archive", "--format=tar.gz", f"--output={tarball}", "HEAD"], cwd=big, check=True)
            size = tarball.stat().st_size
            aws = [
                str(BIN / "aws"),
                "s3",
                "cp",
                "--only-show-errors",
                "--endpoint-url",
                local["aws_endpoint"],
                str(tarball),
                f"s3://{local['bucket']}/bench/source.tar.gz",  # the stack's release bucket
            ]
            publish = [str(BIN / "slipway"), "release", "web", "staging"]
            cli, baseline, phases = [], [], []
            for _ in range(args.runs):
                baseline.append(timed(aws, big, env))
                cli.append(timed(publish, big, env))
                phases.append(_phases(local["url"], big))
            cli_s, aws_s = statistics.median(cli), statistics.median(baseline)
            print(f"source: {size / 1024 / 1024:.1f} MB (git archive of {args.size_mb} MB of random data)")
            print(f"slipway release: {cli_s:.2f} s median of {args.runs} (min {min(cli):.2f}, max {max(cli):.2f})")
            low, high = min(baseline), max(baseline)
            print(f"aws s3 cp:       {aws_s:.2f} s median of {args.runs} (min {low:.2f}, max {high:.2f})")
            print(f"ratio: {cli_s / aws_s:.2f}x")
            for name in phases[0]:
                print(f"  {name:<28} {statistics.median(p[name] for p in phases):.2f} s")

            small = make_checkout(folder, 0)
            before = set(_ids(env, small))
            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(
                    pool.map(lambda _: [timed(publish, small, env) for _ in range(args.publishes)], range(args.clients))
                )
            elapsed = time.perf_counter() - started
            total = args.clients * args.publishes
            new = set(_ids(env, small)) - before
            print(
                f"{total} publishes by {args.clients} concurrent clients: {elapsed:.1f} s, "
                f"{total / elapsed:.1f} publishes/s; distinct new release ids: {len(new)} of {total}"
            )
    finally:
        process.terminate()
        process.wait(timeout=10)


def _phases(url: str, checkout: Path) -> dict[str, float]:
    """Where a publish spends its time, through the CLI's own functions."""
    from slipway_cli.client import Api
    from slipway_cli.transfer import git_archive, upload_file

    api = Api(url, "admin", PASSWORD)
    marks = [time.perf_counter()]
    here = os.getcwd()
    os.chdir(checkout)
    try:
        with git_archive("HEAD") as (path, commit):
            marks.append(time.perf_counter())
            uploaded = upload_file(api, "web", "staging", path, quiet=True)
            marks.append(time.perf_counter())
    finally:
        os.chdir(here)
    body = {**uploaded.finalizing(), "git": {"ref": "HEAD", "commit": commit}}
    build = api.call("POST", "/apps/web/envs/staging/releases", body)
    marks.append(time.perf_counter())
    while build["status"] == "BUILDING":
        time.sleep(0.1)
        build = api.call("GET", f"/apps/web/envs/staging/builds/{build['id']}")
    if build["status"] != "SUCCEEDED":
        raise SystemExit(f"the build failed: {build['error']}")
    marks.append(time.perf_counter())
    names = [
        "git archive (gzip)",
        "sha256 + upload (parallel)",
        "finalize (server verifies, starts the build)",
        "build (slug) and publish",
    ]
    return {name: marks[i + 1] - marks[i] for i, name in enumerate(names)}


def _ids(env: dict[str, str], cwd: Path) -> list[str]:
    listing = subprocess.run(
        [str(BIN / "slipway"), "--json", "releases", "web", "staging", "--limit", "100"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return [r["id"] for r in json.loads(listing.stdout)["releases"]]


if __name__ == "__main__":
    main()
