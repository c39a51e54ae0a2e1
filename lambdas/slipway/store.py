"""The release bucket through S3: conditional writes, presigned uploads, listings.

A thin adapter: every method is one or two S3 calls and knows nothing of releases
beyond keys. The client is created by the caller (lazily, never at import).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

# S3's own answers to a conditional write that lost the race.
_CONFLICTS = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
# ... and to a conditional delete that found the object changed or gone.
_GONE = {*_CONFLICTS, "NoSuchKey", "404"}


@dataclass(frozen=True)
class Stored:
    """An object's body and the ETag to compare-and-swap against."""

    body: bytes
    etag: str


def _code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class Bucket:
    """One S3 bucket, through an already-created boto3 S3 client."""

    def __init__(self, client: Any, name: str) -> None:
        self.client, self.name = client, name

    def read(self, key: str) -> Stored | None:
        """The object at ``key``, or ``None`` if there is none."""
        try:
            response = self.client.get_object(Bucket=self.name, Key=key)
        except self.client.exceptions.NoSuchKey:
            return None
        return Stored(body=response["Body"].read(), etag=response["ETag"])

    def stream(self, key: str) -> IO[bytes] | None:
        try:
            body: IO[bytes] = self.client.get_object(Bucket=self.name, Key=key)["Body"]
        except self.client.exceptions.NoSuchKey:
            return None
        return body

    def size(self, key: str) -> int | None:
        try:
            return int(self.client.head_object(Bucket=self.name, Key=key)["ContentLength"])
        except self.client.exceptions.ClientError as error:
            if _code(error) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def create(self, key: str, body: bytes) -> bool:
        """Write ``key`` only if it does not exist; ``False`` if another writer got there first."""
        return self._conditional_put(key, body, IfNoneMatch="*")

    def replace(self, key: str, body: bytes, *, etag: str) -> bool:
        """Overwrite ``key`` only if it still has ``etag``; ``False`` if it changed meanwhile."""
        return self._conditional_put(key, body, IfMatch=etag)

    def _conditional_put(self, key: str, body: bytes, **condition: str) -> bool:
        try:
            self.client.put_object(Bucket=self.name, Key=key, Body=body, **condition)
        except self.client.exceptions.ClientError as error:
            if _code(error) in _CONFLICTS:
                return False
            raise
        return True

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=body)

    def delete_if_unchanged(self, key: str, *, etag: str) -> bool:
        """Delete ``key`` only if it still has ``etag`` (S3's conditional delete); ``False`` if it
        changed or is gone, and nothing was deleted."""
        try:
            self.client.delete_object(Bucket=self.name, Key=key, IfMatch=etag)
        except self.client.exceptions.ClientError as error:
            if _code(error) in _GONE:
                return False
            raise
        return True

    def stream_version(self, key: str) -> tuple[IO[bytes], str] | None:
        """The object's body and the version id of what it reads (an object version never changes)."""
        try:
            response = self.client.get_object(Bucket=self.name, Key=key)
        except self.client.exceptions.NoSuchKey:
            return None
        return response["Body"], str(response.get("VersionId") or "null")

    def version(self, key: str) -> str | None:
        """The id of the object's current version, or ``None`` if there is no object."""
        try:
            return str(self.client.head_object(Bucket=self.name, Key=key).get("VersionId") or "null")
        except self.client.exceptions.ClientError as error:
            if _code(error) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def copy_once(self, destination: str, *, source: str, version: str, bucket: str | None = None) -> bool:
        """Create ``destination`` as a server-side copy of version ``version`` of ``source`` (in this
        bucket, or ``bucket``), only if it does not exist: ``False`` if it did (nothing written).

        Where the bucket's policy refuses writes without ``If-None-Match`` (slipway_release.layout's
        write-once keys), ``CopyObject`` cannot write at all, so the copy is one multipart upload:
        ``UploadPartCopy`` of the pinned version (parts take no conditional header), completed with
        ``If-None-Match: *``. One part: S3 copies up to 5 GiB in one, more than a slug or source may be.
        """
        upload = self.client.create_multipart_upload(Bucket=self.name, Key=destination)["UploadId"]
        try:
            copy_source = {"Bucket": bucket or self.name, "Key": source}
            if version != "null":
                copy_source["VersionId"] = version
            part = self.client.upload_part_copy(
                Bucket=self.name, Key=destination, UploadId=upload, PartNumber=1, CopySource=copy_source
            )
            self.client.complete_multipart_upload(
                Bucket=self.name,
                Key=destination,
                UploadId=upload,
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["CopyPartResult"]["ETag"]}]},
                IfNoneMatch="*",
            )
        except self.client.exceptions.ClientError as error:
            with contextlib.suppress(Exception):  # the lifecycle rule removes it anyway within a week
                self.client.abort_multipart_upload(Bucket=self.name, Key=destination, UploadId=upload)
            if _code(error) in _CONFLICTS:
                return False
            raise
        return True

    def delete(self, *keys: str) -> None:
        if keys:
            self.client.delete_objects(Bucket=self.name, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})

    def child_names(self, prefix: str) -> Iterator[str]:
        """Names of the "folders" right under ``prefix`` (``r1``, ``r2`` under ``app/env/``)."""
        paginator = self.client.get_paginator("list_objects_v2")
        for listing in paginator.paginate(Bucket=self.name, Prefix=prefix, Delimiter="/"):
            for common in listing.get("CommonPrefixes", []):
                yield common["Prefix"][len(prefix) :].rstrip("/")

    def presigned_put(self, key: str, expires: int) -> str:
        url: str = self.client.generate_presigned_url(
            "put_object", Params={"Bucket": self.name, "Key": key}, ExpiresIn=expires
        )
        return url

    def presigned_get(self, key: str, expires: int) -> str:
        url: str = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.name, "Key": key}, ExpiresIn=expires
        )
        return url

    def start_multipart(self, key: str) -> str:
        upload_id: str = self.client.create_multipart_upload(Bucket=self.name, Key=key)["UploadId"]
        return upload_id

    def presigned_part(self, key: str, upload_id: str, part_number: int, expires: int) -> str:
        url: str = self.client.generate_presigned_url(
            "upload_part",
            Params={"Bucket": self.name, "Key": key, "UploadId": upload_id, "PartNumber": part_number},
            ExpiresIn=expires,
        )
        return url

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        self.client.complete_multipart_upload(
            Bucket=self.name,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]},
        )
