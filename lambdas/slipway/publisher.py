"""One app's releases in one environment as the API reads them, and its uploads.

:class:`AppReleases` reads releases, ``current`` (which rollouts move, by compare-and-swap) and
what each instance runs; :class:`Publisher` adds what the API writes: uploads of sources on
their way to the builder, and nothing of any release. Releases are made by the release writer
(:mod:`slipway.writer`), the only component whose role may write them.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from slipway.releases import (
    SHA256,
    UPLOAD_ID,
    Artifact,
    ReleaseError,
    check_description,
    check_git,
    check_source,
    page,
    read_config,
    release_number,
)
from slipway.settings import AppRuntime
from slipway.store import Bucket
from slipway_release.archive import DEFAULT_MAX_UNPACKED_BYTES
from slipway_release.layout import MANIFEST, SOURCE, UPLOAD_RECORD, AppKeys, Pointer, parse_pointer
from slipway_release.manifest import ManifestError, load_schema, parse_manifest, slug_key, source_key

# Uploads larger than one part go multipart; the CLI sends parts in parallel.
PART_SIZE = 16 * 1024 * 1024
URL_LIFETIME = 3600
# Where an upload's build stands (its record's ``status``).
BUILDING, SUCCEEDED, FAILED = "BUILDING", "SUCCEEDED", "FAILED"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class AppReleases:
    """The releases of ``app`` in ``env`` as rollouts and readers see them: manifests, the
    ``current`` pointer (moved only by compare-and-swap, pinning the manifest's digest), and what
    each instance runs."""

    def __init__(self, bucket: Bucket, *, app: str, env: str) -> None:
        self.bucket, self.app, self.env = bucket, app, env
        self.keys = AppKeys(app, env)

    def show(self, release_id: str) -> dict[str, Any]:
        """A release's manifest with whether it is current; 404 if there is no such release."""
        return self._with_current(self._manifest(release_id))

    def _manifest(self, release_id: str) -> dict[str, Any]:
        manifest: dict[str, Any] = json.loads(self._manifest_bytes(release_id))
        return manifest

    def _manifest_bytes(self, release_id: str) -> bytes:
        release_number(release_id)
        stored = self.bucket.read(self.keys.release(release_id, MANIFEST))
        if stored is None:
            raise ReleaseError(404, f"{self.app} has no release {release_id} in {self.env}")
        return stored.body

    def verified(self, release_id: str) -> tuple[dict[str, Any], str]:
        """A release's manifest, valid against ``release.schema.json`` and naming this app,
        environment and id, and the sha256 of its bytes (what ``current`` and the instances pin).
        404 if there is no such release, 422 if its manifest is not one."""
        body = self._manifest_bytes(release_id)
        try:
            manifest = parse_manifest(body, load_schema())
        except ManifestError as error:
            raise ReleaseError(422, f"{self.app} {release_id} in {self.env}: {error}") from None
        if (manifest.id, manifest.app, manifest.env) != (release_id, self.app, self.env):
            raise ReleaseError(
                422,
                f"{self.keys.release(release_id, MANIFEST)} describes {manifest.app}/{manifest.env}/{manifest.id}, "
                "not itself; it was not written by this platform",
            )
        return manifest.raw, hashlib.sha256(body).hexdigest()

    def _with_current(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return {**manifest, "current": manifest["id"] == self.current()}

    def _pointer(self, key: str) -> str | None:
        stored = self.bucket.read(key)
        return stored.body.decode().strip() if stored else None

    def pointer(self) -> Pointer | None:
        """What ``current`` says (the release and the digest it pins); ``None`` before any deploy."""
        stored = self.bucket.read(self.keys.current)
        if stored is None:
            return None
        try:
            return parse_pointer(stored.body)
        except ValueError as error:
            raise ReleaseError(500, f"{self.keys.current} {error}; only rollouts write it") from None

    def current(self) -> str | None:
        pointer = self.pointer()
        return pointer.release if pointer else None

    def previous(self) -> str | None:
        """The release that was current before the last rollout moved it (what a rollback deploys)."""
        return self._pointer(self.keys.previous)

    def move_current(self, release_id: str, *, digest: str, expected: str | None) -> None:
        """Point ``current`` at ``release_id``, pinning its manifest's ``digest``, if it still points at
        ``expected`` (compare-and-swap), and note ``expected`` as the previous release. 409 if another
        deploy moved it; 422 if the manifest is not the one pinned (it changed since the rollout read it)."""
        if self.verified(release_id)[1] != digest:
            raise ReleaseError(
                422, f"{self.keys.release(release_id, MANIFEST)} changed since the rollout pinned it; refusing it"
            )
        key = self.keys.current
        stored = self.bucket.read(key)
        found = parse_pointer(stored.body).release if stored else None
        if found != expected:
            raise ReleaseError(
                409, f"current is {found or 'unset'}, not {expected or 'unset'}; another deploy moved it"
            )
        body = Pointer(release_id, digest).render()
        moved = self.bucket.create(key, body) if stored is None else self.bucket.replace(key, body, etag=stored.etag)
        if not moved:
            raise ReleaseError(409, f"current moved while switching to {release_id}; another deploy moved it")
        if expected:
            self.bucket.put(self.keys.previous, f"{expected}\n".encode())

    def instance_release(self, instance: str) -> str | None:
        """What the last rollout put on ``instance``; ``None`` if unknown (it booted since, or a
        rollback did not finish)."""
        return self._pointer(self.keys.instance(instance))

    def record_instances(self, instances: list[str], release: str | None) -> None:
        """Note that ``instances`` run ``release``; ``None`` forgets what they run."""
        keys = [self.keys.instance(i) for i in instances]
        if release is None:
            self.bucket.delete(*keys)
            return
        for key in keys:
            self.bucket.put(key, f"{release}\n".encode())


class Publisher(AppReleases):
    """Publishing releases and config of ``app`` in ``env`` (what the API does beyond reading)."""

    def __init__(
        self,
        bucket: Bucket,
        *,
        app: str,
        env: str,
        runtime: AppRuntime,
        max_source_bytes: int,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        super().__init__(bucket, app=app, env=env)
        self.runtime, self.max_source_bytes, self.clock = runtime, max_source_bytes, clock

    # Uploads ------------------------------------------------------------------------------------

    def create_upload(self, *, size: object, sha256: object, user: str) -> dict[str, Any]:
        """Presigned URLs for the source: one PUT, or one per part of ``PART_SIZE``."""
        source = _declared(size, sha256, "the source", self.max_source_bytes)
        upload_id = uuid.uuid4().hex
        record: dict[str, Any] = {"size": source.size, "sha256": source.sha256, "created_by": user}
        answer: dict[str, Any] = {
            "upload_id": upload_id,
            "expires_at": _timestamp(self.clock() + timedelta(seconds=URL_LIFETIME)),
            "part_size": PART_SIZE,
        }
        answer["parts"], record["multipart_upload_id"] = self._upload_urls(self.keys.upload(upload_id, SOURCE), source)
        self.bucket.put(self.keys.upload(upload_id, UPLOAD_RECORD), json.dumps(record).encode())
        return answer

    def _upload_urls(self, key: str, artifact: Artifact) -> tuple[list[dict[str, Any]], str | None]:
        count = -(-artifact.size // PART_SIZE)
        if count == 1:
            return [{"part_number": 1, "url": self.bucket.presigned_put(key, URL_LIFETIME)}], None
        multipart = self.bucket.start_multipart(key)
        return [
            {"part_number": n, "url": self.bucket.presigned_part(key, multipart, n, URL_LIFETIME)}
            for n in range(1, count + 1)
        ], multipart

    def upload_record(self, upload_id: object) -> tuple[str, dict[str, Any]]:
        """An upload's id, checked, and its record (what the API and the release writer note of it)."""
        if not isinstance(upload_id, str) or not UPLOAD_ID.match(upload_id):
            raise ReleaseError(400, "upload_id must be the id createUpload returned")
        stored = self.bucket.read(self.keys.upload(upload_id, UPLOAD_RECORD))
        if stored is None:
            raise ReleaseError(422, f"upload {upload_id} does not exist or has expired; start a new upload")
        record: dict[str, Any] = json.loads(stored.body)
        return upload_id, record

    def write_record(self, upload_id: str, record: dict[str, Any]) -> None:
        """Replace the upload's record (written by whoever holds the upload: the API, then the writer)."""
        self.bucket.put(self.keys.upload(upload_id, UPLOAD_RECORD), json.dumps(record).encode())

    def finalize(
        self, *, upload_id: object, git: object, description: object, parts: object, user: str
    ) -> dict[str, Any]:
        """Check an uploaded source with the rules the instance applies, and mark it to be built
        (its status ``BUILDING``): the upload's record. A source that fails a check is refused and
        deleted at once (nothing of it stays in the bucket)."""
        if not isinstance(upload_id, str) or not UPLOAD_ID.match(upload_id):
            raise ReleaseError(400, "upload_id must be the id createUpload returned")
        git_ref, git_commit = check_git(git)
        note = check_description(description)
        upload_id, record = self.upload_record(upload_id)
        if "release" in record:
            raise ReleaseError(409, f"upload {upload_id} was already published as {record['release']}")
        if record.get("status") == BUILDING:
            raise ReleaseError(409, f"upload {upload_id} is being built (build {upload_id}); follow it, not again")
        source = self.keys.upload(upload_id, SOURCE)
        if record.get("multipart_upload_id"):
            self._complete(source, record["multipart_upload_id"], parts)
        found = self.bucket.stream_version(source)
        if found is None:
            raise ReleaseError(422, f"nothing was uploaded for upload {upload_id}; PUT the source to its URL first")
        body, version = found
        try:
            check_source(
                body,
                sha256=record["sha256"],
                size=record["size"],
                limit=self.max_source_bytes,
                max_unpacked_bytes=DEFAULT_MAX_UNPACKED_BYTES,
                formation=self.runtime.formation,
            )
        except ReleaseError:
            self.bucket.delete(source, self.keys.upload(upload_id, UPLOAD_RECORD))  # refused: nothing kept
            raise
        record.update(
            git={"ref": git_ref, "commit": git_commit},
            description=note,
            finalized_by=user,
            multipart_upload_id=None,
            source_version=version,  # the bytes checked: what the writer stores as the release's source
            status=BUILDING,
        )
        self.write_record(upload_id, record)
        return {"upload_id": upload_id, **record}

    def note_build(self, upload_id: str, **fields: Any) -> dict[str, Any]:
        """Note where the upload's build stands (``build_id``, ``status``, ``error``) in its record."""
        upload_id, record = self.upload_record(upload_id)
        record.update(fields)
        self.write_record(upload_id, record)
        return record

    def build(self, upload_id: object) -> dict[str, Any]:
        """The upload's record as a build's status: 404 for an upload that was never finalized."""
        try:
            upload_id, record = self.upload_record(upload_id)
        except ReleaseError as error:
            raise ReleaseError(404 if error.status == 422 else error.status, str(error)) from None
        if "git" not in record:
            raise ReleaseError(404, f"upload {upload_id} was not finalized; nothing is being built")
        status = record.get("status") or (SUCCEEDED if "release" in record else BUILDING)
        return {
            "id": upload_id,
            "status": status,
            "release": record.get("release"),
            "error": record.get("error"),
            "build_id": record.get("build_id"),
            "git": record["git"],
            "description": record.get("description", ""),
            "created_by": record.get("finalized_by", record.get("created_by")),
        }

    def _complete(self, key: str, multipart_id: str, parts: object) -> None:
        if not isinstance(parts, list) or not all(
            isinstance(p, Mapping) and isinstance(p.get("part_number"), int) and isinstance(p.get("etag"), str)
            for p in parts
        ):
            raise ReleaseError(400, 'parts must list {"part_number": n, "etag": "<ETag S3 returned>"} for each part')
        try:
            self.bucket.complete_multipart(key, multipart_id, [(p["part_number"], p["etag"]) for p in parts])
        except self.bucket.client.exceptions.ClientError as error:
            raise ReleaseError(422, f"the parts do not complete the upload ({error}); upload every part") from None

    # Releases -----------------------------------------------------------------------------------

    def list_releases(self, *, limit: int, before: str | None) -> dict[str, Any]:
        """One page of releases, newest first, each with whether it is current (what serves). An id
        whose claim never completed (its env written, the writer stopped before its manifest) is
        not a release, and left out."""
        ids, next_before = page(self.bucket.child_names(self.keys.prefix), limit=limit, before=before)
        current = self.current()
        listed = []
        for release_id in ids:
            stored = self.bucket.read(self.keys.release(release_id, MANIFEST))
            if stored is not None:
                listed.append({**json.loads(stored.body), "current": release_id == current})
        return {"releases": listed, "next_before": next_before}

    def download(self, release_id: str) -> dict[str, Any]:
        """Presigned URLs for a release's source and slug (where its manifest's version keeps them)."""
        manifest, _ = self.verified(release_id)
        parsed = parse_manifest(json.dumps(manifest).encode(), load_schema())
        expires = _timestamp(self.clock() + timedelta(seconds=URL_LIFETIME))
        return {
            "url": self.bucket.presigned_get(source_key(parsed, self.keys), URL_LIFETIME),
            "expires_at": expires,
            "size": manifest["source"]["size"],
            "sha256": manifest["source"]["sha256"],
            "slug": {
                "url": self.bucket.presigned_get(slug_key(parsed, self.keys), URL_LIFETIME),
                "size": manifest["slug"]["size"],
                "sha256": manifest["slug"]["sha256"],
            },
        }

    # Config -------------------------------------------------------------------------------------

    def _canonical_env(self) -> tuple[str, str | None]:
        stored = self.bucket.read(self.keys.env_file)
        return (stored.body.decode(), stored.etag) if stored else ("", None)

    def config(self) -> dict[str, str]:
        return read_config(self._canonical_env()[0])


def _declared(size: object, sha256: object, what: str, limit: int) -> Artifact:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ReleaseError(400, f"size must be {what}'s size in bytes")
    if size > limit:
        raise ReleaseError(413, f"{what} is {size} bytes; the limit is {limit} bytes")
    if not isinstance(sha256, str) or not SHA256.match(sha256):
        raise ReleaseError(400, f"sha256 must be {what}'s sha256 as 64 lowercase hex digits")
    return Artifact(sha256, size)
