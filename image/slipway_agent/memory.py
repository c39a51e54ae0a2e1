"""Room for two releases at once: while a release starts beside the serving one (docs/switch.md)
both run, so the instance must hold a second copy of the app. Pure but for the two readings."""

from __future__ import annotations

from collections.abc import Iterable

from . import host
from .space import format_bytes


def memory_available(meminfo: str) -> int | None:
    """``MemAvailable`` of ``/proc/meminfo``'s text, in bytes; ``None`` if it is not there."""
    for line in meminfo.splitlines():
        name, _, value = line.partition(":")
        if name == "MemAvailable":
            return int(value.split()[0]) * 1024
    return None


def units_memory(values: Iterable[str]) -> int:
    """The sum of ``MemoryCurrent`` values (``systemctl show``): bytes, ignoring ``[not set]``."""
    return sum(int(value) for value in values if value.isdigit())


def no_room(release: str, serving: str, used: int, available: int | None) -> str | None:
    """Why ``release`` cannot start beside ``serving`` (which uses ``used`` bytes), or ``None``."""
    if available is None or used <= available:
        return None
    return (
        f"not enough memory to start {release} beside {serving}: {serving} uses {format_bytes(used)} and "
        f"{format_bytes(available)} is available; both run while the switch happens, so use an instance "
        "type with more memory (instance_type) or make the app smaller"
    )


def serving_memory(units: Iterable[str]) -> int:
    """What the units use now, as systemd counts it (their cgroups)."""
    values = [
        host.run(["systemctl", "show", "--property=MemoryCurrent", "--value", unit], check=False).stdout.strip()
        for unit in units
    ]
    return units_memory(values)
