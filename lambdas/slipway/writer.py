"""The release writer: the one component that makes releases, and the only one whose role may
write them (constructs.release_workflow; the bucket's policy makes every release key, slug and
source write-once for everyone).

It makes a release four ways, each checked here, whatever asked:

- a **build** (the release workflow, :mod:`slipway.builds.tasks`): the slug the build of an
  upload made, checked as the instance will read it, with that upload's source and the canonical
  config;
- a **config change** (the API): the slug of the release that serves (or one named), with the
  canonical config changed;
- a **rollback** (the API): a new release copying an earlier one's slug and config, which also
  becomes the canonical config (as on Heroku);
- a **promotion** (the API): the slug of another environment's release, read from that
  environment's own bucket and verified against its record as it is copied; never bytes a client
  sent.

Slugs and sources are stored once by digest (``slugs/<sha256>.tar.gz``), so a config change or a
rollback writes two small objects, and an instance that has the slug downloads nothing. A release
id is claimed by creating its ``env`` only if absent (the loser takes the next id), then its
``release.json`` is created, which makes it a release. Nothing is ever overwritten or deleted.

:func:`handler` is the entry point of the API's requests: ``{"action", "app", "env", ...}`` in,
``{"status": 201, "release": {...}}`` or ``{"status": 4xx, "message": "..."}`` out.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from slipway import aws
from slipway.configured import NotConfigured, configured
from slipway.publisher import SUCCEEDED, AppReleases, Publisher
from slipway.releases import (
    Artifact,
    ReleaseError,
    build_manifest,
    change_config,
    check_description,
    check_slug,
    check_source,
    config_changes,
    read_config,
    release_number,
)
from slipway.settings import PROMOTION_SOURCES, AppRuntime, release_bucket_parameter_name
from slipway.store import Bucket
from slipway_release.archive import DEFAULT_MAX_UNPACKED_BYTES
from slipway_release.envfile import render_env
from slipway_release.layout import ENV_FILE, MANIFEST, SLUG, SOURCE, AppKeys
from slipway_release.manifest import ManifestError, load_schema, parse_manifest, slug_key, source_key
from slipway_release.names import is_env_name, newest_first, next_release_id

CLAIM_ATTEMPTS = 20
# A promotion copies its slug part by part as it verifies it.
COPY_PART_BYTES = 16 * 1024 * 1024
# What a release was made from (release.json's base.reason).
CONFIG, ROLLBACK, PROMOTION = "config", "rollback", "promotion"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class ReleaseWriter(AppReleases):
    """Makes the releases of ``app`` in ``env``."""

    def __init__(
        self, bucket: Bucket, *, app: str, env: str, runtime: AppRuntime, clock: Callable[[], datetime] = _utc_now
    ) -> None:
        super().__init__(bucket, app=app, env=env)
        self.runtime, self.clock = runtime, clock
        self.uploads = Publisher(bucket, app=app, env=env, runtime=runtime, max_source_bytes=0)

    # A build --------------------------------------------------------------------------------------

    def publish_build(self, upload_id: str) -> dict[str, Any]:
        """The slug the build of ``upload_id`` wrote, checked as the instance will read it, becomes the
        next release with the source the API checked and the canonical config. 409 if published."""
        upload_id, record = self.uploads.upload_record(upload_id)
        if "release" in record:
            raise ReleaseError(409, f"upload {upload_id} was already published as {record['release']}")
        source = Artifact(record["sha256"], record["size"])
        found = self.bucket.stream_version(self.keys.upload(upload_id, SLUG))
        if found is None:
            raise ReleaseError(422, f"upload {upload_id} has no slug: the build wrote none")
        stream, slug_version = found
        build, slug = check_slug(
            stream,
            slug=None,
            source=source,
            max_unpacked_bytes=DEFAULT_MAX_UNPACKED_BYTES,
            formation=self.runtime.formation,
        )
        self._store(self.keys.slug(slug.sha256), self.keys.upload(upload_id, SLUG), slug_version)
        source_version = record.get("source_version") or self.bucket.version(self.keys.upload(upload_id, SOURCE))
        if source_version is None:
            raise ReleaseError(422, f"upload {upload_id} has no source any more; upload it again")
        self._store(self.keys.source(source.sha256), self.keys.upload(upload_id, SOURCE), source_version)
        current = self.pointer()
        manifest = self._claim(
            slug=slug,
            build=build,
            source=source,
            git=record["git"],
            env_text=self._canonical_env()[0],
            changed_from=self._env_text(current.release) if current else "",
            description=record.get("description", ""),
            user=record.get("finalized_by", record["created_by"]),
            base=None,
        )
        # Mark the upload used (a retry gets 409, not a second release) and drop its copies.
        self.uploads.write_record(upload_id, {**record, "release": manifest["id"], "status": SUCCEEDED})
        self.bucket.delete(self.keys.upload(upload_id, SOURCE), self.keys.upload(upload_id, SLUG))
        return self._with_current(manifest)

    # A config change --------------------------------------------------------------------------------

    def change_config(
        self,
        *,
        set_vars: Mapping[str, object],
        unset: list[object],
        description: object,
        user: str,
        base: object = None,
    ) -> dict[str, Any]:
        """Change the canonical config, then release it on ``base``: the release that serves, unless
        another is named (with nothing deployed yet, the newest). The answer says which it started from."""
        note = check_description(description)
        if base is not None and not isinstance(base, str):
            raise ReleaseError(400, "base must be a release id like r7: the release whose slug the change runs")
        text, etag = self._canonical_env()
        values = change_config(read_config(text), set_vars=set_vars, unset=unset)
        chosen = base or self.current() or self._newest()
        if isinstance(chosen, str):
            release_number(chosen)
            manifest, _ = self.verified(chosen)  # before anything is written: 404 for a release that is not one
        new_text = render_env(values)
        if not self._write_canonical(new_text, etag):
            raise ReleaseError(409, "the config changed while this change was being made; run it again")
        names = sorted({*set_vars, *(str(n) for n in unset)})
        if chosen is None:  # nothing published yet: the first release picks the config up
            return {"vars": values, "release": None, "base": None}
        made = self._claim_on(
            manifest,
            env_text=new_text,
            description=note or f"config: {', '.join(names)} (on {chosen})",
            user=user,
            reason=CONFIG,
        )
        return {"vars": values, "release": made, "base": chosen}

    # A rollback -------------------------------------------------------------------------------------

    def roll_back(self, *, to: object, user: str) -> dict[str, Any]:
        """A new release copying ``to`` (default: the release that served before the current one):
        its slug and config, described ``rollback to rX``; its config becomes the canonical config."""
        target = to if to is not None else self.previous()
        if target is None:
            raise ReleaseError(409, f"{self.app} in {self.env} has no earlier deployed release to roll back to")
        if not isinstance(target, str):
            raise ReleaseError(400, "to must be a release id like r7")
        release_number(target)
        manifest, _ = self.verified(target)
        env_text = self._env_text(target, check=manifest["env_sha256"])
        _, etag = self._canonical_env()
        if not self._write_canonical(env_text, etag):
            raise ReleaseError(409, "the config changed while the rollback was being made; run it again")
        return self._claim_on(
            manifest, env_text=env_text, description=f"rollback to {target}", user=user, reason=ROLLBACK
        )

    # A promotion ------------------------------------------------------------------------------------

    def promote(self, origin: ReleaseSource, *, release: object, description: object, user: str) -> dict[str, Any]:
        """Release here the slug of ``origin``'s ``release``: its record read from that environment's own
        bucket, the slug and source copied from there and checked against that record as they pass
        (digest, size, the archive rules, the Procfile against this app's formation), with this
        environment's config. A slug that does not match is refused and nothing is released."""
        note = check_description(description)
        if origin.env == self.env:
            raise ReleaseError(400, f"a release cannot be promoted from {self.env} to itself; name another environment")
        if not isinstance(release, str):
            raise ReleaseError(400, "release must be the id of the release to promote, like r7")
        release_number(release)
        manifest = origin.manifest(release)
        slug = Artifact(manifest.slug_sha256, manifest.slug_size)
        source = Artifact(manifest.source_sha256, manifest.source_size)
        self._copy_checked(
            origin,
            slug_key(manifest, origin.keys),
            self.keys.slug(slug.sha256),
            lambda stream: check_slug(
                stream,
                slug=slug,
                source=source,
                max_unpacked_bytes=DEFAULT_MAX_UNPACKED_BYTES,
                formation=self.runtime.formation,
            ),
        )
        self._copy_checked(
            origin,
            source_key(manifest, origin.keys),
            self.keys.source(source.sha256),
            lambda stream: check_source(
                stream,
                sha256=source.sha256,
                size=source.size,
                limit=max(source.size, 1),
                max_unpacked_bytes=DEFAULT_MAX_UNPACKED_BYTES,
                formation=self.runtime.formation,
            ),
        )
        origin_note = f"promoted from {origin.env} {release}"
        current = self.pointer()
        made = self._claim(
            slug=slug,
            build=manifest.build.raw,
            source=source,
            git=manifest.raw["git"],
            env_text=self._canonical_env()[0],
            changed_from=self._env_text(current.release) if current else "",
            description=check_description(f"{origin_note}: {note}" if note else origin_note),
            user=user,
            base={"env": origin.env, "release": release, "reason": PROMOTION},
        )
        return self._with_current(made)

    # Storing and claiming ---------------------------------------------------------------------------

    def _store(self, destination: str, source: str, version: str) -> None:
        """``destination`` (a write-once slug or source key) as a copy of that version of ``source``,
        unless it is there already (it then holds the same bytes: the key is their digest)."""
        if self.bucket.version(destination) is None:
            self.bucket.copy_once(destination, source=source, version=version)

    def _copy_checked(
        self, origin: ReleaseSource, source: str, destination: str, check: Callable[[IO[bytes]], object]
    ) -> None:
        """Copy ``source`` of ``origin``'s bucket to ``destination`` here, completing the copy only once
        ``check`` read the whole of it and found it right; kept if it is here already."""
        if self.bucket.version(destination) is not None:
            return
        stream = origin.stream(source)
        copying = _CopyingStream(stream, self.bucket, destination)
        try:
            check(copying)  # type: ignore[arg-type]
            copying.drain()
        except BaseException:
            copying.abort()
            raise
        copying.complete()

    def _claim_on(
        self, manifest: Mapping[str, Any], *, env_text: str, description: str, user: str, reason: str
    ) -> dict[str, Any]:
        """A release running ``manifest``'s slug (this environment's release) with ``env_text``."""
        parsed = parse_manifest(json.dumps(manifest).encode(), load_schema())
        slug = Artifact(parsed.slug_sha256, parsed.slug_size)
        source = Artifact(parsed.source_sha256, parsed.source_size)
        if parsed.version < 3:  # from before slugs were stored by digest: store its slug and source so
            for key, where in (
                (self.keys.slug(slug.sha256), slug_key(parsed, self.keys)),
                (self.keys.source(source.sha256), source_key(parsed, self.keys)),
            ):
                version = self.bucket.version(where)
                if version is None:
                    raise ReleaseError(422, f"{where} is missing: {parsed.id} cannot be copied")
                self._store(key, where, version)
        made = self._claim(
            slug=slug,
            build=parsed.build.raw,
            source=source,
            git=manifest["git"],
            env_text=env_text,
            changed_from=self._env_text(parsed.id),
            description=description,
            user=user,
            base={"env": self.env, "release": parsed.id, "reason": reason},
        )
        return self._with_current(made)

    def _claim(
        self,
        *,
        slug: Artifact,
        build: Mapping[str, Any],
        source: Artifact,
        git: Mapping[str, str],
        env_text: str,
        changed_from: str,
        description: str,
        user: str,
        base: Mapping[str, str] | None,
    ) -> dict[str, Any]:
        """Claim the next id by creating its env file, then create its release.json: written once each.
        ``changed_from``: the config the release's ``config_changes`` are against (what serves, or its base's)."""
        for _ in range(CLAIM_ATTEMPTS):
            existing = self._release_ids()
            newest = newest_first(existing)
            release_id = next_release_id(existing)
            manifest = build_manifest(
                release_id=release_id,
                app=self.app,
                env=self.env,
                slug=slug,
                build=build,
                source=source,
                git_ref=git["ref"],
                git_commit=git["commit"],
                env_text=env_text,
                config_changes=config_changes(changed_from, env_text),
                created_by=user,
                created_at=_timestamp(self.clock()),
                description=description,
                runtime=self.runtime,
                parent=newest[0] if newest else None,
                base=base,
            )
            if not self.bucket.create(self.keys.release(release_id, ENV_FILE), env_text.encode()):
                continue  # another writer took the id
            if not self.bucket.create(
                self.keys.release(release_id, MANIFEST), (json.dumps(manifest, indent=2) + "\n").encode()
            ):
                raise ReleaseError(
                    503, f"{release_id}'s release.json exists although its env was just claimed; try again"
                )
            return manifest
        raise ReleaseError(503, f"{CLAIM_ATTEMPTS} writers raced for a release id; try again")

    def _newest(self) -> str | None:
        """The newest release (an id whose claim never completed, its manifest missing, is none)."""
        return next(
            (r for r in newest_first(self._release_ids()) if self.bucket.size(self.keys.release(r, MANIFEST))), None
        )

    def _release_ids(self) -> list[str]:
        return list(self.bucket.child_names(self.keys.prefix))

    def _env_text(self, release_id: str, check: str | None = None) -> str:
        stored = self.bucket.read(self.keys.release(release_id, ENV_FILE))
        text = stored.body if stored else b""
        if check is not None and hashlib.sha256(text).hexdigest() != check:
            raise ReleaseError(422, f"{release_id}'s env file does not match its release.json; it cannot be copied")
        return text.decode()

    def _canonical_env(self) -> tuple[str, str | None]:
        stored = self.bucket.read(self.keys.env_file)
        return (stored.body.decode(), stored.etag) if stored else ("", None)

    def _write_canonical(self, text: str, etag: str | None) -> bool:
        key = self.keys.env_file
        body = text.encode()
        return self.bucket.create(key, body) if etag is None else self.bucket.replace(key, body, etag=etag)


class _CopyingStream:
    """A stream read once by a check, each chunk also uploaded as a part of ``key``; the upload is
    completed (``If-None-Match: *``) only after the check read all of it and passed."""

    def __init__(self, raw: IO[bytes], bucket: Bucket, key: str) -> None:
        self.raw, self.bucket, self.key = raw, bucket, key
        self.pending = bytearray()
        self.parts: list[dict[str, Any]] = []
        self.upload: str | None = None

    def read(self, amount: int = -1) -> bytes:
        chunk = self.raw.read(amount)
        self.pending += chunk
        while len(self.pending) >= COPY_PART_BYTES:
            self._part(bytes(self.pending[:COPY_PART_BYTES]))
            del self.pending[:COPY_PART_BYTES]
        return chunk

    def drain(self) -> None:
        while self.read(1024 * 1024):
            pass

    def _part(self, data: bytes) -> None:
        client = self.bucket.client
        if self.upload is None:
            self.upload = client.create_multipart_upload(Bucket=self.bucket.name, Key=self.key)["UploadId"]
        number = len(self.parts) + 1
        answer = client.upload_part(
            Bucket=self.bucket.name, Key=self.key, UploadId=self.upload, PartNumber=number, Body=data
        )
        self.parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def complete(self) -> None:
        if self.upload is None:  # one part's worth: a single conditional put
            self.bucket.create(self.key, bytes(self.pending))
            return
        if self.pending:
            self._part(bytes(self.pending))
        client = self.bucket.client
        try:
            client.complete_multipart_upload(
                Bucket=self.bucket.name,
                Key=self.key,
                UploadId=self.upload,
                MultipartUpload={"Parts": self.parts},
                IfNoneMatch="*",
            )
        except client.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise
            self.abort()  # written meanwhile by another promotion of the same bytes

    def abort(self) -> None:
        if self.upload is not None:
            self.bucket.client.abort_multipart_upload(Bucket=self.bucket.name, Key=self.key, UploadId=self.upload)
            self.upload = None


@dataclass(frozen=True)
class ReleaseSource:
    """Another environment's releases of the app, read from that environment's own bucket (which its
    stack names in its SSM parameter), never from what a client says of them."""

    env: str
    bucket: Bucket
    keys: AppKeys

    @classmethod
    def of(cls, app: str, env: object, regions: Mapping[str, str]) -> ReleaseSource:
        """The environment ``env`` of this account, in its region (``regions``: the environments a
        release may be promoted from); 400 for one that is not among them."""
        if not isinstance(env, str) or not is_env_name(env) or env not in regions:
            known = ", ".join(sorted(regions)) or "none"
            raise ReleaseError(400, f"cannot promote from {env!r}: releases come here from {known} only")
        ssm = aws.environment_client("ssm", env, regions[env])
        name = release_bucket_parameter_name(env)
        try:
            bucket = ssm.get_parameter(Name=name)["Parameter"]["Value"]
        except ssm.exceptions.ParameterNotFound:
            raise ReleaseError(
                409, f"{env} has no release bucket yet ({name}); deploy its Platform-{env} stack"
            ) from None
        return cls(
            env=env, bucket=Bucket(aws.environment_client("s3", env, regions[env]), bucket), keys=AppKeys(app, env)
        )

    def manifest(self, release: str) -> Any:
        """The release's manifest there, valid and naming itself; 404 if there is none."""
        stored = self.bucket.read(self.keys.release(release, MANIFEST))
        if stored is None:
            raise ReleaseError(404, f"{self.keys.app} has no release {release} in {self.env}")
        try:
            manifest = parse_manifest(stored.body, load_schema())
        except ManifestError as error:
            raise ReleaseError(422, f"{self.env} {release}: {error}") from None
        if (manifest.id, manifest.app, manifest.env) != (release, self.keys.app, self.env):
            raise ReleaseError(422, f"{self.env}'s {release} describes another release; it cannot be promoted")
        return manifest

    def stream(self, key: str) -> IO[bytes]:
        body = self.bucket.stream(key)
        if body is None:
            raise ReleaseError(422, f"s3://{self.bucket.name}/{key} is missing; the release cannot be promoted")
        return body


# The API's requests ---------------------------------------------------------------------------------


def _config(writer: ReleaseWriter, request: Mapping[str, Any]) -> dict[str, Any]:
    set_vars, unset = request.get("set") or {}, request.get("unset") or []
    if not isinstance(set_vars, Mapping) or not isinstance(unset, list) or not (set_vars or unset):
        raise ReleaseError(400, 'send {"set": {"NAME": "value"}} and/or {"unset": ["NAME"]}')
    return writer.change_config(
        set_vars=set_vars,
        unset=unset,
        description=request.get("description"),
        user=request["user"],
        base=request.get("base"),
    )


def _rollback(writer: ReleaseWriter, request: Mapping[str, Any]) -> dict[str, Any]:
    return writer.roll_back(to=request.get("to"), user=request["user"])


def _promotion(writer: ReleaseWriter, request: Mapping[str, Any]) -> dict[str, Any]:
    origin = ReleaseSource.of(writer.app, request.get("from"), promotion_regions())
    return writer.promote(
        origin, release=request.get("release"), description=request.get("description"), user=request["user"]
    )


ACTIONS: dict[str, Callable[[ReleaseWriter, Mapping[str, Any]], dict[str, Any]]] = {
    "config": _config,
    "rollback": _rollback,
    "promotion": _promotion,
}


def promotion_regions() -> dict[str, str]:
    """The environments of this account a release may be promoted from, and their regions."""
    raw = json.loads(os.environ.get(PROMOTION_SOURCES) or "{}")
    return {str(env): str(region) for env, region in raw.items()}


def writer_for(app: str, env: str) -> ReleaseWriter:
    """The writer of ``app`` in ``env``, as this environment configures it; 404 for another."""
    try:
        found = configured(app, env)
    except NotConfigured as error:
        raise ReleaseError(404, str(error)) from None
    return ReleaseWriter(Bucket(aws.client("s3"), found.bucket), app=app, env=env, runtime=found.settings.runtime)


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """The API's requests: ``{"action", "app", "env", "user", ...}``; the answer or the refusal, never
    an exception for a request that is refused."""
    action = event.get("action")
    try:
        if action not in ACTIONS or not isinstance(event.get("user"), str) or not event["user"]:
            raise ReleaseError(400, f"the release writer takes {', '.join(ACTIONS)} with the user who asked")
        writer = writer_for(str(event.get("app")), str(event.get("env")))
        with aws.throttling_is_retried():
            return {"status": 201, "result": ACTIONS[str(action)](writer, event)}
    except ReleaseError as error:
        return {"status": error.status, "message": str(error)}
    except aws.Throttled as error:
        return {"status": 503, "message": f"AWS is throttling the release writer ({error}); try again"}
