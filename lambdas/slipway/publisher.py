"""Publishing releases of one app in one environment, over the release bucket.

Every write that could race is conditional: a release id is claimed by creating its
``release.json`` only if absent (the loser retries with the next id), the canonical
env file and ``current`` move only if unchanged since read. A rejected request
writes nothing under the app's prefix.
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
    build_manifest,
    change_config,
    check_description,
    check_git,
    check_slug,
    check_source,
    config_changes,
    page,
    read_config,
    release_number,
)
from slipway.settings import AppRuntime
from slipway.store import Bucket
from slipway_release.archive import DEFAULT_MAX_UNPACKED_BYTES
from slipway_release.envfile import render_env
from slipway_release.layout import ENV_FILE, MANIFEST, SLUG, SOURCE, UPLOAD_RECORD, AppKeys, Pointer, parse_pointer
from slipway_release.manifest import ManifestError, load_schema, parse_manifest
from slipway_release.names import newest_first, next_release_id

# Uploads larger than one part go multipart; the CLI sends parts in parallel.
PART_SIZE = 16 * 1024 * 1024
URL_LIFETIME = 3600
CLAIM_ATTEMPTS = 20
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

    def create_upload(self, *, size: object, sha256: object, user: str, slug: object = None) -> dict[str, Any]:
        """Presigned URLs for the source: one PUT, or one per part of ``PART_SIZE``. With ``slug``
        (``{"size", "sha256"}``: a promotion, which ships the slug another environment built),
        URLs for the slug too."""
        source = _declared(size, sha256, "the source", self.max_source_bytes)
        upload_id = uuid.uuid4().hex
        record: dict[str, Any] = {"size": source.size, "sha256": source.sha256, "created_by": user}
        answer: dict[str, Any] = {
            "upload_id": upload_id,
            "expires_at": _timestamp(self.clock() + timedelta(seconds=URL_LIFETIME)),
            "part_size": PART_SIZE,
        }
        answer["parts"], record["multipart_upload_id"] = self._upload_urls(self.keys.upload(upload_id, SOURCE), source)
        if slug is not None:
            if not isinstance(slug, Mapping):
                raise ReleaseError(400, 'slug must be {"size": <bytes>, "sha256": "<hex>"} of the slug to promote')
            built = _declared(slug.get("size"), slug.get("sha256"), "the slug", DEFAULT_MAX_UNPACKED_BYTES)
            record["slug"] = {"size": built.size, "sha256": built.sha256}
            answer["slug_parts"], record["slug_multipart_upload_id"] = self._upload_urls(
                self.keys.upload(upload_id, SLUG), built
            )
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

    def _record(self, upload_id: object) -> tuple[str, dict[str, Any]]:
        if not isinstance(upload_id, str) or not UPLOAD_ID.match(upload_id):
            raise ReleaseError(400, "upload_id must be the id createUpload returned")
        stored = self.bucket.read(self.keys.upload(upload_id, UPLOAD_RECORD))
        if stored is None:
            raise ReleaseError(422, f"upload {upload_id} does not exist or has expired; start a new upload")
        record: dict[str, Any] = json.loads(stored.body)
        return upload_id, record

    def _note(self, upload_id: str, record: dict[str, Any]) -> None:
        self.bucket.put(self.keys.upload(upload_id, UPLOAD_RECORD), json.dumps(record).encode())

    def finalize(
        self,
        *,
        upload_id: object,
        git: object,
        description: object,
        parts: object,
        slug_parts: object = None,
        promoted_from: object,
        user: str,
    ) -> dict[str, Any]:
        """Check an upload: its source, and for a promotion (``promoted_from``) the slug it ships.
        Returns the upload's record: a promotion is then published with :meth:`publish_upload`, a
        source is built first (its status ``BUILDING``). A check that fails changes nothing."""
        if not isinstance(upload_id, str) or not UPLOAD_ID.match(upload_id):
            raise ReleaseError(400, "upload_id must be the id createUpload returned")
        git_ref, git_commit = check_git(git)
        note = check_description(description)
        if promoted_from is not None:
            if not isinstance(promoted_from, Mapping) or not {"env", "release"} <= set(promoted_from):
                raise ReleaseError(400, 'promoted_from must be {"env": ..., "release": ...}')
            if promoted_from["env"] == self.env:
                raise ReleaseError(
                    400, f"a release cannot be promoted from {self.env} to itself; promote to another environment"
                )
            origin = f"promoted from {promoted_from['env']} {promoted_from['release']}"
            note = f"{origin}: {note}" if note else origin
            check_description(note)
        upload_id, record = self._record(upload_id)
        if "release" in record:
            raise ReleaseError(409, f"upload {upload_id} was already published as {record['release']}")
        if record.get("status") == BUILDING:
            raise ReleaseError(409, f"upload {upload_id} is being built (build {upload_id}); follow it, not again")
        if (promoted_from is not None) != ("slug" in record):
            raise ReleaseError(
                400,
                "a promotion ships the slug its release was built into, with the source, and only a promotion "
                "does: publish a source alone (it is built here), or promote with `slipway promote`",
            )
        source = self.keys.upload(upload_id, SOURCE)
        if record.get("multipart_upload_id"):
            self._complete(source, record["multipart_upload_id"], parts)
        if record.get("slug_multipart_upload_id"):
            self._complete(self.keys.upload(upload_id, SLUG), record["slug_multipart_upload_id"], slug_parts)
        body = self.bucket.stream(source)
        if body is None:
            raise ReleaseError(422, f"nothing was uploaded for upload {upload_id}; PUT the source to its URL first")
        check_source(
            body,
            sha256=record["sha256"],
            size=record["size"],
            limit=self.max_source_bytes,
            max_unpacked_bytes=DEFAULT_MAX_UNPACKED_BYTES,
            formation=self.runtime.formation,
        )
        record.update(
            git={"ref": git_ref, "commit": git_commit},
            description=note,
            finalized_by=user,
            multipart_upload_id=None,
            slug_multipart_upload_id=None,
        )
        if "slug" not in record:
            record["status"] = BUILDING
        self._note(upload_id, record)
        return {"upload_id": upload_id, **record}

    def note_build(self, upload_id: str, **fields: Any) -> dict[str, Any]:
        """Note where the upload's build stands (``build_id``, ``status``, ``error``) in its record."""
        upload_id, record = self._record(upload_id)
        record.update(fields)
        self._note(upload_id, record)
        return record

    def build(self, upload_id: object) -> dict[str, Any]:
        """The upload's record as a build's status: 404 for an upload that was never finalized."""
        try:
            upload_id, record = self._record(upload_id)
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

    def publish_upload(self, upload_id: str) -> dict[str, Any]:
        """The upload's slug, checked as the instance will read it, becomes the next release with
        the upload's source; the upload's copies are dropped. 409 if it was already published."""
        upload_id, record = self._record(upload_id)
        if "release" in record:
            raise ReleaseError(409, f"upload {upload_id} was already published as {record['release']}")
        source_artifact = Artifact(record["sha256"], record["size"])
        slug_key = self.keys.upload(upload_id, SLUG)
        declared = record.get("slug")  # a promotion's; a slug the builder wrote is taken as it is
        stream = self.bucket.stream(slug_key)
        if stream is None:
            raise ReleaseError(422, f"upload {upload_id} has no slug: the build wrote none, or it was never PUT")
        build, slug_artifact = check_slug(
            stream,
            slug=Artifact(declared["sha256"], declared["size"]) if declared else None,
            source=source_artifact,
            max_unpacked_bytes=DEFAULT_MAX_UNPACKED_BYTES,
            formation=self.runtime.formation,
        )
        manifest = self._publish(
            slug_key=slug_key,
            slug=slug_artifact,
            build=build,
            source_key=self.keys.upload(upload_id, SOURCE),
            source=source_artifact,
            git=(record["git"]["ref"], record["git"]["commit"]),
            env_text=self._canonical_env()[0],
            description=record.get("description", ""),
            user=record.get("finalized_by", record["created_by"]),
        )
        # Mark the upload used (a retry gets 409, not a second release) and drop its copies.
        self._note(upload_id, {**record, "release": manifest["id"], "status": SUCCEEDED})
        self.bucket.delete(self.keys.upload(upload_id, SOURCE), slug_key)
        return self._with_current(manifest)

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

    def _publish(
        self,
        *,
        slug_key: str,
        slug: Artifact,
        build: Mapping[str, Any],
        source_key: str,
        source: Artifact,
        git: tuple[str, str],
        env_text: str,
        description: str,
        user: str,
    ) -> dict[str, Any]:
        """Claim the next id by creating its release.json, then add the slug, source and env."""
        for _ in range(CLAIM_ATTEMPTS):
            existing = list(self.bucket.child_names(self.keys.prefix))
            newest = newest_first(existing)
            release_id = next_release_id(existing)
            parent = newest[0] if newest else None
            parent_env = self._env_text(parent) if parent else ""
            manifest = build_manifest(
                release_id=release_id,
                app=self.app,
                env=self.env,
                slug=slug,
                build=build,
                source=source,
                git_ref=git[0],
                git_commit=git[1],
                env_text=env_text,
                config_changes=config_changes(parent_env, env_text),
                created_by=user,
                created_at=_timestamp(self.clock()),
                description=description,
                runtime=self.runtime,
                parent=parent,
            )
            key = self.keys.release(release_id, MANIFEST)
            if self.bucket.create(key, (json.dumps(manifest, indent=2) + "\n").encode()):
                try:
                    self.bucket.copy(slug_key, self.keys.release(release_id, SLUG))
                    self.bucket.copy(source_key, self.keys.release(release_id, SOURCE))
                    self.bucket.put(self.keys.release(release_id, ENV_FILE), env_text.encode())
                except Exception:
                    # A release without its files must not stay visible: give the id back.
                    self.bucket.delete(key)
                    raise
                return manifest
        raise ReleaseError(503, f"{CLAIM_ATTEMPTS} publishers raced for a release id; try again")

    def _env_text(self, release_id: str) -> str:
        stored = self.bucket.read(self.keys.release(release_id, ENV_FILE))
        return stored.body.decode() if stored else ""

    def list_releases(self, *, limit: int, before: str | None) -> dict[str, Any]:
        ids, next_before = page(self.bucket.child_names(self.keys.prefix), limit=limit, before=before)
        current = self.current()
        return {
            "releases": [{**self._manifest(r), "current": r == current} for r in ids],
            "next_before": next_before,
        }

    def download(self, release_id: str) -> dict[str, Any]:
        """Presigned URLs for a release's source and slug, for promotion to another environment
        (which ships the same slug: it is not built again)."""
        manifest = self._manifest(release_id)
        expires = _timestamp(self.clock() + timedelta(seconds=URL_LIFETIME))
        return {
            "url": self.bucket.presigned_get(self.keys.release(release_id, SOURCE), URL_LIFETIME),
            "expires_at": expires,
            "size": manifest["source"]["size"],
            "sha256": manifest["source"]["sha256"],
            "slug": {
                "url": self.bucket.presigned_get(self.keys.release(release_id, SLUG), URL_LIFETIME),
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

    def change_config(
        self, *, set_vars: Mapping[str, object], unset: list[object], description: object, user: str
    ) -> dict[str, Any]:
        """Write the new canonical env, then release it with the newest release's source."""
        note = check_description(description)
        text, etag = self._canonical_env()
        values = change_config(read_config(text), set_vars=set_vars, unset=unset)
        new_text = render_env(values)
        key = self.keys.env_file
        written = (
            self.bucket.create(key, new_text.encode())
            if etag is None
            else self.bucket.replace(key, new_text.encode(), etag=etag)
        )
        if not written:
            raise ReleaseError(409, "the config changed while this change was being made; run it again")
        names = sorted({*set_vars, *(str(n) for n in unset)})
        release = self._release_config(new_text, note or f"config: {', '.join(names)}", user)
        return {"vars": values, "release": release}

    def _release_config(self, env_text: str, description: str, user: str) -> dict[str, Any] | None:
        """The newest release's slug and source with ``env_text``: a config change never builds."""
        newest = newest_first(self.bucket.child_names(self.keys.prefix))
        if not newest:
            return None  # nothing published yet: the first release picks the config up
        base = self._manifest(newest[0])
        manifest = self._publish(
            slug_key=self.keys.release(base["id"], SLUG),
            slug=Artifact(base["slug"]["sha256"], base["slug"]["size"]),
            build=base["build"],
            source_key=self.keys.release(base["id"], SOURCE),
            source=Artifact(base["source"]["sha256"], base["source"]["size"]),
            git=(base["git"]["ref"], base["git"]["commit"]),
            env_text=env_text,
            description=description,
            user=user,
        )
        return self._with_current(manifest)


def _declared(size: object, sha256: object, what: str, limit: int) -> Artifact:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ReleaseError(400, f"size must be {what}'s size in bytes")
    if size > limit:
        raise ReleaseError(413, f"{what} is {size} bytes; the limit is {limit} bytes")
    if not isinstance(sha256, str) or not SHA256.match(sha256):
        raise ReleaseError(400, f"sha256 must be {what}'s sha256 as 64 lowercase hex digits")
    return Artifact(sha256, size)
