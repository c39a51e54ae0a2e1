"""The release manifest (release.json), validated against release.schema.json.

The schema file is the single source of truth; the publisher validates against the same
file with the same validator (:mod:`.schema`, re-exported here). A release is a built slug
(``slug``, with the build manifest the writer copied out of it in ``build``), and names the
``source`` it was built from and, unless built from a new source, the ``base`` it was made from.
Version 3 stores the slug and source by digest, version 2 beside the manifest (:func:`slug_key`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .build import BuildManifest, BuildManifestError, build_manifest_from_data
from .health import DEFAULT_CODES, HealthCodesError, parse_codes
from .layout import SLUG, SOURCE, AppKeys
from .schema import SchemaError, read_schema, schema_errors

__all__ = ["HealthCheck", "Manifest", "ManifestError", "SchemaError", "load_schema", "parse_manifest", "schema_errors"]

SCHEMA_PATH = Path(__file__).resolve().parent / "release.schema.json"
# Version 3 stores slugs and sources by digest; version 2 (written before) beside the manifest.
SUPPORTED_VERSIONS = (2, 3)
VERSION = 3
DEFAULT_PORT = 5000
DEFAULT_HEALTH_TIMEOUT = 30.0


class ManifestError(ValueError):
    """release.json is not a valid manifest this agent understands."""


def load_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """Read the release manifest JSON Schema shipped beside this module."""
    return read_schema(path)


@dataclass(frozen=True)
class HealthCheck:
    """How to tell the web process is up: GET ``path`` on ``port`` answers one of ``codes``."""

    path: str
    port: int
    timeout: float
    codes: frozenset[int] = frozenset({200})
    codes_text: str = DEFAULT_CODES


@dataclass(frozen=True)
class Manifest:
    """A validated release.json."""

    id: str
    app: str
    env: str
    slug_sha256: str
    slug_size: int
    source_sha256: str
    source_size: int
    env_sha256: str
    version: int
    formation: dict[str, int]
    health_check: HealthCheck
    build: BuildManifest
    parent: str | None
    raw: dict[str, Any]


def slug_key(manifest: Manifest, keys: AppKeys) -> str:
    """Where the release's slug is: by its digest (version 3), or beside the manifest (version 2)."""
    return keys.slug(manifest.slug_sha256) if manifest.version >= 3 else keys.release(manifest.id, SLUG)


def source_key(manifest: Manifest, keys: AppKeys) -> str:
    """Where the source the slug was built from is, as :func:`slug_key`."""
    return keys.source(manifest.source_sha256) if manifest.version >= 3 else keys.release(manifest.id, SOURCE)


def parse_manifest(text: bytes, schema: Mapping[str, Any]) -> Manifest:
    """Parse and validate release.json bytes; raise :class:`ManifestError` saying what is wrong.

    A manifest whose ``version`` is not 2 is refused before the schema is applied, so an
    older or newer publisher gets a message about the version rather than about fields.
    ``build`` must be a valid build manifest (build.schema.json) and ``health_check.codes``
    a matcher :func:`slipway_release.health.parse_codes` accepts.
    """
    try:
        data = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ManifestError(f"release.json is not valid JSON ({error}); republish the release") from None
    if not isinstance(data, dict):
        raise ManifestError("release.json must be a JSON object; republish the release")
    version = data.get("version")
    if not (isinstance(version, int) and not isinstance(version, bool) and version in SUPPORTED_VERSIONS):
        raise ManifestError(
            f"release.json has version {json.dumps(version)}, but this agent understands versions "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))} only; update the instance's base image (image/provision.sh) "
            "or publish with a matching publisher"
        )
    errors = schema_errors(data, schema)
    if errors:
        raise ManifestError(
            "release.json does not match release.schema.json: "
            + "; ".join(errors[:5])
            + (f" (and {len(errors) - 5} more)" if len(errors) > 5 else "")
        )
    health = data["health_check"]
    codes_text = health.get("codes", DEFAULT_CODES)
    try:
        codes = parse_codes(codes_text)
        build = build_manifest_from_data(data["build"], "release.json build")
    except (HealthCodesError, BuildManifestError) as error:
        raise ManifestError(f"{error}; republish the release") from None
    return Manifest(
        id=data["id"],
        app=data["app"],
        env=data["env"],
        slug_sha256=data["slug"]["sha256"],
        slug_size=int(data["slug"]["size"]),
        source_sha256=data["source"]["sha256"],
        source_size=int(data["source"]["size"]),
        env_sha256=data["env_sha256"],
        version=version,
        formation={name: int(count) for name, count in data["formation"].items()},
        health_check=HealthCheck(
            path=health["path"],
            port=int(health.get("port", DEFAULT_PORT)),
            timeout=float(health.get("timeout", DEFAULT_HEALTH_TIMEOUT)),
            codes=codes,
            codes_text=codes_text,
        ),
        build=build,
        parent=data["parent"],
        raw=data,
    )
