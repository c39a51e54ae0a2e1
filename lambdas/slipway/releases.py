"""Releases as data: ids, keys, manifests, source checks and config changes. No AWS calls.

The layout of the release bucket (ARCHITECTURE.md section 4)::

    <app>/<env>/env                  canonical config for new releases
    <app>/<env>/current              body = id of the current release
    <app>/<env>/r<N>/source.tar.gz   immutable release files
    <app>/<env>/r<N>/env
    <app>/<env>/r<N>/release.json
    uploads/<app>/<env>/<id>/...     sources on their way in (expire after a day)

Formats shared with the instance (the env file, ``release.schema.json``) come from the
deploy agent's own modules, so the publisher and the agent cannot disagree.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import tarfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from slipway_agent.envfile import EnvFileError, check_carriable, parse_env, render_env
from slipway_agent.manifest import load_schema, schema_errors

RELEASE_ID = re.compile(r"^r([1-9][0-9]{0,8})$")
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
GIT_COMMIT = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})$")
MANIFEST_VERSION = 1
MAX_DESCRIPTION = 1000


class ReleaseError(ValueError):
    """A request cannot be carried out; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class AppRuntime:
    """What a release of an app records from the platform configuration."""

    port: int
    health_check_path: str
    formation: Mapping[str, int]


def release_number(release_id: str) -> int:
    match = RELEASE_ID.match(release_id)
    if not match:
        raise ReleaseError(400, f"{release_id!r} is not a release id; release ids look like r7")
    return int(match.group(1))


def newest_first(release_ids: Iterable[str]) -> list[str]:
    """Release ids sorted newest first, by number (r10 is newer than r9)."""
    return sorted((r for r in release_ids if RELEASE_ID.match(r)), key=release_number, reverse=True)


def next_release_id(release_ids: Iterable[str]) -> str:
    """The id after the newest one, ``r1`` for the first release."""
    newest = newest_first(release_ids)
    return f"r{release_number(newest[0]) + 1}" if newest else "r1"


def page(release_ids: Iterable[str], *, limit: int, before: str | None) -> tuple[list[str], str | None]:
    """One page of ids newest first, older than ``before``; and the token of the next page."""
    ordered = newest_first(release_ids)
    if before is not None:
        cutoff = release_number(before)
        ordered = [r for r in ordered if release_number(r) < cutoff]
    chosen = ordered[:limit]
    return chosen, (chosen[-1] if len(ordered) > limit else None)


def prefix(app: str, env: str) -> str:
    return f"{app}/{env}/"


def release_key(app: str, env: str, release_id: str, name: str) -> str:
    """Key of one file (``source.tar.gz``, ``env``, ``release.json``) of a release."""
    return f"{app}/{env}/{release_id}/{name}"


def upload_key(app: str, env: str, upload_id: str, name: str) -> str:
    return f"uploads/{app}/{env}/{upload_id}/{name}"


def build_manifest(
    *,
    release_id: str,
    app: str,
    env: str,
    source_sha256: str,
    source_size: int,
    git_ref: str,
    git_commit: str,
    env_text: str,
    created_by: str,
    created_at: str,
    description: str,
    runtime: AppRuntime,
    parent: str | None,
) -> dict[str, Any]:
    """The release.json of a new release, checked against ``release.schema.json``."""
    manifest = {
        "version": MANIFEST_VERSION,
        "id": release_id,
        "app": app,
        "env": env,
        "source": {"sha256": source_sha256, "size": source_size},
        "git": {"ref": git_ref, "commit": git_commit},
        "env_sha256": hashlib.sha256(env_text.encode()).hexdigest(),
        "created_by": created_by,
        "created_at": created_at,
        "description": description,
        "formation": dict(runtime.formation),
        "health_check": {"path": runtime.health_check_path, "port": runtime.port},
        "parent": parent,
    }
    errors = schema_errors(manifest, load_schema())
    if errors:
        raise ReleaseError(400, "the release would not be valid: " + "; ".join(errors[:3]))
    return manifest


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


def check_source(stream: IO[bytes], *, sha256: str, size: int, limit: int) -> None:
    """Read the whole uploaded source once: a gzip tar with a ``Procfile`` at its root,
    exactly ``size`` bytes with digest ``sha256``, at most ``limit`` bytes.

    Raises :class:`ReleaseError` (422) naming the first problem found.
    """
    hashing = _Hashing(stream, limit)
    procfile = False
    try:
        with tarfile.open(fileobj=hashing, mode="r|gz") as archive:  # type: ignore[call-overload]
            for member in archive:
                if member.name in ("Procfile", "./Procfile") and member.isfile():
                    procfile = True
    except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError, OSError) as error:
        raise ReleaseError(
            422, f"the source is not a gzip-compressed tar ({error}); upload `git archive --format=tar.gz` output"
        ) from None
    hashing.drain()
    actual = hashing.digest.hexdigest()
    if hashing.size != size or actual != sha256:
        raise ReleaseError(
            422,
            f"the uploaded source has {hashing.size} bytes and sha256 {actual[:12]}…, but {size} bytes and "
            f"{sha256[:12]}… were declared; upload the file again",
        )
    if not procfile:
        raise ReleaseError(
            422, "the source has no Procfile at its root; add one (e.g. `web: python app.py`) and publish again"
        )


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
