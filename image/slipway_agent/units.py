"""The on-disk layout, the systemd unit text and the exact commands the agent runs.

Everything here is pure: functions return unit text or argv lists, and the
tests assert them. :mod:`slipway_agent.host` runs them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from slipway_release.procfile import WEB

APPS_ROOT = "/home/deploy/apps"
UNIT_DIR = "/etc/systemd/system"
RUN_AS = "deploy"
SHELL = "/bin/bash"
RELEASE_PHASE_TIMEOUT_SECONDS = 900


@dataclass(frozen=True)
class AppLayout:
    """Where one app's releases, state and lock live on the instance.

    ``<root>/<app>/releases/<id>/source`` is the unpacked tarball,
    ``.../<id>/env`` the systemd EnvironmentFile, ``.../<id>/release.json``
    the verified manifest and ``.../<id>/units/`` the units rendered for it;
    ``current`` links to the running release and ``DEPLOYED`` holds its id.
    """

    app: str
    root: str = APPS_ROOT

    @property
    def app_dir(self) -> str:
        return f"{self.root}/{self.app}"

    @property
    def releases_dir(self) -> str:
        return f"{self.app_dir}/releases"

    @property
    def current(self) -> str:
        return f"{self.app_dir}/current"

    @property
    def deployed_file(self) -> str:
        return f"{self.app_dir}/DEPLOYED"

    @property
    def lock_file(self) -> str:
        return f"{self.app_dir}/deploy.lock"

    @property
    def downloads_dir(self) -> str:
        return f"{self.app_dir}/downloads"

    def release_dir(self, release_id: str) -> str:
        return f"{self.releases_dir}/{release_id}"

    def unit_name(self, process_type: str, index: int) -> str:
        """``slipway-<app>-<type>.<index>.service``, e.g. ``slipway-billing-web.1.service``."""
        return f"slipway-{self.app}-{process_type}.{index}.service"

    def owns_unit(self, unit: str) -> bool:
        """True for a unit file name this app's deploys created (types never contain '-')."""
        return re.fullmatch(rf"slipway-{re.escape(self.app)}-[A-Za-z0-9_]+\.[0-9]+\.service", unit) is not None

    def preflight_unit(self, release_id: str) -> str:
        return f"slipway-{self.app}-preflight-{release_id}.service"

    def release_phase_unit(self, release_id: str) -> str:
        return f"slipway-{self.app}-release-{release_id}.service"


def systemd_quote(argument: str) -> str:
    """Quote one ExecStart argument so systemd passes it through unchanged.

    Inside double quotes systemd unescapes C escapes, expands ``%``
    specifiers and ``$VARIABLES``; doubling ``%`` and ``$`` and escaping
    ``\\`` and ``"`` leaves the text as written, for bash to interpret.
    """
    out = []
    for char in argument:
        if char in '\\"':
            out.append("\\" + char)
        elif char in "%$":
            out.append(char * 2)
        elif char == "\t":
            out.append("\\t")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def render_unit(layout: AppLayout, process_type: str, index: int, command: str, port: int) -> str:
    """Return the unit file text for process ``<type>.<index>`` of the app.

    Units point at the ``current`` link, so switching the link and
    restarting is what moves a process to a new release. ``web`` gets
    ``PORT``; every process gets ``DYNO=<type>.<index>`` as on Heroku.
    ``StartLimitIntervalSec=0`` keeps ``Restart=always`` retrying forever.
    """
    environment = [f"Environment=PORT={port}"] if process_type == WEB else []
    lines = [
        "# Written by the Slipway deploy agent; replaced on every deploy.",
        "[Unit]",
        f"Description=Slipway {layout.app} {process_type}.{index}",
        "After=network-online.target",
        "Wants=network-online.target",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=simple",
        f"User={RUN_AS}",
        f"Group={RUN_AS}",
        f"WorkingDirectory={layout.current}/source",
        f"EnvironmentFile={layout.current}/env",
        *environment,
        f"Environment=DYNO={process_type}.{index}",
        f"ExecStart={SHELL} -c {systemd_quote(command)}",
        "Restart=always",
        "RestartSec=1",
        "TimeoutStopSec=30",
        f"SyslogIdentifier={layout.app}-{process_type}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def render_units(
    layout: AppLayout, processes: Mapping[str, str], formation: Sequence[tuple[str, int]], port: int
) -> dict[str, str]:
    """Return ``{unit file name: text}`` for the resolved formation."""
    units = {}
    for process_type, count in formation:
        for index in range(1, count + 1):
            units[layout.unit_name(process_type, index)] = render_unit(
                layout, process_type, index, processes[process_type], port
            )
    return units


@dataclass(frozen=True)
class UnitChanges:
    """How to go from the installed unit files to the wanted ones."""

    write: dict[str, str]
    remove: list[str]
    restart: list[str]


def plan_unit_changes(installed: Mapping[str, str], wanted: Mapping[str, str]) -> UnitChanges:
    """Units to (re)write, to stop and remove, and to restart.

    Every wanted unit restarts, even with unchanged text: its code moved
    with the ``current`` link. Unchanged files are not rewritten.
    """
    return UnitChanges(
        write={name: text for name, text in wanted.items() if installed.get(name) != text},
        remove=sorted(name for name in installed if name not in wanted),
        restart=list(wanted),
    )


def transient_properties(layout: AppLayout, release_id: str, identifier: str) -> list[str]:
    """``systemd-run`` properties that run a one-off process like a unit of the release."""
    release_dir = layout.release_dir(release_id)
    return [
        f"--property=User={RUN_AS}",
        f"--property=Group={RUN_AS}",
        f"--property=WorkingDirectory={release_dir}/source",
        f"--property=EnvironmentFile={release_dir}/env",
        f"--property=SyslogIdentifier={identifier}",
    ]


def preflight_command(layout: AppLayout, release_id: str, command: str, port: int) -> list[str]:
    """Start the new release's web process as a transient unit on a spare port.

    No ``Restart=``: a process that exits is a failed preflight.
    """
    return [
        "systemd-run",
        f"--unit={layout.preflight_unit(release_id)}",
        "--quiet",
        *transient_properties(layout, release_id, f"{layout.app}-{WEB}"),
        f"--setenv=PORT={port}",
        f"--setenv=DYNO={WEB}.preflight",
        "--",
        SHELL,
        "-c",
        command,
    ]


def release_phase_command(layout: AppLayout, release_id: str, command: str) -> list[str]:
    """Run the Procfile's ``release:`` command once and wait; its output goes to the deploy's."""
    return [
        "systemd-run",
        f"--unit={layout.release_phase_unit(release_id)}",
        "--quiet",
        "--wait",
        "--pipe",
        "--collect",
        f"--property=RuntimeMaxSec={RELEASE_PHASE_TIMEOUT_SECONDS}",
        *transient_properties(layout, release_id, f"{layout.app}-release"),
        "--setenv=DYNO=release.1",
        "--",
        SHELL,
        "-c",
        command,
    ]


def verify_command(paths: Sequence[str]) -> list[str]:
    """``systemd-analyze verify`` over the rendered unit files."""
    return ["systemd-analyze", "verify", *paths]


def systemctl(action: str, *units: str) -> list[str]:
    """``systemctl <action> [units]`` without pager or prompts."""
    return ["systemctl", "--no-pager", "--quiet", action, *units]
