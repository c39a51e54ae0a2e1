"""A fleet's load balancer on this machine: HAProxy playing the fleet's ALB and target group.

One HAProxy process per fleet, its frontend on ``127.0.0.1:<port>`` (the app's URL
locally), its backend the target group: each registered target is a server added and
taken out at run time through the stats socket (``add server``, ``set server ... state
drain``, then ``maint``, where it waits to be reused by the same target), never by
reloading, so no connection is dropped. Health checks
are the target group's: path, interval, timeout, healthy and unhealthy thresholds, and the
matcher's codes (as a status regex).

What ELB's ``DescribeTargetHealth`` would say is computed from what HAProxy's checks see
(:func:`target_health`); ELB's state machine is followed where HAProxy's differs:

* a new target starts ``initial`` and gets no traffic until ``healthy_threshold`` checks
  pass (HAProxy would start a dynamic server UP: it is forced down first);
* ``initial`` turns ``unhealthy`` after ``unhealthy_threshold`` failed checks. HAProxy
  counts no failures for a server that never came up, so this one transition is timed:
  every check failed for (threshold - 1) x interval since the first failure seen;
* a deregistered target is ``draining`` (no new requests, those in flight finish) until
  it has no session left or the deregistration delay has passed, then it is removed
  (ALB also ends draining early once a target has no in-flight request).

The config text, the runtime commands and the health mapping are pure and tested for
their exact text; :class:`LoadBalancer` runs the process and talks to its socket.
"""

from __future__ import annotations

import csv
import io
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

# ELB's health checker identifies itself so; apps may log or skip it.
USER_AGENT = "ELB-HealthChecker/2.0"
# How long an answer on the stats socket may take.
SOCKET_TIMEOUT = 5.0


class LoadBalancerError(RuntimeError):
    """HAProxy refused a command or could not start; the message says which and why."""


@dataclass(frozen=True)
class HealthCheck:
    """A target group's health check, as ``DescribeTargetGroups`` gives it."""

    path: str = "/"
    interval_seconds: int = 30
    timeout_seconds: int = 5
    healthy_threshold: int = 5
    unhealthy_threshold: int = 2
    matcher: str = "200"  # Matcher.HttpCode: "200", "200,302", "200-399"
    port: str = "traffic-port"

    @classmethod
    def from_target_group(cls, group: Mapping[str, object]) -> HealthCheck:
        """From one entry of ``DescribeTargetGroups``; only HTTP checks are played locally."""
        protocol = str(group.get("HealthCheckProtocol") or "HTTP")
        if protocol != "HTTP":
            raise LoadBalancerError(
                f"target group {group.get('TargetGroupName')} checks health over {protocol}; "
                "the local load balancer plays HTTP checks only"
            )
        matcher = group.get("Matcher") or {}
        assert isinstance(matcher, Mapping)
        return cls(
            path=str(group.get("HealthCheckPath") or "/"),
            interval_seconds=int(str(group.get("HealthCheckIntervalSeconds") or 30)),
            timeout_seconds=int(str(group.get("HealthCheckTimeoutSeconds") or 5)),
            healthy_threshold=int(str(group.get("HealthyThresholdCount") or 5)),
            unhealthy_threshold=int(str(group.get("UnhealthyThresholdCount") or 2)),
            matcher=str(matcher.get("HttpCode") or "200"),
            port=str(group.get("HealthCheckPort") or "traffic-port"),
        )


@dataclass(frozen=True)
class Balancer:
    """What one fleet's HAProxy is configured with at start."""

    name: str  # the app: frontend and backend name
    listen_host: str
    listen_port: int
    socket: Path
    check: HealthCheck
    deregistration_delay_seconds: int = 300
    algorithm: str = "round_robin"  # target group attribute load_balancing.algorithm.type


def _digits(low: int, high: int) -> str:
    return str(low) if low == high else f"[{low}-{high}]"


def _range_regex(low: str, high: str) -> list[str]:
    """Alternatives matching every number from ``low`` to ``high`` (same number of digits)."""
    if low == high:
        return [low]
    if len(low) == 1:
        return [_digits(int(low), int(high))]
    if low[0] == high[0]:
        return [low[0] + rest for rest in _range_regex(low[1:], high[1:])]
    width = len(low) - 1
    parts: list[str] = []
    first, last = int(low[0]), int(high[0])
    if low[1:] != "0" * width:
        parts += [low[0] + rest for rest in _range_regex(low[1:], "9" * width)]
        first += 1
    tail: list[str] = []
    if high[1:] != "9" * width:
        tail = [high[0] + rest for rest in _range_regex("0" * width, high[1:])]
        last -= 1
    if first <= last:
        parts.append(_digits(first, last) + "[0-9]" * width)
    return parts + tail


def status_regex(matcher: str) -> str:
    """The HAProxy ``rstatus`` regex for an ELB matcher (``200``, ``200,302``, ``200-399``)."""
    alternatives: list[str] = []
    for part in matcher.split(","):
        part = part.strip()
        low, _, high = part.partition("-")
        high = high or low
        if not (low.isdigit() and high.isdigit() and len(low) == len(high) == 3 and low <= high):
            raise LoadBalancerError(f"matcher {matcher!r}: {part!r} is not an HTTP code or a range like 200-399")
        alternatives += _range_regex(low, high)
    return "^(" + "|".join(alternatives) + ")$"


# ALB's algorithms and HAProxy's nearest equivalents.
ALGORITHMS = {"round_robin": "roundrobin", "least_outstanding_requests": "leastconn"}


def config_text(balancer: Balancer) -> str:
    """The whole HAProxy configuration of one fleet; servers come later, at run time."""
    check = balancer.check
    name = balancer.name
    algorithm = ALGORITHMS.get(balancer.algorithm)
    if algorithm is None:
        raise LoadBalancerError(f"{name}: load balancing algorithm {balancer.algorithm!r} is not played locally")
    return "\n".join(
        [
            f"# The load balancer of {name} (written by local/haproxy.py). Targets are added and",
            "# removed through the stats socket while it runs; it is never reloaded.",
            "global",
            f"    stats socket {balancer.socket} mode 600 level admin",
            "    stats timeout 30s",
            "",
            "defaults",
            "    mode http",
            "    timeout connect 5s",
            "    # The ALB's idle timeout.",
            "    timeout client 60s",
            "    timeout server 60s",
            "    # One server connection per request: a drained server holds no idle connection.",
            "    option http-server-close",
            "",
            f"frontend {name}",
            f"    bind {balancer.listen_host}:{balancer.listen_port}",
            f"    default_backend {name}",
            "",
            f"backend {name}",
            f"    balance {algorithm}",
            "    option httpchk",
            f"    http-check send meth GET uri {check.path} ver HTTP/1.1 hdr Host {name} hdr User-Agent {USER_AGENT}",
            f"    http-check expect rstatus {status_regex(check.matcher)}",
            f"    timeout check {check.timeout_seconds}s",
            "",
        ]
    )


def add_server(balancer: Balancer, server: str, address: str, port: int) -> list[str]:
    """Commands that add a target down until its checks pass, as a new ELB target is ``initial``.

    HAProxy brings a server leaving maintenance UP at once; it is added with weight 0 (no
    traffic even while UP), then forced down, and only then weighted. Dynamic servers
    inherit no ``default-server`` line, so the check settings go on the command itself.
    """
    check = balancer.check
    backend = f"{balancer.name}/{server}"
    options = f"check inter {check.interval_seconds}s rise {check.healthy_threshold} fall {check.unhealthy_threshold}"
    if check.port != "traffic-port":
        options += f" port {check.port}"
    return [
        f"add server {backend} {address}:{port} weight 0 {options}",
        f"enable health {backend}",
        f"set server {backend} state ready",
        f"set server {backend} health down",
        f"set weight {backend} 1",
    ]


def drain_server(balancer: Balancer, server: str) -> list[str]:
    """No new requests to the target; those in flight finish."""
    return [f"set server {balancer.name}/{server} state drain"]


def park_server(balancer: Balancer, server: str, *, cut: bool) -> list[str]:
    """Take a drained target out of the backend; ``cut`` closes what is still open (the
    deregistration delay is over). The server stays, in maintenance, for :func:`reuse_server`:
    Debian 12's HAProxy 2.6 corrupts its heap after a few dozen ``del server`` of checked
    servers ("corrupted double-linked list", seen here after 18), so servers are never deleted."""
    backend = f"{balancer.name}/{server}"
    commands = [f"set server {backend} state maint"]
    if cut:
        commands.append(f"shutdown sessions server {backend}")
    return commands


def reuse_server(balancer: Balancer, server: str) -> list[str]:
    """Commands that bring a parked target back down until its checks pass, as :func:`add_server`
    adds one (weight 0 while it leaves maintenance, which HAProxy does UP)."""
    backend = f"{balancer.name}/{server}"
    return [
        f"set weight {backend} 0",
        f"set server {backend} state ready",
        f"set server {backend} health down",
        f"set weight {backend} 1",
    ]


@dataclass(frozen=True)
class ServerStat:
    """One server's line of ``show stat``: what HAProxy's checks and sessions are."""

    name: str
    status: str  # UP, "UP 1/2" (going down), DOWN, "DOWN 1/2" (going up), DRAIN, MAINT, NOLB
    sessions: int  # scur: requests being served now
    check_status: str  # INI, L4OK, L4CON, L4TOUT, L7OK, L7STS, L7TOUT, ...
    check_code: str  # the HTTP status of the last check, if it got one
    check_description: str
    check_health: int

    @property
    def up(self) -> bool:
        return self.status.startswith("UP") or self.status == "DRAIN"


def parse_stat(text: str, backend: str) -> dict[str, ServerStat]:
    """The servers of ``backend`` in the CSV of ``show stat``."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        raise LoadBalancerError(f"unexpected answer to show stat: {text[:200]!r}")
    reader = csv.DictReader(io.StringIO("\n".join([lines[0][2:], *lines[1:]])))
    found = {}
    for row in reader:
        if row["pxname"] != backend or row["svname"] in ("FRONTEND", "BACKEND"):
            continue
        found[row["svname"]] = ServerStat(
            name=row["svname"],
            status=row["status"],
            sessions=int(row["scur"] or 0),
            check_status=row["check_status"].lstrip("* "),
            check_code=row["check_code"],
            check_description=row["check_desc"],
            check_health=int(row["check_health"] or 0),
        )
    return found


# What ELB says in each state (DescribeTargetHealth's Reason and Description).
REGISTERING = ("initial", "Elb.RegistrationInProgress", "Target registration is in progress")
CHECKING = ("initial", "Elb.InitialHealthChecking", "Initial health checks in progress")
DRAINING = ("draining", "Target.DeregistrationInProgress", "Target deregistration is in progress")
HEALTHY = ("healthy", None, None)
_TIMEOUTS = {"L4TOUT", "L6TOUT", "L7TOUT"}
_NOT_YET = {"", "INI", "UNK"}
_PASSED = {"L4OK", "L6OK", "L7OK", "L7OKC"}


@dataclass(frozen=True)
class Tracked:
    """What the platform remembers of one server across observations: HAProxy keeps no
    history of a server that never came up."""

    server: str
    instance: str
    address: str
    port: int
    registered_at: float
    draining_since: float | None = None
    ever_up: bool = False
    failing_since: float | None = None

    def observe(self, stat: ServerStat | None, now: float) -> Tracked:
        """This server after one look at its ``show stat`` line."""
        if stat is None:
            return self
        failed = stat.check_status not in _NOT_YET and stat.check_status not in _PASSED
        if stat.up and not self.draining_since:
            return replace(self, ever_up=True, failing_since=None)
        if failed and stat.check_health == 0:
            return replace(self, failing_since=self.failing_since if self.failing_since is not None else now)
        return replace(self, failing_since=None)


def target_health(
    tracked: Tracked, stat: ServerStat | None, check: HealthCheck, now: float
) -> tuple[str, str | None, str | None]:
    """ELB's state, reason and description of a registered target, from HAProxy's view of it."""
    if tracked.draining_since is not None:
        return DRAINING
    if stat is None or (stat.check_status in _NOT_YET and not stat.up):
        return REGISTERING
    if stat.up:
        return HEALTHY
    if not tracked.ever_up:
        waited = (check.unhealthy_threshold - 1) * check.interval_seconds
        if tracked.failing_since is None or now - tracked.failing_since < waited:
            return CHECKING
    return ("unhealthy", *_unhealthy_reason(stat))


def _unhealthy_reason(stat: ServerStat) -> tuple[str, str]:
    said = f" ({stat.check_description})" if stat.check_description else ""
    if stat.check_status == "L7STS":
        return "Target.ResponseCodeMismatch", f"Health checks failed with these codes: [{stat.check_code}]"
    if stat.check_status in _TIMEOUTS:
        return "Target.Timeout", "Request timed out"
    return "Target.FailedHealthChecks", f"Health checks failed{said}"


@dataclass
class LoadBalancer:
    """A running HAProxy for one fleet; :meth:`stop` ends it."""

    balancer: Balancer
    process: subprocess.Popen[bytes]
    log: Path
    servers: dict[str, Tracked] = field(default_factory=dict)

    @classmethod
    def start(cls, balancer: Balancer, directory: Path) -> LoadBalancer:
        """Write the config, check it, start HAProxy in the foreground and wait for its socket."""
        config = directory / f"{balancer.name}.cfg"
        config.write_text(config_text(balancer))
        checked = subprocess.run(["haproxy", "-c", "-q", "-f", str(config)], capture_output=True, text=True)
        if checked.returncode != 0:
            raise LoadBalancerError(f"haproxy rejects {config}: {checked.stdout}{checked.stderr}".strip())
        log = directory / f"{balancer.name}.log"
        with open(log, "wb") as output:
            process = subprocess.Popen(
                ["haproxy", "-db", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        running = cls(balancer, process, log)
        deadline = time.monotonic() + 10
        while True:
            try:
                running.command("show info")
                return running
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    running.stop()
                    raise LoadBalancerError(
                        f"haproxy for {balancer.name} did not start: {log.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://{self.balancer.listen_host}:{self.balancer.listen_port}"

    def command(self, line: str) -> str:
        """Send one runtime API command; its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(SOCKET_TIMEOUT)
            connection.connect(str(self.balancer.socket))
            connection.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def commands(self, lines: Sequence[str]) -> None:
        """Send commands in order; any answer that is an error stops with it."""
        for line in lines:
            answer = self.command(line).strip()
            if answer and not _accepted(answer):
                raise LoadBalancerError(f"haproxy for {self.balancer.name} refused {line!r}: {answer}")

    def stats(self) -> dict[str, ServerStat]:
        return parse_stat(self.command("show stat"), self.balancer.name)

    def stop(self) -> None:
        """Stop HAProxy (SIGTERM: at once), kill it if it hangs."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _accepted(answer: str) -> bool:
    """HAProxy answers nothing, or a sentence, to commands that worked."""
    return answer in ("New server registered.", "Server deleted.") or not any(
        word in answer.lower() for word in ("unknown", "error", "not found", "cannot", "invalid", "require", "no such")
    )
