"""Time each phase of a deploy on a real systemd instance, for 1 MB and 50 MB releases.

Boots the e2e harness's nspawn instance (needs root, systemd-container and
mmdebstrap; see image/README.md), serves releases from moto S3 on loopback,
and deploys alternating releases of each size several times. Prints the
median and max of each phase from the agent's JSON line, and the total
without the two phases that wait for the app to boot (preflight, healthy).

    .venv/bin/python benchmarks/agent.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "image"))

from instance_harness import (  # type: ignore[import-not-found]
    BUCKET,
    Publisher,
    agent_env,
    booted_instance,
    free_port,
    missing_prerequisites,
    moto_s3,
    provision,
    s3_client,
    tarball,
)

APP_PY = """\
import os
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""
PHASES = ["download", "verify", "unpack", "configure", "preflight", "switch", "healthy", "total"]
APP_BOOT_PHASES = ("preflight", "healthy")
SIZES = {"1 MB": 1_000_000, "50 MB": 50_000_000}


def release_source(size: int, salt: int) -> bytes:
    """A release whose payload is ``size`` incompressible bytes (worst case for download and unpack)."""
    payload = os.urandom(size)
    source: bytes = tarball(
        {"app.py": APP_PY, "Procfile": "web: python3 app.py\n", "payload.bin": payload, "SALT": str(salt)}
    )
    return source


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="deploys per size (default 5)")
    runs = parser.parse_args().runs
    problem = missing_prerequisites()
    if problem:
        print(f"benchmark skipped: the instance {problem}", file=sys.stderr)
        return 2
    results: dict[str, list[dict[str, float]]] = {label: [] for label in SIZES}
    with tempfile.TemporaryDirectory() as workdir, moto_s3() as endpoint, booted_instance(Path(workdir)) as instance:
        client = s3_client(endpoint)
        client.create_bucket(Bucket=BUCKET)
        provision(instance, {"SLIPWAY_APP": "bench", "SLIPWAY_ENV": "bench", "SLIPWAY_BUCKET": BUCKET})
        publisher = Publisher(client, "bench", "bench")
        port = free_port()
        number = 0
        for run in range(runs):
            for label, size in SIZES.items():
                number += 1
                url = publisher.publish(f"r{number}", release_source(size, run), "export A=1\n", port=port)
                result = instance.run(["/home/deploy/bin/deploy", url], env=agent_env(endpoint))
                line = json.loads(result.stdout.strip().splitlines()[-1])
                assert line["result"] == "deployed", line
                results[label].append(line["durations"])
    print(f"deploy phases on a systemd-nspawn instance, {runs} runs per size (seconds, median / max)")
    print(f"{'phase':<28}" + "".join(f"{label:>18}" for label in SIZES))
    rows = [*PHASES, "total without app boot"]
    for phase in rows:
        cells = []
        for label in SIZES:
            if phase == "total without app boot":
                values = [d["total"] - sum(d.get(p, 0.0) for p in APP_BOOT_PHASES) for d in results[label]]
            else:
                values = [d.get(phase, 0.0) for d in results[label]]
            cells.append(f"{statistics.median(values):8.3f} / {max(values):6.3f}")
        print(f"{phase:<28}" + "".join(f"{cell:>18}" for cell in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
