"""The repository layout that CDK and Lambda imports depend on."""

from __future__ import annotations

import importlib
from pathlib import Path


def test_constructs_folder_has_no_init(repo: Path) -> None:
    # An __init__.py would shadow the pip package `constructs` and break aws-cdk-lib.
    assert not (repo / "constructs" / "__init__.py").exists()


def test_constructs_folder_merges_into_the_constructs_package(repo: Path) -> None:
    package = importlib.import_module("constructs")
    fleet = importlib.import_module("constructs.fleet")
    assert hasattr(package, "Construct")  # the pip package
    assert Path(fleet.__file__).parent == repo / "constructs"  # this repository's folder
