"""Tar safety: the pure member rule, the whole-archive rules, and real unpacking into a fresh
directory. Every unsafe archive is refused the same way by the publisher's one-pass scan and
by the agent's unpacker: they apply the same rules (slipway_release.archive)."""

import io
import os
import tarfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slipway_agent.unpack import unpack
from slipway_release.archive import (
    DIRECTORY,
    FILE,
    HARDLINK,
    SYMLINK,
    MemberPlan,
    UnsafeArchive,
    check_member,
    is_inside,
    normalize_name,
    scan,
)

segments = st.text(st.characters(blacklist_characters="/\x00"), min_size=1, max_size=8)


@given(st.lists(segments, min_size=1, max_size=5))
def test_relative_names_without_dotdot_normalize_to_themselves(parts):
    parts = [p for p in parts if p not in (".", "..")] or ["x"]
    name = "/".join(parts)
    assert normalize_name(name) == name
    assert normalize_name("./" + name + "/") == name


@given(st.lists(segments, max_size=3), st.lists(segments, max_size=3))
def test_any_dotdot_component_is_refused(before, after):
    with pytest.raises(UnsafeArchive, match="climbs out"):
        normalize_name("/".join([*before, "..", *after]).lstrip("/") or "..")


@given(st.lists(segments, min_size=1, max_size=3))
def test_absolute_names_are_refused(parts):
    with pytest.raises(UnsafeArchive, match="absolute path"):
        normalize_name("/" + "/".join(parts))


def test_member_plans():
    assert check_member("./app.py", tarfile.REGTYPE, 5, 0o664, "") == MemberPlan(FILE, "app.py", 0o644, size=5)
    assert check_member("bin/run", tarfile.REGTYPE, 1, 0o4775, "") == MemberPlan(FILE, "bin/run", 0o755, size=1)
    assert check_member("lib/", tarfile.DIRTYPE, 0, 0o777, "") == MemberPlan(DIRECTORY, "lib", 0o755)
    assert check_member("./", tarfile.DIRTYPE, 0, 0o755, "") is None
    assert check_member("a/l", tarfile.SYMTYPE, 0, 0o777, "../b") == MemberPlan(SYMLINK, "a/l", 0o777, link="../b")
    assert check_member("h", tarfile.LNKTYPE, 0, 0o644, "./a/f") == MemberPlan(HARDLINK, "h", 0o644, link="a/f")


@pytest.mark.parametrize(
    ("name", "kind", "link", "message"),
    [
        ("dev", tarfile.CHRTYPE, "", "is a character device"),
        ("disk", tarfile.BLKTYPE, "", "is a block device"),
        ("pipe", tarfile.FIFOTYPE, "", "is a FIFO"),
        ("l", tarfile.SYMTYPE, "/etc/passwd", "points to the absolute path"),
        ("l", tarfile.SYMTYPE, "", "empty or invalid target"),
        ("h", tarfile.LNKTYPE, "../../etc/shadow", "climbs out"),
        ("h", tarfile.LNKTYPE, "/etc/shadow", "absolute path"),
        ("./", tarfile.SYMTYPE, "x", "replaces the release directory"),
    ],
)
def test_refused_members(name, kind, link, message):
    with pytest.raises(UnsafeArchive, match=message):
        check_member(name, kind, 0, 0o644, link)


def test_is_inside():
    assert is_inside("/r", "/r")
    assert is_inside("/r", "/r/a")
    assert not is_inside("/r", "/rx")
    assert not is_inside("/r", "/")


def build(path, entries):
    """Write a .tar.gz with entries (name, type, data-or-linkname)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(payload)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(payload))
            else:
                info.linkname = payload if isinstance(payload, str) else ""
                info.mode = 0o755
                tar.addfile(info)
    return path


def tree(root):
    found = set()
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(directory, name), root))
    return found


def test_unpacks_files_directories_and_links_inside(tmp_path):
    archive = build(
        tmp_path / "ok.tar.gz",
        [
            ("./", tarfile.DIRTYPE, ""),
            ("./Procfile", tarfile.REGTYPE, b"web: x\n"),
            ("lib/", tarfile.DIRTYPE, ""),
            ("lib/a.py", tarfile.REGTYPE, b"print(1)\n"),
            ("deep/er/f", tarfile.REGTYPE, b"f"),
            ("lib/up", tarfile.SYMTYPE, "../Procfile"),
            ("same", tarfile.LNKTYPE, "lib/a.py"),
        ],
    )
    destination = tmp_path / "release"
    assert unpack(archive, destination, 10_000) == (7, 7 + 9 + 1)
    assert (destination / "lib" / "up").read_bytes() == b"web: x\n"
    assert (destination / "same").read_bytes() == b"print(1)\n"
    assert oct((destination / "lib").stat().st_mode & 0o777) == "0o755"


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([("ok", tarfile.REGTYPE, b"1"), ("../evil", tarfile.REGTYPE, b"x")], "climbs out"),
        ([("/tmp/evil", tarfile.REGTYPE, b"x")], "absolute path"),
        ([("esc", tarfile.SYMTYPE, "../outside")], "resolves outside"),
        # Each link alone stays inside; chained, l2 resolves to the parent of the release.
        ([("l1", tarfile.SYMTYPE, "."), ("l2", tarfile.SYMTYPE, "l1/..")], "'l2' -> 'l1/..' resolves outside"),
        ([("a/b/l", tarfile.SYMTYPE, "../../.."), ("x", tarfile.REGTYPE, b"1")], "resolves outside"),
        # A file written under a symlinked directory would land wherever the link points.
        ([("d", tarfile.SYMTYPE, "."), ("d/f", tarfile.REGTYPE, b"1")], "lies under 'd', which is not a directory"),
        ([("d/", tarfile.DIRTYPE, ""), ("d", tarfile.SYMTYPE, "..")], "appears twice"),
        ([("f", tarfile.REGTYPE, b"1"), ("f", tarfile.REGTYPE, b"2")], "appears twice"),
        ([("f", tarfile.REGTYPE, b"1"), ("f/g", tarfile.REGTYPE, b"2")], "which is not a directory"),
        ([("h", tarfile.LNKTYPE, "missing")], "not a file listed before it"),
        ([("d/", tarfile.DIRTYPE, ""), ("h", tarfile.LNKTYPE, "d")], "not a file listed before it"),
        # A loop of links resolves nowhere.
        ([("a", tarfile.SYMTYPE, "b"), ("b", tarfile.SYMTYPE, "a")], "'a' -> 'b' resolves outside"),
        ([("fifo", tarfile.FIFOTYPE, "")], "FIFO"),
        ([("big", tarfile.REGTYPE, b"x" * 2000)], "unpacks to more than 1000 bytes"),
    ],
)
def test_unsafe_archives_write_nothing_outside(tmp_path, entries, message):
    archive = build(tmp_path / "bad.tar.gz", entries)
    before = tree(tmp_path)
    with pytest.raises(UnsafeArchive, match=message):
        unpack(archive, tmp_path / "release", 1000)
    created_outside = {p for p in tree(tmp_path) - before if p != "release" and not p.startswith("release/")}
    assert created_outside == set()
    # The publisher's scan of the same upload refuses it for the same reason.
    with open(archive, "rb") as stream, pytest.raises(UnsafeArchive, match=message):
        scan(stream, 1000)


def test_the_scan_reads_the_root_procfile_and_counts_like_the_unpacker(tmp_path):
    entries = [
        ("./", tarfile.DIRTYPE, ""),
        ("./Procfile", tarfile.REGTYPE, b"web: x\n"),
        ("lib/a", tarfile.REGTYPE, b"1"),
    ]
    archive = build(tmp_path / "ok.tar.gz", entries)
    with open(archive, "rb") as stream:
        scanned = scan(stream, 10_000)
    assert (scanned.entries, scanned.unpacked_bytes, scanned.procfile) == (3, 8, "web: x\n")
    assert unpack(archive, tmp_path / "release", 10_000) == (3, 8)
    without = build(tmp_path / "none.tar.gz", [("sub/Procfile", tarfile.REGTYPE, b"web: x\n")])
    with open(without, "rb") as stream:
        assert scan(stream, 10_000).procfile is None


def test_the_scan_reads_named_files_in_the_same_pass(tmp_path):
    entries = [
        ("Procfile", tarfile.REGTYPE, b"web: x\n"),
        (".slipway/", tarfile.DIRTYPE, ""),
        ("./.slipway/build.json", tarfile.REGTYPE, b'{"version": 1}'),
        ("other/build.json", tarfile.REGTYPE, b"no"),
    ]
    archive = build(tmp_path / "slug.tar.gz", entries)
    with open(archive, "rb") as stream:
        scanned = scan(stream, 10_000, read={".slipway/build.json": 100})
    assert scanned.files == {"Procfile": b"web: x\n", ".slipway/build.json": b'{"version": 1}'}
    assert scanned.procfile == "web: x\n"
    with open(archive, "rb") as stream, pytest.raises(UnsafeArchive, match=r"\.slipway/build\.json is 14 bytes"):
        scan(stream, 10_000, read={".slipway/build.json": 10})
    not_utf8 = build(tmp_path / "latin.tar.gz", [("Procfile", tarfile.REGTYPE, "web: caf\xe9".encode("latin-1"))])
    with open(not_utf8, "rb") as stream, pytest.raises(UnsafeArchive, match="the Procfile is not UTF-8"):
        scan(stream, 10_000)


def test_not_a_gzip_tarball(tmp_path):
    archive = tmp_path / "x.tar.gz"
    archive.write_bytes(b"not gzip")
    with pytest.raises(UnsafeArchive, match="not a readable gzip tar archive"):
        unpack(archive, tmp_path / "release", 1000)
    with open(archive, "rb") as stream, pytest.raises(UnsafeArchive, match=r"^the source is not a readable gzip"):
        scan(stream, 1000)
    with open(archive, "rb") as stream, pytest.raises(UnsafeArchive, match=r"^the slug is not a readable gzip"):
        scan(stream, 1000, what="the slug")
