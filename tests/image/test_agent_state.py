"""The agent's records (STAGED, ACTIVATING, SERVING), recovery after a kill, pruning, disk-space sentences,
and the staged directory's digest."""

from __future__ import annotations

import gzip
import io
import os
import tarfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slipway_agent.report import reason
from slipway_agent.space import format_bytes, gzip_unpacked_size, mount_point, no_space_message
from slipway_agent.staged import tree_digest
from slipway_agent.state import (
    KEEP_RELEASES,
    Intent,
    Recovery,
    Serving,
    StagedRecord,
    parse_intent,
    parse_serving,
    parse_staged,
    plan_recovery,
    protected_releases,
    releases_to_prune,
    render_intent,
    render_serving,
    render_staged,
)

release_ids = st.integers(min_value=1, max_value=999_999_999).map(lambda n: f"r{n}")
slots = st.sampled_from(["a", "b"])
ports = st.integers(min_value=0, max_value=65535)


@given(release_ids, st.text(alphabet="0123456789abcdef", min_size=64, max_size=64))
def test_staged_record_round_trips(release, digest):
    record = StagedRecord(release, digest)
    assert parse_staged(render_staged(record)) == record


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "{",
        "[]",
        '{"version": 2, "release": "r1", "tree_sha256": "' + "a" * 64 + '"}',
        '{"version": 1, "release": "r0", "tree_sha256": "' + "a" * 64 + '"}',
        '{"version": 1, "release": "r1", "tree_sha256": "short"}',
    ],
)
def test_a_missing_or_unreadable_staged_record_means_not_staged(text):
    assert parse_staged(text) is None


@given(release_ids, st.none() | release_ids, slots, ports)
def test_intent_round_trips(release, previous, slot, port):
    intent = Intent(release, previous, slot, port)
    assert parse_intent(render_intent(intent)) == intent


@given(release_ids, slots, ports)
def test_serving_round_trips(release, slot, port):
    serving = Serving(release, slot, port)
    assert parse_serving(render_serving(serving)) == serving


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{}",
        '{"version": 1, "release": "x", "slot": "a", "port": 1}',
        '{"version": 1, "release": "r2", "previous": 7, "slot": "a", "port": 1}',
        '{"version": 1, "release": "r2", "previous": null, "slot": "c", "port": 1}',
        '{"version": 1, "release": "r2", "previous": null, "slot": "a", "port": 70000}',
        '{"version": 1, "release": "r2", "previous": null, "slot": "a", "port": true}',
        '{"version": 1, "release": "r2", "previous": null}',  # an older agent's record
    ],
)
def test_a_garbled_intent_parses_as_none(text):
    assert parse_intent(text) is None


@pytest.mark.parametrize(
    "text",
    [
        None,
        "{}",
        '{"version": 1, "release": "r2", "slot": "c", "port": 1}',
        '{"version": 1, "release": "r2", "slot": "a", "port": -1}',
        '{"version": 2, "release": "r2", "slot": "a", "port": 1}',
    ],
)
def test_a_missing_or_garbled_serving_record_parses_as_none(text):
    assert parse_serving(text) is None


@given(release_ids, st.none() | release_ids, slots, ports, st.none() | st.builds(Serving, release_ids, slots, ports))
def test_recovery_undoes_to_serving_unless_serving_names_the_new_slot(release, previous, slot, port, serving):
    plan = plan_recovery(Intent(release, previous, slot, port), serving)
    if serving is not None and (serving.release, serving.slot) == (release, slot):
        # SERVING is written only after the new slot answered through the front: the activation had
        # succeeded; the old slot is emptied.
        assert plan == Recovery(finish=True, serving=serving, remove=("b" if slot == "a" else "a",), previous=previous)
    else:
        # Anything short of it goes back to the last release known healthy, never to the new one, and
        # every slot but that one's is emptied (the new one among them: never the serving slot).
        assert not plan.finish and plan.serving == serving and plan.previous is None
        assert set(plan.remove) == {"a", "b"} - ({serving.slot} if serving else set())


@given(st.none() | st.builds(Serving, release_ids, slots, ports))
def test_a_garbled_intent_restores_what_serving_names(serving):
    plan = plan_recovery(None, serving)
    assert not plan.finish and plan.serving == serving
    assert set(plan.remove) == {"a", "b"} - ({serving.slot} if serving else set())


def test_prune_keeps_the_highest_ids_and_the_protected():
    names = ["r1", "r2", "r10", "r3", "r4", "r5", "r6", ".r7.partial", "notes"]
    assert releases_to_prune(names, 5, {"r1"}) == ["r2"]
    assert releases_to_prune(names, 5, set()) == ["r2", "r1"]
    assert releases_to_prune(["r1"], 5, set()) == []


@given(st.sets(st.integers(1, 60), max_size=30), st.sets(st.integers(1, 60), max_size=3))
def test_prune_never_touches_protected_and_keeps_enough(numbers, protected_numbers):
    names = [f"r{n}" for n in numbers]
    protect = protected_releases(*(f"r{n}" for n in protected_numbers), None)
    pruned = releases_to_prune(names, KEEP_RELEASES, protect)
    assert not set(pruned) & protect
    kept = set(names) - set(pruned)
    assert len(kept) >= min(len(names), KEEP_RELEASES)
    assert all(int(p[1:]) < min(int(k[1:]) for k in kept - protect) for p in pruned if kept - protect)


def test_protected_releases_ignores_absent_ones():
    assert protected_releases("r3", None, "r2", "") == {"r2", "r3"}


def test_format_bytes():
    assert [format_bytes(n) for n in (12, 1_500, 52_400_000, 3 * 10**9)] == ["12 B", "1.5 kB", "52.4 MB", "3.0 GB"]


def test_no_space_message_names_the_filesystem_the_need_and_the_fix():
    line = no_space_message("unpacking r2", "/home/deploy/apps/demo/releases", "/home", 52_400_000, 10_100_000)
    assert line == (
        "not enough disk space for unpacking r2: the filesystem mounted at /home (holding "
        "/home/deploy/apps/demo/releases) has 10.1 MB free and this needs about 52.4 MB; free space there "
        "(du -xsh on it shows what fills it) or give the instance a larger volume"
    )


def test_gzip_unpacked_size_reads_the_trailer(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("zeros")
        info.size = 3_000_000
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    path = tmp_path / "slug.tar.gz"
    path.write_bytes(buffer.getvalue())
    tar_size = len(gzip.decompress(buffer.getvalue()))
    assert gzip_unpacked_size(str(path), len(buffer.getvalue())) == tar_size >= 3_000_000
    # A wrapped (over 4 GiB) or lying trailer never claims less than the compressed bytes.
    assert gzip_unpacked_size(str(path), 10**10) == 10**10


def test_tree_digest_sees_every_change_but_the_staged_record(tmp_path):
    root = tmp_path / "r2"
    (root / "app" / "lib").mkdir(parents=True)
    (root / "app" / "lib" / "a.py").write_text("print(1)\n")
    (root / "env").write_text('A="1"\n')
    os.symlink("lib/a.py", root / "app" / "link")
    first = tree_digest(str(root))
    (root / "STAGED").write_text("anything")
    assert tree_digest(str(root)) == first
    changes = [
        lambda: (root / "app" / "lib" / "a.py").write_text("print(2)\n"),
        lambda: (root / "app" / "lib" / "a.py").chmod(0o755),
        lambda: (root / "app" / "new").write_text(""),
        lambda: (os.unlink(root / "app" / "link"), os.symlink("lib", root / "app" / "link")),
    ]
    seen = {first}
    for change in changes:
        change()
        digest = tree_digest(str(root))
        assert digest not in seen
        seen.add(digest)


def test_a_full_disk_on_any_write_reads_as_a_sentence_naming_the_file_and_filesystem(tmp_path):
    missing = tmp_path / "gone" / "ACTIVATING"
    line = reason(OSError(28, "No space left on device", str(missing)))
    assert line.startswith(
        f"not enough disk space for writing {missing}: the filesystem mounted at {mount_point(str(tmp_path))} "
        f"(holding {tmp_path}) has "
    )
    assert "Errno" not in line and "needs about" not in line


def test_memory_for_a_second_copy_is_read_and_refused_with_the_figures():
    from slipway_agent.memory import memory_available, no_room, units_memory

    meminfo = "MemTotal:        2000000 kB\nMemFree:          100000 kB\nMemAvailable:     500000 kB\n"
    assert memory_available(meminfo) == 512_000_000
    assert memory_available("MemTotal: 1 kB\n") is None
    assert units_memory(["300000000", "[not set]", "", "20000000"]) == 320_000_000
    assert no_room("r8", "r7", 320_000_000, 512_000_000) is None
    assert no_room("r8", "r7", 320_000_000, None) is None  # unknown: not refused
    assert no_room("r8", "r7", 600_000_000, 512_000_000) == (
        "not enough memory to start r8 beside r7: r7 uses 600.0 MB and 512.0 MB is available; both run while "
        "the switch happens, so use an instance type with more memory (instance_type) or make the app smaller"
    )
