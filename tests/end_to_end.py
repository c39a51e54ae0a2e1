"""What the end-to-end tests share besides fixtures (those are in conftest.py): the local
platform's password, the installed `slipway` command and how to read its output."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

SLIPWAY = Path(sys.executable).parent / "slipway"
PASSWORD = "correct-horse-battery"
ENVS = ("staging", "production")

Run = Callable[..., subprocess.CompletedProcess[str]]


def releases(run: Run, app: str, env: str) -> list[dict[str, Any]]:
    result = run("--json", "releases", app, env, "--limit", "100")
    assert result.returncode == 0, result.stderr
    listed: list[dict[str, Any]] = json.loads(result.stdout)["releases"]
    return listed
