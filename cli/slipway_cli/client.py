"""One environment's API over HTTP: where it is, the credentials, JSON in and out.

Each environment has its own API (its ``Platform-<env>`` stack's ``ApiUrl`` output). The
CLI finds it in ``SLIPWAY_URL_<ENV>`` (``SLIPWAY_URL_PRODUCTION``), else ``SLIPWAY_URL``;
the credentials in ``SLIPWAY_USER`` and ``SLIPWAY_PASSWORD``, else in ``~/.netrc`` for the
API's host.
"""

from __future__ import annotations

import base64
import json
import netrc
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from slipway_cli.errors import CliError


def api_url(env: str, environ: Mapping[str, str]) -> str:
    """The API URL of ``env``: ``SLIPWAY_URL_<ENV>``, else ``SLIPWAY_URL``."""
    url = environ.get(f"SLIPWAY_URL_{env.upper()}") or environ.get("SLIPWAY_URL")
    if not url:
        raise CliError(
            f"no API URL for {env}: set SLIPWAY_URL_{env.upper()} (or SLIPWAY_URL) to the ApiUrl output "
            f"of the Platform-{env} stack"
        )
    return url.rstrip("/")


def configured_envs(environ: Mapping[str, str]) -> list[str]:
    """The environments with an API URL of their own (``SLIPWAY_URL_<ENV>``), by name."""
    envs = sorted(
        key.removeprefix("SLIPWAY_URL_").lower()
        for key, url in environ.items()
        if key.startswith("SLIPWAY_URL_") and url
    )
    if not envs:
        raise CliError(
            "no environment to list: give one (slipway apps staging) or set SLIPWAY_URL_<ENV> to the ApiUrl "
            "output of each Platform-<env> stack"
        )
    return envs


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


class Api:
    """One environment's API: JSON in, JSON out, errors as :class:`CliError`."""

    def __init__(self, url: str, user: str, password: str) -> None:
        self.url = url
        self.user = user
        self.authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")

    def call(self, method: str, path: str, body: object = None, query: Mapping[str, str] | None = None) -> Any:
        url = self.url + path + (f"?{urlencode(query)}" if query else "")
        if body is None and method != "GET":
            body = {}  # the API takes changes only as JSON (what no other site's page can send)
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


def path(app: str, env: str, *rest: str) -> str:
    return "/".join([f"/apps/{quote(app)}/envs/{quote(env)}", *map(quote, rest)])
