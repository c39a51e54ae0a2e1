#!/usr/bin/env python3
"""How soon the web console shows something useful: its first meaningful paint.

The local platform (Platform-staging in moto, API Gateway played from the template, the real
handler) serves the console; Debian's headless Chromium opens it through Playwright:

- cold: LOADS fresh browser contexts (no cache, no connection) each open the console;
- warm: LOADS reloads in one context (the hashed assets come from the browser's cache).

Measured per load, from the navigation's start: first contentful paint (the browser's own
``paint`` entry: the header), and the meaningful paint: the apps listed, which takes the page,
its two assets and one API call (``GET /apps``: one S3 read per app and one Auto Scaling call).

The model for AWS: each request the browser makes pays API Gateway and Lambda, which the local
platform does not: REQUEST_S per request (a warm Lambda behind a regional endpoint, typical),
in series (page, then its assets in parallel, then the API call), plus AWS_CALL_S per AWS call
the API call makes. A cold Lambda adds its start once (~0.5 s, see benchmarks/slack.py).

Run: `make bench` or `.venv/bin/python benchmarks/console.py [--loads 20]`.
"""

from __future__ import annotations

import argparse
import base64
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "lambdas")]

from playwright.sync_api import sync_playwright  # noqa: E402

from local.platform import launch  # noqa: E402

PASSWORD = "benchmark-password"
REQUEST_S = 0.06  # API Gateway + warm Lambda, per request, regional endpoint
AWS_CALL_S = 0.02  # one AWS API call from Lambda in the same region
ROUND_TRIPS = 3  # page; assets (in parallel); GET /apps
GOAL_S = 1.0  # first meaningful paint on AWS, warm Lambda
ARGS = ["--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]

PAINTED = "() => document.body.dataset.page === 'appsPage'"
TIMINGS = """() => ({
  fcp: (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime,
  transferred: performance.getEntriesByType('resource').reduce((n, e) => n + e.transferSize, 0)
    + performance.getEntriesByType('navigation')[0].transferSize,
})"""


def load(page: Any, url: str) -> tuple[float, float, int]:
    """(first contentful paint, meaningful paint, bytes over the wire), times in seconds."""
    started = time.perf_counter()
    page.goto(url)
    page.wait_for_function(PAINTED, polling="raf")
    meaningful = time.perf_counter() - started
    timings = page.evaluate(TIMINGS)
    return (timings["fcp"] or 0) / 1000, meaningful, int(timings["transferred"])


def summary(name: str, samples: list[tuple[float, float, int]]) -> None:
    fcp = sorted(s[0] for s in samples)
    meaningful = sorted(s[1] for s in samples)

    def p(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, round(q * (len(values) - 1)))] * 1000

    print(
        f"  {name:<5} first contentful paint p50 {p(fcp, 0.5):6.0f} ms  p95 {p(fcp, 0.95):6.0f} ms | "
        f"meaningful paint p50 {p(meaningful, 0.5):6.0f} ms  p95 {p(meaningful, 0.95):6.0f} ms | "
        f"{statistics.median(s[2] for s in samples) / 1024:5.1f} KiB transferred"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=20)
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        print("needs Debian's chromium: apt-get install chromium", file=sys.stderr)
        return 1
    process, info = launch("staging", PASSWORD)
    try:
        url = info["url"] + "/"
        # The header a browser sends once signed in (Playwright's own credential handling
        # intercepts requests, which turns the browser's cache off).
        token = base64.b64encode(f"{info['user']}:{PASSWORD}".encode()).decode()
        credentials = {"Authorization": f"Basic {token}"}
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
            cold = []
            for _ in range(args.loads):
                context = browser.new_context(extra_http_headers=credentials)
                cold.append(load(context.new_page(), url))
                context.close()
            context = browser.new_context(extra_http_headers=credentials)
            page = context.new_page()
            load(page, url)
            warm = [load(page, url) for _ in range(args.loads)]
            context.close()
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=10)

    apps = len(info["apps"])
    print(f"Console first paint on the local platform ({args.loads} loads each, {apps} apps, Chromium headless):")
    summary("cold", cold)
    summary("warm", warm)
    local = statistics.median(s[1] for s in cold)
    modelled = local + ROUND_TRIPS * REQUEST_S + (apps + 1) * AWS_CALL_S
    verdict = "MET" if modelled < GOAL_S else "MISSED"
    print(
        f"Model on AWS: local cold median {local * 1000:.0f} ms + {ROUND_TRIPS} round trips x "
        f"{REQUEST_S * 1000:.0f} ms + {apps + 1} AWS calls x {AWS_CALL_S * 1000:.0f} ms = "
        f"{modelled * 1000:.0f} ms; goal < {GOAL_S * 1000:.0f} ms: {verdict}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
