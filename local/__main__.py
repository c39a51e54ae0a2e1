"""``python -m local --env staging``: serve one environment of the platform on this machine.

Prints one JSON line (``url``, ``user``, ``password``, ``aws_endpoint``, ``apps``) once it
serves, then keeps serving until interrupted.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import secrets
import signal
import sys
import threading

from local.platform import LocalPlatform


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local", description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="staging", help="the environment of cdk.json to serve (default staging)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password", default=None, help="default: generated and printed")
    args = parser.parse_args(argv)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>`: every thread's stack on stderr
    password = args.password or secrets.token_urlsafe(18)
    platform = LocalPlatform(args.env, users={args.user: password}, port=args.port)
    try:
        platform.start()
    except KeyError:
        print(f"local: no environment {args.env!r} in cdk.json", file=sys.stderr)
        return 2
    print(json.dumps(platform.info()), flush=True)
    print(
        f"local: serving {args.env} at {platform.url} (apps: {', '.join(platform.apps)})", file=sys.stderr, flush=True
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        platform.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
