"""Unpacking a release's source tarball into a fresh directory, under the shared archive rules.

Every entry passes :class:`slipway_release.archive.ArchiveRules` (the rules the publisher
applied to the upload) before anything is written for it. Symlinks are created last, once
every file and directory exists and the rules have resolved every link inside the archive;
each is then resolved once more on the finished tree. Nothing is ever written through a
link, and nothing is overwritten.
"""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
import zlib
from pathlib import Path

from slipway_release.archive import DIRECTORY, HARDLINK, SYMLINK, ArchiveRules, MemberPlan, UnsafeArchive, is_inside


def unpack(archive: Path, destination: Path, max_unpacked_bytes: int) -> tuple[int, int]:
    """Unpack gzip tarball ``archive`` into ``destination``, which must not exist.

    Returns ``(entries, bytes)``. Raises :class:`UnsafeArchive` on the first
    entry refused; the caller removes ``destination``. Files are created with
    ``O_EXCL | O_NOFOLLOW`` under directories created here, so no write can
    land outside ``destination`` even before the final link check.
    """
    destination.mkdir(mode=0o755)
    root = os.path.realpath(str(destination))
    rules = ArchiveRules(max_unpacked_bytes)
    links: list[MemberPlan] = []
    try:
        with tarfile.open(str(archive), mode="r:gz") as tar:
            for member in tar:
                plan = rules.admit(member.name, member.type, member.size, member.mode, member.linkname)
                if plan is None:
                    continue
                if plan.kind == SYMLINK:
                    links.append(plan)
                    continue
                target = os.path.join(root, plan.path)
                _ensure_parent(root, plan.path)
                if plan.kind == DIRECTORY:
                    _make_directory(target, plan.path)
                elif plan.kind == HARDLINK:
                    source = os.path.join(root, plan.link)
                    if not (os.path.lexists(source) and stat.S_ISREG(os.lstat(source).st_mode)):
                        raise UnsafeArchive(
                            f"hard link {plan.path!r} points to {plan.link!r}, which is not a file unpacked before it"
                        )
                    _refuse_existing(target, plan.path)
                    os.link(source, target, follow_symlinks=False)
                else:
                    _write_file(tar, member, target, plan)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise UnsafeArchive(f"{archive.name} is not a readable gzip tar archive ({error})") from None
    rules.finish()
    for plan in links:
        _ensure_parent(root, plan.path)
        target = os.path.join(root, plan.path)
        _refuse_existing(target, plan.path)
        os.symlink(plan.link, target)
    for plan in links:
        resolved = os.path.realpath(os.path.join(root, plan.path))
        if not is_inside(root, resolved):
            raise UnsafeArchive(f"symlink {plan.path!r} -> {plan.link!r} resolves outside the release directory")
    return rules.entries, rules.unpacked_bytes


def _ensure_parent(root: str, relative: str) -> None:
    """Create missing parent directories; refuse if any parent is not a real directory."""
    current = root
    for part in relative.split("/")[:-1]:
        current = os.path.join(current, part)
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current, 0o755)
            continue
        if not stat.S_ISDIR(info.st_mode):
            raise UnsafeArchive(f"entry {relative!r} lies under {part!r}, which is not a directory")


def _make_directory(target: str, relative: str) -> None:
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        os.mkdir(target, 0o755)
        return
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeArchive(f"directory entry {relative!r} collides with a file of the same name")


def _refuse_existing(target: str, relative: str) -> None:
    if os.path.lexists(target):
        raise UnsafeArchive(f"entry {relative!r} appears twice in the archive; republish from a clean tree")


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, target: str, plan: MemberPlan) -> None:
    source = tar.extractfile(member)
    if source is None:
        raise UnsafeArchive(f"entry {plan.path!r} has no file data")
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, plan.mode)
    except FileExistsError:
        raise UnsafeArchive(f"entry {plan.path!r} appears twice in the archive; republish from a clean tree") from None
    with os.fdopen(fd, "wb") as out:
        while True:
            chunk = source.read(1024 * 1024)
            if not chunk:
                break
            out.write(chunk)
    os.chmod(target, plan.mode)
