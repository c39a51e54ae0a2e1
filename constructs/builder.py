"""The environment's builder: a CodeBuild project per CPU architecture its fleets use.

A build runs in Amazon Linux 2023, the instances' OS: it fetches the base image, installs
the runtimes the instances have (``provision.sh --builder``), fetches the upload's source,
runs the build program (``image/build``) with the app's own dependency cache, and writes
the slug beside the source. The release workflow starts builds and publishes their slugs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_cdk import Duration
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3_assets as s3_assets

from constructs import Construct
from constructs.acknowledge import acknowledge
from constructs.base_image import ARCHITECTURE_NAMES, grant_read_image
from constructs.release_store import ReleaseStore
from slipway.builds.requests import SLUG_VARIABLE, SOURCE_VARIABLE
from slipway.settings import BuildSettings
from slipway_release.layout import EVERY_APP, SLUG, SOURCE, AppKeys

IMAGE_VARIABLE = "SLIPWAY_IMAGE"
IMAGE_ON_BUILDER = "/opt/slipway/image"
# The build program keeps pip's and npm's caches here; CodeBuild saves and restores it.
CACHE_ON_BUILDER = "/root/.cache/slipway"
BUILD_IMAGES = {
    ec2.InstanceArchitecture.X86_64: codebuild.LinuxBuildImage.AMAZON_LINUX_2023_5,
    ec2.InstanceArchitecture.ARM_64: codebuild.LinuxArmBuildImage.AMAZON_LINUX_2023_STANDARD_3_0,
}
BUILD_TIMEOUT = Duration.minutes(30)


def buildspec() -> dict[str, Any]:
    """The exact buildspec of every build: the same steps on each architecture."""
    return {
        "version": "0.2",
        "env": {"shell": "bash"},
        "phases": {
            "install": {
                "commands": [
                    f"rm -rf {IMAGE_ON_BUILDER} && mkdir -p {IMAGE_ON_BUILDER}",
                    f'aws s3 cp "${IMAGE_VARIABLE}" {IMAGE_ON_BUILDER}.zip --only-show-errors',
                    f"python3 -m zipfile -e {IMAGE_ON_BUILDER}.zip {IMAGE_ON_BUILDER}",
                    f"bash {IMAGE_ON_BUILDER}/provision.sh --builder",
                ]
            },
            "build": {
                "commands": [
                    f'aws s3 cp "${SOURCE_VARIABLE}" /tmp/source.tar.gz --only-show-errors',
                    f"{IMAGE_ON_BUILDER}/build --source /tmp/source.tar.gz --output /tmp/{SLUG} "
                    f"--cache {CACHE_ON_BUILDER}",
                    f'aws s3 cp /tmp/{SLUG} "${SLUG_VARIABLE}" --only-show-errors',
                ]
            },
        },
        "cache": {"paths": [f"{CACHE_ON_BUILDER}/**/*"]},
    }


class Builder(Construct):
    """CodeBuild projects for ``apps`` (app name → the CPU architecture of its fleet) in ``env_name``.

    The projects' role reads only the base image, the apps' uploaded sources and their
    dependency caches, and writes only their slugs and caches. Builds log to one log group.
    """

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        env_name: str,
        apps: Mapping[str, ec2.InstanceArchitecture],
        release_store: ReleaseStore,
        image: s3_assets.Asset,
    ) -> None:
        super().__init__(scope, id_)
        if not apps:
            raise ValueError("Builder: apps is empty; give each app and the CPU architecture of its fleet")
        self._log_group = logs.LogGroup(self, "Logs", retention=logs.RetentionDays.ONE_MONTH)
        self._role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("codebuild.amazonaws.com"),
            description=f"Slipway builds ({env_name})",
        )
        grant_read_image(self._role, image)
        self._grant_apps(release_store, env_name)
        # The builds' log streams, in the builder's own group (the projects' logging configuration).
        self._log_group.grant_write(self._role)
        self._projects: dict[ec2.InstanceArchitecture, codebuild.Project] = {}
        for architecture in sorted(set(apps.values()), key=lambda a: ARCHITECTURE_NAMES[a]):
            self._projects[architecture] = self._project(env_name, architecture, image)
        self._apps = dict(apps)

    def _project(
        self, env_name: str, architecture: ec2.InstanceArchitecture, image: s3_assets.Asset
    ) -> codebuild.Project:
        name = ARCHITECTURE_NAMES[architecture]
        project = codebuild.Project(
            self,
            f"Project-{name.replace('_', '')}",
            description=f"Slipway builds for {name} fleets in {env_name}",
            # The role as it is: CDK's Project adds to its role, unconditionally, a default log group
            # (/aws/codebuild/<project>) these projects never write to (they log to the builder's group).
            # Everything a build uses is granted to the role itself in __init__: a project setting that
            # needs a grant of its own (an S3 cache, a VPC, secret variables) must be granted there too.
            role=self._role.without_policy_updates(),
            # Builds publish no test or coverage reports: no report group permissions.
            grant_report_group_permissions=False,
            build_spec=codebuild.BuildSpec.from_object(buildspec()),
            environment=codebuild.BuildEnvironment(
                build_image=BUILD_IMAGES[architecture],
                compute_type=codebuild.ComputeType.MEDIUM,
                environment_variables={IMAGE_VARIABLE: codebuild.BuildEnvironmentVariable(value=image.s3_object_url)},
            ),
            timeout=BUILD_TIMEOUT,
            logging=codebuild.LoggingOptions(cloud_watch=codebuild.CloudWatchLoggingOptions(log_group=self._log_group)),
        )
        acknowledge(
            project,
            "AwsSolutions-CB4",
            "Build artifacts go to the release bucket, encrypted there (SSE-S3); CodeBuild's own AWS-managed key "
            "covers its temporary storage. A customer-managed key per environment would add cost, not protection.",
        )
        return project

    def _grant_apps(self, release_store: ReleaseStore, env_name: str) -> None:
        """Builds read uploaded sources and write slugs (one object per upload, named by its id) and
        keep dependency caches, of every app of the environment (one pattern each, whatever the
        number of apps), and nothing else of the bucket."""
        bucket = release_store.bucket
        key = AppKeys(EVERY_APP, env_name)
        reads, writes = [key.upload("*", SOURCE), f"{key.caches}*"], [key.upload("*", SLUG), f"{key.caches}*"]
        self._role.add_to_principal_policy(
            iam.PolicyStatement(actions=["s3:GetObject"], resources=[bucket.arn_for_objects(p) for p in reads])
        )
        self._role.add_to_principal_policy(
            iam.PolicyStatement(actions=["s3:PutObject"], resources=[bucket.arn_for_objects(p) for p in writes])
        )
        # CodeBuild lists the cache prefix before it restores it.
        self._role.add_to_principal_policy(
            iam.PolicyStatement(actions=["s3:ListBucket"], resources=[bucket.bucket_arn])
        )
        for pattern in dict.fromkeys([*reads, *writes]):
            acknowledge(
                self._role,
                f"AwsSolutions-IAM5[Resource::{release_store.arn_finding(self._role)}/{pattern}]",
                f"Builds of every app of {env_name} read its uploaded sources and write their slugs (one object per "
                "upload, named by its id) and keep its dependency cache, nothing else of the bucket.",
            )

    def settings_for(self, app: str) -> BuildSettings:
        """Where ``app`` is built: the project of its fleet's architecture, and the builds' log group."""
        return BuildSettings(
            project=self._projects[self._apps[app]].project_name, log_group=self._log_group.log_group_name
        )

    @property
    def projects(self) -> list[codebuild.Project]:
        return [self._projects[a] for a in sorted(self._projects, key=lambda a: ARCHITECTURE_NAMES[a])]

    @property
    def log_group(self) -> logs.ILogGroup:
        return self._log_group
