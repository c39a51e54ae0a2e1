"""The front: the instance's own HAProxy, between the load balancer and the app's releases
(docs/switch.md).

For each app, a frontend on the app's port (where the target group sends traffic and health
checks) and a backend of two servers on loopback, the slots ``a`` and ``b``: the release that
serves runs in one, ready; the other is in maintenance, or runs the release being activated
beside it. A switch is three commands on the front's admin socket (the new slot's address,
the new slot ready, the old one in maintenance): no reload, so no connection from the load
balancer closes, and requests already at the old slot finish there. The app's file is then
rewritten to match, so a restart or a boot of the front serves the same slot.

The texts (the app's file, the commands) and the reading of ``show stat`` are pure and tested
for their exact text; :class:`Front` talks to the socket.
"""

from __future__ import annotations

import csv
import io
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

SLOTS = ("a", "b")
# The front's own configuration (global, defaults: image/front.cfg, installed by provisioning)
# and one file per app beside it, read in name order.
CONFIG_FILE = "/etc/slipway/front.cfg"
APPS_DIR = "/etc/slipway/front.d"
SOCKET = "/run/slipway-front/admin.sock"  # RuntimeDirectory of the front's unit
UNIT = "slipway-front.service"
LOOPBACK = "127.0.0.1"
# The address of a slot that has never run a release: HAProxy needs one; it is in maintenance.
UNUSED_PORT = 1
SOCKET_TIMEOUT = 5.0


class FrontError(RuntimeError):
    """The front refused a command or cannot be reached; the message says which."""


def front_file(app: str) -> str:
    """The app's file of the front."""
    return f"{APPS_DIR}/{app}.cfg"


def other(slot: str) -> str:
    """The slot that is not ``slot``."""
    return SLOTS[1 - SLOTS.index(slot)]


@dataclass(frozen=True)
class AppFront:
    """One app's part of the front: its public port, the slot that serves (``None``: none yet) and
    each slot's port on loopback."""

    app: str
    port: int
    live: str | None = None
    ports: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.live is not None and self.live not in SLOTS:
            raise ValueError(f"slot {self.live!r} is not one of {', '.join(SLOTS)}")
        if self.live is not None and self.live not in self.ports:
            raise ValueError(f"the serving slot {self.live} has no port")

    @property
    def path(self) -> str:
        return front_file(self.app)

    def serving(self, slot: str, port: int) -> AppFront:
        """This front once ``slot`` (on ``port``) serves."""
        return AppFront(self.app, self.port, slot, {**self.ports, slot: port})


def render_app(front: AppFront) -> str:
    """The app's file of the front: its frontend and its two-slot backend."""
    lines = [
        f"# Written by the Slipway deploy agent: {front.app}'s front (docs/switch.md). Switched at run time",
        "# through the admin socket, and rewritten after each switch to match.",
        f"frontend {front.app}",
        f"    bind :{front.port}",
        f"    default_backend {front.app}",
        "",
        f"backend {front.app}",
        # A connection the slot refuses is tried again, on the other slot if this one is gone: the
        # request never reached the app, so a retry cannot run it twice. (A request the app received
        # is never retried; none is cut anyway: the old slot stops only once it has none open.)
        "    retries 2",
        "    retry-on conn-failure",
        "    option redispatch 1",
    ]
    for slot in SLOTS:
        state = "" if slot == front.live else " disabled"
        lines.append(f"    server {slot} {LOOPBACK}:{front.ports.get(slot, UNUSED_PORT)}{state}")
    return "\n".join(lines) + "\n"


def switch_commands(app: str, to: str, port: int) -> list[str]:
    """The admin socket's commands that make slot ``to`` (listening on ``port``) serve ``app`` and
    take the other slot out: new requests go to ``to``, those in flight at the other finish."""
    return [
        f"set server {app}/{to} addr {LOOPBACK} port {port}",
        f"set server {app}/{to} state ready",
        f"set server {app}/{other(to)} state maint",
    ]


def open_requests(stat_csv: str, app: str, slot: str) -> int:
    """How many requests ``show stat`` says are open at ``app``'s slot ``slot`` (its ``scur``)."""
    text = stat_csv.lstrip("# ")
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("pxname") == app and row.get("svname") == slot:
            return int(row.get("scur") or 0)
    raise FrontError(f"the front has no server {app}/{slot}; is {APPS_DIR}/{app}.cfg loaded?")


class Front:
    """The front's admin socket."""

    def __init__(self, path: str = SOCKET) -> None:
        self.path = path

    def command(self, text: str) -> str:
        """Send one command; its answer. :class:`FrontError` if the front is not reachable or refused it."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.settimeout(SOCKET_TIMEOUT)
                connection.connect(self.path)
                connection.sendall(text.encode() + b"\n")
                chunks = []
                while chunk := connection.recv(65536):
                    chunks.append(chunk)
        except OSError as error:
            raise FrontError(f"the front ({UNIT}) does not answer on {self.path}: {error}") from None
        answer = b"".join(chunks).decode(errors="replace")
        first = answer.strip().splitlines()[0] if answer.strip() else ""
        if first.startswith(("Unknown", "No such", "Require", "Invalid", "unknown", "'set server")):
            raise FrontError(f"the front refused {text!r}: {first}")
        return answer

    def switch(self, app: str, to: str, port: int) -> None:
        for text in switch_commands(app, to, port):
            self.command(text)

    def open_requests(self, app: str, slot: str) -> int:
        return open_requests(self.command("show stat"), app, slot)
