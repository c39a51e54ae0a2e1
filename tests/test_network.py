"""Network: the environment's VPC."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_cdk.assertions import Match, Template


def _subnets(template: Template, public: bool) -> dict[str, Any]:
    return template.find_resources("AWS::EC2::Subnet", {"Properties": {"MapPublicIpOnLaunch": public}})


def test_public_mode_spans_two_zones_without_nat(staging: Template) -> None:
    assert len(_subnets(staging, public=True)) == 2
    assert _subnets(staging, public=False) == {}
    staging.resource_count_is("AWS::EC2::NatGateway", 0)
    # Zones resolved at deploy time: no lookup, no credentials at synth.
    azs = [s["Properties"]["AvailabilityZone"] for s in _subnets(staging, public=True).values()]
    assert azs == [{"Fn::Select": [i, {"Fn::GetAZs": ""}]} for i in (0, 1)]


def test_private_mode_uses_the_configured_zones_and_nat_gateways(production: Template) -> None:
    private = _subnets(production, public=False)
    assert sorted(s["Properties"]["AvailabilityZone"] for s in private.values()) == [
        "us-east-1a",
        "us-east-1b",
        "us-east-1c",
    ]
    production.resource_count_is("AWS::EC2::NatGateway", 2)


def test_s3_gateway_endpoint(staging: Template) -> None:
    staging.has_resource_properties(
        "AWS::EC2::VPCEndpoint",
        {"VpcEndpointType": "Gateway", "ServiceName": {"Fn::Join": ["", Match.array_with([".s3"])]}},
    )


def test_flow_logs_on_by_default_and_off_by_configuration(
    staging: Template, synth_variant: Callable[..., dict[str, Template]]
) -> None:
    staging.resource_count_is("AWS::EC2::FlowLog", 1)

    def no_flow_logs(platform: dict[str, Any]) -> None:
        platform["environments"]["staging"]["network"]["flow_logs"] = False

    # Synthesis still passes cdk-nag: the acknowledgment names the configuration.
    assert synth_variant(no_flow_logs)["Platform-staging"].find_resources("AWS::EC2::FlowLog") == {}


def test_configured_cidr(synth_variant: Callable[..., dict[str, Template]]) -> None:
    def cidr(platform: dict[str, Any]) -> None:
        platform["environments"]["staging"]["network"]["cidr"] = "10.42.0.0/16"

    synth_variant(cidr)["Platform-staging"].has_resource_properties("AWS::EC2::VPC", {"CidrBlock": "10.42.0.0/16"})
