"""What a rollout may be asked, and nothing more: the one definition of its input. Pure.

A rollout's input carries the app, the release, the kind, the strategy's options (within
their ranges), the process type of a restart, and who asked. Everything it acts on (the
fleet's group, target group and alarms, the deploy document, the bucket, its pacing) it
derives from its environment's own settings (:mod:`slipway.rollout.tasks`, its first task):
an input that names any of those, or anything else, is refused before anything is touched.
Whoever can start the state machine can therefore start a rollout of a release that exists,
onto the fleet the environment says is that app's, and nothing else.

The API builds the input with :meth:`RolloutRequest.to_json`; the rollout reads it back with
:meth:`RolloutRequest.from_json`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from slipway.rollout.strategy import Strategy, StrategyError
from slipway_release.names import APP_NAME_RULE, ENV_NAME_RULE, is_app_name, is_env_name, is_release_id
from slipway_release.procfile import PROCESS_TYPE

# What a rollout does: switch to a release, go back to an earlier one (a release that copies it,
# in one batch), or restart what runs (the same release, batch by batch). openapi.json's enum is
# tied by a test.
DEPLOY, ROLLBACK, RESTART = "deploy", "rollback", "restart"
KINDS = (DEPLOY, ROLLBACK, RESTART)
# The input's keys; "process" only for a restart of one process type.
KEYS = ("app", "env", "release", "user", "kind", "strategy", "process")
MAX_USER = 200


class RequestRefused(ValueError):
    """The rollout's input is not one this environment's rollouts take; the message says why."""


@dataclass(frozen=True)
class RolloutRequest:
    """One rollout, as asked: ``release`` of ``app`` in ``env``, by ``user``."""

    app: str
    env: str
    release: str
    user: str
    kind: str
    strategy: Strategy
    process: str | None = None

    def __post_init__(self) -> None:
        if not is_app_name(self.app):
            raise RequestRefused(f"app {self.app!r} must be {APP_NAME_RULE}")
        if not is_env_name(self.env):
            raise RequestRefused(f"env {self.env!r} must be {ENV_NAME_RULE}")
        if not is_release_id(self.release):
            raise RequestRefused(f"release {self.release!r} must be a release id like r7")
        if not self.user or len(self.user) > MAX_USER:
            raise RequestRefused(f"user must name who asked, in 1 to {MAX_USER} characters")
        if self.kind not in KINDS:
            raise RequestRefused(f"kind {self.kind!r} must be one of {', '.join(KINDS)}")
        if self.process is not None and (self.kind != RESTART or not PROCESS_TYPE.fullmatch(self.process)):
            raise RequestRefused(f"process {self.process!r} goes only with a restart, as a Procfile process type")

    def to_json(self) -> dict[str, Any]:
        """The state machine's input."""
        extra = {"process": self.process} if self.process else {}
        return {
            **extra,
            "app": self.app,
            "env": self.env,
            "release": self.release,
            "user": self.user,
            "kind": self.kind,
            "strategy": self.strategy.as_dict(),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RolloutRequest:
        """The input a rollout was started with; :class:`RequestRefused` for anything else, naming it."""
        unknown = sorted(set(raw) - set(KEYS))
        if unknown:
            raise RequestRefused(
                f"the rollout's input names {', '.join(unknown)}, which a rollout never takes from its caller: "
                f"it takes only {', '.join(KEYS)}, and its fleet, target group, alarms, document and timing "
                "come from the environment's own settings"
            )
        missing = [key for key in KEYS if key not in raw and key != "process"]
        if missing:
            raise RequestRefused(f"the rollout's input lacks {', '.join(missing)}")
        text = {key: raw[key] for key in ("app", "env", "release", "user", "kind")}
        wrong = [key for key, value in text.items() if not isinstance(value, str)]
        if wrong:
            raise RequestRefused(f"the rollout's {', '.join(wrong)} must be text")
        process = raw.get("process")
        if process is not None and not isinstance(process, str):
            raise RequestRefused("the rollout's process must be text")
        try:
            strategy = Strategy.parse(raw["strategy"])
        except StrategyError as error:
            raise RequestRefused(str(error)) from None
        return cls(strategy=strategy, process=process, **text)
