"""Every configuration rule: a bad value stops synthesis with one line naming the key path and the fix."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from aws_cdk import aws_ec2 as ec2
from hypothesis import given
from hypothesis import strategies as st

from constructs import aws_catalog
from constructs.base_image import PARENT_IMAGES
from constructs.config import AppSettings, ConfigError, PlatformConfig
from slipway.rollout.strategy import Strategy, StrategyError


def test_example_configuration_parses(example_platform: dict[str, Any]) -> None:
    config = PlatformConfig.from_context(example_platform)
    assert [env.stack_name for env in config.environments] == ["Platform-staging", "Platform-production"]
    assert [app.name for app in config.apps] == ["web", "billing"]
    billing = {app.name: app for app in config.apps}["billing"]
    assert billing.settings_for("production").processes == {"web": 1, "worker": 2}
    # The staging override changes only what it names.
    assert billing.settings_for("staging").min_capacity == 1
    assert billing.settings_for("staging").deregistration_delay_seconds == 30
    assert billing.settings_for("production").min_capacity == 2


def test_settings_are_frozen(example_platform: dict[str, Any]) -> None:
    config = PlatformConfig.from_context(example_platform)
    with pytest.raises(AttributeError):
        config.apps[0].settings.port = 1  # type: ignore[misc]


def test_defaults_fill_a_minimal_configuration() -> None:
    config = PlatformConfig.from_context({"environments": {"dev": {"region": "eu-west-1"}}, "apps": {"api": {}}})
    settings = config.apps[0].settings_for("dev")
    assert settings == AppSettings(name="api")
    assert config.environment("dev").network.instance_subnets == "public"
    assert config.environment("dev").network.nat_gateways == 0


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    def change(platform: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = platform
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return change


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def change(platform: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = platform
        for key in parents:
            node = node[key]
        del node[last]

    return change


def _rename_app(old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def change(platform: dict[str, Any]) -> None:
        platform["apps"][new] = platform["apps"].pop(old)

    return change


# (change, the key path the message must name, words of the fix it must give)
SECONDARY = {
    "region": "us-west-2",
    "domain": "api.example.com",
    "hosted_zone_id": "Z0123456789ABC",
    "availability_zones": ["us-west-2a", "us-west-2b"],
}

RULES = {
    "unknown top-level key": (_set("app", {}), "platform.app", "did you mean 'apps'"),
    "unknown app key": (_set("apps.web.prot", 5000), "platform.apps.web.prot", "did you mean 'port'"),
    "unknown environment key": (
        _set("environments.staging.regoin", "x"),
        "platform.environments.staging.regoin",
        "did you mean 'region'",
    ),
    "unknown network key": (
        _set("environments.staging.network.nat", 1),
        "platform.environments.staging.network.nat",
        "remove it",
    ),
    "app name with capitals": (_rename_app("web", "Web"), "platform.apps.Web", "lowercase"),
    "app name with underscore": (_rename_app("web", "my_app"), "platform.apps.my_app", "lowercase"),
    "app name with a trailing newline": (_rename_app("web", "web\n"), "platform.apps.web\n", "lowercase"),
    "app name too long": (_rename_app("web", "a" * 33), "platform.apps." + "a" * 33, "2 to 32"),
    "app named like an environment": (_rename_app("web", "production"), "platform.apps.production", "another name"),
    "app named like a folder of the bucket": (_rename_app("web", "uploads"), "platform.apps.uploads", "another name"),
    "environment name with dash": (
        _set("environments.pre-prod", {"region": "us-east-1"}),
        "platform.environments.pre-prod",
        "lowercase letters and digits",
    ),
    "no environment": (_set("environments", {}), "platform.environments", "add one"),
    "min greater than max": (
        _set("apps.web.min_capacity", 9),
        "platform.apps.web.min_capacity",
        "lower min_capacity or raise max_capacity",
    ),
    "min greater than max in an override": (
        _set("apps.web.environments.staging.min_capacity", 3),
        "platform.apps.web.environments.staging.min_capacity",
        "lower min_capacity",
    ),
    "desired outside the range": (
        _set("apps.web.desired_capacity", 10),
        "platform.apps.web.desired_capacity",
        "let scaling decide",
    ),
    "override of an unknown environment": (
        _set("apps.web.environments.qa", {"min_capacity": 1}),
        "platform.apps.web.environments.qa",
        "use one of: staging, production",
    ),
    "unknown key in an override": (
        _set("apps.web.environments.staging.instance", "t3.large"),
        "platform.apps.web.environments.staging.instance",
        "did you mean 'instance_type'",
    ),
    "port above range": (_set("apps.web.port", 70000), "platform.apps.web.port", "1024 to 65535"),
    "privileged port": (_set("apps.web.port", 80), "platform.apps.web.port", "unprivileged deploy user"),
    "port as a string": (_set("apps.web.port", "5000"), "platform.apps.web.port", "use a number"),
    "port as a boolean": (_set("apps.web.port", True), "platform.apps.web.port", "use a number"),
    "relative health check path": (
        _set("apps.web.health_check_path", "health"),
        "platform.apps.web.health_check_path",
        'starting with "/"',
    ),
    "bad instance type": (_set("apps.web.instance_type", "large"), "platform.apps.web.instance_type", "t3.small"),
    "misspelt instance type": (
        _set("apps.web.instance_type", "t3.smal"),
        "platform.apps.web.instance_type",
        "did you mean 't3.small'?",
    ),
    "instance type of macOS": (
        _set("apps.web.instance_type", "mac2.metal"),
        "platform.apps.web.instance_type",
        "runs macOS on a dedicated host",
    ),
    "instance type only on dedicated hosts": (
        _set("apps.web.instance_type", "u-6tb1.metal"),
        "platform.apps.web.instance_type",
        "the CDK cannot tell which CPU architecture 'u-6tb1.metal' has",
    ),
    "instance type overridden per environment": (
        _set("apps.web.environments", {"staging": {"instance_type": "t4g.smal"}}),
        "platform.apps.web.environments.staging.instance_type",
        "did you mean 't4g.small'?",
    ),
    "formation without web": (_set("apps.web.formation", {"worker": 1}), "platform.apps.web.formation.web", '"web": 1'),
    "release in formation": (
        _set("apps.web.formation", {"web": 1, "release": 1}),
        "platform.apps.web.formation.release",
        "runs once per deploy",
    ),
    "two web processes": (
        _set("apps.web.formation", {"web": 2}),
        "platform.apps.web.formation.web",
        "scale web with min_capacity and max_capacity",
    ),
    "negative process count": (
        _set("apps.web.formation", {"web": 1, "worker": -1}),
        "platform.apps.web.formation.worker",
        "0 to 20",
    ),
    "bad process name": (
        _set("apps.web.formation", {"web": 1, "Worker!": 1}),
        "platform.apps.web.formation.Worker!",
        "as in the Procfile",
    ),
    "deregistration delay too long": (
        _set("apps.web.deregistration_delay_seconds", 4000),
        "platform.apps.web.deregistration_delay_seconds",
        "10 to 30",
    ),
    "bad region": (_set("environments.staging.region", "us-east"), "platform.environments.staging.region", "us-east-1"),
    "region AWS does not have": (
        _set("environments.staging.region", "us-east-9"),
        "platform.environments.staging.region",
        "is not an AWS region (botocore",
    ),
    "missing region": (_delete("environments.staging.region"), "platform.environments.staging.region", "add it"),
    "account not 12 digits": (
        _set("environments.staging.account", "1234"),
        "platform.environments.staging.account",
        "12-digit",
    ),
    "account as a number": (
        _set("environments.staging.account", 123456789012),
        "platform.environments.staging.account",
        "as a string",
    ),
    "unknown subnet kind": (
        _set("environments.staging.network.instance_subnets", "isolated"),
        "platform.environments.staging.network.instance_subnets",
        '"public"',
    ),
    "NAT gateway with public subnets": (
        _set("environments.staging.network.nat_gateways", 1),
        "platform.environments.staging.network.nat_gateways",
        "no NAT gateway",
    ),
    "more NAT gateways than zones": (
        _set("environments.production.network.nat_gateways", 4),
        "platform.environments.production.network.nat_gateways",
        "1 to 3",
    ),
    "one availability zone": (
        _set("environments.staging.network.availability_zones", ["us-east-1a"]),
        "platform.environments.staging.network.availability_zones",
        "at least two",
    ),
    "zone of another region": (
        _set("environments.staging.network.availability_zones", ["us-east-1a", "eu-west-1b"]),
        "platform.environments.staging.network.availability_zones",
        "zones of us-east-1",
    ),
    "public CIDR": (
        _set("environments.staging.network.cidr", "8.8.0.0/16"),
        "platform.environments.staging.network.cidr",
        "10.0.0.0/16",
    ),
    "log destination without port": (
        _set("environments.staging.logs.destination", "logs.papertrailapp.com"),
        "platform.environments.staging.logs.destination",
        '"host:port"',
    ),
    "log tls as a string": (
        _set("environments.staging.logs.tls", "yes"),
        "platform.environments.staging.logs.tls",
        "true or false",
    ),
    "certificate that is not an ACM ARN": (
        _set("apps.web.certificate_arn", "arn:aws:iam::123456789012:server/x"),
        "platform.apps.web.certificate_arn",
        "ACM certificate",
    ),
    "baked image without its pipeline": (
        _set("environments.staging.base_image", {"use_baked": True}),
        "platform.environments.staging.base_image.use_baked",
        '"pipeline": true',
    ),
    "unknown rollout option": (
        _set("apps.web.rollout", {"canery": True}),
        "platform.apps.web.rollout.canery",
        "did you mean 'canary'",
    ),
    "batch size and percent together": (
        _set("apps.web.rollout", {"batch_size": 2, "batch_percent": 50}),
        "platform.apps.web.rollout.batch_size",
        "not both",
    ),
    "batch percent above 100": (
        _set("apps.web.rollout", {"batch_percent": 150}),
        "platform.apps.web.rollout.batch_percent",
        "1 to 100",
    ),
    "bake longer than an hour": (
        _set("apps.web.rollout", {"bake_seconds": 7200}),
        "platform.apps.web.rollout.bake_seconds",
        "0 to 3600",
    ),
    "secondary in the environment's own region": (
        _set("environments.production.secondary", {**SECONDARY, "region": "us-east-1"}),
        "platform.environments.production.secondary.region",
        "name another region",
    ),
    "secondary in a region AWS does not have": (
        _set("environments.production.secondary", {**SECONDARY, "region": "us-west-9"}),
        "platform.environments.production.secondary.region",
        "did you mean 'us-west-2'",
    ),
    "secondary domain not a DNS name": (
        _set("environments.production.secondary", {**SECONDARY, "domain": "API.Example"}),
        "platform.environments.production.secondary.domain",
        "lowercase",
    ),
    "secondary without its hosted zone": (
        _set("environments.production.secondary", {k: v for k, v in SECONDARY.items() if k != "hosted_zone_id"}),
        "platform.environments.production.secondary.hosted_zone_id",
        "add it",
    ),
    "secondary hosted zone that is not an id": (
        _set("environments.production.secondary", {**SECONDARY, "hosted_zone_id": "example.com"}),
        "platform.environments.production.secondary.hosted_zone_id",
        "list-hosted-zones",
    ),
    "secondary without zones when the environment lists its own": (
        _set("environments.production.secondary", {k: v for k, v in SECONDARY.items() if k != "availability_zones"}),
        "platform.environments.production.secondary.availability_zones",
        '["us-west-2a", "us-west-2b"]',
    ),
    "secondary with the primary's zones": (
        _set("environments.production.secondary", {**SECONDARY, "availability_zones": ["us-east-1a", "us-east-1b"]}),
        "platform.environments.production.secondary.availability_zones",
        "zones of us-west-2",
    ),
    "secondary with an unknown key": (
        _set("environments.production.secondary", {**SECONDARY, "zone": "Z1"}),
        "platform.environments.production.secondary.zone",
        "",
    ),
    "app certificate in an environment with a secondary": (
        lambda p: (
            _set("environments.production.secondary", SECONDARY)(p),
            _set("apps.web.certificate_arn", "arn:aws:acm:us-east-1:123456789012:certificate/abc")(p),
        ),
        "platform.apps.web.certificate_arn",
        "remove certificate_arn for production",
    ),
    "apps not an object": (_set("apps", ["web"]), "platform.apps", "{...}"),
    "health codes a load balancer cannot match": (
        _set("apps.web.health_check_codes", "200-600"),
        "platform.apps.web.health_check_codes",
        '"200,302"',
    ),
}


@pytest.mark.parametrize("change, path, fix", RULES.values(), ids=RULES.keys())
def test_rule(example_platform: dict[str, Any], change: Callable[[dict[str, Any]], None], path: str, fix: str) -> None:
    platform = copy.deepcopy(example_platform)
    change(platform)
    with pytest.raises(ConfigError) as raised:
        PlatformConfig.from_context(platform)
    message = str(raised.value)
    assert raised.value.path == path
    assert message.startswith(f"{path.replace(chr(10), chr(92) + 'n')}: ")
    assert fix in message
    assert "\n" not in message


def test_missing_platform_names_the_context_key() -> None:
    with pytest.raises(ConfigError, match=r'^platform: is missing; add a "platform" key under "context"'):
        PlatformConfig.from_context(None)


@given(low=st.integers(0, 1000), high=st.integers(1, 1000))
def test_capacity_range_is_accepted_exactly_when_ordered(low: int, high: int) -> None:
    raw = {
        "environments": {"dev": {"region": "us-west-2"}},
        "apps": {"api": {"min_capacity": low, "max_capacity": high}},
    }
    if low <= high:
        settings = PlatformConfig.from_context(raw).apps[0].settings_for("dev")
        assert (settings.min_capacity, settings.max_capacity) == (low, high)
    else:
        with pytest.raises(ConfigError, match="min_capacity"):
            PlatformConfig.from_context(raw)


@given(port=st.integers(-10, 70000))
def test_port_is_accepted_exactly_in_the_unprivileged_range(port: int) -> None:
    raw = {"environments": {"dev": {"region": "us-west-2"}}, "apps": {"api": {"port": port}}}
    if 1024 <= port <= 65535:
        assert PlatformConfig.from_context(raw).apps[0].settings.port == port
    else:
        with pytest.raises(ConfigError, match=r"platform\.apps\.api\.port"):
            PlatformConfig.from_context(raw)


def test_rollout_defaults_and_overrides(example_platform: dict[str, Any]) -> None:
    config = PlatformConfig.from_context(example_platform)
    apps = {app.name: app for app in config.apps}
    assert apps["web"].settings_for("staging").rollout == Strategy()
    assert apps["billing"].settings_for("production").rollout == Strategy(batch_percent=50, bake_seconds=60)
    platform = copy.deepcopy(example_platform)
    platform["apps"]["billing"]["environments"]["staging"]["rollout"] = {"batch_size": 1, "canary": False}
    staging = {a.name: a for a in PlatformConfig.from_context(platform).apps}["billing"].settings_for("staging")
    # An override changes what it names; the app's bake time stays.
    assert staging.rollout == Strategy(canary=False, batch_size=1, batch_percent=None, bake_seconds=60)


@pytest.mark.parametrize(
    "raw",
    [{"batch_size": 0}, {"batch_size": 1001}, {"batch_percent": 0}, {"bake_seconds": -1}, {"canary": "yes"}, {"x": 1}],
)
def test_rollout_settings_are_refused_exactly_where_the_control_plane_refuses_a_strategy(raw: dict[str, Any]) -> None:
    """One model: the configuration's error is the strategy's own, at the configuration's key path."""
    with pytest.raises(StrategyError) as refused:
        Strategy.parse(raw)
    with pytest.raises(ConfigError) as raised:
        AppSettings.parse("api", {"rollout": raw}, "platform.apps.api")
    assert raised.value.path == f"platform.apps.api.rollout.{refused.value.option}"
    assert str(raised.value) == f"{raised.value.path}: {refused.value.problem}; {refused.value.fix}"


def test_instance_types_and_regions_come_from_botocore_s_models() -> None:
    types, regions = aws_catalog.instance_types(), aws_catalog.regions()
    assert {"t3.small", "t4g.small", "m7g.large", "c7i.xlarge"} <= types and "t3.smal" not in types
    assert regions["us-east-1"] == "aws" and regions["cn-north-1"] == "aws-cn"
    assert regions["us-gov-west-1"] == "aws-us-gov" and "us-east-9" not in regions
    # The defaults pass their own rules.
    assert AppSettings(name="web").instance_type in types
    # Every type a fleet can launch has a CPU architecture the CDK reads and a base image exists for.
    assert AppSettings(name="web").instance_type in types
    # Every type the rules let through has a CPU architecture a base image exists for.
    passed = set()
    for instance_type in sorted(types):
        try:
            AppSettings.parse("web", {"instance_type": instance_type}, "platform.apps.web")
        except ConfigError:
            continue
        passed.add(ec2.InstanceType(instance_type).architecture)
    assert passed == set(PARENT_IMAGES)


def test_regions_of_other_partitions_and_types_of_both_architectures_are_accepted() -> None:
    raw = {
        "environments": {"dev": {"region": "eu-central-1"}, "gov": {"region": "us-gov-west-1"}},
        "apps": {"x86": {"instance_type": "c7i.large"}, "arm": {"instance_type": "t4g.micro"}},
    }
    config = PlatformConfig.from_context(raw)
    assert [e.region for e in config.environments] == ["eu-central-1", "us-gov-west-1"]
    types = {app.name: app.settings_for("dev").instance_type for app in config.apps}
    assert types == {"x86": "c7i.large", "arm": "t4g.micro"}
