"""The agent's side effects on the instance: commands, files, HTTP probes.

Kept apart from the pure modules; the deploy flow calls these with the
exact commands built in :mod:`slipway_agent.units`.
"""

from __future__ import annotations

import http.client
import os
import pwd
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Container, Sequence
from contextlib import suppress
from typing import TextIO


class CommandFailed(RuntimeError):
    """A command the agent ran exited non-zero."""

    def __init__(self, argv: Sequence[str], returncode: int, output: str):
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        tail = " | ".join(output.strip().splitlines()[-3:])
        super().__init__(f"`{' '.join(argv[:3])}` exited with {returncode}" + (f": {tail}" if tail else ""))


def run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    """Run ``argv`` without a shell, capturing stdout and stderr together."""
    result = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        check=False,
    )
    if check and result.returncode != 0:
        raise CommandFailed(argv, result.returncode, result.stdout)
    return result


def run_streaming(argv: Sequence[str]) -> int:
    """Run ``argv`` with its output going straight to the deploy's own output."""
    return subprocess.run(list(argv), stdin=subprocess.DEVNULL, check=False).returncode


def run_teed(argv: Sequence[str], journal: Sequence[str], out: TextIO, indent: str = "       ") -> int:
    """Run ``argv``; each line it prints goes to ``out`` (after ``indent``) and to ``journal``'s stdin.

    ``journal`` is the journal writer (``systemd-cat``): the output stays readable with
    ``journalctl -t`` and is forwarded to syslog like the app's own processes'.
    """
    writer = subprocess.Popen(
        list(journal), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None and writer.stdin is not None
    try:
        for line in process.stdout:
            out.write(indent + line.decode("utf-8", errors="replace").rstrip("\n") + "\n")
            out.flush()
            with suppress(BrokenPipeError):  # the journal is gone; the deploy's output still has every line
                writer.stdin.write(line)
                writer.stdin.flush()
    finally:
        code = process.wait()
        with suppress(BrokenPipeError):
            writer.stdin.close()
        writer.wait(timeout=30)
    return code


def parse_properties(text: str) -> dict[str, str]:
    """Parse ``systemctl show`` output (``Key=value`` lines)."""
    properties = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            properties[key] = value
    return properties


def unit_properties(unit: str) -> dict[str, str]:
    """ActiveState, SubState, Result and the main process's exit status of ``unit``."""
    result = run(
        ["systemctl", "show", "--property=ActiveState,SubState,Result,ExecMainStatus,NRestarts", unit],
        check=False,
    )
    return parse_properties(result.stdout)


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` through a temporary file and rename, so readers never see half."""
    directory = os.path.dirname(path)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException as error:
        if os.path.exists(temporary):
            os.unlink(temporary)
        if isinstance(error, OSError) and error.filename is None:
            error.filename = path  # a full disk's message then names the file
        raise


def chown_to(path: str, user: str) -> None:
    """Give ``path`` (not following a link) to ``user`` and its group."""
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def point_symlink(link: str, target: str) -> None:
    """Make ``link`` point at ``target`` atomically: a new link renamed over the old one."""
    temporary = f"{link}.new-{os.getpid()}"
    if os.path.lexists(temporary):
        os.unlink(temporary)
    os.symlink(target, temporary)
    os.replace(temporary, link)


def read_text(path: str) -> str | None:
    """The file's text, or ``None`` if it does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def spare_port() -> int:
    """A TCP port free on this instance right now, for the preflight process."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_open(port: int) -> bool:
    """Does something accept connections on ``127.0.0.1:<port>``?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def http_status(port: int, path: str, timeout: float) -> int | None:
    """Status of ``GET http://127.0.0.1:<port><path>``, or ``None`` if nothing answered."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"User-Agent": "slipway-deploy-health-check"})
        return connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def wait_healthy(
    port: int,
    path: str,
    timeout: float,
    still_running: Callable[[], str | None],
    codes: Container[int] = frozenset({200}),
    codes_text: str = "200",
) -> None:
    """Poll until the web process answers one of ``codes`` on ``path`` (the manifest's
    ``health_check.codes``, as the load balancer matches them).

    ``still_running`` returns ``None`` while the process can still come up,
    or a sentence saying why it never will (it exited); that ends the wait
    early. Raises :class:`TimeoutError` or :class:`RuntimeError` with the reason.
    """
    deadline = time.monotonic() + timeout
    last = "nothing answered"
    while True:
        status = http_status(port, path, timeout=2.0)
        if status is not None and status in codes:
            return
        if status is not None:
            last = f"it answered HTTP {status}; healthy is {codes_text}"
        stopped = still_running()
        if stopped:
            raise RuntimeError(stopped)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no healthy answer on port {port} at {path} within {timeout:g}s ({last})")
        time.sleep(0.05)


def pause_if(point: str, pause_at: str | None) -> None:
    """Stop this process (SIGSTOP) at the named point when ``pause_at`` names it.

    The fault tests' seam (``SLIPWAY_AGENT_PAUSE_AT``): they wait for the stop, look at the
    instance mid-deploy, SIGKILL the agent there and run it again.
    """
    if point == pause_at:
        print(f"       paused at {point} (SLIPWAY_AGENT_PAUSE_AT)", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
