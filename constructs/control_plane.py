"""The control plane of one environment: the release API on API Gateway, its function and
the Basic-auth authorizer with its credentials secret."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from aws_cdk import ArnFormat, CfnOutput, Duration, Fn, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigateway
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_route53 as route53
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_ssm as ssm
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_wafv2 as wafv2

from constructs import Construct
from constructs.acknowledge import acknowledge
from constructs.api_contract import ApiContract
from constructs.config import AppSettings, SlackConfig
from constructs.deploy_document import RunDocument
from constructs.release_store import ReleaseStore
from slipway.settings import (
    AppRuntime,
    BuildSettings,
    ControlPlaneSettings,
    FleetSettings,
    RegionSettings,
    RunSettings,
    SlackSettings,
    active_region_parameter_name,
    app_parameter_name,
    app_parameters_path,
)
from slipway_release import names
from slipway_release.layout import slack_requests

RUNTIME = lambda_.Runtime.PYTHON_3_13
# Powertools publishes each layer version's ARN as a public SSM parameter per runtime
# and architecture; resolved at deploy time, so synthesis needs no AWS call.
POWERTOOLS_LAYER_PARAMETER = "/aws/service/powertools/python/arm64/python3.13/3.37.0"
STAGE_NAME = "v1"
# Route 53's health check of the primary API (docs/regions.md): the name fails over after
# FAILURE_THRESHOLD failed checks REQUEST_INTERVAL_SECONDS apart (Route 53's standard interval).
HEALTH_PATH = f"/{STAGE_NAME}/health"
HEALTH_REQUEST_INTERVAL_SECONDS = 30
HEALTH_FAILURE_THRESHOLD = 3
# API Gateway keeps an authorizer's answer per Authorization header this long; the
# authorizer's own cache of the secret (CREDENTIALS_CACHE_SECONDS) adds to it.
AUTHORIZER_CACHE = Duration.minutes(5)
# For the whole stage: a handful of operators and CI jobs; sources go straight to S3
# through presigned URLs, so API calls are small and few.
THROTTLING_RATE_LIMIT = 10
THROTTLING_BURST_LIMIT = 20
# Letters and digits only: the password goes into netrc files, shell variables and
# `user:password` URLs, where `:`, quotes, spaces and `#` need escaping.
PASSWORD_LENGTH = 40

# Per client address and 5 minutes (5 requests a second on average): far above what the CLI and
# the console send while following a deploy (one request every 2 s), far below a password guesser.
RATE_LIMIT_PER_5_MINUTES = 1500
# What API Gateway's request validator found, in a gateway response (the local front fills it the same way).
VALIDATION_ERROR = "$context.error.validationErrorString"
# One JSON object per request. `user` is the authorizer's context: who did what.
ACCESS_LOG_FIELDS = {
    "requestId": "$context.requestId",
    "time": "$context.requestTime",
    "ip": "$context.identity.sourceIp",
    "user": "$context.authorizer.user",
    "method": "$context.httpMethod",
    "resource": "$context.resourcePath",
    "path": "$context.path",
    "status": "$context.status",
    "responseLength": "$context.responseLength",
    "latencyMs": "$context.responseLatency",
    "authorizerError": "$context.authorizer.error",
    "error": "$context.error.message",
    "userAgent": "$context.identity.userAgent",
}


# Why each route the document leaves outside Basic auth (``security: []``) has no authorizer.
_OPEN_ROUTES = {
    ("GET", "/health"): "Route 53's health check of this region's API (docs/regions.md) sends no credentials: "
    "GET /health answers only whether this region's function can read its release bucket (HeadBucket; if not, "
    "the error's class name), with the environment's and region's names, and changes nothing.",
    ("POST", "/slack/commands"): "Slack cannot send Basic credentials: the function verifies each request's Slack "
    "signature (HMAC-SHA256 of the timestamp and body under the app's signing secret, five-minute window).",
}


class ControlPlane(Construct):
    """The release API of one environment.

    A REST API built from the OpenAPI document's routes sends every request, once a
    Lambda REQUEST authorizer has checked its HTTP Basic credentials against a Secrets
    Manager secret (generated at deploy time; ``{"admin": "<password>"}``, add users as
    keys), to one function that publishes and reads releases in the release bucket.
    The stage is throttled and writes JSON access logs naming the user of each request.
    """

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        env_name: str,
        apps: Sequence[AppSettings],
        release_store: ReleaseStore,
        code: lambda_.Code,
        contract: ApiContract,
        slack: SlackConfig | None = None,
    ) -> None:
        super().__init__(scope, id_)
        if not names.is_env_name(env_name):
            raise ValueError(
                f"ControlPlane: env_name {env_name!r} is not an environment name; use {names.ENV_NAME_RULE}"
            )
        app_names = [app.name for app in apps]
        if len(set(app_names)) != len(app_names):
            raise ValueError(f"ControlPlane: apps has duplicate names {sorted(app_names)}; pass each app once")
        if not contract.routes:
            raise ValueError(
                "ControlPlane: the contract has no routes; pass ApiContract.from_openapi(<the API's document>)"
            )
        self._env_name = env_name
        self._secret = self._build_secret(env_name)
        self._authorizer_function = self._build_authorizer_function(code)
        self._api_function = self._build_api_function(code, env_name, apps, release_store)
        self._api = self._build_api(env_name)
        self._add_routes(contract)
        self._web_acl = self._build_web_acl(env_name)
        self._slack_secret = self._enable_slack(env_name, slack, release_store) if slack is not None else None
        # RestApi's own unnamed "Endpoint" output would repeat ApiUrl without saying what it is.
        self._api.node.try_remove_child("Endpoint")
        CfnOutput(self, "ApiUrl", value=self._api.url, description=f"Slipway API of {env_name}")
        CfnOutput(
            self,
            "CredentialsSecret",
            value=self._secret.secret_name,
            description="API users and passwords: aws secretsmanager get-secret-value --secret-id <this> "
            "--query SecretString --output text",
        )

    def _build_secret(self, env_name: str) -> secretsmanager.Secret:
        secret = secretsmanager.Secret(
            self,
            "Credentials",
            description=f"Slipway API users of {env_name}: a JSON object of user names to passwords",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template=json.dumps({}),
                generate_string_key="admin",
                exclude_punctuation=True,
                include_space=False,
                password_length=PASSWORD_LENGTH,
            ),
        )
        acknowledge(
            secret,
            "AwsSolutions-SMG4",
            "These are people's HTTP Basic passwords, kept in their netrc or CLI configuration: an automatic "
            "rotation would lock them out. Operators change them with put-secret-value.",
        )
        return secret

    def _build_role(self, id_: str, description: str, log_group: logs.ILogGroup) -> iam.Role:
        # An own role instead of AWSLambdaBasicExecutionRole: writing to its own log group only.
        role = iam.Role(self, id_, assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"), description=description)
        log_group.grant_write(role)
        return role

    def _build_function(
        self,
        id_: str,
        *,
        code: lambda_.Code,
        handler: str,
        description: str,
        environment: Mapping[str, str],
        memory_size: int,
        timeout: Duration,
        layers: Sequence[lambda_.ILayerVersion] = (),
    ) -> lambda_.Function:
        log_group = logs.LogGroup(
            self, f"{id_}Logs", retention=logs.RetentionDays.ONE_MONTH, removal_policy=RemovalPolicy.DESTROY
        )
        function = lambda_.Function(
            self,
            id_,
            runtime=RUNTIME,
            architecture=lambda_.Architecture.ARM_64,
            handler=handler,
            code=code,
            description=description,
            environment=dict(environment),
            memory_size=memory_size,
            timeout=timeout,
            layers=list(layers),
            log_group=log_group,
            role=self._build_role(f"{id_}Role", description, log_group),
        )
        acknowledge(
            function,
            "AwsSolutions-L1",
            "Python 3.13 is pinned on purpose, the runtime of all of Slipway's functions (the API's Powertools "
            "layer parameter is its python3.13 build): their code is kept compatible with Python 3.11, on which "
            "its tests run, and runs on Lambda's 3.13; a newer runtime is a deliberate change of runtime and layer.",
        )
        return function

    def _build_authorizer_function(self, code: lambda_.Code) -> lambda_.Function:
        function = self._build_function(
            "AuthorizerFunction",
            code=code,
            handler="slipway.authorizer.handler",
            description="Checks the HTTP Basic credentials of Slipway API requests",
            environment={"CREDENTIALS_SECRET_ARN": self._secret.secret_arn},
            memory_size=256,
            timeout=Duration.seconds(10),
        )
        # GetSecretValue only, on this one secret: the authorizer calls nothing else of Secrets Manager
        # (CDK's grant_read adds DescribeSecret, which no code calls).
        function.add_to_role_policy(
            iam.PolicyStatement(actions=["secretsmanager:GetSecretValue"], resources=[self._secret.secret_arn])
        )
        return function

    def _build_api_function(
        self, code: lambda_.Code, env_name: str, apps: Sequence[AppSettings], release_store: ReleaseStore
    ) -> lambda_.Function:
        powertools = lambda_.LayerVersion.from_layer_version_arn(
            self, "Powertools", ssm.StringParameter.value_for_string_parameter(self, POWERTOOLS_LAYER_PARAMETER)
        )
        self._settings = ControlPlaneSettings(
            bucket=release_store.bucket.bucket_name,
            env=env_name,
            apps={
                app.name: AppRuntime(
                    port=app.port,
                    health_check_path=app.health_check_path,
                    health_check_codes=app.health_check_codes,
                    formation=app.processes,
                )
                for app in apps
            },
        )
        function = self._build_function(
            "ApiFunction",
            code=code,
            handler="slipway.api.handler",
            description=f"Slipway release API of {env_name}",
            environment={**self._settings.environment(), "POWERTOOLS_SERVICE_NAME": "slipway"},
            memory_size=1024,
            timeout=Duration.seconds(60),
            layers=[powertools],
        )
        # Each app's settings in a parameter of its own (the function's environment holds 4 KB, about
        # three apps' worth); the function reads them all with GetParametersByPath on their path.
        values = self._settings.app_parameters()
        self._app_parameters: dict[str, ssm.CfnParameter] = {}
        for app in apps:
            name = app_parameter_name(env_name, app.name)
            self._app_parameters[name] = ssm.CfnParameter(
                self,
                f"AppSettings-{app.name}",
                name=name,
                type="String",
                value=values[name],
                description=f"Slipway: the settings of {app.name} in {env_name}, which the API reads",
            )
        stack = Stack.of(self)
        function.add_to_role_policy(
            iam.PolicyStatement(
                actions=["ssm:GetParametersByPath"],
                resources=[
                    stack.format_arn(
                        service="ssm", resource="parameter", resource_name=app_parameters_path(env_name).lstrip("/")
                    )
                ],
            )
        )
        release_store.grant_publish(function, env=env_name)
        return function

    def _build_api(self, env_name: str) -> apigateway.RestApi:
        access_logs = logs.LogGroup(self, "AccessLogs", retention=logs.RetentionDays.ONE_YEAR)
        authorizer = apigateway.RequestAuthorizer(
            self,
            "BasicAuth",
            handler=self._authorizer_function,
            identity_sources=[apigateway.IdentitySource.header("Authorization")],
            results_cache_ttl=AUTHORIZER_CACHE,
        )
        api = apigateway.RestApi(
            self,
            "RestApi",
            rest_api_name=f"slipway-{env_name}",
            description=f"Slipway release API of {env_name}",
            endpoint_types=[apigateway.EndpointType.REGIONAL],
            # Access logs need the account's API Gateway CloudWatch role (one per region),
            # or the first deploy fails. Retained: deleting one environment must not take
            # logging away from the others that share the setting.
            cloud_watch_role=True,
            cloud_watch_role_removal_policy=RemovalPolicy.RETAIN,
            default_method_options=apigateway.MethodOptions(
                authorizer=authorizer, authorization_type=apigateway.AuthorizationType.CUSTOM
            ),
            deploy_options=apigateway.StageOptions(
                stage_name=STAGE_NAME,
                throttling_rate_limit=THROTTLING_RATE_LIMIT,
                throttling_burst_limit=THROTTLING_BURST_LIMIT,
                access_log_destination=apigateway.LogGroupLogDestination(access_logs),
                access_log_format=apigateway.AccessLogFormat.custom(json.dumps(ACCESS_LOG_FIELDS)),
                # Errors only, and never request data: data traces would log the Authorization header.
                logging_level=apigateway.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,
                metrics_enabled=True,
            ),
        )
        api.add_gateway_response(
            "Unauthorized",
            type=apigateway.ResponseType.UNAUTHORIZED,
            status_code="401",
            # Makes browsers ask for a user name and password (the web console).
            response_headers={"WWW-Authenticate": "'Basic realm=\"Slipway\"'"},
            templates={"application/json": '{"message": "Missing or wrong credentials"}'},
        )
        # A body or parameter the document forbids: API Gateway's validator says which and why.
        for id_, response_type, words in (
            ("BadRequestBody", apigateway.ResponseType.BAD_REQUEST_BODY, "the request body does not match"),
            (
                "BadRequestParameters",
                apigateway.ResponseType.BAD_REQUEST_PARAMETERS,
                "the request's parameters do not match",
            ),
        ):
            api.add_gateway_response(
                id_,
                type=response_type,
                status_code="400",
                templates={"application/json": f'{{"message": "{words} the API (openapi.json): {VALIDATION_ERROR}"}}'},
            )
        api.add_gateway_response(
            "AccessDenied",
            type=apigateway.ResponseType.ACCESS_DENIED,
            status_code="403",
            templates={"application/json": '{"message": "These credentials may not call this API"}'},
        )
        acknowledge(
            api,
            "AwsSolutions-COG4",
            "Authorization is HTTP Basic through a Lambda REQUEST authorizer (README.md, Architecture: ControlPlane), "
            "so the CLI, netrc and browsers work without a Cognito user pool.",
        )
        acknowledge(
            api,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AmazonAPIGatewayPushToCloudWatchLogs]",
            "The AWS-maintained policy of the account-level role through which API Gateway writes access logs.",
        )
        return api

    def _enable_slack(self, env_name: str, slack: SlackConfig, release_store: ReleaseStore) -> secretsmanager.Secret:
        """The ``/slipway`` command's signing secret, its rules, the function's right to record the
        commands it accepts (to refuse a replay) and to follow a deploy in itself. Operators put the
        Slack app's signing secret into the secret."""
        secret = secretsmanager.Secret(
            self,
            "SlackSigningSecret",
            description=f"Slipway's Slack app in {env_name}: put the app's signing secret here "
            "(Slack: Basic Information → App Credentials)",
            # Random until an operator puts the real one: no request verifies against it meanwhile.
            generate_secret_string=secretsmanager.SecretStringGenerator(exclude_punctuation=True, password_length=40),
        )
        acknowledge(
            secret,
            "AwsSolutions-SMG4",
            "Slack issues the signing secret; it is rotated in Slack's app settings and copied here, not by Lambda.",
        )
        function = self._api_function
        # GetSecretValue only (the Slack handler calls nothing else of Secrets Manager; CDK's grant_read
        # would add DescribeSecret).
        function.add_to_role_policy(
            iam.PolicyStatement(actions=["secretsmanager:GetSecretValue"], resources=[secret.secret_arn])
        )
        # Each command accepted is recorded once, by its signature (slipway_release.layout.slack_request):
        # a replay of it within its five minutes finds the record and is refused.
        assert function.role is not None
        accepted = f"{slack_requests(env_name)}*"
        function.add_to_role_policy(
            iam.PolicyStatement(actions=["s3:PutObject"], resources=[release_store.bucket.arn_for_objects(accepted)])
        )
        acknowledge(
            function.role,
            f"AwsSolutions-IAM5[Resource::{release_store.arn_finding(function)}/{accepted}]",
            f"One object per Slack command {env_name} accepts, named by the digest of its signature, which no "
            "grant can name in advance; only under this environment's slack-requests/ prefix, which no app can take.",
        )
        self._settings = replace(
            self._settings,
            slack=SlackSettings(
                rules=slack.rules, signing_secret=secret.secret_arn, response_hosts=slack.response_hosts
            ),
        )
        self._apply_settings()
        # A deploy started from Slack is followed asynchronously by this same function (Event
        # invocations). Its own policy, not the role's default one: the function waits for that one,
        # and a statement naming the function there would wait for the function.
        assert function.role is not None
        iam.Policy(
            self,
            "SlackFollowPolicy",
            roles=[function.role],
            statements=[iam.PolicyStatement(actions=["lambda:InvokeFunction"], resources=[function.function_arn])],
        )
        CfnOutput(
            self,
            "SlackCommandUrl",
            value=f"{self._api.url}slack/commands",
            description="The Request URL of the /slipway slash command in the Slack app",
        )
        CfnOutput(
            self,
            "SlackSigningSecretName",
            value=secret.secret_name,
            description="aws secretsmanager put-secret-value --secret-id <this> "
            "--secret-string <the Slack app's signing secret>",
        )
        return secret

    def _build_web_acl(self, env_name: str) -> wafv2.CfnWebACL:
        """A WAF web ACL on the stage: each client address may send RATE_LIMIT_PER_5_MINUTES requests.

        Password guessing, or a client gone wrong, from one address is blocked for the rest of the
        window before it can use up the stage's throttle that every user shares.
        """
        acl = wafv2.CfnWebACL(
            self,
            "WebAcl",
            scope="REGIONAL",
            default_action=wafv2.CfnWebACL.DefaultActionProperty(allow={}),
            description=f"Slipway API of {env_name}: a rate limit per client address",
            visibility_config=_visibility(f"slipway-{env_name}-api"),
            rules=[
                wafv2.CfnWebACL.RuleProperty(
                    name="RatePerClientAddress",
                    priority=0,
                    action=wafv2.CfnWebACL.RuleActionProperty(block={}),
                    statement=wafv2.CfnWebACL.StatementProperty(
                        rate_based_statement=wafv2.CfnWebACL.RateBasedStatementProperty(
                            limit=RATE_LIMIT_PER_5_MINUTES, aggregate_key_type="IP", evaluation_window_sec=300
                        )
                    ),
                    visibility_config=_visibility(f"slipway-{env_name}-api-rate"),
                )
            ],
        )
        wafv2.CfnWebACLAssociation(
            self, "WebAclAssociation", resource_arn=self._api.deployment_stage.stage_arn, web_acl_arn=acl.attr_arn
        )
        return acl

    def _add_routes(self, contract: ApiContract) -> None:
        """A method per route: the body validated against its model, query parameters as declared."""
        # allow_test_invoke=False: no extra permission per method for the console's test button.
        integration = apigateway.LambdaIntegration(self._api_function, allow_test_invoke=False)
        validators = {
            True: self._api.add_request_validator(
                "ValidateBodyAndParameters", validate_request_body=True, validate_request_parameters=True
            ),
            False: self._api.add_request_validator("ValidateParameters", validate_request_parameters=True),
        }
        models: dict[str, apigateway.IModel] = {}
        for name, schema in contract.models.items():
            # The L1 model takes the draft 4 schema as the document has it (the L2 wants it retyped field by field).
            model = apigateway.CfnModel(
                self,
                f"Model{name}",
                rest_api_id=self._api.rest_api_id,
                content_type="application/json",
                name=name,
                schema=dict(schema),
            )
            models[name] = apigateway.Model.from_model_name(self, f"Model{name}Ref", model.ref)
        for route in contract.routes:
            # A route the document leaves open (the Slack command, signed by Slack) has no authorizer.
            open_route: dict[str, Any] = (
                {} if route.authorized else {"authorization_type": apigateway.AuthorizationType.NONE}
            )
            method = self._api.root.resource_for_path(route.path).add_method(
                route.method,
                integration,
                **open_route,
                request_validator=validators[route.body_model is not None],
                request_models={"application/json": models[route.body_model]} if route.body_model else None,
                request_parameters={f"method.request.querystring.{name}": required for name, required in route.query}
                or None,
            )
            if not route.authorized:
                acknowledge(method, "AwsSolutions-APIG4", _OPEN_ROUTES[route.method, route.path])

    @property
    def api_url(self) -> str:
        """The stage's base URL, ``https://<id>.execute-api.<region>.amazonaws.com/v1/``."""
        return self._api.url

    @property
    def api(self) -> apigateway.IRestApi:
        """The REST API."""
        return self._api

    @property
    def api_function(self) -> lambda_.IFunction:
        """The function behind every route."""
        return self._api_function

    @property
    def authorizer_function(self) -> lambda_.IFunction:
        """The HTTP Basic authorizer."""
        return self._authorizer_function

    @property
    def credentials_secret(self) -> secretsmanager.ISecret:
        """The API's users and passwords, ``{"<user>": "<password>"}``."""
        return self._secret

    def enable_logs(self, *, log_group: logs.ILogGroup) -> None:
        """Let the API read the apps' logs (``slipway logs``) from ``log_group``."""
        self._settings = replace(self._settings, app_logs=log_group.log_group_name)
        self._apply_settings()
        log_group.grant(self._api_function, "logs:FilterLogEvents")

    def enable_runs(self, *, document: RunDocument) -> None:
        """Let the API run one-off commands (``slipway run``) through ``document`` and read their output."""
        self._settings = replace(
            self._settings,
            runs=RunSettings(document=document.document_name, log_group=document.log_group.log_group_name),
        )
        self._apply_settings()
        role = self._api_function.role
        assert role is not None
        document.grant_run(role)

    def enable_builds(
        self,
        *,
        workflow: sfn.IStateMachine,
        writer: lambda_.IFunction,
        builds: Mapping[str, BuildSettings],
        build_logs: logs.ILogGroup,
        projects: Sequence[codebuild.IProject],
    ) -> None:
        """Let the API start ``workflow`` for each finalized upload, follow its build's log, and ask the
        release ``writer`` for config, rollback and promotion releases (it makes them; the API cannot)."""
        function = self._api_function
        self._settings = replace(
            self._settings,
            builds=dict(builds),
            release_workflow=workflow.state_machine_arn,
            release_writer=writer.function_name,
        )
        self._apply_settings()
        workflow.grant_start_execution(function)
        # Its unqualified ARN only (CDK's grant_invoke adds every version, which nothing invokes).
        function.add_to_role_policy(
            iam.PolicyStatement(actions=["lambda:InvokeFunction"], resources=[writer.function_arn])
        )
        function.add_to_role_policy(
            iam.PolicyStatement(actions=["codebuild:BatchGetBuilds"], resources=[p.project_arn for p in projects])
        )
        build_logs.grant(function, "logs:GetLogEvents")

    def _apply_settings(self) -> None:
        """The API function's environment and its apps' parameters: its settings as they stand."""
        to_json = Stack.of(self).to_json_string
        for variable, value in self._settings.environment(to_json=to_json).items():
            self._api_function.add_environment(variable, value)
        for name, value in self._settings.app_parameters(to_json=to_json).items():
            self._app_parameters[name].value = value

    def enable_deploys(self, *, state_machine: sfn.IStateMachine, fleets: Mapping[str, FleetSettings]) -> None:
        """Let the API start and read rollouts of ``state_machine`` over ``fleets``.

        ``fleets`` maps each app to what a rollout needs of its fleet; with the state machine
        it reaches the function in the variables of :class:`slipway.settings.ControlPlaneSettings`.
        """
        function = self._api_function
        self._settings = replace(self._settings, fleets=dict(fleets), state_machine=state_machine.state_machine_arn)
        self._apply_settings()
        state_machine.grant_start_execution(function)
        # Reading deploys: list the machine's executions, describe them and read their history.
        function.add_to_role_policy(
            iam.PolicyStatement(actions=["states:ListExecutions"], resources=[state_machine.state_machine_arn])
        )
        # Status, cycling and scaling: read the fleets; replace instances and change capacity only of this
        # environment's groups.
        function.add_to_role_policy(
            iam.PolicyStatement(
                actions=[
                    "autoscaling:StartInstanceRefresh",
                    "autoscaling:TerminateInstanceInAutoScalingGroup",
                    "autoscaling:UpdateAutoScalingGroup",
                ],
                resources=["*"],
                conditions={"StringEquals": {"autoscaling:ResourceTag/slipway:env": self._env_name}},
            )
        )
        function.add_to_role_policy(
            iam.PolicyStatement(
                actions=[
                    "autoscaling:DescribeAutoScalingGroups",
                    "autoscaling:DescribeInstanceRefreshes",
                    "elasticloadbalancing:DescribeTargetHealth",
                ],
                resources=["*"],
            )
        )
        acknowledge(
            function.role or function,
            "AwsSolutions-IAM5[Resource::*]",
            "Instance refreshes, terminations and capacity changes are conditioned on the slipway:env tag of this "
            "environment's groups; the Describe* calls (groups, refreshes, target health) have no resource level "
            "in IAM.",
        )
        stack = Stack.of(self)
        machine = state_machine.node.default_child
        assert isinstance(machine, sfn.CfnStateMachine)
        name = {"Fn::Select": [6, {"Fn::Split": [":", {"Ref": stack.get_logical_id(machine)}]}]}
        executions = stack.format_arn(
            service="states",
            resource="execution",
            resource_name=f"{Fn.select(6, Fn.split(':', state_machine.state_machine_arn))}:*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        function.add_to_role_policy(
            iam.PolicyStatement(
                actions=["states:DescribeExecution", "states:GetExecutionHistory"], resources=[executions]
            )
        )
        acknowledge(
            function.role or function,
            f"AwsSolutions-IAM5[Resource::arn:{stack.partition}:states:{stack.region}:<AWS::AccountId>:execution:"
            f"{json.dumps(name, separators=(',', ':'))}:*]",
            "Deploys are executions of this environment's rollout state machine, created one per deploy: the API "
            "reads any of them (status, progress, output) and nothing else of Step Functions.",
        )

    def enable_regions(self, *, regions: RegionSettings, here: str, domain: str, hosted_zone_id: str) -> None:
        """Make this control plane one of its environment's two (docs/regions.md): the API reads the
        active-region parameter before every change (and refuses one outside the active region), answers
        under ``domain`` (a regional custom domain with its own certificate), and that name is a Route 53
        failover record: PRIMARY in ``regions.primary``, checked on ``/health``; SECONDARY in the other."""
        self._settings = replace(self._settings, regions=regions)
        self._apply_settings()
        stack = Stack.of(self)
        self._api_function.add_to_role_policy(
            iam.PolicyStatement(
                actions=["ssm:GetParameter"],
                resources=[
                    stack.format_arn(
                        service="ssm",
                        resource="parameter",
                        resource_name=active_region_parameter_name(self._env_name).lstrip("/"),
                    )
                ],
            )
        )
        zone = route53.HostedZone.from_hosted_zone_id(self, "Zone", hosted_zone_id)
        certificate = acm.Certificate(
            self, "ApiCertificate", domain_name=domain, validation=acm.CertificateValidation.from_dns(zone)
        )
        name = apigateway.DomainName(
            self,
            "ApiDomain",
            domain_name=domain,
            certificate=certificate,
            endpoint_type=apigateway.EndpointType.REGIONAL,
            security_policy=apigateway.SecurityPolicy.TLS_1_2,
        )
        # The stage under the same path as on the API's own URL: https://<domain>/v1/...
        name.add_base_path_mapping(self._api, base_path=STAGE_NAME, stage=self._api.deployment_stage)
        primary = here == regions.primary
        health_check = None
        if primary:
            health_check = route53.CfnHealthCheck(
                self,
                "ApiHealthCheck",
                health_check_config=route53.CfnHealthCheck.HealthCheckConfigProperty(
                    type="HTTPS",
                    # The primary's own regional endpoint, not the failover name (which would follow the failover).
                    fully_qualified_domain_name=f"{self._api.rest_api_id}.execute-api.{stack.region}.{stack.url_suffix}",
                    port=443,
                    resource_path=HEALTH_PATH,
                    request_interval=HEALTH_REQUEST_INTERVAL_SECONDS,
                    failure_threshold=HEALTH_FAILURE_THRESHOLD,
                ),
                health_check_tags=[
                    route53.CfnHealthCheck.HealthCheckTagProperty(key="Name", value=f"slipway-{self._env_name}-api")
                ],
            )
        route53.CfnRecordSet(
            self,
            "ApiFailoverRecord",
            hosted_zone_id=hosted_zone_id,
            name=domain,
            type="A",
            set_identifier=f"slipway-{self._env_name}-{here}",
            failover="PRIMARY" if primary else "SECONDARY",
            health_check_id=health_check.attr_health_check_id if health_check else None,
            alias_target=route53.CfnRecordSet.AliasTargetProperty(
                dns_name=name.domain_name_alias_domain_name,
                hosted_zone_id=name.domain_name_alias_hosted_zone_id,
                evaluate_target_health=False,
            ),
        )
        CfnOutput(
            self,
            "ApiDomainUrl",
            value=f"https://{domain}/{STAGE_NAME}/",
            description=f"Slipway API of {self._env_name} under its one name (fails over to {regions.secondary})",
        )


def _visibility(metric: str) -> wafv2.CfnWebACL.VisibilityConfigProperty:
    return wafv2.CfnWebACL.VisibilityConfigProperty(
        cloud_watch_metrics_enabled=True, metric_name=metric, sampled_requests_enabled=True
    )
