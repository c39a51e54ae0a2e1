"""One environment's API over HTTP: where it is, the credentials, JSON in and out.

Each environment has its own API (its ``Platform-<env>`` stack's ``ApiUrl`` output). The
CLI finds it in ``SLIPWAY_URL_<ENV>`` (``SLIPWAY_URL_PRODUCTION``), else ``SLIPWAY_URL``;
the credentials in ``SLIPWAY_USER`` and ``SLIPWAY_PASSWORD``, else in ``~/.netrc`` for the
API's host.
"""

from __future__ import annotations

import base64
import http.client
import json
import netrc
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

from slipway_cli.errors import CliError


def url_variable(env: str, environ: Mapping[str, str]) -> str:
    """The variable that gives ``env``'s API URL: ``SLIPWAY_URL_<ENV>`` if set, else ``SLIPWAY_URL``."""
    own = f"SLIPWAY_URL_{env.upper()}"
    return own if environ.get(own) else "SLIPWAY_URL"


def api_url(env: str, environ: Mapping[str, str]) -> str:
    """The API URL of ``env``: ``SLIPWAY_URL_<ENV>``, else ``SLIPWAY_URL``; an http(s) URL of a host
    without credentials in it (those are SLIPWAY_USER/SLIPWAY_PASSWORD's or ~/.netrc's)."""
    variable = url_variable(env, environ)
    url = environ.get(variable, "").strip()
    if not url:
        raise CliError(
            f"no API URL for {env}: set SLIPWAY_URL_{env.upper()} (or SLIPWAY_URL) to the ApiUrl output "
            f"of the Platform-{env} stack"
        )
    fix = (
        f"set it to the ApiUrl output of the Platform-{env} stack, "
        "e.g. https://abc123.execute-api.us-east-1.amazonaws.com/v1"
    )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (read for its check: ValueError for a port that is not a number)
    except ValueError:
        raise CliError(f"{variable} is {shown_url(url)!r}, not a URL; {fix}") from None
    if "@" in parts.netloc:
        raise CliError(
            f"{variable} carries credentials: give the URL without them ({shown_url(url)}) and the user and "
            "password in SLIPWAY_USER and SLIPWAY_PASSWORD, or in ~/.netrc"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"{variable} is {shown_url(url)!r}, not an http(s) URL with a host; {fix}")
    if parts.query or parts.fragment:
        raise CliError(f"{variable} is {shown_url(url)!r}: the API URL has no query or fragment; {fix}")
    return url.rstrip("/")


def shown_url(url: str) -> str:
    """``url`` as a message may show it: whatever comes before an ``@`` (credentials, or part of
    them when a ``/``, ``?`` or ``#`` in a password cut the URL's authority short) left out."""
    if "@" not in url:
        return url
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    return f"{scheme}{separator}{rest.rpartition('@')[2]}"


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


class Answer(dict[str, Any]):
    """An object of the API's answer. A key it lacks means the URL is not the API's: that is said
    (:class:`CliError`), never a ``KeyError``."""

    def __init__(self, items: Mapping[str, Any] | None = None, unlike: Callable[[str], CliError] | None = None) -> None:
        super().__init__(items or {})
        self.unlike = unlike

    def __missing__(self, key: str) -> Any:
        raise (self.unlike or CliError)(f"its answer has no {key!r}")


# What API Gateway answers (HTTP 403) for a path that is no route of the API.
NO_ROUTE = "Missing Authentication Token"
# How long a request may wait for the API's answer.
TIMEOUT_SECONDS = 120


class Api:
    """One environment's API: JSON in, JSON out, errors as :class:`CliError`."""

    def __init__(
        self, url: str, user: str, password: str, *, variable: str = "SLIPWAY_URL", env: str | None = None
    ) -> None:
        self.url = url
        self.user = user
        self.authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self.variable = variable  # where the URL came from, for messages that say to fix it
        self.stack = f"Platform-{env}" if env else "Platform-<env>"

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
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                return self._answer(method, path, response.read())
        except urllib.error.HTTPError as error:
            raise CliError(self._explain(method, path, error)) from None
        except urllib.error.URLError as error:
            raise CliError(f"cannot reach {self.url} ({error.reason}); check the API URL") from None
        except TimeoutError:
            raise CliError(f"{self.url} did not answer {method} {path} within {TIMEOUT_SECONDS} s; try again") from None
        except (OSError, http.client.HTTPException) as error:  # the connection broke mid-answer
            raise CliError(
                f"{self.url} broke off its answer to {method} {path} ({type(error).__name__}: {error}); try again"
            ) from None

    def _unlike(self, method: str, path: str) -> Callable[[str], CliError]:
        """The error of an answer that is not the Slipway API's, for ``why``."""
        return lambda why: CliError(
            f"{self.url} does not answer like the Slipway API ({method} {path}: {why}); set {self.variable} "
            f"to the ApiUrl output of the {self.stack} stack"
        )

    def _answer(self, method: str, path: str, data: bytes) -> Answer:
        unlike = self._unlike(method, path)
        try:
            answer = json.loads(data, object_hook=lambda items: Answer(items, unlike))
        except ValueError:  # HTML, text, or nothing: an app's page, not the API's JSON
            raise unlike("the answer is not JSON") from None
        if not isinstance(answer, Answer):
            raise unlike("the answer is not a JSON object")
        return answer

    def _explain(self, method: str, path: str, error: urllib.error.HTTPError) -> str:
        try:
            payload = json.loads(error.read())
        except (ValueError, OSError, http.client.HTTPException):
            payload = None
        message = payload.get("message") if isinstance(payload, dict) else None
        if error.code == 401:
            return (
                f"{self.url} refused the credentials of {self.user} (HTTP 401); check SLIPWAY_USER and "
                "SLIPWAY_PASSWORD or ~/.netrc"
            )
        if not isinstance(message, str):
            return str(self._unlike(method, path)(f"HTTP {error.code} {error.reason} without the API's JSON"))
        if error.code == 403 and message == NO_ROUTE:
            names = named_in(path)
            return (
                f"{method} {path} is no operation of the Slipway API (HTTP 403: {NO_ROUTE}); "
                + (f"check {names}, and " if names else "check ")
                + f"that {self.variable} is the ApiUrl output of the {self.stack} stack"
            )
        return f"{message} (HTTP {error.code})"


def named_in(path: str) -> str:
    """The app and environment a path of :func:`path` names, as a message gives them."""
    parts = path.split("/")
    if len(parts) < 5 or parts[1] != "apps" or parts[3] != "envs":
        return ""
    app, env = unquote(parts[2]), unquote(parts[4])
    return f"the app {app!r} (slipway apps {env} lists them) and the environment {env!r}"


def _segment(text: str) -> str:
    """One path segment, quoted whole: a ``/`` in it is no separator, and a ``.`` or ``..`` no step
    up the path, so no argument can reach another operation than the one meant."""
    quoted = quote(text, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def path(app: str, env: str, *rest: str) -> str:
    return "/".join(["", "apps", _segment(app), "envs", _segment(env), *map(_segment, rest)])
