"""A staged release on disk, as staging leaves it and activation reads it back: whether it is
staged and unchanged (its ``STAGED`` digest), its manifest, its Procfile, the runtime and
the environment its one-off processes get."""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Any

from slipway_release.archive import MAX_PROCFILE_BYTES
from slipway_release.build import process_environment as slug_environment
from slipway_release.layout import MANIFEST
from slipway_release.manifest import Manifest, parse_manifest
from slipway_release.procfile import parse_procfile
from slipway_release.runtimes import Offer, load_runtimes, offered_lines

from . import host
from .report import DeployFailed
from .s3 import CHUNK
from .state import STAGED, parse_staged
from .units import APP, RUN_AS, AppLayout


def staged_problem(layout: AppLayout, release_id: str) -> str | None:
    """``None`` if ``releases/<id>`` is staged and unchanged since, else what is wrong with it."""
    final = layout.release_dir(release_id)
    record = parse_staged(host.read_text(os.path.join(final, STAGED))) if os.path.isdir(final) else None
    if record is None or record.release != release_id:
        return f"{release_id} is not staged on this instance"
    if tree_digest(final) != record.tree_sha256:
        return f"the staged copy of {release_id} changed on disk since it was staged"
    return None


def require_pinned(layout: AppLayout, release_id: str, digest: str | None) -> None:
    """:class:`DeployFailed` unless the staged ``release_id`` was staged from the ``release.json`` with
    sha256 ``digest`` (what the rollout pinned); nothing to check without one."""
    if digest is None:
        return
    record = parse_staged(host.read_text(os.path.join(layout.release_dir(release_id), STAGED)))
    if record is not None and record.manifest_sha256 == digest:
        return
    staged = f"{record.manifest_sha256[:12]}…" if record and record.manifest_sha256 else "an unrecorded one"
    raise DeployFailed(
        f"refusing {release_id}: it was staged from a release.json with sha256 {staged}, not the {digest[:12]}… "
        "the rollout pinned (the release's record changed after it was made)"
    )


def staged_manifest(layout: AppLayout, release_id: str, schema: dict[str, Any]) -> Manifest:
    """The ``release.json`` kept with a release (verified when it was staged)."""
    with open(os.path.join(layout.release_dir(release_id), MANIFEST), "rb") as handle:
        return parse_manifest(handle.read(), schema)


def read_processes(release_id: str, app_dir: str) -> dict[str, str]:
    """The slug's Procfile: ``{process type: command}``."""
    procfile_path = os.path.join(app_dir, "Procfile")
    if not os.path.isfile(procfile_path):
        raise DeployFailed(
            f"{release_id}'s slug has no Procfile at its root; add one (e.g. 'web: python app.py') and publish again"
        )
    with open(procfile_path, "rb") as handle:
        raw = handle.read(MAX_PROCFILE_BYTES + 1)
    if len(raw) > MAX_PROCFILE_BYTES:
        raise DeployFailed(f"Procfile is larger than {MAX_PROCFILE_BYTES} bytes")
    return parse_procfile(decode_text(raw, "Procfile"))


def instance_runtime(manifest: Manifest, runtimes_path: str) -> Offer | None:
    """The instance's interpreter for the slug's runtime line; refuse the release if there is none."""
    runtime = manifest.build.runtime
    if runtime is None:
        return None
    offers = load_runtimes(runtimes_path)
    offer = offers.get(runtime.name, {}).get(runtime.line)
    if offer is None:
        offered = ", ".join(offered_lines(offers, runtime.name)) or "none"
        raise DeployFailed(
            f"{manifest.id} was built for {runtime.name} {runtime.line} ({runtime.version}), which this instance "
            f"does not offer (it offers {runtime.name} {offered}); build it for an offered version or update "
            "the instance's base image"
        )
    return offer


def one_off_environment(
    layout: AppLayout, release_id: str, manifest: Manifest, runtime: Offer | None
) -> dict[str, str]:
    """PATH and PYTHONPATH for the one-off processes (preflight, release phase): they run
    from ``releases/<id>``, since ``current`` still points at the serving release."""
    return slug_environment(f"{layout.release_dir(release_id)}/{APP}", manifest.build, runtime.bin if runtime else None)


def ensure_home(layout: AppLayout) -> None:
    """The app's HOME: the one place its processes may write, kept across releases."""
    home = layout.home_dir
    if not os.path.isdir(home) or os.path.islink(home):
        if os.path.lexists(home):
            os.unlink(home)
        os.mkdir(home, 0o700)
    host.chown_to(home, RUN_AS)


def tree_digest(root: str) -> str:
    """sha256 over a release directory: every entry's path, type, mode, and content or link
    target, in a fixed order; ``STAGED`` itself left out."""
    digest = hashlib.sha256()

    def walk(directory: str, relative: str) -> None:
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            path = f"{relative}/{entry.name}" if relative else entry.name
            if path == STAGED:
                continue
            info = entry.stat(follow_symlinks=False)
            digest.update(f"{path}\0{info.st_mode:o}\0".encode("utf-8", "surrogateescape"))
            if stat.S_ISLNK(info.st_mode):
                digest.update(os.readlink(entry.path).encode("utf-8", "surrogateescape"))
            elif stat.S_ISDIR(info.st_mode):
                walk(entry.path, path)
            elif stat.S_ISREG(info.st_mode):
                with open(entry.path, "rb") as handle:
                    for chunk in iter(lambda: handle.read(CHUNK), b""):
                        digest.update(chunk)
            digest.update(b"\0")

    walk(root, "")
    return digest.hexdigest()


def decode_text(raw: bytes, what: str) -> str:
    """``raw`` as UTF-8; :class:`DeployFailed` naming ``what`` and the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DeployFailed(f"{what} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
