"""The rollout state machine: a health-gated, batch-by-batch deploy with automatic rollback."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks

from constructs import Construct
from constructs.acknowledge import acknowledge
from constructs.release_store import ReleaseStore
from constructs.workflow import WorkflowTasks, standard_workflow

TASK_HANDLER = "slipway.rollout.tasks.handler"


class RolloutStateMachine(Construct):
    """A Standard workflow whose every task is the one rollout Lambda (``slipway.rollout.tasks``).

    lock → plan (surge first if the fleet is too small) → stage the release on every instance
    at once while they serve → per batch: detach (standby + deregister, drain) → activate the
    staged release → wait for every invocation → attach →
    wait for healthy targets → bake, watching alarms → next batch → promote ``current``
    (compare-and-swap) → converge instances launched meanwhile → unsurge → unlock. Any
    failure rolls the changed instances back to the previous release through the same batch
    steps (drained, in batches as large as the fleet's minimum allows, no bake), leaves
    ``current`` alone, unlocks, and fails with the failing instance and its output.
    """

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        env_name: str,
        code: lambda_.Code,
        release_store: ReleaseStore,
    ) -> None:
        super().__init__(scope, id_)
        self._tasks = WorkflowTasks(
            self, "Tasks", handler=TASK_HANDLER, code=code, description=f"Slipway rollout tasks ({env_name})"
        )
        self._function = self._tasks.function
        self._role = self._tasks.role
        self._grant_tasks(release_store, env_name)
        self._machine = standard_workflow(
            self, "StateMachine", definition=self._definition(), functions=self._tasks, timeout=Duration.hours(6)
        )

    def _task(self, name: str, id_: str | None = None) -> tasks.LambdaInvoke:
        """The rollout Lambda running task ``name`` (state id ``id_``, default from the name)."""
        return self._tasks.task(self, id_ or name.title().replace("_", ""), name)

    def _wait(self, name: str, seconds_path: str = "$.timing.poll_seconds") -> sfn.Wait:
        return sfn.Wait(self, name, time=sfn.WaitTime.seconds_path(seconds_path))

    @staticmethod
    def _verdict(state: str) -> sfn.Condition:
        return sfn.Condition.string_equals("$.verdict", state)

    def _poll(self, name: str, task: str, *, on_ready: sfn.IChainable, on_failed: sfn.IChainable) -> tasks.LambdaInvoke:
        """Check at once (the check watches its step for up to ``timing.watch_seconds``, every second),
        then go on, fail, or wait and check again, by the check's verdict."""
        wait = self._wait(f"Wait{name}")
        check = self._caught(self._task(task, f"Check{name}"), on_failed)
        choice = (
            sfn.Choice(self, f"{name}?")
            .when(self._verdict("WAIT"), wait)
            .when(self._verdict("FAILED"), on_failed)
            .otherwise(on_ready)
        )
        check.next(choice)
        wait.next(check)
        return check

    @staticmethod
    def _caught(task: tasks.LambdaInvoke, handler: sfn.IChainable) -> tasks.LambdaInvoke:
        """Route any error of ``task`` to ``handler`` with the error under ``$.error``."""
        task.add_catch(handler, errors=["States.ALL"], result_path="$.error")
        return task

    def _definition(self) -> sfn.IChainable:
        failed = sfn.Fail(self, "RolledBack", error="RolloutFailed", cause_path="$.failure.reason")
        refused = sfn.Fail(self, "Refused", error="LockHeld", cause_path="$.error.Cause")
        succeeded = sfn.Succeed(self, "Deployed")
        # After `current` moved: the release is current, but something after it failed.
        incomplete = sfn.Fail(self, "DeployedIncompletely", error="ConvergeFailed", cause_path="$.failure.reason")
        # Unlock itself failed after its retries: the lock frees itself when it expires.
        stranded = sfn.Fail(self, "LockLeft", error="UnlockFailed", cause_path="$.failure.reason")

        # Every path ends through an unlock that is retried and, failing that, says so: no lock is
        # ever held on by a failure, and no instance stays in standby (rollback attaches first).
        def unlock(id_: str, then: sfn.IChainable) -> sfn.IChainable:
            task = self._task("unlock", id_)
            task.add_retry(errors=["States.ALL"], interval=Duration.seconds(2), max_attempts=3, backoff_rate=2)
            task.add_catch(self._task("unlock_failed", f"{id_}Failed").next(stranded), result_path="$.error")
            return task.next(then)

        # Rollback: previous release onto the changed instances, then unsurge and unlock.
        rollback_unlock = unlock("UnlockAfterRollback", failed)
        rollback_unsurge = self._caught(self._task("unsurge", "UnsurgeAfterRollback"), rollback_unlock)
        rollback_unsurge.next(rollback_unlock)
        rollback = self._caught(self._task("rollback"), rollback_unsurge)
        rollback_wait = self._poll(
            "RollbackCommand", "command_done", on_ready=rollback_unsurge, on_failed=rollback_unsurge
        )
        # BATCHES: back through the batch steps below, with the previous release; WAIT: the last
        # resort (a step of those failed), every instance not yet back in one command.
        rolling_back = sfn.Choice(self, "RollbackSent?").when(self._verdict("WAIT"), rollback_wait)
        rollback.next(rolling_back)

        # After `current` moved, a failure cannot roll back (the release is current): report it.
        incomplete_unlock = unlock("UnlockAfterConverge", incomplete)
        incomplete_unsurge = self._caught(self._task("unsurge", "UnsurgeAfterConverge"), incomplete_unlock)
        incomplete_unsurge.next(incomplete_unlock)
        converge_failed = self._task("converge_failed").next(incomplete_unsurge)

        # After the last batch.
        done_unlock = unlock("Unlock", succeeded)
        unsurge = self._caught(self._task("unsurge"), converge_failed)
        unsurge.next(done_unlock)
        converge = self._caught(self._task("converge"), converge_failed)
        converge_wait = self._poll("ConvergeCommand", "command_done", on_ready=unsurge, on_failed=converge_failed)
        converge.next(sfn.Choice(self, "Converging?").when(self._verdict("WAIT"), converge_wait).otherwise(unsurge))
        promote = self._caught(self._task("promote"), rollback).next(converge)

        # One batch.
        advance = self._caught(self._task("advance"), rollback)
        detach = self._caught(self._task("detach"), rollback)
        advance.next(
            sfn.Choice(self, "MoreBatches?")
            .when(sfn.Condition.boolean_equals("$.more", True), detach)
            .when(sfn.Condition.boolean_equals("$.rolling_back", True), rollback_unsurge)  # advance sets it
            .otherwise(promote)
        )
        rolling_back.when(self._verdict("BATCHES"), detach).otherwise(rollback_unsurge)
        # The bake: the fleet's alarms watched every poll, so a firing alarm (or a cancel) stops it at once.
        baked = self._caught(self._task("baked"), rollback)
        bake_wait = self._wait("Bake").next(baked)
        baked.next(
            sfn.Choice(self, "Baked?")
            .when(self._verdict("WAIT"), bake_wait)
            .when(self._verdict("FAILED"), rollback)
            .otherwise(advance)
        )
        attach = self._caught(self._task("attach"), rollback)
        attach.next(self._poll("Healthy", "healthy", on_ready=baked, on_failed=rollback))
        send = self._caught(self._task("send"), rollback)
        send.next(self._poll("Command", "command_done", on_ready=attach, on_failed=rollback))
        detach.next(self._poll("Drained", "drained", on_ready=send, on_failed=rollback))

        # Stage on every instance at once while they serve; a failure there changed nothing.
        stage = self._caught(self._task("stage"), rollback)
        stage.next(self._poll("StageCommand", "command_done", on_ready=detach, on_failed=rollback))

        # Lock and plan.
        plan = self._caught(self._task("plan"), rollback)
        plan_wait = self._wait("WaitSurge").next(plan)
        plan.next(
            sfn.Choice(self, "Planned?")
            .when(self._verdict("WAIT"), plan_wait)
            .when(sfn.Condition.is_present("$.batches[0]"), stage)
            .otherwise(promote)
        )
        lock = self._task("lock")
        lock.add_catch(refused, errors=["LockRefused"], result_path="$.error")
        lock.add_catch(rollback, result_path="$.error")  # nothing changed yet: rollback only unlocks
        return lock.next(plan)

    def _grant_tasks(self, release_store: ReleaseStore, env_name: str) -> None:
        role = self._role
        release_store.grant_rollout(role, env=env_name)
        acknowledge(
            role,
            "AwsSolutions-IAM5[Resource::*]",
            "Auto Scaling standby and capacity changes are conditioned on the slipway:env tag; the Describe* calls "
            "it also grants on * (groups, target health and attributes, alarms) have no resource level in IAM.",
        )
        acknowledge(
            role,
            f"AwsSolutions-IAM5[Resource::arn:{Stack.of(self).partition}:elasticloadbalancing:{Stack.of(self).region}"
            ":<AWS::AccountId>:targetgroup/*]",
            f"Target registration is limited by the slipway:env={env_name} tag to this environment's target groups, "
            "whose names CloudFormation generates.",
        )
        tagged = {"StringEquals": {"autoscaling:ResourceTag/slipway:env": env_name}}
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["autoscaling:EnterStandby", "autoscaling:ExitStandby", "autoscaling:SetDesiredCapacity"],
                resources=["*"],
                conditions=tagged,
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "autoscaling:DescribeAutoScalingGroups",
                    "elasticloadbalancing:DescribeTargetHealth",
                    "elasticloadbalancing:DescribeTargetGroupAttributes",
                    "cloudwatch:DescribeAlarms",
                ],
                resources=["*"],
            )
        )
        stack = Stack.of(self)
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets"],
                resources=[stack.format_arn(service="elasticloadbalancing", resource="targetgroup", resource_name="*")],
                conditions={"StringEquals": {"aws:ResourceTag/slipway:env": env_name}},
            )
        )

    @property
    def role(self) -> iam.IRole:
        """The role every task runs with."""
        return self._role

    @property
    def function(self) -> lambda_.IFunction:
        """The Lambda that runs every task."""
        return self._function

    @property
    def state_machine(self) -> sfn.IStateMachine:
        """The Standard workflow; one execution per rollout, its history the audit log."""
        return self._machine
