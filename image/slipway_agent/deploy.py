"""One run of ``deploy``: take the app's lock, repair what a killed run left, then stage,
activate, or both (image/README.md, "The deploy command").

Staging (:mod:`slipway_agent.staging`) never touches the serving release. Activation
(:mod:`slipway_agent.activation`) changes it only after the release phase, and from the
switch on, any failure restores the previous release.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from slipway_release.layout import parse_pointer
from slipway_release.manifest import load_schema
from slipway_release.names import CURRENT, is_app_name
from slipway_release.runtimes import RUNTIMES_PATH

from . import host
from .activation import Activator
from .cli import (
    ACTIVATE,
    DEPLOY,
    INSTANCE_ENV,
    RESTART,
    RUN,
    STAGE,
    DeployArgs,
    UsageError,
    parse_args,
    parse_instance_env,
    s3_endpoint,
)
from .oneoff import run_one_off
from .report import DeployFailed, NoSuchProcess, NotStaged, Report, reason, result_line
from .s3 import ReleaseStore
from .services import discard_unit, loaded_units
from .staging import Stager
from .state import ACTIVATING as ACTIVATING_RECORD
from .units import APPS_ROOT, AppLayout

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DOWN, EXIT_NOT_STAGED = 0, 1, 2, 3, 4
# Set only by the fault tests: the named point at which the agent stops itself (host.pause_if).
PAUSE_VARIABLE = "SLIPWAY_AGENT_PAUSE_AT"


@contextmanager
def deploy_lock(path: str, report: Report) -> Iterator[None]:
    """Hold an exclusive flock on ``path``; a second deploy waits, saying for whom."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            report.step(f"Waiting for the deploy running as pid {holder} to finish")
            with report.phase("lock_wait"):
                fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


class Deployment:
    """One run of ``deploy`` for one app on this instance."""

    def __init__(
        self,
        args: DeployArgs,
        report: Report,
        store: ReleaseStore,
        layout: AppLayout,
        runtimes_path: str = RUNTIMES_PATH,
        pause_at: str | None = None,
    ):
        self.mode = args.mode
        self.url = args.release
        self.process = args.process
        self.report = report
        self.layout = layout
        schema = load_schema()
        self.stager = Stager(self.url, report, store, layout, schema, args.max_unpacked_bytes, runtimes_path, pause_at)
        self.activator = Activator(layout, report, schema, runtimes_path, pause_at)
        self.release_id: str | None = None
        self.digest = args.digest  # what the release's release.json must hash to (current's pin for current)
        self.previous: str | None = None
        self.phase = self.mode if self.mode in (ACTIVATE, RESTART) else STAGE

    def run(self) -> int:
        """Stage and/or activate, print the outcome and the JSON line; return the exit code."""
        for directory in (self.layout.app_dir, self.layout.releases_dir, self.layout.downloads_dir):
            os.makedirs(directory, mode=0o755, exist_ok=True)
        started = time.monotonic()
        with deploy_lock(self.layout.lock_file, self.report):
            result, code, error = self._attempt()
        self.report.durations["total"] = time.monotonic() - started
        line = result_line(
            self.url, self.mode, self.phase, self.release_id, self.previous, result, code, error, self.report.durations
        )
        print(line, file=self.report.out, flush=True)
        return code

    def _attempt(self) -> tuple[str, int, str | None]:
        try:
            self._remove_leftovers()
            self.activator.recover()
            self.previous = self.activator.deployed()
            self.release_id = self._resolve_target()
            if self.mode == RESTART:
                return self._restart(self.release_id)
            if self.mode != STAGE and self.release_id == self.previous:
                self.phase = ACTIVATE
                return self._ensure_running(self.release_id)
            if self.mode != ACTIVATE:
                staged = self.stager.stage(self.release_id, self.previous, self.digest)
                self.activator.prune({self.release_id, *(r for r in (self.previous, self.activator.previous()) if r)})
                if self.mode == STAGE:
                    return staged, EXIT_OK, None
            self.phase = ACTIVATE
            self.activator.activate(
                self.release_id, self.previous, f"deploy --stage {self.url.of(self.release_id)}", self.digest
            )
            return ("deployed" if self.mode == DEPLOY else "activated"), EXIT_OK, None
        except NotStaged as error:
            line = f"{self.url.target} not activated: {error}"
            self.report.failure(line)
            return "failed", EXIT_NOT_STAGED, line
        except Exception as error:  # every failure, expected or not, must end in a restored instance
            return self._fail(reason(error))
        finally:
            shutil.rmtree(self.layout.downloads_dir, ignore_errors=True)

    def _resolve_target(self) -> str:
        """The release to act on: the URL's, or the one ``current`` names, with the digest it pins."""
        if self.url.target != CURRENT:
            return self.url.target
        try:
            pointer = parse_pointer(self.stager.store.read(self.url.keys.current, limit=256))
        except ValueError as error:
            raise DeployFailed(f"{self.url} {error}") from None
        if pointer.digest is None:
            self.report.step(
                f"{self.url} is {pointer.release} (written before current pinned digests: checked against "
                "its own release.json only)"
            )
        else:
            self.report.step(f"{self.url} is {pointer.release}, its release.json pinned as {pointer.digest[:12]}…")
        self.digest = pointer.digest
        return pointer.release

    def _ensure_running(self, release_id: str) -> tuple[str, int, str | None]:
        try:
            return self.activator.ensure_running(release_id, self.digest), EXIT_OK, None
        except DeployFailed as error:
            line = f"{release_id} is deployed but does not come up after a restart: {error}; deploy a good release"
            self.report.failure(line)
            return "failed", EXIT_DOWN, line

    def _restart(self, release_id: str) -> tuple[str, int, str | None]:
        if release_id != self.previous:
            line = (
                f"{release_id} not restarted: this instance runs {self.previous or 'no release'}; "
                f"deploy {release_id} instead (deploy {self.url.of(release_id)})"
            )
            self.report.failure(line)
            return "failed", EXIT_FAILED, line
        try:
            return self.activator.restart(release_id, self.process, self.digest), EXIT_OK, None
        except NoSuchProcess as error:
            line = f"{release_id} not restarted: {error}; give one of those"
            self.report.failure(line)
            return "failed", EXIT_FAILED, line
        except DeployFailed as error:
            line = f"{release_id} does not come up after its restart: {error}; deploy a good release"
            self.report.failure(line)
            return "failed", EXIT_DOWN, line

    def _fail(self, why: str) -> tuple[str, int, str]:
        release = self.release_id or self.url.target
        verb = {DEPLOY: "deployed", STAGE: "staged", ACTIVATE: "activated", RESTART: "restarted"}[self.mode]
        if not self.activator.switched:
            keeps = f"{self.previous} keeps running" if self.previous else "nothing was running"
            line = f"{release} not {verb}: {why}; {keeps}"
            self.report.failure(line)
            return "failed", EXIT_FAILED, line
        try:
            self.activator.roll_back(self.previous)
        except Exception as error:
            line = (
                f"{release} failed ({why}) and restoring {self.previous} failed too ({reason(error)}); "
                "the app may be down: deploy a known-good release"
            )
            self.report.failure(line)
            return "failed", EXIT_DOWN, line
        restored = f"rolled back to {self.previous}" if self.previous else "stopped its processes (no earlier release)"
        line = f"{release} not {verb}: {why}; {restored}"
        self.report.failure(line)
        return "failed", EXIT_FAILED, line

    def _remove_leftovers(self) -> None:
        """Remove what an interrupted run left behind: half-unpacked copies, downloads, and a
        preflight process still running on its spare port (no live run owns one: we hold the lock)."""
        for name in os.listdir(self.layout.releases_dir):
            if name.startswith("."):
                shutil.rmtree(os.path.join(self.layout.releases_dir, name), ignore_errors=True)
        shutil.rmtree(self.layout.downloads_dir, ignore_errors=True)
        os.makedirs(self.layout.downloads_dir, mode=0o755)
        for unit in loaded_units(self.layout.preflight_unit("*")):
            discard_unit(unit)


def recover_interrupted(apps_root: str, runtimes_path: str = RUNTIMES_PATH) -> int:
    """``deploy --recover`` (the ``slipway-recover`` unit, at boot before the apps' units start):
    for every app whose activation a crash or a reboot interrupted (an ``ACTIVATING`` record), put
    back what ``DEPLOYED`` names, as the next deploy would, so that a reboot never starts a
    release that was never health-checked."""
    names = sorted(os.listdir(apps_root)) if os.path.isdir(apps_root) else []
    code = EXIT_OK
    for app in (name for name in names if is_app_name(name)):
        layout = AppLayout(app)
        if not os.path.exists(os.path.join(layout.app_dir, ACTIVATING_RECORD)):
            continue
        report = Report()
        try:
            with deploy_lock(layout.lock_file, report):
                Activator(layout, report, load_schema(), runtimes_path, None).recover(at_boot=True)
        except Exception as error:  # one line, and the other apps still repaired
            print(f"deploy --recover: {app}: not repaired: {reason(error)}; deploy a known-good release", flush=True)
            code = EXIT_FAILED
            continue
        print(
            f"deploy --recover: {app}: the front, its units and {layout.current} agree with SERVING again", flush=True
        )
    return code


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    """Entry point of ``/home/deploy/bin/deploy``; returns the process exit code."""
    environ = dict(os.environ) if environ is None else environ
    try:
        instance_env = parse_instance_env(host.read_text(INSTANCE_ENV))
    except OSError:
        instance_env = {}
    arguments = sys.argv[1:] if argv is None else argv
    if arguments == ["--recover"]:
        if os.geteuid() != 0:
            print("deploy: must run as root: it writes systemd units and runs systemctl", file=sys.stderr)
            return EXIT_USAGE
        return recover_interrupted(APPS_ROOT)
    try:
        args = parse_args(arguments, instance_env)
    except UsageError as error:
        print(f"deploy: {error}", file=sys.stderr)
        return EXIT_USAGE
    if os.geteuid() != 0:
        print("deploy: must run as root: it writes systemd units and runs systemctl", file=sys.stderr)
        return EXIT_USAGE
    if args.mode == RUN:
        return run_one_off(args, AppLayout(args.release.app))
    report = Report()
    store = ReleaseStore(args.release.bucket, s3_endpoint(environ))
    layout = AppLayout(args.release.app)
    return Deployment(args, report, store, layout, pause_at=environ.get(PAUSE_VARIABLE) or None).run()
