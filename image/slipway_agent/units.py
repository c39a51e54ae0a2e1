"""The on-disk layout, the systemd unit text and the exact commands the agent runs.

Everything here is pure: functions return unit text or argv lists, and the
tests assert them. :mod:`slipway_agent.host` runs them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from slipway_release.oneoff import PROCESS_TYPE as ONE_OFF
from slipway_release.procfile import WEB

from .front import SLOTS

APPS_ROOT = "/home/deploy/apps"
UNIT_DIR = "/etc/systemd/system"
RUN_AS = "deploy"
SHELL = "/bin/bash"
RELEASE_PHASE_TIMEOUT_SECONDS = 900
# Installed by provisioning: `deploy --recover` at boot. App units start after it (ordering only).
RECOVER_UNIT = "slipway-recover.service"
# Under a release's directory: the unpacked slug, the processes' working directory.
APP = "app"
# What the agent may put into a unit's Environment= lines unquoted (paths it made itself).
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_./:@+-]*")


@dataclass(frozen=True)
class AppLayout:
    """Where one app's releases, state and lock live on the instance.

    ``<root>/<app>/releases/<id>/app`` is the unpacked slug,
    ``.../<id>/env`` the systemd EnvironmentFile, ``.../<id>/release.json``
    the verified manifest and ``.../<id>/units/`` the units rendered for it;
    ``current`` links to the running release and ``DEPLOYED`` holds its id;
    ``slots/<slot>.env`` gives the web process of the release in that slot its ``PORT``
    (docs/switch.md). ``home`` is the one directory the app's processes may write (their
    ``HOME``).
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
    def home_dir(self) -> str:
        """The processes' ``HOME``: owned by the app's user, outside every release."""
        return f"{self.app_dir}/home"

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

    @property
    def slots_dir(self) -> str:
        return f"{self.app_dir}/slots"

    def slot_env_file(self, slot: str) -> str:
        """The environment file that gives the web process in ``slot`` its port (``PORT=...``)."""
        return f"{self.slots_dir}/{slot}.env"

    def unit_name(self, process_type: str, index: int, slot: str) -> str:
        """``slipway-<app>-<type>.<index>.<slot>.service``, e.g. ``slipway-billing-web.1.a.service``."""
        return f"slipway-{self.app}-{process_type}.{index}.{slot}.service"

    def process_type_of(self, unit: str) -> str | None:
        """``web`` for ``slipway-<app>-web.1.a.service``; ``None`` for a unit not of this app's processes."""
        if not self.owns_unit(unit):
            return None
        return unit.removeprefix(f"slipway-{self.app}-").split(".")[0]

    def slot_of(self, unit: str) -> str | None:
        """``a`` for ``slipway-<app>-web.1.a.service``; ``None`` for a unit not of this app's processes."""
        if not self.owns_unit(unit):
            return None
        return unit.split(".")[-2]

    def owns_unit(self, unit: str) -> bool:
        """True for a unit file name this app's deploys created (types never contain '-')."""
        slots = "|".join(SLOTS)
        return (
            re.fullmatch(rf"slipway-{re.escape(self.app)}-[A-Za-z0-9_]+\.[0-9]+\.({slots})\.service", unit) is not None
        )

    def preflight_unit(self, release_id: str) -> str:
        return f"slipway-{self.app}-preflight-{release_id}.service"

    def release_phase_unit(self, release_id: str) -> str:
        return f"slipway-{self.app}-release-{release_id}.service"

    def one_off_unit(self, release_id: str, run_id: str) -> str:
        return f"slipway-{self.app}-run-{release_id}-{run_id}.service"


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


def render_unit(
    layout: AppLayout,
    release_id: str,
    slot: str,
    process_type: str,
    index: int,
    command: str,
    environment: Mapping[str, str] | None = None,
) -> str:
    """Return the unit file text for process ``<type>.<index>`` of ``release_id`` in ``slot``.

    Units point at their release's directory, so two releases can run side by side, one in
    each slot (docs/switch.md). ``web`` gets ``PORT`` from its slot's environment file (the
    port the front forwards to, chosen when the slot starts); every process gets
    ``DYNO=<type>.<index>`` as on Heroku, ``HOME`` (the app's writable directory) and
    ``environment`` (the slug's PATH and PYTHONPATH under the release's directory).
    ``StartLimitIntervalSec=0`` keeps ``Restart=always`` retrying forever. The journal's name
    is ``<app>-<type>`` whichever slot runs it.
    """
    release_dir = layout.release_dir(release_id)
    settings = {"HOME": layout.home_dir, **(environment or {})}
    settings["DYNO"] = f"{process_type}.{index}"
    port_file = [f"EnvironmentFile={layout.slot_env_file(slot)}"] if process_type == WEB else []
    lines = [
        "# Written by the Slipway deploy agent; replaced on every deploy.",
        "[Unit]",
        f"Description=Slipway {layout.app} {process_type}.{index} ({release_id} in slot {slot})",
        f"After=network-online.target {RECOVER_UNIT}",
        "Wants=network-online.target",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=simple",
        f"User={RUN_AS}",
        f"Group={RUN_AS}",
        f"WorkingDirectory={release_dir}/{APP}",
        f"EnvironmentFile={release_dir}/env",
        *port_file,
        *environment_lines(settings),
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


def render_slot_env(port: int) -> str:
    """The slot's environment file: the web process's ``PORT`` (the env file may not set it)."""
    return f"PORT={port}\n"


def environment_lines(settings: Mapping[str, str]) -> list[str]:
    """``Environment=KEY=value`` lines for values the agent made (paths, numbers).

    They need no quoting; anything else is refused rather than half-escaped. The env file
    (``EnvironmentFile=``) carries the app's own config and wins over these.
    """
    for key, value in settings.items():
        if not _PLAIN_VALUE.fullmatch(value):
            raise ValueError(f"{key}={value!r} cannot be set in a unit without quoting")
    return [f"Environment={key}={value}" for key, value in settings.items()]


def render_units(
    layout: AppLayout,
    release_id: str,
    slot: str,
    processes: Mapping[str, str],
    formation: Sequence[tuple[str, int]],
    environment: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Return ``{unit file name: text}`` for the resolved formation of ``release_id`` in ``slot``."""
    units = {}
    for process_type, count in formation:
        for index in range(1, count + 1):
            units[layout.unit_name(process_type, index, slot)] = render_unit(
                layout, release_id, slot, process_type, index, processes[process_type], environment
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

    Every wanted unit restarts, even with unchanged text: a slot being filled
    starts all of its units. Unchanged files are not rewritten.
    """
    return UnitChanges(
        write={name: text for name, text in wanted.items() if installed.get(name) != text},
        remove=sorted(name for name in installed if name not in wanted),
        restart=list(wanted),
    )


def transient_properties(
    layout: AppLayout, release_id: str, identifier: str, environment: Mapping[str, str] | None = None
) -> list[str]:
    """``systemd-run`` options that run a one-off process like a unit of the release.

    ``environment`` holds the slug's PATH and PYTHONPATH under this release's directory
    (the one-offs run before ``current`` points at it).
    """
    release_dir = layout.release_dir(release_id)
    settings = {"HOME": layout.home_dir, **(environment or {})}
    environment_lines(settings)  # the same refusal as in unit files
    return [
        f"--property=User={RUN_AS}",
        f"--property=Group={RUN_AS}",
        f"--property=WorkingDirectory={release_dir}/{APP}",
        f"--property=EnvironmentFile={release_dir}/env",
        f"--property=SyslogIdentifier={identifier}",
        *(f"--setenv={key}={value}" for key, value in settings.items()),
    ]


def preflight_command(
    layout: AppLayout, release_id: str, command: str, port: int, environment: Mapping[str, str] | None = None
) -> list[str]:
    """Start the new release's web process as a transient unit on a spare port.

    No ``Restart=``: a process that exits is a failed preflight.
    """
    return [
        "systemd-run",
        f"--unit={layout.preflight_unit(release_id)}",
        "--quiet",
        *transient_properties(layout, release_id, f"{layout.app}-{WEB}", environment),
        f"--setenv=PORT={port}",
        f"--setenv=DYNO={WEB}.preflight",
        "--",
        SHELL,
        "-c",
        command,
    ]


def release_phase_command(
    layout: AppLayout, release_id: str, command: str, environment: Mapping[str, str] | None = None
) -> list[str]:
    """Run the Procfile's ``release:`` command once and wait, its output piped to the agent
    (which shows it and writes it to the journal as ``<app>-release``: :func:`journal_command`)."""
    return [
        "systemd-run",
        f"--unit={layout.release_phase_unit(release_id)}",
        "--quiet",
        "--wait",
        "--pipe",
        "--collect",
        f"--property=RuntimeMaxSec={RELEASE_PHASE_TIMEOUT_SECONDS}",
        *transient_properties(layout, release_id, release_identifier(layout), environment),
        "--setenv=DYNO=release.1",
        "--",
        SHELL,
        "-c",
        command,
    ]


def one_off_command(
    layout: AppLayout,
    release_id: str,
    run_id: str,
    command: str,
    timeout_seconds: int,
    environment: Mapping[str, str] | None = None,
) -> list[str]:
    """Run a one-off command (``slipway run``) once like a process of the release and wait, its
    output piped to the agent; systemd stops it at ``timeout_seconds`` (``RuntimeMaxSec``), so
    it never outlives the SSM command that asked for it."""
    return [
        "systemd-run",
        f"--unit={layout.one_off_unit(release_id, run_id)}",
        "--quiet",
        "--wait",
        "--pipe",
        "--collect",
        f"--property=RuntimeMaxSec={timeout_seconds}",
        *transient_properties(layout, release_id, f"{layout.app}-{ONE_OFF}", environment),
        f"--setenv=DYNO={ONE_OFF}.{run_id}",
        "--",
        SHELL,
        "-c",
        command,
    ]


def release_identifier(layout: AppLayout) -> str:
    """The journal's and syslog's name for the release phase: ``<app>-release``."""
    return f"{layout.app}-release"


def journal_command(identifier: str) -> list[str]:
    """Write stdin to the journal, one entry per line, as ``identifier`` (forwarded like the app's)."""
    return ["systemd-cat", f"--identifier={identifier}", "--level-prefix=false"]


def verify_command(paths: Sequence[str]) -> list[str]:
    """``systemd-analyze verify`` over the rendered unit files."""
    return ["systemd-analyze", "verify", *paths]


def systemctl(action: str, *units: str) -> list[str]:
    """``systemctl <action> [units]`` without pager or prompts."""
    return ["systemctl", "--no-pager", "--quiet", action, *units]
