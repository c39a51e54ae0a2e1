"""One function per command: each calls the API and returns (the result as JSON, the text to print)."""

from __future__ import annotations

import argparse
import os
import sys
import time
import webbrowser
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from slipway_cli import output, transfer
from slipway_cli.client import Api
from slipway_cli.client import path as api_path
from slipway_cli.errors import CliError


def cmd_release(args: argparse.Namespace, api: Api) -> tuple[Any, str]:
    with transfer.git_archive(args.ref) as (path, commit):
        uploaded = transfer.upload_file(api, args.app, args.env, path, quiet=args.json)
        size = os.path.getsize(path)
    ref = transfer.ref_name(args.ref)
    body: dict[str, Any] = {**uploaded.finalizing(), "git": {"ref": ref, "commit": commit}}
    if args.message:
        body["description"] = args.message
    build = api.call("POST", api_path(args.app, args.env, "releases"), body)
    build = _follow_build(api, args, build)
    if build["status"] != "SUCCEEDED":
        raise CliError(f"the build of {args.app} failed: {build['error'] or 'see the log above'}; nothing was released")
    release = api.call("GET", api_path(args.app, args.env, "releases", build["release"]))
    return (
        release,
        f"Published {args.app} {release['id']} to {args.env} ({ref} @ {commit[:10]}, {output.human_size(size)}; "
        f"{_runtime(release)})",
    )


def _follow_build(api: Api, args: argparse.Namespace, build: dict[str, Any]) -> dict[str, Any]:
    """Print the build's log as it comes (on stderr, like the progress bars) until it ends."""
    after: str | None = None
    path = api_path(args.app, args.env, "builds", build["id"])
    while True:
        shown = api.call("GET", path, query={"after": after} if after else None)
        for line in shown["log"]:
            if not args.json:
                print(f"  {line}", file=sys.stderr)
        after = shown["next"]
        if shown["status"] != "BUILDING" and not shown["log"]:
            return dict(shown)
        if shown["status"] == "BUILDING":
            time.sleep(args.interval)


def _runtime(release: Mapping[str, Any]) -> str:
    """What a release runs on: ``python 3.11.2``, ``node 18.19.0``, or ``Procfile only``."""
    runtime = (release.get("build") or {}).get("runtime")
    return f"{runtime['name']} {runtime['version']}" if runtime else "Procfile only"


def cmd_releases(args: argparse.Namespace, api: Api) -> tuple[Any, str]:
    listing = api.call("GET", api_path(args.app, args.env, "releases"), query={"limit": str(args.limit)})
    lines = [f"{args.app} in {args.env}:"] if listing["releases"] else [f"{args.app} has no releases in {args.env}"]
    for r in listing["releases"]:
        mark = "*" if r.get("current") else " "
        lines.append(
            f"{mark} {r['id']:>5}  {r['created_at']}  {r['created_by']:<12}  {r['git']['ref']} @ "
            f"{r['git']['commit'][:10]}  {_runtime(r):<15}  {_made_from(r):<22}  {r['description']}".rstrip()
        )
    if listing["releases"]:
        lines.append("  * serves (current)")
    if listing.get("next_before"):
        lines.append(f"  … older releases: --limit {args.limit * 2}")
    return listing, "\n".join(lines)


def _made_from(release: Mapping[str, Any]) -> str:
    """What a release was made from, in words: a build, or the release whose slug it runs."""
    base = release.get("base")
    if not base:
        return "built"
    if base["reason"] == "promotion":
        return f"from {base['env']} {base['release']}"
    return f"{'config on' if base['reason'] == 'config' else 'copy of'} {base['release']}"


def cmd_config(args: argparse.Namespace, api: Api) -> tuple[Any, str]:
    path = api_path(args.app, args.env, "config")
    if args.action is None:
        config = api.call("GET", path)
        text = (
            "\n".join(f"{k}={output.shown(v)}" for k, v in config["vars"].items()) or f"{args.app} has no config vars"
        )
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
    if getattr(args, "base", None):
        change["base"] = args.base
    changed = api.call("PATCH", path, change)
    names = ", ".join(sorted(change.get("set", {})) or change.get("unset", []))
    release = changed.get("release")
    made = (
        f"; released as {release['id']} (on {changed.get('base')}'s slug; deploy it: slipway deploy {args.app} "
        f"{args.env} {release['id']})"
        if release
        else "; the first release will use it"
    )
    return changed, f"{'Set' if args.action == 'set' else 'Unset'} {names} for {args.app} in {args.env}{made}"


def cmd_promote(args: argparse.Namespace, apis: Mapping[str, Api]) -> tuple[Any, str]:
    """Ask TO to release FROM's release: TO reads it from FROM's own bucket, copies its slug and
    verifies it against FROM's record (nothing passes through this machine)."""
    source, target = apis[args.source], apis[args.target]
    release_id = args.release
    if release_id is None:
        listing = source.call("GET", api_path(args.app, args.source, "releases"), query={"limit": "100"})
        if not listing["releases"]:
            raise CliError(f"{args.app} has no releases in {args.source} to promote")
        current = [r for r in listing["releases"] if r.get("current")]
        release_id = (current or listing["releases"])[0]["id"]
    body: dict[str, Any] = {"from": args.source, "release": release_id}
    if args.message:
        body["description"] = args.message
    release = target.call("POST", api_path(args.app, args.target, "promotions"), body)
    return release, (
        f"Promoted {args.app} {args.source} {release_id} to {args.target} as {release['id']} "
        f"(the same slug, verified by {args.target}; {_runtime(release)}; {args.target}'s config)"
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
    if args.cancel:
        if args.release is not None:
            raise CliError("--cancel stops the running rollout; give no release with it")
        running = _running(args, api)
        cancelling = api.call("POST", api_path(args.app, args.env, "deploys", running["id"], "cancel"), {})
        if not args.json:
            print(f"Cancelling {running['id']}: it stops at its next step and rolls back what it changed", flush=True)
        return follow(api, args, cancelling)
    release = args.release
    if release is None:
        newest = api.call("GET", api_path(args.app, args.env, "releases"), query={"limit": "1"})["releases"]
        if not newest:
            raise CliError(f"{args.app} has no releases in {args.env}; publish one with `slipway release`")
        release = newest[0]["id"]
    started = api.call(
        "POST", api_path(args.app, args.env, "deploys"), {"release": release, "strategy": _strategy(args)}
    )
    return follow(api, args, started)


def _running(args: argparse.Namespace, api: Api) -> dict[str, Any]:
    """The app's running rollout (the API allows one at a time)."""
    listing = api.call("GET", api_path(args.app, args.env, "deploys"))["deploys"]
    running = [d for d in listing if d["status"] == "RUNNING"]
    if not running:
        raise CliError(
            f"no rollout of {args.app} is running in {args.env} (see `slipway deploys {args.app} {args.env}`)"
        )
    return dict(running[0])


def cmd_rollback(args: argparse.Namespace, api: Api) -> tuple[Any, str]:
    body: dict[str, Any] = {"strategy": _strategy(args)}
    if args.to:
        body["to"] = args.to
    started = api.call("POST", api_path(args.app, args.env, "rollback"), body)
    return follow(api, args, started)


def cmd_restart(args: argparse.Namespace, api: Api) -> tuple[Any, str]:
    body: dict[str, Any] = {"strategy": _strategy(args)}
    if args.process:
        body["process"] = args.process
    started = api.call("POST", api_path(args.app, args.env, "restart"), body)
    return follow(api, args, started)


def _step_line(entry: dict[str, Any], batches: int) -> str:
    batches = entry.get("batches") or batches  # the plan's at that step: a rollback plans its own
    where = f" — batch {entry['batch']} of {batches}" if entry["batch"] and batches else ""
    return f"  {entry['step']}{where} ({entry['seconds']:.1f} s)"


def follow(api: Api, args: argparse.Namespace, deploy: dict[str, Any]) -> tuple[Any, str]:
    """Print the deploy's steps, each with its duration, as they end; fail if the deploy failed.

    Ctrl-C stops following, not the rollout: the message says how to follow or cancel it again.
    """
    path = api_path(args.app, args.env, "deploys", deploy["id"])

    def say(line: str) -> None:
        if not args.json:
            print(line, flush=True)

    say(f"Deploying {args.app} {deploy['release']} to {args.env} ({deploy['kind']} {deploy['id']})")
    printed = 0
    try:
        while True:
            deploy = api.call("GET", path)
            steps = deploy.get("timeline") or []
            ended = steps if deploy["status"] != "RUNNING" else steps[:-1]  # the last one may still run
            for entry in ended[printed:]:
                if entry["seconds"] is not None:
                    say(_step_line(entry, len(deploy["batches"])))
            printed = max(printed, len(ended))
            if deploy["status"] != "RUNNING":
                break
            time.sleep(args.interval)
    except KeyboardInterrupt:
        raise CliError(
            f"stopped following {deploy['id']}; the rollout goes on. Follow it: slipway deploys {args.app} "
            f"{args.env} --follow {deploy['id']}; cancel it: slipway deploy {args.app} {args.env} --cancel"
        ) from None
    took = _seconds(deploy)
    if deploy["status"] != "SUCCEEDED":
        failure = deploy.get("failure") or {}
        where = f" on {failure['instance']}" if failure.get("instance") else ""
        rolled = f"; rolled back {', '.join(deploy['rolled_back'])}" if deploy.get("rolled_back") else ""
        output = failure.get("output") or ""
        if output and not args.json:
            print("\n".join(f"  | {line}" for line in output.splitlines()[-10:]), file=sys.stderr)
        done = "restarted in" if deploy["kind"] == "restart" else "deployed to"
        raise CliError(
            f"{args.app} {deploy['release']} was not {done} {args.env}{where}: "
            f"{failure.get('reason') or (deploy.get('error') or {}).get('cause') or deploy['status']}{rolled}; "
            + (f"{deploy['previous']} is still current" if deploy.get("previous") else "no release is current yet")
        )
    instances = sum(len(b["instances"]) for b in deploy["batches"]) + len(deploy.get("converged") or [])
    if deploy["kind"] == "restart":
        return deploy, (
            f"Restarted {args.app} {deploy['release']} in {args.env}: {instances} instance(s) in "
            f"{len(deploy['batches'])} batch(es){took}; {deploy['release']} is current"
        )
    if deploy["kind"] == "rollback":
        made = api.call("GET", api_path(args.app, args.env, "releases", deploy["release"]))
        to = (made.get("base") or {}).get("release", "?")
        done = f"Rolled back {args.app} in {args.env} to {to} as {deploy['release']}"
    else:
        done = f"Deployed {args.app} {deploy['release']} to {args.env}"
    return deploy, (
        f"{done}: {instances} instance(s) in {len(deploy['batches'])} batch(es){took}; {deploy['release']} is current"
    )


def _seconds(deploy: dict[str, Any]) -> str:
    started, stopped = deploy.get("started_at"), deploy.get("stopped_at")
    if not started or not stopped:
        return ""
    seconds = (datetime.fromisoformat(stopped) - datetime.fromisoformat(started)).total_seconds()
    return f" in {seconds:.1f} s"


def cmd_apps(args: argparse.Namespace, apis: Mapping[str, Api]) -> tuple[Any, str]:
    """Each environment's apps: current release, instances in service of those wanted, URL."""
    listed = {env: api.call("GET", "/apps")["apps"] for env, api in apis.items()}
    lines = []
    for env, apps in listed.items():
        lines.append(f"=== {env}" + ("" if apps else " (no apps)"))
        width = max((len(a["name"]) for a in apps), default=0)
        for app in apps:
            instances = app.get("instances")
            serving = f"{instances['in_service']}/{instances['desired']} in service" if instances else "no fleet"
            lines.append(
                f"{app['name']:<{width}}  {app['current'] or '-':<6} {serving:<16} {app['url'] or ''}".rstrip()
            )
    result: Any = listed[args.env] if args.env else listed
    return result, "\n".join(lines)


def cmd_status(args: argparse.Namespace, api: Api) -> tuple[Any, str]:
    shown = api.call("GET", api_path(args.app, args.env, "status"))
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


def cmd_run(args: argparse.Namespace, api: Api) -> tuple[Any, str | None]:
    """A one-off: its output printed as it streams, its exit status the caller's (main returns it)."""
    if not args.words:
        raise CliError(f"run needs a command, e.g. slipway run {args.app} {args.env} -- python manage.py migrate")
    command = " ".join(args.words)
    body: dict[str, Any] = {"command": command}
    if args.timeout is not None:  # the API checks it, and applies its default without it
        body["timeout_seconds"] = args.timeout
    started = api.call("POST", api_path(args.app, args.env, "runs"), body)
    if not args.json:
        print(
            f"Running `{command}` on {started['instance']} ({args.app} {started['release']} in {args.env})",
            file=sys.stderr,
            flush=True,
        )
    path = api_path(args.app, args.env, "runs", started["id"])
    after: str | None = None
    output: list[str] = []
    try:
        while True:
            shown = api.call("GET", path, query={"after": after} if after else None)
            output += shown["output"]
            if not args.json:
                for line in shown["output"]:
                    print(line, flush=True)
            after = shown["next"] or after
            if shown["done"] and not shown["output"]:
                break
            if not shown["done"]:
                time.sleep(args.interval)
    except KeyboardInterrupt:
        raise CliError(
            f"stopped following; the command goes on on {started['instance']} until it ends or reaches its time "
            f"limit ({started['timeout_seconds']} s)"
        ) from None
    if shown["exit_code"] is None:
        raise CliError(
            f"the command did not finish on {started['instance']}: SSM says {shown['status']} "
            f"(command {started['id']}); see slipway status {args.app} {args.env}"
        )
    return {**shown, "output": output}, None


SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_seconds(text: str) -> int:
    """``30s``, ``15m``, ``1h``, ``2d`` in seconds; :class:`CliError` naming the form."""
    number, unit = text[:-1], text[-1:]
    if unit not in SINCE_UNITS or not number.isdigit():
        raise CliError(f"--since {text!r}: give a number and a unit, e.g. 30s, 15m, 1h or 2d")
    return int(number) * SINCE_UNITS[unit]


def cmd_logs(args: argparse.Namespace, api: Api) -> tuple[Any, str | None]:
    """The app's lines since ``--since`` (the last ``--num``), then, with ``--tail``, new ones as they come."""
    if args.num < 1:
        raise CliError("--num must be 1 or more lines")
    start = int((time.time() - since_seconds(args.since)) * 1000)
    path = api_path(args.app, args.env, "logs")
    base = {key: value for key, value in (("process", args.process), ("instance", args.instance)) if value}
    seen: set[str] = set()

    def page_from(start: int) -> list[dict[str, Any]]:
        lines, after = [], None
        while True:
            query = {**base, "start": str(start), **({"after": after} if after else {})}
            shown = api.call("GET", path, query=query)
            lines += [line for line in shown["lines"] if line["id"] not in seen]
            after = shown["next"]
            if not after:
                return lines

    def show(lines: list[dict[str, Any]]) -> None:
        for line in lines:
            seen.add(line["id"])
            if not args.json:
                print(f"{line['time']} {line['instance']} {line['process'] or '-'}: {line['message']}", flush=True)

    printed = page_from(start)[-args.num :]
    show(printed)
    if not args.tail:
        return {"lines": printed}, None
    latest = max((line["timestamp"] for line in printed), default=start)
    try:
        while True:
            time.sleep(args.interval)
            # From the newest line seen: lines of the same millisecond are told apart by their ids.
            fresh = page_from(latest)
            show(fresh)
            latest = max((line["timestamp"] for line in fresh), default=latest)
    except KeyboardInterrupt:
        return {"lines": printed}, None


def cmd_scale(args: argparse.Namespace, api: Api) -> tuple[Any, str]:
    body = {key: getattr(args, key) for key in ("min", "desired", "max") if getattr(args, key) is not None}
    if not body:
        raise CliError(f"scale {args.app} {args.env} needs --min, --desired or --max, e.g. --desired 3")
    scaled = api.call("POST", api_path(args.app, args.env, "scale"), body)
    before, after, limits = scaled["before"], scaled["after"], scaled["limits"]
    parts = [
        f"{key} {before[key]} -> {after[key]}" if before[key] != after[key] else f"{key} {after[key]}"
        for key in ("min", "desired", "max")
    ]
    return scaled, (
        f"Scaled {args.app} in {args.env}: {', '.join(parts)} (it may scale from {limits['min']} to {limits['max']})"
    )


def cmd_cycle(args: argparse.Namespace, api: Api) -> tuple[Any, str]:
    body: dict[str, Any] = {"instance": args.instance} if args.instance else {"min_healthy_percent": args.min_healthy}
    started = api.call("POST", api_path(args.app, args.env, "cycle"), body)
    if args.instance:
        return _follow_replacement(api, args, started)
    path = api_path(args.app, args.env, "cycle", started["refresh"])
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
        shown = api.call("GET", api_path(args.app, args.env, "status"))
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
    if args.follow is not None:
        deploy = (
            api.call("GET", api_path(args.app, args.env, "deploys", args.follow))
            if args.follow
            else _running(args, api)
        )
        return follow(api, args, deploy)
    listing = api.call("GET", api_path(args.app, args.env, "deploys"))
    lines = [
        f"{d['id']}  {d['status']:<9} {d['kind']:<8} {d['release']:<6} {d['user'] or ''}" for d in listing["deploys"]
    ] or [f"{args.app} has no deploys in {args.env}"]
    return listing, "\n".join(lines)


def _open(url: str, what: str) -> tuple[Any, str]:
    """Open ``url`` in the user's browser (``$BROWSER`` if set); say where, so it can be copied."""
    opened = webbrowser.open(url)
    return {"url": url, "opened": opened}, f"{'Opening' if opened else 'Open'} {what}: {url}"


def cmd_open(args: argparse.Namespace, api: Api) -> tuple[Any, str]:
    listing = api.call("GET", "/apps")
    found = next((app for app in listing["apps"] if app["name"] == args.app), None)
    if found is None:
        known = ", ".join(app["name"] for app in listing["apps"]) or "none"
        raise CliError(f"no app {args.app!r} in {args.env} (apps: {known}); add it to cdk.json and deploy the stack")
    if not found["url"]:
        raise CliError(f"{args.app} has no fleet in {args.env} yet; deploy the Platform-{args.env} stack")
    return _open(found["url"], f"{args.app} in {args.env}")


def cmd_console(args: argparse.Namespace, api: Api) -> tuple[Any, str]:
    page = f"{api.url}/" + (f"#/apps/{args.app}" if args.app else "")
    return _open(page, f"the {args.env} console")
