"""Releases as data: ids, manifests, source checks and config changes. No AWS calls.

The bucket's layout is :mod:`slipway_release.layout`; the formats shared with the
instance (release ids, the env file, the Procfile, ``release.schema.json``, the rules for
source archives) come from :mod:`slipway_release`, the modules the deploy agent uses, so
the publisher and the agent cannot disagree.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from slipway.settings import AppRuntime
from slipway_release import names
from slipway_release.archive import UnsafeArchive, scan
from slipway_release.build import BUILD_MANIFEST, MAX_BUILD_MANIFEST_BYTES, BuildManifestError, parse_build_manifest
from slipway_release.envfile import EnvFileError, check_carriable, parse_env, render_env
from slipway_release.manifest import VERSION, load_schema, schema_errors
from slipway_release.procfile import ProcfileError, parse_procfile, resolve_formation

UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
SHA256 = re.compile(f"^{names.SHA256}$")
GIT_COMMIT = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})$")
MAX_DESCRIPTION = 1000


@dataclass(frozen=True)
class Artifact:
    """A file of a release as release.json records it: its sha256 and size in bytes."""

    sha256: str
    size: int


class ReleaseError(ValueError):
    """A request cannot be carried out; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def release_number(release_id: str) -> int:
    """The number of ``release_id``; 400 naming the syntax for anything that is not one."""
    try:
        return names.release_number(release_id)
    except ValueError as error:
        raise ReleaseError(400, str(error)) from None


def page(release_ids: Iterable[str], *, limit: int, before: str | None) -> tuple[list[str], str | None]:
    """One page of ids newest first, older than ``before``; and the token of the next page."""
    ordered = names.newest_first(release_ids)
    if before is not None:
        cutoff = release_number(before)
        ordered = [r for r in ordered if release_number(r) < cutoff]
    chosen = ordered[:limit]
    return chosen, (chosen[-1] if len(ordered) > limit else None)


def build_manifest(
    *,
    release_id: str,
    app: str,
    env: str,
    slug: Artifact,
    build: Mapping[str, Any],
    source: Artifact,
    git_ref: str,
    git_commit: str,
    env_text: str,
    config_changes: Mapping[str, list[str]],
    created_by: str,
    created_at: str,
    description: str,
    runtime: AppRuntime,
    parent: str | None,
    base: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The release.json of a new release, checked against ``release.schema.json``; ``base``: what it
    was made from (``{"env", "release", "reason"}``), ``None`` for one built from its own source."""
    manifest = {
        "version": VERSION,
        "id": release_id,
        "app": app,
        "env": env,
        "slug": {"sha256": slug.sha256, "size": slug.size},
        "build": dict(build),
        "source": {"sha256": source.sha256, "size": source.size},
        "git": {"ref": git_ref, "commit": git_commit},
        "env_sha256": hashlib.sha256(env_text.encode()).hexdigest(),
        "config_changes": {"set": list(config_changes["set"]), "unset": list(config_changes["unset"])},
        "created_by": created_by,
        "created_at": created_at,
        "description": description,
        "formation": dict(runtime.formation),
        "health_check": {
            "path": runtime.health_check_path,
            "port": runtime.port,
            "codes": runtime.health_check_codes,
        },
        "parent": parent,
        "base": dict(base) if base else None,
    }
    errors = schema_errors(manifest, load_schema())
    if errors:
        raise ReleaseError(400, "the release would not be valid: " + "; ".join(errors[:3]))
    return manifest


def config_changes(before: str, after: str) -> dict[str, list[str]]:
    """The names a release's env file sets (new or changed) and unsets against its parent's.
    Names only: the values may be secrets."""
    old, new = read_config(before), read_config(after)
    return {
        "set": sorted(name for name, value in new.items() if old.get(name) != value),
        "unset": sorted(set(old) - set(new)),
    }


def check_git(git: object) -> tuple[str, str]:
    """The ``git`` object of a publish request as (ref, commit)."""
    if not isinstance(git, Mapping) or not isinstance(git.get("ref"), str) or not isinstance(git.get("commit"), str):
        raise ReleaseError(400, 'git must be {"ref": "<branch or tag>", "commit": "<full sha>"}')
    ref, commit = git["ref"], git["commit"]
    if not 1 <= len(ref) <= 255:
        raise ReleaseError(400, "git.ref must be 1 to 255 characters, e.g. main")
    if not GIT_COMMIT.match(commit):
        raise ReleaseError(400, f"git.commit {commit[:80]!r} is not a full commit sha; pass `git rev-parse <ref>`")
    return ref, commit


def check_description(description: object) -> str:
    if description is None:
        return ""
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise ReleaseError(400, f"description must be text of at most {MAX_DESCRIPTION} characters")
    return description


class _Hashing:
    """A read-only stream that hashes and counts what passes through it."""

    def __init__(self, raw: IO[bytes], limit: int) -> None:
        self.raw, self.limit = raw, limit
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, amount: int = -1) -> bytes:
        chunk = self.raw.read(amount)
        self.size += len(chunk)
        if self.size > self.limit:
            raise ReleaseError(422, f"the source is larger than the limit of {self.limit} bytes")
        self.digest.update(chunk)
        return chunk

    def drain(self) -> None:
        while self.read(1024 * 1024):
            pass


def check_source(
    stream: IO[bytes], *, sha256: str, size: int, limit: int, max_unpacked_bytes: int, formation: Mapping[str, int]
) -> None:
    """Read the whole uploaded source once, with the rules the instance applies when it unpacks:
    a gzip tar of only files, directories and links that stay inside, no duplicates, under
    ``max_unpacked_bytes`` unpacked; exactly ``size`` bytes with digest ``sha256``, at most
    ``limit``; a ``Procfile`` at its root that parses and defines the types ``formation`` runs.

    Raises :class:`ReleaseError` (422) naming the first problem found.
    """
    hashing = _Hashing(stream, limit)
    try:
        scanned = scan(hashing, max_unpacked_bytes)  # type: ignore[arg-type]
    except UnsafeArchive as error:
        raise ReleaseError(422, f"refusing the source: {error}; upload `git archive --format=tar.gz` output") from None
    hashing.drain()
    actual = hashing.digest.hexdigest()
    if hashing.size != size or actual != sha256:
        raise ReleaseError(
            422,
            f"the uploaded source has {hashing.size} bytes and sha256 {actual[:12]}…, but {size} bytes and "
            f"{sha256[:12]}… were declared; upload the file again",
        )
    _check_procfile(scanned.procfile, formation, "the source")


def check_slug(
    stream: IO[bytes],
    *,
    slug: Artifact | None,
    source: Artifact,
    max_unpacked_bytes: int,
    formation: Mapping[str, int],
) -> tuple[dict[str, Any], Artifact]:
    """Read a slug once, with the archive rules the instance applies: the size and sha256
    declared (``slug``; ``None`` for one the builder wrote), a build manifest
    (``.slipway/build.json``) this platform understands that names ``source`` as what was built,
    and a root ``Procfile`` defining the types ``formation`` runs. Returns the build manifest as
    release.json records it, and the slug's size and sha256.

    Raises :class:`ReleaseError` (422) naming the first problem found.
    """
    hashing = _Hashing(stream, slug.size if slug else max_unpacked_bytes)
    try:
        scanned = scan(
            hashing,  # type: ignore[arg-type]
            max_unpacked_bytes,
            read={BUILD_MANIFEST: MAX_BUILD_MANIFEST_BYTES},
            what="the slug",
        )
    except UnsafeArchive as error:
        raise ReleaseError(422, f"refusing the slug: {error}; build the release again") from None
    except ReleaseError:
        raise ReleaseError(422, f"the slug is larger than {hashing.limit} bytes; it cannot be a release") from None
    hashing.drain()
    actual = hashing.digest.hexdigest()
    if slug is not None and (hashing.size != slug.size or actual != slug.sha256):
        raise ReleaseError(
            422,
            f"the slug has {hashing.size} bytes and sha256 {actual[:12]}…, but {slug.size} bytes and "
            f"{slug.sha256[:12]}… were declared; upload it again",
        )
    data = scanned.files.get(BUILD_MANIFEST)
    if data is None:
        raise ReleaseError(422, f"the slug has no {BUILD_MANIFEST}: it was not made by the build program")
    try:
        built = parse_build_manifest(data)
    except BuildManifestError as error:
        raise ReleaseError(422, f"the slug's {BUILD_MANIFEST}: {error}") from None
    if built.source_sha256 != source.sha256:
        raise ReleaseError(
            422,
            f"the slug was built from source {built.source_sha256[:12]}…, not this release's {source.sha256[:12]}…; "
            "build the release again",
        )
    _check_procfile(scanned.procfile, formation, "the slug")
    return built.raw, Artifact(actual, hashing.size)


def _check_procfile(text: str | None, formation: Mapping[str, int], what: str) -> None:
    if text is None:
        raise ReleaseError(
            422, f"{what} has no Procfile at its root; add one (e.g. `web: python app.py`) and publish again"
        )
    try:
        resolve_formation(parse_procfile(text), formation)
    except ProcfileError as error:
        raise ReleaseError(
            422, f"{error}; fix the Procfile (or the app's formation in cdk.json) and publish again"
        ) from None


def change_config(
    current: Mapping[str, str], *, set_vars: Mapping[str, object], unset: Iterable[object]
) -> dict[str, str]:
    """The config after setting ``set_vars`` and removing ``unset``, checked for the instance side."""
    values = dict(current)
    for name in unset:
        if not isinstance(name, str):
            raise ReleaseError(400, "unset must be a list of variable names")
        if name not in values:
            raise ReleaseError(400, f"{name} is not set; nothing to unset")
        del values[name]
    for name, value in set_vars.items():
        if not isinstance(value, str):
            raise ReleaseError(400, f"{name}: values are strings; quote {value!r}")
        values[name] = value
    try:
        check_carriable(values)
        text = render_env(values)
    except EnvFileError as error:
        raise ReleaseError(400, str(error)) from None
    # The instance reads the file back with its own parser: it must see exactly these values.
    if parse_env(text) != values:
        raise ReleaseError(400, "the config cannot be written as an env file exactly; check the values")
    return values


def read_config(text: str) -> dict[str, str]:
    """The canonical env file's variables."""
    try:
        return parse_env(text)
    except EnvFileError as error:
        raise ReleaseError(500, f"the stored env file is unreadable: {error}") from None
