"""The local front: an HTTP server on loopback that hands each request to the stage's :class:`Gateway`."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from local.gateway import Gateway, GatewayResponse, Invoke, Request


class Front(BaseHTTPRequestHandler):
    """Turns HTTP requests on ``/<stage>/...`` into API Gateway's handling of them."""

    protocol_version = "HTTP/1.1"
    gateway: ClassVar[Gateway]
    invoke: ClassVar[Invoke]
    quiet: ClassVar[bool] = True

    def __getattr__(self, name: str) -> Any:
        # Every method reaches the gateway, as at API Gateway: one no route declares gets its answer
        # (403, Missing Authentication Token), not the HTTP server's 501.
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:
        if not self.quiet:
            sys.stderr.write(f"local: {self.command} {self.path} {args[1] if len(args) > 1 else ''}\n")

    def _serve(self) -> None:
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        prefix = f"/{self.gateway.stage}"
        if url.path != prefix and not url.path.startswith(prefix + "/"):
            self._reply(self.gateway.responses["MISSING_AUTHENTICATION_TOKEN"])
            return
        request = Request(
            method=self.command,
            path=url.path[len(prefix) :] or "/",
            headers={k: v for k, v in self.headers.items()},
            query=dict(parse_qsl(url.query, keep_blank_values=True)),  # as API Gateway: ?x= is x=""
            source_ip=self.client_address[0],
            now=datetime.now(UTC),
        )
        self._reply(self.gateway.handle(request, body, type(self).invoke))

    def _reply(self, response: GatewayResponse) -> None:
        data = response.body.encode()
        self.send_response(response.status)
        headers: Mapping[str, str] = response.headers
        for name, value in headers.items():
            self.send_header(name, value)
        if not any(name.lower() == "content-type" for name in headers):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve(gateway: Gateway, invoke: Invoke, *, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A front for ``gateway`` listening on ``host:port`` (not yet serving: call ``serve_forever``)."""
    handler = type("StageFront", (Front,), {"gateway": gateway, "invoke": staticmethod(invoke)})
    return ThreadingHTTPServer((host, port), handler)
