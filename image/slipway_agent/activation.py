"""Activation: run a staged release's release phase, move the units and ``current`` to it,
restart, health-check on the real port; on failure put the previous release back.

``current``, the installed units and ``DEPLOYED`` agree after any kill. Before the first
change an ``ACTIVATING`` record names the release and the one it replaces; ``DEPLOYED``
is written only once the new release answered its health check, and the record is removed
after. Every run starts with :meth:`Activator.recover`: a record left by a killed run is
either finished (``DEPLOYED`` was written) or undone (units and link back to what
``DEPLOYED`` names, restarted). The release phase runs as a transient unit that outlives a
killed agent; the next run waits for it to finish before running its own.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from slipway_release.manifest import Manifest
from slipway_release.procfile import RELEASE, WEB

from . import host
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
from .staged import instance_runtime, one_off_environment, read_processes, staged_manifest, staged_problem
from .state import (
    ACTIVATING,
    KEEP_RELEASES,
    Intent,
    parse_intent,
    plan_recovery,
    protected_releases,
    releases_to_prune,
    render_intent,
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
    systemctl,
)

PREVIOUS_FILE = "PREVIOUS"


class Activator:
    """Moves one app on this instance between staged releases."""

    def __init__(
        self, layout: AppLayout, report: Report, schema: dict[str, Any], runtimes_path: str, pause_at: str | None
    ):
        self.layout = layout
        self.report = report
        self.schema = schema
        self.runtimes_path = runtimes_path
        self.pause_at = pause_at
        # True from the first change to the units or ``current``: a failure must then restore.
        self.switched = False

    @property
    def intent_file(self) -> str:
        return os.path.join(self.layout.app_dir, ACTIVATING)

    @property
    def previous_file(self) -> str:
        return os.path.join(self.layout.app_dir, PREVIOUS_FILE)

    def deployed(self) -> str | None:
        return (host.read_text(self.layout.deployed_file) or "").strip() or None

    def previous(self) -> str | None:
        return (host.read_text(self.previous_file) or "").strip() or None

    # The flow -----------------------------------------------------------------------------------

    def activate(self, release_id: str, previous: str | None, stage_hint: str) -> None:
        """Make the staged ``release_id`` the running release, replacing ``previous``.

        :class:`NotStaged` (nothing changed) if it is not staged, naming ``stage_hint``.
        """
        with self.report.phase("verify"):
            problem = staged_problem(self.layout, release_id)
        if problem is not None:
            raise NotStaged(f"{problem}; stage it first: {stage_hint}")
        self.report.step(f"Activating {release_id}" + (f" over {previous}" if previous else ""))
        release_dir = self.layout.release_dir(release_id)
        manifest = staged_manifest(self.layout, release_id, self.schema)
        processes = read_processes(release_id, os.path.join(release_dir, APP))
        units = release_units(release_dir)
        if RELEASE in processes:
            runtime = instance_runtime(manifest, self.runtimes_path)
            with self.report.phase("release"):
                self._release_phase(
                    release_id, processes[RELEASE], one_off_environment(self.layout, release_id, manifest, runtime)
                )
        with self.report.phase("switch"):
            self.report.step(f"Switching to {release_id}")
            host.write_atomic(self.intent_file, render_intent(Intent(release_id, previous)))
            self.switched = True
            self._apply_units(units, f"releases/{release_id}")
        host.pause_if("restarted", self.pause_at)
        with self.report.phase("healthy"):
            self._wait_until_healthy(units, manifest)
        host.pause_if("healthy", self.pause_at)
        host.write_atomic(self.layout.deployed_file, release_id + "\n")
        host.pause_if("committed", self.pause_at)
        self._finish(previous)
        self.prune(protected_releases(release_id, previous))
        self.report.step(f"{release_id} is running" + (f" (was {previous})" if previous else ""))

    def ensure_running(self, release_id: str) -> str:
        """The release is already deployed: confirm it is healthy, restart it if not.

        Returns ``unchanged`` or ``restarted``; :class:`DeployFailed` if it does not come up.
        """
        self.report.step(f"{release_id} is already deployed; checking it")
        release_dir = self.layout.release_dir(release_id)
        manifest = staged_manifest(self.layout, release_id, self.schema)
        units = release_units(release_dir)
        try:
            self._wait_until_healthy(units, manifest)
            self.report.step(f"{release_id} is running and healthy; nothing to do")
            return "unchanged"
        except DeployFailed as error:
            self.report.detail(f"{error}; restarting it")
        with self.report.phase("switch"):
            self._apply_units(units, f"releases/{release_id}")
        with self.report.phase("healthy"):
            self._wait_until_healthy(units, manifest)
        return "restarted"

    def restart(self, release_id: str, process: str | None = None) -> str:
        """Restart the running release's processes (one step of a rolling restart), or only those
        of type ``process``, then their health check; :class:`DeployFailed` if they do not come
        back (nothing to switch back to). :class:`NoSuchProcess` (nothing done) for a type the
        release does not run."""
        manifest = staged_manifest(self.layout, release_id, self.schema)
        units = release_units(self.layout.release_dir(release_id))
        if process is not None:
            types = sorted({t for t in map(self.layout.process_type_of, units) if t})
            if process not in types:
                raise NoSuchProcess(
                    f"{release_id} runs no {process} process on this instance (it runs {', '.join(types) or 'none'})"
                )
            units = {name: text for name, text in units.items() if self.layout.process_type_of(name) == process}
        self.report.step(f"Restarting {release_id}" + (f"'s {process} processes" if process else ""))
        with self.report.phase("restart"):
            host.run(systemctl("restart", *units))
        with self.report.phase("healthy"):
            self._wait_until_healthy(units, manifest)
        self.report.step(f"{release_id} restarted and healthy")
        return "restarted"

    def roll_back(self, previous: str | None) -> None:
        """After a failure past the switch: the previous release's units and link, restarted
        and health-checked (``previous`` ``None``: the app's units removed)."""
        self.report.step(f"Switching back to {previous or 'nothing'}")
        self._restore(previous)
        self.switched = False

    def recover(self, at_boot: bool = False) -> None:
        """Repair what a killed activation left (an ``ACTIVATING`` record): see the module doc.

        ``at_boot`` (``deploy --recover``, before the app's units start: they are ordered after
        it): put the units and ``current`` back without starting them; systemd starts them next."""
        text = host.read_text(self.intent_file)
        if text is None:
            return
        intent = parse_intent(text)
        plan = plan_recovery(intent, self.deployed())
        if plan.finish:
            self.report.step(f"Finishing the activation of {self.deployed()}, interrupted after its health check")
            self._finish(plan.previous)
            return
        interrupted = intent.release if intent else "a release"
        self.report.step(
            f"An activation of {interrupted} was interrupted; putting back {plan.restore or 'nothing'} "
            "(what DEPLOYED names)"
        )
        with self.report.phase("recover"):
            try:
                self._restore(plan.restore, start=not at_boot)
            except Exception as error:  # the run goes on: activating a good release repairs the rest
                self.report.detail(f"{plan.restore or 'nothing'} does not answer after the repair: {error}")

    def prune(self, keep: set[str]) -> None:
        """Delete release directories beyond the newest :data:`KEEP_RELEASES` (never ``keep``'s)."""
        for name in releases_to_prune(os.listdir(self.layout.releases_dir), KEEP_RELEASES, keep):
            shutil.rmtree(self.layout.release_dir(name), ignore_errors=True)

    # Steps ----------------------------------------------------------------------------------------

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

    def _apply_units(self, wanted: dict[str, str], link_target: str | None, start: bool = True) -> None:
        """Install ``wanted`` unit files, move ``current`` to ``link_target``, restart."""
        changes = plan_unit_changes(installed_units(self.layout), wanted)
        if changes.remove:
            host.run(systemctl("disable", "--now", *changes.remove), check=False)
            for name in changes.remove:
                os.unlink(os.path.join(UNIT_DIR, name))
        for name, text in changes.write.items():
            host.write_atomic(os.path.join(UNIT_DIR, name), text)
        if link_target is None:
            if os.path.lexists(self.layout.current):
                os.unlink(self.layout.current)
        else:
            host.point_symlink(self.layout.current, link_target)
        host.pause_if("linked", self.pause_at)
        if changes.write or changes.remove:
            host.run(systemctl("daemon-reload"))
        if changes.write:
            host.run(systemctl("enable", *changes.write))
        if changes.restart and start:
            host.run(systemctl("restart", *changes.restart))

    def _restore(self, release_id: str | None, start: bool = True) -> None:
        """Units and ``current`` back to ``release_id``, restarted (unless not ``start``); the
        record removed once they agree with ``DEPLOYED`` again; then its health check."""
        if release_id is None:
            self._apply_units({}, None, start=start)
            _remove(self.intent_file)
            return
        units = release_units(self.layout.release_dir(release_id))
        self._apply_units(units, f"releases/{release_id}", start=start)
        _remove(self.intent_file)
        if not start:
            return
        self._wait_until_healthy(units, staged_manifest(self.layout, release_id, self.schema))
        self.report.detail(f"{release_id} is answering again")

    def _finish(self, previous: str | None) -> None:
        if previous:
            host.write_atomic(self.previous_file, previous + "\n")
        _remove(self.intent_file)

    def _wait_until_healthy(self, units: dict[str, str], manifest: Manifest) -> None:
        web = [name for name in units if name.startswith(f"slipway-{self.layout.app}-{WEB}.")]
        if web:
            health = manifest.health_check
            try:
                host.wait_healthy(
                    health.port,
                    health.path,
                    health.timeout,
                    lambda: service_exit(web[0]),
                    health.codes,
                    health.codes_text,
                )
            except (RuntimeError, TimeoutError) as error:
                self.report.show_log(web[0])
                raise DeployFailed(f"{manifest.id} started but is not healthy: {error}") from None
            self.report.detail(f"answered {health.path} on port {health.port}")
        for name in units:
            stopped = service_exit(name)
            if stopped:
                self.report.show_log(name)
                raise DeployFailed(f"{manifest.id}: {stopped}")


def _remove(path: str) -> None:
    if os.path.lexists(path):
        os.unlink(path)
