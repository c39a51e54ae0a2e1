"""``python -m local --env staging``: serve one environment of the platform on this machine.

Prints one JSON line (``url``, ``user``, ``password``, ``aws_endpoint``, ``apps``, and with
real instances ``app_urls`` and ``bridge``) once it serves, then keeps serving until
interrupted (Ctrl-C or SIGTERM), and stops every container and process it started.
``--env demo`` serves the local-only demo environment (local/demo.py) unless cdk.json
defines one.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import secrets
import signal
import sys
import threading
from types import FrameType

from local.platform import LocalPlatform, PlatformError


class Stopped(Exception):
    """Ctrl-C (SIGINT) or SIGTERM arrived: stop everything."""


def raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM raise :class:`Stopped` (or KeyboardInterrupt) in the main thread."""
    # SIGINT too: a shell starting the platform in the background ignores it for its children,
    # and Python would then never raise KeyboardInterrupt.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, raise_stopped)


def show_platform_log() -> None:
    """The platform's own lines (instances booting, targets draining) on stderr; not every library's."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("local: %(message)s"))
    logger = logging.getLogger("local")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def serve_until_stopped(platform: LocalPlatform) -> int:
    """Keep serving until Ctrl-C or SIGTERM; stop everything the platform started, whatever happens."""
    stop_on_signals()
    try:
        threading.Event().wait()
    except (KeyboardInterrupt, Stopped):
        pass
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the stopping short
            signal.signal(signum, signal.SIG_IGN)
        print("local: stopping", file=sys.stderr, flush=True)
        platform.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local", description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="staging", help="the environment of cdk.json to serve (default staging)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password", default=None, help="default: generated and printed")
    parser.add_argument(
        "--simulated",
        action="store_true",
        help="keep moto's simulated instances: no containers or load balancer, every command succeeds at once",
    )
    args = parser.parse_args(argv)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>`: every thread's stack on stderr
    show_platform_log()
    password = args.password or secrets.token_urlsafe(18)
    platform = LocalPlatform(args.env, users={args.user: password}, port=args.port, simulated=args.simulated)
    stop_on_signals()
    try:
        platform.start()
    except KeyError:
        print(f"local: no environment {args.env!r} in cdk.json", file=sys.stderr)
        return 2
    except PlatformError as error:
        print(f"local: {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Stopped):
        return 130
    print(json.dumps(platform.info()), flush=True)
    apps = ", ".join(f"{app} at {url}" for app, url in platform.app_urls.items()) or ", ".join(platform.apps)
    print(f"local: serving {args.env}: API at {platform.url}; apps: {apps}", file=sys.stderr, flush=True)
    return serve_until_stopped(platform)


if __name__ == "__main__":
    sys.exit(main())
