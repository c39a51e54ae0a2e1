"""The ``/slipway`` command's grammar and its answers in Block Kit. Pure: text in, data out.

::

    /slipway help
    /slipway status   APP ENV
    /slipway releases APP ENV
    /slipway config   APP ENV          (names only: values may be secrets)
    /slipway deploy   APP ENV [rN]     (default: the newest release)
    /slipway rollback APP ENV
    /slipway restart  APP ENV [TYPE]   (a rolling restart of current; one process type if given)
    /slipway cycle    APP ENV [i-…]    (one instance, or the whole fleet)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slipway.deploys import RESTART
from slipway.slack.rules import ACTIONS
from slipway_release import names
from slipway_release.procfile import PROCESS_TYPE

USAGE = "\n".join(
    [
        "`/slipway status APP ENV` · `/slipway releases APP ENV` · `/slipway config APP ENV` (names only)",
        "`/slipway deploy APP ENV [rN]` · `/slipway rollback APP ENV` · `/slipway restart APP ENV [worker]`",
        "`/slipway cycle APP ENV [i-…]`",
    ]
)
# Slack shows at most this much of one section's text.
MAX_SECTION = 2900


class CommandError(ValueError):
    """The command's text is not one of the commands; the message says what to type."""


@dataclass(frozen=True)
class Command:
    """What was asked: ``action`` on ``app`` in ``env``, with a release or instance for some actions."""

    action: str
    app: str = ""
    env: str = ""
    argument: str | None = None


def parse(text: str) -> Command:
    """The command in a slash command's ``text``; :class:`CommandError` with the usage otherwise."""
    words = text.split()
    if not words or words[0] == "help":
        return Command("help")
    action, *rest = words
    if action not in ACTIONS:
        raise CommandError(f"`{action}` is not a command.\n{USAGE}")
    if len(rest) < 2:
        raise CommandError(f"`{action}` needs an app and an environment, e.g. `/slipway {action} billing staging`.")
    app, env, *more = rest
    if not names.is_app_name(app):
        raise CommandError(f"`{app}` is not an app name ({names.APP_NAME_RULE}).")
    if not names.is_env_name(env):
        raise CommandError(f"`{env}` is not an environment name ({names.ENV_NAME_RULE}).")
    takes = {
        "deploy": "a release like r7",
        "cycle": "an instance id like i-0abc123",
        "restart": "a process type like worker",
    }
    if len(more) > (1 if action in takes else 0):
        extra = f" and {takes[action]}" if action in takes else ""
        raise CommandError(f"`{action}` takes an app, an environment{extra}; `{' '.join(more)}` is too much.")
    argument = more[0] if more else None
    if action == "deploy" and argument is not None and not names.is_release_id(argument):
        raise CommandError(f"`{argument}` is not a release id; release ids look like r7.")
    if action == "cycle" and argument is not None and not (argument.startswith("i-") and argument[2:].isalnum()):
        raise CommandError(f"`{argument}` is not an instance id; instance ids look like i-0abc123.")
    if action == "restart" and argument is not None and not PROCESS_TYPE.fullmatch(argument):
        raise CommandError(f"`{argument}` is not a process type; process types look like web or worker.")
    return Command(action, app, env, argument)


def message(text: str, *, public: bool = False, replace: bool = False) -> dict[str, Any]:
    """A Block Kit answer: one section of Markdown; ``public`` shows it to the channel,
    ``replace`` (in a later post) replaces the first answer instead of adding one."""
    answer: dict[str, Any] = {
        "response_type": "in_channel" if public else "ephemeral",
        "text": text[:MAX_SECTION],  # the notification's text, and what clients without blocks show
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text[:MAX_SECTION]}}],
    }
    if replace:
        answer["replace_original"] = True
    return answer


def status_text(shown: Mapping[str, Any]) -> str:
    capacity = shown["capacity"]
    lines = [
        f"*{shown['app']}* in *{shown['env']}*: current `{shown['current'] or 'none'}`, "
        f"{len(shown['instances'])} instance(s), desired {capacity['desired']} "
        f"(min {capacity['min']}, max {capacity['max']})"
    ]
    if shown.get("deploying"):
        deploying = shown["deploying"]
        lines.append(f"deploying `{deploying['release']}` (by {deploying['by']} since {deploying['since']})")
    lines += [
        f"• `{i['id']}` {i['zone']} `{i.get('release') or 'boot'}` {i['lifecycle']}, target {i['target']}"
        for i in shown["instances"]
    ]
    return "\n".join(lines)


def releases_text(app: str, env: str, releases: Sequence[Mapping[str, Any]]) -> str:
    if not releases:
        return f"*{app}* has no releases in *{env}*."
    lines = [f"*{app}* in *{env}* (newest first; ★ is current):"]
    for release in releases:
        mark = "★" if release.get("current") else "·"
        why = f" — {release['description']}" if release.get("description") else ""
        lines.append(
            f"{mark} `{release['id']}` {release['created_at']} by {release['created_by']}, "
            f"{release['git']['ref']} @ `{release['git']['commit'][:10]}`{why}"
        )
    return "\n".join(lines)


def config_text(app: str, env: str, variables: Mapping[str, str]) -> str:
    if not variables:
        return f"*{app}* has no config vars in *{env}*."
    return f"*{app}* in *{env}* sets: " + ", ".join(f"`{name}`" for name in sorted(variables))


def deploy_text(deploy: Mapping[str, Any]) -> str:
    """Where a deploy stands, in one line."""
    batches = deploy.get("batches") or []
    done = sum(1 for batch in batches if batch["state"] == "done")
    who = f" by {deploy['user']}" if deploy.get("user") else ""
    head = f"{deploy['kind'].capitalize()} of *{deploy['app']}* `{deploy['release']}` to *{deploy['env']}*{who}"
    if deploy["status"] == "RUNNING":
        progress = f" — batch {min(done + 1, len(batches))} of {len(batches)}" if batches else ""
        return f"{head}: {deploy.get('step') or 'starting'}{progress}"
    if deploy["status"] == "SUCCEEDED":
        done_text = "restarted" if deploy["kind"] == RESTART else "deployed"
        return f"{head}: :white_check_mark: {done_text}, `{deploy['release']}` is current"
    failure = deploy.get("failure") or {}
    where = f" on `{failure['instance']}`" if failure.get("instance") else ""
    rolled = f"; rolled back {', '.join(deploy['rolled_back'])}" if deploy.get("rolled_back") else ""
    reason = failure.get("reason") or (deploy.get("error") or {}).get("cause") or deploy["status"]
    previous = deploy.get("previous") or "the previous release"
    return f"{head}: :x: failed{where}: {reason}{rolled}; `{previous}` is still current"
