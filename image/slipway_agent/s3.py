"""Reading a release from the S3 release bucket (the only AWS call the agent makes)."""

from __future__ import annotations

import hashlib
from typing import Any

CHUNK = 1024 * 1024


class ReleaseMissing(LookupError):
    """An object of the release is not in the bucket."""


class ReleaseStore:
    """Read-only access to ``s3://<bucket>/``; the boto3 client is created on first use."""

    def __init__(self, bucket: str, endpoint_url: str | None):
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self._client: Any = None

    def _s3(self) -> Any:
        if self._client is None:
            import boto3  # the instance's distribution package; imported late so pure modules never need it
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url,
                config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=30),
            )
        return self._client

    def _get(self, key: str) -> Any:
        from botocore.exceptions import ClientError

        try:
            return self._s3().get_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ReleaseMissing(f"s3://{self.bucket}/{key} does not exist") from None
            raise

    def read(self, key: str, limit: int) -> bytes:
        """The whole object, refused if larger than ``limit`` bytes."""
        response = self._get(key)
        if response["ContentLength"] > limit:
            raise ValueError(f"s3://{self.bucket}/{key} is {response['ContentLength']} bytes, over {limit}")
        return response["Body"].read()

    def download(self, key: str, path: str, expected_size: int) -> None:
        """Stream the object to ``path``; refuse it unless it is ``expected_size`` bytes."""
        response = self._get(key)
        if response["ContentLength"] != expected_size:
            raise ValueError(
                f"s3://{self.bucket}/{key} is {response['ContentLength']} bytes but release.json "
                f"says {expected_size}; the release is corrupt, publish a new one"
            )
        body = response["Body"]
        with open(path, "wb") as out:
            for chunk in iter(lambda: body.read(CHUNK), b""):
                out.write(chunk)


def sha256_file(path: str) -> tuple[str, int]:
    """Hex sha256 and size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
