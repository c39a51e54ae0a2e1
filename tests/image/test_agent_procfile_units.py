"""Procfile parsing, formation, and the exact unit text and commands."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slipway_agent.units import (
    AppLayout,
    UnitChanges,
    journal_command,
    plan_unit_changes,
    preflight_command,
    release_identifier,
    release_phase_command,
    render_slot_env,
    render_unit,
    render_units,
    systemctl,
    systemd_quote,
    verify_command,
)
from slipway_release.procfile import ProcfileError, parse_procfile, resolve_formation

LAYOUT = AppLayout("billing")


def test_parse_procfile():
    text = "# processes\nweb: python app.py --port $PORT\n\nworker:bundle exec sidekiq  \nrelease: ./migrate\n"
    assert parse_procfile(text) == {
        "web": "python app.py --port $PORT",
        "worker": "bundle exec sidekiq",
        "release": "./migrate",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "defines no process"),
        ("# only a comment\n", "defines no process"),
        ("web python app.py\n", "line 1: expected 'type: command'"),
        ("my web: x\n", "expected 'type: command'"),
        ("web-1: x\n", "expected 'type: command'"),
        ("web:\n", "'web' has no command"),
        ("web: a\nweb: b\n", "line 2: process type 'web' is defined twice"),
        ("web: a\x1bb\n", "control character"),
    ],
)
def test_procfile_errors(text, message):
    with pytest.raises(ProcfileError, match=message):
        parse_procfile(text)


@given(
    st.dictionaries(
        st.from_regex(r"[A-Za-z0-9_]{1,30}", fullmatch=True),
        st.text(st.characters(min_codepoint=32, blacklist_characters="\x7f"), min_size=1, max_size=40)
        .map(lambda c: c.strip(" \t"))
        .filter(bool),
        min_size=1,
        max_size=6,
    )
)
def test_procfile_round_trips(processes):
    text = "".join(f"{name}: {command}\n" for name, command in processes.items())
    assert parse_procfile(text) == processes


def test_formation_defaults_like_heroku():
    processes = {"build": "x", "web": "a", "worker": "b", "clock": "c", "release": "d"}
    assert resolve_formation(processes, {}) == [("web", 1), ("worker", 0), ("clock", 0)]
    assert resolve_formation(processes, {"worker": 3, "web": 0}) == [("web", 0), ("worker", 3), ("clock", 0)]


@pytest.mark.parametrize(
    ("formation", "message"),
    [
        ({"release": 1}, "'release', which runs once per deploy"),
        ({"build": 0}, "'build', which runs once per build"),
        ({"cron": 1}, "'cron', which the Procfile does not define; the Procfile has build, release, web"),
        ({"web": 2}, "asks for 2 web processes"),
    ],
)
def test_formation_errors(formation, message):
    with pytest.raises(ProcfileError, match=message):
        resolve_formation({"web": "a", "release": "b", "build": "c"}, formation)


def test_web_unit_text():
    environment = {
        "PATH": "/home/deploy/apps/billing/releases/r7/app/.slipway/python/bin:/usr/bin",
        "PYTHONPATH": "/home/deploy/apps/billing/releases/r7/app/.slipway/python",
    }
    assert render_unit(LAYOUT, "r7", "b", "web", 1, 'python app.py --port $PORT --greet "100%"', environment) == (
        "# Written by the Slipway deploy agent; replaced on every deploy.\n"
        "[Unit]\n"
        "Description=Slipway billing web.1 (r7 in slot b)\n"
        "After=network-online.target slipway-recover.service\n"
        "Wants=network-online.target\n"
        "StartLimitIntervalSec=0\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        "User=deploy\n"
        "Group=deploy\n"
        "WorkingDirectory=/home/deploy/apps/billing/releases/r7/app\n"
        "EnvironmentFile=/home/deploy/apps/billing/releases/r7/env\n"
        # Last, so its PORT wins (the env file may not set PORT anyway).
        "EnvironmentFile=/home/deploy/apps/billing/slots/b.env\n"
        "Environment=HOME=/home/deploy/apps/billing/home\n"
        "Environment=PATH=/home/deploy/apps/billing/releases/r7/app/.slipway/python/bin:/usr/bin\n"
        "Environment=PYTHONPATH=/home/deploy/apps/billing/releases/r7/app/.slipway/python\n"
        "Environment=DYNO=web.1\n"
        'ExecStart=/bin/bash -c "python app.py --port $$PORT --greet \\"100%%\\""\n'
        "Restart=always\n"
        "RestartSec=1\n"
        "TimeoutStopSec=30\n"
        "SyslogIdentifier=billing-web\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )
    assert render_slot_env(41234) == "PORT=41234\n"


def test_worker_units_have_no_port_and_one_unit_per_process():
    units = render_units(LAYOUT, "r7", "a", {"web": "w", "worker": "k"}, [("web", 0), ("worker", 2)])
    assert list(units) == ["slipway-billing-worker.1.a.service", "slipway-billing-worker.2.a.service"]
    text = units["slipway-billing-worker.2.a.service"]
    assert "PORT" not in text and "slots/" not in text
    assert "Environment=DYNO=worker.2\n" in text
    assert "SyslogIdentifier=billing-worker\n" in text  # the journal's name whatever the slot


def test_unit_environment_refuses_what_would_need_quoting():
    with pytest.raises(ValueError, match="cannot be set in a unit without quoting"):
        render_unit(LAYOUT, "r7", "a", "web", 1, "x", {"PATH": "/a b"})
    with pytest.raises(ValueError, match="cannot be set in a unit without quoting"):
        preflight_command(LAYOUT, "r7", "x", 5000, {"PATH": "/a%n"})


def test_systemd_quote():
    assert systemd_quote("a b") == '"a b"'
    assert systemd_quote('say "hi" \\ $HOME %n\tx') == '"say \\"hi\\" \\\\ $$HOME %%n\\tx"'


def test_unit_ownership_is_exact():
    assert LAYOUT.owns_unit("slipway-billing-web.1.a.service")
    assert LAYOUT.owns_unit("slipway-billing-clock_2.12.b.service")
    assert (
        LAYOUT.process_type_of("slipway-billing-clock_2.12.b.service"),
        LAYOUT.slot_of("slipway-billing-web.1.b.service"),
    ) == (
        "clock_2",
        "b",
    )
    assert not LAYOUT.owns_unit("slipway-billing-web.1.service")  # no slot: an older agent's
    assert not LAYOUT.owns_unit("slipway-billing-web.1.c.service")
    assert not AppLayout("billing").owns_unit("slipway-billing-api-web.1.a.service")
    assert not LAYOUT.owns_unit("slipway-billing-preflight-r3.service")
    assert not LAYOUT.owns_unit("slipway-billingx-web.1.a.service")


def test_plan_unit_changes():
    installed = {"a.service": "old", "b.service": "same", "gone.service": "x"}
    wanted = {"a.service": "new", "b.service": "same", "c.service": "added"}
    assert plan_unit_changes(installed, wanted) == UnitChanges(
        write={"a.service": "new", "c.service": "added"},
        remove=["gone.service"],
        restart=["a.service", "b.service", "c.service"],
    )


def test_preflight_command():
    environment = {"PATH": "/home/deploy/apps/billing/releases/r7/app/node_modules/.bin:/usr/bin"}
    assert preflight_command(LAYOUT, "r7", "python app.py", 41234, environment) == [
        "systemd-run",
        "--unit=slipway-billing-preflight-r7.service",
        "--quiet",
        "--property=User=deploy",
        "--property=Group=deploy",
        "--property=WorkingDirectory=/home/deploy/apps/billing/releases/r7/app",
        "--property=EnvironmentFile=/home/deploy/apps/billing/releases/r7/env",
        "--property=SyslogIdentifier=billing-web",
        "--setenv=HOME=/home/deploy/apps/billing/home",
        "--setenv=PATH=/home/deploy/apps/billing/releases/r7/app/node_modules/.bin:/usr/bin",
        "--setenv=PORT=41234",
        "--setenv=DYNO=web.preflight",
        "--",
        "/bin/bash",
        "-c",
        "python app.py",
    ]


def test_release_phase_command():
    assert release_phase_command(LAYOUT, "r7", "./migrate") == [
        "systemd-run",
        "--unit=slipway-billing-release-r7.service",
        "--quiet",
        "--wait",
        "--pipe",
        "--collect",
        "--property=RuntimeMaxSec=900",
        "--property=User=deploy",
        "--property=Group=deploy",
        "--property=WorkingDirectory=/home/deploy/apps/billing/releases/r7/app",
        "--property=EnvironmentFile=/home/deploy/apps/billing/releases/r7/env",
        "--property=SyslogIdentifier=billing-release",
        "--setenv=HOME=/home/deploy/apps/billing/home",
        "--setenv=DYNO=release.1",
        "--",
        "/bin/bash",
        "-c",
        "./migrate",
    ]


def test_small_commands_and_layout():
    assert verify_command(["/x/a.service"]) == ["systemd-analyze", "verify", "/x/a.service"]
    assert journal_command(release_identifier(LAYOUT)) == [
        "systemd-cat",
        "--identifier=billing-release",
        "--level-prefix=false",
    ]
    assert LAYOUT.home_dir == "/home/deploy/apps/billing/home"
    assert systemctl("restart", "a.service") == ["systemctl", "--no-pager", "--quiet", "restart", "a.service"]
    assert LAYOUT.release_dir("r3") == "/home/deploy/apps/billing/releases/r3"
    assert (LAYOUT.current, LAYOUT.deployed_file, LAYOUT.lock_file) == (
        "/home/deploy/apps/billing/current",
        "/home/deploy/apps/billing/DEPLOYED",
        "/home/deploy/apps/billing/deploy.lock",
    )
