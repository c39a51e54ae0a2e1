"""The deploy lock: its JSON, the decision and refusal (pure), and DeployLock on a local
S3 (moto server on loopback, a versioned bucket as in production)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from slipway import aws
from slipway.rollout import tasks
from slipway.rollout.lock import DeployLock, Lock, LockHeld, LockLost, decide, refusal
from slipway.settings import FleetSettings, Timing
from slipway.store import Bucket
from slipway_release.layout import AppKeys

BUCKET = "releases"
T0 = datetime(2025, 3, 4, 10, 0, 0, tzinfo=UTC)
TTL = timedelta(minutes=30)


def held(execution: str = "exec-1", owner: str = "alice", release: str = "r7", at: datetime = T0) -> Lock:
    return Lock(owner=owner, execution=execution, release=release, acquired_at=at, expires_at=at + TTL)


# Pure: JSON, decide, refusal --------------------------------------------------------------------------

moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))


@given(st.text(), st.text(), st.text(), moments, moments)
def test_a_lock_round_trips_through_json(
    owner: str, execution: str, release: str, acquired: datetime, expires: datetime
) -> None:
    lock = Lock(owner=owner, execution=execution, release=release, acquired_at=acquired, expires_at=expires)
    assert Lock.from_json(lock.to_json()) == lock


def test_the_stored_json_is_plain_and_in_utc() -> None:
    local = datetime(2025, 3, 4, 11, 0, 0, tzinfo=datetime.fromisoformat("2025-01-01T00:00+01:00").tzinfo)
    lock = Lock(owner="alice", execution="exec-1", release="r7", acquired_at=local, expires_at=local + TTL)
    assert lock.to_json() == (
        b'{"acquired_at": "2025-03-04T10:00:00Z", "execution": "exec-1", '
        b'"expires_at": "2025-03-04T10:30:00Z", "owner": "alice", "release": "r7"}'
    )


BAD_BODIES = {
    "not json": b"locked",
    "missing expiry": b'{"owner": "a", "execution": "e", "release": "r1", "acquired_at": "2025-03-04T10:00:00Z"}',
    "owner not text": (
        b'{"owner": 1, "execution": "e", "release": "r1", "acquired_at": "2025-03-04T10:00:00Z", '
        b'"expires_at": "2025-03-04T10:00:00Z"}'
    ),
    "no time zone": (
        b'{"owner": "a", "execution": "e", "release": "r1", "acquired_at": "2025-03-04T10:00:00", '
        b'"expires_at": "2025-03-04T10:00:00Z"}'
    ),
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_a_body_that_is_not_a_lock_says_what_to_do(body: bytes) -> None:
    with pytest.raises(ValueError, match=r"the deploy lock is not a valid lock .*; if no rollout is running, delete"):
        Lock.from_json(body)


def test_decide() -> None:
    lock = held()
    assert decide(None, now=T0) == "acquire"
    assert decide(lock, now=T0) == "refuse"
    assert decide(lock, now=T0 + TTL - timedelta(seconds=1)) == "refuse"
    assert decide(lock, now=T0 + TTL) == "take_over"  # expired: its execution died
    assert decide(lock, now=T0, execution="exec-2") == "refuse"
    assert decide(lock, now=T0, execution="exec-1") == "take_over"  # a retried task re-takes its own lock


def test_decide_wants_an_aware_time() -> None:
    with pytest.raises(ValueError, match="now must carry a time zone"):
        decide(held(), now=datetime(2025, 3, 4, 10, 0, 0))


def test_the_refusal_names_who_what_since_and_until_when_and_what_to_do() -> None:
    assert refusal(held(), T0 + timedelta(minutes=4, seconds=10)) == (
        "a rollout of r7 by alice holds the deploy lock (execution exec-1) since 2025-03-04 10:00:00 UTC "
        "(4m 10s ago); wait for it to finish or, if that execution died, the lock expires at "
        "2025-03-04 10:30:00 UTC (in 25m 50s) and the next deploy takes it over"
    )


@pytest.mark.parametrize(
    "elapsed, words",
    [
        (timedelta(0), "(0s ago)"),
        (timedelta(seconds=-5), "(0s ago)"),  # a holder's clock slightly ahead of ours
        (timedelta(hours=2, minutes=5, seconds=9), "(2h 5m ago)"),
        (timedelta(days=3, hours=1, seconds=1), "(3d 1h ago)"),
        (timedelta(days=1, seconds=7), "(1d 7s ago)"),
    ],
)
def test_durations_are_short(elapsed: timedelta, words: str) -> None:
    assert words in refusal(held(), T0 + elapsed)


# DeployLock on moto ----------------------------------------------------------------------------------


@pytest.fixture
def s3(moto_s3: str) -> Any:
    """A fresh, versioned release bucket."""
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return client


@pytest.fixture
def locks(s3: Any) -> DeployLock:
    return DeployLock(Bucket(s3, BUCKET))


def stored(s3: Any) -> Lock | None:
    try:
        body = s3.get_object(Bucket=BUCKET, Key=AppKeys("web", "staging").lock)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    return Lock.from_json(body)


def acquire(locks: DeployLock, execution: str, now: datetime = T0, owner: str = "alice", release: str = "r7") -> Lock:
    return locks.acquire("web", "staging", owner=owner, execution=execution, release=release, ttl=TTL, now=now)


def test_a_free_lock_is_acquired_and_stored_at_app_env_lock(s3: Any, locks: DeployLock) -> None:
    lock = acquire(locks, "exec-1")
    assert lock == held()
    assert stored(s3) == lock
    assert AppKeys("web", "staging").lock == "web/staging/lock"


def test_a_live_lock_is_refused_with_the_exact_message(s3: Any, locks: DeployLock) -> None:
    acquire(locks, "exec-1")
    with pytest.raises(LockHeld) as raised:
        acquire(locks, "exec-2", now=T0 + timedelta(minutes=1), owner="bob", release="r8")
    assert str(raised.value) == (
        "cannot deploy web/staging: a rollout of r7 by alice holds the deploy lock (execution exec-1) since "
        "2025-03-04 10:00:00 UTC (1m ago); wait for it to finish or, if that execution died, the lock expires "
        "at 2025-03-04 10:30:00 UTC (in 29m) and the next deploy takes it over"
    )
    assert raised.value.holder == held()
    assert stored(s3) == held()


def test_an_expired_lock_is_taken_over(s3: Any, locks: DeployLock) -> None:
    acquire(locks, "exec-1")
    later = T0 + TTL + timedelta(seconds=1)
    lock = acquire(locks, "exec-2", now=later, owner="bob", release="r8")
    assert lock == Lock(owner="bob", execution="exec-2", release="r8", acquired_at=later, expires_at=later + TTL)
    assert stored(s3) == lock


def test_the_same_execution_acquiring_again_keeps_the_lock(s3: Any, locks: DeployLock) -> None:
    acquire(locks, "exec-1")
    again = acquire(locks, "exec-1", now=T0 + timedelta(seconds=20))
    assert stored(s3) == again and again.acquired_at == T0 + timedelta(seconds=20)


def test_concurrent_acquires_exactly_one_wins_and_the_others_name_it(s3: Any, locks: DeployLock) -> None:
    racers = 8
    barrier = threading.Barrier(racers)
    results: list[Lock | LockHeld | None] = [None] * racers

    def race(n: int) -> None:
        barrier.wait()
        try:
            results[n] = acquire(locks, f"exec-{n}", owner=f"user{n}", release=f"r{n + 1}")
        except LockHeld as refused:
            results[n] = refused

    threads = [threading.Thread(target=race, args=(n,)) for n in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [r for r in results if isinstance(r, Lock)]
    refused = [r for r in results if isinstance(r, LockHeld)]
    assert len(winners) == 1 and len(refused) == racers - 1, results
    [winner] = winners
    assert stored(s3) == winner
    for refusal_ in refused:
        assert refusal_.holder == winner
        assert f"a rollout of {winner.release} by {winner.owner} holds the deploy lock" in str(refusal_)
        assert f"(execution {winner.execution})" in str(refusal_)


def test_concurrent_take_overs_of_an_expired_lock_exactly_one_wins(s3: Any, locks: DeployLock) -> None:
    acquire(locks, "dead")
    racers = 6
    later = T0 + TTL
    barrier = threading.Barrier(racers)
    results: list[Lock | LockHeld | None] = [None] * racers

    def race(n: int) -> None:
        barrier.wait()
        try:
            results[n] = acquire(locks, f"exec-{n}", now=later, owner=f"user{n}")
        except LockHeld as refused:
            results[n] = refused

    threads = [threading.Thread(target=race, args=(n,)) for n in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [r for r in results if isinstance(r, Lock)]
    assert len(winners) == 1, results
    assert all(isinstance(r, LockHeld) and r.holder == winners[0] for r in results if r is not winners[0])
    assert stored(s3) == winners[0]


def test_losing_the_race_to_a_lock_released_meanwhile_asks_to_deploy_again(
    s3: Any, locks: DeployLock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Between our read and our create, another rollout takes the lock and releases it.
    def create(key: str, body: bytes) -> bool:
        return False

    monkeypatch.setattr(locks.bucket, "create", create)
    with pytest.raises(LockHeld, match="another rollout took and released the deploy lock meanwhile; deploy again"):
        acquire(locks, "exec-1")


def test_the_owner_releases_its_lock_and_the_next_rollout_acquires(s3: Any, locks: DeployLock) -> None:
    acquire(locks, "exec-1")
    assert locks.release("web", "staging", execution="exec-1") is True
    assert stored(s3) is None
    assert acquire(locks, "exec-2", owner="bob") == held("exec-2", owner="bob")


def test_release_by_a_non_owner_does_nothing(s3: Any, locks: DeployLock) -> None:
    acquire(locks, "exec-1")
    assert locks.release("web", "staging", execution="exec-2") is False
    assert stored(s3) == held()


def test_release_of_no_lock_does_nothing(locks: DeployLock) -> None:
    assert locks.release("web", "staging", execution="exec-1") is False


def test_release_never_removes_a_lock_taken_over_since_it_was_read(
    s3: Any, locks: DeployLock, monkeypatch: pytest.MonkeyPatch
) -> None:
    acquire(locks, "exec-1")
    real_read = locks.bucket.read

    def read_then_lose_it(key: str) -> Any:
        # exec-1 reads its own lock; then exec-2 takes it over (expired) before the delete.
        found = real_read(key)
        monkeypatch.setattr(locks.bucket, "read", real_read)
        acquire(locks, "exec-2", now=T0 + TTL, owner="bob")
        return found

    monkeypatch.setattr(locks.bucket, "read", read_then_lose_it)
    assert locks.release("web", "staging", execution="exec-1") is False
    survivor = stored(s3)
    assert survivor is not None and survivor.execution == "exec-2"


def test_renew_extends_only_the_expiry(s3: Any, locks: DeployLock) -> None:
    acquire(locks, "exec-1")
    later = T0 + timedelta(minutes=25)
    renewed = locks.renew("web", "staging", execution="exec-1", ttl=TTL, now=later)
    assert renewed == Lock(owner="alice", execution="exec-1", release="r7", acquired_at=T0, expires_at=later + TTL)
    assert stored(s3) == renewed
    with pytest.raises(LockHeld):
        acquire(locks, "exec-2", now=T0 + TTL + timedelta(minutes=1))


def test_renew_of_a_lock_taken_over_or_gone_is_lost(s3: Any, locks: DeployLock) -> None:
    acquire(locks, "exec-1")
    acquire(locks, "exec-2", now=T0 + TTL, owner="bob", release="r8")
    with pytest.raises(LockLost, match="execution exec-1 lost the deploy lock of web/staging: a rollout of r8 by bob"):
        locks.renew("web", "staging", execution="exec-1", ttl=TTL, now=T0 + TTL)
    locks.release("web", "staging", execution="exec-2")
    with pytest.raises(LockLost, match="the deploy lock of web/staging is gone: execution exec-2 no longer holds it"):
        locks.renew("web", "staging", execution="exec-2", ttl=TTL, now=T0 + TTL)


def test_renew_that_loses_a_race_is_lost(s3: Any, locks: DeployLock, monkeypatch: pytest.MonkeyPatch) -> None:
    acquire(locks, "exec-1")

    def replace(key: str, body: bytes, *, etag: str) -> bool:
        return False

    monkeypatch.setattr(locks.bucket, "replace", replace)
    with pytest.raises(LockLost, match="changed while execution exec-1 renewed it"):
        locks.renew("web", "staging", execution="exec-1", ttl=TTL, now=T0)


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(seconds=-1)])
def test_a_lock_must_expire_in_the_future(locks: DeployLock, ttl: timedelta) -> None:
    with pytest.raises(ValueError, match="ttl must be positive"):
        locks.acquire("web", "staging", owner="a", execution="e", release="r1", ttl=ttl, now=T0)
    with pytest.raises(ValueError, match="ttl must be positive"):
        locks.renew("web", "staging", execution="e", ttl=ttl, now=T0)


def test_a_corrupt_lock_object_is_reported_not_overwritten(s3: Any, locks: DeployLock) -> None:
    s3.put_object(Bucket=BUCKET, Key="web/staging/lock", Body=b"garbage")
    with pytest.raises(ValueError, match="delete the lock object and deploy again"):
        acquire(locks, "exec-1")
    assert s3.get_object(Bucket=BUCKET, Key="web/staging/lock")["Body"].read() == b"garbage"


# The rollout keeps its lock ----------------------------------------------------------------------


def rollout_state(execution: str, expires: datetime, **extra: Any) -> dict[str, Any]:
    fleet = FleetSettings(
        group="g",
        target_group="tg",
        alarms=(),
        document="d",
        output_log_group="o",
        bucket=BUCKET,
        url="http://app.example",
    )
    return {
        "app": "web",
        "env": "staging",
        "execution": execution,
        "fleet": fleet.to_json(),
        "timing": Timing(lock_minutes=int(TTL.total_seconds() // 60)).to_json(),
        "lock_expires_at": expires.isoformat(),
        **extra,
    }


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[datetime], None]:
    """Set the tasks' clock."""
    aws.client.cache_clear()

    def at(moment: datetime) -> None:
        monkeypatch.setattr(tasks, "_now", lambda: moment)

    return at


def test_a_rollout_renews_its_lock_once_half_its_time_is_gone(
    s3: Any, locks: DeployLock, clock: Callable[[datetime], None]
) -> None:
    held_lock = acquire(locks, "exec-1")
    clock(T0 + TTL / 4)
    early = rollout_state("exec-1", held_lock.expires_at)
    assert tasks.keep_lock(early) == early  # three quarters left: nothing to do, no S3 call
    clock(T0 + TTL * 3 / 4)
    renewed = tasks.keep_lock(early)
    assert datetime.fromisoformat(renewed["lock_expires_at"]) == T0 + TTL * 3 / 4 + TTL
    assert stored(s3) is not None and stored(s3).expires_at == T0 + TTL * 3 / 4 + TTL  # type: ignore[union-attr]
    # Every task but taking and releasing the lock (and reporting that releasing it failed) keeps it:
    # the handler renews before each one.
    assert set(tasks.TASKS) - {"lock", "unlock", "unlock_failed"} == tasks._HOLDING_LOCK


def test_a_rollout_that_lost_its_lock_stops_unless_it_is_already_rolling_back(
    s3: Any, locks: DeployLock, clock: Callable[[datetime], None]
) -> None:
    mine = acquire(locks, "exec-1")
    clock(T0 + TTL * 2)
    acquire(locks, "exec-2", now=T0 + TTL * 2)  # mine expired; another rollout took it over
    with pytest.raises(tasks.RolloutError, match="execution exec-1 lost the deploy lock of web/staging"):
        tasks.keep_lock(rollout_state("exec-1", mine.expires_at))
    rolling_back = rollout_state("exec-1", mine.expires_at, rolled_back=["i-1"])
    assert tasks.keep_lock(rolling_back) == rolling_back
    assert stored(s3).execution == "exec-2"  # type: ignore[union-attr]
