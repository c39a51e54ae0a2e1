"""The ``Platform-<env>`` stack: one whole environment."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Environment, Stack
from aws_cdk import aws_s3_assets as s3_assets

from constructs import Construct
from constructs.config import EnvironmentSettings, PlatformConfig
from constructs.fleet import AppFleet
from constructs.network import Network
from constructs.release_store import ReleaseStore

# The base image (provisioning script and deploy program) ships to instances as an asset.
IMAGE_DIR = Path(__file__).resolve().parent.parent / "image"


class PlatformStack(Stack):
    """Composes one environment: network, release bucket and a fleet per app."""

    def __init__(self, scope: Construct, id_: str, *, config: PlatformConfig, environment: EnvironmentSettings) -> None:
        super().__init__(
            scope,
            id_,
            env=Environment(account=environment.account, region=environment.region),
            description=f"Slipway platform, {environment.name} environment",
            analytics_reporting=False,
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
        self.release_store = ReleaseStore(self, "Releases")
        image = s3_assets.Asset(self, "BaseImage", path=str(IMAGE_DIR), exclude=["__pycache__", "*.pyc"])
        self.fleets = {
            app.name: AppFleet(
                self,
                f"App-{app.name}",
                env_name=environment.name,
                settings=app.settings_for(environment.name),
                vpc=self.network.vpc,
                instance_subnets=self.network.instance_subnets,
                load_balancer_subnets=self.network.load_balancer_subnets,
                release_store=self.release_store,
                image=image,
                logs=environment.logs,
            )
            for app in config.apps
        }
