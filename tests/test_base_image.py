"""BaseImagePipeline: the optional baked AMI, and fleets launching from it."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template

from constructs.base_image import component_document

Variant = Callable[[Callable[[dict[str, Any]], None]], dict[str, Template]]


def _ami_parameter(template: Template, app: str) -> str:
    [data] = [
        v["Properties"]["LaunchTemplateData"]
        for k, v in template.find_resources("AWS::EC2::LaunchTemplate").items()
        if k.startswith(f"App{app}")
    ]
    default: str = template.to_json()["Parameters"][data["ImageId"]["Ref"]]["Default"]
    return default


def _bake(use_baked: bool) -> Callable[[dict[str, Any]], None]:
    def change(platform: dict[str, Any]) -> None:
        platform["environments"]["staging"]["base_image"] = {"pipeline": True, "use_baked": use_baked}
        platform["apps"]["billing"]["environments"]["staging"]["instance_type"] = "t4g.small"

    return change


@pytest.fixture
def baked(synth_variant: Variant) -> Template:
    return synth_variant(_bake(use_baked=True))["Platform-staging"]


def test_off_by_default(staging: Template) -> None:
    assert staging.find_resources("AWS::ImageBuilder::ImagePipeline") == {}
    assert _ami_parameter(staging, "web") == "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-x86_64"


def test_pipeline_alone_leaves_fleets_on_stock_amazon_linux(synth_variant: Variant) -> None:
    template = synth_variant(_bake(use_baked=False))["Platform-staging"]
    template.resource_count_is("AWS::ImageBuilder::ImagePipeline", 2)
    assert _ami_parameter(template, "web").startswith("/aws/service/ami-amazon-linux-latest/")


def test_one_pipeline_per_architecture_in_use(baked: Template) -> None:
    recipes = baked.find_resources("AWS::ImageBuilder::ImageRecipe")
    assert sorted(r["Properties"]["ParentImage"] for r in recipes.values()) == [
        "ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-arm64",
        "ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-x86_64",
    ]
    baked.resource_count_is("AWS::ImageBuilder::ImagePipeline", 2)
    baked.has_resource_properties(
        "AWS::ImageBuilder::ImagePipeline",
        {
            "Schedule": {
                "ScheduleExpression": "cron(0 4 ? * mon *)",
                "PipelineExecutionStartCondition": "EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE",
            },
            "ImageTestsConfiguration": {"ImageTestsEnabled": True, "TimeoutMinutes": 60},
        },
    )
    baked.has_resource_properties(
        "AWS::ImageBuilder::InfrastructureConfiguration",
        {
            "InstanceTypes": ["t4g.small"],
            "InstanceMetadataOptions": {"HttpTokens": "required"},
            "TerminateInstanceOnFailure": True,
        },
    )


def test_component_and_recipes_share_a_content_version(baked: Template) -> None:
    [component] = baked.find_resources("AWS::ImageBuilder::Component").values()
    version = component["Properties"]["Version"]
    assert re.fullmatch(r"1\.0\.\d+", version)
    assert {r["Properties"]["Version"] for r in baked.find_resources("AWS::ImageBuilder::ImageRecipe").values()} == {
        version
    }


def test_distribution_publishes_the_ami_id_where_fleets_read_it(baked: Template) -> None:
    baked.has_resource_properties(
        "AWS::ImageBuilder::DistributionConfiguration",
        {
            "Distributions": [
                Match.object_like(
                    {
                        "Region": "us-east-1",
                        "SsmParameterConfigurations": [
                            {"ParameterName": "/slipway/staging/base-image/arm64", "DataType": "aws:ec2:image"}
                        ],
                    }
                )
            ]
        },
    )
    assert _ami_parameter(baked, "web") == "/slipway/staging/base-image/x86_64"
    assert _ami_parameter(baked, "billing") == "/slipway/staging/base-image/arm64"


def test_component_document_exact_text() -> None:
    assert component_document(image_url="s3://assets/abc.zip") == (
        "name: slipway-base-image\n"
        "description: Slipway base image (deploy user, deploy program, rsyslog, CloudWatch agent)\n"
        "schemaVersion: 1.0\n"
        "phases:\n"
        "  - name: build\n"
        "    steps:\n"
        "      - name: Fetch\n"
        "        action: S3Download\n"
        "        inputs:\n"
        "          - source: s3://assets/abc.zip\n"
        "            destination: /opt/slipway/image.zip\n"
        "      - name: Provision\n"
        "        action: ExecuteBash\n"
        "        inputs:\n"
        "          commands:\n"
        "            - rm -rf /opt/slipway/image && mkdir -p /opt/slipway/image\n"
        "            - python3 -m zipfile -e /opt/slipway/image.zip /opt/slipway/image\n"
        "            - bash /opt/slipway/image/provision.sh\n"
    )
