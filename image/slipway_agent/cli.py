"""Command-line parsing for ``deploy``: pure, so tests assert what each argument means."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from slipway_release.archive import DEFAULT_MAX_UNPACKED_BYTES
from slipway_release.layout import USAGE, ReleaseUrl, parse_release_url

USAGE_EXAMPLE = f"deploy {USAGE}"


class UsageError(ValueError):
    """The command line is wrong; the message says how to call ``deploy``."""


@dataclass(frozen=True)
class DeployArgs:
    """Everything one ``deploy`` run needs from its command line."""

    release: ReleaseUrl
    max_unpacked_bytes: int


def parse_url(url: str) -> ReleaseUrl:
    """The release URL argument; :class:`UsageError` naming the bad part."""
    try:
        return parse_release_url(url)
    except ValueError as error:
        raise UsageError(str(error)) from None


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
    return DeployArgs(release=parse_url(namespace.url), max_unpacked_bytes=namespace.max_unpacked_bytes)


def s3_endpoint(environ: Mapping[str, str]) -> str | None:
    """The S3 endpoint override: ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, else AWS's own.

    Read here rather than left to boto3 because distribution boto3 packages
    (Debian 12's 1.26) predate botocore's support for these variables.
    """
    return environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or None
