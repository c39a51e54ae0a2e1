"""AppFleet: one app in one environment."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template

from constructs.config import LogSettings
from constructs.fleet import boot_commands


def _one(template: Template, resource_type: str, app: str) -> dict[str, Any]:
    found = {k: v for k, v in template.find_resources(resource_type).items() if k.startswith(f"App{app}")}
    assert len(found) == 1, f"expected one {resource_type} for {app}, found {list(found)}"
    return next(iter(found.values()))


def _join(value: Any) -> str:
    """Flatten an Fn::Join (tokens shown as JSON) to compare rendered text."""
    if isinstance(value, dict) and "Fn::Join" in value:
        return "".join(p if isinstance(p, str) else json.dumps(p) for p in value["Fn::Join"][1])
    assert isinstance(value, str)
    return value


@pytest.mark.parametrize(
    "env, app, low, high", [("staging", "web", 1, 2), ("production", "web", 2, 6), ("staging", "billing", 1, 2)]
)
def test_capacity_follows_configuration_and_overrides(
    templates: dict[str, dict[str, Any]], env: str, app: str, low: int, high: int
) -> None:
    group = _one(Template.from_json(templates[f"Platform-{env}"]), "AWS::AutoScaling::AutoScalingGroup", app)
    assert (group["Properties"]["MinSize"], group["Properties"]["MaxSize"]) == (str(low), str(high))
    # No desired capacity in the template: a stack update must not reset the fleet's size.
    assert "DesiredCapacity" not in group["Properties"]


def test_group_spans_every_instance_subnet_with_elb_health_checks(staging: Template, production: Template) -> None:
    for template, subnets, kind in ((staging, 2, "Public"), (production, 3, "Private")):
        group = _one(template, "AWS::AutoScaling::AutoScalingGroup", "web")["Properties"]
        assert len(group["VPCZoneIdentifier"]) == subnets
        assert all(kind in ref["Ref"] for ref in group["VPCZoneIdentifier"])
        assert group["HealthCheckType"] == "ELB"
        assert group["HealthCheckGracePeriod"] == 300


def test_new_launch_template_replaces_instances_gradually(production: Template) -> None:
    group = _one(production, "AWS::AutoScaling::AutoScalingGroup", "web")
    assert group["UpdatePolicy"]["AutoScalingRollingUpdate"] == {
        "MaxBatchSize": 1,
        "MinInstancesInService": 2,
        "PauseTime": "PT15M",
        "WaitOnResourceSignals": True,
        "SuspendProcesses": [
            "HealthCheck",
            "ReplaceUnhealthy",
            "AZRebalance",
            "AlarmNotification",
            "ScheduledActions",
            "InstanceRefresh",
        ],
    }
    assert group["CreationPolicy"] == {"ResourceSignal": {"Count": 2, "Timeout": "PT15M"}}


def test_rolling_update_keeps_fewer_in_service_than_the_maximum(
    synth_variant: Callable[..., dict[str, Template]],
) -> None:
    def fixed_size(platform: dict[str, Any]) -> None:
        platform["apps"]["web"]["environments"]["staging"].update(min_capacity=2, max_capacity=2)

    group = _one(synth_variant(fixed_size)["Platform-staging"], "AWS::AutoScaling::AutoScalingGroup", "web")
    assert group["UpdatePolicy"]["AutoScalingRollingUpdate"]["MinInstancesInService"] == 1


def test_target_group_has_a_fast_health_check(staging: Template) -> None:
    props = _one(staging, "AWS::ElasticLoadBalancingV2::TargetGroup", "billing")["Properties"]
    assert props["Port"] == 8080
    assert props["HealthCheckPath"] == "/healthz"
    assert props["HealthCheckIntervalSeconds"] == 5
    assert props["HealthyThresholdCount"] == 2
    assert props["UnhealthyThresholdCount"] == 2
    assert props["Matcher"] == {"HttpCode": "200"}  # health_check_codes: the agent counts the same answers
    assert {"Key": "deregistration_delay.timeout_seconds", "Value": "30"} in props["TargetGroupAttributes"]


def test_launch_template_requires_imdsv2_and_encrypts_volumes(staging: Template) -> None:
    data = _one(staging, "AWS::EC2::LaunchTemplate", "web")["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"] == {"HttpTokens": "required", "HttpPutResponseHopLimit": 1}
    assert data["BlockDeviceMappings"] == [
        {
            "DeviceName": "/dev/xvda",
            "Ebs": {"Encrypted": True, "VolumeType": "gp3", "VolumeSize": 16, "DeleteOnTermination": True},
        }
    ]
    assert data["InstanceType"] == "t3.micro"  # the staging override


def test_ami_is_amazon_linux_2023_from_the_public_ssm_parameter(
    staging: Template, synth_variant: Callable[..., dict[str, Template]]
) -> None:
    image = _one(staging, "AWS::EC2::LaunchTemplate", "web")["Properties"]["LaunchTemplateData"]["ImageId"]
    parameter = staging.to_json()["Parameters"][image["Ref"]]
    assert parameter["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
    assert parameter["Default"] == "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-x86_64"

    def graviton(platform: dict[str, Any]) -> None:
        platform["apps"]["web"]["environments"]["staging"]["instance_type"] = "t4g.small"

    arm = synth_variant(graviton)["Platform-staging"]
    image = _one(arm, "AWS::EC2::LaunchTemplate", "web")["Properties"]["LaunchTemplateData"]["ImageId"]
    assert arm.to_json()["Parameters"][image["Ref"]]["Default"].endswith("al2023-ami-kernel-6.1-arm64")


def test_http_listener_forwards_to_the_target_group(staging: Template) -> None:
    staging.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::Listener",
        {
            "Port": 80,
            "Protocol": "HTTP",
            "DefaultActions": [
                {"Type": "forward", "TargetGroupArn": {"Ref": Match.string_like_regexp("^AppwebFleetWeb")}}
            ],
        },
    )


def test_certificate_adds_https_and_redirects_http(synth_variant: Callable[..., dict[str, Template]]) -> None:
    arn = "arn:aws:acm:us-east-1:123456789012:certificate/0b3a1d2c-1111-2222-3333-444455556666"

    def https(platform: dict[str, Any]) -> None:
        platform["apps"]["web"]["environments"]["staging"]["certificate_arn"] = arn

    template = synth_variant(https)["Platform-staging"]
    template.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::Listener",
        {
            "Port": 443,
            "Protocol": "HTTPS",
            "Certificates": [{"CertificateArn": arn}],
            "DefaultActions": [Match.object_like({"Type": "forward"})],
        },
    )
    template.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::Listener",
        {
            "Port": 80,
            "DefaultActions": [
                {
                    "Type": "redirect",
                    "RedirectConfig": Match.object_like({"Port": "443", "Protocol": "HTTPS", "StatusCode": "HTTP_301"}),
                }
            ],
        },
    )


def test_instances_admit_only_the_load_balancer_on_the_app_port(staging: Template) -> None:
    rules = [
        v["Properties"]
        for k, v in staging.find_resources("AWS::EC2::SecurityGroupIngress").items()
        if k.startswith("AppbillingFleetInstanceSecurityGroup")
    ]
    assert len(rules) == 1
    rule = rules[0]
    assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 8080, 8080)
    assert rule["SourceSecurityGroupId"]["Fn::GetAtt"][0].startswith("AppbillingFleetLoadBalancerSecurityGroup")
    instance_sg = _one(staging, "AWS::EC2::SecurityGroup", "billingFleetInstance")["Properties"]
    assert "SecurityGroupIngress" not in instance_sg


def _statements(template: Template, app: str) -> list[dict[str, Any]]:
    policies = {
        k: v
        for k, v in template.find_resources("AWS::IAM::Policy").items()
        if k.startswith(f"App{app}FleetInstanceRole")
    }
    assert len(policies) == 1
    statements: list[dict[str, Any]] = next(iter(policies.values()))["Properties"]["PolicyDocument"]["Statement"]
    return statements


def test_instance_role_reads_only_its_own_release_prefix(staging: Template) -> None:
    all_statements = _statements(staging, "web")
    # Besides writing deploy command output (tests/test_deploy_document.py), cfn-signal is
    # the only non-S3 call, and only on this stack.
    statements = [s for s in all_statements if not json.dumps(s["Action"]).count("logs:")]
    assert len(all_statements) - len(statements) == 1
    assert {s["Action"] for s in statements} == {"s3:GetObject", "s3:ListBucket", "cloudformation:SignalResource"}
    signal = next(s for s in statements if s["Action"] == "cloudformation:SignalResource")
    assert signal["Resource"] == {"Ref": "AWS::StackId"}
    reads = [s for s in statements if s["Action"] == "s3:GetObject"]
    assert len(reads) == 1
    resources = json.dumps(reads[0]["Resource"])
    # Its own release prefix, and the one base image object: no other prefix, no wildcard asset.
    assert resources.count("ReleaseBucket") == 1
    assert '"/web/staging/*"' in resources
    assert resources.count("*") == 1
    assert ".zip" in resources
    listing = [s for s in statements if s["Action"] == "s3:ListBucket"]
    assert listing == [
        {
            "Action": "s3:ListBucket",
            "Effect": "Allow",
            "Resource": {"Fn::GetAtt": ["ReleaseBucket", "Arn"]},
            "Condition": {"StringLike": {"s3:prefix": ["web/staging/*"]}},
        }
    ]


def test_instance_role_has_ssm_managed_instance_access(staging: Template) -> None:
    role = _one(staging, "AWS::IAM::Role", "webFleetInstanceRole")["Properties"]
    managed = json.dumps(role["ManagedPolicyArns"])
    assert ":iam::aws:policy/AmazonSSMManagedInstanceCore" in managed
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}


def test_tags_propagate_to_instances(production: Template) -> None:
    tags = _one(production, "AWS::AutoScaling::AutoScalingGroup", "billing")["Properties"]["Tags"]
    assert {"Key": "slipway:app", "Value": "billing", "PropagateAtLaunch": True} in tags
    assert {"Key": "slipway:env", "Value": "production", "PropagateAtLaunch": True} in tags


def test_cpu_target_tracking(staging: Template) -> None:
    staging.has_resource_properties(
        "AWS::AutoScaling::ScalingPolicy",
        {
            "PolicyType": "TargetTrackingScaling",
            "AutoScalingGroupName": {"Ref": Match.string_like_regexp("^AppwebFleetInstancesASG")},
            "TargetTrackingConfiguration": {
                "PredefinedMetricSpecification": {"PredefinedMetricType": "ASGAverageCPUUtilization"},
                "TargetValue": 50,
            },
        },
    )


def test_boot_commands_exact_text() -> None:
    commands = boot_commands(
        app="billing",
        env="staging",
        bucket="releases-abc",
        image_url="s3://assets/image.zip",
        region="eu-west-1",
        stack="Platform-staging",
        signal_resource="AppbillingInstancesASG1234",
        logs=LogSettings(destination="logs.example.com:514", tls=True),
        log_group="Platform-staging-AppLogs-1a2b",
    )
    assert commands == [
        "set -euo pipefail",
        "export AWS_DEFAULT_REGION=eu-west-1",
        "command -v /opt/aws/bin/cfn-signal >/dev/null || dnf install -y aws-cfn-bootstrap",
        'signal() { /opt/aws/bin/cfn-signal --exit-code "$1" --stack Platform-staging'
        " --resource AppbillingInstancesASG1234 --region eu-west-1 || true; }",
        "trap 'signal 1' ERR",
        "rm -rf /opt/slipway/image && mkdir -p /opt/slipway/image",
        "aws s3 cp s3://assets/image.zip /opt/slipway/image.zip",
        "python3 -m zipfile -e /opt/slipway/image.zip /opt/slipway/image",
        "SLIPWAY_APP=billing SLIPWAY_ENV=staging SLIPWAY_BUCKET=releases-abc"
        " SLIPWAY_LOG_DESTINATION=logs.example.com:514 SLIPWAY_LOG_TLS=true"
        " SLIPWAY_LOG_GROUP=Platform-staging-AppLogs-1a2b bash /opt/slipway/image/provision.sh",
        "current=$(aws s3api list-objects-v2 --bucket releases-abc --prefix billing/staging/current"
        " --query 'Contents[].Key' --output text)",
        'if [ "$current" = billing/staging/current ]; then'
        " /home/deploy/bin/deploy s3://releases-abc/billing/staging/current; fi",
        "signal 0",
    ]


def test_user_data_runs_provisioning_then_deploys_current(staging: Template) -> None:
    data = _one(staging, "AWS::EC2::LaunchTemplate", "web")["Properties"]["LaunchTemplateData"]
    script = _join(data["UserData"]["Fn::Base64"])
    assert script.startswith("#!/bin/bash\nset -euo pipefail\n")
    assert 'SLIPWAY_APP=web SLIPWAY_ENV=staging SLIPWAY_BUCKET=\'{"Ref": "ReleaseBucket"}\'' in script
    app_logs = next(k for k in staging.find_resources("AWS::Logs::LogGroup") if k.startswith("AppLogs"))
    assert f'SLIPWAY_LOG_GROUP=\'{{"Ref": "{app_logs}"}}\'' in script
    assert '/home/deploy/bin/deploy \'s3://{"Ref": "ReleaseBucket"}/web/staging/current\'' in script
    # The signal names this fleet's own group (by its logical ID in the app's nested stack, the stack
    # AWS::StackName names there), so a failed boot rolls back this group's update.
    group_id = next(k for k in staging.find_resources("AWS::AutoScaling::AutoScalingGroup") if k.startswith("Appweb"))
    assert f"--resource {group_id.removeprefix('Appweb')} " in script


def test_app_logs_go_to_one_group_kept_a_month_which_only_the_api_reads(staging: Template) -> None:
    [(group, props)] = [
        (k, v["Properties"])
        for k, v in staging.find_resources("AWS::Logs::LogGroup").items()
        if k.startswith("AppLogs")
    ]
    assert props == {"RetentionInDays": 30}
    statements = [
        statement
        for policy in staging.find_resources("AWS::IAM::Policy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]
    readers = [s for s in statements if "logs:FilterLogEvents" in json.dumps(s["Action"])]
    assert readers == [
        {"Action": "logs:FilterLogEvents", "Effect": "Allow", "Resource": {"Fn::GetAtt": [group, "Arn"]}}
    ]
    functions = staging.find_resources("AWS::Lambda::Function")
    assert [
        f["Properties"].get("Environment", {}).get("Variables", {}).get("APP_LOGS") for f in functions.values()
    ].count({"Ref": group}) == 1


def test_logs_cloudwatch_is_on_unless_turned_off() -> None:
    assert LogSettings.parse({}, "environments.staging.logs").cloudwatch is True
    assert LogSettings.parse({"cloudwatch": False}, "environments.staging.logs").cloudwatch is False


def test_each_apps_url_is_an_output_of_the_environments_own_stack(assembly_dir: Path) -> None:
    """`cdk deploy Platform-<env>` prints the parent's outputs only: each app's URL is one of them,
    read from the app's nested stack."""
    parent = json.loads((assembly_dir / "Platform-staging.template.json").read_text())
    for app in ("web", "billing"):
        output = parent["Outputs"][f"App{app}Url"]
        assert output["Description"] == f"{app} in staging"
        [stack] = [k for k in parent["Resources"] if k.startswith(f"App{app}NestedStack")]
        [attribute] = output["Value"]["Fn::Join"][1][1:]
        assert attribute["Fn::GetAtt"][0] == stack and attribute["Fn::GetAtt"][1].startswith("Outputs.")
