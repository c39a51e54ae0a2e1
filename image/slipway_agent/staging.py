"""Staging: download and verify a release, unpack it into ``releases/<id>``, render its units,
preflight its web process on a spare port, and mark it ``STAGED``. The serving release,
its units and ``current`` are never touched.

A staged release is kept, so activating it (a rollback to the previous one included) needs
no download. Staging a release already staged re-reads its ``release.json`` from the bucket,
checks the staged directory against the digest recorded in ``STAGED`` and stops there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from slipway_release.archive import UnsafeArchive
from slipway_release.build import BUILD_MANIFEST, MAX_BUILD_MANIFEST_BYTES, BuildManifestError, parse_build_manifest
from slipway_release.build import process_environment as slug_environment
from slipway_release.envfile import check_carriable, parse_env, render_environment_file
from slipway_release.layout import ENV_FILE, MANIFEST, SLUG, ReleaseUrl
from slipway_release.manifest import Manifest, ManifestError, parse_manifest, slug_key
from slipway_release.names import is_release_id
from slipway_release.procfile import WEB, resolve_formation
from slipway_release.runtimes import Offer

from . import host
from .front import SLOTS
from .report import DeployFailed, Report
from .s3 import ReleaseStore, sha256_file
from .services import discard_unit, transient_exit
from .space import explain_no_space, gzip_unpacked_size, is_no_space, require_space
from .staged import (
    decode_text,
    ensure_home,
    instance_runtime,
    one_off_environment,
    read_processes,
    staged_manifest,
    staged_problem,
    tree_digest,
)
from .state import STAGED, StagedRecord, parse_staged, render_staged
from .units import APP, AppLayout, preflight_command, render_units, verify_command
from .unpack import unpack

MAX_MANIFEST_BYTES = 1024 * 1024
MAX_ENV_FILE_BYTES = 2 * 1024 * 1024
T = TypeVar("T")


class Stager:
    """Stages releases of one app from its bucket."""

    def __init__(
        self,
        url: ReleaseUrl,
        report: Report,
        store: ReleaseStore,
        layout: AppLayout,
        schema: dict[str, Any],
        max_unpacked_bytes: int,
        runtimes_path: str,
        pause_at: str | None = None,
    ):
        self.url = url
        self.report = report
        self.store = store
        self.layout = layout
        self.schema = schema
        self.max_unpacked_bytes = max_unpacked_bytes
        self.runtimes_path = runtimes_path
        self.pause_at = pause_at

    def stage(self, release_id: str, deployed: str | None, digest: str | None = None) -> str:
        """Stage ``release_id``; ``"staged"``, or ``"unchanged"`` if it already was (and is intact).

        ``digest``: the sha256 its ``release.json`` must have (what the rollout, or ``current``, pinned);
        any other manifest is refused before anything is downloaded.
        """
        self.report.step(f"Staging {self.url.of(release_id)}" + (f" beside {deployed}" if deployed else ""))
        with self.report.phase("download"):
            manifest, manifest_sha256 = self._fetch_manifest(release_id, digest)
            runtime = instance_runtime(manifest, self.runtimes_path)
        with self.report.phase("verify"):
            if self._already_staged(release_id, manifest, manifest_sha256, deployed):
                return "unchanged"
        final = self.layout.release_dir(release_id)
        partial = os.path.join(self.layout.releases_dir, f".{release_id}.partial")
        installed = False
        same = self._staged_with_slug(manifest, release_id)
        try:
            if same is None:
                env_bytes = self._download(manifest)
                archive = os.path.join(self.layout.downloads_dir, SLUG)
                with self.report.phase("unpack"):
                    self._unpack(manifest, archive, partial)
            else:  # a config change or a rollback: the slug is here already, verified when it was staged
                env_bytes = self._download_env(manifest)
                with self.report.phase("unpack"):
                    self._link_slug(same, manifest, partial)
            host.pause_if("unpacked", self.pause_at)
            with self.report.phase("configure"):
                ensure_home(self.layout)
                processes, units = self._configure(manifest, partial, env_bytes, runtime)
                _install_release_dir(self.layout, release_id, partial)
                installed = True
            self.report.detail("units: " + (", ".join(units) or "none (formation scales every process to 0)"))
            if same is not None and _same_content(same[1], manifest):
                self.report.detail(
                    f"{release_id} runs exactly what {same[1].id} runs (slug, config, formation, health check), "
                    f"which passed its preflight here: none needed"
                )
            elif any(self.layout.process_type_of(name) == WEB for name in units):
                with self.report.phase("preflight"):
                    self._preflight(release_id, processes[WEB], manifest, runtime)
            with self.report.phase("verify"):
                record = StagedRecord(release_id, tree_digest(final), manifest_sha256)
            host.write_atomic(os.path.join(final, STAGED), render_staged(record))
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            if installed and release_id != deployed:  # a failed stage leaves nothing half-made behind
                shutil.rmtree(final, ignore_errors=True)
            raise
        self.report.step(f"{release_id} is staged" + (f"; {deployed} keeps serving" if deployed else ""))
        return "staged"

    # Steps ----------------------------------------------------------------------------------------

    def _fetch_manifest(self, release_id: str, digest: str | None) -> tuple[Manifest, str]:
        key = self.url.keys.release(release_id, MANIFEST)
        body = self.store.read(key, limit=MAX_MANIFEST_BYTES)
        found = hashlib.sha256(body).hexdigest()
        if digest is not None and found != digest:
            raise DeployFailed(
                f"refusing {self.url.of(release_id)}/{MANIFEST}: its sha256 is {found[:12]}…, not the {digest[:12]}… "
                "the rollout pinned (the release's record changed after it was made)"
            )
        manifest = parse_manifest(body, self.schema)
        expected = (release_id, self.url.app, self.url.env)
        if (manifest.id, manifest.app, manifest.env) != expected:
            raise DeployFailed(
                f"{self.url.of(release_id)}/{MANIFEST} describes {manifest.app}/{manifest.env}/{manifest.id}, not "
                f"{'/'.join(expected[1:])}/{release_id}; the bucket was written by hand, republish the release"
            )
        if not re.fullmatch(r"/[\x21-\x7e]*", manifest.health_check.path):
            raise DeployFailed(f"release.json health_check.path {manifest.health_check.path!r} is not a plain URL path")
        return manifest, found

    def _already_staged(self, release_id: str, manifest: Manifest, manifest_sha256: str, deployed: str | None) -> bool:
        final = self.layout.release_dir(release_id)
        if not os.path.isdir(final):
            return False
        staged_raw = _staged_manifest_raw(final)
        if staged_raw != manifest.raw:
            if staged_raw is not None:
                self.report.detail(f"the copy of {release_id} here differs from the bucket's {MANIFEST}; staging again")
            return False
        problem = staged_problem(self.layout, release_id)
        record = parse_staged(host.read_text(os.path.join(final, STAGED)))
        if problem is None and record is not None:
            if record.manifest_sha256 != manifest_sha256:  # the same manifest (compared above), now pinned
                host.write_atomic(
                    os.path.join(final, STAGED), render_staged(replace(record, manifest_sha256=manifest_sha256))
                )
            self.report.detail(f"{release_id} is already staged and unchanged since (verified); nothing to download")
            return True
        if release_id == deployed and record is None:
            # Deployed by an agent that did not mark releases: it passed its health check, and
            # staging it again would replace the files under its running processes.
            staged = StagedRecord(release_id, tree_digest(final), manifest_sha256)
            host.write_atomic(os.path.join(final, STAGED), render_staged(staged))
            self.report.detail(f"{release_id} is the running release; recorded it as staged")
            return True
        self.report.detail(f"{problem}; staging it again")
        return False

    def _download(self, manifest: Manifest) -> bytes:
        release_id, size = manifest.id, manifest.slug_size
        archive = os.path.join(self.layout.downloads_dir, SLUG)
        key = slug_key(manifest, self.url.keys)
        with self.report.phase("download"):
            what = f"downloading {release_id}'s slug"
            require_space(what, self.layout.downloads_dir, size)
            _writing(what, self.layout.downloads_dir, size, lambda: self.store.download(key, archive, size))
        self.report.detail(f"downloaded {size} bytes of slug ({_built(manifest)})")
        with self.report.phase("verify"):
            digest, got = sha256_file(archive)
            if (digest, got) != (manifest.slug_sha256, manifest.slug_size):
                raise DeployFailed(
                    f"refusing s3://{self.url.bucket}/{key}: it does not match release.json (sha256 {digest[:12]}…, "
                    f"{got} bytes; expected {manifest.slug_sha256[:12]}…, {manifest.slug_size} bytes)"
                )
        return self._download_env(manifest)

    def _download_env(self, manifest: Manifest) -> bytes:
        with self.report.phase("download"):
            env_bytes = self.store.read(self.url.keys.release(manifest.id, ENV_FILE), limit=MAX_ENV_FILE_BYTES)
        with self.report.phase("verify"):
            self._verify_env(manifest, env_bytes)
        return env_bytes

    def _staged_with_slug(self, manifest: Manifest, release_id: str) -> tuple[str, Manifest] | None:
        """A release staged here (intact, by its record) whose slug is this one's: its directory and
        manifest. A config change or a rollback runs the slug of a release the instance has."""
        names = sorted(os.listdir(self.layout.releases_dir)) if os.path.isdir(self.layout.releases_dir) else []
        for name in names:
            if name == release_id or not is_release_id(name) or staged_problem(self.layout, name) is not None:
                continue
            try:
                other = staged_manifest(self.layout, name, self.schema)
            except (OSError, ManifestError):
                continue
            if (other.slug_sha256, other.slug_size, other.build.raw) == (
                manifest.slug_sha256,
                manifest.slug_size,
                manifest.build.raw,
            ):
                return self.layout.release_dir(name), other
        return None

    def _link_slug(self, same: tuple[str, Manifest], manifest: Manifest, partial: str) -> None:
        """The slug's files from the release staged with the same slug, as hard links (instant, no
        space): nothing writes a staged release's files (they belong to root; the app runs as its
        user), and the copy is verified as a whole when it is recorded staged."""
        directory, other = same
        os.mkdir(partial, 0o755)
        host.run(["cp", "-a", "--link", os.path.join(directory, APP), os.path.join(partial, APP)])
        self._check_slug_manifest(manifest, partial)
        self.report.detail(
            f"{manifest.id} runs {other.id}'s slug (sha256 {manifest.slug_sha256[:12]}…): nothing to download"
        )

    def _verify_env(self, manifest: Manifest, env_bytes: bytes) -> None:
        env_digest = hashlib.sha256(env_bytes).hexdigest()
        if env_digest != manifest.env_sha256:
            raise DeployFailed(
                f"the env file does not match release.json (sha256 {env_digest[:12]}… != {manifest.env_sha256[:12]}…); "
                "the release is corrupt, publish a new one"
            )

    def _unpack(self, manifest: Manifest, archive: str, partial: str) -> None:
        needed = min(gzip_unpacked_size(archive, manifest.slug_size), self.max_unpacked_bytes)
        what = f"unpacking {manifest.id}"
        require_space(what, self.layout.releases_dir, needed)
        os.mkdir(partial, 0o755)
        entries, size = _writing(
            what, self.layout.releases_dir, needed, lambda: _unpack_checked(archive, partial, self.max_unpacked_bytes)
        )
        self._check_slug_manifest(manifest, partial)
        self.report.detail(f"unpacked {entries} entries ({size} bytes)")

    def _check_slug_manifest(self, manifest: Manifest, partial: str) -> None:
        """The slug's own build.json must be what release.json's ``build`` says it is."""
        path = os.path.join(partial, APP, BUILD_MANIFEST)
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

    def _configure(
        self, manifest: Manifest, partial: str, env_bytes: bytes, runtime: Offer | None
    ) -> tuple[dict[str, str], dict[str, str]]:
        processes = read_processes(manifest.id, os.path.join(partial, APP))
        formation = resolve_formation(processes, manifest.formation)
        values = parse_env(decode_text(env_bytes, "env file"))
        check_carriable(values)
        units_dir = os.path.join(partial, "units")

        def write() -> dict[str, dict[str, str]]:
            host.write_atomic(os.path.join(partial, "env"), render_environment_file(values), mode=0o600)
            host.write_atomic(os.path.join(partial, MANIFEST), json.dumps(manifest.raw, indent=2) + "\n")
            # Rendered for the release's final directory, where its units will find it.
            environment = slug_environment(
                f"{self.layout.release_dir(manifest.id)}/{APP}", manifest.build, runtime.bin if runtime else None
            )
            os.mkdir(units_dir, 0o755)
            rendered = {}
            for slot in SLOTS:  # either slot may run it (docs/switch.md)
                rendered[slot] = render_units(self.layout, manifest.id, slot, processes, formation, environment)
                os.mkdir(os.path.join(units_dir, slot), 0o755)
                for name, text in rendered[slot].items():
                    host.write_atomic(os.path.join(units_dir, slot, name), text)
            return rendered

        rendered = _writing(f"configuring {manifest.id}", self.layout.releases_dir, 1024 * 1024, write)
        units = rendered[SLOTS[0]]
        if units:
            # systemd-analyze verify reads the files where they are; the slots' differ only in names.
            host.run(verify_command([os.path.join(units_dir, SLOTS[0], name) for name in units]))
        return processes, units

    def _preflight(self, release_id: str, command: str, manifest: Manifest, runtime: Offer | None) -> None:
        environment = one_off_environment(self.layout, release_id, manifest, runtime)
        unit = self.layout.preflight_unit(release_id)
        port = host.spare_port()
        self.report.step(f"Preflight: starting {release_id}'s web process on spare port {port}")
        discard_unit(unit)
        try:
            host.run(preflight_command(self.layout, release_id, command, port, environment))
            try:
                host.wait_healthy(
                    port,
                    manifest.health_check.path,
                    manifest.health_check.timeout,
                    lambda: transient_exit(unit, port),
                    manifest.health_check.codes,
                    manifest.health_check.codes_text,
                )
            except (RuntimeError, TimeoutError) as error:
                self.report.show_log(unit)
                raise DeployFailed(f"{release_id} failed its preflight: {error}") from None
        finally:
            discard_unit(unit)
        self.report.detail(f"answered {manifest.health_check.path} on port {port}")


def _same_content(other: Manifest, manifest: Manifest) -> bool:
    """Whether two releases run exactly the same thing: slug, config, formation and health check."""
    return (other.slug_sha256, other.env_sha256, other.formation, other.health_check) == (
        manifest.slug_sha256,
        manifest.env_sha256,
        manifest.formation,
        manifest.health_check,
    ) and other.build.raw == manifest.build.raw


def _staged_manifest_raw(release_dir: str) -> Any:
    text = host.read_text(os.path.join(release_dir, MANIFEST))
    try:
        return json.loads(text) if text is not None else None
    except ValueError:
        return None


def _install_release_dir(layout: AppLayout, release_id: str, partial: str) -> None:
    """Move the unpacked release to ``releases/<id>``, replacing an older copy of the same id."""
    final = layout.release_dir(release_id)
    if os.path.lexists(final):
        aside = os.path.join(layout.releases_dir, f".{release_id}.old")
        os.replace(final, aside)
        os.replace(partial, final)
        shutil.rmtree(aside)
    else:
        os.replace(partial, final)


def _writing(what: str, path: str, needed: int, action: Callable[[], T]) -> T:
    """Run ``action``; a disk-full error becomes one sentence naming the filesystem and the need."""
    try:
        return action()
    except OSError as error:
        if is_no_space(error):
            raise explain_no_space(what, path, needed) from None
        raise


def _unpack_checked(archive: str, partial: str, limit: int) -> tuple[int, int]:
    try:
        return unpack(Path(archive), Path(partial) / APP, limit)
    except UnsafeArchive as error:
        raise DeployFailed(f"refusing {SLUG}: {error}") from None


def _built(manifest: Manifest) -> str:
    runtime = manifest.build.runtime
    return f"{manifest.build.kind} app" + (f" on {runtime}" if runtime else "")
