"""The local platform's network (local.network): exact names, addresses and ip commands, and a
real bridge with an instance namespace that leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from local.network import (
    Bridge,
    BridgePlan,
    bridge_down,
    bridge_up,
    free_indexes,
    instance_down,
    instance_up,
    leftovers,
)

PLAN = BridgePlan(3)


def test_a_bridge_has_its_range_and_the_host_takes_its_first_address() -> None:
    assert (PLAN.name, str(PLAN.network), PLAN.host_address) == ("slipway3", "10.231.3.0/24", "10.231.3.1")
    assert (PLAN.instance_address(1), PLAN.instance_address(253)) == ("10.231.3.2", "10.231.3.254")
    assert (PLAN.namespace(7), PLAN.veth(7)) == ("slipway3-7", "sw3v7")
    assert len(BridgePlan(63).veth(253)) <= 15  # Linux's limit on interface names
    with pytest.raises(ValueError, match=r"slot 254 is outside 1\.\.253"):
        PLAN.instance_address(254)


def test_the_exact_commands_of_a_bridge_and_an_instance() -> None:
    assert bridge_up(PLAN) == [
        ["ip", "link", "add", "slipway3", "type", "bridge"],
        ["ip", "addr", "add", "10.231.3.1/24", "dev", "slipway3"],
        ["ip", "link", "set", "slipway3", "up"],
    ]
    assert bridge_down(PLAN) == [["ip", "link", "del", "slipway3"]]
    assert instance_up(PLAN, 2) == [
        ["ip", "netns", "add", "slipway3-2"],
        ["ip", "link", "add", "sw3v2", "type", "veth", "peer", "name", "eth0", "netns", "slipway3-2"],
        ["ip", "link", "set", "sw3v2", "master", "slipway3", "up"],
        ["ip", "-n", "slipway3-2", "addr", "add", "10.231.3.3/24", "dev", "eth0"],
        ["ip", "-n", "slipway3-2", "link", "set", "eth0", "up"],
        ["ip", "-n", "slipway3-2", "link", "set", "lo", "up"],
    ]
    # No default route is ever added: an instance reaches the bridge only.
    assert not any("route" in argv for argv in instance_up(PLAN, 2))
    assert instance_down(PLAN, 2) == [["ip", "netns", "del", "slipway3-2"]]


def test_an_index_is_free_when_neither_its_name_nor_its_range_is_in_use() -> None:
    links = ["lo", "eth0", "slipway0"]
    routes = ["default", "192.0.2.0/24", "10.231.1.0/24", "10.231.2.7", "fd00::/64"]
    assert free_indexes(links, routes)[:3] == [3, 4, 5]
    assert free_indexes([], ["10.231.0.0/16"]) == []


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2")
def test_a_real_bridge_and_namespace_come_and_go() -> None:
    bridge = Bridge.create()
    try:
        slot, namespace, address = bridge.add_instance()
        shown = subprocess.run(["ip", "-n", namespace, "-br", "addr", "show", "eth0"], capture_output=True, text=True)
        assert address in shown.stdout and "UP" in shown.stdout
        routes = subprocess.run(["ip", "-n", namespace, "route"], capture_output=True, text=True).stdout
        assert "default" not in routes
        assert set(leftovers(bridge.plan)) == {bridge.plan.name, bridge.plan.veth(slot), namespace}
        bridge.remove_instance(slot)
        assert leftovers(bridge.plan) == [bridge.plan.name]
        bridge.add_instance()
    finally:
        bridge.close()
    assert leftovers(bridge.plan) == []
