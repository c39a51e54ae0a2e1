"""An environment in two regions (docs/regions.md): its configuration, the two stacks it
synthesizes (linted, nagged, each deployed into moto's CloudFormation), and the control plane
of the region that is not active answering reads and refusing every change, at each door."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from api_events import call
from configurations import every_option
from moto_fleet import World
from test_slack import SlackStandIn, command, slack  # noqa: F401 - slack is the fixture the Slack test uses
from test_stacks import _cfn_lint_unexpected, _nag_report

from constructs.config import PlatformConfig
from local.aws import MOTO_CONFIG, Deployed, bootstrap, default_clients, deploy_stack
from local.platform import merged_template
from local.template import ACCOUNT
from slipway import operations
from slipway.settings import REGIONS_JSON, RegionSettings, active_region_parameter_name

PRIMARY, SECONDARY = "Platform-production", "Platform-production-us-west-2"
DOMAIN, ZONE = "api.example.com", "Z0123456789ABC"
REPLICA = f"slipway-production-{ACCOUNT}-us-west-2"


@pytest.fixture
def outdir(every_option_dir: Path) -> Path:
    """The example with every option (conftest.every_option), production's secondary among them."""
    return every_option_dir


def template(outdir: Path, stack: str) -> dict[str, Any]:
    return json.loads((outdir / f"{stack}.template.json").read_text())  # type: ignore[no-any-return]


def of_type(template: dict[str, Any], kind: str) -> dict[str, Any]:
    return {k: v["Properties"] for k, v in template["Resources"].items() if v["Type"] == kind}


def test_the_secondary_is_a_second_stack_in_its_region_deployed_first(outdir: Path) -> None:
    artifacts = json.loads((outdir / "manifest.json").read_text())["artifacts"]
    assert artifacts[PRIMARY]["environment"].endswith("/us-east-1")
    assert artifacts[SECONDARY]["environment"].endswith("/us-west-2")
    # `cdk deploy Platform-production` deploys its dependencies first: the replica bucket exists before
    # the primary's replication rule names it; the secondary depends on nothing of the primary.
    assert SECONDARY in artifacts[PRIMARY]["dependencies"]
    assert PRIMARY not in artifacts[SECONDARY].get("dependencies", [])
    assert set(artifacts) >= {"Platform-staging", PRIMARY, SECONDARY}


def test_the_primary_bucket_replicates_everything_to_the_secondarys(outdir: Path) -> None:
    primary, secondary = template(outdir, PRIMARY), template(outdir, SECONDARY)
    replica = secondary["Resources"]["ReleaseBucket"]["Properties"]
    assert replica["BucketName"] == {"Fn::Join": ["", ["slipway-production-", {"Ref": "AWS::AccountId"}, "-us-west-2"]]}
    assert replica["VersioningConfiguration"] == {"Status": "Enabled"}  # replication needs both versioned
    assert "ReplicationConfiguration" not in replica
    source = primary["Resources"]["ReleaseBucket"]["Properties"]
    assert "BucketName" not in source  # the primary's bucket keeps its name: it holds every release already
    [rule] = source["ReplicationConfiguration"]["Rules"]
    replica_arn = [
        "arn:",
        {"Ref": "AWS::Partition"},
        ":s3:::slipway-production-",
        {"Ref": "AWS::AccountId"},
        "-us-west-2",
    ]
    destination = {"Fn::Join": ["", replica_arn]}
    assert rule["Destination"]["Bucket"] == destination
    assert rule["Filter"] == {"Prefix": ""} and rule["Status"] == "Enabled"
    assert rule["DeleteMarkerReplication"] == {"Status": "Enabled"}
    assert rule["Destination"]["ReplicationTime"] == {"Status": "Enabled", "Time": {"Minutes": 15}}
    # The replication role reads this bucket's versions and writes replicas there, nothing else.
    [policy] = [p for k, p in of_type(primary, "AWS::IAM::Policy").items() if k.startswith("ReleasesReplicationRole")]
    statements = {tuple(sorted(s["Action"])): s["Resource"] for s in policy["PolicyDocument"]["Statement"]}
    assert statements[("s3:ReplicateDelete", "s3:ReplicateObject", "s3:ReplicateTags")] == {
        "Fn::Join": ["", [*replica_arn[:-1], "-us-west-2/*"]]
    }
    assert statements[("s3:GetReplicationConfiguration", "s3:ListBucket")] == {"Fn::GetAtt": ["ReleaseBucket", "Arn"]}
    # Only the environment with a secondary replicates.
    assert (
        "ReplicationConfiguration"
        not in template(outdir, "Platform-staging")["Resources"]["ReleaseBucket"]["Properties"]
    )


def test_one_name_for_the_api_fails_over_from_the_primary_to_the_secondary(outdir: Path) -> None:
    primary, secondary = template(outdir, PRIMARY), template(outdir, SECONDARY)
    [check] = of_type(primary, "AWS::Route53::HealthCheck").values()
    config = check["HealthCheckConfig"]
    assert config["Type"] == "HTTPS" and config["ResourcePath"] == "/v1/health"  # the API's unauthenticated route
    assert config["RequestInterval"] == 30 and config["FailureThreshold"] == 3
    # The primary's own regional endpoint, not the name that fails over.
    rest_api = next(k for k, v in primary["Resources"].items() if v["Type"] == "AWS::ApiGateway::RestApi")
    assert config["FullyQualifiedDomainName"]["Fn::Join"][1][:2] == [{"Ref": rest_api}, ".execute-api.us-east-1."]
    assert of_type(secondary, "AWS::Route53::HealthCheck") == {}
    records = {}
    for stack in (primary, secondary):
        [record] = of_type(stack, "AWS::Route53::RecordSet").values()
        [(domain_id, domain)] = of_type(stack, "AWS::ApiGateway::DomainName").items()
        assert record["Name"] == DOMAIN and record["HostedZoneId"] == ZONE and record["Type"] == "A"
        assert record["AliasTarget"]["DNSName"] == {"Fn::GetAtt": [domain_id, "RegionalDomainName"]}
        assert domain["DomainName"] == DOMAIN and domain["EndpointConfiguration"] == {"Types": ["REGIONAL"]}
        assert domain["SecurityPolicy"] == "TLS_1_2"
        [certificate] = of_type(stack, "AWS::CertificateManager::Certificate").values()
        assert certificate["ValidationMethod"] == "DNS"
        assert certificate["DomainValidationOptions"] == [{"DomainName": DOMAIN, "HostedZoneId": ZONE}]
        [mapping] = of_type(stack, "AWS::ApiGateway::BasePathMapping").values()
        assert mapping["BasePath"] == "v1"  # https://api.example.com/v1/... as on the API's own URL
        records[record["Failover"]] = record
    assert records["PRIMARY"]["HealthCheckId"] == {
        "Fn::GetAtt": [next(iter(of_type(primary, "AWS::Route53::HealthCheck"))), "HealthCheckId"]
    }
    assert "HealthCheckId" not in records["SECONDARY"]
    assert records["PRIMARY"]["SetIdentifier"] != records["SECONDARY"]["SetIdentifier"]
    # The health route is outside Basic auth; every other stays behind it.
    methods = of_type(primary, "AWS::ApiGateway::Method")
    resources = of_type(primary, "AWS::ApiGateway::Resource")
    health = next(k for k, v in resources.items() if v["PathPart"] == "health")
    [get_health] = [m for m in methods.values() if m.get("ResourceId") == {"Ref": health}]
    assert get_health["AuthorizationType"] == "NONE"


def test_both_control_planes_know_the_regions_and_read_only_the_active_region_parameter(outdir: Path) -> None:
    for stack in (PRIMARY, SECONDARY):
        t = template(outdir, stack)
        [api] = [p for k, p in of_type(t, "AWS::Lambda::Function").items() if k.startswith("ControlPlaneApiFunction")]
        regions = RegionSettings.from_json(json.loads(api["Environment"]["Variables"][REGIONS_JSON]))
        assert regions == RegionSettings(primary="us-east-1", secondary="us-west-2")
        [policy] = [p for k, p in of_type(t, "AWS::IAM::Policy").items() if k.startswith("ControlPlaneApiFunction")]
        [statement] = [s for s in policy["PolicyDocument"]["Statement"] if s["Action"] == "ssm:GetParameter"]
        assert statement["Resource"]["Fn::Join"][1][-1] == f":parameter{active_region_parameter_name('production')}"
    # An environment in one region has no such variable, and no guard.
    staging = template(outdir, "Platform-staging")
    [api] = [p for k, p in of_type(staging, "AWS::Lambda::Function").items() if k.startswith("ControlPlaneApiFunction")]
    assert REGIONS_JSON not in api["Environment"]["Variables"]


def test_both_stacks_lint_and_pass_cdk_nag(outdir: Path) -> None:
    assert (
        _cfn_lint_unexpected([str(outdir / f"{PRIMARY}.template.json"), str(outdir / f"{SECONDARY}.template.json")])
        == []
    )
    nag = _nag_report(outdir)
    assert nag["conclusion"] == "success" and nag["violations"] == []


@pytest.mark.parametrize("stack", [SECONDARY, PRIMARY])
def test_each_stack_deploys_into_motos_cloudformation(
    outdir: Path, stack: str, fake_aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each in a fresh moto (one region there: the two would share document and secret names), the primary
    next to a replica bucket of the secondary's name, as after the secondary's deploy."""
    from moto import mock_aws

    with mock_aws(config=MOTO_CONFIG):
        clients = default_clients()
        bootstrap(clients)
        # The assets of the secondary's stack are in its own region's bootstrap bucket.
        clients.s3.create_bucket(Bucket=f"cdk-hnb659fds-assets-{ACCOUNT}-us-west-2")
        if stack == PRIMARY:
            clients.s3.create_bucket(Bucket=REPLICA)
        deployed = deploy_stack(clients, stack, merged_template(template(outdir, stack), outdir))
        bucket = deployed.physical("ReleaseBucket")
        if stack == SECONDARY:
            assert bucket == REPLICA
        clients.s3.head_bucket(Bucket=bucket)  # (moto's CloudFormation ignores versioning and replication)
        assert deployed.outputs[next(k for k in deployed.outputs if k.startswith("ControlPlaneApiDomainUrl"))] == (
            f"https://{DOMAIN}/v1/"
        )


def test_configuration_reads_the_secondary(example_platform: dict[str, Any]) -> None:
    platform = copy.deepcopy(example_platform)
    every_option(platform)
    config = PlatformConfig.from_context(platform)
    stacks = {stack.stack_name: stack for stack in config.stacks()}
    assert list(stacks) == ["Platform-staging", PRIMARY, SECONDARY]
    copy_ = stacks[SECONDARY]
    assert (copy_.region, copy_.primary_region, copy_.is_secondary) == ("us-west-2", "us-east-1", True)
    assert copy_.network.availability_zones == ("us-west-2a", "us-west-2b")
    assert copy_.network.instance_subnets == "private"  # the rest as the environment says
    assert not stacks[PRIMARY].is_secondary and stacks[PRIMARY].primary_region == "us-east-1"


# The passive region, at each door -----------------------------------------------------------


@pytest.fixture
def passive(deployed: Deployed, monkeypatch: pytest.MonkeyPatch) -> World:
    """The deployed staging stack (in us-east-1) as the secondary of an environment whose primary is
    us-west-2; the active-region parameter not written yet, so the primary is active."""
    world = World(deployed, instances=2, min_size=1)
    monkeypatch.setenv(REGIONS_JSON, json.dumps({"primary": "us-west-2", "secondary": "us-east-1"}))
    operations.settings.cache_clear()
    return world


def test_the_passive_region_answers_reads_and_refuses_changes_until_it_is_made_active(
    passive: World, deployed: Deployed
) -> None:
    status, shown = call("GET", "/apps/web/envs/staging/status")
    assert status == 200 and shown["current"] == "r1"
    assert call("GET", "/apps/web/envs/staging/releases")[0] == 200
    changes = [
        ("PATCH", "/apps/web/envs/staging/config", {"set": {"A": "1"}}),
        ("POST", "/apps/web/envs/staging/deploys", {"release": "r2"}),
        ("POST", "/apps/web/envs/staging/rollback", {}),
        ("POST", "/apps/web/envs/staging/restart", {}),
        ("POST", "/apps/web/envs/staging/scale", {"min": 1}),
        ("POST", "/apps/web/envs/staging/uploads", {"size": 10, "sha256": "0" * 64}),
    ]
    name = active_region_parameter_name("staging")
    for method, path, body in changes:
        status, refused = call(method, path, body)
        assert status == 409, (path, refused)
        message = refused["message"]
        assert message.startswith("staging takes changes in us-west-2, not here in us-east-1: use us-west-2's API")
        assert f"--name {name} --value us-east-1 --region us-east-1" in message and "\n" not in message
    assert passive.current() == "r1" and call("GET", "/apps/web/envs/staging/deploys")[1]["deploys"] == []
    assert call("GET", "/apps/web/envs/staging/config")[1]["vars"] == {}
    # An operator makes this region the active one: the next change goes through, no cache to wait for.
    deployed.clients.ssm.put_parameter(Name=name, Value="us-east-1", Type="String")
    status, changed = call("PATCH", "/apps/billing/envs/staging/config", {"set": {"A": "1"}})
    assert status == 200, changed
    # A parameter naming neither region is the platform's misconfiguration, said as such.
    deployed.clients.ssm.put_parameter(Name=name, Value="eu-west-1", Type="String", Overwrite=True)
    status, refused = call("PATCH", "/apps/web/envs/staging/config", {"set": {"A": "2"}})
    assert status == 500 and refused["message"] == (
        f"the Slipway control plane is misconfigured: the parameter {name} says 'eu-west-1'; "
        "it must name us-west-2 or us-east-1"
    )


def test_the_passive_region_refuses_slacks_changes_and_answers_its_reads(
    passive: World,
    slack: SlackStandIn,  # noqa: F811 - the fixture imported above
) -> None:
    status, answer, _ = command("status web staging", slack.url)
    assert status == 200 and "current `r1`" in answer["blocks"][0]["text"]["text"]
    for text in ("deploy web staging r2", "rollback web staging", "restart web staging", "cycle web staging"):
        status, answer, _ = command(text, slack.url)
        assert status == 200 and answer["text"].startswith(
            ":warning: staging takes changes in us-west-2, not here in us-east-1"
        ), (text, answer)
    assert passive.current() == "r1" and slack.posts == []


def test_health_answers_without_credentials_and_says_where(deployed: Deployed) -> None:
    status, health = call("GET", "/health", user=None)
    assert status == 200 and health == {"healthy": True, "env": "staging", "region": "us-east-1"}
    # Route 53 asks it as often as every 10 s: it must not be a way to read anything else.
    assert call("GET", "/health", query={"app": "web"}, user=None)[0] == 400


def test_health_says_unhealthy_when_the_bucket_cannot_be_read(
    deployed: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELEASE_BUCKET", "no-such-bucket")
    operations.settings.cache_clear()
    status, refused = call("GET", "/health", user=None)
    assert status == 503 and refused == {"message": "the release bucket cannot be read (ClientError)"}
