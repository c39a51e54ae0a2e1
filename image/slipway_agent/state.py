"""The agent's own records on the instance, and the decisions taken from them. Pure.

Three records, each one small JSON file written atomically:

- ``releases/<id>/STAGED``: the release was downloaded, verified, unpacked, configured and
  passed its preflight; it holds the sha256 of the release directory as staged, so
  activation can refuse a copy changed since.
- ``ACTIVATING`` (in the app directory): an activation is moving the units and ``current``
  from ``previous`` to ``release``. Written before the first change and removed once
  ``DEPLOYED`` names the release (or the previous release is back). A run that finds it
  was preceded by a killed one: :func:`plan_recovery` says what to do.
- ``DEPLOYED`` / ``PREVIOUS``: the release health-checked last, and the one before it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from slipway_release.names import is_release_id, newest_first

STAGED = "STAGED"
ACTIVATING = "ACTIVATING"
# Release directories kept besides the deployed, previous and just-staged ones.
KEEP_RELEASES = 5
_VERSION = 1


@dataclass(frozen=True)
class StagedRecord:
    """What ``releases/<id>/STAGED`` says: the release and its directory's digest."""

    release: str
    tree_sha256: str


def render_staged(record: StagedRecord) -> str:
    return json.dumps({"version": _VERSION, "release": record.release, "tree_sha256": record.tree_sha256}) + "\n"


def parse_staged(text: str | None) -> StagedRecord | None:
    """The record, or ``None`` for a missing or unreadable one (the release is then not staged)."""
    data = _object(text)
    if data is None or data.get("version") != _VERSION:
        return None
    release, digest = data.get("release"), data.get("tree_sha256")
    if not (isinstance(release, str) and is_release_id(release) and isinstance(digest, str) and len(digest) == 64):
        return None
    return StagedRecord(release, digest)


@dataclass(frozen=True)
class Intent:
    """An activation in flight: from ``previous`` (``None``: nothing ran) to ``release``."""

    release: str
    previous: str | None


def render_intent(intent: Intent) -> str:
    return json.dumps({"version": _VERSION, "release": intent.release, "previous": intent.previous}) + "\n"


def parse_intent(text: str) -> Intent | None:
    """The activation in flight; ``None`` if the record is garbled (a kill while writing it
    cannot leave one, since it is renamed into place, but a hand edit can)."""
    data = _object(text)
    if data is None or data.get("version") != _VERSION:
        return None
    release, previous = data.get("release"), data.get("previous")
    if not (isinstance(release, str) and is_release_id(release)):
        return None
    if previous is not None and not (isinstance(previous, str) and is_release_id(previous)):
        return None
    return Intent(release, previous)


@dataclass(frozen=True)
class Recovery:
    """What to do about an interrupted activation.

    ``finish``: ``DEPLOYED`` already names the release, so it passed its health check;
    only ``PREVIOUS`` (``previous``) and the record's removal are left. Otherwise the units
    and ``current`` go back to ``restore``, the release ``DEPLOYED`` names (``None``: no
    release ran before; the app's units are removed).
    """

    finish: bool
    restore: str | None
    previous: str | None


def plan_recovery(intent: Intent | None, deployed: str | None) -> Recovery:
    """Decide from ``ACTIVATING``'s record (``None``: garbled) and ``DEPLOYED``.

    ``DEPLOYED`` is the commit point: it changes only after the new release answered its
    health check on the real port. Short of it, the activation is undone, back to the
    release ``DEPLOYED`` names, the last one known healthy, so that ``current``, the units
    and ``DEPLOYED`` agree again.
    """
    if intent is not None and deployed == intent.release:
        return Recovery(finish=True, restore=None, previous=intent.previous)
    return Recovery(finish=False, restore=deployed, previous=None)


def releases_to_prune(names: Iterable[str], keep: int, protect: set[str]) -> list[str]:
    """Release directories to delete: all but the ``keep`` highest ids and the protected ones.

    Names that are not release ids (``r<N>``, e.g. ``.r7.partial``) are never pruned here.
    """
    return [n for n in newest_first(names)[keep:] if n not in protect]


def protected_releases(*ids: str | None) -> set[str]:
    """The releases pruning must keep (deployed, previous, just staged), ignoring absent ones."""
    return {release for release in ids if release}


def _object(text: str | None) -> dict[str, object] | None:
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
