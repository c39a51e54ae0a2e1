"""The agent's own records on the instance, and the decisions taken from them. Pure.

Four records, each one small JSON file written atomically:

- ``releases/<id>/STAGED``: the release was downloaded, verified, unpacked, configured and
  passed its preflight; it holds the sha256 of the release directory as staged, so
  activation can refuse a copy changed since, and the sha256 of the ``release.json`` it was
  staged from, so activation can refuse a release other than the one the rollout pinned.
- ``ACTIVATING`` (in the app directory): an activation is starting ``release`` in ``slot``
  (its web on ``port``) beside ``previous``, to switch the front to it. Written before the
  first change and removed once the switch is complete or undone. A run that finds it was
  preceded by a killed one: :func:`plan_recovery` says what to do.
- ``SERVING``: the release the front sends traffic to, its slot and port: the commit point
  of an activation, written once the release answered through the front.
- ``DEPLOYED`` / ``PREVIOUS``: the serving release's id (written from ``SERVING`` right
  after it), and the one before it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from slipway_release.names import is_release_id, is_sha256, newest_first

from .front import SLOTS, other

STAGED = "STAGED"
ACTIVATING = "ACTIVATING"
SERVING = "SERVING"
# Release directories kept besides the deployed, previous and just-staged ones.
KEEP_RELEASES = 5
_VERSION = 1


@dataclass(frozen=True)
class StagedRecord:
    """What ``releases/<id>/STAGED`` says: the release, its directory's digest, and the digest of the
    ``release.json`` it was staged from (``None`` in a record written before manifests were pinned)."""

    release: str
    tree_sha256: str
    manifest_sha256: str | None = None


def render_staged(record: StagedRecord) -> str:
    fields = {"version": _VERSION, "release": record.release, "tree_sha256": record.tree_sha256}
    if record.manifest_sha256:
        fields["manifest_sha256"] = record.manifest_sha256
    return json.dumps(fields) + "\n"


def parse_staged(text: str | None) -> StagedRecord | None:
    """The record, or ``None`` for a missing or unreadable one (the release is then not staged)."""
    data = _object(text)
    if data is None or data.get("version") != _VERSION:
        return None
    release, digest, manifest = data.get("release"), data.get("tree_sha256"), data.get("manifest_sha256")
    if not (isinstance(release, str) and is_release_id(release) and isinstance(digest, str) and is_sha256(digest)):
        return None
    if manifest is not None and not (isinstance(manifest, str) and is_sha256(manifest)):
        return None
    return StagedRecord(release, digest, manifest)


@dataclass(frozen=True)
class Serving:
    """What serves: ``release`` in ``slot``, its web process on ``port`` (0: it runs no web)."""

    release: str
    slot: str
    port: int


def render_serving(serving: Serving) -> str:
    return (
        json.dumps({"version": _VERSION, "release": serving.release, "slot": serving.slot, "port": serving.port}) + "\n"
    )


def parse_serving(text: str | None) -> Serving | None:
    """The record, or ``None`` for a missing or garbled one."""
    data = _object(text)
    if data is None or data.get("version") != _VERSION:
        return None
    release, slot, port = data.get("release"), data.get("slot"), data.get("port")
    if not (isinstance(release, str) and is_release_id(release) and slot in SLOTS and _is_port(port)):
        return None
    assert isinstance(slot, str) and isinstance(port, int)
    return Serving(release, slot, port)


@dataclass(frozen=True)
class Intent:
    """An activation in flight: ``release`` starting in ``slot`` (web on ``port``), to replace
    ``previous`` (``None``: nothing ran)."""

    release: str
    previous: str | None
    slot: str
    port: int


def render_intent(intent: Intent) -> str:
    return (
        json.dumps(
            {
                "version": _VERSION,
                "release": intent.release,
                "previous": intent.previous,
                "slot": intent.slot,
                "port": intent.port,
            }
        )
        + "\n"
    )


def parse_intent(text: str) -> Intent | None:
    """The activation in flight; ``None`` if the record is garbled (a kill while writing it
    cannot leave one, since it is renamed into place, but a hand edit can)."""
    data = _object(text)
    if data is None or data.get("version") != _VERSION:
        return None
    release, previous, slot, port = data.get("release"), data.get("previous"), data.get("slot"), data.get("port")
    if not (isinstance(release, str) and is_release_id(release)):
        return None
    if previous is not None and not (isinstance(previous, str) and is_release_id(previous)):
        return None
    if slot not in SLOTS or not _is_port(port):
        return None
    assert isinstance(slot, str) and isinstance(port, int)
    return Intent(release, previous, slot, port)


@dataclass(frozen=True)
class Recovery:
    """What to do about an interrupted activation.

    ``finish``: ``SERVING`` already names the release and slot the activation was starting,
    so it answered through the front; only ``DEPLOYED``, ``PREVIOUS`` (``previous``), the old
    slot's removal and the record's are left. Otherwise the activation is undone: the front
    back to ``serving`` (``None``: nothing served before), the slots in ``remove`` stopped
    and their units removed.
    """

    finish: bool
    serving: Serving | None
    remove: tuple[str, ...]
    previous: str | None


def plan_recovery(intent: Intent | None, serving: Serving | None) -> Recovery:
    """Decide from ``ACTIVATING``'s record (``None``: garbled) and ``SERVING``.

    ``SERVING`` is the commit point: it changes only after the new release answered its health
    check through the front. Short of it the activation is undone, back to what ``SERVING``
    names, the last release known healthy; either way every slot but the serving one ends
    empty, so the front, the units and ``SERVING`` agree again.
    """
    if intent is not None and serving is not None and (serving.release, serving.slot) == (intent.release, intent.slot):
        return Recovery(finish=True, serving=serving, remove=(other(intent.slot),), previous=intent.previous)
    remove = tuple(slot for slot in SLOTS if serving is None or slot != serving.slot)
    return Recovery(finish=False, serving=serving, remove=remove, previous=None)


def releases_to_prune(names: Iterable[str], keep: int, protect: set[str]) -> list[str]:
    """Release directories to delete: all but the ``keep`` highest ids and the protected ones.

    Names that are not release ids (``r<N>``, e.g. ``.r7.partial``) are never pruned here.
    """
    return [n for n in newest_first(names)[keep:] if n not in protect]


def protected_releases(*ids: str | None) -> set[str]:
    """The releases pruning must keep (deployed, previous, just staged), ignoring absent ones."""
    return {release for release in ids if release}


def _is_port(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535


def _object(text: str | None) -> dict[str, object] | None:
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
