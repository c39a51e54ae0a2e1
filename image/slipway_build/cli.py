"""Command-line parsing for ``build``: pure, so tests assert what each argument means."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass

from slipway_release.archive import DEFAULT_MAX_UNPACKED_BYTES
from slipway_release.runtimes import RUNTIMES_PATH

USAGE = "build --source SOURCE.tar.gz --output SLUG.tar.gz [--cache DIR] [--runtimes FILE]"


class UsageError(ValueError):
    """The command line is wrong; the message says how to call ``build``."""


@dataclass(frozen=True)
class BuildArgs:
    """Everything one ``build`` run needs from its command line."""

    source: str
    output: str
    cache: str | None
    runtimes: str
    max_unpacked_bytes: int


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        # argparse would print usage and exit(2) itself; raise so main() prints one line.
        raise UsageError(f"{message}; usage: {USAGE}")


def build_parser() -> argparse.ArgumentParser:
    """The ``build`` argument parser (also renders ``build --help``)."""
    parser = _Parser(
        prog="build",
        description="Build a Slipway app's source archive into a slug: runtime chosen, dependencies installed "
        "into the app, the Procfile's build: command run.",
        epilog="Exit codes: 0 built, 1 the build failed (one line on stderr says why), 2 usage error. "
        "The last line of stdout is a JSON result.",
    )
    parser.add_argument("--source", required=True, help="the source archive (gzip tar, as published)")
    parser.add_argument("--output", required=True, help="where to write the slug (gzip tar); replaced if it exists")
    parser.add_argument("--cache", help="a directory kept between builds for pip's and npm's caches")
    parser.add_argument("--runtimes", default=RUNTIMES_PATH, help=f"what this image offers (default {RUNTIMES_PATH})")
    parser.add_argument(
        "--max-unpacked-bytes",
        type=int,
        default=DEFAULT_MAX_UNPACKED_BYTES,
        help=f"refuse sources and slugs larger than this unpacked (default {DEFAULT_MAX_UNPACKED_BYTES})",
    )
    return parser


def parse_args(argv: Sequence[str]) -> BuildArgs:
    """Parse ``build`` arguments; raise :class:`UsageError` with the fix."""
    namespace = build_parser().parse_args(list(argv))
    if not os.path.isfile(namespace.source):
        raise UsageError(f"--source {namespace.source}: no such file; usage: {USAGE}")
    directory = os.path.dirname(os.path.abspath(namespace.output))
    if not os.path.isdir(directory):
        raise UsageError(f"--output {namespace.output}: directory {directory} does not exist; usage: {USAGE}")
    if namespace.cache is not None and os.path.exists(namespace.cache) and not os.path.isdir(namespace.cache):
        raise UsageError(f"--cache {namespace.cache} is not a directory; usage: {USAGE}")
    if namespace.max_unpacked_bytes <= 0:
        raise UsageError(f"--max-unpacked-bytes must be a positive number of bytes; usage: {USAGE}")
    return BuildArgs(
        source=os.path.abspath(namespace.source),
        output=os.path.abspath(namespace.output),
        cache=os.path.abspath(namespace.cache) if namespace.cache else None,
        runtimes=namespace.runtimes,
        max_unpacked_bytes=namespace.max_unpacked_bytes,
    )
