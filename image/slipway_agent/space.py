"""Disk space: what a release needs, what is free, and the sentence when it does not fit.

The checks run before each write that can be large (the slug's download, its unpacking),
so a release that cannot fit is refused before it fills the disk the running app writes
its logs and files to; a write that still runs out (space taken meanwhile, an estimate
short) is reported with the same sentence.
"""

from __future__ import annotations

import errno
import os
import shutil

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Margin over an estimate: filesystem blocks, directories, the unit and env files.
HEADROOM_BYTES = 8 * 1024 * 1024


class NoSpace(RuntimeError):
    """Not enough space for a step; the message names the filesystem, the need and the free space."""


def format_bytes(size: int) -> str:
    """``1.5 MB``, ``820 kB``, ``12 B`` (decimal units, as ``df -H``)."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def no_space_message(what: str, path: str, mount: str, needed: int | None, free: int) -> str:
    """One sentence: which filesystem is full, for what, how much it needed (when known) and had."""
    need = f" and this needs about {format_bytes(needed)}" if needed is not None else ""
    return (
        f"not enough disk space for {what}: the filesystem mounted at {mount} (holding {path}) has "
        f"{format_bytes(free)} free{need}; free space there "
        "(du -xsh on it shows what fills it) or give the instance a larger volume"
    )


def is_no_space(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS


def mount_point(path: str) -> str:
    """The mount point of the filesystem holding ``path`` (or its nearest existing parent)."""
    current = existing_parent(path)
    while not os.path.ismount(current):
        current = os.path.dirname(current)
    return current


def existing_parent(path: str) -> str:
    """``path`` if it exists, else its nearest parent that does (a failed write's file may not)."""
    current = os.path.realpath(path)
    while not os.path.exists(current):
        current = os.path.dirname(current)
    return current


def free_bytes(path: str) -> int:
    return shutil.disk_usage(path).free


def require_space(what: str, path: str, needed: int) -> None:
    """Raise :class:`NoSpace` unless the filesystem of ``path`` has ``needed`` bytes (plus headroom) free."""
    free = free_bytes(path)
    if needed + HEADROOM_BYTES > free:
        raise NoSpace(no_space_message(what, path, mount_point(path), needed + HEADROOM_BYTES, free))


def explain_no_space(what: str, path: str, needed: int | None) -> NoSpace:
    """A write failed with ENOSPC/EDQUOT: the same sentence, with what is free now (or that
    the filesystem has no inodes left, which ENOSPC also reports)."""
    path = existing_parent(path)
    mount, counts = mount_point(path), os.statvfs(path)
    if counts.f_files > 0 and counts.f_favail == 0:  # btrfs and others count no inodes: f_files 0
        return NoSpace(
            f"no disk space left for {what}: the filesystem mounted at {mount} (holding {path}) has no free "
            "inodes (it holds as many files as it can); delete files there or give the instance a larger volume"
        )
    return NoSpace(no_space_message(what, path, mount, needed, free_bytes(path)))


def gzip_unpacked_size(path: str, compressed_size: int) -> int:
    """The uncompressed size a gzip file records (its ISIZE trailer, modulo 4 GiB).

    A tar is at least its members' data, so this bounds what unpacking writes; past 4 GiB
    the field wraps, and the compressed size is the floor.
    """
    with open(path, "rb") as handle:
        handle.seek(-4, os.SEEK_END)
        recorded = int.from_bytes(handle.read(4), "little")
    return max(recorded, compressed_size)
