"""Slipway's sample app: a web process on the instance image's python3, no dependencies.

GET / answers "<GREETING> from <release> on <instance>"; GET /health answers "ok" (the
health check path of web in cdk.json). The release is read from the release.json the
deploy agent puts beside the source; the instance is the host name (the instance id).
`python3 app.py --unhealthy-after 3` answers /health with 503 once it has run 3 s: the deploy
agent's checks pass (they come first), the load balancer's then fail (a way to see a deploy
rolled back by the load balancer). `--host 127.0.0.1` listens on loopback only.
"""

import argparse
import json
import os
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def release() -> str:
    try:
        with open("../release.json", encoding="utf-8") as manifest:
            return str(json.load(manifest)["id"])
    except (OSError, ValueError, KeyError):
        return "an unknown release"


RELEASE = release()
INSTANCE = socket.gethostname()
GREETING = os.environ.get("GREETING", "Hello")
STARTED = time.monotonic()
UNHEALTHY_AFTER: float | None = None


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, body = 200, f"{GREETING} from {RELEASE} on {INSTANCE}\n"
        if self.path == "/health":
            failing = UNHEALTHY_AFTER is not None and time.monotonic() - STARTED > UNHEALTHY_AFTER
            status, body = (503, "failing\n") if failing else (200, "ok\n")
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request (health checks included) would drown the journal


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="", help="address to listen on (default: every address)")
    parser.add_argument("--unhealthy-after", type=float, help="seconds after which /health answers 503")
    arguments = parser.parse_args()
    host, UNHEALTHY_AFTER = arguments.host, arguments.unhealthy_after
    server = ThreadingHTTPServer((host, int(os.environ["PORT"])), Handler)
    print(f"{RELEASE} listening on {host or '*'}:{os.environ['PORT']}", flush=True)
    server.serve_forever()
