"""The rollout state machine: a health-gated, batch-by-batch deploy with automatic rollback."""

from __future__ import annotations

from aws_cdk import ArnFormat, Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks

from constructs import Construct
from constructs.acknowledge import acknowledge
from constructs.release_store import ReleaseStore
from constructs.workflow import WorkflowTasks, grant_app_settings, standard_workflow
from slipway.settings import PLATFORM_ENV

TASK_HANDLER = "slipway.rollout.tasks.handler"


class RolloutStateMachine(Construct):
    """A Standard workflow whose every task is the one rollout Lambda (``slipway.rollout.tasks``).

    lock (the input checked: its fleet, alarms and pacing come from the environment's settings, never
    from the caller) → plan (canary, batches by the strategy) → stage the release on every instance at once
    while they serve → per batch: activate the staged release in place (each instance starts it
    beside the serving one and switches its front; none leaves the load balancer) → wait for
    every invocation → bake, watching the alarms and the batch's targets → next batch → promote
    ``current`` (compare-and-swap) → converge instances launched meanwhile → unlock. Any
    failure rolls the changed instances back to the previous release through the same batch
    steps (in one batch, no bake), leaves ``current`` alone, unlocks, and fails with the
    failing instance and its output.
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
        # An input that is not a rollout of this environment (slipway.rollout.request): nothing touched.
        not_taken = sfn.Fail(self, "RequestRefused", error="RequestRefused", cause_path="$.error.Cause")
        succeeded = sfn.Succeed(self, "Deployed")
        # After `current` moved: the release is current, but something after it failed.
        incomplete = sfn.Fail(self, "DeployedIncompletely", error="ConvergeFailed", cause_path="$.failure.reason")
        # Unlock itself failed after its retries: the lock frees itself when it expires.
        stranded = sfn.Fail(self, "LockLeft", error="UnlockFailed", cause_path="$.failure.reason")

        # Every path ends through an unlock that is retried and, failing that, says so: no lock is
        # ever held on by a failure. No instance ever leaves the load balancer (each switches in
        # place), so there is nothing else to put back.
        def unlock(id_: str, then: sfn.IChainable) -> sfn.IChainable:
            task = self._task("unlock", id_)
            task.add_retry(errors=["States.ALL"], interval=Duration.seconds(2), max_attempts=3, backoff_rate=2)
            failed_too = self._caught(self._task("unlock_failed", f"{id_}Failed"), stranded)
            task.add_catch(failed_too.next(stranded), result_path="$.error")
            return task.next(then)

        # Rollback: the previous release onto the changed instances, then unlock.
        rollback_unlock = unlock("UnlockAfterRollback", failed)
        rollback = self._caught(self._task("rollback"), rollback_unlock)
        rollback_wait = self._poll(
            "RollbackCommand", "command_done", on_ready=rollback_unlock, on_failed=rollback_unlock
        )
        # BATCHES: back through the batch steps below, with the previous release; WAIT: the last
        # resort (a step of those failed), every instance not yet back in one command.
        rolling_back = sfn.Choice(self, "RollbackSent?").when(self._verdict("WAIT"), rollback_wait)
        rollback.next(rolling_back)

        # After `current` moved, a failure cannot roll back (the release is current): report it.
        incomplete_unlock = unlock("UnlockAfterConverge", incomplete)
        converge_failed = self._caught(self._task("converge_failed"), incomplete_unlock).next(incomplete_unlock)

        # After the last batch.
        done_unlock = unlock("Unlock", succeeded)
        converge = self._caught(self._task("converge"), converge_failed)
        converge_wait = self._poll("ConvergeCommand", "command_done", on_ready=done_unlock, on_failed=converge_failed)
        converge.next(sfn.Choice(self, "Converging?").when(self._verdict("WAIT"), converge_wait).otherwise(done_unlock))
        promote = self._caught(self._task("promote"), rollback).next(converge)

        # One batch: activate in place, wait for every invocation, bake (alarms and the batch's targets).
        advance = self._caught(self._task("advance"), rollback)
        send = self._caught(self._task("send"), rollback)
        advance.next(
            sfn.Choice(self, "MoreBatches?")
            .when(sfn.Condition.boolean_equals("$.more", True), send)
            .when(sfn.Condition.boolean_equals("$.rolling_back", True), rollback_unlock)  # advance sets it
            .otherwise(promote)
        )
        rolling_back.when(self._verdict("BATCHES"), send).otherwise(rollback_unlock)
        bake = self._poll("Bake", "baked", on_ready=advance, on_failed=rollback)
        send.next(self._poll("Command", "command_done", on_ready=bake, on_failed=rollback))

        # Stage on every instance at once while they serve; a failure there changed nothing.
        stage = self._caught(self._task("stage"), rollback)
        stage.next(self._poll("StageCommand", "command_done", on_ready=send, on_failed=rollback))

        # Lock and plan.
        plan = self._caught(self._task("plan"), rollback)
        plan.next(sfn.Choice(self, "Planned?").when(sfn.Condition.is_present("$.batches[0]"), stage).otherwise(promote))
        lock = self._task("lock")
        lock.add_catch(not_taken, errors=["RequestRefused"], result_path="$.error")
        lock.add_catch(refused, errors=["LockRefused"], result_path="$.error")
        lock.add_catch(rollback, result_path="$.error")  # nothing changed yet: rollback only unlocks
        return lock.next(plan)

    def _grant_tasks(self, release_store: ReleaseStore, env_name: str) -> None:
        role = self._role
        release_store.grant_rollout(role, env=env_name)
        # What a rollout acts on comes from the environment's settings, never from its input: the
        # function knows its environment and reads the app's parameter (slipway.rollout.tasks.derive).
        self._function.add_environment(PLATFORM_ENV, env_name)
        grant_app_settings(role, env_name=env_name, reader="A rollout")
        stack = Stack.of(self)
        # Reads only: every instance switches in place, so a rollout never moves one out of the
        # load balancer or changes a group's capacity.
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["autoscaling:DescribeAutoScalingGroups", "elasticloadbalancing:DescribeTargetHealth"],
                resources=["*"],
            )
        )
        acknowledge(
            role,
            "AwsSolutions-IAM5[Resource::*]",
            "autoscaling:DescribeAutoScalingGroups and elasticloadbalancing:DescribeTargetHealth support no "
            "resource-level permissions in IAM; they only read groups and the health of targets.",
        )
        # The fleets' alarms (constructs.fleet_monitoring) have no fixed names: CloudFormation names each
        # <stack>-<logical id>-<suffix> in its app's nested stack, itself named <this stack>-<logical id>-<suffix>.
        alarms = f"{stack.stack_name}-*"
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["cloudwatch:DescribeAlarms"],
                resources=[
                    stack.format_arn(
                        service="cloudwatch",
                        resource="alarm",
                        resource_name=alarms,
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )
                ],
            )
        )
        acknowledge(
            role,
            f"AwsSolutions-IAM5[Resource::arn:{stack.partition}:cloudwatch:{stack.region}:<AWS::AccountId>:alarm:"
            f"{alarms}]",
            f"A rollout watches its fleet's alarms, whose names CloudFormation generates in the apps' nested stacks "
            f"of {stack.stack_name}, all starting {stack.stack_name}-: it reads only alarms so named, in this "
            "region and account.",
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
