"""The release bucket: all of the platform's state, one prefix per app and environment."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Aws, Duration, Names, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3

from constructs import Construct
from constructs.acknowledge import acknowledge
from slipway_release.layout import EVERY_APP, UPLOADS, AppKeys

# The bucket holds every release ever published: its logical ID must never change,
# or CloudFormation would create a new, empty bucket and orphan the old one.
BUCKET_LOGICAL_ID = "ReleaseBucket"
# S3 Replication Time Control: what replication promises (and CloudWatch measures) at most.
REPLICATION_MINUTES = 15


def replica_bucket_name(env: str, region: str) -> str:
    """The release bucket of ``env``'s secondary region, named so that the primary's replication rule
    needs nothing of the secondary's stack (``slipway-<env>-<account>-<region>``, at most 56 characters)."""
    return f"slipway-{env}-{Aws.ACCOUNT_ID}-{region}"


class ReleaseStore(Construct):
    """Versioned, encrypted, TLS-only S3 bucket laid out as ``<app>/<env>/r<N>/...``.

    The bucket is retained when the stack is deleted. Noncurrent object versions
    (left by overwrites of ``current`` and the canonical ``env``) expire after
    ``noncurrent_version_days``.
    """

    def __init__(
        self, scope: Construct, id_: str, *, noncurrent_version_days: int = 90, bucket_name: str | None = None
    ) -> None:
        super().__init__(scope, id_)
        if noncurrent_version_days < 1:
            raise ValueError("ReleaseStore: noncurrent_version_days must be at least 1 day")
        self._bucket = s3.Bucket(
            self,
            "Bucket",
            bucket_name=bucket_name,
            versioned=True,
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            removal_policy=RemovalPolicy.RETAIN,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="ExpireNoncurrentVersions",
                    noncurrent_version_expiration=Duration.days(noncurrent_version_days),
                    abort_incomplete_multipart_upload_after=Duration.days(7),
                ),
                # Sources on their way in: a publish finishes within the hour its URLs last.
                s3.LifecycleRule(
                    id="ExpireUploads",
                    prefix=UPLOADS,
                    expiration=Duration.days(1),
                    noncurrent_version_expiration=Duration.days(1),
                    abort_incomplete_multipart_upload_after=Duration.days(1),
                ),
            ],
        )
        cfn_bucket = self._bucket.node.default_child
        assert isinstance(cfn_bucket, s3.CfnBucket)
        cfn_bucket.override_logical_id(BUCKET_LOGICAL_ID)
        acknowledge(
            self._bucket,
            "AwsSolutions-S1",
            "Who published or deployed what is recorded in each release.json and in the rollout "
            "history; object-level audit belongs to the organization's CloudTrail data events, not to a "
            "second log bucket per environment.",
        )

    def replicate_to(self, bucket_name: str) -> None:
        """Copy every object written here to ``bucket_name`` (the secondary region's release bucket,
        versioned too) within :data:`REPLICATION_MINUTES`, deletions (markers) included; through a role
        that may read this bucket's versions and write replicas there and nothing else."""
        destination = f"arn:{Aws.PARTITION}:s3:::{bucket_name}"
        role = iam.Role(
            self,
            "ReplicationRole",
            assumed_by=iam.ServicePrincipal("s3.amazonaws.com"),
            description="S3 replicates the release bucket to the secondary region's",
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:GetReplicationConfiguration", "s3:ListBucket"], resources=[self._bucket.bucket_arn]
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:GetObjectVersionForReplication", "s3:GetObjectVersionAcl", "s3:GetObjectVersionTagging"],
                resources=[self._bucket.arn_for_objects("*")],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:ReplicateObject", "s3:ReplicateDelete", "s3:ReplicateTags"],
                resources=[f"{destination}/*"],
            )
        )
        acknowledge(
            role,
            f"AwsSolutions-IAM5[Resource::{self.arn_finding(role)}/*]",
            "Replication copies every object of the release bucket: it reads any object's versions.",
        )
        replicas = bucket_name.replace(Aws.ACCOUNT_ID, "<AWS::AccountId>")  # as cdk-nag writes the token
        acknowledge(
            role,
            f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::{replicas}/*]",
            "Replicas of every object land in the secondary region's release bucket, and nowhere else.",
        )
        minutes = s3.CfnBucket.ReplicationTimeValueProperty(minutes=REPLICATION_MINUTES)
        cfn_bucket = self._bucket.node.default_child
        assert isinstance(cfn_bucket, s3.CfnBucket)
        cfn_bucket.replication_configuration = s3.CfnBucket.ReplicationConfigurationProperty(
            role=role.role_arn,
            rules=[
                s3.CfnBucket.ReplicationRuleProperty(
                    id="ToSecondaryRegion",
                    status="Enabled",
                    priority=1,
                    filter=s3.CfnBucket.ReplicationRuleFilterProperty(prefix=""),
                    delete_marker_replication=s3.CfnBucket.DeleteMarkerReplicationProperty(status="Enabled"),
                    destination=s3.CfnBucket.ReplicationDestinationProperty(
                        bucket=destination,
                        replication_time=s3.CfnBucket.ReplicationTimeProperty(status="Enabled", time=minutes),
                        metrics=s3.CfnBucket.MetricsProperty(status="Enabled", event_threshold=minutes),
                    ),
                )
            ],
        )

    @property
    def bucket(self) -> s3.IBucket:
        """The release bucket."""
        return self._bucket

    def arn_finding(self, scope: Construct) -> str:
        """How a cdk-nag finding on a policy in ``scope``'s stack writes the bucket's ARN: by its logical
        ID in the bucket's own stack, by the parameter CDK passes it in as in a nested stack."""
        cfn_bucket = self._bucket.node.default_child
        assert isinstance(cfn_bucket, s3.CfnBucket)
        if Stack.of(scope) is Stack.of(self):
            return f"<{BUCKET_LOGICAL_ID}.Arn>"
        return f"<referenceto{Names.unique_id(cfn_bucket)}Arn>"

    def grant_read_app(self, grantee: iam.IGrantable, *, app: str, env: str) -> None:
        """Let ``grantee`` read and list ``<app>/<env>/`` and nothing else of the bucket."""
        prefix = AppKeys(app, env).prefix
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(actions=["s3:GetObject"], resources=[self._bucket.arn_for_objects(f"{prefix}*")])
        )
        # Listing its own prefix lets an instance tell "no release published yet" (an empty
        # listing) from a permission problem (an error), which a failed GetObject cannot.
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[self._bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{prefix}*"]}},
            )
        )

    def _grant_keys(
        self, grantee: iam.IGrantable, *, reads: Sequence[str], writes: Sequence[str], who: str, env: str
    ) -> None:
        """Let ``grantee`` read the key patterns ``reads``, write and delete ``writes`` and list the bucket,
        and acknowledge cdk-nag's finding on each wildcard pattern with what ``who`` does there."""
        principal = grantee.grant_principal
        principal.add_to_principal_policy(
            iam.PolicyStatement(actions=["s3:GetObject"], resources=[self._bucket.arn_for_objects(p) for p in reads])
        )
        principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["s3:PutObject", "s3:DeleteObject"], resources=[self._bucket.arn_for_objects(p) for p in writes]
            )
        )
        # Unconditional: with ListBucket, S3 answers a missing key with 404 NoSuchKey (how
        # the control plane tells "nothing published yet"), not 403. A prefix condition
        # would not apply to GetObject requests and bring the 403 back.
        principal.add_to_principal_policy(
            iam.PolicyStatement(actions=["s3:ListBucket"], resources=[self._bucket.bucket_arn])
        )
        assert isinstance(principal, Construct), principal  # a role: the grantee's policies are its children
        for pattern in dict.fromkeys([*reads, *writes]):
            if "*" in pattern:
                acknowledge(
                    principal,
                    f"AwsSolutions-IAM5[Resource::{self.arn_finding(principal)}/{pattern}]",
                    f"{who} ({pattern}) of every app of {env}, which this environment's control plane serves "
                    "all of, and nothing of other environments (no app is named like one).",
                )

    def grant_publish(self, grantee: iam.IGrantable, *, env: str) -> None:
        """Let ``grantee`` (the API) publish releases of every app in ``env``.

        Read everything under ``<app>/<env>/`` and ``uploads/<app>/<env>/``; write and delete
        only new releases' files (``<app>/<env>/r*``: a delete, in this versioned bucket, adds
        a marker that gives back a release id that could not be completed), the canonical
        ``env``, uploads (where multipart uploads are also inspected and aborted), and requests
        to cancel a rollout (``<app>/<env>/cancels/*``, which the rollout reads). Never
        ``current``, ``previous``, ``lock`` or ``instances/``: only rollouts move those.
        Nothing of other environments' prefixes, no version deletes. One pattern per key for
        every app (``EVERY_APP``), so the grant is the same size for 1 app or 100.
        """
        k = AppKeys(EVERY_APP, env)
        self._grant_keys(
            grantee,
            reads=[f"{k.prefix}*", f"{k.uploads}*"],
            writes=[k.releases(), k.env_file, f"{k.cancels}*", f"{k.uploads}*"],
            who="The API reads releases, pointers and uploads and writes new releases' files, the canonical env, "
            "cancel requests and uploads",
            env=env,
        )
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                resources=[self._bucket.arn_for_objects(f"{k.uploads}*")],
            )
        )

    def grant_release(self, grantee: iam.IGrantable, *, env: str) -> None:
        """Let ``grantee`` (the release workflow) read ``<app>/<env>/`` and its uploads, write new
        releases' files (``<app>/<env>/r*``: never ``current``, ``lock``, ``previous`` or
        ``instances/``) and the uploads' records, and delete a release id it could not complete;
        for every app of ``env``."""
        keys = AppKeys(EVERY_APP, env)
        self._grant_keys(
            grantee,
            reads=[f"{keys.prefix}*", f"{keys.uploads}*"],
            writes=[keys.releases(), f"{keys.uploads}*"],
            who="The release workflow reads releases and uploads and writes new releases",
            env=env,
        )

    def grant_rollout(self, grantee: iam.IGrantable, *, env: str) -> None:
        """Let ``grantee`` (the rollout tasks) read ``<app>/<env>/`` and write only its ``current``
        and ``previous`` pointers, its deploy ``lock`` (which it also deletes to unlock) and the
        release each instance runs (``instances/<id>``); for every app of ``env``."""
        keys = AppKeys(EVERY_APP, env)
        self._grant_keys(
            grantee,
            reads=[f"{keys.prefix}*"],
            writes=list(keys.rollout_keys()),
            who="Rollouts read releases and write the current and previous pointers, the deploy lock and which "
            "release each instance runs (one object per instance id)",
            env=env,
        )
