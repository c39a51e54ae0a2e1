"""The platform configuration: one place that turns the ``platform`` context of
``cdk.json`` into frozen, typed settings.

``app.py``, the tests and ``cdk synth`` all call :meth:`PlatformConfig.from_context`.
Every rule raises :class:`ConfigError` naming the key path (``platform.apps.web.port``)
and what to do about it, so a bad configuration stops synthesis with one line.

Example (the ``platform`` key of ``cdk.json``)::

    {
      "environments": {
        "staging": {"region": "us-east-1", "network": {"instance_subnets": "public"}},
        "production": {
          "region": "us-east-1",
          "account": "123456789012",
          "network": {"instance_subnets": "private", "nat_gateways": 2,
                      "availability_zones": ["us-east-1a", "us-east-1b", "us-east-1c"]},
          "logs": {"destination": "logs.papertrailapp.com:12345", "tls": true}
        }
      },
      "apps": {
        "billing": {
          "port": 8080, "health_check_path": "/healthz", "instance_type": "t3.small",
          "min_capacity": 2, "max_capacity": 4, "formation": {"web": 1, "worker": 2},
          "environments": {"staging": {"min_capacity": 1, "max_capacity": 2}}
        }
      }
    }
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from aws_cdk import aws_ec2 as ec2

from constructs import aws_catalog
from constructs.base_image import PARENT_IMAGES
from slipway.rollout.strategy import Strategy, StrategyError, describe_json
from slipway.slack.rules import Rule, RuleError, parse_rules
from slipway_release import names
from slipway_release.health import DEFAULT_CODES, HealthCodesError, parse_codes
from slipway_release.health import SYNTAX as HEALTH_SYNTAX
from slipway_release.layout import RESERVED_APP_NAMES
from slipway_release.procfile import PROCESS_TYPE, RELEASE, WEB

ACCOUNT = re.compile(r"^\d{12}$")
LINUX_TYPES = 'use a type that runs Amazon Linux 2023, x86_64 (e.g. "t3.small") or arm64 (e.g. "t4g.small")'
CERTIFICATE_ARN = re.compile(r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[A-Za-z0-9-]+$")
HOST_PORT = re.compile(r"^[A-Za-z0-9.-]+:\d{1,5}$")
HOST = re.compile(r"[A-Za-z0-9.-]{1,253}")
HEALTH_CHECK_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")
DOMAIN = re.compile(r"(?=.{4,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
HOSTED_ZONE_ID = re.compile(r"Z[A-Z0-9]{1,31}")


class ConfigError(ValueError):
    """A configuration rule was broken. ``str()`` is one line: key path, problem, fix."""

    def __init__(self, path: str, problem: str, fix: str) -> None:
        # A key with a newline or other control character must not break the one line.
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in path)
        super().__init__(f"{shown}: {problem}; {fix}")
        self.path = path


class _Section:
    """Reads one JSON object at a key path, checking types and refusing unknown keys."""

    def __init__(self, raw: object, path: str, known: tuple[str, ...]) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError(path, f"expected an object, got {describe_json(raw)}", "write it as {...}")
        self.raw, self.path = raw, path
        for key in raw:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
                raise ConfigError(f"{path}.{key}", "unknown key", f"remove it ({hint})")

    def key(self, name: str) -> str:
        return f"{self.path}.{name}"

    def has(self, name: str) -> bool:
        return name in self.raw

    def text(
        self, name: str, default: str | None = None, *, pattern: re.Pattern[str] | None = None, fix: str = ""
    ) -> str:
        value = self._get(name, default)
        if not isinstance(value, str):
            raise ConfigError(self.key(name), f"expected a string, got {describe_json(value)}", fix or "quote it")
        if pattern is not None and not pattern.fullmatch(value):
            raise ConfigError(self.key(name), f"{value!r} is not valid", fix)
        return value

    def optional_text(self, name: str, *, pattern: re.Pattern[str], fix: str) -> str | None:
        if self.raw.get(name) is None:
            return None
        return self.text(name, pattern=pattern, fix=fix)

    def number(self, name: str, default: int | None = None, *, low: int, high: int, fix: str = "") -> int:
        value = self._get(name, default)
        # bool is an int in Python, never in a configuration file.
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(
                self.key(name),
                f"expected a whole number, got {describe_json(value)}",
                f"use a number from {low} to {high}",
            )
        if not low <= value <= high:
            raise ConfigError(self.key(name), f"{value} is out of range", fix or f"use a number from {low} to {high}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise ConfigError(
                self.key(name),
                f"expected true or false, got {describe_json(value)}",
                "write true or false without quotes",
            )
        return value

    def mapping(self, name: str) -> Mapping[str, Any]:
        value = self._get(name, {})
        if not isinstance(value, Mapping):
            raise ConfigError(self.key(name), f"expected an object, got {describe_json(value)}", "write it as {...}")
        return value

    def _get(self, name: str, default: object) -> object:
        if name in self.raw:
            return self.raw[name]
        if default is None:
            raise ConfigError(self.key(name), "is required", "add it")
        return default


@dataclass(frozen=True)
class NetworkSettings:
    """Where an environment's instances live.

    ``{"instance_subnets": "private", "nat_gateways": 2,
    "availability_zones": ["us-east-1a", "us-east-1b", "us-east-1c"], "cidr": "10.20.0.0/16"}``

    ``public`` puts instances in public subnets with no NAT gateway (cheaper, faster to
    create; inbound traffic is still limited to the load balancer by security groups);
    ``private`` puts them behind NAT gateways. Without ``availability_zones`` the VPC
    spans the region's first two zones, resolved at deploy time.
    """

    instance_subnets: Literal["public", "private"] = "public"
    availability_zones: tuple[str, ...] = ()
    nat_gateways: int = 0
    cidr: str = "10.0.0.0/16"
    flow_logs: bool = True

    KEYS = ("instance_subnets", "availability_zones", "nat_gateways", "cidr", "flow_logs")

    @classmethod
    def parse(cls, raw: object, path: str, region: str) -> NetworkSettings:
        section = _Section(raw, path, cls.KEYS)
        subnets = section.text("instance_subnets", "public")
        if subnets not in ("public", "private"):
            raise ConfigError(
                section.key("instance_subnets"),
                f"{subnets!r} is not a subnet kind",
                'use "public" (no NAT, cheaper) or "private" (behind NAT gateways)',
            )
        zones = _availability_zones(section, region)
        nat_default = 1 if subnets == "private" else 0
        most = len(zones) or 2
        if subnets == "private":
            nat = section.number(
                "nat_gateways",
                nat_default,
                low=1,
                high=most,
                fix=f"private subnets need 1 to {most} NAT gateways (one per zone at most)",
            )
        else:
            nat = section.number(
                "nat_gateways",
                0,
                low=0,
                high=0,
                fix='public subnets use no NAT gateway; remove nat_gateways or use "private"',
            )
        cidr = section.text(
            "cidr",
            "10.0.0.0/16",
            pattern=re.compile(r"^10\.\d{1,3}\.0\.0/(1[6-9]|20)$"),
            fix='use a private /16 to /20 block such as "10.0.0.0/16"',
        )
        return cls(
            instance_subnets=subnets,  # type: ignore[arg-type]
            availability_zones=zones,
            nat_gateways=nat,
            cidr=cidr,
            flow_logs=section.flag("flow_logs", True),
        )


def _availability_zones(section: _Section, region: str) -> tuple[str, ...]:
    if not section.has("availability_zones"):
        return ()
    path = section.key("availability_zones")
    value = section.raw["availability_zones"]
    fix = f'list at least two zones of {region}, e.g. ["{region}a", "{region}b"]'
    if not isinstance(value, list) or not all(isinstance(zone, str) for zone in value):
        raise ConfigError(path, f"expected a list of zone names, got {describe_json(value)}", fix)
    if len(value) < 2 or len(set(value)) != len(value):
        raise ConfigError(path, "needs at least two different zones", fix)
    for zone in value:
        if not re.fullmatch(re.escape(region) + r"[a-z]", zone):
            raise ConfigError(path, f"{zone!r} is not a zone of {region}", fix)
    return tuple(value)


@dataclass(frozen=True)
class LogSettings:
    """Where instances send app logs: CloudWatch Logs (what ``slipway logs`` reads), and/or a
    Papertrail-style ``host:port`` syslog destination.

    ``{"cloudwatch": true, "destination": "logs.papertrailapp.com:12345", "tls": true}``;
    ``cloudwatch`` is on unless set to false; without a destination nothing else leaves the
    instance.
    """

    destination: str | None = None
    tls: bool = True
    cloudwatch: bool = True

    KEYS = ("destination", "tls", "cloudwatch")

    @classmethod
    def parse(cls, raw: object, path: str) -> LogSettings:
        section = _Section(raw, path, cls.KEYS)
        destination = section.optional_text(
            "destination", pattern=HOST_PORT, fix='write it as "host:port", e.g. "logs.papertrailapp.com:12345"'
        )
        if destination is not None:
            port = int(destination.rsplit(":", 1)[1])
            if not 1 <= port <= 65535:
                raise ConfigError(
                    section.key("destination"),
                    f"port {port} is out of range",
                    "use the port your log service gave you (1 to 65535)",
                )
        return cls(destination=destination, tls=section.flag("tls", True), cloudwatch=section.flag("cloudwatch", True))


@dataclass(frozen=True)
class BaseImageSettings:
    """An optional AMI baked from ``image/`` by EC2 Image Builder.

    ``{"pipeline": true, "use_baked": true}``: ``pipeline`` creates the pipeline (weekly
    and on demand); ``use_baked`` makes fleets launch from its newest AMI. Turn
    ``use_baked`` on only after the pipeline has produced an image once: without one
    the stack cannot resolve the AMI. Without either, instances start from stock
    Amazon Linux 2023 and provision at boot.
    """

    pipeline: bool = False
    use_baked: bool = False

    KEYS = ("pipeline", "use_baked")

    @classmethod
    def parse(cls, raw: object, path: str) -> BaseImageSettings:
        section = _Section(raw, path, cls.KEYS)
        settings = cls(pipeline=section.flag("pipeline", False), use_baked=section.flag("use_baked", False))
        if settings.use_baked and not settings.pipeline:
            raise ConfigError(
                section.key("use_baked"),
                "fleets cannot launch from a baked image without its pipeline",
                'set "pipeline": true, deploy, run the pipeline once, then set "use_baked": true',
            )
        return settings


@dataclass(frozen=True)
class SlackConfig:
    """The environment's ``/slipway`` Slack command: who may do what, from which channels.

    ``{"rules": [{"actions": ["help", "status", "releases", "config"]},
    {"actions": ["deploy", "rollback", "cycle"], "users": ["U024BE7LH"], "channels": ["C024BE91L"]}]}``
    (Slack user and channel ids); ``response_hosts`` (default ``["hooks.slack.com"]``) is where
    Slack's response URLs may point. Without ``slack`` the environment has no Slack command.
    """

    rules: tuple[Rule, ...]
    response_hosts: tuple[str, ...] = ("hooks.slack.com",)

    KEYS = ("rules", "response_hosts")

    @classmethod
    def parse(cls, raw: object, path: str) -> SlackConfig:
        section = _Section(raw, path, cls.KEYS)
        try:
            rules = parse_rules(section.raw.get("rules"))
        except RuleError as error:
            raise ConfigError(f"{path}.{error.where}", error.problem, error.fix) from None
        hosts = section.raw.get("response_hosts", list(cls.response_hosts))
        if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and HOST.fullmatch(h) for h in hosts):
            raise ConfigError(
                section.key("response_hosts"),
                f"{hosts!r} is not a list of host names",
                'write e.g. ["hooks.slack.com"]',
            )
        return cls(rules=rules, response_hosts=tuple(hosts))


@dataclass(frozen=True)
class SecondarySettings:
    """A second region for an environment (docs/regions.md): a second, passive copy of the whole
    environment there, the release bucket replicated to it, and one name for the API that fails over.

    ``{"region": "us-west-2", "domain": "api.example.com", "hosted_zone_id": "Z0123456789ABC",
    "availability_zones": ["us-west-2a", "us-west-2b"]}``: ``domain`` is the API's one name (a
    Route 53 failover record in the hosted zone ``hosted_zone_id``, which must hold it);
    ``availability_zones`` is needed when the environment lists its own (they are regional).
    """

    region: str
    domain: str
    hosted_zone_id: str
    primary_region: str  # the environment's own region (not a key: its ``region``)
    availability_zones: tuple[str, ...] = ()

    KEYS = ("region", "domain", "hosted_zone_id", "availability_zones")

    @classmethod
    def parse(cls, raw: object, path: str, primary: str, network: NetworkSettings) -> SecondarySettings:
        section = _Section(raw, path, cls.KEYS)
        region = _region(section)
        if region == primary:
            raise ConfigError(
                section.key("region"),
                f"{region!r} is the environment's own region",
                "name another region for the secondary, or remove secondary",
            )
        domain = section.text(
            "domain",
            pattern=DOMAIN,
            fix='use the API\'s DNS name in lowercase, e.g. "api.example.com" (a name in the hosted zone)',
        )
        zone = section.text(
            "hosted_zone_id",
            pattern=HOSTED_ZONE_ID,
            fix='use the Route 53 hosted zone\'s id, e.g. "Z0123456789ABC" (aws route53 list-hosted-zones)',
        )
        zones = _availability_zones(section, region)
        if network.availability_zones and not zones:
            raise ConfigError(
                section.key("availability_zones"),
                f"is missing: the environment lists zones of {primary}, which the secondary cannot use",
                f'list the secondary\'s own, e.g. ["{region}a", "{region}b"]',
            )
        return cls(region=region, domain=domain, hosted_zone_id=zone, primary_region=primary, availability_zones=zones)


@dataclass(frozen=True)
class EnvironmentSettings:
    """One environment, one ``Platform-<name>`` stack.

    ``{"region": "eu-west-1", "account": "123456789012", "network": {...}, "logs": {...}}``;
    ``account`` is optional: without it the stack deploys to the account of the
    credentials ``cdk deploy`` runs with.
    """

    name: str
    region: str
    account: str | None = None
    network: NetworkSettings = field(default_factory=NetworkSettings)
    logs: LogSettings = field(default_factory=LogSettings)
    base_image: BaseImageSettings = field(default_factory=BaseImageSettings)
    slack: SlackConfig | None = None
    secondary: SecondarySettings | None = None

    KEYS = ("region", "account", "network", "logs", "base_image", "slack", "secondary")

    @property
    def stack_name(self) -> str:
        """``Platform-<env>``; ``Platform-<env>-<region>`` for its copy in the secondary region."""
        return f"Platform-{self.name}-{self.region}" if self.is_secondary else f"Platform-{self.name}"

    @property
    def primary_region(self) -> str:
        """The environment's own region (``region`` of its configuration), where changes are made."""
        return self.secondary.primary_region if self.secondary else self.region

    def in_secondary(self) -> EnvironmentSettings:
        """The same environment in its secondary region (``Platform-<env>-<region>``): that region, its
        zones, everything else as configured."""
        assert self.secondary is not None, self.name
        return replace(
            self,
            region=self.secondary.region,
            network=replace(self.network, availability_zones=self.secondary.availability_zones),
        )

    @property
    def is_secondary(self) -> bool:
        return self.secondary is not None and self.region == self.secondary.region

    @classmethod
    def parse(cls, name: str, raw: object, path: str) -> EnvironmentSettings:
        if not names.is_env_name(name):
            raise ConfigError(path, f"{name!r} is not a valid environment name", f"use {names.ENV_NAME_RULE}")
        section = _Section(raw, path, cls.KEYS)
        region = _region(section)
        account = section.optional_text(
            "account", pattern=ACCOUNT, fix='use the 12-digit account id as a string, e.g. "123456789012"'
        )
        network = NetworkSettings.parse(section.mapping("network"), section.key("network"), region)
        secondary = (
            SecondarySettings.parse(section.raw["secondary"], section.key("secondary"), region, network)
            if section.has("secondary")
            else None
        )
        return cls(
            name=name,
            region=region,
            account=account,
            secondary=secondary,
            network=network,
            logs=LogSettings.parse(section.mapping("logs"), section.key("logs")),
            base_image=BaseImageSettings.parse(section.mapping("base_image"), section.key("base_image")),
            slack=SlackConfig.parse(section.raw["slack"], section.key("slack")) if section.has("slack") else None,
        )


def _known(section: _Section, key: str, known: Collection[str], *, what: str, example: str) -> str:
    """``key``'s value if botocore's models know it; else one line naming the nearest name."""
    value = section.text(key, fix=f"use {example}")
    if value not in known:
        near = aws_catalog.closest(value, known)
        raise ConfigError(
            section.key(key),
            f"{value!r} is not {what} ({aws_catalog.source()} knows {len(known)})",
            (f"did you mean {near!r}? " if near else "")
            + f"use {example} (one newer than botocore needs botocore upgraded in requirements.txt)",
        )
    return value


def _region(section: _Section) -> str:
    """A region AWS has (botocore's endpoint data)."""
    return _known(section, "region", aws_catalog.regions(), what="an AWS region", example='a code such as "us-east-1"')


def _instance_type(section: _Section) -> str:
    """An EC2 instance type a fleet can launch (botocore's EC2 model) on a base image's architecture."""
    value = _known(
        section,
        "instance_type",
        aws_catalog.instance_types(),
        what="an EC2 instance type",
        example='a type such as "t3.small" or "t4g.small"',
    )
    why = aws_catalog.unlaunchable(value)
    if why:
        raise ConfigError(section.key("instance_type"), f"{value!r} {why}", LINUX_TYPES)
    # The fleet's image and builder follow the type's CPU architecture, as the CDK reads it.
    try:
        architecture = ec2.InstanceType(value).architecture
    except RuntimeError:  # jsii's error for a name the CDK cannot parse
        architecture = None
    if architecture not in PARENT_IMAGES:
        raise ConfigError(
            section.key("instance_type"),
            f"the CDK cannot tell which CPU architecture {value!r} has, so no base image can be chosen for it",
            LINUX_TYPES,
        )
    return value


def _rollout(raw: Mapping[str, Any], path: str, base: Strategy) -> Strategy:
    """An app's ``rollout`` settings: the control plane's own strategy model, checked here at synth.

    ``{"canary": true, "batch_percent": 25, "bake_seconds": 30}`` (the defaults),
    or ``{"batch_size": 2}`` for a count instead of a percent; an environment's override
    changes only the options it names.
    """
    try:
        return Strategy.parse(raw, base)
    except StrategyError as error:
        raise ConfigError(f"{path}.{error.option}" if error.option else path, error.problem, error.fix) from None


# Whole-number app settings: (lowest, highest, the fix to suggest; empty: the range).
_WHOLE_NUMBER_SETTINGS = {
    "port": (
        1024,
        65535,
        "use 1024 to 65535: apps run as the unprivileged deploy user, the load balancer listens on 80/443",
    ),
    "min_capacity": (0, 1000, ""),
    "max_capacity": (1, 1000, ""),
    "deregistration_delay_seconds": (0, 3600, "use 0 to 3600 seconds; 10 to 30 keeps rollouts fast"),
    "health_check_grace_seconds": (0, 7200, "use 0 to 7200 seconds: time for a new instance to provision and deploy"),
    "target_cpu_percent": (10, 90, ""),
    "root_volume_gb": (8, 1024, ""),
}


@dataclass(frozen=True)
class AppSettings:
    """One app as it runs in one environment (overrides applied).

    ``{"port": 8080, "health_check_path": "/healthz", "instance_type": "t3.small",
    "min_capacity": 2, "max_capacity": 4, "formation": {"web": 1, "worker": 2},
    "environments": {"staging": {"min_capacity": 1, "max_capacity": 2}}}``

    ``port`` is where the ``web`` process listens (``PORT``); the load balancer checks
    ``health_check_path`` there and counts ``health_check_codes`` (default ``"200"``) as healthy,
    as the deploy agent does. ``desired_capacity`` is best left unset: a value in
    the template resets the fleet's size on every deploy of the stack.
    """

    name: str
    port: int = 5000
    health_check_path: str = "/"
    health_check_codes: str = DEFAULT_CODES  # the load balancer's matcher syntax, also the agent's rule
    instance_type: str = "t3.small"
    min_capacity: int = 2
    max_capacity: int = 4
    desired_capacity: int | None = None
    formation: tuple[tuple[str, int], ...] = (("web", 1),)
    deregistration_delay_seconds: int = 15
    health_check_grace_seconds: int = 300
    target_cpu_percent: int = 50
    root_volume_gb: int = 16
    certificate_arn: str | None = None
    rollout: Strategy = field(default_factory=Strategy)

    # Keys an environment override may set: everything but the app's identity.
    SETTINGS = (
        "port",
        "health_check_path",
        "health_check_codes",
        "instance_type",
        "min_capacity",
        "max_capacity",
        "desired_capacity",
        "formation",
        "deregistration_delay_seconds",
        "health_check_grace_seconds",
        "target_cpu_percent",
        "root_volume_gb",
        "certificate_arn",
        "rollout",
    )

    @property
    def processes(self) -> dict[str, int]:
        return dict(self.formation)

    @classmethod
    def parse(cls, name: str, raw: object, path: str, base: AppSettings | None = None) -> AppSettings:
        """Parse ``raw`` over ``base`` (the app's own settings when ``raw`` is an override)."""
        section = _Section(raw, path, cls.SETTINGS)
        start = base or cls(name=name)
        values: dict[str, Any] = {
            key: section.number(key, low=low, high=high, fix=fix)
            for key, (low, high, fix) in _WHOLE_NUMBER_SETTINGS.items()
            if section.has(key)
        }
        if section.has("health_check_path"):
            values["health_check_path"] = section.text(
                "health_check_path", pattern=HEALTH_CHECK_PATH, fix='use a URL path starting with "/", e.g. "/health"'
            )
        if section.has("health_check_codes"):
            codes = section.text("health_check_codes", fix=f"use {HEALTH_SYNTAX}")
            try:
                parse_codes(codes)
            except HealthCodesError as error:
                raise ConfigError(section.key("health_check_codes"), str(error), f"use {HEALTH_SYNTAX}") from None
            values["health_check_codes"] = codes
        if section.has("instance_type"):
            values["instance_type"] = _instance_type(section)
        if section.has("desired_capacity"):
            values["desired_capacity"] = (
                None
                if section.raw["desired_capacity"] is None
                else section.number("desired_capacity", low=0, high=1000)
            )
        if section.has("formation"):
            values["formation"] = _formation(section.mapping("formation"), section.key("formation"))
        if section.has("certificate_arn"):
            values["certificate_arn"] = section.optional_text(
                "certificate_arn",
                pattern=CERTIFICATE_ARN,
                fix="use the ARN of an ACM certificate in the environment's region",
            )
        if section.has("rollout"):
            values["rollout"] = _rollout(section.mapping("rollout"), section.key("rollout"), start.rollout)
        return replace(start, **values)

    def check(self, path: str) -> None:
        """Rules across settings, checked once overrides are applied."""
        if self.min_capacity > self.max_capacity:
            raise ConfigError(
                f"{path}.min_capacity",
                f"{self.min_capacity} is greater than max_capacity {self.max_capacity}",
                "lower min_capacity or raise max_capacity",
            )
        if self.desired_capacity is not None and not self.min_capacity <= self.desired_capacity <= self.max_capacity:
            raise ConfigError(
                f"{path}.desired_capacity",
                f"{self.desired_capacity} is outside min_capacity..max_capacity "
                f"({self.min_capacity}..{self.max_capacity})",
                "set it within that range, or remove it and let scaling decide",
            )


def _formation(raw: Mapping[str, Any], path: str) -> tuple[tuple[str, int], ...]:
    processes: list[tuple[str, int]] = []
    for process, count in raw.items():
        if process == RELEASE:
            raise ConfigError(
                f"{path}.{RELEASE}",
                "'release' runs once per deploy, not as a service",
                "remove it from formation; the Procfile's release: line still runs",
            )
        if not PROCESS_TYPE.fullmatch(process):
            raise ConfigError(
                f"{path}.{process}",
                "is not a valid process type",
                "use letters, digits and _, at most 30 (as in the Procfile)",
            )
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 20:
            raise ConfigError(
                f"{path}.{process}",
                f"{describe_json(count)} is not a process count",
                "use a whole number of processes per instance from 0 to 20",
            )
        processes.append((process, count))
    if dict(processes).get(WEB, 0) != 1:
        raise ConfigError(
            f"{path}.{WEB}",
            "every app runs exactly one web process per instance, on PORT behind its load balancer",
            'set "web": 1 and scale web with min_capacity and max_capacity',
        )
    return tuple(sorted(processes))


@dataclass(frozen=True)
class AppDefinition:
    """An app's own settings and its per-environment overrides, as written."""

    name: str
    settings: AppSettings
    overrides: Mapping[str, AppSettings]

    def settings_for(self, environment: str) -> AppSettings:
        return self.overrides.get(environment, self.settings)


@dataclass(frozen=True)
class PlatformConfig:
    """The whole platform: environments (one stack each) and the apps every one runs."""

    environments: tuple[EnvironmentSettings, ...]
    apps: tuple[AppDefinition, ...]

    KEYS = ("environments", "apps")

    @classmethod
    def from_context(cls, raw: object, path: str = "platform") -> PlatformConfig:
        """Parse and check the ``platform`` context value; raise :class:`ConfigError` on the first problem."""
        if raw is None:
            raise ConfigError(path, "is missing", 'add a "platform" key under "context" in cdk.json')
        section = _Section(raw, path, cls.KEYS)
        raw_envs = section.mapping("environments")
        if not raw_envs:
            raise ConfigError(
                section.key("environments"),
                "no environment is defined",
                'add one, e.g. "staging": {"region": "us-east-1"}',
            )
        environments = tuple(
            EnvironmentSettings.parse(name, value, f"{section.key('environments')}.{name}")
            for name, value in raw_envs.items()
        )
        env_names = tuple(env.name for env in environments)
        apps = tuple(
            _app(name, value, f"{section.key('apps')}.{name}", env_names)
            for name, value in section.mapping("apps").items()
        )
        for env in environments:
            if env.secondary is None:
                continue
            for app in apps:
                if app.settings_for(env.name).certificate_arn:
                    # A certificate is regional: the app's fleet in the secondary region would need its own.
                    raise ConfigError(
                        f"{section.key('apps')}.{app.name}.certificate_arn",
                        f"names a certificate of {env.region}, and {env.name} also runs in {env.secondary.region}",
                        f"remove certificate_arn for {env.name} (apps.{app.name}.environments.{env.name}) "
                        "or the environment's secondary",
                    )
        return cls(environments=environments, apps=apps)

    def stacks(self) -> list[EnvironmentSettings]:
        """One entry per stack to synthesize: each environment, then its secondary region's copy."""
        return [stack for env in self.environments for stack in (env, *([env.in_secondary()] if env.secondary else []))]

    def promotion_sources(self, name: str) -> dict[str, str]:
        """The environments a release may be promoted from into ``name``, and their regions: the others of
        the same account (unnamed accounts are the one of the credentials in use, so the same), whose
        buckets its release writer may read. Promotion across accounts would need the source bucket's
        policy to admit the other account, which this platform does not write."""
        here = self.environment(name)
        return {env.name: env.region for env in self.environments if env.name != name and env.account == here.account}

    def environment(self, name: str) -> EnvironmentSettings:
        for env in self.environments:
            if env.name == name:
                return env
        raise KeyError(name)


def _app(name: str, raw: object, path: str, env_names: tuple[str, ...]) -> AppDefinition:
    if not names.is_app_name(name):
        raise ConfigError(path, f"{name!r} is not a valid app name", f"use {names.APP_NAME_RULE}")
    if name in env_names or name in RESERVED_APP_NAMES:
        # The control plane's grants cover <app>/<env>/ of every app: uploads/<app>/<env>/ of an app named
        # like another environment would fall under that environment's.
        raise ConfigError(
            path,
            f"{name!r} is the name of {'an environment' if name in env_names else 'a folder of the release bucket'}",
            "give the app another name",
        )
    section = _Section(raw, path, (*AppSettings.SETTINGS, "environments"))
    own = {key: value for key, value in section.raw.items() if key != "environments"}
    settings = AppSettings.parse(name, own, path)
    settings.check(path)
    overrides: dict[str, AppSettings] = {}
    for env, override in section.mapping("environments").items():
        override_path = f"{section.key('environments')}.{env}"
        if env not in env_names:
            raise ConfigError(
                override_path, f"{env!r} is not a defined environment", f"use one of: {', '.join(env_names)}"
            )
        overrides[env] = AppSettings.parse(name, override, override_path, base=settings)
        overrides[env].check(override_path)
    return AppDefinition(name=name, settings=settings, overrides=overrides)
