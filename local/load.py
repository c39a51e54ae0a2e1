"""A bounded load generator for the local platform's app URLs: one thread, sequential GETs.

Used by the end-to-end tests and ``benchmarks/platform.py`` to count what clients see
while a fleet is rolled out, rolled back or cycled. Every request opens a new connection
(as a browser's first request does) to ``127.0.0.1``; a request fails if it cannot
connect, times out, or answers anything but 200. It stops when asked, or after
``limit_seconds`` whatever happens, so a test that forgets it cannot load forever.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Load:
    """GETs ``url`` from one thread until stopped (use as a context manager)."""

    url: str
    interval: float = 0.02
    timeout: float = 5.0
    limit_seconds: float = 900.0
    ok: int = 0
    failures: list[tuple[float, str]] = field(default_factory=list)  # (when, what went wrong)
    bodies: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    started: float = 0.0
    ended: float = 0.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.hostname is None or not parts.hostname.startswith("127."):
            raise ValueError(f"{self.url}: the load generator sends requests to loopback only")
        self._host, self._port, self._path = parts.hostname, parts.port or 80, parts.path or "/"

    def get(self) -> tuple[int, str] | str:
        """One request: (status, body), or what went wrong."""
        connection = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        try:
            connection.request("GET", self._path)
            response = connection.getresponse()
            return response.status, response.read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as error:
            return f"{type(error).__name__}: {error}"
        finally:
            connection.close()

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            answer = self.get()
            if isinstance(answer, tuple) and answer[0] == 200:
                self.ok += 1
                self.bodies[answer[1].strip()] += 1
            else:
                self.failures.append((time.monotonic(), answer if isinstance(answer, str) else f"HTTP {answer[0]}"))
            self._stop.wait(self.interval)

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 5)
        self.ended = time.monotonic()

    @property
    def total(self) -> int:
        return self.ok + len(self.failures)

    def summary(self) -> str:
        """``failed/total`` and over how long, for a test's report or a benchmark's table."""
        kinds = Counter(what for _, what in self.failures)
        detail = f" ({', '.join(f'{n}x {w}' for w, n in kinds.most_common(3))})" if kinds else ""
        return f"{len(self.failures)}/{self.total} failed over {self.ended - self.started:.1f}s{detail}"
