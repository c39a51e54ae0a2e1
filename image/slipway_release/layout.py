"""The release bucket's layout: every key, prefix and release URL. Pure; the one place they are spelled.

::

    <app>/<env>/env                       canonical config for new releases
    <app>/<env>/current                   body = the current release and its manifest's digest,
                                          "r7 <sha256 of r7/release.json>" (:class:`Pointer`)
    <app>/<env>/previous                  body = the release current was before the last rollout
    <app>/<env>/lock                      the deploy lock (rollouts only)
    <app>/<env>/instances/<instance id>   body = the release the last rollout put there
    <app>/<env>/cancels/<deploy id>       a request to cancel a running rollout
    <app>/<env>/slugs/<sha256>.tar.gz     built slugs, each stored once by its digest and shared by the
                                          releases that run it (a config change, a rollback)
    <app>/<env>/sources/<sha256>.tar.gz   the sources they were built from (what promotion ships)
    <app>/<env>/r<N>/env                  a release: the env file frozen into it,
    <app>/<env>/r<N>/release.json         and its manifest, which pins the slug's and env's digests
    <app>/<env>/r<N>/slug.tar.gz          (manifest version 2, still read: the slug and source
    <app>/<env>/r<N>/source.tar.gz         beside the manifest)
    uploads/<app>/<env>/<upload id>/...   sources on their way in and their builds (expire after a day)
    caches/<app>/<env>/...                the builder's dependency caches (expire when unused)
    slack-requests/<env>/<sha256>         one per Slack command accepted, named by its signature's
                                          digest: a replay finds it there (expire after a day)

The release keys, the slugs and the sources are written once (:func:`AppKeys.write_once`): the
bucket's policy refuses any write to them without ``If-None-Match`` and any delete, so no role,
whatever IAM grants it, can change or remove one once written.

A release is addressed by URL, ``s3://<bucket>/<app>/<env>/r<N>`` or ``.../current``: what
rollouts send to instances and what the deploy program takes.
"""

from __future__ import annotations

import hashlib
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
# Under <app>/<env>/: slugs and sources, one object per digest, shared by the releases that use them.
SLUGS, SOURCES = "slugs/", "sources/"
TARBALL = ".tar.gz"
# What a release is made of under an app's prefix: its env and manifest, and the slugs and sources.
RELEASE_FILES = (f"r*/{MANIFEST}", f"r*/{ENV_FILE}", f"{SLUGS}*", f"{SOURCES}*")
# What is written once there: those, and the slugs and sources of version 2 releases beside them.
WRITE_ONCE = (*RELEASE_FILES, f"r*/{SLUG}", f"r*/{SOURCE}")
# What only rollouts write under an app's prefix (their IAM grant names these).
ROLLOUT_KEYS = (CURRENT, PREVIOUS, LOCK, f"{INSTANCES}*")

_BUCKET = full(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_APP, _ENV = full(APP_NAME), full(ENV_NAME)
USAGE = "s3://<bucket>/<app>/<env>/r7 (or .../current)"


# The app part of a key pattern that covers every app of an environment (IAM grants of the
# control plane, which serves all of them): ``AppKeys(EVERY_APP, env)``.
EVERY_APP = "*"
# The Slack commands each environment's control plane has accepted (slack_request).
SLACK_REQUESTS = "slack-requests/"
# Names an app may not take: the bucket's own namespaces, which begin keys the way an app does.
RESERVED_APP_NAMES = (UPLOADS.rstrip("/"), CACHES.rstrip("/"), SLACK_REQUESTS.rstrip("/"))


def slack_requests(env: str) -> str:
    """``slack-requests/<env>/``: the Slack commands ``env``'s control plane has accepted, each
    within the five minutes its signature is valid; the only keys of the prefix are
    :func:`slack_request`'s."""
    return f"{SLACK_REQUESTS}{env}/"


def slack_request(env: str, signature: str) -> str:
    """``slack-requests/<env>/<sha256 hex of signature>``: the record of the Slack command signed
    ``signature`` (its ``X-Slack-Signature``, ``v0=<hex>``), created once when the command is
    accepted; a second request with the same signature (the same timestamp and body) finds it and
    is a replay. The digest keeps the key's length and characters fixed, whatever was sent."""
    return f"{slack_requests(env)}{hashlib.sha256(signature.encode()).hexdigest()}"


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
        """One file (:data:`ENV_FILE`, :data:`MANIFEST`; in version 2, :data:`SLUG`, :data:`SOURCE`) of a release."""
        return f"{self.prefix}{release_id}/{name}"

    def slug(self, sha256: str) -> str:
        """The slug with that digest: ``<app>/<env>/slugs/<sha256>.tar.gz``."""
        return f"{self.prefix}{SLUGS}{sha256}{TARBALL}"

    def source(self, sha256: str) -> str:
        """The source with that digest: ``<app>/<env>/sources/<sha256>.tar.gz``."""
        return f"{self.prefix}{SOURCES}{sha256}{TARBALL}"

    def release_files(self) -> tuple[str, ...]:
        """The key patterns of what a release is made of now (what the release writer creates)."""
        return tuple(f"{self.prefix}{pattern}" for pattern in RELEASE_FILES)

    def write_once(self) -> tuple[str, ...]:
        """The key patterns nothing may overwrite or delete once written (the bucket policy's)."""
        return tuple(f"{self.prefix}{pattern}" for pattern in WRITE_ONCE)

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
