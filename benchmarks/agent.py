"""Time each phase of a deploy on a real systemd instance, for 1 MB and 50 MB releases.

Boots an nspawn instance of the local platform (local.instance: needs root,
systemd-container and mmdebstrap; see image/README.md), publishes releases
through the control plane's own publisher into moto's S3 on loopback, and
deploys alternating releases of each size several times. Prints the
median and max of each phase from the agent's JSON line, and the total
without the two phases that wait for the app to boot (preflight, healthy).

    .venv/bin/python benchmarks/agent.py [--runs 5]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "lambdas")]

from local.instance import booted_instance, free_port, missing_prerequisites, provision  # noqa: E402
from slipway.publisher import Publisher  # noqa: E402
from slipway.settings import AppRuntime  # noqa: E402
from slipway.store import Bucket  # noqa: E402

BUCKET = "slipway-bench-releases"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}

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
    files = {"app.py": APP_PY.encode(), "Procfile": b"web: python3 app.py\n", "payload.bin": os.urandom(size)}
    files["SALT"] = str(salt).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def publish(publisher: Publisher, source: bytes) -> str:
    """Publish ``source`` as the next release, the way the API does: presigned upload, then finalize."""
    upload = publisher.create_upload(size=len(source), sha256=hashlib.sha256(source).hexdigest(), user="bench")
    [part] = upload["parts"]
    urllib.request.urlopen(urllib.request.Request(part["url"], data=source, method="PUT")).close()
    git = {"ref": "main", "commit": hashlib.sha1(source).hexdigest()}
    finalize: dict[str, Any] = {"upload_id": upload["upload_id"], "git": git, "description": None, "parts": None}
    release: dict[str, Any] = publisher.finalize(**finalize, promoted_from=None, user="bench")
    return f"s3://{BUCKET}/bench/bench/{release['id']}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="deploys per size (default 5)")
    runs = parser.parse_args().runs
    problem = missing_prerequisites()
    if problem:
        print(f"benchmark skipped: the instance {problem}", file=sys.stderr)
        return 2
    results: dict[str, list[dict[str, float]]] = {label: [] for label in SIZES}
    import boto3
    from moto.server import ThreadedMotoServer

    os.environ.update(CREDENTIALS)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, moto_port = moto.get_host_and_port()
    endpoint = f"http://{host}:{moto_port}"
    try:
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        port = free_port()
        runtime = AppRuntime(port=port, health_check_path="/", formation={})
        publisher = Publisher(Bucket(client, BUCKET), app="bench", env="bench", runtime=runtime, max_source_bytes=2**30)
        publisher.change_config(set_vars={"A": "1"}, unset=[], description=None, user="bench")
        with tempfile.TemporaryDirectory() as workdir, booted_instance(Path(workdir)) as instance:
            provision(instance, {"SLIPWAY_APP": "bench", "SLIPWAY_ENV": "bench", "SLIPWAY_BUCKET": BUCKET})
            for run in range(runs):
                for label, size in SIZES.items():
                    url = publish(publisher, release_source(size, run))
                    result = instance.run(
                        ["/home/deploy/bin/deploy", url], env={**CREDENTIALS, "AWS_ENDPOINT_URL_S3": endpoint}
                    )
                    line = json.loads(result.stdout.strip().splitlines()[-1])
                    assert line["result"] == "deployed", line
                    results[label].append(line["durations"])
    finally:
        moto.stop()
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
