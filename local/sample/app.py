"""Slipway's sample app: a web process on the instance image's python3, no dependencies.

GET / answers "<GREETING> from <release> on <instance>"; GET /health answers "ok" (the
health check path of web in cdk.json). The release is read from the release.json the
deploy agent puts beside the source; the instance is the host name (the instance id).
`python3 app.py --host 127.0.0.1` listens on loopback only: the deploy agent's own check
passes, the load balancer's cannot (a way to see a deploy rolled back by the load balancer).
"""

import argparse
import json
import os
import socket
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


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = "ok\n" if self.path == "/health" else f"{GREETING} from {RELEASE} on {INSTANCE}\n"
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request (health checks included) would drown the journal


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="", help="address to listen on (default: every address)")
    host = parser.parse_args().host
    server = ThreadingHTTPServer((host, int(os.environ["PORT"])), Handler)
    print(f"{RELEASE} listening on {host or '*'}:{os.environ['PORT']}", flush=True)
    server.serve_forever()
