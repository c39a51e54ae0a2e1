"""The instance's front (docs/switch.md): its app file and switch commands as text, and a real
HAProxy on loopback with the image's own front.cfg, switched between two slots while a request is
in flight at the old one."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from slipway_agent.front import AppFront, Front, FrontError, open_requests, other, render_app, switch_commands

IMAGE = Path(__file__).resolve().parents[2] / "image"


def test_the_app_file_serves_one_slot_and_keeps_the_other_in_maintenance() -> None:
    front = AppFront("billing", 8080, "b", {"a": 41001, "b": 41002})
    assert render_app(front) == (
        "# Written by the Slipway deploy agent: billing's front (docs/switch.md). Switched at run time\n"
        "# through the admin socket, and rewritten after each switch to match.\n"
        "frontend billing\n"
        "    bind :8080\n"
        "    default_backend billing\n"
        "\n"
        "backend billing\n"
        "    retries 2\n"
        "    retry-on conn-failure\n"
        "    option redispatch 1\n"
        "    server a 127.0.0.1:41001 disabled\n"
        "    server b 127.0.0.1:41002\n"
    )
    # Before any release: both slots out, the slot never used on a placeholder address.
    assert "server a 127.0.0.1:1 disabled\n    server b 127.0.0.1:1 disabled\n" in render_app(AppFront("billing", 8080))
    assert front.serving("a", 41003) == AppFront("billing", 8080, "a", {"a": 41003, "b": 41002})
    with pytest.raises(ValueError, match="slot 'c' is not one of a, b"):
        AppFront("billing", 8080, "c", {"c": 1})
    with pytest.raises(ValueError, match="the serving slot a has no port"):
        AppFront("billing", 8080, "a", {})


def test_a_switch_is_three_runtime_commands() -> None:
    assert switch_commands("billing", "a", 41003) == [
        "set server billing/a addr 127.0.0.1 port 41003",
        "set server billing/a state ready",
        "set server billing/b state maint",
    ]
    assert (other("a"), other("b")) == ("b", "a")


def test_open_requests_reads_the_slots_scur() -> None:
    stat = (
        "# pxname,svname,qcur,qmax,scur,smax\n"
        "billing,FRONTEND,,,3,9\n"
        "billing,a,0,0,2,5\n"
        "billing,b,0,0,0,1\n"
        "billing,BACKEND,0,0,2,5\n"
    )
    assert (open_requests(stat, "billing", "a"), open_requests(stat, "billing", "b")) == (2, 0)
    with pytest.raises(FrontError, match="the front has no server web/a"):
        open_requests(stat, "web", "a")


@pytest.fixture
def slots() -> Iterator[dict[str, int]]:
    """Two loopback HTTP servers answering their slot's name; ``/slow`` takes a second."""
    servers = []
    ports = {}
    for name in ("a", "b"):

        class Handler(BaseHTTPRequestHandler):
            slot = name

            def do_GET(self) -> None:
                if self.path == "/slow":
                    time.sleep(1.0)
                body = self.slot.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        ports[name] = server.server_address[1]
    yield ports
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy (make test installs it)")
def test_a_real_front_switches_slots_and_lets_the_old_one_finish(tmp_path: Path, slots: dict[str, int]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    admin = tmp_path / "admin.sock"
    (tmp_path / "front.cfg").write_text(
        (IMAGE / "front.cfg").read_text().replace("/run/slipway-front/admin.sock", str(admin))
    )
    apps = tmp_path / "front.d"
    apps.mkdir()
    # Loopback only here (on an instance the front listens on every address, for the load balancer).
    text = render_app(AppFront("web", port, "a", {"a": slots["a"]})).replace(f"bind :{port}", f"bind 127.0.0.1:{port}")
    (apps / "web.cfg").write_text(text)
    argv = ["haproxy", "-f", str(tmp_path / "front.cfg"), "-f", str(apps)]
    checked = subprocess.run([*argv[:1], "-c", *argv[1:]], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    process = subprocess.Popen([argv[0], "-W", *argv[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        front = Front(str(admin))
        deadline = time.monotonic() + 10
        while not admin.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

        def get(path: str = "/") -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                return str(answer.read().decode())

        assert {get() for _ in range(5)} == {"a"}
        slow: list[str] = []
        waiting = threading.Thread(target=lambda: slow.append(get("/slow")))
        waiting.start()
        time.sleep(0.3)
        assert front.open_requests("web", "a") == 1
        front.switch("web", "b", slots["b"])
        assert {get() for _ in range(5)} == {"b"}  # every new request at b at once
        waiting.join(timeout=5)
        assert slow == ["a"]  # the request in flight at a finished there
        assert front.open_requests("web", "a") == 0
        with pytest.raises(FrontError, match="the front refused 'set server web/c state ready': No such server"):
            front.command("set server web/c state ready")
    finally:
        process.terminate()
        process.wait(timeout=10)
    with pytest.raises(FrontError, match="does not answer on"):
        Front(str(admin)).command("show stat")
