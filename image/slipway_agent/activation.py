"""Activation: run a staged release's release phase, start it in the idle slot beside the one
that serves, health-check it there, switch the instance's front to it, health-check through
the front, then drain and stop the old slot (docs/switch.md). The release that served keeps
serving until the new one answers through the front: a failed activation costs it nothing.

The front, the slots' units and ``SERVING`` agree after any kill. Before the first change an
``ACTIVATING`` record names the release, the slot and port it starts in and the release it
replaces; ``SERVING`` is written only once the new release answered through the front, and
the record is removed after. Every run starts with :meth:`Activator.recover`: a record left
by a killed run is either finished (``SERVING`` names the new slot) or undone (the front
back to what ``SERVING`` names, the new slot emptied). The release phase runs as a transient
unit that outlives a killed agent; the next run waits for it to finish before running its own.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from slipway_release.manifest import Manifest
from slipway_release.procfile import RELEASE, WEB

from . import host
from .front import SLOTS, AppFront, Front, FrontError, front_file, other, render_app
from .front import UNIT as FRONT_UNIT
from .memory import memory_available, no_room, serving_memory
from .report import DeployFailed, NoSuchProcess, NotStaged, Report
from .services import (
    RUNNING_STATES,
    discard_unit,
    installed_units,
    loaded_units,
    release_units,
    service_exit,
    wait_stopped,
)
from .staged import (
    instance_runtime,
    one_off_environment,
    read_processes,
    require_pinned,
    staged_manifest,
    staged_problem,
)
from .state import (
    ACTIVATING,
    KEEP_RELEASES,
    SERVING,
    Intent,
    Serving,
    parse_intent,
    parse_serving,
    plan_recovery,
    protected_releases,
    releases_to_prune,
    render_intent,
    render_serving,
)
from .units import (
    APP,
    RELEASE_PHASE_TIMEOUT_SECONDS,
    UNIT_DIR,
    AppLayout,
    journal_command,
    plan_unit_changes,
    release_identifier,
    release_phase_command,
    render_slot_env,
    systemctl,
)

PREVIOUS_FILE = "PREVIOUS"
MEMINFO = "/proc/meminfo"
# How long the old slot may finish the requests it had when the front switched away from it.
DRAIN_SECONDS = 30.0


class Activator:
    """Moves one app on this instance between staged releases."""

    def __init__(
        self,
        layout: AppLayout,
        report: Report,
        schema: dict[str, Any],
        runtimes_path: str,
        pause_at: str | None,
        front: Front | None = None,
    ):
        self.layout = layout
        self.report = report
        self.schema = schema
        self.runtimes_path = runtimes_path
        self.pause_at = pause_at
        self.front = front or Front()
        # The activation in flight, from its first change on: a failure must then undo it.
        self.intent: Intent | None = None

    @property
    def switched(self) -> bool:
        """True from the first change (the new slot's units) until it is complete or undone."""
        return self.intent is not None

    @property
    def intent_file(self) -> str:
        return os.path.join(self.layout.app_dir, ACTIVATING)

    @property
    def serving_file(self) -> str:
        return os.path.join(self.layout.app_dir, SERVING)

    @property
    def previous_file(self) -> str:
        return os.path.join(self.layout.app_dir, PREVIOUS_FILE)

    def deployed(self) -> str | None:
        return (host.read_text(self.layout.deployed_file) or "").strip() or None

    def previous(self) -> str | None:
        return (host.read_text(self.previous_file) or "").strip() or None

    def serving(self) -> Serving | None:
        return parse_serving(host.read_text(self.serving_file))

    # The flow -----------------------------------------------------------------------------------

    def activate(self, release_id: str, previous: str | None, stage_hint: str, digest: str | None = None) -> None:
        """Make the staged ``release_id`` the serving release, replacing ``previous``.

        :class:`NotStaged` (nothing changed) if it is not staged, naming ``stage_hint``;
        :class:`DeployFailed` (nothing changed) if it was staged from a ``release.json`` other than
        the one with sha256 ``digest``.
        """
        with self.report.phase("verify"):
            problem = staged_problem(self.layout, release_id)
            if problem is None:
                require_pinned(self.layout, release_id, digest)
        if problem is not None:
            raise NotStaged(f"{problem}; stage it first: {stage_hint}")
        self.report.step(f"Activating {release_id}" + (f" over {previous}" if previous else ""))
        manifest = staged_manifest(self.layout, release_id, self.schema)
        processes = read_processes(release_id, os.path.join(self.layout.release_dir(release_id), APP))
        if RELEASE in processes:
            runtime = instance_runtime(manifest, self.runtimes_path)
            with self.report.phase("release"):
                self._release_phase(
                    release_id, processes[RELEASE], one_off_environment(self.layout, release_id, manifest, runtime)
                )
        self._start_beside(release_id, previous, manifest)
        self.prune(protected_releases(release_id, previous))
        self.report.step(f"{release_id} is serving" + (f" (was {previous})" if previous else ""))

    def ensure_running(self, release_id: str, digest: str | None = None) -> str:
        """The release is already deployed: confirm it is healthy through the front, restart it if not.

        Returns ``unchanged`` or ``restarted``; :class:`DeployFailed` if it does not come up, or was
        staged from a ``release.json`` other than the one with sha256 ``digest``.
        """
        self.report.step(f"{release_id} is already deployed; checking it")
        require_pinned(self.layout, release_id, digest)
        manifest = staged_manifest(self.layout, release_id, self.schema)
        serving = self.serving()
        if serving is not None and serving.release == release_id:
            units = release_units(self.layout.release_dir(release_id), serving.slot)
            try:
                self._check_serving(serving, units, manifest)
                self.report.step(f"{release_id} is running and healthy; nothing to do")
                return "unchanged"
            except DeployFailed as error:
                self.report.detail(f"{error}; starting it again beside itself")
        self._start_beside(release_id, release_id, manifest)
        return "restarted"

    def restart(self, release_id: str, process: str | None = None, digest: str | None = None) -> str:
        """Restart the serving release (one step of a rolling restart): a fresh copy of it started in
        the other slot and switched to, so no request finds it down; or only its processes of type
        ``process`` (not ``web``, which the front serves), restarted where they run. :class:`DeployFailed`
        if they do not come up; :class:`NoSuchProcess` (nothing done) for a type the release does not run."""
        require_pinned(self.layout, release_id, digest)
        manifest = staged_manifest(self.layout, release_id, self.schema)
        serving = self.serving()
        if serving is None or serving.release != release_id:
            raise DeployFailed(f"{release_id} is not what the front serves here; deploy it first")
        units = release_units(self.layout.release_dir(release_id), serving.slot)
        if process is not None:
            types = sorted({t for t in map(self.layout.process_type_of, units) if t})
            if process not in types:
                raise NoSuchProcess(
                    f"{release_id} runs no {process} process on this instance (it runs {', '.join(types) or 'none'})"
                )
        if process is not None and process != WEB:
            chosen = {name: text for name, text in units.items() if self.layout.process_type_of(name) == process}
            self.report.step(f"Restarting {release_id}'s {process} processes")
            with self.report.phase("restart"):
                host.run(systemctl("restart", *chosen))
            with self.report.phase("healthy"):
                self._check_units(chosen, manifest)
        else:
            self.report.step(f"Restarting {release_id}: a fresh copy in slot {other(serving.slot)}, then the switch")
            with self.report.phase("restart"):
                self._start_beside(release_id, release_id, manifest)
        self.report.step(f"{release_id} restarted and healthy")
        return "restarted"

    def roll_back(self, previous: str | None) -> None:
        """After a failure past the first change: the front back to what ``SERVING`` names (which
        never stopped), the new slot's units removed (``previous`` only says what that was)."""
        intent = self.intent
        serving = self.serving()
        self.report.step(f"Switching back to {serving.release if serving else previous or 'nothing'}")
        self._undo(serving, (intent.slot,) if intent else tuple(SLOTS))
        self.intent = None

    def recover(self, at_boot: bool = False) -> None:
        """Repair what a killed activation left (an ``ACTIVATING`` record): see the module doc.

        ``at_boot`` (``deploy --recover``, before the app's units and the front start: they are
        ordered after it): the records, files and units put right without starting or asking
        anything; systemd starts them next."""
        text = host.read_text(self.intent_file)
        if text is None:
            return
        intent = parse_intent(text)
        plan = plan_recovery(intent, self.serving())
        if plan.finish:
            assert plan.serving is not None
            self.report.step(
                f"Finishing the activation of {plan.serving.release}, interrupted after it answered through the front"
            )
            self._commit(plan.serving, plan.previous, live=not at_boot)
            return
        interrupted = intent.release if intent else "a release"
        self.report.step(
            f"An activation of {interrupted} was interrupted; putting back "
            f"{plan.serving.release if plan.serving else 'nothing'} (what SERVING names)"
        )
        with self.report.phase("recover"):
            try:
                self._undo(plan.serving, plan.remove, live=not at_boot)
            except Exception as error:  # the run goes on: activating a good release repairs the rest
                self.report.detail(f"the repair did not complete: {error}")

    def prune(self, keep: set[str]) -> None:
        """Delete release directories beyond the newest :data:`KEEP_RELEASES` (never ``keep``'s, nor
        the serving one's)."""
        serving = self.serving()
        protect = keep | ({serving.release} if serving else set())
        for name in releases_to_prune(os.listdir(self.layout.releases_dir), KEEP_RELEASES, protect):
            shutil.rmtree(self.layout.release_dir(name), ignore_errors=True)

    # Steps ----------------------------------------------------------------------------------------

    def _start_beside(self, release_id: str, previous: str | None, manifest: Manifest) -> None:
        """Start ``release_id`` in the slot that does not serve, check it there, switch the front to
        it, check it through the front, commit (``SERVING``), then drain and empty the old slot."""
        serving = self.serving()
        if serving is not None:
            running = release_units(self.layout.release_dir(serving.release), serving.slot)
            problem = no_room(
                release_id, serving.release, serving_memory(running), memory_available(host.read_text(MEMINFO) or "")
            )
            if problem:
                raise DeployFailed(problem)
        slot = other(serving.slot) if serving else SLOTS[0]
        units = release_units(self.layout.release_dir(release_id), slot)
        has_web = any(self.layout.process_type_of(name) == WEB for name in units)
        port = host.spare_port() if has_web else 0
        with self.report.phase("start"):
            self.report.step(
                f"Starting {release_id} in slot {slot}"
                + (f" on port {port}" if has_web else "")
                + (f", beside {serving.release} in slot {serving.slot}" if serving else "")
            )
            self.intent = Intent(release_id, previous, slot, port)
            host.write_atomic(self.intent_file, render_intent(self.intent))
            os.makedirs(self.layout.slots_dir, mode=0o755, exist_ok=True)
            host.write_atomic(self.layout.slot_env_file(slot), render_slot_env(port))
            self._install_slot(slot, units, start=True)
        host.pause_if("started", self.pause_at)
        with self.report.phase("healthy"):
            self._check_units(units, manifest, port=port if has_web else None)
        new = Serving(release_id, slot, port)
        with self.report.phase("switch"):
            self.report.step(f"Switching the front to slot {slot}")
            self._switch_front(new, manifest)
        host.pause_if("switched", self.pause_at)
        with self.report.phase("healthy"):
            self._check_serving(new, units, manifest)
        host.write_atomic(self.serving_file, render_serving(new))
        host.pause_if("committed", self.pause_at)
        self._commit(new, previous, live=True)
        self.intent = None

    def _commit(self, serving: Serving, previous: str | None, *, live: bool) -> None:
        """After ``SERVING`` names ``serving``: ``DEPLOYED``, ``current`` and the front (its file; the
        running front too, if ``live``) follow it, the other slot is drained (if ``live``) and emptied,
        ``PREVIOUS`` names ``previous`` (unless it is the same release: a restart), the record goes."""
        self._follow(serving)
        self._write_front(serving, live=live)
        old = other(serving.slot)
        if live and installed_units(self.layout, old):
            with self.report.phase("drain"):
                self._drain(old)
        self._install_slot(old, {}, start=live)
        if previous and previous != serving.release:
            host.write_atomic(self.previous_file, previous + "\n")
        _remove(self.intent_file)

    def _undo(self, serving: Serving | None, remove: tuple[str, ...], *, live: bool = True) -> None:
        """The front back to ``serving`` (``None``: to nothing), the slots in ``remove`` emptied, the
        records and ``current`` agreeing with ``SERVING`` again; then its check, if ``live``."""
        if serving is not None:
            self._write_front(serving, live=live)
        else:  # nothing served before: the front serves nothing of the app either
            _remove(front_file(self.layout.app))
            if live:
                host.run(systemctl("reload-or-restart", FRONT_UNIT), check=False)
        for slot in remove:
            if live and installed_units(self.layout, slot):
                self._drain(slot)  # the front may have sent it requests before the kill: let them finish
            self._install_slot(slot, {}, start=live)
        if serving is None:
            if os.path.lexists(self.layout.current):
                os.unlink(self.layout.current)
            _remove(self.layout.deployed_file)
        else:
            self._follow(serving)
        _remove(self.intent_file)
        if serving is None or not live:
            return
        units = release_units(self.layout.release_dir(serving.release), serving.slot)
        manifest = staged_manifest(self.layout, serving.release, self.schema)
        stopped = [name for name in units if service_exit(name)]
        if stopped:
            host.run(systemctl("restart", *stopped))
        self._check_serving(serving, units, manifest)
        self.report.detail(f"{serving.release} is answering again")

    def _follow(self, serving: Serving) -> None:
        """``DEPLOYED`` and ``current`` name what ``SERVING`` does (they are derived from it)."""
        host.write_atomic(self.layout.deployed_file, serving.release + "\n")
        host.point_symlink(self.layout.current, f"releases/{serving.release}")

    def _install_slot(self, slot: str, wanted: dict[str, str], *, start: bool) -> None:
        """Make ``slot``'s installed units exactly ``wanted``: the others stopped and removed, these
        written, enabled and (if ``start``) restarted."""
        changes = plan_unit_changes(installed_units(self.layout, slot), wanted)
        if changes.remove:
            # Stopped even at boot (not ``start``): a unit of a slot being emptied must never run.
            host.run(systemctl("disable", "--now", *changes.remove), check=False)
            for name in changes.remove:
                os.unlink(os.path.join(UNIT_DIR, name))
        for name, text in changes.write.items():
            host.write_atomic(os.path.join(UNIT_DIR, name), text)
        if changes.write or changes.remove:
            host.run(systemctl("daemon-reload"))
        if changes.write:
            host.run(systemctl("enable", *changes.write))
        if changes.restart and start:
            host.run(systemctl("restart", *changes.restart))

    def _write_front(self, serving: Serving, *, live: bool) -> None:
        """The front's file for the app, ``serving``'s slot ready; and (if ``live``) the running front
        switched to it."""
        manifest = staged_manifest(self.layout, serving.release, self.schema)
        front = AppFront(self.layout.app, manifest.health_check.port, serving.slot, {serving.slot: serving.port})
        if live:
            self._switch_front(serving, manifest)
        else:
            host.write_atomic(front.path, render_app(front))

    def _switch_front(self, serving: Serving, manifest: Manifest) -> None:
        """Send new requests to ``serving``'s slot: through the admin socket when the front already
        serves this app on its port, else its file written and the front reloaded (the app's first
        release here, or a changed port: nothing was served through it to lose)."""
        front = AppFront(self.layout.app, manifest.health_check.port, serving.slot, {serving.slot: serving.port})
        text = render_app(front)
        loaded = host.read_text(front.path)
        if loaded is not None and f"bind :{front.port}\n" in loaded:
            try:
                self.front.switch(self.layout.app, serving.slot, serving.port)
                host.write_atomic(front.path, text)
                return
            except FrontError as error:  # not running, or without this app: the file and a reload then
                self.report.detail(f"{error}; reloading it")
        os.makedirs(os.path.dirname(front.path), mode=0o755, exist_ok=True)
        host.write_atomic(front.path, text)
        host.run(systemctl("reload-or-restart", FRONT_UNIT))
        self._wait_front(front.port)

    def _wait_front(self, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not host.port_open(port):
            if time.monotonic() >= deadline:
                raise DeployFailed(
                    f"the front ({FRONT_UNIT}) does not listen on port {port} after a reload "
                    f"(journalctl -u {FRONT_UNIT})"
                )
            time.sleep(0.05)

    def _drain(self, slot: str) -> None:
        """Wait until the front has no request open at ``slot`` (at most :data:`DRAIN_SECONDS`)."""
        deadline = time.monotonic() + DRAIN_SECONDS
        try:
            while self.front.open_requests(self.layout.app, slot) > 0:
                if time.monotonic() >= deadline:
                    self.report.detail(f"slot {slot} still had requests open after {DRAIN_SECONDS:g}s; stopping it")
                    return
                time.sleep(0.1)
        except FrontError as error:
            self.report.detail(f"{error}; stopping slot {slot} without waiting")

    def _release_phase(self, release_id: str, command: str, environment: dict[str, str]) -> None:
        self._wait_for_orphaned_release_phases()
        self.report.step(f"Running release phase: {command}")
        identifier = release_identifier(self.layout)
        code = host.run_teed(
            release_phase_command(self.layout, release_id, command, environment),
            journal_command(identifier),
            self.report.out,
        )
        if code != 0:
            raise DeployFailed(
                f"release phase `{command}` exited with {code}; fix it and publish again (journalctl -t {identifier})"
            )

    def _wait_for_orphaned_release_phases(self) -> None:
        """A killed agent's release phase goes on in systemd: let it finish (a migration is not
        stopped halfway; two never run at once), then forget its unit so the name is free."""
        for unit in loaded_units(self.layout.release_phase_unit("*")):
            if host.unit_properties(unit).get("ActiveState") in RUNNING_STATES:
                self.report.step(f"Waiting for {unit}, left running by an interrupted deploy, to finish")
                with self.report.phase("release_wait"):
                    if not wait_stopped(unit, RELEASE_PHASE_TIMEOUT_SECONDS + 30):
                        self.report.detail(f"{unit} still runs after its time limit; stopping it")
            discard_unit(unit)

    def _check_serving(self, serving: Serving, units: dict[str, str], manifest: Manifest) -> None:
        """``serving`` answers through the front, on the app's real port, and its units all run."""
        self._check_units(units, manifest, port=manifest.health_check.port if serving.port else None)

    def _check_units(self, units: dict[str, str], manifest: Manifest, port: int | None = None) -> None:
        """The web process answers its health check on ``port`` (if given), and every unit runs."""
        web = [name for name in units if self.layout.process_type_of(name) == WEB]
        if web and port is not None:
            health = manifest.health_check
            try:
                host.wait_healthy(
                    port, health.path, health.timeout, lambda: service_exit(web[0]), health.codes, health.codes_text
                )
            except (RuntimeError, TimeoutError) as error:
                self.report.show_log(web[0])
                raise DeployFailed(f"{manifest.id} started but is not healthy: {error}") from None
            self.report.detail(f"answered {health.path} on port {port}")
        for name in units:
            stopped = service_exit(name)
            if stopped:
                self.report.show_log(name)
                raise DeployFailed(f"{manifest.id}: {stopped}")


def _remove(path: str) -> None:
    if os.path.lexists(path):
        os.unlink(path)
