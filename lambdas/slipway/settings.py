"""What synthesis hands the control plane, typed once: the apps, their fleets, the rollout's pacing.

The constructs build these same dataclasses (with CDK tokens for the names AWS chooses) and
write them down in two places: what concerns the whole environment in the functions'
environment (:meth:`ControlPlaneSettings.environment`), and each app's settings in an SSM
parameter of its own, ``/slipway/<env>/apps/<app>`` (:meth:`ControlPlaneSettings.app_parameters`):
Lambda allows a function 4 KB of environment, which the apps' settings (about 1.3 KB each)
passed at the fourth app. The API parses both (:meth:`ControlPlaneSettings.from_environ`); a
rollout and the release writer read the one app they act on (:mod:`slipway.configured`), never
from their caller, and carry its fleet in their state (:meth:`FleetSettings.from_json` reads it
back). No module reads these variables, names or keys by hand.
Pure: no AWS calls.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from slipway.rollout.strategy import Strategy
from slipway.slack.rules import Rule, RuleError, parse_rules
from slipway_release.health import DEFAULT_CODES

DEFAULT_MAX_SOURCE_BYTES = 1024 * 1024 * 1024


class SettingsError(ValueError):
    """The function's configuration is missing or malformed: a deployment problem, not the caller's."""


@dataclass(frozen=True)
class AppRuntime:
    """What a release of an app records from the platform configuration."""

    port: int
    health_check_path: str
    formation: Mapping[str, int]
    health_check_codes: str = DEFAULT_CODES  # slipway_release.health syntax: the agent's and the load balancer's

    def to_json(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "health_check_path": self.health_check_path,
            "health_check_codes": self.health_check_codes,
            "formation": dict(self.formation),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> AppRuntime:
        return cls(
            port=int(raw["port"]),
            health_check_path=str(raw["health_check_path"]),
            health_check_codes=str(raw["health_check_codes"]),
            formation=dict(raw["formation"]),
        )


@dataclass(frozen=True)
class FleetSettings:
    """What a rollout needs of one app's fleet in one environment."""

    group: str  # the Auto Scaling group's name
    target_group: str  # the target group's ARN
    alarms: tuple[str, ...]  # the fleet's alarm names, watched after each batch
    document: str  # the SSM deploy document's name
    output_log_group: str  # where deploy commands write their output
    bucket: str  # the release bucket's name
    url: str  # where the app answers: its load balancer's http(s) URL
    strategy: Strategy = field(default_factory=Strategy)  # the app's default rollout
    # The capacity cdk.json allows (min_capacity, max_capacity): `slipway scale` stays within it.
    min_capacity: int = 0
    max_capacity: int = 1000

    def to_json(self) -> dict[str, Any]:
        values: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        values["alarms"] = list(self.alarms)
        values["strategy"] = self.strategy.as_dict()
        return values

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> FleetSettings:
        try:
            return cls(
                group=str(raw["group"]),
                target_group=str(raw["target_group"]),
                alarms=tuple(str(name) for name in raw["alarms"]),
                document=str(raw["document"]),
                output_log_group=str(raw["output_log_group"]),
                bucket=str(raw["bucket"]),
                url=str(raw["url"]),
                strategy=Strategy.parse(raw.get("strategy")),
                min_capacity=int(raw["min_capacity"]),
                max_capacity=int(raw["max_capacity"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise SettingsError(f"fleet settings are malformed ({type(error).__name__}: {error})") from None


# The rollout tasks' Lambda timeout (constructs.workflow), and the longest watch that fits in it.
TASK_TIMEOUT_SECONDS = 60
MAX_WATCH_SECONDS = 40


@dataclass(frozen=True)
class Timing:
    """How a rollout paces itself: seconds between checks and how long each wait may take."""

    poll_seconds: int = 5  # the state machine's Wait between two watches (and between build checks)
    watch_seconds: int = 20  # a check watches its step this long, every second, before such a Wait
    command_timeout: int = 900  # a deploy command: download, unpack, release phase, health check
    healthy_timeout: int = 300  # a target that did not serve before its switch, to pass the load balancer's checks
    lock_minutes: int = 60  # a lock outlives a dead execution by at most this
    build_timeout: int = 1800  # a build: provisioning the runtimes, installing dependencies, the build: line

    def __post_init__(self) -> None:
        if not 0 <= self.watch_seconds <= MAX_WATCH_SECONDS:
            raise SettingsError(
                f"rollout timing watch_seconds is {self.watch_seconds}; use 0 to {MAX_WATCH_SECONDS} (a watching "
                "check runs in one Lambda invocation, which must end well within the task's timeout)"
            )

    def to_json(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Timing:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise SettingsError(f"rollout timing has unknown keys {sorted(unknown)}; use {sorted(known)}")
        return replace(cls(), **{key: int(value) for key, value in raw.items()})


@dataclass(frozen=True)
class BuildSettings:
    """Where an app's sources are built: the CodeBuild project for its fleet's CPU architecture."""

    project: str  # the CodeBuild project's name
    log_group: str  # where the project's builds log

    def to_json(self) -> dict[str, Any]:
        return {"project": self.project, "log_group": self.log_group}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> BuildSettings:
        try:
            return cls(project=str(raw["project"]), log_group=str(raw["log_group"]))
        except (KeyError, TypeError) as error:
            raise SettingsError(f"build settings are malformed ({type(error).__name__}: {error})") from None


@dataclass(frozen=True)
class RunSettings:
    """Where one-off commands (``slipway run``) go: the SSM run document and its output's log group."""

    document: str  # Platform-<env>-Run
    log_group: str  # where the one-off's output streams (CloudWatchOutputConfig)

    def to_json(self) -> dict[str, str]:
        return {"document": self.document, "log_group": self.log_group}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RunSettings:
        try:
            return cls(document=str(raw["document"]), log_group=str(raw["log_group"]))
        except (KeyError, TypeError) as error:
            raise SettingsError(f"run settings are malformed ({type(error).__name__}: {error})") from None


@dataclass(frozen=True)
class SlackSettings:
    """The ``/slipway`` Slack command of one environment: who may do what, and its signing secret."""

    rules: tuple[Rule, ...]
    signing_secret: str  # the Secrets Manager secret (ARN) that holds the Slack app's signing secret
    # Where Slack's response URLs may point: Slack's own hosts (GovSlack has its own).
    response_hosts: tuple[str, ...] = ("hooks.slack.com",)

    def to_json(self) -> dict[str, Any]:
        return {
            "rules": [rule.to_json() for rule in self.rules],
            "signing_secret": self.signing_secret,
            "response_hosts": list(self.response_hosts),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> SlackSettings:
        try:
            return cls(
                rules=parse_rules(raw["rules"]),
                signing_secret=str(raw["signing_secret"]),
                response_hosts=tuple(str(host) for host in raw["response_hosts"]),
            )
        except (KeyError, TypeError, RuleError) as error:
            raise SettingsError(f"Slack settings are malformed ({type(error).__name__}: {error})") from None


@dataclass(frozen=True)
class AppParameter:
    """One app in one environment, as its SSM parameter holds it: what its releases record, and
    (once the environment has them) its fleet and its builder."""

    runtime: AppRuntime
    fleet: FleetSettings | None = None
    build: BuildSettings | None = None

    def to_json(self) -> dict[str, Any]:
        values: dict[str, Any] = {"runtime": self.runtime.to_json()}
        if self.fleet is not None:
            values["fleet"] = self.fleet.to_json()
        if self.build is not None:
            values["build"] = self.build.to_json()
        return values

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> AppParameter:
        try:
            return cls(
                runtime=AppRuntime.from_json(raw["runtime"]),
                fleet=FleetSettings.from_json(raw["fleet"]) if "fleet" in raw else None,
                build=BuildSettings.from_json(raw["build"]) if "build" in raw else None,
            )
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, SettingsError):
                raise
            raise SettingsError(f"app settings are malformed ({type(error).__name__}: {error})") from None


def app_parameters_path(env: str) -> str:
    """The SSM path under which each app of ``env`` has its settings' parameter (read in one
    GetParametersByPath, which IAM authorizes against this path)."""
    return f"/slipway/{env}/apps"


def app_parameter_name(env: str, app: str) -> str:
    """The SSM parameter holding the settings of ``app`` in ``env``."""
    return f"{app_parameters_path(env)}/{app}"


def release_bucket_parameter_name(env: str) -> str:
    """The SSM parameter in which ``env``'s stack names its release bucket: where another environment
    of the account reads the release it promotes (the bucket's name is CloudFormation's choice)."""
    return f"/slipway/{env}/release-bucket"


def active_region_parameter_name(env: str) -> str:
    """The SSM parameter (one in each of an environment's regions) naming the region that takes changes;
    absent, it is the primary. Operators write it to move changes to the other region (docs/regions.md)."""
    return f"/slipway/{env}/active-region"


@dataclass(frozen=True)
class RegionSettings:
    """An environment in two regions: ``primary`` takes changes unless the active-region parameter
    names ``secondary``; the other answers reads only."""

    primary: str
    secondary: str

    @classmethod
    def from_json(cls, raw: Any) -> RegionSettings:
        if not isinstance(raw, dict) or not all(isinstance(raw.get(k), str) for k in ("primary", "secondary")):
            raise SettingsError(f'{REGIONS_JSON} must be {{"primary": "<region>", "secondary": "<region>"}}')
        return cls(primary=raw["primary"], secondary=raw["secondary"])

    def to_json(self) -> dict[str, str]:
        return {"primary": self.primary, "secondary": self.secondary}


# The variables the control plane's functions read, each written by the constructs.
RELEASE_BUCKET, PLATFORM_ENV = "RELEASE_BUCKET", "PLATFORM_ENV"
STATE_MACHINE_ARN = "STATE_MACHINE_ARN"
RELEASE_WORKFLOW_ARN = "RELEASE_WORKFLOW_ARN"
SLACK_JSON = "SLACK_JSON"
RUNS_JSON = "RUNS_JSON"
APP_LOGS = "APP_LOGS"
MAX_SOURCE_BYTES = "MAX_SOURCE_BYTES"
REGIONS_JSON = "REGIONS_JSON"
# The release writer (its function's name), which the API asks to make config, rollback and promotion releases.
RELEASE_WRITER = "RELEASE_WRITER"
# The writer's: the environments of this account a release may be promoted from, {env: region} as JSON.
PROMOTION_SOURCES = "PROMOTION_SOURCES"
# Only where waiting makes no sense (the local platform, tests): overrides of Timing as JSON.
ROLLOUT_TIMING = "ROLLOUT_TIMING"


def rollout_timing(environ: Mapping[str, str]) -> Timing:
    """The rollouts' pacing in a function's environment: the defaults, or :data:`ROLLOUT_TIMING`'s
    overrides where one is set (the local platform and tests)."""
    return Timing.from_json(json.loads(environ.get(ROLLOUT_TIMING) or "{}"))


@dataclass(frozen=True)
class ControlPlaneSettings:
    """The API function's whole configuration."""

    bucket: str
    env: str
    apps: Mapping[str, AppRuntime]
    fleets: Mapping[str, FleetSettings] = field(default_factory=dict)
    state_machine: str | None = None
    builds: Mapping[str, BuildSettings] = field(default_factory=dict)
    release_workflow: str | None = None
    slack: SlackSettings | None = None
    runs: RunSettings | None = None
    app_logs: str | None = None  # the log group of every app's processes (slipway logs)
    max_source_bytes: int = DEFAULT_MAX_SOURCE_BYTES
    timing: Timing = field(default_factory=Timing)
    regions: RegionSettings | None = None  # an environment with a secondary region
    release_writer: str | None = None  # the function that makes config, rollback and promotion releases

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], app_parameters: Mapping[str, str]) -> ControlPlaneSettings:
        """Parse the function's environment and its apps' parameters (app name to the parameter's
        value); :class:`SettingsError` naming what is missing or wrong."""
        try:
            apps: dict[str, AppParameter] = {}
            for name, text in app_parameters.items():
                try:
                    apps[name] = AppParameter.from_json(json.loads(text))
                except (SettingsError, ValueError) as error:
                    raise SettingsError(
                        f"the parameter {app_parameter_name(environ[PLATFORM_ENV], name)}: {error}"
                    ) from None
            return cls(
                bucket=environ[RELEASE_BUCKET],
                env=environ[PLATFORM_ENV],
                apps={name: app.runtime for name, app in apps.items()},
                fleets={name: app.fleet for name, app in apps.items() if app.fleet is not None},
                state_machine=environ.get(STATE_MACHINE_ARN) or None,
                builds={name: app.build for name, app in apps.items() if app.build is not None},
                release_workflow=environ.get(RELEASE_WORKFLOW_ARN) or None,
                slack=SlackSettings.from_json(json.loads(environ[SLACK_JSON])) if environ.get(SLACK_JSON) else None,
                runs=RunSettings.from_json(json.loads(environ[RUNS_JSON])) if environ.get(RUNS_JSON) else None,
                app_logs=environ.get(APP_LOGS) or None,
                max_source_bytes=int(environ.get(MAX_SOURCE_BYTES) or DEFAULT_MAX_SOURCE_BYTES),
                timing=rollout_timing(environ),
                regions=RegionSettings.from_json(json.loads(environ[REGIONS_JSON]))
                if environ.get(REGIONS_JSON)
                else None,
                release_writer=environ.get(RELEASE_WRITER) or None,
            )
        except KeyError as missing:
            raise SettingsError(f"the function's environment has no {missing}; deploy the Platform stack") from None
        except (TypeError, ValueError) as error:
            if isinstance(error, SettingsError):
                raise
            raise SettingsError(f"the function's environment is malformed ({error})") from None

    def environment(self, to_json: Any = None) -> dict[str, str]:
        """The variables that carry these settings; ``to_json`` renders JSON (``Stack.to_json_string``
        when values are CDK tokens)."""
        render = to_json or (lambda value: json.dumps(value, sort_keys=True, separators=(",", ":")))
        variables = {RELEASE_BUCKET: self.bucket, PLATFORM_ENV: self.env}
        if self.state_machine:
            variables[STATE_MACHINE_ARN] = self.state_machine
        if self.release_workflow:
            variables[RELEASE_WORKFLOW_ARN] = self.release_workflow
        if self.slack:
            variables[SLACK_JSON] = render(self.slack.to_json())
        if self.runs:
            variables[RUNS_JSON] = render(self.runs.to_json())
        if self.app_logs:
            variables[APP_LOGS] = self.app_logs
        if self.regions:
            variables[REGIONS_JSON] = render(self.regions.to_json())
        if self.release_writer:
            variables[RELEASE_WRITER] = self.release_writer
        return variables

    def app_parameters(self, to_json: Any = None) -> dict[str, str]:
        """Each app's parameter (:func:`app_parameter_name`) and its value: the app's settings as JSON,
        rendered by ``to_json`` as in :meth:`environment`."""
        render = to_json or (lambda value: json.dumps(value, sort_keys=True, separators=(",", ":")))
        return {
            app_parameter_name(self.env, name): render(
                AppParameter(runtime, self.fleets.get(name), self.builds.get(name)).to_json()
            )
            for name, runtime in sorted(self.apps.items())
        }
