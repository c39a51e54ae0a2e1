"""The deploy flow: download, verify, unpack the slug, preflight, switch, health-check, or switch back.

The running release is touched only after the new one has unpacked,
configured, run its release phase and answered its health check on a spare
port. From the switch on, any failure restores the previous release.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from slipway_release.archive import MAX_PROCFILE_BYTES, UnsafeArchive
from slipway_release.build import BUILD_MANIFEST, MAX_BUILD_MANIFEST_BYTES, BuildManifestError, parse_build_manifest
from slipway_release.build import process_environment as slug_environment
from slipway_release.envfile import check_carriable, parse_env, render_environment_file
from slipway_release.layout import ENV_FILE, MANIFEST, SLUG, ReleaseUrl
from slipway_release.manifest import Manifest, load_schema, parse_manifest
from slipway_release.names import CURRENT, is_release_id, newest_first
from slipway_release.procfile import RELEASE, WEB, parse_procfile, resolve_formation
from slipway_release.runtimes import RUNTIMES_PATH, Offer, load_runtimes, offered_lines

from . import host
from .cli import DeployArgs, UsageError, parse_args, s3_endpoint
from .s3 import ReleaseStore, sha256_file
from .units import (
    APP,
    RUN_AS,
    UNIT_DIR,
    AppLayout,
    journal_command,
    plan_unit_changes,
    preflight_command,
    release_identifier,
    release_phase_command,
    render_units,
    systemctl,
    verify_command,
)
from .unpack import unpack

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DOWN = 0, 1, 2, 3
KEEP_RELEASES = 5
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_ENV_FILE_BYTES = 2 * 1024 * 1024


class DeployFailed(Exception):
    """A step failed; the message is the one line an operator reads."""


def releases_to_prune(names: list[str], keep: int, protect: set[str]) -> list[str]:
    """Release directories to delete: all but the ``keep`` highest ids and the protected ones.

    Names that are not release ids (``r<N>``) are never pruned here.
    """
    return [n for n in newest_first(names)[keep:] if n not in protect]


def result_line(
    url: ReleaseUrl,
    release: str | None,
    previous: str | None,
    result: str,
    exit_code: int,
    error: str | None,
    durations: dict[str, float],
) -> str:
    """The final machine-readable line, for the control plane to echo back."""
    return json.dumps(
        {
            "app": url.app,
            "env": url.env,
            "release": release,
            "previous": previous,
            "result": result,
            "exit_code": exit_code,
            "error": error,
            "durations": {name: round(seconds, 3) for name, seconds in durations.items()},
        },
        sort_keys=True,
    )


@dataclass
class Report:
    """Human-readable steps on stdout, timing of each phase, the failure line on stderr."""

    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    durations: dict[str, float] = field(default_factory=dict)

    def step(self, message: str) -> None:
        print(f"-----> {message}", file=self.out, flush=True)

    def detail(self, message: str) -> None:
        print(f"       {message}", file=self.out, flush=True)

    def failure(self, message: str) -> None:
        print(f"deploy: FAILED: {message}", file=self.err, flush=True)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.durations[name] = self.durations.get(name, 0.0) + time.monotonic() - started


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
    ):
        self.args = args
        self.runtimes_path = runtimes_path
        self.url = args.release
        self.report = report
        self.store = store
        self.layout = layout
        self.schema = load_schema()
        self.release_id: str | None = None
        self.previous: str | None = None
        self.switched = False

    # The flow -----------------------------------------------------------------------------------

    def run(self) -> int:
        """Deploy, print the outcome and the JSON line; return the exit code."""
        for directory in (self.layout.app_dir, self.layout.releases_dir, self.layout.downloads_dir):
            os.makedirs(directory, mode=0o755, exist_ok=True)
        started = time.monotonic()
        with deploy_lock(self.layout.lock_file, self.report):
            self._remove_leftovers()
            result, code, error = self._attempt()
        self.report.durations["total"] = time.monotonic() - started
        print(
            result_line(self.url, self.release_id, self.previous, result, code, error, self.report.durations),
            file=self.report.out,
            flush=True,
        )
        return code

    def _attempt(self) -> tuple[str, int, str | None]:
        try:
            self.previous = (host.read_text(self.layout.deployed_file) or "").strip() or None
            self.release_id = self._resolve_target()
            if self.release_id == self.previous:
                return self._ensure_running(self.release_id)
            self._deploy(self.release_id)
            return "deployed", EXIT_OK, None
        except Exception as error:  # every failure, expected or not, must end in a restored instance
            return self._fail(_reason(error))
        finally:
            shutil.rmtree(self.layout.downloads_dir, ignore_errors=True)

    def _resolve_target(self) -> str:
        if self.url.target != CURRENT:
            return self.url.target
        key = self.url.keys.current
        body = self.store.read(key, limit=64).decode("utf-8", errors="replace").strip()
        if not is_release_id(body):
            raise DeployFailed(f"{self.url} holds {body[:20]!r}, not a release id like r7")
        self.report.step(f"{self.url} is {body}")
        return body

    def _deploy(self, release_id: str) -> None:
        self.report.step(f"Deploying {self.url.of(release_id)}" + (f" over {self.previous}" if self.previous else ""))
        with self.report.phase("download"):
            manifest = self._fetch_manifest(release_id)
            runtime = self._runtime(manifest)
            archive = os.path.join(self.layout.downloads_dir, SLUG)
            self.store.download(self.url.keys.release(release_id, SLUG), archive, manifest.slug_size)
            env_bytes = self.store.read(self.url.keys.release(release_id, ENV_FILE), limit=MAX_ENV_FILE_BYTES)
        self.report.detail(f"downloaded {manifest.slug_size} bytes of slug ({_built(manifest)})")
        with self.report.phase("verify"):
            self._verify(manifest, archive, env_bytes)
        staging = os.path.join(self.layout.releases_dir, f".{release_id}.partial")
        with self.report.phase("unpack"):
            os.mkdir(staging, 0o755)
            entries, size = _unpack_checked(archive, staging, self.args.max_unpacked_bytes)
            self._check_slug_manifest(manifest, staging)
        self.report.detail(f"unpacked {entries} entries ({size} bytes)")
        with self.report.phase("configure"):
            self._ensure_home()
            processes, units = self._configure(manifest, staging, env_bytes, runtime)
            self._install_release_dir(release_id, staging)
        self.report.detail("units: " + (", ".join(units) or "none (formation scales every process to 0)"))
        # The one-offs run from releases/<id> (current still points at the running release).
        one_off = slug_environment(
            f"{self.layout.release_dir(release_id)}/{APP}", manifest.build, runtime.bin if runtime else None
        )
        if RELEASE in processes:
            with self.report.phase("release"):
                self._release_phase(release_id, processes[RELEASE], one_off)
        if any(name.startswith(f"slipway-{self.url.app}-{WEB}.") for name in units):
            with self.report.phase("preflight"):
                self._preflight(release_id, processes[WEB], manifest, one_off)
        with self.report.phase("switch"):
            self._switch(release_id, units)
        with self.report.phase("healthy"):
            self._wait_until_healthy(units, manifest)
        host.write_atomic(self.layout.deployed_file, release_id + "\n")
        self._prune(keep={release_id} | ({self.previous} if self.previous else set()))
        self.report.step(f"{release_id} is running" + (f" (was {self.previous})" if self.previous else ""))

    # Steps ----------------------------------------------------------------------------------------

    def _fetch_manifest(self, release_id: str) -> Manifest:
        key = self.url.keys.release(release_id, MANIFEST)
        manifest = parse_manifest(self.store.read(key, limit=MAX_MANIFEST_BYTES), self.schema)
        expected = (release_id, self.url.app, self.url.env)
        if (manifest.id, manifest.app, manifest.env) != expected:
            raise DeployFailed(
                f"{self.url.of(release_id)}/{MANIFEST} describes {manifest.app}/{manifest.env}/{manifest.id}, not "
                f"{'/'.join(expected[1:])}/{release_id}; the bucket was written by hand, republish the release"
            )
        if not re.fullmatch(r"/[\x21-\x7e]*", manifest.health_check.path):
            raise DeployFailed(f"release.json health_check.path {manifest.health_check.path!r} is not a plain URL path")
        return manifest

    def _runtime(self, manifest: Manifest) -> Offer | None:
        """The instance's interpreter for the slug's runtime line; refuse the release if there is none."""
        runtime = manifest.build.runtime
        if runtime is None:
            return None
        offers = load_runtimes(self.runtimes_path)
        offer = offers.get(runtime.name, {}).get(runtime.line)
        if offer is None:
            offered = ", ".join(offered_lines(offers, runtime.name)) or "none"
            raise DeployFailed(
                f"{manifest.id} was built for {runtime.name} {runtime.line} ({runtime.version}), which this instance "
                f"does not offer (it offers {runtime.name} {offered}); build it for an offered version or update "
                "the instance's base image"
            )
        return offer

    def _verify(self, manifest: Manifest, archive: str, env_bytes: bytes) -> None:
        digest, size = sha256_file(archive)
        if (digest, size) != (manifest.slug_sha256, manifest.slug_size):
            raise DeployFailed(
                f"{SLUG} has sha256 {digest[:12]}… and {size} bytes, but release.json says "
                f"{manifest.slug_sha256[:12]}… and {manifest.slug_size}; the release is corrupt, publish a new one"
            )
        env_digest = hashlib.sha256(env_bytes).hexdigest()
        if env_digest != manifest.env_sha256:
            raise DeployFailed(
                f"env has sha256 {env_digest[:12]}… but release.json says {manifest.env_sha256[:12]}…; "
                "the release is corrupt, publish a new one"
            )

    def _check_slug_manifest(self, manifest: Manifest, staging: str) -> None:
        """The slug's own build.json must be what release.json's ``build`` says it is."""
        path = os.path.join(staging, APP, BUILD_MANIFEST)
        if not os.path.isfile(path) or os.path.islink(path):
            raise DeployFailed(f"{SLUG} has no {BUILD_MANIFEST}; it was not made by the build program, build it again")
        with open(path, "rb") as handle:
            try:
                inside = parse_build_manifest(handle.read(MAX_BUILD_MANIFEST_BYTES + 1), f"the slug's {BUILD_MANIFEST}")
            except BuildManifestError as error:
                raise DeployFailed(str(error)) from None
        if inside.raw != manifest.build.raw:
            raise DeployFailed(
                f"the slug's {BUILD_MANIFEST} differs from release.json's build; the release is corrupt, "
                "publish it again"
            )

    def _ensure_home(self) -> None:
        """The app's HOME: the one place its processes may write, kept across releases."""
        home = self.layout.home_dir
        if not os.path.isdir(home) or os.path.islink(home):
            if os.path.lexists(home):
                os.unlink(home)
            os.mkdir(home, 0o700)
        host.chown_to(home, RUN_AS)

    def _configure(
        self, manifest: Manifest, staging: str, env_bytes: bytes, runtime: Offer | None
    ) -> tuple[dict[str, str], dict[str, str]]:
        procfile_path = os.path.join(staging, APP, "Procfile")
        if not os.path.isfile(procfile_path):
            raise DeployFailed(
                f"{manifest.id}'s slug has no Procfile at its root; "
                "add one (e.g. 'web: python app.py') and publish again"
            )
        with open(procfile_path, "rb") as handle:
            raw = handle.read(MAX_PROCFILE_BYTES + 1)
        if len(raw) > MAX_PROCFILE_BYTES:
            raise DeployFailed(f"Procfile is larger than {MAX_PROCFILE_BYTES} bytes")
        processes = parse_procfile(_decode(raw, "Procfile"))
        formation = resolve_formation(processes, manifest.formation)
        values = parse_env(_decode(env_bytes, "env file"))
        check_carriable(values)
        host.write_atomic(os.path.join(staging, "env"), render_environment_file(values), mode=0o600)
        host.write_atomic(os.path.join(staging, "release.json"), json.dumps(manifest.raw, indent=2) + "\n")
        environment = slug_environment(f"{self.layout.current}/{APP}", manifest.build, runtime.bin if runtime else None)
        units = render_units(self.layout, processes, formation, manifest.health_check.port, environment)
        units_dir = os.path.join(staging, "units")
        os.mkdir(units_dir, 0o755)
        for name, text in units.items():
            host.write_atomic(os.path.join(units_dir, name), text)
        if units:
            host.run(verify_command([os.path.join(units_dir, name) for name in units]))
        return processes, units

    def _install_release_dir(self, release_id: str, staging: str) -> None:
        """Move the staged release to ``releases/<id>``, replacing an older copy of the same id."""
        final = self.layout.release_dir(release_id)
        if os.path.lexists(final):
            aside = os.path.join(self.layout.releases_dir, f".{release_id}.old")
            os.replace(final, aside)
            os.replace(staging, final)
            shutil.rmtree(aside)
        else:
            os.replace(staging, final)

    def _release_phase(self, release_id: str, command: str, environment: dict[str, str]) -> None:
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

    def _preflight(self, release_id: str, command: str, manifest: Manifest, environment: dict[str, str]) -> None:
        unit = self.layout.preflight_unit(release_id)
        port = host.spare_port()
        self.report.step(f"Preflight: starting {release_id}'s web process on spare port {port}")
        _discard_unit(unit)
        try:
            host.run(preflight_command(self.layout, release_id, command, port, environment))
            try:
                host.wait_healthy(
                    port,
                    manifest.health_check.path,
                    manifest.health_check.timeout,
                    lambda: _transient_exit(unit, port),
                    manifest.health_check.codes,
                    manifest.health_check.codes_text,
                )
            except (RuntimeError, TimeoutError) as error:
                self._show_log(unit)
                raise DeployFailed(f"{release_id} failed its preflight: {error}") from None
        finally:
            _discard_unit(unit)
        self.report.detail(f"answered {manifest.health_check.path} on port {port}")

    def _switch(self, release_id: str, units: dict[str, str]) -> None:
        self.report.step(f"Switching to {release_id}")
        self.switched = True
        self._apply_units(units, f"releases/{release_id}")

    def _apply_units(self, wanted: dict[str, str], link_target: str | None) -> None:
        """Install ``wanted`` unit files, move ``current`` to ``link_target``, restart."""
        changes = plan_unit_changes(_installed_units(self.layout), wanted)
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
        if changes.write or changes.remove:
            host.run(systemctl("daemon-reload"))
        if changes.write:
            host.run(systemctl("enable", *changes.write))
        if changes.restart:
            host.run(systemctl("restart", *changes.restart))

    def _wait_until_healthy(self, units: dict[str, str], manifest: Manifest) -> None:
        web = [name for name in units if name.startswith(f"slipway-{self.url.app}-{WEB}.")]
        if web:
            health = manifest.health_check
            try:
                host.wait_healthy(
                    health.port,
                    health.path,
                    health.timeout,
                    lambda: _service_exit(web[0]),
                    health.codes,
                    health.codes_text,
                )
            except (RuntimeError, TimeoutError) as error:
                self._show_log(web[0])
                raise DeployFailed(f"{manifest.id} started but is not healthy: {error}") from None
            self.report.detail(f"answered {health.path} on port {health.port}")
        for name in units:
            stopped = _service_exit(name)
            if stopped:
                self._show_log(name)
                raise DeployFailed(f"{manifest.id}: {stopped}")

    # Failure, repair and housekeeping -----------------------------------------------------------

    def _fail(self, reason: str) -> tuple[str, int, str]:
        release = self.release_id or self.url.target
        if not self.switched:
            keeps = f"{self.previous} keeps running" if self.previous else "nothing was running"
            line = f"{release} not deployed: {reason}; {keeps}"
            self.report.failure(line)
            return "failed", EXIT_FAILED, line
        self.report.step(f"Switching back to {self.previous or 'nothing'}")
        try:
            self._restore_previous()
        except Exception as error:
            line = (
                f"{release} failed ({reason}) and restoring {self.previous} failed too ({_reason(error)}); "
                "the app may be down: deploy a known-good release"
            )
            self.report.failure(line)
            return "failed", EXIT_DOWN, line
        restored = f"rolled back to {self.previous}" if self.previous else "stopped its processes (no earlier release)"
        line = f"{release} not deployed: {reason}; {restored}"
        self.report.failure(line)
        return "failed", EXIT_FAILED, line

    def _restore_previous(self) -> None:
        if not self.previous:
            self._apply_units({}, None)
            return
        release_dir = self.layout.release_dir(self.previous)
        units_dir = os.path.join(release_dir, "units")
        wanted = {name: _read(os.path.join(units_dir, name)) for name in sorted(os.listdir(units_dir))}
        self._apply_units(wanted, f"releases/{self.previous}")
        with open(os.path.join(release_dir, "release.json"), "rb") as handle:
            manifest = parse_manifest(handle.read(), self.schema)
        self._wait_until_healthy(wanted, manifest)
        self.report.detail(f"{self.previous} is answering again")

    def _ensure_running(self, release_id: str) -> tuple[str, int, str | None]:
        """The release is already deployed: confirm it is healthy, restart it if not."""
        self.report.step(f"{release_id} is already deployed; checking it")
        release_dir = self.layout.release_dir(release_id)
        units_dir = os.path.join(release_dir, "units")
        with open(os.path.join(release_dir, "release.json"), "rb") as handle:
            manifest = parse_manifest(handle.read(), self.schema)
        units = {name: _read(os.path.join(units_dir, name)) for name in sorted(os.listdir(units_dir))}
        try:
            self._wait_until_healthy(units, manifest)
            self.report.step(f"{release_id} is running and healthy; nothing to do")
            return "unchanged", EXIT_OK, None
        except DeployFailed as error:
            self.report.detail(f"{error}; restarting it")
        with self.report.phase("switch"):
            self._apply_units(units, f"releases/{release_id}")
        try:
            with self.report.phase("healthy"):
                self._wait_until_healthy(units, manifest)
        except DeployFailed as error:
            line = f"{release_id} is deployed but does not come up after a restart: {error}; deploy a good release"
            self.report.failure(line)
            return "failed", EXIT_DOWN, line
        return "restarted", EXIT_OK, None

    def _remove_leftovers(self) -> None:
        """Remove what an interrupted deploy left behind (staging copies, downloads)."""
        for name in os.listdir(self.layout.releases_dir):
            if name.startswith("."):
                shutil.rmtree(os.path.join(self.layout.releases_dir, name), ignore_errors=True)
        shutil.rmtree(self.layout.downloads_dir, ignore_errors=True)
        os.makedirs(self.layout.downloads_dir, mode=0o755)

    def _prune(self, keep: set[str]) -> None:
        for name in releases_to_prune(os.listdir(self.layout.releases_dir), KEEP_RELEASES, keep):
            shutil.rmtree(self.layout.release_dir(name), ignore_errors=True)

    def _show_log(self, unit: str) -> None:
        result = host.run(["journalctl", "--no-pager", "-o", "cat", "-n", "10", "-u", unit], check=False)
        for line in result.stdout.strip().splitlines()[-10:]:
            self.report.detail(f"| {line}")


def _unpack_checked(archive: str, staging: str, limit: int) -> tuple[int, int]:
    try:
        return unpack(Path(archive), Path(staging) / APP, limit)
    except UnsafeArchive as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise DeployFailed(f"refusing {SLUG}: {error}") from None


def _built(manifest: Manifest) -> str:
    runtime = manifest.build.runtime
    return f"{manifest.build.kind} app" + (f" on {runtime}" if runtime else "")


def _installed_units(layout: AppLayout) -> dict[str, str]:
    return {
        name: _read(os.path.join(UNIT_DIR, name)) for name in sorted(os.listdir(UNIT_DIR)) if layout.owns_unit(name)
    }


def _discard_unit(unit: str) -> None:
    """Stop a transient unit and forget a failed one, so its name can be used again."""
    host.run(systemctl("stop", unit), check=False)
    host.run(systemctl("reset-failed", unit), check=False)


def _transient_exit(unit: str, port: int) -> str | None:
    state = host.unit_properties(unit)
    if state.get("ActiveState") in ("active", "activating", "reloading"):
        return None
    return (
        f"its web process exited (status {state.get('ExecMainStatus', '?')}) before answering on port {port} "
        f"(journalctl -u {unit})"
    )


def _service_exit(unit: str) -> str | None:
    # A crashing Restart=always service spends its RestartSec in "auto-restart": that is an exit.
    state = host.unit_properties(unit)
    if state.get("ActiveState") in ("active", "activating") and state.get("SubState") != "auto-restart":
        return None
    return (
        f"{unit} exited (status {state.get('ExecMainStatus', '?')}, state {state.get('ActiveState')}/"
        f"{state.get('SubState')}) (journalctl -u {unit})"
    )


def _decode(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DeployFailed(f"{what} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _reason(error: BaseException) -> str:
    # Our own errors (all ValueError/LookupError subclasses or CommandFailed) already read as a
    # sentence; anything else (a bug, a network error) is named by its type.
    if isinstance(error, (DeployFailed, ValueError, LookupError, host.CommandFailed)):
        return str(error)
    return f"{type(error).__name__}: {error}"


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    """Entry point of ``/home/deploy/bin/deploy``; returns the process exit code."""
    environ = dict(os.environ) if environ is None else environ
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as error:
        print(f"deploy: {error}", file=sys.stderr)
        return EXIT_USAGE
    if os.geteuid() != 0:
        print("deploy: must run as root: it writes systemd units and runs systemctl", file=sys.stderr)
        return EXIT_USAGE
    report = Report()
    store = ReleaseStore(args.release.bucket, s3_endpoint(environ))
    return Deployment(args, report, store, AppLayout(args.release.app)).run()
