"""The release bucket's layout: every key, prefix and release URL. Pure; the one place they are spelled.

::

    <app>/<env>/env                       canonical config for new releases
    <app>/<env>/current                   body = the current release and its manifest's digest,
                                          "r7 <sha256 of r7/release.json>" (:class:`Pointer`)
    <app>/<env>/previous                  body = the release current was before the last rollout
    <app>/<env>/lock                      the deploy lock (rollouts only)
    <app>/<env>/instances/<instance id>   body = the release the last rollout put there
    <app>/<env>/r<N>/slug.tar.gz          the release's files, immutable: the built app,
    <app>/<env>/r<N>/source.tar.gz        the source it was built from (what promotion ships),
    <app>/<env>/r<N>/env                  the env file frozen into it,
    <app>/<env>/r<N>/release.json         and its manifest
    uploads/<app>/<env>/<upload id>/...   sources on their way in and their builds (expire after a day)
    caches/<app>/<env>/...                the builder's dependency caches (expire when unused)

A release is addressed by URL, ``s3://<bucket>/<app>/<env>/r<N>`` or ``.../current``: what
rollouts send to instances and what the deploy program takes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .names import (
    APP_NAME,
    APP_NAME_RULE,
    CURRENT,
    ENV_NAME,
    ENV_NAME_RULE,
    RELEASE_ID,
    full,
    is_release_id,
    is_sha256,
)

UPLOADS = "uploads/"
CACHES = "caches/"
# The files of one release.
SLUG = "slug.tar.gz"
SOURCE = "source.tar.gz"
ENV_FILE = "env"
MANIFEST = "release.json"
# Upload records beside the uploaded source.
UPLOAD_RECORD = "upload.json"
# Under <app>/<env>/, beside the releases.
PREVIOUS, LOCK, INSTANCES = "previous", "lock", "instances/"
# Under <app>/<env>/: a request to cancel a running rollout, written by the API, read by the rollout.
CANCELS = "cancels/"
# What only rollouts write under an app's prefix (their IAM grant names these).
ROLLOUT_KEYS = (CURRENT, PREVIOUS, LOCK, f"{INSTANCES}*")

_BUCKET = full(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_APP, _ENV = full(APP_NAME), full(ENV_NAME)
USAGE = "s3://<bucket>/<app>/<env>/r7 (or .../current)"


# The app part of a key pattern that covers every app of an environment (IAM grants of the
# control plane, which serves all of them): ``AppKeys(EVERY_APP, env)``.
EVERY_APP = "*"
# Names an app may not take: the bucket's own namespaces, which begin keys the way an app does.
RESERVED_APP_NAMES = (UPLOADS.rstrip("/"), CACHES.rstrip("/"))


@dataclass(frozen=True)
class AppKeys:
    """The keys of one app in one environment (or, with ``EVERY_APP``, their patterns for every app)."""

    app: str
    env: str

    @property
    def prefix(self) -> str:
        """``<app>/<env>/``: everything of the app in the environment."""
        return f"{self.app}/{self.env}/"

    @property
    def env_file(self) -> str:
        """The canonical env file new releases take."""
        return f"{self.prefix}{ENV_FILE}"

    @property
    def current(self) -> str:
        return f"{self.prefix}{CURRENT}"

    @property
    def previous(self) -> str:
        return f"{self.prefix}{PREVIOUS}"

    @property
    def lock(self) -> str:
        return f"{self.prefix}{LOCK}"

    @property
    def instances(self) -> str:
        """The prefix of the per-instance release records."""
        return f"{self.prefix}{INSTANCES}"

    def instance(self, instance_id: str) -> str:
        return f"{self.instances}{instance_id}"

    @property
    def cancels(self) -> str:
        """The prefix of cancel requests: ``cancels/<deploy id>`` asks that rollout to stop and roll back."""
        return f"{self.prefix}{CANCELS}"

    def cancel(self, deploy_id: str) -> str:
        return f"{self.cancels}{deploy_id}"

    def release(self, release_id: str, name: str) -> str:
        """One file (:data:`SLUG`, :data:`SOURCE`, :data:`ENV_FILE`, :data:`MANIFEST`) of a release."""
        return f"{self.prefix}{release_id}/{name}"

    @property
    def uploads(self) -> str:
        """``uploads/<app>/<env>/``."""
        return f"{UPLOADS}{self.prefix}"

    def upload(self, upload_id: str, name: str) -> str:
        return f"{self.uploads}{upload_id}/{name}"

    @property
    def caches(self) -> str:
        """``caches/<app>/<env>/``: where the builder keeps the app's dependency caches."""
        return f"{CACHES}{self.prefix}"

    def releases(self) -> str:
        """The key pattern of every release file (``<app>/<env>/r*``): what publishing writes."""
        return f"{self.prefix}r*"

    def rollout_keys(self) -> tuple[str, ...]:
        """The keys (and key patterns) only rollouts write."""
        return tuple(f"{self.prefix}{name}" for name in ROLLOUT_KEYS)


@dataclass(frozen=True)
class ReleaseUrl:
    """``s3://<bucket>/<app>/<env>/<target>`` with target ``r<N>`` or ``current``."""

    bucket: str
    app: str
    env: str
    target: str

    @property
    def keys(self) -> AppKeys:
        return AppKeys(self.app, self.env)

    def of(self, target: str) -> ReleaseUrl:
        """The URL of ``target`` under the same app and environment."""
        return ReleaseUrl(self.bucket, self.app, self.env, target)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.app}/{self.env}/{self.target}"


# current may hold a release and nothing else only as written before digests were pinned.
POINTER_USAGE = "a release id and its manifest's sha256, e.g. 'r7 3f1c…' (64 hex digits)"


@dataclass(frozen=True)
class Pointer:
    """What ``current`` says: ``release`` serves, and its ``release.json`` has sha256 ``digest``.

    The digest pins the manifest, which pins the slug and the env file: every hop from
    ``current`` to the bytes an instance runs is checked against the one before it.
    ``digest`` is ``None`` only in a pointer written before digests were pinned (``r7``).
    """

    release: str
    digest: str | None

    def render(self) -> bytes:
        return f"{self.release} {self.digest}\n".encode() if self.digest else f"{self.release}\n".encode()


def parse_pointer(body: bytes) -> Pointer:
    """``current``'s body; ``ValueError`` saying what it holds instead."""
    text = body.decode("utf-8", errors="replace").strip()
    release, _, digest = text.partition(" ")
    if not is_release_id(release) or (digest and not is_sha256(digest)):
        raise ValueError(f"holds {text[:90]!r}, not {POINTER_USAGE}")
    return Pointer(release, digest or None)


def release_url(bucket: str, app: str, env: str, target: str) -> str:
    """``s3://<bucket>/<app>/<env>/<target>``."""
    return str(ReleaseUrl(bucket, app, env, target))


def parse_release_url(url: str) -> ReleaseUrl:
    """Parse a release URL; ``ValueError`` naming the part that is wrong."""
    if not url.startswith("s3://"):
        raise ValueError(f"release URL {url!r} must start with s3://; use {USAGE}")
    parts = url[len("s3://") :].split("/")
    if len(parts) != 4:
        raise ValueError(f"release URL {url!r} must have 4 parts after s3://; use {USAGE}")
    bucket, app, env, target = parts
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(f"release URL {url!r}: {bucket!r} is not a valid S3 bucket name")
    if not _APP.fullmatch(app):
        raise ValueError(f"release URL {url!r}: app {app!r} must be {APP_NAME_RULE}")
    if not _ENV.fullmatch(env):
        raise ValueError(f"release URL {url!r}: env {env!r} must be {ENV_NAME_RULE}")
    if target != CURRENT and not is_release_id(target):
        raise ValueError(f"release URL {url!r}: the last part must be a release id like r7, or {CURRENT!r}")
    return ReleaseUrl(bucket, app, env, target)


def release_url_pattern(*, bucket_pattern: str, apps: Sequence[str], env: str) -> str:
    """An anchored regular expression admitting exactly the release URLs of ``apps`` in ``env``.

    ``bucket_pattern`` matches the bucket's name exactly (``re.escape(name)``, or an
    expression that escapes a CDK token at deploy time). Only ``s3://<bucket>/<app>/<env>/r<N>``
    and ``.../current`` pass: no other bucket, app or environment, no ``..``, spaces,
    quotes or other shell text. It uses only what SSM, Java, Python and RE2 agree on.
    """
    alternatives = "|".join(re.escape(app) for app in apps)
    return f"^s3://{bucket_pattern}/({alternatives})/{re.escape(env)}/({RELEASE_ID}|{CURRENT})$"
