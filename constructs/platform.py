"""The ``Platform-<env>`` stack: one whole environment."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import CfnOutput, Environment, NestedStack, Stack, SymlinkFollowMode
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3_assets as s3_assets

from constructs import Construct
from constructs.api_contract import ApiContract
from constructs.base_image import BaseImagePipeline
from constructs.builder import Builder
from constructs.config import EnvironmentSettings, PlatformConfig
from constructs.control_plane import ControlPlane
from constructs.deploy_document import DeployDocument, RunDocument
from constructs.fleet import AppFleet
from constructs.fleet_monitoring import FleetMonitoring
from constructs.network import Network
from constructs.release_store import ReleaseStore, replica_bucket_name
from constructs.release_workflow import ReleaseWorkflow
from constructs.rollout import RolloutStateMachine
from slipway.settings import FleetSettings, RegionSettings

# The base image (provisioning script and deploy program) ships to instances as an asset.
IMAGE_DIR = Path(__file__).resolve().parent.parent / "image"
# The control plane's one Lambda asset: every file in lambdas/ runs in Lambda. Its link into
# image/ (slipway_release, the formats it shares with the agent) is copied, not kept as a link.
LAMBDAS_DIR = Path(__file__).resolve().parent.parent / "lambdas"
# Bytecode and tool caches (.ruff_cache, .mypy_cache) are not part of an asset: they would
# change its hash, and so the template, whenever someone runs a linter.
ASSET_EXCLUDE = ["__pycache__", "*.pyc", ".*_cache"]


class PlatformStack(Stack):
    """Composes one environment: network, release bucket, a fleet per app and the control plane.

    ``api`` is the control plane's contract, from its OpenAPI document: each route becomes a
    method of the REST API, its request body validated against the document's schema.
    """

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        config: PlatformConfig,
        environment: EnvironmentSettings,
        api: ApiContract,
    ) -> None:
        super().__init__(
            scope,
            id_,
            env=Environment(account=environment.account, region=environment.region),
            description=f"Slipway platform, {environment.name} environment",
            analytics_reporting=False,
            # Written without indentation: CloudFormation reads at most 1 MB, and with 100 apps the
            # template is 0.58 MB so (0.76 MB indented, which would pass 1 MB before 150 apps).
            suppress_template_indentation=True,
        )
        network_settings = environment.network
        self.network = Network(
            self,
            "Network",
            instance_subnets=network_settings.instance_subnets,
            availability_zones=network_settings.availability_zones,
            nat_gateways=network_settings.nat_gateways,
            cidr=network_settings.cidr,
            flow_logs=network_settings.flow_logs,
        )
        # With a secondary region (docs/regions.md) the primary's bucket replicates to the secondary's,
        # whose name the configuration fixes.
        secondary = environment.secondary
        self.release_store = ReleaseStore(
            self,
            "Releases",
            bucket_name=replica_bucket_name(environment.name, environment.region) if environment.is_secondary else None,
        )
        if secondary is not None and not environment.is_secondary:
            self.release_store.replicate_to(replica_bucket_name(environment.name, secondary.region))
        if not environment.is_secondary:  # a promotion from this environment reads its primary's bucket
            self.release_store.name_for_promotions(environment.name)
        image = s3_assets.Asset(self, "ImageAsset", path=str(IMAGE_DIR), exclude=ASSET_EXCLUDE)
        # Every app's processes, one stream per app and instance (`slipway logs` reads it).
        self.app_logs: logs.LogGroup | None = None
        if config.apps and environment.logs.cloudwatch:
            self.app_logs = logs.LogGroup(self, "AppLogs", retention=logs.RetentionDays.ONE_MONTH)
        # Each app's fleet and its monitoring in a nested stack of its own (about 18 resources): the
        # environment's stack holds two resources per app (that stack and the app's settings parameter),
        # so CloudFormation's 500 per stack allow about 160 apps, and `cdk deploy Platform-<env>` still
        # deploys them all.
        self.app_stacks = {
            app.name: NestedStack(self, f"App-{app.name}", description=f"Slipway: {app.name} in {environment.name}")
            for app in config.apps
        }
        self.fleets = {
            app.name: AppFleet(
                self.app_stacks[app.name],
                "Fleet",
                env_name=environment.name,
                settings=app.settings_for(environment.name),
                vpc=self.network.vpc,
                instance_subnets=self.network.instance_subnets,
                load_balancer_subnets=self.network.load_balancer_subnets,
                release_store=self.release_store,
                image=image,
                logs=environment.logs,
                app_logs=self.app_logs,
                use_baked_image=environment.base_image.use_baked,
            )
            for app in config.apps
        }
        for name, fleet in self.fleets.items():
            # In the environment's stack, where `cdk deploy` prints its outputs (not in the nested one).
            CfnOutput(self, f"App{name}Url", value=fleet.url, description=f"{name} in {environment.name}")
        self.monitoring = {
            name: FleetMonitoring(
                self.app_stacks[name],
                "Monitoring",
                app_name=name,
                env_name=environment.name,
                load_balancer=fleet.load_balancer,
                target_group=fleet.target_group,
                auto_scaling_group=fleet.auto_scaling_group,
            )
            for name, fleet in self.fleets.items()
        }
        # Rollouts deploy through this document; an environment without apps has nothing to deploy.
        self.deploy_document: DeployDocument | None = None
        if self.fleets:
            self.deploy_document = DeployDocument(
                self,
                "DeployDocument",
                env_name=environment.name,
                apps=list(self.fleets),
                release_store=self.release_store,
            )
            for fleet in self.fleets.values():
                self.deploy_document.grant_output(fleet.instance_role)
        # One-off commands (slipway run) go through their own document, to one instance at a time.
        self.run_document: RunDocument | None = None
        if self.fleets:
            self.run_document = RunDocument(self, "RunDocument", env_name=environment.name, apps=list(self.fleets))
            for fleet in self.fleets.values():
                self.run_document.grant_output(fleet.instance_role)
        control_plane_code = lambda_.Code.from_asset(
            str(LAMBDAS_DIR), exclude=ASSET_EXCLUDE, follow_symlinks=SymlinkFollowMode.ALWAYS
        )
        self.control_plane = ControlPlane(
            self,
            "ControlPlane",
            env_name=environment.name,
            apps=[app.settings_for(environment.name) for app in config.apps],
            release_store=self.release_store,
            code=control_plane_code,
            contract=api,
            slack=environment.slack,
        )
        if secondary is not None:
            self.control_plane.enable_regions(
                regions=RegionSettings(primary=environment.primary_region, secondary=secondary.region),
                here=environment.region,
                domain=secondary.domain,
                hosted_zone_id=secondary.hosted_zone_id,
            )
        self.builder: Builder | None = None
        self.release_workflow: ReleaseWorkflow | None = None
        if config.apps:  # an environment with no apps has nothing to build
            fleet_architectures = {
                app.name: ec2.InstanceType(app.settings_for(environment.name).instance_type).architecture
                for app in config.apps
            }
            self.builder = Builder(
                self,
                "Builder",
                env_name=environment.name,
                apps=fleet_architectures,
                release_store=self.release_store,
                image=image,
            )
            self.release_workflow = ReleaseWorkflow(
                self,
                "ReleaseWorkflow",
                env_name=environment.name,
                code=control_plane_code,
                release_store=self.release_store,
                projects=self.builder.projects,
                build_logs=self.builder.log_group,
                promotion_sources=config.promotion_sources(environment.name),
            )
            self.control_plane.enable_builds(
                workflow=self.release_workflow.state_machine,
                writer=self.release_workflow.writer,
                builds={app.name: self.builder.settings_for(app.name) for app in config.apps},
                build_logs=self.builder.log_group,
                projects=self.builder.projects,
            )
        self.rollout: RolloutStateMachine | None = None
        if self.deploy_document is not None:  # a platform with no apps has nothing to roll out
            self.rollout = RolloutStateMachine(
                self,
                "Rollout",
                env_name=environment.name,
                code=control_plane_code,
                release_store=self.release_store,
            )
            self.deploy_document.grant_send(self.rollout.role)
            if self.run_document is not None:
                self.control_plane.enable_runs(document=self.run_document)
            app_settings = {app.name: app.settings_for(environment.name) for app in config.apps}
            self.control_plane.enable_deploys(
                state_machine=self.rollout.state_machine,
                fleets={
                    name: FleetSettings(
                        group=fleet.auto_scaling_group.auto_scaling_group_name,
                        target_group=fleet.target_group.target_group_arn,
                        alarms=tuple(self.monitoring[name].alarm_names),
                        document=self.deploy_document.document_name,
                        output_log_group=self.deploy_document.log_group.log_group_name,
                        bucket=self.release_store.bucket.bucket_name,
                        url=fleet.url,
                        strategy=app_settings[name].rollout,
                        min_capacity=app_settings[name].min_capacity,
                        max_capacity=app_settings[name].max_capacity,
                    )
                    for name, fleet in self.fleets.items()
                },
            )
        if self.app_logs is not None:
            self.control_plane.enable_logs(log_group=self.app_logs)
        if environment.base_image.pipeline:
            architectures = frozenset(
                ec2.InstanceType(app.settings_for(environment.name).instance_type).architecture for app in config.apps
            ) or frozenset({ec2.InstanceArchitecture.X86_64})
            self.base_image = BaseImagePipeline(
                self,
                "BaseImage",
                env_name=environment.name,
                image=image,
                architectures=architectures,
                vpc=self.network.vpc,
                subnet=self.network.vpc.select_subnets(subnet_type=self.network.instance_subnets.subnet_type).subnets[
                    0
                ],
            )
            for arch, arn in self.base_image.pipeline_arns.items():
                CfnOutput(
                    self,
                    f"BaseImagePipeline-{arch.replace('_', '')}",
                    value=arn,
                    description=f"aws imagebuilder start-image-pipeline-execution --image-pipeline-arn <this>"
                    f" bakes a new {arch} base image",
                )
