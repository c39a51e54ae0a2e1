"""The deploy lock: one rollout per app and environment at a time.

The lock is the object ``<app>/<env>/lock`` in the release bucket, a small JSON document
naming its holder. It is taken by conditional writes only (create if absent, replace if
unchanged since read), so of two rollouts racing for it exactly one wins. Every lock
expires: a rollout whose execution died leaves a lock that the next rollout takes over
once it has expired, instead of blocking the app until someone deletes it by hand.

The decision (:func:`decide`) and the refusal's wording (:func:`refusal`) are pure; the
S3 work is the thin :class:`DeployLock`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from slipway.store import Bucket
from slipway_release.layout import AppKeys


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _utc(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{name} must carry a time zone, e.g. datetime.now(UTC); got {moment.isoformat()}")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Lock:
    """Who holds an app/env's deploy lock, for which release, since when and until when."""

    owner: str
    execution: str
    release: str
    acquired_at: datetime
    expires_at: datetime

    def to_json(self) -> bytes:
        """The body stored in S3 (UTC timestamps ending in ``Z``)."""
        document = {
            "owner": self.owner,
            "execution": self.execution,
            "release": self.release,
            "acquired_at": _stamp(self.acquired_at),
            "expires_at": _stamp(self.expires_at),
        }
        return json.dumps(document, sort_keys=True).encode()

    @classmethod
    def from_json(cls, body: bytes | str) -> Lock:
        """A stored lock; ``ValueError`` saying what is wrong if the body is not one."""
        try:
            document = json.loads(body)
            fields: dict[str, Any] = {key: document[key] for key in ("owner", "execution", "release")}
            if not all(isinstance(value, str) for value in fields.values()):
                raise TypeError("owner, execution and release must be text")
            for key in ("acquired_at", "expires_at"):
                fields[key] = _utc(datetime.fromisoformat(document[key]), key)
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"the deploy lock is not a valid lock ({type(error).__name__}: {error}); if no rollout is "
                "running, delete the lock object and deploy again"
            ) from None
        return cls(**fields)


def decide(
    existing: Lock | None, *, now: datetime, execution: str | None = None
) -> Literal["acquire", "take_over", "refuse"]:
    """What a rollout does about the lock it found: take a free one, take over an expired one
    (its execution died), or refuse a live one.

    With ``execution``, a lock already held by that same execution is taken over (renewed):
    a task retried after its first attempt wrote the lock must not lock itself out.
    """
    if existing is None:
        return "acquire"
    if existing.expires_at <= _utc(now, "now") or (execution is not None and existing.execution == execution):
        return "take_over"
    return "refuse"


def _duration(delta: timedelta) -> str:
    """``4m 10s``, ``2h 5m``, ``3d 1h``: two units are enough for a person to act on."""
    seconds = max(0, int(delta.total_seconds()))
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")) if n]
    return " ".join(parts[:2]) or "0s"


def _clock(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def refusal(existing: Lock, now: datetime) -> str:
    """The one line a refused deploy shows: who holds the lock, for what, since and until when."""
    return (
        f"a rollout of {existing.release} by {existing.owner} holds the deploy lock "
        f"(execution {existing.execution}) since {_clock(existing.acquired_at)} "
        f"({_duration(now - existing.acquired_at)} ago); wait for it to finish or, if that execution died, "
        f"the lock expires at {_clock(existing.expires_at)} (in {_duration(existing.expires_at - now)}) "
        "and the next deploy takes it over"
    )


class LockHeld(Exception):
    """Another rollout holds the lock; the message says who and what to do, ``holder`` is its lock."""

    def __init__(self, message: str, holder: Lock | None) -> None:
        super().__init__(message)
        self.holder = holder


class LockLost(Exception):
    """A rollout no longer holds the lock it took (it expired and was taken over, or was removed)."""


class DeployLock:
    """The deploy locks of every app and environment in one release bucket."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket

    def _read(self, app: str, env: str) -> tuple[Lock | None, str]:
        stored = self.bucket.read(AppKeys(app, env).lock)
        if stored is None:
            return None, ""
        return Lock.from_json(stored.body), stored.etag

    def acquire(
        self, app: str, env: str, *, owner: str, execution: str, release: str, ttl: timedelta, now: datetime
    ) -> Lock:
        """Take the lock for ``execution`` until ``now + ttl``; ``LockHeld`` if another rollout has it.

        Of concurrent callers exactly one wins; the others get ``LockHeld`` naming the winner.
        """
        if ttl <= timedelta(0):
            raise ValueError(f"ttl must be positive, e.g. timedelta(minutes=30); got {ttl}")
        now = _utc(now, "now")
        key = AppKeys(app, env).lock
        mine = Lock(owner=owner, execution=execution, release=release, acquired_at=now, expires_at=now + ttl)
        existing, etag = self._read(app, env)
        action = decide(existing, now=now, execution=execution)
        if action == "refuse":
            assert existing is not None  # decide refuses only a lock that exists
            raise LockHeld(f"cannot deploy {app}/{env}: {refusal(existing, now)}", existing)
        won = (
            self.bucket.create(key, mine.to_json())
            if action == "acquire"
            else self.bucket.replace(key, mine.to_json(), etag=etag)
        )
        if won:
            return mine
        # Another rollout wrote the lock between our read and our write: it won.
        winner, _ = self._read(app, env)
        if winner is None:
            raise LockHeld(
                f"cannot deploy {app}/{env}: another rollout took and released the deploy lock meanwhile; deploy again",
                None,
            )
        raise LockHeld(f"cannot deploy {app}/{env}: {refusal(winner, now)}", winner)

    def release(self, app: str, env: str, *, execution: str) -> bool:
        """Remove the lock if ``execution`` holds it; ``False`` (and nothing changed) if it does not.

        The delete is conditional on the object read, so a lock taken over meanwhile by
        another rollout is never removed.
        """
        existing, etag = self._read(app, env)
        if existing is None or existing.execution != execution:
            return False
        return self.bucket.delete_if_unchanged(AppKeys(app, env).lock, etag=etag)

    def renew(self, app: str, env: str, *, execution: str, ttl: timedelta, now: datetime) -> Lock:
        """Extend the lock of ``execution`` to ``now + ttl`` for a long rollout.

        ``LockLost`` if the lock is gone or another rollout holds it: the caller must stop,
        since it no longer has the app to itself.
        """
        if ttl <= timedelta(0):
            raise ValueError(f"ttl must be positive, e.g. timedelta(minutes=30); got {ttl}")
        now = _utc(now, "now")
        existing, etag = self._read(app, env)
        if existing is None:
            raise LockLost(f"the deploy lock of {app}/{env} is gone: execution {execution} no longer holds it")
        if existing.execution != execution:
            raise LockLost(f"execution {execution} lost the deploy lock of {app}/{env}: {refusal(existing, now)}")
        renewed = Lock(
            owner=existing.owner,
            execution=execution,
            release=existing.release,
            acquired_at=existing.acquired_at,
            expires_at=now + ttl,
        )
        if not self.bucket.replace(AppKeys(app, env).lock, renewed.to_json(), etag=etag):
            raise LockLost(f"the deploy lock of {app}/{env} changed while execution {execution} renewed it")
        return renewed
