"""What the platform's workflows share: one Lambda running every task of a Standard state
machine, and the state machine itself, logged and traced."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks

from constructs import Construct
from constructs.acknowledge import acknowledge
from slipway.aws import Throttled
from slipway.settings import TASK_TIMEOUT_SECONDS, app_parameters_path

# Lambda's own transient errors (throttling included), and a task's AWS call still throttled after
# the client's retries (slipway.aws.Throttled), are retried with backoff, never a failure.
RETRYABLE = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
    Throttled.__name__,
]


class WorkflowTasks(Construct):
    """The one Lambda behind every task of a workflow: ``handler`` gets ``{"task", "state", "execution"}``.

    Its own role writes only its own log group (no AWSLambdaBasicExecutionRole); callers
    grant it what its tasks call.
    """

    def __init__(self, scope: Construct, id_: str, *, handler: str, code: lambda_.Code, description: str) -> None:
        super().__init__(scope, id_)
        log_group = logs.LogGroup(self, "Logs", retention=logs.RetentionDays.ONE_MONTH)
        self.role = iam.Role(
            self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"), description=description
        )
        log_group.grant_write(self.role)
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=lambda_.Runtime.PYTHON_3_13,
            architecture=lambda_.Architecture.ARM_64,
            handler=handler,
            code=code,
            memory_size=512,
            timeout=Duration.seconds(TASK_TIMEOUT_SECONDS),
            log_group=log_group,
            role=self.role,
            description=description,
        )
        acknowledge(
            self.function,
            "AwsSolutions-L1",
            "Python 3.13 is pinned on purpose, the runtime of the API function too, whose code the tasks share: "
            "that code is kept compatible with Python 3.11, on which its tests run, and runs on Lambda's 3.13; "
            "moving to a newer runtime is a deliberate change of every function.",
        )

    def task(self, scope: Construct, state_id: str, name: str) -> tasks.LambdaInvoke:
        """A state of ``scope``'s workflow that runs task ``name`` on the execution's state."""
        task = tasks.LambdaInvoke(
            scope,
            state_id,
            lambda_function=self.function,
            payload=sfn.TaskInput.from_object(
                {"task": name, "state": sfn.JsonPath.entire_payload, "execution": sfn.JsonPath.execution_id}
            ),
            payload_response_only=True,
            retry_on_service_exceptions=False,
        )
        task.add_retry(errors=RETRYABLE, interval=Duration.seconds(2), max_attempts=6, backoff_rate=2)
        return task


def standard_workflow(
    scope: Construct, id_: str, *, definition: sfn.IChainable, functions: WorkflowTasks, timeout: Duration
) -> sfn.StateMachine:
    """A Standard state machine whose every state's input and output is logged: its audit trail."""
    machine = sfn.StateMachine(
        scope,
        id_,
        state_machine_type=sfn.StateMachineType.STANDARD,
        definition_body=sfn.DefinitionBody.from_chainable(definition),
        timeout=timeout,
        tracing_enabled=True,
        logs=sfn.LogOptions(
            destination=logs.LogGroup(scope, f"{id_}Logs", retention=logs.RetentionDays.ONE_YEAR),
            level=sfn.LogLevel.ALL,
            include_execution_data=True,
        ),
    )
    acknowledge(
        machine,
        "AwsSolutions-IAM5[Resource::*]",
        "X-Ray tracing and CloudWatch Logs delivery of the state machine need their actions on *: IAM has no "
        "resource level for xray:PutTraceSegments or logs:CreateLogDelivery.",
    )
    function_resource = functions.function.node.default_child
    assert isinstance(function_resource, lambda_.CfnFunction)
    acknowledge(
        machine,
        f"AwsSolutions-IAM5[Resource::<{Stack.of(scope).get_logical_id(function_resource)}.Arn>:*]",
        "Step Functions may invoke any version of the tasks' Lambda it created (CDK's grant), nothing else.",
    )
    return machine


def grant_app_settings(role: iam.IRole, *, env_name: str, reader: str) -> None:
    """Let ``role`` read one app's settings parameter of ``env_name`` (``/slipway/<env>/apps/<app>``,
    slipway.configured), which the stack writes: where a workflow takes what it acts on, never
    from its input. ``reader`` says who reads them, in the acknowledgment."""
    stack = Stack.of(role)
    parameters = f"{app_parameters_path(env_name).lstrip('/')}/*"
    role.add_to_principal_policy(
        iam.PolicyStatement(
            actions=["ssm:GetParameter"],
            resources=[stack.format_arn(service="ssm", resource="parameter", resource_name=parameters)],
        )
    )
    acknowledge(
        role,
        f"AwsSolutions-IAM5[Resource::arn:{stack.partition}:ssm:{stack.region}:<AWS::AccountId>:parameter/{parameters}]",
        f"{reader} reads the settings of the app it acts on: one parameter per app of {env_name} under this path, "
        "written by the stack, and nothing else of SSM.",
    )
