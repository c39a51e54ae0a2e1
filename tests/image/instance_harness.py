"""What the instance tests need beside a booted instance (local.instance): a moto S3 server,
releases written to it as the publisher writes them (slugs made by the real build program),
a syslog sink, an HTTP poller."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from slugs import host_build, slug_build

from local.instance import free_port
from slipway_release.layout import ENV_FILE, MANIFEST, SLUG, SOURCE, AppKeys, Pointer

BUCKET = "slipway-test-releases"
# The app and environment the session's instance is provisioned for (conftest.instance_world).
APP, ENV = "demo", "test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def moto_s3() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1; yields its endpoint URL."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError("moto server did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


# The CloudWatch Logs group the session's instance ships its app's log file to (slipway logs).
LOG_GROUP = "Platform-test-AppLogs-1a2b"


def provision_env(sink: SyslogSink) -> dict[str, str]:
    """provision.sh's environment for the session's instance, forwarding logs to ``sink``."""
    return {
        "SLIPWAY_APP": APP,
        "SLIPWAY_ENV": ENV,
        "SLIPWAY_BUCKET": BUCKET,
        "SLIPWAY_LOG_DESTINATION": f"127.0.0.1:{sink.port}",
        "SLIPWAY_LOG_TLS": "false",
        "SLIPWAY_LOG_GROUP": LOG_GROUP,
    }


def s3_client(endpoint: str) -> Any:
    """A boto3 S3 client on the moto endpoint."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def agent_env(endpoint: str) -> dict[str, str]:
    """Environment for ``deploy`` inside the container."""
    return {**CREDENTIALS, "AWS_ENDPOINT_URL_S3": endpoint}


def tarball(files: Mapping[str, bytes | str], extra: list[tarfile.TarInfo] | None = None) -> bytes:
    """A gzip tarball of ``files`` (text or bytes; names ending in .sh are executable) plus raw entries."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info)
    return buffer.getvalue()


@dataclass
class Publisher:
    """Writes releases to the bucket the way the release writer does: the slug, the source it was built
    from, the env file, and release.json with the slug's build manifest (version 3: the slug and
    source stored by digest; version 2, as releases written before were, beside the manifest)."""

    client: Any
    app: str
    env: str
    bucket: str = BUCKET
    published: list[str] = field(default_factory=list)

    def publish(
        self,
        release_id: str,
        source: bytes,
        env_text: str,
        *,
        port: int,
        slug: bytes | None = None,
        build: dict[str, Any] | None = None,
        formation: dict[str, int] | None = None,
        health_path: str = "/health",
        timeout: float = 10,
        codes: str | None = None,
        version: int = 2,
    ) -> str:
        """Upload one release and return its URL.

        Without ``slug``, the source is built on this machine (procfile apps); ``build``
        defaults to the slug's own build manifest.
        """
        slug = host_build(source) if slug is None else slug
        build = slug_build(slug) if build is None else build
        prefix = f"{self.app}/{self.env}/{release_id}/"
        health: dict[str, Any] = {"path": health_path, "port": port, "timeout": timeout}
        if codes is not None:
            health["codes"] = codes
        manifest = {
            "version": version,
            "id": release_id,
            "app": self.app,
            "env": self.env,
            "slug": {"sha256": hashlib.sha256(slug).hexdigest(), "size": len(slug)},
            "build": build,
            "source": {"sha256": hashlib.sha256(source).hexdigest(), "size": len(source)},
            "git": {"ref": "main", "commit": hashlib.sha1(source).hexdigest()},
            "env_sha256": hashlib.sha256(env_text.encode()).hexdigest(),
            "created_by": "tests",
            "created_at": "2025-11-26T00:00:00Z",
            "description": f"test {release_id}",
            "formation": formation or {},
            "health_check": health,
            "parent": self.published[-1] if self.published else None,
        }
        if version >= 3:  # stored once by digest, shared by the releases that run them
            keys = AppKeys(self.app, self.env)
            manifest["base"] = None
            self.client.put_object(Bucket=self.bucket, Key=keys.slug(manifest["slug"]["sha256"]), Body=slug)
            self.client.put_object(Bucket=self.bucket, Key=keys.source(manifest["source"]["sha256"]), Body=source)
        else:
            self.client.put_object(Bucket=self.bucket, Key=prefix + SLUG, Body=slug)
            self.client.put_object(Bucket=self.bucket, Key=prefix + SOURCE, Body=source)
        self.client.put_object(Bucket=self.bucket, Key=prefix + ENV_FILE, Body=env_text.encode())
        self.client.put_object(Bucket=self.bucket, Key=prefix + MANIFEST, Body=json.dumps(manifest).encode())
        self.published.append(release_id)
        return f"s3://{self.bucket}/{self.app}/{self.env}/{release_id}"

    def digest(self, release_id: str) -> str:
        """The sha256 of the release's release.json as it is in the bucket now."""
        key = f"{self.app}/{self.env}/{release_id}/{MANIFEST}"
        return hashlib.sha256(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()).hexdigest()

    def set_current(self, release_id: str, *, pinned: str | None = None, legacy: bool = False) -> str:
        """Point ``current`` at a release, pinning ``pinned`` (default: its manifest's digest now), or as
        written before digests were pinned (``legacy``); return the ``current`` URL."""
        pointer = Pointer(release_id, None if legacy else pinned or self.digest(release_id))
        self.client.put_object(Bucket=self.bucket, Key=f"{self.app}/{self.env}/current", Body=pointer.render())
        return f"s3://{self.bucket}/{self.app}/{self.env}/current"


class SyslogSink:
    """A TCP syslog receiver on 127.0.0.1 collecting newline-framed messages."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.port = int(self.server.getsockname()[1])
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection: socket.socket) -> None:
        with connection, connection.makefile("r", errors="replace") as stream:
            for line in stream:
                self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float) -> str | None:
        """The first received line containing ``text``, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            time.sleep(0.1)
        return None

    def close(self) -> None:
        self.server.close()


def get(port: int, path: str = "/", timeout: float = 2.0) -> tuple[int, str] | None:
    """``GET http://127.0.0.1:<port><path>`` -> (status, body), or ``None`` on any connection failure."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


class Poller:
    """Polls the web port from a thread and counts failed requests."""

    def __init__(self, port: int, interval: float = 0.01) -> None:
        self.port = port
        self.interval = interval
        self.ok = 0
        self.failures: list[float] = []
        self.bodies: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        deadline = time.monotonic() + 600  # bounded even if a test forgets to stop it
        while not self._stop.is_set() and time.monotonic() < deadline:
            answer = get(self.port)
            if answer is not None and answer[0] == 200:
                self.ok += 1
                self.bodies.add(answer[1].split("\n")[0])
            else:
                self.failures.append(time.monotonic())
            time.sleep(self.interval)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def outage(self) -> float:
        """Seconds between the first and last failed request (0 if none)."""
        return self.failures[-1] - self.failures[0] if self.failures else 0.0
