"""The environment's VPC."""

from __future__ import annotations

from typing import Literal

from aws_cdk import RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs

from constructs import Construct
from constructs.acknowledge import acknowledge


class Network(Construct):
    """A VPC across two or more availability zones, with an S3 gateway endpoint.

    ``instance_subnets="public"`` puts instances in public subnets and creates no NAT
    gateway (cheaper and quicker to create; security groups still admit only the load
    balancer). ``"private"`` adds private subnets behind ``nat_gateways`` NAT gateways.
    Release downloads go through the gateway endpoint either way, free of NAT charges.
    """

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        instance_subnets: Literal["public", "private"],
        availability_zones: tuple[str, ...] = (),
        nat_gateways: int = 0,
        cidr: str = "10.0.0.0/16",
        flow_logs: bool = True,
    ) -> None:
        super().__init__(scope, id_)
        if instance_subnets == "private" and nat_gateways < 1:
            raise ValueError("Network: private instance subnets need nat_gateways >= 1 for outbound traffic")
        if instance_subnets == "public" and nat_gateways:
            raise ValueError("Network: public instance subnets use no NAT gateway; set nat_gateways=0")
        if availability_zones and len(availability_zones) < 2:
            raise ValueError("Network: availability_zones needs at least two zones")

        subnets = [ec2.SubnetConfiguration(name="Public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=22)]
        if instance_subnets == "private":
            subnets.append(
                ec2.SubnetConfiguration(name="Private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=20)
            )
        self._vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(cidr),
            # Without explicit zones, the first two of the region, resolved at deploy time.
            availability_zones=list(availability_zones) or None,
            max_azs=None if availability_zones else 2,
            nat_gateways=nat_gateways,
            subnet_configuration=subnets,
            restrict_default_security_group=True,
        )
        self._vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3)
        if flow_logs:
            log_group = logs.LogGroup(
                self, "FlowLogs", retention=logs.RetentionDays.ONE_MONTH, removal_policy=RemovalPolicy.DESTROY
            )
            self._vpc.add_flow_log("FlowLog", destination=ec2.FlowLogDestination.to_cloud_watch_logs(log_group))
        else:
            acknowledge(
                self._vpc,
                "AwsSolutions-VPC7",
                "Flow logs are turned off in this environment's network configuration (flow_logs: false).",
            )
        self._instance_subnets = ec2.SubnetSelection(
            subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS if instance_subnets == "private" else ec2.SubnetType.PUBLIC
        )

    @property
    def vpc(self) -> ec2.IVpc:
        """The VPC."""
        return self._vpc

    @property
    def instance_subnets(self) -> ec2.SubnetSelection:
        """Where app instances go: public or private subnets, one per zone."""
        return self._instance_subnets

    @property
    def load_balancer_subnets(self) -> ec2.SubnetSelection:
        """Where internet-facing load balancers go."""
        return ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC)
