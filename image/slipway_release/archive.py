"""What a source archive may hold: the rules the publisher and the instance agent both apply.

:func:`check_member` decides what one tar entry may become; :class:`ArchiveRules` applies
it to a whole archive entry by entry (totals, duplicates, entries under something that is
not a directory) and, at the end, resolves every symlink over the archive's own entries:
a link is accepted only if it lands inside the archive, however links chain.
:func:`scan` reads a gzip tar stream once with these rules (what the publisher does with
an upload, before anything is written); the agent's unpacker applies the same rules while
it writes. Sizes come from the tar headers, so an archive that would unpack beyond the
limit (a gzip bomb) is refused as soon as its headers say so.
"""

from __future__ import annotations

import gzip
import posixpath
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO

DEFAULT_MAX_UNPACKED_BYTES = 2 * 1024**3
MAX_MEMBERS = 200_000
# As the kernel does (ELOOP): a chain of more links than this does not resolve.
MAX_LINK_HOPS = 40
PROCFILE = "Procfile"
MAX_PROCFILE_BYTES = 64 * 1024

FILE, DIRECTORY, SYMLINK, HARDLINK = "file", "directory", "symlink", "hardlink"


class UnsafeArchive(ValueError):
    """The archive holds an entry (or a shape) that is refused."""


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
    (whether they stay inside is checked over the whole archive); hard links
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


class ArchiveRules:
    """The rules over a whole archive, fed one entry at a time with :meth:`admit`.

    Refuses (with :class:`UnsafeArchive`) more entries or bytes than allowed, a path that
    appears twice (a directory may be listed twice), an entry under a path that is not a
    directory, a hard link to anything but a regular file listed before it, and, in
    :meth:`finish`, a symlink that resolves outside the archive.
    """

    def __init__(self, max_unpacked_bytes: int) -> None:
        self.max_unpacked_bytes = max_unpacked_bytes
        self.entries = 0
        self.unpacked_bytes = 0
        self._kinds: dict[str, str] = {}
        self._links: dict[str, str] = {}

    def admit(self, name: str, type_flag: bytes, size: int, mode: int, linkname: str) -> MemberPlan | None:
        """Check one entry against the rules and those before it; its plan (``None`` for the root)."""
        self.entries += 1
        self.unpacked_bytes += max(size, 0)
        check_totals(self.entries, self.unpacked_bytes, self.max_unpacked_bytes)
        plan = check_member(name, type_flag, size, mode, linkname)
        if plan is None:
            return None
        parts = plan.path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            kind = self._kinds.setdefault(parent, DIRECTORY)
            if kind != DIRECTORY:
                raise UnsafeArchive(f"entry {plan.path!r} lies under {parent!r}, which is not a directory")
        seen = self._kinds.get(plan.path)
        if seen is not None and not (seen == DIRECTORY and plan.kind == DIRECTORY):
            raise UnsafeArchive(f"entry {plan.path!r} appears twice in the archive; republish from a clean tree")
        if plan.kind == HARDLINK and self._kinds.get(plan.link) != FILE:
            raise UnsafeArchive(
                f"hard link {plan.path!r} points to {plan.link!r}, which is not a file listed before it"
            )
        self._kinds[plan.path] = plan.kind
        if plan.kind == SYMLINK:
            self._links[plan.path] = plan.link
        return plan

    def finish(self) -> None:
        """Resolve every symlink over the archive's entries; refuse one that lands outside."""
        for path, link in self._links.items():
            if self._resolve(posixpath.join(posixpath.dirname(path), link)) is None:
                raise UnsafeArchive(f"symlink {path!r} -> {link!r} resolves outside the release directory")

    def _resolve(self, path: str) -> str | None:
        """Where ``path`` (relative to the archive root) leads, as ``realpath`` would resolve it
        on the unpacked tree; ``None`` if it leaves the root or does not resolve."""
        pending = [part for part in path.split("/") if part not in ("", ".")]
        resolved: list[str] = []
        hops = 0
        while pending:
            part = pending.pop(0)
            if part == "..":
                if not resolved:
                    return None
                resolved.pop()
                continue
            candidate = "/".join([*resolved, part])
            target = self._links.get(candidate)
            if target is None:
                resolved.append(part)
                continue
            hops += 1
            if hops > MAX_LINK_HOPS:
                return None
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
        return "/".join(resolved)


@dataclass(frozen=True)
class Scanned:
    """What one pass over an archive found: entries, unpacked bytes and the named files' contents."""

    entries: int
    unpacked_bytes: int
    files: dict[str, bytes]

    @property
    def procfile(self) -> str | None:
        """The root ``Procfile``'s text (``None`` if there is none)."""
        data = self.files.get(PROCFILE)
        return None if data is None else data.decode("utf-8")


def scan(
    stream: IO[bytes], max_unpacked_bytes: int, read: Mapping[str, int] | None = None, what: str = "the source"
) -> Scanned:
    """Read a gzip tar stream once, applying :class:`ArchiveRules` to every entry.

    ``read`` names regular files to keep (relative path -> largest size accepted); the root
    ``Procfile`` is always read, and must be UTF-8. A named file larger than its limit is
    refused. Raises :class:`UnsafeArchive` for the first entry refused, or if the stream is
    not a gzip tar (``what`` names the archive in that message: ``"the slug"``).
    """
    rules = ArchiveRules(max_unpacked_bytes)
    wanted = {PROCFILE: MAX_PROCFILE_BYTES, **(read or {})}
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=stream, mode="r|gz") as archive:
            for member in archive:
                plan = rules.admit(member.name, member.type, member.size, member.mode, member.linkname)
                if plan is not None and plan.kind == FILE and plan.path in wanted:
                    files[plan.path] = _read_member(archive, member, plan.path, wanted[plan.path])
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise UnsafeArchive(f"{what} is not a readable gzip tar archive ({error})") from None
    rules.finish()
    if PROCFILE in files:
        try:
            files[PROCFILE].decode("utf-8")
        except UnicodeDecodeError:
            raise UnsafeArchive("the Procfile is not UTF-8 text") from None
    return Scanned(rules.entries, rules.unpacked_bytes, files)


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo, path: str, limit: int) -> bytes:
    what = "the Procfile" if path == PROCFILE else path
    if member.size > limit:
        raise UnsafeArchive(f"{what} is {member.size} bytes; keep it under {limit}")
    data = archive.extractfile(member)
    if data is None:
        raise UnsafeArchive(f"{what} has no content")
    return data.read()
