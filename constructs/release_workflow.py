"""The release workflow: build an uploaded source on the builder, then publish its slug as a release."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn

from constructs import Construct
from constructs.release_store import ReleaseStore
from constructs.workflow import WorkflowTasks, standard_workflow

TASK_HANDLER = "slipway.builds.tasks.handler"


class ReleaseWorkflow(Construct):
    """A Standard workflow per build: start → wait, check (until built) → publish, or record
    why it failed. The release (``rN``) exists only when the build succeeded."""

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
    ) -> None:
        super().__init__(scope, id_)
        if not projects:
            raise ValueError("ReleaseWorkflow: give the builder's projects")
        self._tasks = WorkflowTasks(
            self, "Tasks", handler=TASK_HANDLER, code=code, description=f"Slipway release workflow tasks ({env_name})"
        )
        role = self._tasks.role
        release_store.grant_release(role, env=env_name)
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
