"""Instances on this machine: Debian 12 with systemd, booted in systemd-nspawn.

The root filesystem is built once with mmdebstrap and cached under
/var/cache/slipway-test/rootfs-<hash of its inputs>; each instance boots an overlay of it
(its writes go to its own upper directory, the cache is never changed; a copy when this
kernel cannot mount overlayfs) and is provisioned by the real ``image/provision.sh``, as
user data provisions an EC2 instance.

Two kinds of instance use this module. The agent's tests (``tests/image``) boot one that
shares the host's network: it reaches moto on 127.0.0.1 and its apps answer there. The
local platform (:mod:`local.fleets`) boots each instance of a fleet in its own network
namespace on the platform's bridge (:mod:`local.network`): it has its own address and
reaches only the bridge. Commands run inside through ``nsenter`` into the container's
namespaces, which needs no systemd on the host.

Builds run inside a host-network instance too (:func:`build`), with the image's own build
program and runtimes; pip and npm reach their registries over the shared network, trusting
what this machine trusts (:func:`trust_host_certificates`).
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
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "image"
CACHE = Path("/var/cache/slipway-test")
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "systemd,systemd-sysv,dbus,python3,python3-boto3,rsyslog,rsyslog-gnutls,ca-certificates,iproute2,haproxy,"
    # The app runtimes provision.sh installs (image/provision.sh), so boots do not apt-get them.
    "python3-pip,python3-venv,nodejs,npm"
)
BUILD_PROGRAM = "/home/deploy/bin/build"
BUILD_CACHE = "/var/cache/slipway-build"
# Certificates this machine trusts beyond the distribution's (a proxy's, say).
HOST_CERTIFICATES = Path("/usr/local/share/ca-certificates")
HOST_TOOLS = {"mmdebstrap": "mmdebstrap", "systemd-nspawn": "systemd-container", "nsenter": "util-linux"}


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
            errors="replace",
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

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Halt the container (nspawn forwards SIGTERM as a shutdown), kill it if it hangs."""
        shutdown(self.process)


def nspawn_command(root: Path, name: str, network_namespace: str | None = None) -> list[str]:
    """The ``systemd-nspawn`` command that boots ``root`` as machine (and host name) ``name``.

    ``--register=no --keep-unit``: no machined or scope units, so a host without systemd
    as PID 1 boots it too. Without ``network_namespace`` the container shares the host's network.
    """
    argv = [
        "systemd-nspawn",
        "--quiet",
        "--boot",
        "--register=no",
        "--keep-unit",
        "--resolv-conf=off",
        f"--machine={name}",
        f"--directory={root}",
    ]
    if network_namespace is not None:
        argv.append(f"--network-namespace-path=/run/netns/{network_namespace}")
    return argv


CGROUP_ROOT = Path("/sys/fs/cgroup")
# The cgroups each booted container's nspawn runs in, by the nspawn process's pid (removed at shutdown).
_CGROUPS: dict[int, list[Path]] = {}


def container_cgroups(name: str) -> list[Path]:
    """A cgroup of its own for the container ``name`` in each hierarchy systemd uses.

    nspawn with ``--keep-unit`` puts the container's systemd in a ``payload`` child of its own
    cgroup: started from the same cgroup, every container would share one ``payload``, and their
    systemd instances would manage the same unit cgroups (two instances running a unit of the same
    name at once — a preflight during the stage on every instance — fail with 219/CGROUP, and
    ``systemctl kill`` reaches into the other's). So each nspawn starts in ``slipway-<name>``.
    """
    if (CGROUP_ROOT / "cgroup.controllers").exists():  # the unified hierarchy alone (cgroup v2)
        roots = [CGROUP_ROOT]
    else:  # hybrid or legacy: systemd's named hierarchy, and the unified one beside it if mounted
        hierarchies = (CGROUP_ROOT / "systemd", CGROUP_ROOT / "unified")
        roots = [root for root in hierarchies if (root / "cgroup.procs").exists()]
    return [root / f"slipway-{name}" for root in roots]


def _in_cgroups(cgroups: list[Path], argv: list[str]) -> list[str]:
    """``argv`` run by a shell that first moves itself into ``cgroups`` (then execs: the same pid)."""
    moves = "".join(f'echo $$ > "{group}/cgroup.procs" && ' for group in cgroups)
    return ["sh", "-c", f'{moves}exec "$@"', "sh", *argv]


def remove_cgroups(cgroups: list[Path]) -> None:
    """Remove the container's cgroups (and what its systemd left in them), deepest first."""
    for group in cgroups:
        for directory, _, _ in sorted(os.walk(group, topdown=False), key=lambda entry: -len(entry[0])):
            with suppress(OSError):
                os.rmdir(directory)


def mount_root(workdir: Path) -> Path:
    """The instance's root directory under ``workdir``: an overlay of the cached rootfs.

    Falls back to a copy where overlayfs cannot be mounted; :func:`unmount_root` undoes either.
    """
    lower = rootfs()
    root, upper, work = workdir / "root", workdir / "upper", workdir / "work"
    for directory in (root, upper, work):
        directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        root.rmdir()
        subprocess.run(["cp", "-a", "--reflink=auto", str(lower), str(root)], check=True)
    return root


def is_mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        return any(line.split()[1] == target for line in mounts if len(line.split()) > 1)


def unmount_root(workdir: Path) -> None:
    """Unmount the instance's overlay (if it is one) and delete its files (the console log stays)."""
    root = workdir / "root"
    unmounted = not is_mounted(root) or subprocess.run(["umount", str(root)], capture_output=True).returncode == 0
    if not unmounted:  # still busy: detach it now, the kernel frees it when the last user goes
        subprocess.run(["umount", "--lazy", str(root)], capture_output=True, check=False)
    for part in ("root", "upper", "work"):
        shutil.rmtree(workdir / part, ignore_errors=True)


def boot(
    root: Path,
    name: str,
    console: Path,
    network_namespace: str | None = None,
    started: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> Instance:
    """Boot ``root`` and wait until its systemd is up; the container is shut down if that fails.

    ``started`` gets the nspawn process as soon as it runs, so that another thread can stop
    a container that is still booting.
    """
    cgroups = container_cgroups(name)
    for group in cgroups:
        group.mkdir(exist_ok=True)
    with open(console, "wb") as output:
        process = subprocess.Popen(
            _in_cgroups(cgroups, nspawn_command(root, name, network_namespace)),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _CGROUPS[process.pid] = cgroups
    if started is not None:
        started(process)
    try:
        instance = Instance(root, name, process, _leader(process, console), console)
        _wait_booted(instance)
    except BaseException:
        shutdown(process)
        raise
    return instance


@contextmanager
def booted_instance(workdir: Path) -> Iterator[Instance]:
    """Boot an overlay of the cached rootfs under ``workdir`` on the host's network; always shut it down."""
    root = mount_root(workdir)
    try:
        instance = boot(root, f"slipway-test-{os.getpid()}", workdir / "console.log")
        try:
            yield instance
        finally:
            instance.stop()
    finally:
        unmount_root(workdir)


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
        time.sleep(0.05)
    raise AssertionError("the container's systemd did not start within 60s")


def _wait_booted(instance: Instance) -> None:
    # Until systemd has set up the container, entering it or asking systemd can fail: retry.
    deadline = time.monotonic() + 120
    while True:
        state = instance.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=120)
        if state.stdout.strip() in ("running", "degraded"):
            return
        if time.monotonic() > deadline or not instance.alive():
            raise AssertionError(
                f"container did not boot: {state.stdout}{state.stderr}\n{instance.console.read_text()[-3000:]}"
            )
        time.sleep(0.2)


def shutdown(process: subprocess.Popen[bytes]) -> None:
    """Ask nspawn to halt the container (SIGTERM), then kill it if it hangs."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    if process.poll() is not None:
        remove_cgroups(_CGROUPS.pop(process.pid, []))


def provision(instance: Instance, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Copy image/ into the instance (as user data does) and run provision.sh."""
    target = instance.path("/root/slipway-image")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(IMAGE, target, ignore=shutil.ignore_patterns("__pycache__"))
    return instance.run(["bash", "/root/slipway-image/provision.sh"], env=env)


def trust_host_certificates(instance: Instance) -> dict[str, str]:
    """Make the instance trust the certificates this machine added to its store (so pip and
    npm inside reach their registries as they do here); the environment node needs for them."""
    extra = sorted(HOST_CERTIFICATES.glob("*.crt")) if HOST_CERTIFICATES.is_dir() else []
    if not extra:
        return {}
    target = instance.path(str(HOST_CERTIFICATES))
    target.mkdir(parents=True, exist_ok=True)
    for certificate in extra:
        shutil.copyfile(certificate, target / certificate.name)
    instance.run(["update-ca-certificates"], timeout=120)
    # node keeps its own list of authorities unless told of more.
    return {"NODE_EXTRA_CA_CERTS": "/etc/ssl/certs/ca-certificates.crt"}


def source_archive(directory: Path) -> bytes:
    """A gzip tar of the files under ``directory`` as ``git archive`` makes one (regular files,
    relative names, sorted, executable bits kept)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(p for p in directory.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(directory).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
    return buffer.getvalue()


@dataclass
class BuildRun:
    """One run of the image's build program: exit code, output, its JSON result, the slug."""

    code: int
    stdout: str
    stderr: str
    result: dict[str, object]
    slug: bytes | None
    seconds: float


def build(
    instance: Instance,
    source: bytes,
    *,
    name: str = "app",
    cache: str | None = BUILD_CACHE,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
) -> BuildRun:
    """Build ``source`` into a slug inside the instance with ``/home/deploy/bin/build``, as root."""
    work = f"/root/builds/{name}-{time.monotonic_ns()}"
    instance.path(work).mkdir(parents=True)
    instance.path(f"{work}/source.tar.gz").write_bytes(source)
    argv = [BUILD_PROGRAM, "--source", f"{work}/source.tar.gz", "--output", f"{work}/slug.tar.gz"]
    if cache:
        argv += ["--cache", cache]
    started = time.monotonic()
    result = instance.run(argv, env=env, check=False, timeout=timeout)
    seconds = time.monotonic() - started
    lines = result.stdout.strip().splitlines()
    slug_path = instance.path(f"{work}/slug.tar.gz")
    slug = slug_path.read_bytes() if slug_path.exists() else None
    shutil.rmtree(instance.path(work), ignore_errors=True)
    return BuildRun(
        result.returncode, result.stdout, result.stderr, json.loads(lines[-1]) if lines else {}, slug, seconds
    )
