"""One app's fleet in one environment: load balancer, target group, launch template, ASG."""

from __future__ import annotations

import shlex

from aws_cdk import Aws, Duration, Stack, Tags
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as cw_logs
from aws_cdk import aws_s3_assets as s3_assets

from constructs import Construct
from constructs.acknowledge import acknowledge
from constructs.base_image import grant_read_image, parameter_name
from constructs.config import AppSettings, LogSettings
from constructs.release_store import ReleaseStore
from slipway_release.layout import AppKeys, release_url
from slipway_release.names import CURRENT

DEPLOY_PROGRAM = "/home/deploy/bin/deploy"
IMAGE_ON_INSTANCE = "/opt/slipway/image"
# Time for a new instance to provision and deploy `current` before CloudFormation
# gives up on its signal and rolls the stack update back.
SIGNAL_TIMEOUT = Duration.minutes(15)


def boot_commands(
    *,
    app: str,
    env: str,
    bucket: str,
    image_url: str,
    region: str,
    stack: str,
    signal_resource: str,
    logs: LogSettings,
    log_group: str | None = None,
) -> list[str]:
    """The user data (after ``#!/bin/bash``) that prepares an instance at its first boot.

    It fetches and unpacks the base image (``image/``), runs its provisioning script,
    deploys the app's ``current`` release if one was published, and signals
    CloudFormation: a failure anywhere signals failure, so a broken base image rolls
    the stack update back instead of replacing healthy instances.
    """
    q = shlex.quote
    current_key = AppKeys(app, env).current
    provision_env = " ".join(
        [
            f"SLIPWAY_APP={q(app)}",
            f"SLIPWAY_ENV={q(env)}",
            f"SLIPWAY_BUCKET={q(bucket)}",
            f"SLIPWAY_LOG_DESTINATION={q(logs.destination or '')}",
            f"SLIPWAY_LOG_TLS={'true' if logs.tls else 'false'}",
            f"SLIPWAY_LOG_GROUP={q(log_group or '')}",
        ]
    )
    return [
        "set -euo pipefail",
        f"export AWS_DEFAULT_REGION={q(region)}",
        "command -v /opt/aws/bin/cfn-signal >/dev/null || dnf install -y aws-cfn-bootstrap",
        f'signal() {{ /opt/aws/bin/cfn-signal --exit-code "$1" --stack {q(stack)} --resource {q(signal_resource)}'
        f" --region {q(region)} || true; }}",
        "trap 'signal 1' ERR",
        f"rm -rf {IMAGE_ON_INSTANCE} && mkdir -p {IMAGE_ON_INSTANCE}",
        f"aws s3 cp {q(image_url)} {IMAGE_ON_INSTANCE}.zip",
        f"python3 -m zipfile -e {IMAGE_ON_INSTANCE}.zip {IMAGE_ON_INSTANCE}",
        f"{provision_env} bash {IMAGE_ON_INSTANCE}/provision.sh",
        # "None" (an empty listing) means nothing was published yet: the first rollout deploys.
        f"current=$(aws s3api list-objects-v2 --bucket {q(bucket)} --prefix {q(current_key)}"
        " --query 'Contents[].Key' --output text)",
        f'if [ "$current" = {q(current_key)} ]; then {DEPLOY_PROGRAM} {q(release_url(bucket, app, env, CURRENT))}; fi',
        "signal 0",
    ]


class AppFleet(Construct):
    """Runs one app in one environment.

    An internet-facing ALB (HTTP, or HTTPS with HTTP redirected when a certificate is
    given) sends traffic to a target group with a fast health check; an Auto Scaling
    group spread over the VPC's zones runs instances from a launch template on Amazon
    Linux 2023 (IMDSv2 only, encrypted volumes). A changed launch template, such as a
    new AMI, replaces instances in batches while keeping ``min_capacity`` in service.
    Instances read only their own ``<app>/<env>/`` prefix of the release bucket.
    """

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        env_name: str,
        settings: AppSettings,
        vpc: ec2.IVpc,
        instance_subnets: ec2.SubnetSelection,
        load_balancer_subnets: ec2.SubnetSelection,
        release_store: ReleaseStore,
        image: s3_assets.Asset,
        logs: LogSettings,
        app_logs: cw_logs.ILogGroup | None = None,
        use_baked_image: bool = False,
    ) -> None:
        super().__init__(scope, id_)
        if settings.min_capacity > settings.max_capacity:
            raise ValueError(f"AppFleet {settings.name}: min_capacity is greater than max_capacity")
        self._settings = settings
        Tags.of(self).add("slipway:app", settings.name)
        Tags.of(self).add("slipway:env", env_name)
        Tags.of(self).add("Name", f"{settings.name}-{env_name}")

        self._load_balancer = self._build_load_balancer(vpc, load_balancer_subnets)
        self._target_group = self._build_target_group(vpc)
        self._build_listeners()
        self._role = self._build_role(release_store, image, app=settings.name, env=env_name)
        self._security_group = ec2.SecurityGroup(
            self, "InstanceSecurityGroup", vpc=vpc, description=f"{settings.name} instances", allow_all_outbound=True
        )
        self._security_group.connections.allow_from(
            self._load_balancer, ec2.Port.tcp(settings.port), "traffic and health checks from the load balancer"
        )
        self._user_data = ec2.UserData.for_linux()
        self._launch_template = self._build_launch_template(env_name, use_baked_image)
        self._group = self._build_group(vpc, instance_subnets)
        self._user_data.add_commands(
            *boot_commands(
                app=settings.name,
                env=env_name,
                bucket=release_store.bucket.bucket_name,
                image_url=image.s3_object_url,
                region=Aws.REGION,
                stack=Aws.STACK_NAME,
                signal_resource=Stack.of(self).get_logical_id(self._cfn_group),
                logs=logs,
                log_group=app_logs.log_group_name if app_logs else None,
            )
        )
        if app_logs is not None:  # the CloudWatch agent ships the app's log file (image/provision.sh)
            app_logs.grant(self._role, "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams")

    def _build_load_balancer(self, vpc: ec2.IVpc, subnets: ec2.SubnetSelection) -> elbv2.ApplicationLoadBalancer:
        alb = elbv2.ApplicationLoadBalancer(
            self, "LoadBalancer", vpc=vpc, vpc_subnets=subnets, internet_facing=True, drop_invalid_header_fields=True
        )
        acknowledge(
            alb,
            "AwsSolutions-ELB2",
            "The platform watches the load balancer through its CloudWatch metrics (the fleet's alarms and "
            "dashboard) and the app through its own logs (CloudWatch Logs and/or syslog, per the environment's "
            "logs settings); access logs would need an S3 bucket per environment and region, with a policy "
            "letting Elastic Load Balancing write there, for logs nothing here reads.",
        )
        acknowledge(
            alb,
            "AwsSolutions-EC23",
            "The load balancer is the app's public entry point and must accept "
            "HTTP(S) from anywhere; instances admit traffic only from this load balancer.",
        )
        return alb

    def _build_target_group(self, vpc: ec2.IVpc) -> elbv2.ApplicationTargetGroup:
        settings = self._settings
        return elbv2.ApplicationTargetGroup(
            self,
            "Web",
            vpc=vpc,
            port=settings.port,
            protocol=elbv2.ApplicationProtocol.HTTP,
            target_type=elbv2.TargetType.INSTANCE,
            deregistration_delay=Duration.seconds(settings.deregistration_delay_seconds),
            # Fast checks so rollouts and replacements see health within ~10 s.
            health_check=elbv2.HealthCheck(
                path=settings.health_check_path,
                interval=Duration.seconds(5),
                timeout=Duration.seconds(4),
                healthy_threshold_count=2,
                unhealthy_threshold_count=2,
                # The statuses the deploy agent counts as healthy too (release.json health_check.codes).
                healthy_http_codes=settings.health_check_codes,
            ),
        )

    def _build_listeners(self) -> None:
        certificate = self._settings.certificate_arn
        if certificate is None:
            self._scheme = "http"
            self._load_balancer.add_listener("Http", port=80, open=True, default_target_groups=[self._target_group])
            return
        self._scheme = "https"
        self._load_balancer.add_listener(
            "Https",
            port=443,
            open=True,
            certificates=[elbv2.ListenerCertificate.from_arn(certificate)],
            ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
            default_target_groups=[self._target_group],
        )
        self._load_balancer.add_redirect(source_port=80, target_port=443)

    def _build_role(self, release_store: ReleaseStore, image: s3_assets.Asset, *, app: str, env: str) -> iam.Role:
        role = iam.Role(
            self,
            "InstanceRole",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description=f"{app} instances in {env}",
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore"),
                iam.ManagedPolicy.from_aws_managed_policy_name("CloudWatchAgentServerPolicy"),
            ],
        )
        release_store.grant_read_app(role, app=app, env=env)
        grant_read_image(role, image)
        acknowledge(
            role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore]",
            "The AWS-maintained minimal policy for the SSM agent: deploys run through SSM Run Command, never SSH.",
        )
        acknowledge(
            role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/CloudWatchAgentServerPolicy]",
            "The AWS-maintained policy for the CloudWatch agent, which publishes host metrics "
            "(cloudwatch:PutMetricData has no resource level) and reads the instance's tags for their "
            "AutoScalingGroupName dimension; the app's log group is granted on its own.",
        )
        acknowledge(
            role,
            f"AwsSolutions-IAM5[Resource::{release_store.arn_finding(role)}/{app}/{env}/*]",
            f"Instances read every release of their own app and environment, and only those ({app}/{env}/).",
        )
        return role

    def _build_launch_template(self, env_name: str, use_baked_image: bool) -> ec2.LaunchTemplate:
        settings = self._settings
        instance_type = ec2.InstanceType(settings.instance_type)
        architecture = instance_type.architecture
        # Both are SSM parameters resolved at deploy time: a newer AMI changes the
        # template and the update policy replaces instances gradually.
        if use_baked_image:
            machine_image = ec2.MachineImage.from_ssm_parameter(parameter_name(env_name, architecture))
        else:
            arm = architecture == ec2.InstanceArchitecture.ARM_64
            machine_image = ec2.MachineImage.latest_amazon_linux2023(
                cpu_type=ec2.AmazonLinuxCpuType.ARM_64 if arm else ec2.AmazonLinuxCpuType.X86_64
            )
        return ec2.LaunchTemplate(
            self,
            "LaunchTemplate",
            machine_image=machine_image,
            instance_type=instance_type,
            role=self._role,
            security_group=self._security_group,
            user_data=self._user_data,
            require_imdsv2=True,
            http_put_response_hop_limit=1,
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/xvda",
                    volume=ec2.BlockDeviceVolume.ebs(
                        settings.root_volume_gb,
                        encrypted=True,
                        volume_type=ec2.EbsDeviceVolumeType.GP3,
                        delete_on_termination=True,
                    ),
                )
            ],
        )

    def _build_group(self, vpc: ec2.IVpc, subnets: ec2.SubnetSelection) -> autoscaling.AutoScalingGroup:
        settings = self._settings
        # CloudFormation requires fewer instances in service than the maximum during a rolling update.
        in_service = min(settings.min_capacity, settings.max_capacity - 1)
        group = autoscaling.AutoScalingGroup(
            self,
            "Instances",
            vpc=vpc,
            vpc_subnets=subnets,
            launch_template=self._launch_template,
            min_capacity=settings.min_capacity,
            max_capacity=settings.max_capacity,
            desired_capacity=settings.desired_capacity,
            health_checks=autoscaling.HealthChecks.with_additional_checks(
                additional_types=[autoscaling.AdditionalHealthCheckType.ELB],
                grace_period=Duration.seconds(settings.health_check_grace_seconds),
            ),
            default_instance_warmup=Duration.seconds(60),
            group_metrics=[autoscaling.GroupMetrics.all()],
            signals=autoscaling.Signals.wait_for_min_capacity(timeout=SIGNAL_TIMEOUT),
            update_policy=autoscaling.UpdatePolicy.rolling_update(
                max_batch_size=max(1, settings.max_capacity // 4),
                min_instances_in_service=in_service,
                pause_time=SIGNAL_TIMEOUT,
                wait_on_resource_signals=True,
            ),
        )
        group.attach_to_application_target_group(self._target_group)
        group.scale_on_cpu_utilization("Cpu", target_utilization_percent=settings.target_cpu_percent)
        acknowledge(
            group,
            "AwsSolutions-AS3",
            "Launches and terminations are followed by the control plane's "
            "rollouts and alarms; per-event SNS notifications would only add noise.",
        )
        return group

    @property
    def _cfn_group(self) -> autoscaling.CfnAutoScalingGroup:
        cfn = self._group.node.default_child
        assert isinstance(cfn, autoscaling.CfnAutoScalingGroup)
        return cfn

    @property
    def url(self) -> str:
        """Where the app answers: ``http(s)://`` and the load balancer's DNS name."""
        return f"{self._scheme}://{self._load_balancer.load_balancer_dns_name}"

    @property
    def load_balancer(self) -> elbv2.IApplicationLoadBalancer:
        """The app's internet-facing load balancer."""
        return self._load_balancer

    @property
    def target_group(self) -> elbv2.IApplicationTargetGroup:
        """Where the web processes of the fleet's instances register."""
        return self._target_group

    @property
    def auto_scaling_group(self) -> autoscaling.IAutoScalingGroup:
        """The fleet's instances."""
        return self._group

    @property
    def instance_role(self) -> iam.IRole:
        """The role every instance of the fleet runs with."""
        return self._role
