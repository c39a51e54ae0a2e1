"""ControlPlane: the release API, its function, the Basic-auth authorizer and the credentials secret."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import re
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import jsonschema
import pytest
from aws_cdk import aws_lambda as lambda_
from aws_cdk.assertions import Match, Template

from constructs.api_contract import ApiContract, ApiRoute, gateway_model, routes_from_openapi
from constructs.config import AppSettings
from constructs.control_plane import ControlPlane
from constructs.release_store import ReleaseStore
from slipway.rollout.strategy import Strategy
from slipway.settings import ControlPlaneSettings, FleetSettings
from slipway_release.layout import EVERY_APP, AppKeys

LAYER_PARAMETER = "/aws/service/powertools/python/arm64/python3.13/3.37.0"


def _one(template: Template, resource_type: str, prefix: str) -> tuple[str, dict[str, Any]]:
    found = {k: v for k, v in template.find_resources(resource_type).items() if k.startswith(prefix)}
    assert len(found) == 1, f"expected one {resource_type} named {prefix}*, found {list(found)}"
    return next(iter(found.items()))


def _function(template: Template, name: str) -> dict[str, Any]:
    props: dict[str, Any] = _one(template, "AWS::Lambda::Function", f"ControlPlane{name}Function")[1]["Properties"]
    return props


def _statements(template: Template, name: str) -> list[dict[str, Any]]:
    policy = _one(template, "AWS::IAM::Policy", f"ControlPlane{name}FunctionRole")[1]
    statements: list[dict[str, Any]] = policy["Properties"]["PolicyDocument"]["Statement"]
    return statements


def _logical_id(template: Template, resource_type: str, prefix: str) -> str:
    return _one(template, resource_type, prefix)[0]


@pytest.mark.parametrize(
    "name, handler, memory, timeout",
    [("Api", "slipway.api.handler", 1024, 60), ("Authorizer", "slipway.authorizer.handler", 256, 10)],
)
def test_functions_run_python_3_13_on_arm(
    staging: Template, name: str, handler: str, memory: int, timeout: int
) -> None:
    props = _function(staging, name)
    assert (props["Runtime"], props["Architectures"], props["Handler"]) == ("python3.13", ["arm64"], handler)
    assert (props["MemorySize"], props["Timeout"]) == (memory, timeout)
    # Each writes to its own log group with a retention, not to an unbounded default one.
    log_group = _logical_id(staging, "AWS::Logs::LogGroup", f"ControlPlane{name}FunctionLogs")
    assert props["LoggingConfig"] == {"LogGroup": {"Ref": log_group}}
    assert staging.to_json()["Resources"][log_group]["Properties"] == {"RetentionInDays": 30}


def test_api_function_gets_powertools_from_the_public_ssm_parameter(staging: Template) -> None:
    [layer] = _function(staging, "Api")["Layers"]
    parameter = staging.to_json()["Parameters"][layer["Ref"]]
    # Resolved by CloudFormation at deploy time: synthesis makes no AWS call.
    assert parameter == {"Type": "AWS::SSM::Parameter::Value<String>", "Default": LAYER_PARAMETER}
    assert "Layers" not in _function(staging, "Authorizer")  # standard library and boto3 only


def _app_parameters(template: Template) -> dict[str, dict[str, Any]]:
    """Each app's settings parameter: its name to its resource's properties."""
    found = template.find_resources("AWS::SSM::Parameter")
    named = {props["Properties"]["Name"]: props["Properties"] for props in found.values()}
    return {name: props for name, props in named.items() if "/apps/" in name}


def test_api_function_environment(staging: Template, production: Template) -> None:
    variables = _function(staging, "Api")["Environment"]["Variables"]
    assert variables["RELEASE_BUCKET"] == {"Ref": "ReleaseBucket"}
    assert variables["PLATFORM_ENV"] == "staging"
    assert variables["POWERTOOLS_SERVICE_NAME"] == "slipway"
    # The apps' settings are not in it (Lambda allows 4 KB, about three apps' worth): each app has
    # a parameter of its own under the path the function reads.
    assert not {"APPS_JSON", "FLEETS_JSON", "BUILDS_JSON"} & set(variables)
    parameters = _app_parameters(staging)
    assert set(parameters) == {"/slipway/staging/apps/web", "/slipway/staging/apps/billing"}
    assert {props["Type"] for props in parameters.values()} == {"String"}
    billing = json.loads(_join_text(parameters["/slipway/staging/apps/billing"]["Value"]))
    assert billing["runtime"] == {
        "port": 8080,
        "health_check_path": "/healthz",
        "health_check_codes": "200",
        "formation": {"web": 1, "worker": 2},
    }
    assert _function(production, "Api")["Environment"]["Variables"]["PLATFORM_ENV"] == "production"
    assert set(_app_parameters(production)) == {"/slipway/production/apps/web", "/slipway/production/apps/billing"}


def test_api_function_reads_only_its_environments_app_parameters(staging: Template) -> None:
    """GetParametersByPath is authorized against the path asked for: the function may ask for this
    environment's apps' path and no other, and may read no parameter by name."""
    statements = [
        s
        for policy in staging.find_resources("AWS::IAM::Policy").values()
        if any(r["Ref"].startswith("ControlPlaneApiFunctionRole") for r in policy["Properties"]["Roles"])
        for s in policy["Properties"]["PolicyDocument"]["Statement"]
    ]
    [statement] = [s for s in statements if any(a.startswith(("ssm:GetParameter", "ssm:*")) for a in _actions(s))]
    assert _actions(statement) == ["ssm:GetParametersByPath"]
    [resource] = _resources(statement)
    assert resource.endswith(":parameter/slipway/staging/apps")


def _actions(statement: dict[str, Any]) -> list[str]:
    actions = statement["Action"]
    return [actions] if isinstance(actions, str) else list(actions)


def test_api_function_settings_parse_into_the_settings_the_api_reads(staging: Template) -> None:
    """What synthesis hands the control plane is the typed settings, round trip: every fleet field
    is set (none carried for nothing), the app's rollout from cdk.json included."""
    variables = _function(staging, "Api")["Environment"]["Variables"]
    resolved = {name: _join_text(value) for name, value in variables.items()}  # tokens as placeholders
    parameters = {
        name.rpartition("/")[2]: _join_text(props["Value"]) for name, props in _app_parameters(staging).items()
    }
    fleets = {app: json.loads(text)["fleet"] for app, text in parameters.items()}
    assert set(fleets) == {"web", "billing"}
    assert set(fleets["billing"]) == {f.name for f in dataclasses.fields(FleetSettings)}
    assert fleets["billing"]["strategy"] == {"canary": True, "batch_percent": 50, "bake_seconds": 60}
    assert fleets["web"]["strategy"] == Strategy().as_dict()
    assert "STATE_MACHINE_ARN" in resolved
    settings = ControlPlaneSettings.from_environ(resolved, parameters)
    assert settings.fleets["billing"].strategy == Strategy(batch_percent=50, bake_seconds=60)
    assert settings.apps["billing"].formation == {"web": 1, "worker": 2}
    assert set(settings.builds) == {"web", "billing"}
    assert settings.slack is not None and settings.slack.response_hosts == ("hooks.slack.com",)


def _join_text(value: Any) -> str:
    """A ``Fn::Join`` as text, every token replaced by a placeholder string."""
    if isinstance(value, str):
        return value
    if "Fn::Join" not in value:
        return "TOKEN"
    parts = value["Fn::Join"][1]
    return "".join(p if isinstance(p, str) else "TOKEN" for p in parts)


def _resources(statement: dict[str, Any]) -> list[str]:
    """A statement's resources as ARN patterns, the release bucket's ARN written ``arn:aws:s3:::BUCKET``."""
    resources = statement["Resource"]

    def text(value: Any) -> str:
        if isinstance(value, str):
            return value
        if value == {"Fn::GetAtt": ["ReleaseBucket", "Arn"]}:
            return "arn:aws:s3:::BUCKET"
        if "Fn::Join" in value:
            return "".join(text(part) for part in value["Fn::Join"][1])
        return "TOKEN"  # another resource's ARN: matches no bucket key

    return [text(r) for r in (resources if isinstance(resources, list) else [resources])]


def allows(statements: list[dict[str, Any]], action: str, arn: str) -> bool:
    """IAM's answer for ``action`` on ``arn`` under these identity-policy statements (no conditions here)."""
    allowed = False
    for statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if statement.get("Condition") or not any(fnmatch.fnmatchcase(action, a) for a in actions):
            continue
        if any(fnmatch.fnmatchcase(arn, pattern) for pattern in _resources(statement)):
            if statement["Effect"] == "Deny":
                return False
            allowed = True
    return allowed


def test_the_api_writes_uploads_and_cancels_never_a_release_nor_what_rollouts_own(staging: Template) -> None:
    statements = _statements(staging, "Api")
    bucket = "arn:aws:s3:::BUCKET/"
    for key in ("uploads/web/staging/u1/source.tar.gz", "uploads/web/staging/u1/upload.json", "web/staging/cancels/d"):
        assert allows(statements, "s3:PutObject", bucket + key), key
    # Releases, slugs, sources and the canonical config are the release writer's to make; current,
    # previous, the lock and what each instance runs the rollouts'. The API reads them all.
    for key in (
        "web/staging/r7/release.json",
        "web/staging/r7/env",
        "web/staging/r12/slug.tar.gz",
        "web/staging/slugs/ab.tar.gz",
        "web/staging/sources/ab.tar.gz",
        "web/staging/env",
        "uploads/web/staging/u1/slug.tar.gz",  # the builder's
        "web/staging/current",
        "web/staging/previous",
        "web/staging/lock",
        "web/staging/instances/i-0abc",
    ):
        assert allows(statements, "s3:GetObject", bucket + key), key
        for action in ("s3:PutObject", "s3:DeleteObject"):
            assert not allows(statements, action, bucket + key), f"the API may {action} {key}"
    # A refused upload is deleted at once; nothing else is.
    assert allows(statements, "s3:DeleteObject", bucket + "uploads/web/staging/u1/source.tar.gz")
    assert not allows(statements, "s3:DeleteObject", bucket + "web/staging/cancels/d")
    # One grant covers every app of the environment (the same size for 1 app or 100), and nothing of
    # another environment; no app may be named like one (constructs.config), which would bring
    # uploads/<that app>/<env>/ under the other environment's pattern.
    assert allows(statements, "s3:PutObject", bucket + "uploads/other/staging/u1/source.tar.gz")
    for key in (
        "web/production/r1/release.json",
        "web/production/env",
        "uploads/web/production/u/source.tar.gz",
        "caches/web/production/pip.tgz",
        "web/stagingx/r1/env",
    ):
        for action in ("s3:GetObject", "s3:PutObject"):
            assert not allows(statements, action, bucket + key), f"the API may {action} {key} of another env"
    # The release writer makes releases and the canonical config, never a pointer.
    writer = _role_statements(staging, "ReleaseWorkflowTasksRole")
    for key in ("web/staging/r7/release.json", "web/staging/r7/env", "web/staging/slugs/ab.tar.gz", "web/staging/env"):
        assert allows(writer, "s3:PutObject", bucket + key), key
    for key in (
        "web/staging/current",
        "web/staging/lock",
        "web/staging/r7/release.json",
        "web/staging/slugs/ab.tar.gz",
    ):
        assert not allows(writer, "s3:DeleteObject", bucket + key), key
    assert not allows(writer, "s3:PutObject", bucket + "web/staging/current")
    # The rollout's tasks, which own those keys, may write them; nothing of a release.
    owned = _role_statements(staging, "RolloutTasksRole")
    for key in ("web/staging/current", "web/staging/lock", "web/staging/instances/i-0abc", "api/staging/current"):
        assert allows(owned, "s3:PutObject", bucket + key), key
    for key in ("web/staging/r7/release.json", "web/staging/env", "web/production/current"):
        assert not allows(owned, "s3:PutObject", bucket + key), key
    for key in ("web/staging/current", "web/staging/previous"):
        assert not allows(owned, "s3:DeleteObject", bucket + key), key


def _role_statements(template: Template, role_prefix: str) -> list[dict[str, Any]]:
    """Every statement of the policies attached to the role whose logical id starts with ``role_prefix``."""
    return [
        statement
        for policy in template.find_resources("AWS::IAM::Policy").values()
        if any(r.get("Ref", "").startswith(role_prefix) for r in policy["Properties"]["Roles"])
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]


def test_the_bucket_refuses_to_overwrite_or_delete_a_release_whoever_asks(staging: Template) -> None:
    """S3 enforces it, not only the roles: a write to a release's files, a slug or a source without
    If-None-Match (the parts of a multipart upload exempted, as S3 requires; their completion is not)
    and any delete of them, by any principal."""
    [policy] = staging.find_resources("AWS::S3::BucketPolicy").values()
    statements = {s.get("Sid"): s for s in policy["Properties"]["PolicyDocument"]["Statement"]}
    write_once = [f"arn:aws:s3:::BUCKET/{key}" for key in AppKeys(EVERY_APP, EVERY_APP).write_once()]
    once, never = statements["ReleasesAreWrittenOnce"], statements["ReleasesAreNeverDeleted"]
    assert (once["Effect"], once["Principal"], once["Action"]) == ("Deny", {"AWS": "*"}, "s3:PutObject")
    assert sorted(_resources(once)) == sorted(write_once)
    assert once["Condition"] == {
        "Null": {"s3:if-none-match": "true"},
        "StringNotEquals": {"s3:ObjectCreationOperation": ["CreateMultipartUpload", "UploadPart", "UploadPartCopy"]},
    }
    assert (never["Effect"], never["Principal"]) == ("Deny", {"AWS": "*"})
    assert sorted(never["Action"]) == ["s3:DeleteObject", "s3:DeleteObjectVersion"]
    assert sorted(_resources(never)) == sorted(write_once)
    for key in ("web/staging/r7/release.json", "web/production/r12/env", "web/staging/slugs/a.tar.gz"):
        assert any(fnmatch.fnmatchcase(f"arn:aws:s3:::BUCKET/{key}", r) for r in write_once), key
    for key in ("web/staging/env", "web/staging/current", "uploads/web/staging/u/upload.json", "web/staging/lock"):
        assert not any(fnmatch.fnmatchcase(f"arn:aws:s3:::BUCKET/{key}", r) for r in write_once), key


def test_authorizer_reads_only_the_credentials_secret(staging: Template) -> None:
    secret = _logical_id(staging, "AWS::SecretsManager::Secret", "ControlPlaneCredentials")
    log_group = _logical_id(staging, "AWS::Logs::LogGroup", "ControlPlaneAuthorizerFunctionLogs")
    assert _statements(staging, "Authorizer") == [
        {
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Effect": "Allow",
            "Resource": {"Fn::GetAtt": [log_group, "Arn"]},
        },
        {
            "Action": "secretsmanager:GetSecretValue",
            "Effect": "Allow",
            "Resource": {"Ref": secret},
        },
    ]
    assert _function(staging, "Authorizer")["Environment"]["Variables"] == {"CREDENTIALS_SECRET_ARN": {"Ref": secret}}


def test_function_roles_have_no_managed_policies(staging: Template) -> None:
    for name in ("Api", "Authorizer"):
        role = _one(staging, "AWS::IAM::Role", f"ControlPlane{name}FunctionRole")[1]["Properties"]
        assert "ManagedPolicyArns" not in role
        assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "lambda.amazonaws.com"}


def test_secret_is_generated_at_deploy_time(staging: Template) -> None:
    props = _one(staging, "AWS::SecretsManager::Secret", "ControlPlaneCredentials")[1]["Properties"]
    assert "SecretString" not in props  # no password in the template
    assert props["GenerateSecretString"] == {
        "SecretStringTemplate": "{}",
        "GenerateStringKey": "admin",
        "ExcludePunctuation": True,
        "IncludeSpace": False,
        "PasswordLength": 40,
    }


def _methods(template: Template) -> dict[str, dict[str, Any]]:
    return {k: v["Properties"] for k, v in template.find_resources("AWS::ApiGateway::Method").items()}


def test_every_method_needs_the_basic_auth_authorizer_but_the_slack_command_and_health(staging: Template) -> None:
    authorizer = _logical_id(staging, "AWS::ApiGateway::Authorizer", "ControlPlaneBasicAuth")
    methods = _methods(staging)
    assert methods
    open_ = ("ControlPlaneRestApislackcommandsPOST", "ControlPlaneRestApihealthGET")
    for name, method in methods.items():
        if name.startswith(open_):
            continue
        assert method["AuthorizationType"] == "CUSTOM", name
        assert method["AuthorizerId"] == {"Ref": authorizer}, name
    # The two open methods: Slack signs its requests instead (the handler verifies the signature), and
    # Route 53's health check (a second region's failover) asks /health, which says only whether the bucket
    # can be read.
    opened = staging.find_resources("AWS::ApiGateway::Method", {"Properties": {"AuthorizationType": "NONE"}})
    assert sorted(name.startswith(open_[0]) for name in opened) == [False, True]
    assert all(name.startswith(open_) for name in opened), sorted(opened)


def test_authorizer_reads_the_authorization_header_and_caches_five_minutes(staging: Template) -> None:
    staging.has_resource_properties(
        "AWS::ApiGateway::Authorizer",
        {
            "Type": "REQUEST",
            "IdentitySource": "method.request.header.Authorization",
            "AuthorizerResultTtlInSeconds": 300,
            "AuthorizerUri": Match.object_like(
                {
                    "Fn::Join": [
                        "",
                        Match.array_with(
                            [{"Fn::GetAtt": [Match.string_like_regexp("^ControlPlaneAuthorizerFunction"), "Arn"]}]
                        ),
                    ]
                }
            ),
        },
    )


def test_every_method_proxies_to_the_api_function(staging: Template) -> None:
    api_function = _logical_id(staging, "AWS::Lambda::Function", "ControlPlaneApiFunction")
    for name, method in _methods(staging).items():
        integration = method["Integration"]
        assert (integration["Type"], integration["IntegrationHttpMethod"]) == ("AWS_PROXY", "POST"), name
        assert {"Fn::GetAtt": [api_function, "Arn"]} in integration["Uri"]["Fn::Join"][1], name


def _routes_in_template(template: Template) -> set[tuple[str, str]]:
    resources = {k: v["Properties"] for k, v in template.find_resources("AWS::ApiGateway::Resource").items()}

    def path(resource_id: dict[str, Any]) -> str:
        if "Fn::GetAtt" in resource_id:  # the API's root resource
            assert resource_id["Fn::GetAtt"][1] == "RootResourceId"
            return ""
        props = resources[resource_id["Ref"]]
        return f"{path(props['ParentId'])}/{props['PathPart']}"

    return {(path(m["ResourceId"]) or "/", m["HttpMethod"]) for m in _methods(template).values()}


def test_the_api_has_exactly_the_routes_of_the_openapi_document(
    repo: Path, staging: Template, production: Template
) -> None:
    document = json.loads((repo / "lambdas" / "slipway" / "openapi.json").read_text())
    documented = {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "put", "post", "delete", "patch", "head", "options"}
    }
    assert documented
    assert _routes_in_template(staging) == documented
    assert _routes_in_template(production) == documented


def test_unauthorized_asks_for_basic_credentials(staging: Template) -> None:
    staging.has_resource_properties(
        "AWS::ApiGateway::GatewayResponse",
        {
            "ResponseType": "UNAUTHORIZED",
            "StatusCode": "401",
            "ResponseParameters": {"gatewayresponse.header.WWW-Authenticate": "'Basic realm=\"Slipway\"'"},
        },
    )
    staging.has_resource_properties(
        "AWS::ApiGateway::GatewayResponse", {"ResponseType": "ACCESS_DENIED", "StatusCode": "403"}
    )
    for response in staging.find_resources("AWS::ApiGateway::GatewayResponse").values():
        body = json.loads(response["Properties"]["ResponseTemplates"]["application/json"])
        assert set(body) == {"message"}  # the OpenAPI document's Error schema


def _stage(template: Template) -> dict[str, Any]:
    props: dict[str, Any] = _one(template, "AWS::ApiGateway::Stage", "ControlPlaneRestApi")[1]["Properties"]
    return props


def test_stage_is_throttled_and_never_logs_request_data(staging: Template) -> None:
    stage = _stage(staging)
    assert stage["StageName"] == "v1"
    assert stage["MethodSettings"] == [
        {
            "HttpMethod": "*",
            "ResourcePath": "/*",
            "ThrottlingRateLimit": 10,
            "ThrottlingBurstLimit": 20,
            "LoggingLevel": "ERROR",
            "DataTraceEnabled": False,  # would log the Authorization header
            "MetricsEnabled": True,
        }
    ]


def test_access_logs_are_json_and_name_the_user(staging: Template) -> None:
    settings = _stage(staging)["AccessLogSetting"]
    access_logs = _logical_id(staging, "AWS::Logs::LogGroup", "ControlPlaneAccessLogs")
    assert {"Ref": access_logs} in settings["DestinationArn"]["Fn::Join"][1]
    fields = json.loads(settings["Format"])
    assert fields["user"] == "$context.authorizer.user"
    assert {"requestId", "ip", "method", "resource", "status"} <= set(fields)
    staging.has_resource("AWS::Logs::LogGroup", {"Properties": {"RetentionInDays": 365}, "DeletionPolicy": "Retain"})


def test_account_cloudwatch_role_is_set_before_the_stage_and_retained(staging: Template) -> None:
    account_id, account = _one(staging, "AWS::ApiGateway::Account", "ControlPlaneRestApiAccount")
    assert account["DeletionPolicy"] == "Retain"
    role_id = account["Properties"]["CloudWatchRoleArn"]["Fn::GetAtt"][0]
    assert staging.to_json()["Resources"][role_id]["DeletionPolicy"] == "Retain"
    stage = _one(staging, "AWS::ApiGateway::Stage", "ControlPlaneRestApi")[1]
    assert account_id in stage["DependsOn"]


def test_outputs_give_the_url_and_how_to_read_the_password(staging: Template) -> None:
    outputs = staging.to_json()["Outputs"]
    control_plane = {k: v for k, v in outputs.items() if k.startswith("ControlPlane")}
    [url] = [v for k, v in control_plane.items() if k.startswith("ControlPlaneApiUrl")]
    [secret] = [v for k, v in control_plane.items() if k.startswith("ControlPlaneCredentialsSecret")]
    # CDK's own unnamed Endpoint output is removed; the Slack command's URL and secret are named.
    assert sorted(k.rstrip("0123456789ABCDEF") for k in control_plane) == [
        "ControlPlaneApiUrl",
        "ControlPlaneCredentialsSecret",
        "ControlPlaneSlackCommandUrl",
        "ControlPlaneSlackSigningSecretName",
    ]
    rest_api = _logical_id(staging, "AWS::ApiGateway::RestApi", "ControlPlaneRestApi")
    assert {"Ref": rest_api} in url["Value"]["Fn::Join"][1]
    assert "aws secretsmanager get-secret-value" in secret["Description"]


def _files(root: Path) -> list[str]:
    """Every file under ``root``, links followed, bytecode and tool caches left out."""
    found = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__" and not d.endswith("_cache")]
        found += [str((Path(folder) / n).relative_to(root)) for n in names if not n.endswith(".pyc")]
    return sorted(found)


def test_lambda_asset_is_exactly_the_lambda_code(staging: Template, assembly_dir: Path, repo: Path) -> None:
    """Both functions' asset is lambdas/ as it is, its link to the shared release formats copied in:
    nothing of the CLI, the local platform or the tests, no bytecode, and nothing that imports moto."""
    for name in ("ControlPlaneApiFunction", "RolloutTasks"):
        _, function = _one(staging, "AWS::Lambda::Function", name)
        asset = assembly_dir / function["Metadata"]["aws:asset:path"]
        files = _files(asset)
        assert files == _files(repo / "lambdas")
        assert {f.split("/")[0] for f in files} == {"slipway", "slipway_release"}
        assert (asset / "slipway_release").is_dir() and not (asset / "slipway_release").is_symlink()
        imports = [
            line.split()[1]
            for f in files
            if f.endswith(".py")
            for line in (asset / f).read_text().splitlines()
            if line.lstrip().startswith(("import ", "from "))
        ]
        assert not [m for m in imports if m.split(".")[0] in ("moto", "local", "slipway_cli", "tests", "pytest")]


# Pure parts and validation.


def test_routes_from_openapi_takes_operations_and_skips_path_parameters() -> None:
    document = {
        "paths": {
            "/apps/{app}": {"parameters": [{"name": "app", "in": "path"}], "get": {}, "patch": {}},
            "/health": {"get": {}},
            "/": {"get": {}},
        }
    }
    assert routes_from_openapi(document) == (
        ApiRoute("/", "GET"),
        ApiRoute("/apps/{app}", "GET"),
        ApiRoute("/apps/{app}", "PATCH"),
        ApiRoute("/health", "GET"),
    )


def test_required_bodies_are_validated_against_their_schema_as_a_draft_4_model() -> None:
    document = {
        "paths": {
            "/things": {
                "post": {
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/New"}}},
                    }
                },
                "get": {
                    "parameters": [{"name": "limit", "in": "query"}, {"name": "x", "in": "path", "required": True}]
                },
            },
            "/other": {
                "post": {
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/New"}}},
                    }
                }
            },
        },
        "components": {
            "schemas": {
                "New": {
                    "type": "object",
                    "properties": {
                        "part": {"$ref": "#/components/schemas/Part"},
                        "note": {"type": "string", "nullable": True},
                    },
                },
                "Part": {"type": "object", "propertyNames": {"pattern": "^a"}, "example": {"a": 1}},
            }
        },
    }
    contract = ApiContract.from_openapi(document)
    assert contract.routes == (
        ApiRoute("/other", "POST"),  # an optional body: the handler checks it
        ApiRoute("/things", "GET", query=(("limit", False),)),
        ApiRoute("/things", "POST", body_model="New"),
    )
    assert contract.models == {"New": gateway_model(document, "New")}
    assert gateway_model(document, "New") == {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "title": "New",
        "type": "object",
        "properties": {"part": {"type": "object"}, "note": {"type": ["string", "null"]}},
    }


def test_every_operation_of_the_api_is_validated(staging: Template) -> None:
    methods = staging.find_resources("AWS::ApiGateway::Method")
    validators = staging.find_resources("AWS::ApiGateway::RequestValidator")
    models = {
        r["Properties"]["Name"]: r["Properties"]["Schema"]
        for r in staging.find_resources("AWS::ApiGateway::Model").values()
    }
    assert set(models) == {
        "UploadRequest",
        "ReleaseRequest",
        "ConfigChange",
        "DeployRequest",
        "ScaleRequest",
        "RunRequest",
        "PromotionRequest",
    }
    for method in methods.values():
        properties = method["Properties"]
        validator = validators[properties["RequestValidatorId"]["Ref"]]["Properties"]
        assert validator["ValidateRequestParameters"] is True
        if properties["HttpMethod"] in ("POST", "PATCH") and "RequestModels" in properties:
            assert validator["ValidateRequestBody"] is True
    for schema in models.values():
        jsonschema.Draft4Validator.check_schema(schema)
    responses = {
        r["Properties"]["ResponseType"]: r["Properties"]
        for r in staging.find_resources("AWS::ApiGateway::GatewayResponse").values()
    }
    assert (
        "$context.error.validationErrorString" in responses["BAD_REQUEST_BODY"]["ResponseTemplates"]["application/json"]
    )


@pytest.mark.parametrize(
    "document, message",
    [
        ({}, "no paths"),
        ({"paths": {"/a": {"parameters": []}}}, "no operations"),
        ({"paths": {"a": {"get": {}}}}, "must start with '/'"),
        ({"paths": {"/a/": {"get": {}}}}, "trailing"),
        ({"paths": {"/a//b": {"get": {}}}}, "empty"),
    ],
)
def test_routes_from_openapi_rejects_documents_api_gateway_cannot_serve(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        routes_from_openapi(document)


def _control_plane(**overrides: Any) -> ControlPlane:
    stack = cdk.Stack(cdk.App())
    props: dict[str, Any] = {
        "env_name": "staging",
        "apps": [AppSettings(name="web")],
        "release_store": ReleaseStore(stack, "Releases"),
        "code": lambda_.Code.from_inline("def handler(event, context): pass"),
        "contract": ApiContract(routes=(ApiRoute("/health", "GET"),), models={}),
        **overrides,
    }
    return ControlPlane(stack, "ControlPlane", **props)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"env_name": "Staging"}, "env_name 'Staging' is not an environment name"),
        ({"apps": [AppSettings(name="web"), AppSettings(name="web")]}, "duplicate names"),
        ({"contract": ApiContract(routes=(), models={})}, "the contract has no routes"),
    ],
)
def test_bad_props_are_refused_with_the_property_and_the_fix(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _control_plane(**overrides)


def test_attributes_are_the_functions_secret_and_url() -> None:
    plane = _control_plane()
    assert plane.api_function.node.id == "ApiFunction"
    assert plane.authorizer_function.node.id == "AuthorizerFunction"
    assert plane.credentials_secret.node.id == "Credentials"
    assert cdk.Token.is_unresolved(plane.api_url)
    assert plane.api.node.id == "RestApi"


def test_a_web_acl_limits_each_client_address_on_the_stage(staging: Template) -> None:
    [(acl_id, acl)] = staging.find_resources("AWS::WAFv2::WebACL").items()
    [rule] = acl["Properties"]["Rules"]
    assert rule["Action"] == {"Block": {}}
    assert rule["Statement"] == {
        "RateBasedStatement": {"AggregateKeyType": "IP", "EvaluationWindowSec": 300, "Limit": 1500}
    }
    assert acl["Properties"]["DefaultAction"] == {"Allow": {}}
    [association] = staging.find_resources("AWS::WAFv2::WebACLAssociation").values()
    assert association["Properties"]["WebACLArn"] == {"Fn::GetAtt": [acl_id, "Arn"]}
    stage = _logical_id(staging, "AWS::ApiGateway::Stage", "ControlPlaneRestApiDeploymentStagev1")
    assert {"Ref": stage} in association["Properties"]["ResourceArn"]["Fn::Join"][1]
