"""What a local instance runs at its first boot: its own user data, adapted where this machine differs.

Each instance runs the user data of its launch template as moto holds it (the script of
``constructs.fleet.boot_commands`` with the stack's values resolved), changed only by the
line adaptations of :data:`ADAPTATIONS`, each named with its reason; an adaptation that
finds no line, or more than one, stops the boot with a message saying that the user data
changed and this module must follow. Beside the script, the instance gets the environment
of :func:`instance_environment` (for its user data and for every command the local SSM
agent runs), which stands in for the instance role.

Pure: no AWS calls, no processes.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass

# Where user data puts the base image (constructs.fleet.IMAGE_ON_INSTANCE); locally the host
# copies image/ there before the script runs.
IMAGE_ON_INSTANCE = "/opt/slipway/image"
# Where cloud-init keeps the script and its output on an EC2 instance; the same places locally.
USER_DATA_PATH = "/var/lib/cloud/instance/user-data.txt"
USER_DATA_LOG = "/var/log/cloud-init-output.log"


class UserDataChanged(ValueError):
    """The launch template's user data no longer has the line an adaptation replaces."""


@dataclass(frozen=True)
class Adaptation:
    """One line of the user data replaced (or dropped, with no lines) for this machine."""

    name: str
    reason: str
    starts_with: str
    replace: Callable[[str], list[str]]


def _drop(line: str) -> list[str]:
    return []


def _local_signal(line: str) -> list[str]:
    return ['signal() { echo "boot: would signal CloudFormation: exit code $1"; }']


def _without_log_destination(line: str) -> list[str]:
    words = shlex.split(line)
    kept = ["SLIPWAY_LOG_DESTINATION=" if w.startswith("SLIPWAY_LOG_DESTINATION=") else w for w in words]
    return [shlex.join(kept)]


def _list_with_python(line: str) -> list[str]:
    # current=$(aws s3api list-objects-v2 --bucket B --prefix K --query 'Contents[].Key' --output text)
    words = shlex.split(line.removeprefix("current=$(").removesuffix(")"))
    bucket, prefix = words[words.index("--bucket") + 1], words[words.index("--prefix") + 1]
    program = (
        "import os, sys, boto3; "
        's3 = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3")); '
        "listed = s3.list_objects_v2(Bucket=sys.argv[1], Prefix=sys.argv[2]); "
        # What --query 'Contents[].Key' --output text prints: the keys, tab-separated, or None.
        'print("\\t".join(o["Key"] for o in listed.get("Contents", [])) or "None")'
    )
    return [f"current=$(python3 -c {shlex.quote(program)} {shlex.quote(bucket)} {shlex.quote(prefix)})"]


ADAPTATIONS: tuple[Adaptation, ...] = (
    Adaptation(
        "cfn-signal",
        "nothing waits for a CloudFormation signal locally (moto's stack is complete at once): the platform reads "
        "the script's exit status instead, so the signal only prints what it would send",
        "command -v /opt/aws/bin/cfn-signal",
        _drop,
    ),
    Adaptation("cfn-signal", "(the same)", "signal() {", _local_signal),
    Adaptation(
        "base image",
        "on AWS the image is a CDK asset in the bootstrap bucket, fetched with the AWS CLI; locally the asset is "
        f"not uploaded into moto and the Debian image has no AWS CLI: the host copies image/ to {IMAGE_ON_INSTANCE}",
        f"rm -rf {IMAGE_ON_INSTANCE}",
        _drop,
    ),
    Adaptation("base image", "(the same)", "aws s3 cp ", _drop),
    Adaptation("base image", "(the same)", "python3 -m zipfile -e ", _drop),
    Adaptation(
        "log forwarding",
        "instances reach only the platform's bridge (local.network): a syslog destination off this machine "
        "is never tried locally",
        "SLIPWAY_APP=",
        _without_log_destination,
    ),
    Adaptation(
        "current release",
        "the Debian image has no AWS CLI: the same listing of the bucket through python3 and the distribution's "
        "boto3, whose endpoint is given explicitly (Debian's boto3 predates AWS_ENDPOINT_URL_S3)",
        "current=$(aws s3api list-objects-v2 ",
        _list_with_python,
    ),
)


def adapt_user_data(script: str) -> str:
    """The instance's user data with every adaptation applied; :class:`UserDataChanged` if one cannot be."""
    lines = script.splitlines()
    for adaptation in ADAPTATIONS:
        found = [i for i, line in enumerate(lines) if line.startswith(adaptation.starts_with)]
        if len(found) != 1:
            raise UserDataChanged(
                f"the launch template's user data has {len(found)} lines starting {adaptation.starts_with!r} "
                f"(local adaptation {adaptation.name!r} expects one): constructs.fleet.boot_commands changed; "
                "update local/boot.py to follow it"
            )
        [index] = found
        lines[index : index + 1] = adaptation.replace(lines[index])
    return "\n".join(lines) + "\n"


# The adaptation of the instance role: no instance metadata service here.
INSTANCE_ROLE = (
    "on AWS the instance role's credentials come from the metadata service and S3 is AWS's; locally fixed "
    "credentials (moto accepts any) and moto's endpoint on the bridge, in the environment of the user data and "
    "of every command the local SSM agent runs"
)


def instance_environment(endpoint: str, region: str) -> dict[str, str]:
    """The environment an instance's user data and SSM commands run with (see :data:`INSTANCE_ROLE`)."""
    return {
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": region,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
    }


# How the host runs the user data inside the instance, its output kept where cloud-init keeps it.
BOOT_COMMAND = ["bash", "-c", f"bash {USER_DATA_PATH} > {USER_DATA_LOG} 2>&1"]
