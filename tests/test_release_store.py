"""ReleaseStore: the bucket that holds all of the platform's state."""

from __future__ import annotations

from aws_cdk.assertions import Match, Template

from constructs.release_store import BUCKET_LOGICAL_ID


def test_bucket_logical_id_is_pinned(staging: Template, production: Template) -> None:
    # Changing it would make CloudFormation replace the bucket and orphan every release.
    assert BUCKET_LOGICAL_ID == "ReleaseBucket"
    for template in (staging, production):
        assert list(template.find_resources("AWS::S3::Bucket")) == ["ReleaseBucket"]


def test_bucket_is_versioned_encrypted_and_private(staging: Template) -> None:
    staging.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "VersioningConfiguration": {"Status": "Enabled"},
            "BucketEncryption": {
                "ServerSideEncryptionConfiguration": [{"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True,
                "BlockPublicPolicy": True,
                "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True,
            },
            "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
        },
    )


def test_bucket_is_retained_on_delete(staging: Template) -> None:
    staging.has_resource("AWS::S3::Bucket", {"DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain"})


def test_noncurrent_versions_and_stale_uploads_expire(staging: Template) -> None:
    [bucket] = staging.find_resources("AWS::S3::Bucket").values()
    rules = {rule["Id"]: rule for rule in bucket["Properties"]["LifecycleConfiguration"]["Rules"]}
    assert rules["ExpireNoncurrentVersions"] == {
        "Id": "ExpireNoncurrentVersions",
        "NoncurrentVersionExpiration": {"NoncurrentDays": 90},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
        "Status": "Enabled",
    }
    # Releases are never under uploads/: only unfinished publishes expire.
    assert rules["ExpireUploads"] == {
        "Id": "ExpireUploads",
        "Prefix": "uploads/",
        "ExpirationInDays": 1,
        "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        "Status": "Enabled",
    }


def test_bucket_policy_denies_plain_http(staging: Template) -> None:
    staging.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "Bucket": {"Ref": "ReleaseBucket"},
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Effect": "Deny",
                                "Action": "s3:*",
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                                "Principal": {"AWS": "*"},
                            }
                        )
                    ]
                )
            },
        },
    )
