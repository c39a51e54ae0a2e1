"""``slipway``: publish releases, change config and promote, from a git checkout of an app.

Each environment has its own API (its ``Platform-<env>`` stack's ``ApiUrl`` output). The
CLI finds it in ``SLIPWAY_URL_<ENV>`` (``SLIPWAY_URL_PRODUCTION``), else ``SLIPWAY_URL``;
the credentials in ``SLIPWAY_USER`` and ``SLIPWAY_PASSWORD``, else in ``~/.netrc`` for the
API's host. Every failure is one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import netrc
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import IO, Any
from urllib.parse import quote, urlencode, urlsplit

EXIT_FAILED, EXIT_USAGE = 1, 2
CHUNK = 1024 * 1024
PARALLEL_PARTS = 8  # like `aws s3 cp`'s default of 10 concurrent requests


class CliError(Exception):
    """What went wrong, as the one line the user reads."""


# Settings --------------------------------------------------------------------------------------


def api_url(env: str, environ: Mapping[str, str]) -> str:
    """The API URL of ``env``: ``SLIPWAY_URL_<ENV>``, else ``SLIPWAY_URL``."""
    url = environ.get(f"SLIPWAY_URL_{env.upper()}") or environ.get("SLIPWAY_URL")
    if not url:
        raise CliError(
            f"no API URL for {env}: set SLIPWAY_URL_{env.upper()} (or SLIPWAY_URL) to the ApiUrl output "
            f"of the Platform-{env} stack"
        )
    return url.rstrip("/")


def credentials(url: str, environ: Mapping[str, str], netrc_path: str | None = None) -> tuple[str, str]:
    """``SLIPWAY_USER``/``SLIPWAY_PASSWORD``, else the ``~/.netrc`` entry of the URL's host."""
    if environ.get("SLIPWAY_USER") and environ.get("SLIPWAY_PASSWORD"):
        return environ["SLIPWAY_USER"], environ["SLIPWAY_PASSWORD"]
    host = urlsplit(url).hostname or ""
    path = netrc_path or os.path.join(environ.get("HOME", os.path.expanduser("~")), ".netrc")
    try:
        entry = netrc.netrc(path).authenticators(host)
    except FileNotFoundError:
        entry = None
    except netrc.NetrcParseError as error:
        raise CliError(f"{path} is not readable as a netrc file ({error})") from None
    if not entry or not entry[0] or not entry[2]:
        raise CliError(
            f"no credentials for {host}: set SLIPWAY_USER and SLIPWAY_PASSWORD, or add "
            f"'machine {host} login <user> password <password>' to ~/.netrc"
        )
    return entry[0], entry[2]


# HTTP ------------------------------------------------------------------------------------------


class Api:
    """One environment's API: JSON in, JSON out, errors as :class:`CliError`."""

    def __init__(self, url: str, user: str, password: str) -> None:
        self.url = url
        self.user = user
        self.authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")

    def call(self, method: str, path: str, body: object = None, query: Mapping[str, str] | None = None) -> Any:
        url = self.url + path + (f"?{urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": self.authorization, "Accept": "application/json", "User-Agent": "slipway-cli"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            raise CliError(self._explain(error)) from None
        except urllib.error.URLError as error:
            raise CliError(f"cannot reach {self.url} ({error.reason}); check the API URL") from None

    def _explain(self, error: urllib.error.HTTPError) -> str:
        try:
            message = json.loads(error.read()).get("message") or error.reason
        except (ValueError, AttributeError):
            message = error.reason
        if error.code == 401:
            return (
                f"{self.url} refused the credentials of {self.user} (HTTP 401); check SLIPWAY_USER and "
                "SLIPWAY_PASSWORD or ~/.netrc"
            )
        return f"{message} (HTTP {error.code})"


def _path(app: str, env: str, *rest: str) -> str:
    return "/".join([f"/apps/{quote(app)}/envs/{quote(env)}", *map(quote, rest)])


class _Progress:
    """Counts bytes on stderr when it is a terminal; silent otherwise. Safe across threads."""

    def __init__(self, total: int, label: str, quiet: bool) -> None:
        self.total, self.label, self.done = total, label, 0
        self.lock = threading.Lock()
        self.bar: Any = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=False)

    def advance(self, amount: int) -> None:
        with self.lock:
            self.done += amount
            if self.bar is not None:
                self.bar.update(amount)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Slice:
    """``size`` bytes of an open file from ``offset``, read in chunks, counted as they go."""

    def __init__(self, handle: IO[bytes], offset: int, size: int, progress: _Progress) -> None:
        self.handle, self.left, self.progress = handle, size, progress
        handle.seek(offset)

    def read(self, amount: int = -1) -> bytes:
        amount = self.left if amount < 0 else min(amount, self.left)
        chunk = self.handle.read(amount)
        self.left -= len(chunk)
        self.progress.advance(len(chunk))
        return chunk


def upload_file(api: Api, app: str, env: str, path: str, *, quiet: bool) -> tuple[str, list[dict[str, Any]] | None]:
    """Upload the file at ``path`` through presigned URLs, parts in parallel as ``aws s3 cp`` does;
    the upload id and, if multipart, the parts' ETags."""
    size, digest = os.path.getsize(path), _sha256(path)
    upload = api.call("POST", _path(app, env, "uploads"), {"size": size, "sha256": digest})
    part_size = int(upload.get("part_size") or size)
    progress = _Progress(size, "upload", quiet)

    def send(part: Mapping[str, Any]) -> dict[str, Any]:
        number = int(part["part_number"])
        offset = (number - 1) * part_size
        length = min(part_size, size - offset)
        with open(path, "rb") as handle:
            return {"part_number": number, "etag": _put(part["url"], _Slice(handle, offset, length, progress), length)}

    try:
        with ThreadPoolExecutor(max_workers=PARALLEL_PARTS) as pool:
            parts = list(pool.map(send, upload["parts"]))
    finally:
        progress.close()
    return upload["upload_id"], (parts if len(parts) > 1 else None)


def _put(url: str, body: _Slice, length: int) -> str:
    request = urllib.request.Request(
        url, data=body, method="PUT", headers={"Content-Length": str(length), "Content-Type": "application/gzip"}
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return str(response.headers.get("ETag", ""))
    except urllib.error.HTTPError as error:
        raise CliError(f"the upload to S3 failed (HTTP {error.code}: {error.reason}); run the command again") from None
    except urllib.error.URLError as error:
        raise CliError(f"cannot reach S3 for the upload ({error.reason})") from None


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# git -------------------------------------------------------------------------------------------


def _git(*args: str) -> bytes:
    try:
        return subprocess.run(["git", *args], check=True, capture_output=True).stdout
    except FileNotFoundError:
        raise CliError("git is not installed; slipway release archives the app with `git archive`") from None
    except subprocess.CalledProcessError as error:
        raise CliError(f"git {' '.join(args)} failed: {error.stderr.decode(errors='replace').strip()}") from None


@contextmanager
def git_archive(ref: str) -> Iterator[tuple[str, str]]:
    """``git archive --format=tar.gz`` of ``ref`` in a temporary file; yields (path, full commit)."""
    commit = _git("rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}").decode().strip()
    with tempfile.TemporaryDirectory(prefix="slipway-") as folder:
        path = os.path.join(folder, "source.tar.gz")
        _git("archive", "--format=tar.gz", f"--output={path}", commit)
        yield path, commit


# Commands --------------------------------------------------------------------------------------


def cmd_release(args: argparse.Namespace, api: Api) -> tuple[Any, str]:
    with git_archive(args.ref) as (path, commit):
        upload_id, parts = upload_file(api, args.app, args.env, path, quiet=args.json)
        size = os.path.getsize(path)
    body: dict[str, Any] = {"upload_id": upload_id, "git": {"ref": args.ref, "commit": commit}}
    if args.message:
        body["description"] = args.message
    if parts:
        body["parts"] = parts
    release = api.call("POST", _path(args.app, args.env, "releases"), body)
    return release, f"Published {args.app} {release['id']} to {args.env} ({args.ref} @ {commit[:10]}, {_size(size)})"


def cmd_releases(args: argparse.Namespace, api: Api) -> tuple[Any, str]:
    listing = api.call("GET", _path(args.app, args.env, "releases"), query={"limit": str(args.limit)})
    lines = [f"{args.app} in {args.env}:"] if listing["releases"] else [f"{args.app} has no releases in {args.env}"]
    for r in listing["releases"]:
        mark = "*" if r.get("current") else " "
        lines.append(
            f"{mark} {r['id']:>5}  {r['created_at']}  {r['created_by']:<12}  {r['git']['ref']} @ "
            f"{r['git']['commit'][:10]}  {r['description']}".rstrip()
        )
    if listing.get("next_before"):
        lines.append(f"  … older releases: --limit {args.limit * 2}")
    return listing, "\n".join(lines)


def cmd_config(args: argparse.Namespace, api: Api) -> tuple[Any, str]:
    path = _path(args.app, args.env, "config")
    if args.action is None:
        config = api.call("GET", path)
        text = "\n".join(f"{k}={_shown(v)}" for k, v in config["vars"].items()) or f"{args.app} has no config vars"
        return config, text
    if args.action == "set":
        assignments = {}
        for item in args.items:
            name, equals, value = item.partition("=")
            if not equals:
                raise CliError(f"{item!r} is not NAME=value; write e.g. DATABASE_URL=postgres://…")
            assignments[name] = value
        change: dict[str, Any] = {"set": assignments}
    else:
        change = {"unset": list(args.items)}
    changed = api.call("PATCH", path, change)
    names = ", ".join(sorted(change.get("set", {})) or change.get("unset", []))
    release = changed.get("release")
    made = f"; released as {release['id']}" if release else "; the first release will use it"
    return changed, f"{'Set' if args.action == 'set' else 'Unset'} {names} for {args.app} in {args.env}{made}"


def cmd_promote(args: argparse.Namespace, apis: Mapping[str, Api]) -> tuple[Any, str]:
    source, target = apis[args.source], apis[args.target]
    release_id = args.release
    if release_id is None:
        listing = source.call("GET", _path(args.app, args.source, "releases"), query={"limit": "100"})
        if not listing["releases"]:
            raise CliError(f"{args.app} has no releases in {args.source} to promote")
        current = [r for r in listing["releases"] if r.get("current")]
        release_id = (current or listing["releases"])[0]["id"]
    manifest = source.call("GET", _path(args.app, args.source, "releases", release_id))
    download = source.call("GET", _path(args.app, args.source, "releases", release_id, "source"))
    with tempfile.TemporaryDirectory(prefix="slipway-") as folder:
        path = os.path.join(folder, "source.tar.gz")
        _download(download["url"], path, int(download["size"]), quiet=args.json)
        if _sha256(path) != manifest["source"]["sha256"]:
            raise CliError(f"the source of {args.source} {release_id} did not download intact; run promote again")
        upload_id, parts = upload_file(target, args.app, args.target, path, quiet=args.json)
    body: dict[str, Any] = {
        "upload_id": upload_id,
        "git": manifest["git"],
        "description": args.message or manifest.get("description", ""),
        "promoted_from": {"env": args.source, "release": release_id},
    }
    if parts:
        body["parts"] = parts
    release = target.call("POST", _path(args.app, args.target, "releases"), body)
    return release, (
        f"Promoted {args.app} {args.source} {release_id} to {args.target} as {release['id']} "
        f"(same source, {args.target}'s config)"
    )


def _strategy(args: argparse.Namespace) -> dict[str, Any]:
    chosen: dict[str, Any] = {}
    if args.canary is not None:
        chosen["canary"] = args.canary
    if args.batch_size is not None:
        chosen["batch_size"] = args.batch_size
    if args.batch_percent is not None:
        chosen["batch_percent"] = args.batch_percent
    if args.bake is not None:
        chosen["bake_seconds"] = args.bake
    return chosen


def cmd_deploy(args: argparse.Namespace, api: Api) -> tuple[Any, str]:
    release = args.release
    if release is None:
        newest = api.call("GET", _path(args.app, args.env, "releases"), query={"limit": "1"})["releases"]
        if not newest:
            raise CliError(f"{args.app} has no releases in {args.env}; publish one with `slipway release`")
        release = newest[0]["id"]
    started = api.call("POST", _path(args.app, args.env, "deploys"), {"release": release, "strategy": _strategy(args)})
    return follow(api, args, started)


def cmd_rollback(args: argparse.Namespace, api: Api) -> tuple[Any, str]:
    started = api.call("POST", _path(args.app, args.env, "rollback"), {"strategy": _strategy(args)})
    return follow(api, args, started)


def follow(api: Api, args: argparse.Namespace, deploy: dict[str, Any]) -> tuple[Any, str]:
    """Print the deploy's progress as it changes until it ends; fail if it failed."""
    path = _path(args.app, args.env, "deploys", deploy["id"])

    def say(line: str) -> None:
        if not args.json:
            print(line, flush=True)

    say(f"Deploying {args.app} {deploy['release']} to {args.env} ({deploy['kind']} {deploy['id']})")
    seen = ""
    while deploy["status"] == "RUNNING":
        time.sleep(args.interval)
        deploy = api.call("GET", path)
        done = sum(1 for b in deploy["batches"] if b["state"] == "done")
        line = f"  {deploy['step'] or 'starting'}" + (
            f" — batch {min(done + 1, len(deploy['batches']))} of {len(deploy['batches'])}" if deploy["batches"] else ""
        )
        if line != seen:
            say(line)
            seen = line
    if deploy["status"] != "SUCCEEDED":
        failure = deploy.get("failure") or {}
        where = f" on {failure['instance']}" if failure.get("instance") else ""
        rolled = f"; rolled back {', '.join(deploy['rolled_back'])}" if deploy.get("rolled_back") else ""
        output = failure.get("output") or ""
        if output and not args.json:
            print("\n".join(f"  | {line}" for line in output.splitlines()[-10:]), file=sys.stderr)
        raise CliError(
            f"{args.app} {deploy['release']} was not deployed to {args.env}{where}: "
            f"{failure.get('reason') or (deploy.get('error') or {}).get('cause') or deploy['status']}{rolled}; "
            f"{deploy.get('previous') or 'the previous release'} is still current"
        )
    instances = sum(len(b["instances"]) for b in deploy["batches"]) + len(deploy.get("converged") or [])
    return deploy, (
        f"Deployed {args.app} {deploy['release']} to {args.env}: {instances} instance(s) in "
        f"{len(deploy['batches'])} batch(es); {deploy['release']} is current"
    )


def cmd_status(args: argparse.Namespace, api: Api) -> tuple[Any, str]:
    shown = api.call("GET", _path(args.app, args.env, "status"))
    capacity = shown["capacity"]
    lines = [
        f"{args.app} in {args.env}: current {shown['current'] or 'none (nothing deployed yet)'}; "
        f"{len(shown['instances'])} instance(s), desired {capacity['desired']} (min {capacity['min']}, "
        f"max {capacity['max']})"
    ]
    if shown.get("deploying"):
        d = shown["deploying"]
        lines.append(f"  deploying {d['release']} (by {d['by']} since {d['since']})")
    lines += [
        f"  {i['id']:<20} {i['zone']:<12} {i.get('release') or '(boot)':<7} {i['lifecycle']:<12} {i['health']:<9} "
        f"target {i['target']}"
        for i in shown["instances"]
    ]
    return shown, "\n".join(lines)


def cmd_cycle(args: argparse.Namespace, api: Api) -> tuple[Any, str]:
    body: dict[str, Any] = {"instance": args.instance} if args.instance else {"min_healthy_percent": args.min_healthy}
    started = api.call("POST", _path(args.app, args.env, "cycle"), body)
    if args.instance:
        return _follow_replacement(api, args, started)
    path = _path(args.app, args.env, "cycle", started["refresh"])
    shown, seen = started, ""
    while shown["status"] in ("Pending", "InProgress", "Cancelling", "RollbackInProgress", "Baking"):
        time.sleep(args.interval)
        shown = api.call("GET", path)
        line = f"  {shown['status']} {shown.get('percent', 0)}%"
        if line != seen and not args.json:
            print(line, flush=True)
            seen = line
    if shown["status"] != "Successful":
        raise CliError(
            f"cycling {args.app} in {args.env} ended {shown['status']}: {shown.get('reason') or 'no reason'}"
        )
    return shown, f"Cycled every instance of {args.app} in {args.env}"


def _follow_replacement(api: Api, args: argparse.Namespace, started: dict[str, Any]) -> tuple[Any, str]:
    """Wait until the instance is gone and the fleet serves at its desired capacity again."""
    deadline = time.monotonic() + args.timeout
    while True:
        shown = api.call("GET", _path(args.app, args.env, "status"))
        serving = [i for i in shown["instances"] if i["lifecycle"] == "InService" and i["target"] == "healthy"]
        gone = all(i["id"] != args.instance for i in shown["instances"])
        if gone and len(serving) >= shown["capacity"]["desired"]:
            return shown, (
                f"Replaced {args.instance}: {len(serving)} of {shown['capacity']['desired']} instances "
                f"of {args.app} in {args.env} serve"
            )
        if time.monotonic() > deadline:
            raise CliError(
                f"{args.instance} is being replaced, but the fleet did not serve at full capacity within "
                f"{args.timeout:g} s; see `slipway status {args.app} {args.env}`"
            )
        time.sleep(args.interval)


def cmd_deploys(args: argparse.Namespace, api: Api) -> tuple[Any, str]:
    listing = api.call("GET", _path(args.app, args.env, "deploys"))
    lines = [
        f"{d['id']}  {d['status']:<9} {d['kind']:<8} {d['release']:<6} {d['user'] or ''}" for d in listing["deploys"]
    ] or [f"{args.app} has no deploys in {args.env}"]
    return listing, "\n".join(lines)


def _download(url: str, path: str, size: int, *, quiet: bool) -> None:
    progress = _Progress(size, "download", quiet)
    try:
        with urllib.request.urlopen(url, timeout=600) as response, open(path, "wb") as out:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                progress.advance(len(chunk))
    except urllib.error.URLError as error:
        raise CliError(f"cannot download the source ({error}); run promote again") from None
    finally:
        progress.close()


def _shown(value: str) -> str:
    return json.dumps(value, ensure_ascii=False) if ("\n" in value or value != value.strip()) else value


def _size(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB" if size >= 1024 * 1024 else f"{size / 1024:.1f} kB"


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="slipway", description="Publish and configure releases on Slipway.")
    main.add_argument("--json", action="store_true", help="print the API's JSON result instead of text")
    commands = main.add_subparsers(dest="command", required=True, metavar="COMMAND")

    release = commands.add_parser("release", help="publish the app at a git ref as a new release")
    release.add_argument("app")
    release.add_argument("env")
    release.add_argument("--ref", default="HEAD", help="branch, tag or commit to publish (default HEAD)")
    release.add_argument("-m", "--message", default="", help="why: recorded in the release")

    releases = commands.add_parser("releases", help="list releases, newest first")
    releases.add_argument("app")
    releases.add_argument("env")
    releases.add_argument("--limit", type=int, default=20)

    config = commands.add_parser("config", help="show, set or unset config vars (each change is a release)")
    config.add_argument("app")
    config.add_argument("env")
    config.add_argument("action", nargs="?", choices=["set", "unset"])
    config.add_argument("items", nargs="*", metavar="NAME=value | NAME")

    def strategy_options(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--canary",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="deploy one instance alone first (default on)",
        )
        command.add_argument("--batch-size", type=int, help="instances per batch after the canary")
        command.add_argument("--batch-percent", type=int, help="percent of the fleet per batch (default 25)")
        command.add_argument("--bake", type=int, metavar="SECONDS", help="watch alarms this long after each batch")
        command.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)

    deploy = commands.add_parser("deploy", help="roll a release out over the fleet and follow it to the end")
    deploy.add_argument("app")
    deploy.add_argument("env")
    deploy.add_argument("release", nargs="?", help="default: the newest release")
    strategy_options(deploy)

    rollback = commands.add_parser("rollback", help="deploy the release that was current before this one")
    rollback.add_argument("app")
    rollback.add_argument("env")
    strategy_options(rollback)

    deploys = commands.add_parser("deploys", help="recent deploys, newest first")
    deploys.add_argument("app")
    deploys.add_argument("env")

    status = commands.add_parser("status", help="current release, capacity, instances and their health")
    status.add_argument("app")
    status.add_argument("env")

    cycle = commands.add_parser("cycle", help="replace one instance, or every instance of the fleet")
    cycle.add_argument("app")
    cycle.add_argument("env")
    cycle.add_argument("--instance", help="replace only this instance (keeps capacity)")
    cycle.add_argument("--min-healthy", type=int, default=90, help="percent in service while cycling (default 90)")
    cycle.add_argument("--timeout", type=float, default=900, help="seconds to wait for a replacement")
    cycle.add_argument("--interval", type=float, default=5.0, help=argparse.SUPPRESS)

    promote = commands.add_parser("promote", help="copy a release to another environment, with its config")
    promote.add_argument("app")
    promote.add_argument("source", metavar="FROM")
    promote.add_argument("target", metavar="TO")
    promote.add_argument("--release", help="default: FROM's current release, else its newest")
    promote.add_argument("-m", "--message", default="")
    return main


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command; return the exit status."""
    environ = os.environ if environ is None else environ
    args = parser().parse_args(argv)
    try:
        if args.command == "config" and args.action and not args.items:
            wanted = "NAME=value" if args.action == "set" else "NAME"
            raise CliError(f"config {args.action} needs at least one {wanted}")
        envs = [args.source, args.target] if args.command == "promote" else [args.env]
        apis = {}
        for env in envs:
            url = api_url(env, environ)
            apis[env] = Api(url, *credentials(url, environ))
        if args.command == "promote":
            result, text = cmd_promote(args, apis)
        else:
            handler = {
                "release": cmd_release,
                "releases": cmd_releases,
                "config": cmd_config,
                "deploy": cmd_deploy,
                "rollback": cmd_rollback,
                "deploys": cmd_deploys,
                "status": cmd_status,
                "cycle": cmd_cycle,
            }[args.command]
            result, text = handler(args, apis[args.env])
    except CliError as error:
        print(f"slipway: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("slipway: interrupted; nothing was published unless a release id was printed", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
