"""One app's settings as this environment's stack wrote them: what a workflow acts on.

The rollout and the release writer take from their callers only what to do (an app, a release,
an upload) and read where and how from here: the function's environment (``PLATFORM_ENV``,
``RELEASE_BUCKET``, the pacing) and the app's SSM parameter (``/slipway/<env>/apps/<app>``),
which only the stack writes. An app or environment the stack does not hold is
:class:`NotConfigured`, with nothing done.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from slipway import aws
from slipway.settings import (
    PLATFORM_ENV,
    RELEASE_BUCKET,
    AppParameter,
    SettingsError,
    Timing,
    app_parameter_name,
    rollout_timing,
)


class NotConfigured(ValueError):
    """The request names an app or environment this environment's stack does not configure."""


@dataclass(frozen=True)
class Configured:
    """An app of this environment: its settings, the environment's bucket and the workflows' pacing."""

    env: str
    bucket: str
    app: str
    settings: AppParameter
    timing: Timing


def configured(app: str, env: str) -> Configured:
    """``app`` in ``env`` as this function's stack configured it; :class:`NotConfigured` otherwise."""
    here = os.environ.get(PLATFORM_ENV, "")
    if env != here:
        raise NotConfigured(f"this is {here}'s control plane, which acts on {here} only, not {env!r}")
    ssm = aws.client("ssm")
    name = app_parameter_name(here, app)
    try:
        value = ssm.get_parameter(Name=name)["Parameter"]["Value"]
    except ssm.exceptions.ParameterNotFound:
        raise NotConfigured(f"{here} has no app {app!r} (no parameter {name}); add it to cdk.json") from None
    try:
        settings = AppParameter.from_json(json.loads(value))
        timing = rollout_timing(os.environ)
    except (SettingsError, ValueError) as error:
        raise NotConfigured(f"the settings of {app} in {here} are unreadable ({error})") from None
    return Configured(env=here, bucket=os.environ.get(RELEASE_BUCKET, ""), app=app, settings=settings, timing=timing)
