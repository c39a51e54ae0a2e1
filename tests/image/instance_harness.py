"""A real instance for tests and benchmarks: Debian 12 with systemd in systemd-nspawn.

The root filesystem is built once with mmdebstrap and cached under
/var/cache/slipway-test/rootfs-<hash of its inputs>; each session boots a
copy. The container shares the host network, so it reaches moto's S3 on
127.0.0.1, and its apps answer on 127.0.0.1 too (all traffic stays on
loopback). Commands run inside through ``nsenter`` into the container's
namespaces, which needs no systemd on the host.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "image"
CACHE = Path("/var/cache/slipway-test")
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = "systemd,systemd-sysv,dbus,python3,python3-boto3,rsyslog,rsyslog-gnutls,ca-certificates,iproute2"
HOST_TOOLS = {"mmdebstrap": "mmdebstrap", "systemd-nspawn": "systemd-container", "nsenter": "util-linux"}
BUCKET = "slipway-test-releases"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def missing_prerequisites() -> str | None:
    """Why an instance cannot be booted here, or ``None`` if it can."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn and mmdebstrap)"
    absent = [package for tool, package in HOST_TOOLS.items() if shutil.which(tool) is None]
    if absent:
        return f"needs host packages: apt-get install {' '.join(sorted(set(absent)))}"
    return None


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rootfs() -> Path:
    """The cached Debian root filesystem, built on first use (about 30 s)."""
    key = hashlib.sha256(f"{SUITE} {MIRROR} {PACKAGES} minbase v1".encode()).hexdigest()[:16]
    cached = CACHE / f"rootfs-{key}"
    if cached.is_dir():
        return cached
    CACHE.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=CACHE, prefix=".build-"))
    target = building / "root"
    subprocess.run(
        ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={PACKAGES}", SUITE, str(target), MIRROR],
        check=True,
    )
    try:
        os.rename(target, cached)
    except OSError:
        if not cached.is_dir():  # another session finished first otherwise
            raise
    shutil.rmtree(building, ignore_errors=True)
    return cached


@dataclass
class Instance:
    """One booted container; ``run`` executes a command inside it."""

    directory: Path
    name: str
    process: subprocess.Popen[bytes]
    leader: int
    console: Path

    def run(
        self, argv: list[str], env: Mapping[str, str] | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the container as root with a clean environment."""
        environment = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]
        environment += [f"{key}={value}" for key, value in (env or {}).items()]
        result = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "env", "-i", *environment, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{argv} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def popen(self, argv: list[str], env: Mapping[str, str]) -> subprocess.Popen[str]:
        """Start ``argv`` inside the container without waiting."""
        environment = [f"{key}={value}" for key, value in env.items()]
        return subprocess.Popen(
            [
                "nsenter",
                "-t",
                str(self.leader),
                "-a",
                "env",
                "-i",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                *environment,
                *argv,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def path(self, inside: str) -> Path:
        """The host path of a file inside the container."""
        return self.directory / inside.lstrip("/")


@contextmanager
def booted_instance(workdir: Path) -> Iterator[Instance]:
    """Copy the cached rootfs into ``workdir``, boot it, and always shut it down."""
    directory = workdir / "root"
    subprocess.run(["cp", "-a", "--reflink=auto", str(rootfs()), str(directory)], check=True)
    name = f"slipway-test-{os.getpid()}"
    console = workdir / "console.log"
    with open(console, "wb") as output:
        process = subprocess.Popen(
            [
                "systemd-nspawn",
                "--quiet",
                "--boot",
                "--register=no",
                "--keep-unit",
                "--resolv-conf=off",
                f"--machine={name}",
                f"--directory={directory}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        instance = Instance(directory, name, process, _leader(process, console), console)
        _wait_booted(instance)
        yield instance
    finally:
        _shutdown(process)


def _leader(process: subprocess.Popen[bytes], console: Path) -> int:
    """PID (on the host) of the container's systemd."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited {process.returncode}: {console.read_text()[-3000:]}")
        children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        for child in children:
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
            except FileNotFoundError:
                continue
        time.sleep(0.1)
    raise AssertionError("the container's systemd did not start within 60s")


def _wait_booted(instance: Instance) -> None:
    # Until systemd has set up the container, entering it or asking systemd can fail: retry.
    deadline = time.monotonic() + 120
    while True:
        state = instance.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=120)
        if state.stdout.strip() in ("running", "degraded"):
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"container did not boot: {state.stdout}{state.stderr}\n{instance.console.read_text()[-3000:]}"
            )
        time.sleep(0.2)


def _shutdown(process: subprocess.Popen[bytes]) -> None:
    """Ask nspawn to halt the container (SIGTERM), then kill it if it hangs."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


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
    """Writes releases to the bucket the way the publisher will (release.json per the schema)."""

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
        formation: dict[str, int] | None = None,
        health_path: str = "/health",
        timeout: float = 10,
    ) -> str:
        """Upload one release and return its URL."""
        prefix = f"{self.app}/{self.env}/{release_id}/"
        manifest = {
            "version": 1,
            "id": release_id,
            "app": self.app,
            "env": self.env,
            "source": {"sha256": hashlib.sha256(source).hexdigest(), "size": len(source)},
            "git": {"ref": "main", "commit": hashlib.sha1(source).hexdigest()},
            "env_sha256": hashlib.sha256(env_text.encode()).hexdigest(),
            "created_by": "tests",
            "created_at": "2025-11-26T00:00:00Z",
            "description": f"test {release_id}",
            "formation": formation or {},
            "health_check": {"path": health_path, "port": port, "timeout": timeout},
            "parent": self.published[-1] if self.published else None,
        }
        self.client.put_object(Bucket=self.bucket, Key=prefix + "source.tar.gz", Body=source)
        self.client.put_object(Bucket=self.bucket, Key=prefix + "env", Body=env_text.encode())
        self.client.put_object(Bucket=self.bucket, Key=prefix + "release.json", Body=json.dumps(manifest).encode())
        self.published.append(release_id)
        return f"s3://{self.bucket}/{self.app}/{self.env}/{release_id}"

    def set_current(self, release_id: str) -> str:
        """Point ``current`` at a release; return the ``current`` URL."""
        self.client.put_object(Bucket=self.bucket, Key=f"{self.app}/{self.env}/current", Body=release_id.encode())
        return f"s3://{self.bucket}/{self.app}/{self.env}/current"


def provision(instance: Instance, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Copy image/ into the instance (as user data does) and run provision.sh."""
    target = instance.path("/root/slipway-image")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(IMAGE, target, ignore=shutil.ignore_patterns("__pycache__"))
    return instance.run(["bash", "/root/slipway-image/provision.sh"], env=env)


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
