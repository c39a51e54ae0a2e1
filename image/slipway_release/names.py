"""How apps, environments and releases are named. Pure; the one definition of each syntax.

Patterns are given as regular-expression text without anchors, so that callers can embed
them (the SSM document's ``allowedPattern``, a deploy id) and compile them anchored with
:func:`full`. ``release.schema.json`` spells the same patterns; a test ties them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# 2 to 32 lowercase letters, digits and '-', starting with a letter, not ending with '-'.
APP_NAME = "[a-z][a-z0-9-]{0,30}[a-z0-9]"
# 1 to 20 lowercase letters and digits, starting with a letter (it is part of stack names).
ENV_NAME = "[a-z][a-z0-9]{0,19}"
# r1, r2, … r999999999.
RELEASE_ID = "r[1-9][0-9]{0,8}"
# The pointer to the release an app runs in an environment; deployable by name.
CURRENT = "current"
# A sha256 digest as the platform writes one: 64 lowercase hex digits.
SHA256 = "[0-9a-f]{64}"

APP_NAME_RULE = "2 to 32 lowercase letters, digits and -, starting with a letter"
ENV_NAME_RULE = "lowercase letters and digits, starting with a letter, at most 20"


def full(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled to match a whole string."""
    return re.compile(f"(?:{pattern})")


_RELEASE = full(RELEASE_ID)
_SHA256 = full(SHA256)
_APP = full(APP_NAME)
_ENV = full(ENV_NAME)


def is_app_name(text: str) -> bool:
    return _APP.fullmatch(text) is not None


def is_env_name(text: str) -> bool:
    return _ENV.fullmatch(text) is not None


def is_release_id(text: str) -> bool:
    return _RELEASE.fullmatch(text) is not None


def is_sha256(text: str) -> bool:
    return _SHA256.fullmatch(text) is not None


def release_number(release_id: str) -> int:
    """``7`` for ``r7``; ``ValueError`` naming the syntax for anything else."""
    if not is_release_id(release_id):
        raise ValueError(f"{release_id!r} is not a release id; release ids look like r7")
    return int(release_id[1:])


def release_id(number: int) -> str:
    """``r7`` for ``7``."""
    made = f"r{number}"
    if not is_release_id(made):
        raise ValueError(f"{number!r} cannot number a release; use 1 to 999999999")
    return made


def newest_first(names: Iterable[str]) -> list[str]:
    """The release ids among ``names``, newest (highest number) first; other names are left out."""
    return sorted((n for n in names if is_release_id(n)), key=release_number, reverse=True)


def next_release_id(names: Iterable[str]) -> str:
    """The id after the newest release among ``names``: ``r1`` when there is none."""
    newest = newest_first(names)
    return release_id(release_number(newest[0]) + 1) if newest else release_id(1)
