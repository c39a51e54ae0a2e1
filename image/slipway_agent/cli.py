"""Command-line parsing for ``deploy``: pure, so tests assert what each argument means.

Three forms (image/README.md, "The deploy command")::

    deploy URL [--digest D]    stage, then activate (one run, one lock); D: the sha256 of the
                               release's release.json that it must have (current pins its own)
    deploy --stage URL         download, verify, unpack, configure, preflight; the serving release untouched
    deploy --activate rN       release phase, switch, restart, health check; nothing downloaded
    deploy --activate URL      the same, the app and environment taken from the URL (s3://…/rN)
    deploy --restart rN|URL [--process TYPE]
                               restart the running release rN's processes (of one type), health check
    deploy --recover           repair every interrupted activation (at boot, before the apps start)
    deploy --run rN --command B64 [--timeout S]
                               a one-off command with the running release rN's code and config (slipway run)

``--activate rN`` names its app through ``/etc/slipway/instance.env`` (what provisioning
wrote); the caller reads that file and passes it here as a mapping.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from slipway_release.archive import DEFAULT_MAX_UNPACKED_BYTES
from slipway_release.layout import USAGE, ReleaseUrl, parse_release_url
from slipway_release.names import CURRENT, is_app_name, is_env_name, is_release_id, is_sha256
from slipway_release.oneoff import DEFAULT_TIMEOUT_SECONDS, CommandError, decode, parse_timeout
from slipway_release.procfile import PROCESS_TYPE

# What a run does: both phases, or one of them, or restart what runs.
DEPLOY, STAGE, ACTIVATE, RESTART, RUN = "deploy", "stage", "activate", "restart", "run"
INSTANCE_ENV = "/etc/slipway/instance.env"
USAGE_EXAMPLE = f"deploy [--stage] {USAGE}, or deploy --activate r7"


class UsageError(ValueError):
    """The command line is wrong; the message says how to call ``deploy``."""


@dataclass(frozen=True)
class DeployArgs:
    """Everything one ``deploy`` run needs from its command line.

    ``release`` always names bucket, app, environment and target: for ``--activate rN`` the
    bucket, app and environment come from the instance's provisioning (``instance.env``); the
    bucket then only appears in messages (activation never downloads).
    """

    mode: str
    release: ReleaseUrl
    max_unpacked_bytes: int
    command: str | None = None  # --run: the one-off's shell text (decoded)
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS  # --run: its time limit
    process: str | None = None  # --restart: only this process type's units
    digest: str | None = None  # the sha256 the release's release.json must have (--digest; current's pin)


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
        description="Deploy one Slipway release onto this instance, with systemd units from its Procfile: "
        "stage it (download, verify, unpack, preflight) and activate it (release phase, switch, health check).",
        epilog="Exit codes: 0 done (or already so), 1 failed with the previous release running, "
        "2 usage error, 3 failed and the previous release could not be restored, "
        "4 --activate of a release not staged on this instance.",
    )
    parser.add_argument("url", nargs="?", help="s3://<bucket>/<app>/<env>/r<N> or s3://<bucket>/<app>/<env>/current")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--stage", action="store_true", help="only stage URL; the serving release is untouched")
    mode.add_argument(
        "--activate",
        metavar="RELEASE",
        help="activate a staged release: r<N> (this instance's app) or s3://<bucket>/<app>/<env>/r<N>",
    )
    mode.add_argument(
        "--restart",
        metavar="RELEASE",
        help="restart the running release's processes and health-check them: r<N> or its URL (must be what runs)",
    )
    mode.add_argument(
        "--recover",
        action="store_true",
        help="alone: repair every activation a crash or reboot interrupted (run at boot by slipway-recover.service)",
    )
    mode.add_argument(
        "--run",
        metavar="RELEASE",
        help="run --command once with the running release r<N>'s code and config, its output and exit status "
        "passed through (124: the time limit stopped it, 125: refused)",
    )
    parser.add_argument(
        "--digest",
        help="the sha256 the release's release.json must have (what the rollout pinned); a release whose "
        "manifest is another is refused, before staging and again before activating",
    )
    parser.add_argument("--process", help="--restart: only the processes of this Procfile type, e.g. worker")
    parser.add_argument("--command", help="--run's shell text as unpadded URL-safe base64 (slipway_release.oneoff)")
    parser.add_argument(
        "--timeout",
        default=str(DEFAULT_TIMEOUT_SECONDS),
        help=f"--run's time limit in seconds (default {DEFAULT_TIMEOUT_SECONDS})",
    )
    parser.add_argument(
        "--max-unpacked-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_UNPACKED_BYTES,
        help=f"refuse slugs that unpack to more than this (default {DEFAULT_MAX_UNPACKED_BYTES})",
    )
    return parser


def parse_args(argv: Sequence[str], instance_env: Mapping[str, str] | None = None) -> DeployArgs:
    """Parse ``deploy`` arguments; raise :class:`UsageError` with the fix.

    ``instance_env`` is ``/etc/slipway/instance.env`` (:func:`parse_instance_env`), read only
    by ``--activate rN``.
    """
    namespace = build_parser().parse_args(list(argv))
    if namespace.recover:
        raise UsageError("--recover takes no other argument; usage: deploy --recover")
    if namespace.process is not None and namespace.restart is None:
        raise UsageError("--process goes with --restart; usage: deploy --restart r7 --process worker")
    digest = namespace.digest
    if digest is not None:
        if not is_sha256(digest):
            raise UsageError(f"--digest {digest[:80]!r} is not a sha256 (64 lowercase hex digits)")
        if namespace.run is not None:
            raise UsageError("--digest goes with a release to stage, activate or restart, not with --run")
        if namespace.url is not None and namespace.url.endswith(f"/{CURRENT}"):
            raise UsageError(f"--digest goes with a release id; {CURRENT} pins its own digest")
    if namespace.activate is not None:
        if namespace.url is not None:
            raise UsageError(
                f"--activate takes the release alone, not also {namespace.url!r}; usage: deploy --activate r7"
            )
        release = _activation_target(namespace.activate, instance_env or {})
        return DeployArgs(ACTIVATE, release, namespace.max_unpacked_bytes, digest=digest)
    if namespace.restart is not None:
        if namespace.process is not None and not PROCESS_TYPE.fullmatch(namespace.process):
            raise UsageError(
                f"--process {namespace.process!r} is not a process type (letters, digits and _, as in the Procfile)"
            )
        if namespace.url is not None:
            raise UsageError(
                f"--restart takes the release alone, not also {namespace.url!r}; usage: deploy --restart r7"
            )
        release = _activation_target(namespace.restart, instance_env or {}, flag="--restart")
        return DeployArgs(RESTART, release, namespace.max_unpacked_bytes, process=namespace.process, digest=digest)
    if namespace.run is not None:
        return _one_off(namespace, instance_env or {})
    if namespace.command is not None:
        raise UsageError("--command goes with --run; usage: deploy --run r7 --command <base64>")
    if namespace.url is None:
        raise UsageError(f"the following arguments are required: url; usage: {USAGE_EXAMPLE}")
    return DeployArgs(
        STAGE if namespace.stage else DEPLOY, parse_url(namespace.url), namespace.max_unpacked_bytes, digest=digest
    )


def _one_off(namespace: argparse.Namespace, instance_env: Mapping[str, str]) -> DeployArgs:
    if namespace.url is not None:
        raise UsageError(
            f"--run takes the release alone, not also {namespace.url!r}; usage: deploy --run r7 --command <b64>"
        )
    if namespace.command is None:
        raise UsageError("--run needs --command <base64 of the command>; usage: deploy --run r7 --command <b64>")
    release = _activation_target(namespace.run, instance_env, flag="--run")
    try:
        command, timeout = decode(namespace.command), parse_timeout(namespace.timeout)
    except CommandError as error:
        raise UsageError(str(error)) from None
    return DeployArgs(RUN, release, namespace.max_unpacked_bytes, command, timeout)


def _activation_target(text: str, instance_env: Mapping[str, str], flag: str = "--activate") -> ReleaseUrl:
    if text.startswith("s3://"):
        release = parse_url(text)
        if release.target == CURRENT:
            raise UsageError(
                f"{flag} needs a release id, not current (reading current needs S3); "
                f"use deploy {release} to stage and activate what current names"
            )
        return release
    if not is_release_id(text):
        raise UsageError(f"{flag} {text!r}: give a release id like r7, or s3://<bucket>/<app>/<env>/r7")
    app, env = instance_env.get("SLIPWAY_APP", ""), instance_env.get("SLIPWAY_ENV", "")
    if not (is_app_name(app) and is_env_name(env)):
        raise UsageError(
            f"{flag} {text} needs this instance's app and environment, and {INSTANCE_ENV} does not name them "
            f"(SLIPWAY_APP, SLIPWAY_ENV); pass the release's URL instead: deploy {flag} s3://<bucket>/<app>/<env>/{text}"
        )
    return ReleaseUrl(instance_env.get("SLIPWAY_BUCKET") or "<bucket>", app, env, text)


def parse_instance_env(text: str | None) -> dict[str, str]:
    """``KEY=value`` lines of ``instance.env`` (provision.sh writes them unquoted); ``{}`` if absent."""
    values = {}
    for line in (text or "").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            values[key] = value
    return values


def s3_endpoint(environ: Mapping[str, str]) -> str | None:
    """The S3 endpoint override: ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, else AWS's own.

    Read here rather than left to boto3 because distribution boto3 packages
    (Debian 12's 1.26) predate botocore's support for these variables.
    """
    return environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or None
