"""The local load balancer (local.haproxy): its exact HAProxy config and runtime commands, ELB's
target states computed from HAProxy's checks, and a real HAProxy on loopback in front of two
small HTTP servers of this process."""

from __future__ import annotations

import http.client
import re
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from local.haproxy import (
    CHECKING,
    DRAINING,
    HEALTHY,
    REGISTERING,
    Balancer,
    HealthCheck,
    LoadBalancer,
    LoadBalancerError,
    ServerStat,
    Tracked,
    add_server,
    config_text,
    drain_server,
    park_server,
    parse_stat,
    reuse_server,
    status_regex,
    target_health,
)

CHECK = HealthCheck(
    path="/health", interval_seconds=5, timeout_seconds=4, healthy_threshold=2, unhealthy_threshold=2, matcher="200-399"
)
BALANCER = Balancer(name="web", listen_host="127.0.0.1", listen_port=18080, socket=Path("/run/x/web.sock"), check=CHECK)


@pytest.mark.parametrize(
    ("matcher", "regex"),
    [
        ("200", "^(200)$"),
        ("200,302", "^(200|302)$"),
        ("200-399", "^([2-3][0-9][0-9])$"),
        ("200-299, 301", "^(2[0-9][0-9]|301)$"),
        ("250-420", "^(2[5-9][0-9]|3[0-9][0-9]|4[0-1][0-9]|420)$"),
    ],
)
def test_matcher_codes_become_one_status_regex(matcher: str, regex: str) -> None:
    assert status_regex(matcher) == regex


@given(st.integers(100, 599), st.integers(100, 599), st.integers(100, 599))
def test_a_range_regex_matches_exactly_the_codes_of_the_range(a: int, b: int, code: int) -> None:
    low, high = sorted((a, b))
    assert bool(re.fullmatch(status_regex(f"{low}-{high}"), str(code))) == (low <= code <= high)


@pytest.mark.parametrize("matcher", ["20x", "399-200", "2000", ""])
def test_a_matcher_haproxy_cannot_play_is_refused_by_name(matcher: str) -> None:
    with pytest.raises(LoadBalancerError, match="is not an HTTP code or a range like 200-399"):
        status_regex(matcher)


def test_the_config_is_the_target_groups_check_and_no_server() -> None:
    assert config_text(BALANCER) == (
        "# The load balancer of web (written by local/haproxy.py). Targets are added and\n"
        "# removed through the stats socket while it runs; it is never reloaded.\n"
        "global\n"
        "    stats socket /run/x/web.sock mode 600 level admin\n"
        "    stats timeout 30s\n"
        "\n"
        "defaults\n"
        "    mode http\n"
        "    timeout connect 5s\n"
        "    # The ALB's idle timeout.\n"
        "    timeout client 60s\n"
        "    timeout server 60s\n"
        "    # One server connection per request: a drained server holds no idle connection.\n"
        "    option http-server-close\n"
        "\n"
        "frontend web\n"
        "    bind 127.0.0.1:18080\n"
        "    default_backend web\n"
        "\n"
        "backend web\n"
        "    balance roundrobin\n"
        "    option httpchk\n"
        "    http-check send meth GET uri /health ver HTTP/1.1 hdr Host web hdr User-Agent ELB-HealthChecker/2.0\n"
        "    http-check expect rstatus ^([2-3][0-9][0-9])$\n"
        "    timeout check 4s\n"
    )


def test_health_check_settings_come_from_describe_target_groups() -> None:
    described = {
        "TargetGroupName": "web",
        "HealthCheckProtocol": "HTTP",
        "HealthCheckPort": "traffic-port",
        "HealthCheckPath": "/health",
        "HealthCheckIntervalSeconds": 5,
        "HealthCheckTimeoutSeconds": 4,
        "HealthyThresholdCount": 2,
        "UnhealthyThresholdCount": 2,
        "Matcher": {"HttpCode": "200-399"},
    }
    assert HealthCheck.from_target_group(described) == CHECK
    with pytest.raises(LoadBalancerError, match="checks health over HTTPS; the local load balancer plays HTTP"):
        HealthCheck.from_target_group({**described, "HealthCheckProtocol": "HTTPS"})


def test_runtime_commands_add_a_target_down_drain_it_park_it_and_reuse_it() -> None:
    assert add_server(BALANCER, "i-1.1", "10.231.0.2", 5000) == [
        "add server web/i-1.1 10.231.0.2:5000 weight 0 check inter 5s rise 2 fall 2",
        "enable health web/i-1.1",
        "set server web/i-1.1 state ready",
        "set server web/i-1.1 health down",
        "set weight web/i-1.1 1",
    ]
    other_port = Balancer(**{**BALANCER.__dict__, "check": HealthCheck(**{**CHECK.__dict__, "port": "8081"})})
    assert add_server(other_port, "i-1.1", "10.231.0.2", 5000)[0].endswith(" rise 2 fall 2 port 8081")
    assert drain_server(BALANCER, "i-1.1") == ["set server web/i-1.1 state drain"]
    assert park_server(BALANCER, "i-1.1", cut=False) == ["set server web/i-1.1 state maint"]
    assert park_server(BALANCER, "i-1.1", cut=True) == [
        "set server web/i-1.1 state maint",
        "shutdown sessions server web/i-1.1",
    ]
    assert reuse_server(BALANCER, "i-1.1") == [
        "set weight web/i-1.1 0",
        "set server web/i-1.1 state ready",
        "set server web/i-1.1 health down",
        "set weight web/i-1.1 1",
    ]


SHOW_STAT = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,"
    "act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,"
    "check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,"
    "req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,"
    "qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,"
    "check_health\n"
    "web,FRONTEND,,,0,1,262128,3,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,0,0,1,,,,0,3,0,0,0,0,,0,1,3,,,0,0,0,0,,,,,,,"
    ",,,,,,,\n"
    "web,i-1.1,0,0,2,1,,3,0,0,,0,,0,0,0,0,UP,1,1,0,0,0,9,0,,1,3,1,,3,,2,0,,1,L7OK,200,1,0,3,0,0,0,0,,,,3,0,0,,,,,0,"
    "OK,,0,0,0,1,,,,Layer7 check passed,,2,2,3\n"
    "web,i-2.2,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,1,0,1,1,3,3,,1,3,2,,0,,2,0,,0,* L4CON,,0,0,0,0,0,0,0,,,,0,0,0,,,,,-1,"
    "Connection refused,,0,0,0,0,,,,Layer4 connection problem,,2,2,0\n"
    "web,BACKEND,0,0,2,1,26213,3,0,0,0,0,,0,0,0,0,UP,1,1,0,,0,9,0,,1,3,0,,3,,1,0,,1,,,,0,3,0,0,0,0,,,,3,0,0,0,0,0,0,"
    "0,,,0,0,0,1,,,,,,,,\n"
)


def test_show_stat_gives_each_servers_status_sessions_and_last_check() -> None:
    assert parse_stat(SHOW_STAT, "web") == {
        "i-1.1": ServerStat("i-1.1", "UP", 2, "L7OK", "200", "Layer7 check passed", 3),
        "i-2.2": ServerStat("i-2.2", "DOWN", 0, "L4CON", "", "Layer4 connection problem", 0),
    }
    assert parse_stat(SHOW_STAT, "billing") == {}


def _stat(status: str, check: str = "L7OK", code: str = "200", health: int = 0, desc: str = "") -> ServerStat:
    return ServerStat("i-1.1", status, 0, check, code, desc, health)


def test_a_new_target_is_initial_until_its_checks_pass_then_healthy() -> None:
    tracked = Tracked("i-1.1", "i-1", "10.231.0.2", 5000, registered_at=100.0)
    assert target_health(tracked, None, CHECK, 100.0) == REGISTERING
    assert target_health(tracked, _stat("DOWN", "INI"), CHECK, 100.1) == REGISTERING
    seen = tracked.observe(_stat("DOWN 1/2", health=1), 101.0)
    assert target_health(seen, _stat("DOWN 1/2", health=1), CHECK, 101.0) == CHECKING
    up = seen.observe(_stat("UP", health=3), 106.0)
    assert up.ever_up and target_health(up, _stat("UP", health=3), CHECK, 106.0) == HEALTHY


def test_a_new_target_failing_every_check_turns_unhealthy_after_the_threshold() -> None:
    refused = _stat("DOWN", "L4CON", "", desc="Layer4 connection problem")
    tracked = Tracked("i-1.1", "i-1", "10.231.0.2", 5000, registered_at=100.0).observe(refused, 100.5)
    assert tracked.failing_since == 100.5
    # 2 checks 5 s apart: unhealthy once the second failure is due.
    assert target_health(tracked.observe(refused, 105.0), refused, CHECK, 105.0) == CHECKING
    assert target_health(tracked.observe(refused, 105.5), refused, CHECK, 105.5) == (
        "unhealthy",
        "Target.FailedHealthChecks",
        "Health checks failed (Layer4 connection problem)",
    )
    # A passing check in between starts the count again.
    passed = tracked.observe(_stat("DOWN 1/2", health=1), 103.0)
    assert passed.failing_since is None


def test_a_target_that_was_up_is_unhealthy_at_once_with_elbs_reason() -> None:
    tracked = Tracked("i-1.1", "i-1", "10.231.0.2", 5000, registered_at=0.0, ever_up=True)
    assert target_health(tracked, _stat("DOWN", "L7STS", "500"), CHECK, 50.0) == (
        "unhealthy",
        "Target.ResponseCodeMismatch",
        "Health checks failed with these codes: [500]",
    )
    assert target_health(tracked, _stat("DOWN", "L7TOUT", ""), CHECK, 50.0) == (
        "unhealthy",
        "Target.Timeout",
        "Request timed out",
    )
    # Still UP while failing fewer checks than the threshold: ELB too says healthy until then.
    assert target_health(tracked, _stat("UP 1/2", "L7STS", "500"), CHECK, 50.0) == HEALTHY
    draining = Tracked("i-1.1", "i-1", "10.231.0.2", 5000, registered_at=0.0, draining_since=49.0)
    assert target_health(draining, _stat("DRAIN"), CHECK, 50.0) == DRAINING


# A real HAProxy ------------------------------------------------------------------------------------

needs_haproxy = pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy (make instance-packages)")


class App:
    """A small HTTP server on loopback whose health answer and slowness the test sets."""

    def __init__(self, label: str) -> None:
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/health":
                    status, body = app.health, b"ok"
                else:
                    time.sleep(app.delay)
                    status, body = 200, label.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.health, self.delay = 200, 0.0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def balancer(tmp_path: Path) -> Iterator[LoadBalancer]:
    from local.instance import free_port

    check = HealthCheck(path="/health", interval_seconds=1, timeout_seconds=1, healthy_threshold=2)
    running = LoadBalancer.start(Balancer("web", "127.0.0.1", free_port(), tmp_path / "web.sock", check), tmp_path)
    yield running
    running.stop()
    assert running.process.poll() is not None


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def wait_for(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@needs_haproxy
def test_haproxy_sends_traffic_only_to_passing_targets_and_drains_without_cutting(balancer: LoadBalancer) -> None:
    one, two = App("one"), App("two")
    try:
        two.health = 500
        balancer.commands(add_server(balancer.balancer, "one.1", "127.0.0.1", one.port))
        balancer.commands(add_server(balancer.balancer, "two.1", "127.0.0.1", two.port))
        # Added down: nothing serves until the checks pass (HAProxy's own default would be UP).
        assert get(balancer.url)[0] == 503
        wait_for(lambda: balancer.stats()["one.1"].status == "UP", timeout=10)
        stats = balancer.stats()
        assert stats["two.1"].status.startswith("DOWN") and stats["two.1"].check_code == "500"
        assert {get(balancer.url)[1] for _ in range(6)} == {"one"}
        # Draining: a slow request in flight finishes; new ones go elsewhere.
        two.health = 200
        wait_for(lambda: balancer.stats()["two.1"].status == "UP", timeout=10)
        one.delay = 1.0
        slow: list[tuple[int, str]] = []
        threads = [threading.Thread(target=lambda: slow.append(get(balancer.url))) for _ in range(2)]
        for thread in threads:
            thread.start()
        wait_for(lambda: balancer.stats()["one.1"].sessions == 1, timeout=5)
        balancer.commands(drain_server(balancer.balancer, "one.1"))
        assert balancer.stats()["one.1"].status == "DRAIN"
        assert {get(balancer.url)[1] for _ in range(4)} == {"two"}
        for thread in threads:
            thread.join(timeout=10)
        assert sorted(slow) == [(200, "one"), (200, "two")]
        assert balancer.stats()["one.1"].sessions == 0
        balancer.commands(park_server(balancer.balancer, "one.1", cut=False))
        assert balancer.stats()["one.1"].status == "MAINT"
        assert {get(balancer.url)[1] for _ in range(4)} == {"two"}
        # Reused: down until its checks pass again, then serving, with no request lost meanwhile.
        balancer.commands(reuse_server(balancer.balancer, "one.1"))
        assert balancer.stats()["one.1"].status.startswith("DOWN")
        assert {get(balancer.url)[1] for _ in range(4)} == {"two"}
        one.delay = 0.0
        wait_for(lambda: balancer.stats()["one.1"].status == "UP", timeout=10)
        assert {get(balancer.url)[1] for _ in range(8)} == {"one", "two"}
        with pytest.raises(LoadBalancerError, match=r"refused 'del server web/nothing'"):
            balancer.commands(["del server web/nothing"])
    finally:
        one.close()
        two.close()
