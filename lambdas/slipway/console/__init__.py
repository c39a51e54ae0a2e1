"""The web console: one page and its two assets, served by the API function behind the API's
Basic auth, so the browser's own password prompt signs the user in and every call the page
makes is an ordinary API call with the same rules, refusals and audit log as the CLI's.

No build step and no third-party request: ``index.html``, ``app.js`` and ``app.css`` are
the files in this folder, sent as they are. The page's content security policy allows
only this origin; assets are named by their content hash so browsers may keep them.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from functools import cache
from importlib import resources

# Nothing but this origin: scripts and styles from the two assets, calls to the API itself,
# no inline script or style, no framing, no form posting anywhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'self'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
ASSET_TYPES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
PAGE_TYPE = "text/html; charset=utf-8"


@dataclass(frozen=True)
class Served:
    """A response the console sends: status, headers, text."""

    status: int
    headers: dict[str, str]
    body: str


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


@cache
def _assets() -> dict[str, tuple[str, str]]:
    """Asset name -> (text, content hash)."""
    texts = {name: _read(name) for name in ASSET_TYPES}
    return {name: (text, hashlib.sha256(text.encode()).hexdigest()[:12]) for name, text in texts.items()}


def base_path(request_path: str, resource_path: str) -> str:
    """The URL path the API's routes hang from, as the browser sees it: ``/v1/`` on the stage's
    own URL (``requestContext.path`` is ``/v1/`` for the resource path ``/``), ``/`` on a custom
    domain mapped at its root. Every URL the page uses is relative to it."""
    full, own = request_path.rstrip("/"), resource_path.rstrip("/")
    prefix = full[: len(full) - len(own)] if own and full.endswith(own) else full
    return prefix + "/"


def page(*, base: str, env: str) -> Served:
    """The console's one page, for the environment this API serves."""
    assets = _assets()
    text = (
        _read("index.html")
        .replace("{{base}}", html.escape(base, quote=True))
        .replace("{{env}}", html.escape(env, quote=True))
        .replace("{{js}}", assets["app.js"][1])
        .replace("{{css}}", assets["app.css"][1])
    )
    # The page is small and names the current assets: never cached, so a deploy of the
    # control plane shows at the next load.
    return Served(200, {"Content-Type": PAGE_TYPE, "Cache-Control": "no-store", **SECURITY_HEADERS}, text)


def asset(name: str) -> Served | None:
    """``app.js`` or ``app.css``; ``None`` for any other name."""
    found = _assets().get(name)
    if found is None:
        return None
    # Private: behind Basic auth, no shared cache may keep it. Named by hash in the page, so a
    # year is safe: a new version has a new URL.
    headers = {"Content-Type": ASSET_TYPES[name], "Cache-Control": "private, max-age=31536000, immutable"}
    return Served(200, {**headers, **SECURITY_HEADERS}, found[0])
