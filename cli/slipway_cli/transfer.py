"""Sources in and out: ``git archive`` of a ref, uploads through presigned URLs (parts in
parallel, as ``aws s3 cp`` does) and downloads of a release's source."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from slipway_cli.client import Api
from slipway_cli.client import path as api_path
from slipway_cli.errors import CliError
from slipway_cli.output import Progress

CHUNK = 1024 * 1024
PARALLEL_PARTS = 8  # like `aws s3 cp`'s default of 10 concurrent requests


class _Slice:
    """``size`` bytes of an open file from ``offset``, read in chunks, counted as they go."""

    def __init__(self, handle: IO[bytes], offset: int, size: int, progress: Progress) -> None:
        self.handle, self.left, self.progress = handle, size, progress
        handle.seek(offset)

    def read(self, amount: int = -1) -> bytes:
        amount = self.left if amount < 0 else min(amount, self.left)
        chunk = self.handle.read(amount)
        self.left -= len(chunk)
        self.progress.advance(len(chunk))
        return chunk


@dataclass(frozen=True)
class Uploaded:
    """An upload: its id, and the ETags of the source's parts if it went multipart."""

    upload_id: str
    parts: list[dict[str, Any]] | None

    def finalizing(self) -> dict[str, Any]:
        """What the releases call adds for this upload."""
        body: dict[str, Any] = {"upload_id": self.upload_id}
        if self.parts:
            body["parts"] = self.parts
        return body


def upload_file(api: Api, app: str, env: str, path: str, *, quiet: bool) -> Uploaded:
    """Upload the source at ``path`` through presigned URLs, parts in parallel as ``aws s3 cp`` does."""
    size, digest = os.path.getsize(path), sha256(path)
    upload = api.call("POST", api_path(app, env, "uploads"), {"size": size, "sha256": digest})
    part_size = int(upload.get("part_size") or size)
    return Uploaded(upload["upload_id"], _send_parts(path, upload["parts"], part_size, "upload", quiet))


def _send_parts(
    path: str, urls: list[Mapping[str, Any]], part_size: int, what: str, quiet: bool
) -> list[dict[str, Any]] | None:
    size = os.path.getsize(path)
    progress = Progress(size, what, quiet)

    def send(part: Mapping[str, Any]) -> dict[str, Any]:
        number = int(part["part_number"])
        offset = (number - 1) * part_size
        length = min(part_size, size - offset)
        with open(path, "rb") as handle:
            return {"part_number": number, "etag": _put(part["url"], _Slice(handle, offset, length, progress), length)}

    try:
        with ThreadPoolExecutor(max_workers=PARALLEL_PARTS) as pool:
            parts = list(pool.map(send, urls))
    finally:
        progress.close()
    return parts if len(parts) > 1 else None


def _put(url: str, body: _Slice, length: int) -> str:
    request = urllib.request.Request(
        url, data=body, method="PUT", headers={"Content-Length": str(length), "Content-Type": "application/gzip"}
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return str(response.headers.get("ETag", ""))
    except urllib.error.HTTPError as error:
        raise CliError(f"the upload to S3 failed (HTTP {error.code}: {error.reason}); run the command again") from None
    except urllib.error.URLError as error:
        raise CliError(f"cannot reach S3 for the upload ({error.reason})") from None


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _git(*args: str) -> bytes:
    try:
        return subprocess.run(["git", *args], check=True, capture_output=True).stdout
    except FileNotFoundError:
        raise CliError("git is not installed; slipway release archives the app with `git archive`") from None
    except subprocess.CalledProcessError as error:
        raise CliError(f"git {' '.join(args)} failed: {error.stderr.decode(errors='replace').strip()}") from None


def ref_name(ref: str) -> str:
    """What to record as the release's ref: the branch ``HEAD`` is on (``main``), else ``ref`` as given."""
    if ref != "HEAD":
        return ref
    try:
        branch = subprocess.run(
            ["git", "symbolic-ref", "--quiet", "--short", "HEAD"], check=True, capture_output=True
        ).stdout
    except (FileNotFoundError, subprocess.CalledProcessError):  # detached HEAD: the commit says it all
        return ref
    return branch.decode().strip() or ref


@contextmanager
def git_archive(ref: str) -> Iterator[tuple[str, str]]:
    """``git archive --format=tar.gz`` of ``ref`` in a temporary file; yields (path, full commit)."""
    commit = _git("rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}").decode().strip()
    with tempfile.TemporaryDirectory(prefix="slipway-") as folder:
        path = os.path.join(folder, "source.tar.gz")
        _git("archive", "--format=tar.gz", f"--output={path}", commit)
        yield path, commit
