"""Variants of the example configuration (cdk.json) that tests synthesize."""

from __future__ import annotations

from typing import Any


def every_option(platform: dict[str, Any]) -> None:
    """Turn on every optional feature, so lint and nag see each resource kind we can emit."""
    staging = platform["environments"]["staging"]
    staging["base_image"] = {"pipeline": True, "use_baked": True}
    staging["network"]["flow_logs"] = False
    staging["logs"] = {"destination": "logs.example.com:6514", "tls": True}
    platform["environments"]["production"]["secondary"] = {
        "region": "us-west-2",
        "domain": "api.example.com",
        "hosted_zone_id": "Z0123456789ABC",
        "availability_zones": ["us-west-2a", "us-west-2b"],
    }
    web = platform["apps"]["web"]["environments"]["staging"]
    web.update(
        instance_type="t4g.small",
        desired_capacity=1,
        certificate_arn="arn:aws:acm:us-east-1:123456789012:certificate/0b3a1d2c-1111-2222-3333-444455556666",
    )
