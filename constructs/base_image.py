"""An optional baked AMI: EC2 Image Builder runs the base image's provisioning script."""

from __future__ import annotations

import textwrap

from aws_cdk import Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_imagebuilder as imagebuilder
from aws_cdk import aws_s3_assets as s3_assets

from constructs import Construct
from constructs.acknowledge import acknowledge

# Image Builder resources are immutable per version: derive the version from the
# image's content so a changed image/ gets a new component and recipe.
_VERSION_SPACE = 2**30

PARENT_IMAGES = {
    ec2.InstanceArchitecture.X86_64: "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-x86_64",
    ec2.InstanceArchitecture.ARM_64: "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-arm64",
}
ARCHITECTURE_NAMES = {ec2.InstanceArchitecture.X86_64: "x86_64", ec2.InstanceArchitecture.ARM_64: "arm64"}
BUILD_INSTANCE_TYPES = {ec2.InstanceArchitecture.X86_64: "t3.small", ec2.InstanceArchitecture.ARM_64: "t4g.small"}


def component_document(*, image_url: str) -> str:
    """The AWSTOE document: fetch the base image, run ``provision.sh`` without instance settings."""
    return textwrap.dedent(
        f"""\
        name: slipway-base-image
        description: Slipway base image (deploy user, deploy program, rsyslog, CloudWatch agent)
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Fetch
                action: S3Download
                inputs:
                  - source: {image_url}
                    destination: /opt/slipway/image.zip
              - name: Provision
                action: ExecuteBash
                inputs:
                  commands:
                    - rm -rf /opt/slipway/image && mkdir -p /opt/slipway/image
                    - python3 -m zipfile -e /opt/slipway/image.zip /opt/slipway/image
                    - bash /opt/slipway/image/provision.sh
        """
    )


def grant_read_image(role: iam.IRole, image: s3_assets.Asset) -> None:
    """Let ``role`` fetch the base image: that one object, not the whole CDK asset bucket."""
    role.add_to_principal_policy(
        iam.PolicyStatement(actions=["s3:GetObject"], resources=[image.bucket.arn_for_objects(image.s3_object_key)])
    )


def parameter_name(env_name: str, architecture: ec2.InstanceArchitecture) -> str:
    """The SSM parameter that holds the newest baked AMI of ``env_name`` for ``architecture``."""
    return f"/slipway/{env_name}/base-image/{ARCHITECTURE_NAMES[architecture]}"


class BaseImagePipeline(Construct):
    """An Image Builder pipeline per CPU architecture that bakes ``image/`` into an AMI.

    Each build starts from the newest Amazon Linux 2023, runs ``provision.sh`` and
    writes the new AMI's id to ``/slipway/<env>/base-image/<arch>``. The pipeline runs
    weekly when Amazon Linux has updates, or on demand
    (``aws imagebuilder start-image-pipeline-execution``). Fleets launch from it only
    when configured to (``base_image.use_baked``), so a new environment never waits
    for a bake.
    """

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        env_name: str,
        image: s3_assets.Asset,
        architectures: frozenset[ec2.InstanceArchitecture],
        subnet: ec2.ISubnet,
        vpc: ec2.IVpc,
    ) -> None:
        super().__init__(scope, id_)
        if not architectures:
            raise ValueError("BaseImagePipeline: give at least one architecture to bake for")
        region = Stack.of(self).region
        version = f"1.0.{int(image.asset_hash[:12], 16) % _VERSION_SPACE}"
        role = iam.Role(
            self,
            "BuildRole",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description=f"Image Builder build instances of the {env_name} base image",
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name("EC2InstanceProfileForImageBuilder"),
                iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore"),
            ],
        )
        grant_read_image(role, image)
        acknowledge(
            role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/EC2InstanceProfileForImageBuilder]",
            "The AWS-maintained policy an Image Builder build instance needs to report progress and logs.",
        )
        acknowledge(
            role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore]",
            "Image Builder drives its build instance through the SSM agent; this is the AWS-maintained policy for it.",
        )
        profile = iam.CfnInstanceProfile(self, "BuildInstanceProfile", roles=[role.role_name])
        security_group = ec2.SecurityGroup(
            self, "BuildSecurityGroup", vpc=vpc, description="Image Builder build instances (outbound only)"
        )
        component = imagebuilder.CfnComponent(
            self,
            "Component",
            name=f"slipway-{env_name}-base-image",
            platform="Linux",
            version=version,
            data=component_document(image_url=image.s3_object_url),
        )
        self._pipelines: dict[ec2.InstanceArchitecture, imagebuilder.CfnImagePipeline] = {}
        for architecture in sorted(architectures, key=lambda a: a.value):
            arch = ARCHITECTURE_NAMES[architecture].replace("_", "")
            recipe = imagebuilder.CfnImageRecipe(
                self,
                f"Recipe{arch}",
                name=f"slipway-{env_name}-base-image-{arch}",
                version=version,
                parent_image=f"ssm:{PARENT_IMAGES[architecture]}",
                components=[
                    imagebuilder.CfnImageRecipe.ComponentConfigurationProperty(component_arn=component.attr_arn)
                ],
                block_device_mappings=[
                    imagebuilder.CfnImageRecipe.InstanceBlockDeviceMappingProperty(
                        device_name="/dev/xvda",
                        ebs=imagebuilder.CfnImageRecipe.EbsInstanceBlockDeviceSpecificationProperty(
                            encrypted=True, volume_type="gp3", volume_size=16, delete_on_termination=True
                        ),
                    )
                ],
            )
            infrastructure = imagebuilder.CfnInfrastructureConfiguration(
                self,
                f"Infrastructure{arch}",
                name=f"slipway-{env_name}-base-image-{arch}",
                instance_profile_name=profile.ref,
                instance_types=[BUILD_INSTANCE_TYPES[architecture]],
                subnet_id=subnet.subnet_id,
                security_group_ids=[security_group.security_group_id],
                terminate_instance_on_failure=True,
                instance_metadata_options=imagebuilder.CfnInfrastructureConfiguration.InstanceMetadataOptionsProperty(
                    http_tokens="required"
                ),
            )
            distribution = imagebuilder.CfnDistributionConfiguration(
                self,
                f"Distribution{arch}",
                name=f"slipway-{env_name}-base-image-{arch}",
                distributions=[
                    imagebuilder.CfnDistributionConfiguration.DistributionProperty(
                        region=region,
                        ami_distribution_configuration={
                            "Name": f"slipway-{env_name}-{arch}-{{{{ imagebuilder:buildDate }}}}",
                            "AmiTags": {"slipway:env": env_name},
                        },
                        ssm_parameter_configurations=[
                            imagebuilder.CfnDistributionConfiguration.SsmParameterConfigurationProperty(
                                parameter_name=parameter_name(env_name, architecture), data_type="aws:ec2:image"
                            )
                        ],
                    )
                ],
            )
            self._pipelines[architecture] = imagebuilder.CfnImagePipeline(
                self,
                f"Pipeline{arch}",
                name=f"slipway-{env_name}-base-image-{arch}",
                image_recipe_arn=recipe.attr_arn,
                infrastructure_configuration_arn=infrastructure.attr_arn,
                distribution_configuration_arn=distribution.attr_arn,
                schedule=imagebuilder.CfnImagePipeline.ScheduleProperty(
                    schedule_expression="cron(0 4 ? * mon *)",
                    pipeline_execution_start_condition="EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE",
                ),
                image_tests_configuration=imagebuilder.CfnImagePipeline.ImageTestsConfigurationProperty(
                    image_tests_enabled=True, timeout_minutes=60
                ),
            )

    @property
    def pipeline_arns(self) -> dict[str, str]:
        """Each architecture's pipeline ARN, by architecture name (``x86_64``, ``arm64``)."""
        return {ARCHITECTURE_NAMES[arch]: pipeline.attr_arn for arch, pipeline in self._pipelines.items()}
