"""What the CLI prints besides results: byte counts while transferring, and value formatting."""

from __future__ import annotations

import json
import sys
import threading
from typing import Any


class Progress:
    """Counts bytes on stderr when it is a terminal; silent otherwise. Safe across threads."""

    def __init__(self, total: int, label: str, quiet: bool) -> None:
        self.total, self.label, self.done = total, label, 0
        self.lock = threading.Lock()
        self.bar: Any = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=False)

    def advance(self, amount: int) -> None:
        with self.lock:
            self.done += amount
            if self.bar is not None:
                self.bar.update(amount)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def shown(value: str) -> str:
    return json.dumps(value, ensure_ascii=False) if ("\n" in value or value != value.strip()) else value


def human_size(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB" if size >= 1024 * 1024 else f"{size / 1024:.1f} kB"
