"""The ``slipway`` command: its parser, and running one command with one-line errors."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from slipway_cli import commands
from slipway_cli.client import Api, api_url, configured_envs, credentials, url_variable
from slipway_cli.errors import EXIT_FAILED, CliError


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="slipway", description="Publish and configure releases on Slipway.")
    main.add_argument("--json", action="store_true", help="print the API's JSON result instead of text")
    commands = main.add_subparsers(dest="command", required=True, metavar="COMMAND")

    release = commands.add_parser("release", help="publish the app at a git ref as a new release")
    release.add_argument("app")
    release.add_argument("env")
    release.add_argument("--ref", default="HEAD", help="branch, tag or commit to publish (default HEAD)")
    release.add_argument("-m", "--message", default="", help="why: recorded in the release")
    release.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)

    releases = commands.add_parser("releases", help="list releases, newest first")
    releases.add_argument("app")
    releases.add_argument("env")
    releases.add_argument("--limit", type=int, default=20)

    config = commands.add_parser("config", help="show, set or unset config vars (each change is a release)")
    config.add_argument("app")
    config.add_argument("env")
    config.add_argument("action", nargs="?", choices=["set", "unset"])
    config.add_argument("items", nargs="*", metavar="NAME=value | NAME")
    config.add_argument(
        "--base", metavar="RELEASE", help="the release whose slug the change runs (default: the one that serves)"
    )

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
    deploy.add_argument("--cancel", action="store_true", help="stop the running rollout and roll back what it changed")
    strategy_options(deploy)

    rollback = commands.add_parser(
        "rollback", help="a new release copying an earlier one (its slug and config), deployed in one batch"
    )
    rollback.add_argument("app")
    rollback.add_argument("env")
    rollback.add_argument("--to", metavar="RELEASE", help="the release to copy (default: the one that served before)")
    strategy_options(rollback)

    restart = commands.add_parser("restart", help="restart the current release, batch by batch like a deploy")
    restart.add_argument("app")
    restart.add_argument("env")
    restart.add_argument("-p", "--process", help="restart only this process type, e.g. worker (default: all)")
    strategy_options(restart)

    run = commands.add_parser(
        "run",
        help="run a one-off command (a migration, a script) on an instance with the current release",
        description="Run COMMAND once on an in-service instance, with the current release's code and config, as "
        "the app's user. Its output streams here and its exit status is slipway's (124: stopped at its time "
        "limit; 125: the instance refused it). As with ssh, the words are joined with spaces and run by the "
        "instance's shell: quote what that shell should see, e.g. slipway run web staging -- 'echo $PORT'.",
    )
    run.add_argument("app")
    run.add_argument("env")
    run.add_argument("--timeout", type=int, help="seconds before the command is stopped (default: the API's)")
    run.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    # What follows `--` is the command word for word (parse() takes it off before argparse sees it).
    run.add_argument("words", nargs="*", metavar="-- COMMAND", help="the command and its arguments")

    logs = commands.add_parser("logs", help="the app's log lines: every process, release phase, one-offs")
    logs.add_argument("app")
    logs.add_argument("env")
    logs.add_argument("-t", "--tail", action="store_true", help="keep printing new lines until Ctrl-C")
    logs.add_argument("-p", "--process", help="only this process type's lines: web, worker, release, run")
    logs.add_argument("--instance", help="only this instance's lines")
    logs.add_argument("--since", default="1h", help="how far back: 30s, 15m, 1h, 2d (default 1h)")
    logs.add_argument("-n", "--num", type=int, default=100, help="print at most the last N lines (default 100)")
    logs.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)

    deploys = commands.add_parser("deploys", help="recent deploys, newest first")
    deploys.add_argument("app")
    deploys.add_argument("env")
    deploys.add_argument(
        "--follow",
        nargs="?",
        const="",
        metavar="ID",
        help="follow a rollout to its end (default: the running one)",
    )
    deploys.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)

    apps = commands.add_parser("apps", help="the apps: current release, instances in service, URL")
    apps.add_argument("env", nargs="?", help="default: every environment with a SLIPWAY_URL_<ENV>")

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

    scale = commands.add_parser("scale", help="set the fleet's capacity within the limits cdk.json gives it")
    scale.add_argument("app")
    scale.add_argument("env")
    scale.add_argument("--min", type=int, help="fewest instances the fleet keeps")
    scale.add_argument("--desired", type=int, help="instances to run now")
    scale.add_argument("--max", type=int, help="most instances the fleet may grow to")

    open_app = commands.add_parser("open", help="open the app's URL in a browser")
    open_app.add_argument("app")
    open_app.add_argument("env")

    console = commands.add_parser("console", help="open the environment's web console in a browser")
    console.add_argument("env")
    console.add_argument("app", nargs="?", help="open this app's page")

    promote = commands.add_parser("promote", help="copy a release to another environment, with its config")
    promote.add_argument("app")
    promote.add_argument("source", metavar="FROM")
    promote.add_argument("target", metavar="TO")
    promote.add_argument("--release", help="default: FROM's current release, else its newest")
    promote.add_argument("-m", "--message", default="")
    return main


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line's arguments. For ``run``, the words after the first ``--`` are the command as
    they are, and the options before it are options wherever they stand (``run APP ENV --timeout 60
    -- ./migrate --all``): argparse alone would take them for the command's words."""
    command = next((word for word in argv if not word.startswith("-")), None)
    if command != "run" or "--" not in argv[argv.index(command) :]:
        return parser().parse_args(argv)
    cut = argv.index("--", argv.index(command))
    args = parser().parse_args(argv[:cut])
    # Words before `--` too (run APP ENV echo -- x): the command is all of them, `--` kept.
    args.words = [*args.words, "--", *argv[cut + 1 :]] if args.words else argv[cut + 1 :]
    return args


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command; return the exit status."""
    environ = os.environ if environ is None else environ
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "config" and args.action and not args.items:
            wanted = "NAME=value" if args.action == "set" else "NAME"
            raise CliError(f"config {args.action} needs at least one {wanted}")
        if args.command == "promote" and args.source == args.target:
            raise CliError(f"cannot promote {args.app} from {args.source} to itself; name another environment")
        if args.command == "promote":
            envs = [args.source, args.target]
        elif args.command == "apps" and args.env is None:
            envs = configured_envs(environ)
        else:
            envs = [args.env]
        apis = {}
        text: str | None
        for env in envs:
            url = api_url(env, environ)
            apis[env] = Api(url, *credentials(url, environ), variable=url_variable(env, environ), env=env)
        if args.command == "promote":
            result, text = commands.cmd_promote(args, apis)
        elif args.command == "apps":
            result, text = commands.cmd_apps(args, apis)
        else:
            handler: Callable[[argparse.Namespace, Api], tuple[Any, str | None]] = {
                "release": commands.cmd_release,
                "releases": commands.cmd_releases,
                "config": commands.cmd_config,
                "deploy": commands.cmd_deploy,
                "rollback": commands.cmd_rollback,
                "restart": commands.cmd_restart,
                "run": commands.cmd_run,
                "logs": commands.cmd_logs,
                "deploys": commands.cmd_deploys,
                "status": commands.cmd_status,
                "cycle": commands.cmd_cycle,
                "scale": commands.cmd_scale,
                "open": commands.cmd_open,
                "console": commands.cmd_console,
            }[args.command]
            result, text = handler(args, apis[args.env])
    except CliError as error:
        print(f"slipway: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("slipway: interrupted; nothing was published unless a release id was printed", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    elif text is not None:
        print(text)
    # slipway run passes the command's exit status through, as ssh does.
    return int(result["exit_code"]) if args.command == "run" else 0


if __name__ == "__main__":
    sys.exit(main())
