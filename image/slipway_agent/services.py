"""What systemd says about the app's units, and the few actions taken on them."""

from __future__ import annotations

import os
import re
import time

from . import host
from .units import UNIT_DIR, AppLayout, systemctl

# A unit in one of these states is still running its process (or about to).
RUNNING_STATES = ("active", "activating", "deactivating", "reloading")


def installed_units(layout: AppLayout, slot: str | None = None) -> dict[str, str]:
    """The app's unit files in ``/etc/systemd/system`` (of ``slot`` only, if given): ``{name: text}``."""
    return {
        name: read(os.path.join(UNIT_DIR, name))
        for name in sorted(os.listdir(UNIT_DIR))
        if layout.owns_unit(name) and (slot is None or layout.slot_of(name) == slot)
    }


def release_units(release_dir: str, slot: str) -> dict[str, str]:
    """The units rendered for a release in ``slot`` (``releases/<id>/units/<slot>``)."""
    units_dir = os.path.join(release_dir, "units", slot)
    return {name: read(os.path.join(units_dir, name)) for name in sorted(os.listdir(units_dir))}


def loaded_units(pattern: str) -> list[str]:
    """Names of the units systemd has loaded that match the glob ``pattern`` (transient ones too)."""
    result = host.run(
        ["systemctl", "list-units", "--all", "--plain", "--no-legend", "--no-pager", pattern], check=False
    )
    names = [line.split()[0] for line in result.stdout.splitlines() if line.split()]
    return [name for name in names if re.fullmatch(r"[A-Za-z0-9_.@:-]+\.service", name)]


def discard_unit(unit: str) -> None:
    """Stop a transient unit and forget a failed one, so its name can be used again."""
    host.run(systemctl("stop", unit), check=False)
    host.run(systemctl("reset-failed", unit), check=False)


def wait_stopped(unit: str, timeout: float) -> bool:
    """Wait until ``unit`` runs no process; ``False`` if it still does after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while host.unit_properties(unit).get("ActiveState") in RUNNING_STATES:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


def transient_exit(unit: str, port: int) -> str | None:
    """``None`` while the preflight process runs, else why it stopped."""
    state = host.unit_properties(unit)
    if state.get("ActiveState") in ("active", "activating", "reloading"):
        return None
    return (
        f"its web process exited (status {state.get('ExecMainStatus', '?')}) before answering on port {port} "
        f"(journalctl -u {unit})"
    )


def service_exit(unit: str) -> str | None:
    """``None`` while a unit runs, else a sentence saying how it stopped."""
    # A crashing Restart=always service spends its RestartSec in "auto-restart": that is an exit.
    state = host.unit_properties(unit)
    if state.get("ActiveState") in ("active", "activating") and state.get("SubState") != "auto-restart":
        return None
    return (
        f"{unit} exited (status {state.get('ExecMainStatus', '?')}, state {state.get('ActiveState')}/"
        f"{state.get('SubState')}) (journalctl -u {unit})"
    )


def read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()
