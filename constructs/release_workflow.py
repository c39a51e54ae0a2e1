"""The release workflow: build an uploaded source on the builder, then publish its slug as a release."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from aws_cdk import Duration
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn

from constructs import Construct
from constructs.acknowledge import acknowledge
from constructs.release_store import ReleaseStore
from constructs.workflow import WorkflowTasks, grant_app_settings, standard_workflow
from slipway.settings import PLATFORM_ENV, PROMOTION_SOURCES, RELEASE_BUCKET
from slipway_release.layout import EVERY_APP, AppKeys

TASK_HANDLER = "slipway.builds.tasks.handler"
WRITER_HANDLER = "slipway.writer.handler"
# A promotion streams its slug through the writer; the API waits for it (API Gateway answers within 29 s).
WRITER_TIMEOUT_SECONDS = 120


class ReleaseWorkflow(Construct):
    """A Standard workflow per build: start → wait, check (until built) → publish, or record
    why it failed. The release (``rN``) exists only when the build succeeded. Beside it, the
    release writer function (the API's config, rollback and promotion releases); both run with
    one role, the only one that may write releases."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        env_name: str,
        code: lambda_.Code,
        release_store: ReleaseStore,
        projects: Sequence[codebuild.IProject],
        build_logs: logs.ILogGroup,
        promotion_sources: Mapping[str, str],
    ) -> None:
        super().__init__(scope, id_)
        if not projects:
            raise ValueError("ReleaseWorkflow: give the builder's projects")
        self._tasks = WorkflowTasks(
            self, "Tasks", handler=TASK_HANDLER, code=code, description=f"Slipway release workflow tasks ({env_name})"
        )
        role = self._tasks.role
        release_store.grant_release(role, env=env_name)
        # The release writer: the API's requests for config, rollback and promotion releases, under the
        # same role, the only one that may write releases (slipway.writer).
        writer_logs = logs.LogGroup(self, "WriterLogs", retention=logs.RetentionDays.ONE_MONTH)
        writer_logs.grant_write(role)
        self._writer = lambda_.Function(
            self,
            "Writer",
            runtime=self._tasks.function.runtime,
            architecture=lambda_.Architecture.ARM_64,
            handler=WRITER_HANDLER,
            code=code,
            memory_size=1024,
            timeout=Duration.seconds(WRITER_TIMEOUT_SECONDS),
            log_group=writer_logs,
            role=role,
            description=f"Slipway release writer ({env_name}): config, rollback and promotion releases",
        )
        acknowledge(
            self._writer,
            "AwsSolutions-L1",
            "Python 3.13 is pinned on purpose: the same runtime as the workflow's tasks and the API, whose code it "
            "shares; moving to a newer runtime is a deliberate change of all of them.",
        )
        for function in (self._tasks.function, self._writer):
            function.add_environment(PLATFORM_ENV, env_name)
            function.add_environment(RELEASE_BUCKET, release_store.bucket.bucket_name)
        if promotion_sources:
            self._writer.add_environment(PROMOTION_SOURCES, json.dumps(dict(sorted(promotion_sources.items()))))
        for source, region in sorted(promotion_sources.items()):
            release_store.grant_promotion_from(role, env=source, region=region, app_env_keys=AppKeys(EVERY_APP, source))
        grant_app_settings(role, env_name=env_name, reader="The release writer")
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["codebuild:StartBuild", "codebuild:BatchGetBuilds", "codebuild:StopBuild"],
                resources=[project.project_arn for project in projects],
            )
        )
        build_logs.grant(role, "logs:GetLogEvents")  # a failed build's reason, from its own log stream
        self._machine = standard_workflow(
            self, "StateMachine", definition=self._definition(), functions=self._tasks, timeout=Duration.hours(1)
        )

    def _definition(self) -> sfn.IChainable:
        record = self._tasks.task(self, "RecordFailure", "fail").next(
            sfn.Fail(self, "BuildFailed", error="BuildFailed", cause_path="$.reason")
        )
        publish = self._tasks.task(self, "Publish", "publish")
        publish.add_catch(record, errors=["States.ALL"], result_path="$.error")
        publish.next(sfn.Succeed(self, "Published"))
        wait = sfn.Wait(self, "WaitBuild", time=sfn.WaitTime.seconds_path("$.timing.poll_seconds"))
        check = self._tasks.task(self, "CheckBuild", "check")
        check.add_catch(record, errors=["States.ALL"], result_path="$.error")
        wait.next(check).next(
            sfn.Choice(self, "Built?")
            .when(sfn.Condition.string_equals("$.verdict", "WAIT"), wait)
            .when(sfn.Condition.string_equals("$.verdict", "FAILED"), record)
            .otherwise(publish)
        )
        start = self._tasks.task(self, "StartBuild", "start")
        start.add_catch(record, errors=["States.ALL"], result_path="$.error")
        return start.next(wait)

    @property
    def state_machine(self) -> sfn.IStateMachine:
        """One execution per build, named by the upload; its history is the build's audit log."""
        return self._machine

    @property
    def role(self) -> iam.IRole:
        return self._tasks.role

    @property
    def writer(self) -> lambda_.IFunction:
        """The release writer the API asks for config, rollback and promotion releases."""
        return self._writer
