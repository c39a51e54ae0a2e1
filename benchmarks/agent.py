"""Time the deploy agent's two phases on a real systemd instance, for 1 MB and 50 MB releases.

Boots an nspawn instance of the local platform (local.instance: needs root,
systemd-container and mmdebstrap; see image/README.md), publishes releases
through the control plane's own publisher into moto's S3 on loopback, and for
each size, several times: stages a new release (``deploy --stage``), activates it
(``deploy --activate``), then activates the release it replaced (a rollback:
``deploy --activate`` of the previous release, staged already, nothing downloaded).
Prints the median and max of each run's total and of each phase, from the agent's
JSON line.

    .venv/bin/python benchmarks/agent.py [--runs 5]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "lambdas")]

from local.instance import booted_instance, free_port, missing_prerequisites, provision  # noqa: E402
from slipway.publisher import PART_SIZE, Publisher  # noqa: E402
from slipway.settings import AppRuntime  # noqa: E402
from slipway.store import Bucket  # noqa: E402
from slipway.writer import ReleaseWriter  # noqa: E402
from slipway_release.layout import SLUG  # noqa: E402

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
# What each measured run is, and the phases its JSON line reports (the app has no release phase).
RUNS = {
    "stage": ["download", "verify", "unpack", "configure", "preflight"],
    "activate": ["verify", "start", "healthy", "switch", "drain"],
    "activate previous": ["verify", "start", "healthy", "switch", "drain"],
}
SIZES = {"1 MB": 1_000_000, "50 MB": 50_000_000}
DEPLOY = "/home/deploy/bin/deploy"


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


def build_slug(source: bytes) -> bytes:
    """The slug the image's build program makes of ``source`` on this machine (a procfile app)."""
    with tempfile.TemporaryDirectory() as work:
        Path(work, "source.tar.gz").write_bytes(source)
        build = [sys.executable, "-I", str(ROOT / "image" / "build"), "--source", f"{work}/source.tar.gz"]
        build += ["--output", f"{work}/slug.tar.gz", "--runtimes", f"{work}/none.json"]
        subprocess.run(build, check=True, capture_output=True)
        return Path(work, "slug.tar.gz").read_bytes()


def put_parts(parts: list[dict[str, Any]], data: bytes) -> list[dict[str, Any]]:
    """PUT ``data`` to presigned part URLs of ``PART_SIZE`` each; the parts finalize wants."""
    done = []
    for part in parts:
        chunk = data[(part["part_number"] - 1) * PART_SIZE : part["part_number"] * PART_SIZE]
        # An explicit type: urllib's default (a form) makes the S3 server parse the body as one.
        request = urllib.request.Request(
            part["url"], data=chunk, method="PUT", headers={"Content-Type": "application/octet-stream"}
        )
        with urllib.request.urlopen(request) as response:
            done.append({"part_number": part["part_number"], "etag": response.headers["ETag"]})
    return done


def publish(publisher: Publisher, writer: ReleaseWriter, source: bytes) -> str:
    """Publish ``source`` as the next release the way the platform does: the source uploaded to its
    presigned URLs and finalized (checked), its slug (built here) where the builder writes it, and
    the release made by the release writer."""
    upload = publisher.create_upload(size=len(source), sha256=hashlib.sha256(source).hexdigest(), user="bench")
    parts = put_parts(upload["parts"], source)
    publisher.finalize(
        upload_id=upload["upload_id"],
        git={"ref": "main", "commit": hashlib.sha1(source).hexdigest()},
        description=None,
        parts=parts if len(parts) > 1 else None,
        user="bench",
    )
    slug = publisher.keys.upload(upload["upload_id"], SLUG)
    publisher.bucket.client.put_object(Bucket=BUCKET, Key=slug, Body=build_slug(source))
    release: dict[str, Any] = writer.publish_build(upload["upload_id"])
    return f"s3://{BUCKET}/bench/bench/{release['id']}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="stage/activate/rollback rounds per size (default 5)")
    runs = parser.parse_args().runs
    problem = missing_prerequisites()
    if problem:
        print(f"benchmark skipped: the instance {problem}", file=sys.stderr)
        return 2
    results: dict[str, dict[str, list[dict[str, float]]]] = {label: {run: [] for run in RUNS} for label in SIZES}
    import boto3
    from moto.server import ThreadedMotoServer

    os.environ.update(CREDENTIALS)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, moto_port = moto.get_host_and_port()
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL_S3": f"http://{host}:{moto_port}"}
    try:
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"])
        client.create_bucket(Bucket=BUCKET)
        port = free_port()
        runtime = AppRuntime(port=port, health_check_path="/", formation={})
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        publisher = Publisher(Bucket(client, BUCKET), app="bench", env="bench", runtime=runtime, max_source_bytes=2**30)
        writer = ReleaseWriter(Bucket(client, BUCKET), app="bench", env="bench", runtime=runtime)
        writer.change_config(set_vars={"A": "1"}, unset=[], description=None, user="bench")
        with tempfile.TemporaryDirectory() as workdir, booted_instance(Path(workdir)) as instance:
            provision(instance, {"SLIPWAY_APP": "bench", "SLIPWAY_ENV": "bench", "SLIPWAY_BUCKET": BUCKET})

            def deploy(*argv: str) -> dict[str, Any]:
                result = instance.run([DEPLOY, *argv], env=env, check=False)
                line: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
                assert line["exit_code"] == 0, result.stdout + result.stderr
                return line

            for label, size in SIZES.items():
                # The release to roll back to, of the same size.
                running = deploy(publish(publisher, writer, release_source(size, -1)))["release"]
                for run in range(runs):
                    url = publish(publisher, writer, release_source(size, run))
                    staged = deploy("--stage", url)
                    assert staged["result"] == "staged", staged
                    activated = deploy("--activate", url)
                    assert activated["previous"] == running, activated
                    back = deploy("--activate", url.rsplit("/", 1)[0] + "/" + running)
                    assert back["result"] == "activated", back
                    for name, line in (("stage", staged), ("activate", activated), ("activate previous", back)):
                        results[label][name].append(line["durations"])
    finally:
        moto.stop()
    print(f"deploy agent on a systemd-nspawn instance, {runs} runs per size (seconds, median / max)")
    print(f"{'':<30}" + "".join(f"{label:>18}" for label in SIZES))
    for name, phases in RUNS.items():
        for phase in ["total", *phases]:
            cells = []
            for label in SIZES:
                values = [d.get(phase, 0.0) for d in results[label][name]]
                cells.append(f"{statistics.median(values):8.3f} / {max(values):6.3f}")
            title = f"{name} time" if phase == "total" else f"  {phase}"
            print(f"{title:<30}" + "".join(f"{cell:>18}" for cell in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
