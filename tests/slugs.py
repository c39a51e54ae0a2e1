"""Slugs for tests: what the image's real build program makes of a source on this machine, and
the build manifest inside a slug, read as the publisher reads it."""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from slipway_release.archive import DEFAULT_MAX_UNPACKED_BYTES, scan
from slipway_release.build import BUILD_MANIFEST, MAX_BUILD_MANIFEST_BYTES, parse_build_manifest

IMAGE = Path(__file__).resolve().parents[1] / "image"


def host_build(source: bytes) -> bytes:
    """The slug the image's real build program makes of ``source`` on this machine.

    For procfile apps (no runtime, nothing to install); apps with dependencies are built
    on an instance (``local.instance.build``).
    """
    with tempfile.TemporaryDirectory() as work:
        Path(work, "source.tar.gz").write_bytes(source)
        result = subprocess.run(
            [
                sys.executable,
                "-I",
                str(IMAGE / "build"),
                "--source",
                f"{work}/source.tar.gz",
                "--output",
                f"{work}/slug.tar.gz",
                "--runtimes",
                f"{work}/none.json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"build failed: {result.stderr}{result.stdout[-2000:]}")
        return Path(work, "slug.tar.gz").read_bytes()


def slug_build(slug: bytes) -> dict[str, Any]:
    """The build manifest inside a slug, read as the publisher reads it (one scan)."""
    scanned = scan(io.BytesIO(slug), DEFAULT_MAX_UNPACKED_BYTES, read={BUILD_MANIFEST: MAX_BUILD_MANIFEST_BYTES})
    return parse_build_manifest(scanned.files[BUILD_MANIFEST]).raw
