"""Command-line parsing for ``deploy``: pure, so tests assert what each argument means."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .archive import DEFAULT_MAX_UNPACKED_BYTES

NAME = re.compile(r"[a-z][a-z0-9-]{0,39}")
RELEASE_ID = re.compile(r"r[1-9][0-9]{0,8}")
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
CURRENT = "current"

USAGE_EXAMPLE = "deploy s3://<bucket>/<app>/<env>/r7  (or .../current)"


class UsageError(ValueError):
    """The command line is wrong; the message says how to call ``deploy``."""


@dataclass(frozen=True)
class ReleaseUrl:
    """``s3://<bucket>/<app>/<env>/<target>`` with target ``r<N>`` or ``current``."""

    bucket: str
    app: str
    env: str
    target: str

    @property
    def prefix(self) -> str:
        """The app/env prefix in the bucket, ``<app>/<env>/``."""
        return f"{self.app}/{self.env}/"

    def key(self, release_id: str, name: str) -> str:
        """Key of one file of a release, e.g. ``billing/staging/r7/release.json``."""
        return f"{self.prefix}{release_id}/{name}"

    def url(self, target: str) -> str:
        """The URL of ``target`` under the same app/env."""
        return f"s3://{self.bucket}/{self.prefix}{target}"


@dataclass(frozen=True)
class DeployArgs:
    """Everything one ``deploy`` run needs from its command line."""

    release: ReleaseUrl
    max_unpacked_bytes: int


def parse_release_url(url: str) -> ReleaseUrl:
    """Parse a release URL; raise :class:`UsageError` naming the bad part."""
    if not url.startswith("s3://"):
        raise UsageError(f"release URL {url!r} must start with s3://; usage: {USAGE_EXAMPLE}")
    parts = url[len("s3://") :].split("/")
    if len(parts) != 4:
        raise UsageError(f"release URL {url!r} must have 4 parts after s3://; usage: {USAGE_EXAMPLE}")
    bucket, app, env, target = parts
    if not BUCKET.fullmatch(bucket):
        raise UsageError(f"release URL {url!r}: {bucket!r} is not a valid S3 bucket name")
    for what, value in (("app", app), ("env", env)):
        if not NAME.fullmatch(value):
            raise UsageError(
                f"release URL {url!r}: {what} {value!r} must be lowercase letters, digits and '-', "
                "starting with a letter"
            )
    if target != CURRENT and not RELEASE_ID.fullmatch(target):
        raise UsageError(f"release URL {url!r}: the last part must be a release id like r7, or 'current'")
    return ReleaseUrl(bucket, app, env, target)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of bytes") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number of bytes")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        # argparse would print usage and exit(2) itself; raise so main() prints one line.
        raise UsageError(f"{message}; usage: {USAGE_EXAMPLE}")


def build_parser() -> argparse.ArgumentParser:
    """The ``deploy`` argument parser (also renders ``deploy --help``)."""
    parser = _Parser(
        prog="deploy",
        description="Deploy one Slipway release onto this instance, with systemd units from its Procfile.",
        epilog="Exit codes: 0 deployed or already running, 1 failed with the previous release restored, "
        "2 usage error, 3 failed and the previous release could not be restored.",
    )
    parser.add_argument("url", help="s3://<bucket>/<app>/<env>/r<N> or s3://<bucket>/<app>/<env>/current")
    parser.add_argument(
        "--max-unpacked-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_UNPACKED_BYTES,
        help=f"refuse source archives that unpack to more than this (default {DEFAULT_MAX_UNPACKED_BYTES})",
    )
    return parser


def parse_args(argv: Sequence[str]) -> DeployArgs:
    """Parse ``deploy`` arguments; raise :class:`UsageError` with the fix."""
    namespace = build_parser().parse_args(list(argv))
    return DeployArgs(release=parse_release_url(namespace.url), max_unpacked_bytes=namespace.max_unpacked_bytes)


def s3_endpoint(environ: Mapping[str, str]) -> str | None:
    """The S3 endpoint override: ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, else AWS's own.

    Read here rather than left to boto3 because distribution boto3 packages
    (Debian 12's 1.26) predate botocore's support for these variables.
    """
    return environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or None
