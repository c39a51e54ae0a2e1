"""Who may do what from Slack, per environment: the rules of ``environments.<env>.slack`` in cdk.json.

Each rule names actions and, optionally, the Slack users and channels it is for; a request is
allowed when a rule has its action and admits its user and its channel. Example::

    {"rules": [
        {"actions": ["help", "status", "releases", "config"]},
        {"actions": ["deploy", "rollback", "cycle"], "users": ["U0ALICE", "U0BOB"], "channels": ["C0DEPLOYS"]}
    ]}

Pure: the same parser checks cdk.json at synthesis and reads the settings in the function.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ACTIONS = ("help", "status", "releases", "config", "deploy", "rollback", "restart", "cycle")
# Slack's ids: users U… or W… (Enterprise Grid), channels C… (public), G… (private), D… (direct).
USER_ID = re.compile(r"[UW][A-Z0-9]{2,20}")
CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{2,20}")


class RuleError(ValueError):
    """A rule is wrong: where (``rules[1].users``), what is wrong, and what to write instead."""

    def __init__(self, where: str, problem: str, fix: str) -> None:
        super().__init__(f"{where}: {problem}; {fix}")
        self.where, self.problem, self.fix = where, problem, fix


@dataclass(frozen=True)
class Rule:
    """Actions allowed to ``users`` (``None``: anyone) in ``channels`` (``None``: anywhere)."""

    actions: frozenset[str]
    users: frozenset[str] | None = None
    channels: frozenset[str] | None = None

    def admits(self, action: str, user: str, channel: str) -> bool:
        return (
            action in self.actions
            and (self.users is None or user in self.users)
            and (self.channels is None or channel in self.channels)
        )

    def to_json(self) -> dict[str, Any]:
        rule: dict[str, Any] = {"actions": sorted(self.actions)}
        if self.users is not None:
            rule["users"] = sorted(self.users)
        if self.channels is not None:
            rule["channels"] = sorted(self.channels)
        return rule


def _ids(raw: object, where: str, pattern: re.Pattern[str], kind: str, example: str) -> frozenset[str]:
    if not isinstance(raw, list) or not raw or not all(isinstance(item, str) for item in raw):
        raise RuleError(
            where,
            f"expected a non-empty list of Slack {kind} ids",
            f'write e.g. ["{example}"], or leave it out for any',
        )
    for item in raw:
        if not pattern.fullmatch(item):
            raise RuleError(
                where, f"{item!r} is not a Slack {kind} id", f"copy the id from Slack (like {example}), not the name"
            )
    return frozenset(raw)


def parse_rules(raw: object) -> tuple[Rule, ...]:
    """The rules of a ``slack`` setting; :class:`RuleError` naming the first one that is wrong."""
    if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
        raise RuleError("rules", "expected a non-empty list of rules", 'write e.g. [{"actions": ["status"]}]')
    rules = []
    for index, item in enumerate(raw):
        where = f"rules[{index}]"
        if not isinstance(item, Mapping):
            raise RuleError(where, "expected an object", 'write e.g. {"actions": ["status"]}')
        unknown = sorted(set(item) - {"actions", "users", "channels"})
        if unknown:
            raise RuleError(f"{where}.{unknown[0]}", "unknown key", "use actions, users and channels")
        actions = item.get("actions")
        if not isinstance(actions, list) or not actions or not all(a in ACTIONS for a in actions):
            raise RuleError(
                f"{where}.actions", f"expected a list of actions, got {actions!r}", f"use any of {', '.join(ACTIONS)}"
            )
        users = _ids(item["users"], f"{where}.users", USER_ID, "user", "U024BE7LH") if "users" in item else None
        channels = (
            _ids(item["channels"], f"{where}.channels", CHANNEL_ID, "channel", "C024BE91L")
            if "channels" in item
            else None
        )
        rules.append(Rule(frozenset(actions), users, channels))
    return tuple(rules)


def refusal(rules: Iterable[Rule], action: str, user: str, channel: str, env: str) -> str | None:
    """``None`` when a rule allows ``action`` for ``user`` in ``channel``; otherwise the reason, for them to read."""
    rules = list(rules)
    if any(rule.admits(action, user, channel) for rule in rules):
        return None
    elsewhere = sorted({c for rule in rules for c in rule.channels or () if rule.admits(action, user, c)})
    if elsewhere:
        where = ", ".join(f"<#{channel}>" for channel in elsewhere)
        return f"`{action}` in {env} is allowed to you only in {where}; run it there"
    fix = f"ask an operator to allow it in cdk.json (environments.{env}.slack)"
    return f"you may not `{action}` in {env} from Slack; {fix}"
