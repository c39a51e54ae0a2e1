"""The local platform's simulated AWS: the synthesized templates deployed into moto with only the
named adaptations (local.template), and API Gateway played from the template (local.gateway)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from moto.cloudformation.parsing import get_model_map

from constructs.config import PlatformConfig
from constructs.deploy_document import deploy_document_content
from constructs.release_store import BUCKET_LOGICAL_ID
from local.aws import Deployed
from local.gateway import Gateway
from local.template import ADAPTATIONS, adapt, flatten
from slipway.rollout.strategy import Strategy

STACKS = ["Platform-staging", "Platform-production"]


@pytest.mark.parametrize("stack", STACKS)
def test_the_adapted_template_holds_only_what_moto_deploys(templates: dict[str, dict[str, Any]], stack: str) -> None:
    adapted = adapt(
        templates[stack],
        stack=stack,
        public_parameters={"/aws/service/powertools/python/arm64/python3.13/3.37.0": "arn"},
    )
    kept = {r["Type"] for r in adapted.template["Resources"].values()}
    assert kept <= set(get_model_map()), f"moto cannot create {sorted(kept - set(get_model_map()))}"
    # Everything else is either created through its API or named as left out, each with its reason.
    original = {r["Type"] for r in templates[stack]["Resources"].values()}
    handled = {d.type for d in adapted.deferred} | {templates[stack]["Resources"][d]["Type"] for d in adapted.dropped}
    assert original - kept <= handled
    for kind in handled - {"AWS::Lambda::Function", "AWS::IAM::Role"}:  # the custom resource's provider goes with it
        assert kind in ADAPTATIONS or any(kind.startswith(k.rstrip("*")) for k in ADAPTATIONS if k.endswith("*")), kind
    # Nothing refers to what is gone.
    text = json.dumps(adapted.template)
    for logical in adapted.dropped + [d.logical_id for d in adapted.deferred]:
        assert f'"{logical}"' not in text, logical


def _references(value: Any) -> set[str]:
    """Every name a Ref or Fn::GetAtt in ``value`` points at."""
    if isinstance(value, dict):
        if list(value) == ["Ref"]:
            return {value["Ref"]}
        if list(value) == ["Fn::GetAtt"]:
            return {value["Fn::GetAtt"][0]}
        return set().union(*(_references(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_references(v) for v in value)) if value else set()
    return set()


@pytest.mark.parametrize("stack", STACKS)
def test_merging_the_nested_stacks_keeps_every_resource_and_reference(assembly_dir: Any, stack: str) -> None:
    """The local platform deploys each environment with its apps' nested stacks merged in: every
    child resource is there once, under its app's prefix, and every reference still resolves."""
    parent = json.loads((assembly_dir / f"{stack}.template.json").read_text())
    nested = {k: r for k, r in parent["Resources"].items() if r["Type"] == "AWS::CloudFormation::Stack"}
    assert sorted(k.split("NestedStack")[0] for k in nested) == ["Appbilling", "Appweb"]
    children = {k: json.loads((assembly_dir / r["Metadata"]["aws:asset:path"]).read_text()) for k, r in nested.items()}
    merged = flatten(parent, lambda path: json.loads((assembly_dir / path).read_text()))
    expected = {k for k in parent["Resources"] if k not in nested} | {
        k.split("NestedStack")[0] + child for k, template in children.items() for child in template["Resources"]
    }
    assert set(merged["Resources"]) == expected
    known = set(merged["Resources"]) | set(merged.get("Parameters", {}))
    dangling = {r for r in _references(merged["Resources"]) | _references(merged.get("Outputs", {})) if r not in known}
    assert {r for r in dangling if not r.startswith("AWS::")} == set()
    for resource in merged["Resources"].values():
        depends = resource.get("DependsOn", [])
        assert set([depends] if isinstance(depends, str) else depends) <= set(merged["Resources"])
    # What the parent read of its children (their outputs) is now the children's own values.
    assert "Outputs." not in json.dumps(merged)


def test_the_deployed_stack_is_the_configuration_of_cdk_json(
    deployed: Deployed, example_platform: dict[str, Any], templates: dict[str, dict[str, Any]]
) -> None:
    config = PlatformConfig.from_context(example_platform)
    settings = deployed.settings
    assert settings.env == "staging" and set(settings.apps) == {"web", "billing"}
    clients = deployed.clients
    for app in config.apps:
        wanted = app.settings_for("staging")
        fleet = settings.fleets[app.name]
        [group] = clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[fleet.group])[
            "AutoScalingGroups"
        ]
        assert (group["MinSize"], group["MaxSize"]) == (wanted.min_capacity, wanted.max_capacity)
        assert len(group["Instances"]) == group["DesiredCapacity"] == wanted.min_capacity
        [target_group] = clients.elbv2.describe_target_groups(TargetGroupArns=[fleet.target_group])["TargetGroups"]
        assert (target_group["Port"], target_group["HealthCheckPath"]) == (wanted.port, wanted.health_check_path)
        attributes = clients.elbv2.describe_target_group_attributes(TargetGroupArn=fleet.target_group)["Attributes"]
        delay = {a["Key"]: a["Value"] for a in attributes}["deregistration_delay.timeout_seconds"]
        assert delay == str(wanted.deregistration_delay_seconds)  # moto's CloudFormation alone would say 300
        alarms = clients.cloudwatch.describe_alarms(AlarmNames=list(fleet.alarms))["MetricAlarms"]
        assert sorted(a["AlarmName"] for a in alarms) == sorted(fleet.alarms) and len(alarms) == 3
        assert fleet.strategy == wanted.rollout
    assert settings.fleets["billing"].strategy == Strategy(batch_percent=50, bake_seconds=60)
    # The deploy document's content is the construct's, with the bucket the stack created.
    document = json.loads(clients.ssm.get_document(Name=settings.fleets["web"].document)["Content"])
    bucket = deployed.stack.physical(BUCKET_LOGICAL_ID)
    assert document == deploy_document_content(
        bucket_pattern=bucket.replace(".", "\\."), apps=["web", "billing"], env="staging"
    )
    # The state machines (rollout, release workflow) run the synthesized definitions, the task
    # functions' ARNs filled in.
    machines = {
        logical: r
        for logical, r in templates["Platform-staging"]["Resources"].items()
        if r["Type"] == "AWS::StepFunctions::StateMachine"
    }
    assert {deployed.stack.physical(logical) for logical in machines} == {
        settings.state_machine,
        settings.release_workflow,
    }
    for logical, machine in machines.items():
        definition = json.loads(
            clients.stepfunctions.describe_state_machine(stateMachineArn=deployed.stack.physical(logical))["definition"]
        )
        parts = machine["Properties"]["DefinitionString"]["Fn::Join"][1]
        assert json.dumps(definition, sort_keys=True) == json.dumps(
            json.loads("".join(p if isinstance(p, str) else _function_arn(deployed, p) for p in parts)),
            sort_keys=True,
        )
    # The builder's projects exist where the settings say, logging where the template says.
    for app, build in settings.builds.items():
        [project] = clients.codebuild.batch_get_projects(names=[build.project])["projects"]
        assert project["logsConfig"]["cloudWatchLogs"]["groupName"] == build.log_group, app


def _function_arn(deployed: Deployed, token: dict[str, Any]) -> str:
    logical = token["Fn::GetAtt"][0]
    return str(
        deployed.clients.lambda_.get_function(FunctionName=deployed.stack.physical(logical))["Configuration"][
            "FunctionArn"
        ]
    )


def test_the_front_serves_exactly_the_templates_methods(templates: dict[str, dict[str, Any]], repo: Any) -> None:
    gateway = Gateway.from_template(templates["Platform-staging"])
    spec = json.loads((repo / "lambdas" / "slipway" / "openapi.json").read_text())
    served = {(r.method, r.path) for r in gateway.routes}
    assert served == {
        (m.upper(), p)
        for p, item in spec["paths"].items()
        for m in item
        if m in ("get", "post", "patch", "put", "delete")
    }
    resources = templates["Platform-staging"]["Resources"]
    assert {resources[r.function]["Properties"]["Handler"] for r in gateway.routes} == {"slipway.api.handler"}
    [authorizer] = gateway.authorizers.values()
    assert resources[authorizer.function]["Properties"]["Handler"] == "slipway.authorizer.handler"
    assert (authorizer.header, authorizer.ttl_seconds) == ("Authorization", 300)
    # Signed by Slack instead; and Route 53's health check, which says only whether the bucket can be read.
    assert sorted(r.path for r in gateway.routes if r.authorizer is None) == ["/health", "/slack/commands"]
    assert gateway.responses["UNAUTHORIZED"].headers == {"WWW-Authenticate": 'Basic realm="Slipway"'}
    assert gateway.stage == "v1"


def test_the_front_validates_bodies_against_the_templates_models_after_the_authorizer(
    templates: dict[str, dict[str, Any]],
) -> None:
    """As API Gateway: credentials first (a refused caller learns nothing of the body), then the
    request validator with the template's model, and only then the function."""
    from datetime import UTC, datetime

    from local.gateway import Request

    gateway = Gateway.from_template(templates["Platform-staging"])
    [authorizer_function] = {a.function for a in gateway.authorizers.values()}
    called: list[str] = []

    def invoke(function: str, event: dict[str, Any]) -> Any:
        called.append(function)
        if function == authorizer_function:
            if event["headers"].get("Authorization") != "Basic good":
                raise Exception("Unauthorized")
            return {
                "principalId": "alice",
                "policyDocument": {"Statement": [{"Effect": "Allow", "Resource": ["arn:aws:execute-api:*"]}]},
                "context": {"user": "alice"},
            }
        return {"statusCode": 202, "body": "{}"}

    def request(authorization: str) -> Request:
        headers = {"Authorization": authorization, "Content-Type": "application/json"}
        return Request("POST", "/apps/web/envs/staging/deploys", headers, {}, "127.0.0.1", datetime.now(UTC))

    refused = gateway.handle(request("Basic bad"), b'{"release": 7}', invoke)
    assert refused.status == 401 and len(called) == 1
    called.clear()
    invalid = gateway.handle(request("Basic good"), b'{"release": "r7", "strategy": {"batch_size": 0}}', invoke)
    assert invalid.status == 400 and called == [authorizer_function]  # the function never ran
    message = json.loads(invalid.body)["message"]
    assert message.startswith("the request body does not match the API (openapi.json): [") and "minimum of 1" in message
    assert json.loads(gateway.handle(request("Basic good"), b"\xff", invoke).body)["message"].endswith(
        "[Invalid request body]"
    )
    # A body nested 10,000 deep is an invalid body too, not a closed connection.
    deep = gateway.handle(request("Basic good"), b'{"release": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", invoke)
    assert deep.status == 400 and json.loads(deep.body)["message"].endswith("[Invalid request body]")
    called.clear()
    assert gateway.handle(request("Basic good"), b'{"release": "r7"}', invoke).status == 202
    assert called[-1] != authorizer_function  # the authorizer's answer was cached; the function ran


def test_many_apps_fit_what_lambda_and_ssm_allow(
    example_context: dict[str, Any], templates: dict[str, dict[str, Any]], fake_aws: None
) -> None:
    """Lambda refuses a function whose environment passes 4 KB (moto does not; the local platform
    does): the apps' settings live in one SSM parameter each, so the API function's environment
    is the same size for 12 apps as for 2, each parameter stays a standard one, and the API
    reads every app back."""
    from local.aws import ENVIRONMENT_LIMIT_BYTES, environment_size, mock_platform
    from local.platform import synthesize

    context = json.loads(json.dumps(example_context))
    web = context["platform"]["apps"]["web"]
    context["platform"]["apps"] = {f"app{i:02d}": web for i in range(12)}
    with mock_platform(templates["Platform-staging"]) as two:
        size_for_two = environment_size(two.environment)
    with mock_platform(synthesize("staging", context)) as twelve:  # refuses an environment over 4 KB
        settings = twelve.settings
        parameters = twelve.clients.ssm.get_parameters_by_path(Path="/slipway/staging/apps", MaxResults=10)
        values = [p["Value"] for p in parameters["Parameters"]]
    assert set(settings.apps) == set(settings.fleets) == set(settings.builds) == {f"app{i:02d}" for i in range(12)}
    assert environment_size(twelve.environment) <= ENVIRONMENT_LIMIT_BYTES
    # The same variables, as long as the names AWS chose for their resources (names differ by a few letters).
    assert abs(environment_size(twelve.environment) - size_for_two) < 64
    assert values and max(len(value.encode()) for value in values) <= 4096  # SSM's standard tier


def test_apps_whose_names_differ_only_by_a_dash_merge_apart() -> None:
    """Apps "a-b" and "ab" both give nested stack IDs starting "AppabNestedStack": their children
    must not land on each other."""
    child = {
        "Parameters": {"referencetoBucketRef": {"Type": "String"}},
        "Resources": {
            "FleetGroup": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": {"Ref": "referencetoBucketRef"}}}
        },
        "Outputs": {"GroupRef": {"Value": {"Ref": "FleetGroup"}}},
    }
    stacks = {
        f"AppabNestedStackAppabNestedStackResource{suffix}": {
            "Type": "AWS::CloudFormation::Stack",
            "Properties": {"Parameters": {"referencetoBucketRef": {"Ref": "Bucket"}}},
            "Metadata": {"aws:asset:path": f"{suffix}.nested.template.json"},
        }
        for suffix in ("1111AAAA", "2222BBBB")
    }
    parent = {
        "Resources": {"Bucket": {"Type": "AWS::S3::Bucket"}, **stacks},
        "Outputs": {
            f"Group{suffix}": {"Value": {"Fn::GetAtt": [logical, "Outputs.GroupRef"]}}
            for suffix, logical in zip(("1", "2"), stacks, strict=True)
        },
    }
    merged = flatten(parent, lambda path: child)
    groups = [k for k, r in merged["Resources"].items() if r["Type"] == "AWS::SQS::Queue"]
    assert len(groups) == 2
    assert {merged["Outputs"][f"Group{n}"]["Value"]["Ref"] for n in ("1", "2")} == set(groups)
    assert all(merged["Resources"][g]["Properties"]["QueueName"] == {"Ref": "Bucket"} for g in groups)


def test_the_local_aws_plays_the_release_bucket_s_write_once_policy(moto_s3: str) -> None:
    """moto evaluates no bucket policy: the local platform refuses what the policy's write-once
    statements deny (tests/test_control_plane.py asserts the statements themselves), whoever asks."""
    import boto3
    from botocore.exceptions import ClientError

    from local.hooks import write_once_releases

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="releases")
    s3.put_bucket_versioning(Bucket="releases", VersioningConfiguration={"Status": "Enabled"})

    def refused(call: Any, **kwargs: Any) -> str:
        try:
            call(Bucket="releases", **kwargs)
        except ClientError as error:
            return str(error.response["Error"]["Code"])
        return "allowed"

    with write_once_releases():
        manifest, slug = "web/staging/r3/release.json", "web/staging/slugs/ab.tar.gz"
        assert refused(s3.put_object, Key=manifest, Body=b"{}") == "AccessDenied"  # no If-None-Match
        assert refused(s3.put_object, Key=manifest, Body=b"{}", IfNoneMatch="*") == "allowed"
        assert refused(s3.put_object, Key=manifest, Body=b"{2}", IfNoneMatch="*") == "PreconditionFailed"
        assert refused(s3.copy_object, Key=slug, CopySource={"Bucket": "releases", "Key": manifest}) == "AccessDenied"
        assert refused(s3.delete_object, Key=manifest) == "AccessDenied"
        assert refused(s3.delete_objects, Delete={"Objects": [{"Key": manifest}]}) == "AccessDenied"
        upload = s3.create_multipart_upload(Bucket="releases", Key=slug)["UploadId"]
        part = s3.upload_part(Bucket="releases", Key=slug, UploadId=upload, PartNumber=1, Body=b"x")["ETag"]
        parts = {"Parts": [{"PartNumber": 1, "ETag": part}]}
        assert refused(s3.complete_multipart_upload, Key=slug, UploadId=upload, MultipartUpload=parts) == "AccessDenied"
        assert (
            refused(s3.complete_multipart_upload, Key=slug, UploadId=upload, MultipartUpload=parts, IfNoneMatch="*")
            == "allowed"
        )
        # What is not a release's stays writable: the canonical config, pointers, uploads.
        for key in ("web/staging/env", "web/staging/current", "uploads/web/staging/u/upload.json"):
            assert refused(s3.put_object, Key=key, Body=b"x") == "allowed", key
            assert refused(s3.delete_object, Key=key) == "allowed", key
    assert s3.get_object(Bucket="releases", Key=manifest)["Body"].read() == b"{}"
