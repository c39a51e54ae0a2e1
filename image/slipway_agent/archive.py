"""Safe unpacking of a release's source tarball.

:func:`check_member` is the pure rule applied to each tar entry;
:func:`unpack` applies it and writes into a fresh directory. Symlinks are
created last, once every file and directory exists, and each is then
resolved on the finished tree: a link is accepted only if it lands inside
the release directory, however links chain. Nothing is ever written through
a link, and nothing is overwritten.
"""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MAX_UNPACKED_BYTES = 2 * 1024**3
MAX_MEMBERS = 200_000

FILE, DIRECTORY, SYMLINK, HARDLINK = "file", "directory", "symlink", "hardlink"


class UnsafeArchive(ValueError):
    """The tarball holds an entry the agent refuses to unpack."""


@dataclass(frozen=True)
class MemberPlan:
    """What to create for one tar entry: ``kind`` at relative ``path``."""

    kind: str
    path: str
    mode: int
    size: int = 0
    link: str = ""


def normalize_name(name: str) -> str | None:
    """Return the entry's relative path, ``None`` for the archive root (``./``).

    Raises :class:`UnsafeArchive` for absolute paths, ``..`` components, NUL
    and empty names.
    """
    if "\x00" in name:
        raise UnsafeArchive(f"entry {name!r} has a NUL byte in its name")
    if name.startswith("/"):
        raise UnsafeArchive(f"entry {name!r} has an absolute path; archives must hold relative paths")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"entry {name!r} climbs out with '..'")
    if not parts:
        if name.strip("/.") == "" and name != "":
            return None
        raise UnsafeArchive(f"entry {name!r} has an empty name")
    return "/".join(parts)


def check_member(name: str, type_flag: bytes, size: int, mode: int, linkname: str) -> MemberPlan | None:
    """Decide what one tar entry may become; pure.

    ``type_flag`` is the tar type (``tarfile.REGTYPE`` and friends). Regular
    files, directories, symlinks and hard links are accepted; device files,
    FIFOs and anything else are refused. Symlink targets must be relative
    (whether they stay inside is checked on the finished tree); hard links
    must name an entry inside the archive. Permissions keep only the owner
    executable bit's meaning: files become 0644 or 0755, directories 0755.
    Returns ``None`` for the archive's root directory entry.
    """
    path = normalize_name(name)
    if type_flag in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
        if path is None:
            raise UnsafeArchive(f"entry {name!r} is a file at the archive root's own name")
        return MemberPlan(FILE, path, 0o755 if mode & 0o100 else 0o644, size=size)
    if type_flag == tarfile.DIRTYPE:
        return None if path is None else MemberPlan(DIRECTORY, path, 0o755)
    if path is None:
        raise UnsafeArchive(f"entry {name!r} replaces the release directory itself")
    if type_flag == tarfile.SYMTYPE:
        if not linkname or "\x00" in linkname:
            raise UnsafeArchive(f"symlink {path!r} has an empty or invalid target")
        if linkname.startswith("/"):
            raise UnsafeArchive(
                f"symlink {path!r} points to the absolute path {linkname!r}; only relative links "
                "that stay inside the release are allowed"
            )
        return MemberPlan(SYMLINK, path, 0o777, link=linkname)
    if type_flag == tarfile.LNKTYPE:
        target = normalize_name(linkname)
        if target is None:
            raise UnsafeArchive(f"hard link {path!r} points to the archive root")
        return MemberPlan(HARDLINK, path, 0o644, link=target)
    kinds = {
        tarfile.CHRTYPE: "a character device",
        tarfile.BLKTYPE: "a block device",
        tarfile.FIFOTYPE: "a FIFO",
    }
    what = kinds.get(type_flag, f"an unsupported entry type {type_flag!r}")
    raise UnsafeArchive(f"entry {path!r} is {what}; release archives may hold only files, directories and links")


def check_totals(members: int, unpacked_bytes: int, max_unpacked_bytes: int) -> None:
    """Refuse archives that would unpack beyond the configured limits."""
    if members > MAX_MEMBERS:
        raise UnsafeArchive(f"archive has more than {MAX_MEMBERS} entries")
    if unpacked_bytes > max_unpacked_bytes:
        raise UnsafeArchive(
            f"archive unpacks to more than {max_unpacked_bytes} bytes; shrink the release or raise "
            "the limit with deploy --max-unpacked-bytes"
        )


def is_inside(root: str, candidate: str) -> bool:
    """True if absolute path ``candidate`` is ``root`` or below it (both normalized)."""
    return candidate == root or candidate.startswith(root.rstrip("/") + "/")


def unpack(archive: Path, destination: Path, max_unpacked_bytes: int) -> tuple[int, int]:
    """Unpack gzip tarball ``archive`` into ``destination``, which must not exist.

    Returns ``(entries, bytes)``. Raises :class:`UnsafeArchive` on the first
    entry refused; the caller removes ``destination``. Files are created with
    ``O_EXCL | O_NOFOLLOW`` under directories created here, so no write can
    land outside ``destination`` even before the final link check.
    """
    destination.mkdir(mode=0o755)
    root = os.path.realpath(str(destination))
    links: list[MemberPlan] = []
    entries = unpacked = 0
    try:
        with tarfile.open(str(archive), mode="r:gz") as tar:
            for member in tar:
                entries += 1
                unpacked += max(member.size, 0)
                check_totals(entries, unpacked, max_unpacked_bytes)
                plan = check_member(member.name, member.type, member.size, member.mode, member.linkname)
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
        raise UnsafeArchive(f"source.tar.gz is not a readable gzip tar archive ({error})") from None
    for plan in links:
        _ensure_parent(root, plan.path)
        target = os.path.join(root, plan.path)
        _refuse_existing(target, plan.path)
        os.symlink(plan.link, target)
    for plan in links:
        resolved = os.path.realpath(os.path.join(root, plan.path))
        if not is_inside(root, resolved):
            raise UnsafeArchive(f"symlink {plan.path!r} -> {plan.link!r} resolves outside the release directory")
    return entries, unpacked


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
