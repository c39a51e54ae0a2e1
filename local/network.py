"""The local platform's private network: one bridge per platform, one network namespace per instance.

Each running local platform takes a bridge ``slipway<N>`` (the first free ``N`` from 0 to
63 whose range no route of this machine already covers) carrying ``10.231.<N>.1/24`` on
the host side. Every instance gets its own network namespace ``slipway<N>-<slot>`` with
one veth pair: ``eth0`` inside at ``10.231.<N>.<slot + 1>/24``, ``sw<N>v<slot>`` on the
bridge. Instances get no default route and this machine does not forward between
interfaces (``ip_forward`` is left as it is, 0 on a stock machine), so an instance reaches
only the bridge: the host's address on it, where moto serves the local AWS, and the
other instances. The load balancer reaches instances at their bridge addresses.

What is computed (names, addresses, the ``ip`` command lines) is pure and tested for its
exact text; :class:`Bridge` runs the commands and undoes them.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SUBNET_PREFIX = "10.231"  # 10.231.<N>.0/24 for bridge slipway<N>
BRIDGE_PREFIX = "slipway"
MAX_BRIDGES = 64
MAX_SLOTS = 253  # .2 to .254; .1 is the host's


class NetworkError(RuntimeError):
    """The platform's network could not be set up; the message says what to do."""


@dataclass(frozen=True)
class BridgePlan:
    """Names and addresses of bridge ``slipway<index>`` and of the instances on it."""

    index: int

    @property
    def name(self) -> str:
        return f"{BRIDGE_PREFIX}{self.index}"

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{SUBNET_PREFIX}.{self.index}.0/24")

    @property
    def host_address(self) -> str:
        """The host's address on the bridge: where instances reach the local AWS."""
        return str(self.network.network_address + 1)

    def instance_address(self, slot: int) -> str:
        if not 1 <= slot <= MAX_SLOTS:
            raise ValueError(f"slot {slot} is outside 1..{MAX_SLOTS}")
        return str(self.network.network_address + 1 + slot)

    def namespace(self, slot: int) -> str:
        return f"{self.name}-{slot}"

    def veth(self, slot: int) -> str:
        """The host end of the instance's veth pair (at most 15 characters, as Linux requires)."""
        return f"sw{self.index}v{slot}"


def bridge_up(plan: BridgePlan) -> list[list[str]]:
    """Commands that create the bridge (the first fails if another platform took this index)."""
    return [
        ["ip", "link", "add", plan.name, "type", "bridge"],
        ["ip", "addr", "add", f"{plan.host_address}/{plan.network.prefixlen}", "dev", plan.name],
        ["ip", "link", "set", plan.name, "up"],
    ]


def bridge_down(plan: BridgePlan) -> list[list[str]]:
    return [["ip", "link", "del", plan.name]]


def instance_up(plan: BridgePlan, slot: int) -> list[list[str]]:
    """Commands that give an instance its namespace, its veth pair on the bridge and its address."""
    namespace, veth = plan.namespace(slot), plan.veth(slot)
    address = f"{plan.instance_address(slot)}/{plan.network.prefixlen}"
    return [
        ["ip", "netns", "add", namespace],
        ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace],
        ["ip", "link", "set", veth, "master", plan.name, "up"],
        ["ip", "-n", namespace, "addr", "add", address, "dev", "eth0"],
        ["ip", "-n", namespace, "link", "set", "eth0", "up"],
        ["ip", "-n", namespace, "link", "set", "lo", "up"],
    ]


def instance_down(plan: BridgePlan, slot: int) -> list[list[str]]:
    """Deleting the namespace deletes its end of the veth pair, and so the pair."""
    return [["ip", "netns", "del", plan.namespace(slot)]]


def free_indexes(links: Iterable[str], routes: Iterable[str]) -> list[int]:
    """Bridge indexes not taken by an existing link and whose range no existing route overlaps.

    ``routes`` are destinations as ``ip -j route`` prints them (``default`` is ignored: it
    overlaps everything and is the way out, not a local range).
    """
    taken = set(links)
    networks = []
    for destination in routes:
        if destination == "default":
            continue
        try:
            networks.append(ipaddress.IPv4Network(destination if "/" in destination else f"{destination}/32"))
        except ValueError:
            continue  # IPv6 and the like: cannot overlap an IPv4 range
    return [
        index
        for index in range(MAX_BRIDGES)
        if BridgePlan(index).name not in taken and not any(BridgePlan(index).network.overlaps(n) for n in networks)
    ]


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NetworkError(f"`{' '.join(argv)}` failed: {result.stderr.strip() or result.returncode}")
    return result


def _links() -> list[str]:
    return [link["ifname"] for link in json.loads(_run(["ip", "-j", "link", "show"]).stdout or "[]")]


def _routes() -> list[str]:
    return [route["dst"] for route in json.loads(_run(["ip", "-j", "route", "show", "table", "all"]).stdout or "[]")]


class Bridge:
    """The platform's bridge and the instance namespaces on it; :meth:`close` removes them all."""

    def __init__(self, plan: BridgePlan) -> None:
        self.plan = plan
        self._slots: set[int] = set()
        self._lock = threading.Lock()

    @classmethod
    def create(cls) -> Bridge:
        """Take the first free bridge index (the kernel refuses a name another platform took first)."""
        for index in free_indexes(_links(), _routes()):
            plan = BridgePlan(index)
            [add, *rest] = bridge_up(plan)
            if _run(add, check=False).returncode != 0:
                continue  # taken meanwhile
            bridge = cls(plan)
            try:
                for argv in rest:
                    _run(argv)
            except NetworkError:
                bridge.close()
                raise
            return bridge
        raise NetworkError(
            f"no free bridge: {BRIDGE_PREFIX}0..{MAX_BRIDGES - 1} are taken or their {SUBNET_PREFIX}.<N>.0/24 "
            "ranges overlap this machine's routes; stop other local platforms (`ip link show type bridge`)"
        )

    def add_instance(self) -> tuple[int, str, str]:
        """A new namespace on the bridge: its slot, its name and the instance's address."""
        with self._lock:
            slot = next((s for s in range(1, MAX_SLOTS + 1) if s not in self._slots), None)
            if slot is None:
                raise NetworkError(f"{self.plan.name} has no free address left ({MAX_SLOTS} instances)")
            self._slots.add(slot)
        try:
            for argv in instance_up(self.plan, slot):
                _run(argv)
        except NetworkError:
            self.remove_instance(slot)
            raise
        return slot, self.plan.namespace(slot), self.plan.instance_address(slot)

    def remove_instance(self, slot: int) -> None:
        for argv in instance_down(self.plan, slot):
            _run(argv, check=False)
        _run(["ip", "link", "del", self.plan.veth(slot)], check=False)  # in case the namespace never got it
        with self._lock:
            self._slots.discard(slot)

    @property
    def namespaces(self) -> list[str]:
        with self._lock:
            return [self.plan.namespace(slot) for slot in sorted(self._slots)]

    def close(self) -> None:
        """Remove every instance namespace left, then the bridge. Safe to call twice."""
        with self._lock:
            slots = sorted(self._slots)
        for slot in slots:
            self.remove_instance(slot)
        for argv in bridge_down(self.plan):
            _run(argv, check=False)


def leftovers(plan: BridgePlan) -> list[str]:
    """What of ``plan`` still exists on this machine: the bridge, namespaces, veth ends (for tests)."""
    found = [link for link in _links() if link == plan.name or link.startswith(f"sw{plan.index}v")]
    namespaces = _run(["ip", "netns", "list"], check=False).stdout.split()
    found += [name for name in namespaces if name.startswith(f"{plan.name}-")]
    return found
