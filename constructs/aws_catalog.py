"""What AWS offers, as the models botocore ships state it: EC2 instance types (the EC2 API
model's ``InstanceType`` enum) and regions (the endpoint data, every partition). Pure reads
of installed files, no AWS call, so configuration is checked before synthesis and offline.

The pinned botocore (requirements.txt) is the source: an instance type or region newer than
it is refused until botocore is upgraded, which the error says.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection
from functools import cache

import botocore
from botocore.loaders import Loader

# Families that run another OS: a fleet cannot launch them.
UNLAUNCHABLE = {"mac": "runs macOS on a dedicated host; fleets run Amazon Linux 2023"}


@cache
def instance_types() -> frozenset[str]:
    """Every instance type in botocore's EC2 model."""
    model = Loader().load_service_model("ec2", "service-2")
    return frozenset(model["shapes"]["InstanceType"]["enum"])


@cache
def regions() -> dict[str, str]:
    """Every region in botocore's endpoint data, with its partition (``aws``, ``aws-cn``, ...)."""
    endpoints = Loader().load_data("endpoints")
    return {region: p["partition"] for p in endpoints["partitions"] for region in p["regions"]}


def closest(value: str, choices: Collection[str]) -> str | None:
    """The known name nearest ``value`` (a typo's fix), or ``None``."""
    found = difflib.get_close_matches(value, sorted(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def unlaunchable(instance_type: str) -> str | None:
    """Why a fleet cannot launch ``instance_type`` (a known type), or ``None``."""
    for prefix, why in UNLAUNCHABLE.items():
        if instance_type.startswith(prefix):
            return why
    return None


def source() -> str:
    """Where these facts come from, for an error message."""
    return f"botocore {botocore.__version__}"
