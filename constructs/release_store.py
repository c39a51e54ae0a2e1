"""The release bucket: all of the platform's state, one prefix per app and environment."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Aws, Duration, Names, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_ssm as ssm

from constructs import Construct
from constructs.acknowledge import acknowledge
from slipway.settings import release_bucket_parameter_name
from slipway_release.layout import ENV_FILE, EVERY_APP, SLACK_REQUESTS, SLUG, SOURCE, UPLOAD_RECORD, UPLOADS, AppKeys

# The bucket holds every release ever published: its logical ID must never change,
# or CloudFormation would create a new, empty bucket and orphan the old one.
BUCKET_LOGICAL_ID = "ReleaseBucket"
# The parts of a multipart upload, which take no conditional header (its completion does):
# S3's values of the s3:ObjectCreationOperation condition key.
UNCONDITIONAL_PARTS = ("CreateMultipartUpload", "UploadPart", "UploadPartCopy")
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
                # The Slack commands accepted, kept to refuse a replay: a signature is accepted only
                # within five minutes of its timestamp, so after a day its record refuses nothing.
                s3.LifecycleRule(
                    id="ExpireSlackRequests",
                    prefix=SLACK_REQUESTS,
                    expiration=Duration.days(1),
                    noncurrent_version_expiration=Duration.days(1),
                ),
            ],
        )
        cfn_bucket = self._bucket.node.default_child
        assert isinstance(cfn_bucket, s3.CfnBucket)
        cfn_bucket.override_logical_id(BUCKET_LOGICAL_ID)
        self._enforce_write_once()
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

    def name_for_promotions(self, env: str) -> None:
        """Name the bucket in ``/slipway/<env>/release-bucket``, where the release writer of another
        environment of the account reads it to promote one of ``env``'s releases (its name is
        CloudFormation's choice)."""
        ssm.StringParameter(
            self,
            "BucketName",
            parameter_name=release_bucket_parameter_name(env),
            string_value=self._bucket.bucket_name,
            description=f"The release bucket of {env}: where promotions from {env} read its releases",
        )

    def grant_promotion_from(self, grantee: iam.IGrantable, *, env: str, region: str, app_env_keys: AppKeys) -> None:
        """Let ``grantee`` (this environment's release writer) read, in environment ``env`` of this account
        (in ``region``), the name of its bucket and its releases' records, slugs and sources: what a
        promotion from ``env`` verifies and copies. Nothing else of ``env``, and no write."""
        stack = Stack.of(self)
        principal = grantee.grant_principal
        principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["ssm:GetParameter"],
                resources=[
                    stack.format_arn(
                        service="ssm",
                        region=region,
                        resource="parameter",
                        resource_name=release_bucket_parameter_name(env).lstrip("/"),
                    )
                ],
            )
        )
        # The bucket's name is known only when the promotion reads it: any bucket of this account, and
        # in it only env's release records, slugs and sources (beside the manifest in version 2).
        read = [key for key in app_env_keys.write_once() if not key.endswith(f"/{ENV_FILE}")]
        principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject"],
                resources=[f"arn:{stack.partition}:s3:::*/{key}" for key in read],
                conditions={"StringEquals": {"s3:ResourceAccount": stack.account}},
            )
        )
        assert isinstance(principal, Construct), principal
        for key in read:
            acknowledge(
                principal,
                f"AwsSolutions-IAM5[Resource::arn:{stack.partition}:s3:::*/{key}]",
                f"A promotion from {env} reads that environment's release records, slugs and sources ({key}) in its "
                "bucket, whose name only its SSM parameter says; in buckets of this account only, and reads only.",
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
        self,
        grantee: iam.IGrantable,
        *,
        reads: Sequence[str],
        writes: Sequence[str],
        deletes: Sequence[str] = (),
        aborts: Sequence[str] = (),
        versions: Sequence[str] = (),
        who: str,
        env: str,
    ) -> None:
        """Let ``grantee`` read the key patterns ``reads``, write ``writes``, delete ``deletes``, abort the
        multipart uploads of ``aborts``, read the versions of ``versions``, and list the bucket; and
        acknowledge cdk-nag's finding on each
        wildcard pattern with what ``who`` does there."""
        principal = grantee.grant_principal
        for actions, patterns in (
            (["s3:GetObject"], reads),
            (["s3:PutObject"], writes),
            (["s3:DeleteObject"], deletes),
            (["s3:AbortMultipartUpload"], aborts),
            (["s3:GetObjectVersion"], versions),
        ):
            if patterns:
                principal.add_to_principal_policy(
                    iam.PolicyStatement(actions=actions, resources=[self._bucket.arn_for_objects(p) for p in patterns])
                )
        # Unconditional: with ListBucket, S3 answers a missing key with 404 NoSuchKey (how
        # the control plane tells "nothing published yet"), not 403. A prefix condition
        # would not apply to GetObject requests and bring the 403 back.
        principal.add_to_principal_policy(
            iam.PolicyStatement(actions=["s3:ListBucket"], resources=[self._bucket.bucket_arn])
        )
        assert isinstance(principal, Construct), principal  # a role: the grantee's policies are its children
        for pattern in dict.fromkeys([*reads, *writes, *deletes, *aborts, *versions]):
            if "*" in pattern:
                acknowledge(
                    principal,
                    f"AwsSolutions-IAM5[Resource::{self.arn_finding(principal)}/{pattern}]",
                    f"{who} ({pattern}) of every app of {env}, which this environment's control plane serves "
                    "all of, and nothing of other environments (no app is named like one).",
                )

    def grant_publish(self, grantee: iam.IGrantable, *, env: str) -> None:
        """Let ``grantee`` (the API) read releases and uploads of every app in ``env`` and write only
        what the API makes: uploaded sources and their records (deleting a refused one), and requests
        to cancel a rollout. No release, slug, source, canonical config or pointer: the release
        writer makes releases, rollouts move ``current``. One pattern per key for every app
        (``EVERY_APP``), so the grant is the same size for 1 app or 100."""
        k = AppKeys(EVERY_APP, env)
        self._grant_keys(
            grantee,
            reads=[f"{k.prefix}*", f"{k.uploads}*"],
            writes=[k.upload("*", SOURCE), k.upload("*", UPLOAD_RECORD), f"{k.cancels}*"],
            deletes=[k.upload("*", SOURCE), k.upload("*", UPLOAD_RECORD)],
            who="The API reads releases, pointers and uploads, and writes uploaded sources, their records and "
            "cancel requests",
            env=env,
        )

    def grant_release(self, grantee: iam.IGrantable, *, env: str) -> None:
        """Let ``grantee`` (the release writer) read ``<app>/<env>/`` and its uploads, create releases,
        slugs and sources (written once: the bucket's policy refuses the rest), write the canonical
        config and the uploads' records, and drop an upload's copies once published; for every app of
        ``env``. Never ``current``, ``previous``, ``lock`` or ``instances/``."""
        keys = AppKeys(EVERY_APP, env)
        self._grant_keys(
            grantee,
            reads=[f"{keys.prefix}*", f"{keys.uploads}*"],
            writes=[*keys.release_files(), keys.env_file, keys.upload("*", UPLOAD_RECORD)],
            deletes=[keys.upload("*", SOURCE), keys.upload("*", SLUG)],
            aborts=[keys.slug("*"), keys.source("*")],
            # What it copies into a slug or a source is the object version it checked.
            versions=[
                keys.upload("*", SOURCE),
                keys.upload("*", SLUG),
                keys.release("r*", SLUG),
                keys.release("r*", SOURCE),
            ],
            who="The release writer reads releases and uploads, creates releases, slugs and sources (once each), "
            "and writes the canonical config and the uploads' records",
            env=env,
        )

    def _enforce_write_once(self) -> None:
        """The bucket's policy: no principal may overwrite or delete a release's files, a slug or a
        source (:meth:`slipway_release.layout.AppKeys.write_once`), whatever IAM grants it: a write
        there without ``If-None-Match`` is refused (S3's conditional-write enforcement; the parts of a
        multipart upload carry no header, and its completion must), and so is every delete of them or of
        their versions. Enforced by S3 itself for every app and environment of the bucket."""
        patterns = [self._bucket.arn_for_objects(p) for p in AppKeys(EVERY_APP, EVERY_APP).write_once()]
        self._bucket.add_to_resource_policy(
            iam.PolicyStatement(
                sid="ReleasesAreWrittenOnce",
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=["s3:PutObject"],
                resources=patterns,
                conditions={
                    "Null": {"s3:if-none-match": "true"},
                    "StringNotEquals": {"s3:ObjectCreationOperation": list(UNCONDITIONAL_PARTS)},
                },
            )
        )
        self._bucket.add_to_resource_policy(
            iam.PolicyStatement(
                sid="ReleasesAreNeverDeleted",
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=["s3:DeleteObject", "s3:DeleteObjectVersion"],
                resources=patterns,
            )
        )

    def grant_rollout(self, grantee: iam.IGrantable, *, env: str) -> None:
        """Let ``grantee`` (the rollout tasks) read ``<app>/<env>/`` and write only its ``current``
        and ``previous`` pointers, its deploy ``lock`` (which it also deletes to unlock) and the
        release each instance runs (``instances/<id>``, deleted when it is not known); for every app
        of ``env``."""
        keys = AppKeys(EVERY_APP, env)
        self._grant_keys(
            grantee,
            reads=[f"{keys.prefix}*"],
            writes=list(keys.rollout_keys()),
            deletes=[keys.lock, f"{keys.instances}*"],
            who="Rollouts read releases and write the current and previous pointers, the deploy lock and which "
            "release each instance runs (one object per instance id)",
            env=env,
        )
