"""The SSM Command documents through which the platform reaches instances: rollouts deploy a
release with ``Platform-<env>-Deploy``; ``slipway run`` runs a one-off command with ``Platform-<env>-Run``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aws_cdk import Fn, Names, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_ssm as ssm

from constructs import Construct
from constructs.acknowledge import acknowledge
from constructs.fleet import DEPLOY_PROGRAM
from constructs.release_store import ReleaseStore
from slipway.rollout.commands import (
    ACTION_PARAMETER,
    ACTIONS,
    DEPLOY,
    DIGEST_PARAMETER,
    PROCESS_PARAMETER,
    RELEASE_URL_PARAMETER,
)
from slipway.runs import COMMAND_PARAMETER as RUN_COMMAND_PARAMETER
from slipway.runs import RELEASE_PARAMETER as RUN_RELEASE_PARAMETER
from slipway.runs import STEP as RUN_STEP
from slipway.runs import TIMEOUT_PARAMETER as RUN_TIMEOUT_PARAMETER
from slipway_release import layout, names, oneoff
from slipway_release.procfile import PROCESS_TYPE

# Long enough for a cold deploy (download, unpack, the Procfile's release step, health
# check, switch); the deploy program's own steps time out well within it.
DEPLOY_TIMEOUT_SECONDS = 900


# A one-off's own limit is enforced on the instance (systemd's RuntimeMaxSec); SSM's is a backstop.
RUN_STEP_TIMEOUT_SECONDS = oneoff.MAX_TIMEOUT_SECONDS + 60


def document_name(env: str) -> str:
    """The deploy document's name in ``env``: ``Platform-staging-Deploy``."""
    return f"Platform-{env}-Deploy"


def run_document_name(env: str) -> str:
    """The one-off document's name in ``env``: ``Platform-staging-Run``."""
    return f"Platform-{env}-Run"


def bucket_name_pattern(bucket_name: str) -> str:
    """A regular expression matching exactly ``bucket_name``, which may be a CDK token.

    Dots are the only regex metacharacter a bucket name can hold; a token's dots are
    escaped at deploy time (``Fn::Join("\\.", Fn::Split(".", name))``).
    """
    return Fn.join("\\.", Fn.split(".", bucket_name))


def release_url_pattern(*, bucket_pattern: str, apps: Sequence[str], env: str) -> str:
    """The ``allowedPattern`` of the release URL: one of ``apps`` in ``env`` of one bucket.

    ``bucket_pattern`` is a regular expression matching the bucket's name exactly
    (``re.escape(name)``, or :func:`bucket_name_pattern` for a token). The pattern
    (:func:`slipway_release.layout.release_url_pattern`) admits ``s3://<bucket>/<app>/<env>/r<N>``
    and ``.../current`` only: no other bucket, app or environment, no ``..``, spaces, quotes
    or other shell text (SSM substitutes the value into a shell command). In Java and Python
    ``$`` also admits one trailing newline, which ends the command line and adds nothing to it.
    """
    _check_names(apps=apps, env=env)
    return layout.release_url_pattern(bucket_pattern=bucket_pattern, apps=apps, env=env)


def deploy_document_content(*, bucket_pattern: str, apps: Sequence[str], env: str) -> dict[str, Any]:
    """The exact content (schema 2.2) of the deploy document of ``env``.

    One step runs the instance's deploy program with the release URL, which
    :func:`release_url_pattern` restricts to releases of ``apps`` in ``env``, in the mode
    ``Action`` names: ``stage`` (``deploy --stage URL``: download, verify, unpack, preflight,
    the serving release untouched), ``activate`` (``deploy --activate URL``: switch to the
    staged release), ``deploy`` (both, the default) or ``restart`` (``deploy --restart URL``:
    restart the release the instance runs, a rolling restart's step; ``Process`` names one process
    type to restart). ``Digest`` is the sha256 of the release's ``release.json`` the rollout pinned,
    passed on as ``--digest``. SSM puts the values into the shell text; their patterns admit nothing else.
    """
    url, action = f"{{{{ {RELEASE_URL_PARAMETER} }}}}", f"{{{{ {ACTION_PARAMETER} }}}}"
    process, digest = f"{{{{ {PROCESS_PARAMETER} }}}}", f"{{{{ {DIGEST_PARAMETER} }}}}"
    pinned, only = '${digest:+--digest "$digest"}', '${process:+--process "$process"}'
    return {
        "schemaVersion": "2.2",
        "description": f"Slipway deploy in {env}: runs {DEPLOY_PROGRAM} with a release URL (stage, activate, both, "
        "or restart).",
        "parameters": {
            RELEASE_URL_PARAMETER: {
                "type": "String",
                "description": f"The release to deploy: s3://<release bucket>/<app>/{env}/r<N> or .../current",
                "allowedPattern": release_url_pattern(bucket_pattern=bucket_pattern, apps=apps, env=env),
            },
            ACTION_PARAMETER: {
                "type": "String",
                "description": "stage: download and prepare only; activate: switch to the staged release; "
                "deploy: both; restart: restart the running release",
                "default": DEPLOY,
                "allowedPattern": f"^({'|'.join(ACTIONS)})$",
            },
            DIGEST_PARAMETER: {
                "type": "String",
                "description": "The sha256 of the release's release.json that the rollout pinned: the instance refuses "
                "any other, before staging and before activating (empty: the one current pins, for .../current)",
                "default": "",
                "allowedPattern": f"^({names.SHA256})?$",
            },
            PROCESS_PARAMETER: {
                "type": "String",
                "description": "restart only: the Procfile process type to restart (empty: every process)",
                "default": "",
                "allowedPattern": f"^({PROCESS_TYPE.pattern})?$",
            },
        },
        "mainSteps": [
            {
                "action": "aws:runShellScript",
                "name": "Deploy",
                "inputs": {
                    "runCommand": [
                        f'process="{process}"',
                        f'digest="{digest}"',
                        f'case "{action}" in',
                        f"  stage) exec {DEPLOY_PROGRAM} --stage {url} {pinned} ;;",
                        f"  activate) exec {DEPLOY_PROGRAM} --activate {url} {pinned} ;;",
                        f"  restart) exec {DEPLOY_PROGRAM} --restart {url} {pinned} {only} ;;",
                        f"  *) exec {DEPLOY_PROGRAM} {url} {pinned} ;;",
                        "esac",
                    ],
                    "timeoutSeconds": str(DEPLOY_TIMEOUT_SECONDS),
                },
            }
        ],
    }


def run_document_content(*, env: str) -> dict[str, Any]:
    """The exact content (schema 2.2) of the one-off document of ``env``.

    One step runs ``deploy --run`` (:mod:`slipway_agent.oneoff`): the release must be the one the
    instance runs (the agent refuses another with 125), the command arrives as base64 (its
    pattern admits no shell syntax into this script) and the time limit as digits; systemd
    stops the command at that limit.
    """
    release, command, timeout = (
        f"{{{{ {name} }}}}" for name in (RUN_RELEASE_PARAMETER, RUN_COMMAND_PARAMETER, RUN_TIMEOUT_PARAMETER)
    )
    return {
        "schemaVersion": "2.2",
        "description": f"Slipway run in {env}: one command with the running release's code and config "
        f"(slipway run), through {DEPLOY_PROGRAM} --run.",
        "parameters": {
            RUN_RELEASE_PARAMETER: {
                "type": "String",
                "description": "The release the instance runs: r<N>",
                "allowedPattern": f"^{names.RELEASE_ID}$",
            },
            RUN_COMMAND_PARAMETER: {
                "type": "String",
                "description": f"The shell command, as unpadded URL-safe base64 of at most "
                f"{oneoff.MAX_COMMAND_BYTES} bytes",
                "allowedPattern": oneoff.ENCODED_PATTERN,
            },
            RUN_TIMEOUT_PARAMETER: {
                "type": "String",
                "description": f"Seconds before the command is stopped, 1 to {oneoff.MAX_TIMEOUT_SECONDS}",
                "default": str(oneoff.DEFAULT_TIMEOUT_SECONDS),
                "allowedPattern": oneoff.TIMEOUT_PATTERN,
            },
        },
        "mainSteps": [
            {
                "action": "aws:runShellScript",
                "name": RUN_STEP,
                "inputs": {
                    "runCommand": [f"exec {DEPLOY_PROGRAM} --run {release} --command {command} --timeout {timeout}"],
                    "timeoutSeconds": str(RUN_STEP_TIMEOUT_SECONDS),
                },
            }
        ],
    }


def _send_policy(
    scope: Construct,
    grantee: iam.IRole,
    *,
    document_arn: str,
    document_name: str,
    env: str,
    apps: Sequence[str],
    reads: Sequence[str] = ("ssm:GetCommandInvocation", "ssm:ListCommandInvocations"),
) -> iam.Policy:
    """``ssm:SendCommand`` of one document to this environment's tagged instances, and reading the
    invocations, as a policy of its own (so that its acknowledgments cover nothing else of ``grantee``)."""
    stack = Stack.of(scope)
    instances = stack.format_arn(service="ec2", resource="instance", resource_name="*")
    policy = iam.Policy(
        scope,
        f"Send{Names.node_unique_id(grantee.node)}",
        roles=[grantee],
        statements=[
            iam.PolicyStatement(actions=["ssm:SendCommand"], resources=[document_arn]),
            iam.PolicyStatement(
                actions=["ssm:SendCommand"],
                resources=[instances],
                conditions={
                    "StringEquals": {"ssm:resourceTag/slipway:env": env, "ssm:resourceTag/slipway:app": list(apps)}
                },
            ),
            iam.PolicyStatement(actions=list(reads), resources=["*"]),
        ],
    )
    acknowledge(
        policy,
        f"AwsSolutions-IAM5[Resource::{_as_nag_shows(stack, instances)}]",
        f"Instances come and go with their Auto Scaling groups and cannot be listed; SendCommand reaches "
        f"only those tagged slipway:env={env} and slipway:app={'|'.join(apps)}, and only with {document_name}.",
    )
    acknowledge(
        policy,
        "AwsSolutions-IAM5[Resource::*]",
        f"{' and '.join(reads)} support no resource-level permissions; they only read the status and "
        "output of commands.",
    )
    return policy


def _as_nag_shows(stack: Stack, arn: str) -> str:
    """``arn`` as cdk-nag names it in a granular finding: pseudo parameters as ``<AWS::Region>``."""
    resolved = stack.resolve(arn)
    if isinstance(resolved, str):
        return resolved
    return "".join(part if isinstance(part, str) else f"<{part['Ref']}>" for part in resolved["Fn::Join"][1])


def _check_names(*, apps: Sequence[str], env: str) -> None:
    if not names.is_env_name(env):
        raise ValueError(f"DeployDocument: env {env!r} is not an environment name; use {names.ENV_NAME_RULE}")
    if not apps:
        raise ValueError("DeployDocument: apps is empty; pass the names of the environment's apps")
    for app in apps:
        if not names.is_app_name(app):
            raise ValueError(f"DeployDocument: app {app!r} is not an app name; use {names.APP_NAME_RULE}")
    if len(set(apps)) != len(apps):
        raise ValueError(f"DeployDocument: apps has duplicate names {sorted(apps)}; pass each app once")


class _CommandDocument(Construct):
    """An SSM Command document of fixed name, the log group its output goes to when the sender
    asks (``CloudWatchOutputConfig``), and the grants to send it and to write that output."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        env_name: str,
        apps: Sequence[str],
        name: str,
        content: dict[str, Any],
        output_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, id_)
        _check_names(apps=apps, env=env_name)
        self._env_name = env_name
        self._apps = tuple(apps)
        self._document_name = name
        self._document = ssm.CfnDocument(
            self,
            "Document",
            name=name,
            document_type="Command",
            document_format="JSON",
            content=content,
            # The name is fixed (rollouts and operators address it): a changed content
            # must become a new version of the same document, not a replacement.
            update_method="NewVersion",
        )
        self._log_group = logs.LogGroup(self, "Output", retention=output_retention)

    @property
    def document_name(self) -> str:
        """The document's name (``DocumentName`` of ``SendCommand``)."""
        return self._document_name

    @property
    def document_arn(self) -> str:
        """The document's ARN."""
        return Stack.of(self).format_arn(service="ssm", resource="document", resource_name=self._document.ref)

    @property
    def log_group(self) -> logs.ILogGroup:
        """Where instances write command output (``CloudWatchOutputConfig.CloudWatchLogGroupName``)."""
        return self._log_group

    def _grant_send(self, grantee: iam.IRole, reads: Sequence[str]) -> iam.Policy:
        return _send_policy(
            self,
            grantee,
            document_arn=self.document_arn,
            document_name=self._document_name,
            env=self._env_name,
            apps=self._apps,
            reads=reads,
        )

    def grant_output(self, grantee: iam.IGrantable) -> None:
        """Let ``grantee`` (an instance role) write command output to :attr:`log_group`, and nothing else."""
        self._log_group.grant(grantee, "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams")


class DeployDocument(_CommandDocument):
    """The ``Platform-<env>-Deploy`` SSM Command document and the log group for its output.

    The document runs ``/home/deploy/bin/deploy <release URL>`` on an instance; its
    parameters only admit releases of this environment's apps in its release bucket.
    Who deployed what is in the rollout's history; the log group has what the deploy program said.
    """

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        env_name: str,
        apps: Sequence[str],
        release_store: ReleaseStore,
        output_retention: logs.RetentionDays = logs.RetentionDays.ONE_YEAR,
    ) -> None:
        super().__init__(
            scope,
            id_,
            env_name=env_name,
            apps=apps,
            name=document_name(env_name),
            content=deploy_document_content(
                bucket_pattern=bucket_name_pattern(release_store.bucket.bucket_name), apps=apps, env=env_name
            ),
            output_retention=output_retention,
        )

    def grant_send(self, grantee: iam.IRole) -> iam.Policy:
        """Let ``grantee`` (the rollout's role) run this document on the platform's instances and read results.

        ``ssm:SendCommand`` names this document, and instances only when they are tagged
        ``slipway:env`` = this environment and ``slipway:app`` = one of its apps: an
        instance of another environment, or an untagged one, is refused. Reading
        invocations (``ssm:GetCommandInvocation``, ``ssm:ListCommandInvocations``) has no
        resource to restrict it to. The statements form their own policy, returned, so
        that their acknowledgments cover nothing else of ``grantee``.
        """
        return self._grant_send(grantee, ("ssm:GetCommandInvocation", "ssm:ListCommandInvocations"))


class RunDocument(_CommandDocument):
    """The ``Platform-<env>-Run`` SSM Command document (``slipway run``) and the log group its
    output streams to (``CloudWatchOutputConfig``), which the CLI reads while the command runs."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        env_name: str,
        apps: Sequence[str],
        output_retention: logs.RetentionDays = logs.RetentionDays.ONE_YEAR,
    ) -> None:
        super().__init__(
            scope,
            id_,
            env_name=env_name,
            apps=apps,
            name=run_document_name(env_name),
            content=run_document_content(env=env_name),
            output_retention=output_retention,
        )

    def grant_run(self, grantee: iam.IRole) -> iam.Policy:
        """Let ``grantee`` (the API's role) run one-offs on this environment's instances and read
        their output as it streams (``ListCommands`` to find a one-off, ``GetLogEvents`` its output)."""
        policy = self._grant_send(grantee, ("ssm:GetCommandInvocation", "ssm:ListCommands"))
        self._log_group.grant(grantee, "logs:GetLogEvents")
        return policy
