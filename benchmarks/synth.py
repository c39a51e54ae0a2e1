#!/usr/bin/env python3
"""Wall time and peak memory of synthesizing the platform with 1, 10, 30 and 100 apps.

Each measurement runs in a fresh process (as `cdk synth` does): two environments
(the example's staging and production), N apps (each in a nested stack of its own), cdk-nag
included. Resources are counted over every template written (the environments' stacks and
their apps' nested stacks); the largest is the one stack CloudFormation's 500 bound. Peak memory is
the high-water mark of the Python process plus that of the jsii Node.js process
that does the synthesis
(jsii's launcher and its worker). Run: `make bench` or `.venv/bin/python benchmarks/synth.py`.
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, os, sys, time
started = time.perf_counter()
sys.path.insert(0, sys.argv[1])
from app import build_app, cdk_json_context
imported = time.perf_counter()
context = cdk_json_context()
base = context["platform"]["apps"]["billing"]
context["platform"]["apps"] = {f"app{i:02d}": base for i in range(int(sys.argv[2]))}
assembly = build_app(context=context, outdir=sys.argv[3]).synth()
done = time.perf_counter()

def high_water_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

def descendants(pid):
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as listed:
            for child in listed.read().split():
                found += [child, *descendants(child)]
    return found

children = descendants(os.getpid())
from pathlib import Path
counts = [len(json.loads(p.read_text())["Resources"]) for p in Path(sys.argv[3]).glob("*.template.json")]
resources, largest = sum(counts), max(counts)
print(json.dumps({
    "import_s": imported - started, "synth_s": done - imported,
    "python_mib": high_water_kib("self") / 1024,
    "node_mib": sum(high_water_kib(pid) for pid in children) / 1024,
    "resources": resources, "largest": largest,
}))
"""


def measure(apps: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as outdir:
        env = dict(os.environ, JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20")
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(REPO), str(apps), outdir],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        figures: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
        figures["wall_s"] = time.perf_counter() - started
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, nargs="+", default=[1, 10, 30, 100])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{'apps':>5} {'resources':>9} {'largest stack':>13} {'wall s':>7} {'(synth s)':>9} {'peak MiB':>9}"
        f" {'(py+node)':>13}  runs"
    )
    rows = []
    for apps in args.apps:
        runs = [measure(apps) for _ in range(args.runs)]
        wall = statistics.median(r["wall_s"] for r in runs)
        synth = statistics.median(r["synth_s"] for r in runs)
        py = max(r["python_mib"] for r in runs)
        node = max(r["node_mib"] for r in runs)
        rows.append((apps, wall, py + node))
        print(
            f"{apps:>5} {runs[0]['resources']:>9.0f} {runs[0]['largest']:>13.0f} {wall:>7.1f} {synth:>9.1f}"
            f" {py + node:>9.0f}"
            f" {py:>6.0f}+{node:<6.0f}  {args.runs} (median time, max memory)"
        )
    if len(rows) > 1:
        (a0, w0, m0), (a1, w1, m1) = rows[0], rows[-1]
        print(
            f"marginal cost per app: {(w1 - w0) / (a1 - a0):.2f} s, {(m1 - m0) / (a1 - a0):.1f} MiB"
            f" (from {a0} to {a1} apps, two environments)"
        )


if __name__ == "__main__":
    main()
