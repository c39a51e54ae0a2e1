"""The build manifest (``.slipway/build.json`` in a slug), validated against build.schema.json.

The build program writes it; the publisher reads it out of the slug (with
:func:`slipway_release.archive.scan`) and copies it into release.json's ``build``; the deploy
agent sets every process's ``PATH`` and ``PYTHONPATH`` from it with :func:`process_environment`,
the function the build program uses for the Procfile's ``build:`` command.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .schema import read_schema, schema_errors

BUILD_SCHEMA_PATH = Path(__file__).resolve().parent / "build.schema.json"
BUILD_MANIFEST_VERSION = 1
# Where the build manifest lives inside a slug, and what the build owns there.
SLIPWAY_DIR = ".slipway"
BUILD_MANIFEST = f"{SLIPWAY_DIR}/build.json"
MAX_BUILD_MANIFEST_BYTES = 64 * 1024
PYTHON, NODE, PROCFILE_KIND = "python", "node", "procfile"
KINDS = (PYTHON, NODE, PROCFILE_KIND)
# What follows the app's own directories and its runtime's on every process's PATH.
SYSTEM_PATH = ("/usr/local/bin", "/usr/bin", "/bin")


class BuildManifestError(ValueError):
    """build.json is not a build manifest this platform understands."""


@dataclass(frozen=True)
class Runtime:
    """The interpreter a slug was built with: ``python 3.11.2`` runs on any instance offering ``3.11``."""

    name: str
    version: str

    @property
    def line(self) -> str:
        """What instances must offer: major.minor for python, major for node."""
        return runtime_line(self.name, self.version)

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


def runtime_line(name: str, version: str) -> str:
    """``3.11`` for python ``3.11.2``, ``18`` for node ``18.19.0``: the key in runtimes.json."""
    parts = version.split(".")
    return ".".join(parts[:2]) if name == PYTHON else parts[0]


@dataclass(frozen=True)
class BuildManifest:
    """A validated build.json."""

    kind: str
    runtime: Runtime | None
    path: tuple[str, ...]
    pythonpath: tuple[str, ...]
    source_sha256: str
    built_at: str
    raw: dict[str, Any]


@lru_cache(maxsize=1)
def load_build_schema() -> dict[str, Any]:
    """The build manifest's JSON Schema, shipped beside this module."""
    return read_schema(BUILD_SCHEMA_PATH)


def build_manifest_from_data(data: Any, where: str = "build.json") -> BuildManifest:
    """Validate an already decoded build manifest (e.g. release.json's ``build``)."""
    if not isinstance(data, dict):
        raise BuildManifestError(f"{where} must be a JSON object; build the release again")
    version = data.get("version")
    if version != BUILD_MANIFEST_VERSION or isinstance(version, bool):
        raise BuildManifestError(
            f"{where} has version {json.dumps(version)}, but this platform understands build manifests of "
            f"version {BUILD_MANIFEST_VERSION} only; build with this platform's image/build"
        )
    errors = schema_errors(data, load_build_schema())
    if errors:
        raise BuildManifestError(
            f"{where} does not match build.schema.json: "
            + "; ".join(errors[:5])
            + (f" (and {len(errors) - 5} more)" if len(errors) > 5 else "")
        )
    runtime = data["runtime"]
    if (runtime is None) != (data["kind"] == PROCFILE_KIND) or (runtime and runtime["name"] != data["kind"]):
        raise BuildManifestError(
            f"{where}: a {data['kind']} build must have "
            + ("no runtime" if data["kind"] == PROCFILE_KIND else f"a {data['kind']} runtime")
        )
    return BuildManifest(
        kind=data["kind"],
        runtime=Runtime(runtime["name"], runtime["version"]) if runtime else None,
        path=tuple(data["env"]["PATH"]),
        pythonpath=tuple(data["env"]["PYTHONPATH"]),
        source_sha256=data["source_sha256"],
        built_at=data["built_at"],
        raw=data,
    )


def parse_build_manifest(text: bytes, where: str = BUILD_MANIFEST) -> BuildManifest:
    """Parse and validate build.json bytes; :class:`BuildManifestError` saying what is wrong."""
    if len(text) > MAX_BUILD_MANIFEST_BYTES:
        raise BuildManifestError(f"{where} is larger than {MAX_BUILD_MANIFEST_BYTES} bytes")
    try:
        data = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise BuildManifestError(f"{where} is not valid JSON ({error}); build the release again") from None
    return build_manifest_from_data(data, where)


def process_environment(app_dir: str, manifest: BuildManifest, runtime_bin: str | None) -> dict[str, str]:
    """``PATH`` and ``PYTHONPATH`` for a process of the slug unpacked at ``app_dir``.

    PATH: the slug's own directories (made absolute under ``app_dir``), then the runtime's
    command directory (where ``python``/``pip`` or ``node``/``npm`` are the chosen
    interpreter's), then the system's. PYTHONPATH only when the build asks for one.
    """
    path = [*_absolute(app_dir, manifest.path), *([runtime_bin] if runtime_bin else []), *SYSTEM_PATH]
    environment = {"PATH": ":".join(path)}
    if manifest.pythonpath:
        environment["PYTHONPATH"] = ":".join(_absolute(app_dir, manifest.pythonpath))
    return environment


def _absolute(app_dir: str, relative: Sequence[str]) -> list[str]:
    return [f"{app_dir.rstrip('/')}/{part}" for part in relative]


def manifest_data(
    *,
    kind: str,
    runtime: Runtime | None,
    path: Sequence[str],
    pythonpath: Sequence[str],
    source_sha256: str,
    built_at: str,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """The build.json the build program writes, checked against the schema before it is written."""
    data: dict[str, Any] = {
        "version": BUILD_MANIFEST_VERSION,
        "kind": kind,
        "runtime": {"name": runtime.name, "version": runtime.version} if runtime else None,
        "env": {"PATH": list(path), "PYTHONPATH": list(pythonpath)},
        "source_sha256": source_sha256,
        "built_at": built_at,
        **extra,
    }
    build_manifest_from_data(data)
    return data
