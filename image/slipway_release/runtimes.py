"""What an image offers apps to run on: ``/etc/slipway/runtimes.json``, written and read here only.

``provision.sh`` calls :func:`provision` at bake time and at every boot: it runs each
candidate interpreter the distribution installed, keeps those that work (python with pip,
node with npm beside it), gives each a command directory under ``/opt/slipway/runtimes``
(``python``, ``python3``, ``pip`` … or ``node``, ``npm``, ``npx``, all the chosen
interpreter's) and writes what it found::

    {"python": {"3.11": {"version": "3.11.2", "path": "/usr/bin/python3.11",
                         "bin": "/opt/slipway/runtimes/python-3.11/bin"}},
     "node":   {"18":   {"version": "18.19.0", "path": "/usr/bin/node",
                         "bin": "/opt/slipway/runtimes/node-18/bin"}}}

Keys are release lines: major.minor for python, major for node
(:func:`slipway_release.build.runtime_line`). The build program chooses among them; the
deploy agent refuses a slug whose runtime line the instance does not offer.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from .build import NODE, PYTHON, runtime_line

RUNTIMES_PATH = "/etc/slipway/runtimes.json"
SHIMS_ROOT = "/opt/slipway/runtimes"
NAMES = (PYTHON, NODE)
DISPLAY = {PYTHON: "Python", NODE: "Node.js"}
_VERSION = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,4}")
# Interpreters a distribution may install: Debian 12's python3 (3.11) and nodejs (18);
# Amazon Linux 2023's python3.11/3.12/3.13 and nodejs20/22 (node-20, node-22 beside npm-20, npm-22).
PYTHON_CANDIDATES = ("/usr/bin/python3", "/usr/bin/python3.[0-9]*")
NODE_CANDIDATES = ("/usr/bin/node", "/usr/bin/node-[0-9]*")


class RuntimesError(ValueError):
    """runtimes.json is missing or not what provision.sh writes."""


@dataclass(frozen=True)
class Offer:
    """One interpreter this image offers: ``python 3.11`` is ``/usr/bin/python3.11``, version 3.11.2."""

    name: str
    line: str
    version: str
    path: str
    bin: str

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


Offers = dict[str, dict[str, Offer]]


def line_key(line: str) -> tuple[int, ...]:
    """Sort key of a release line: ``3.9`` before ``3.11``."""
    return tuple(int(part) for part in line.split("."))


def parse_runtimes(text: bytes, where: str = RUNTIMES_PATH) -> Offers:
    """``{name: {line: Offer}}`` from runtimes.json bytes; :class:`RuntimesError` naming the problem."""
    try:
        data = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise RuntimesError(f"{where} is not valid JSON ({error}); run image/provision.sh again") from None
    if not isinstance(data, dict) or set(data) - set(NAMES):
        raise RuntimesError(f"{where} must be an object with {' and/or '.join(NAMES)}; run image/provision.sh again")
    offers: Offers = {}
    for name, lines in data.items():
        if not isinstance(lines, dict):
            raise RuntimesError(f"{where}: {name} must map release lines to interpreters")
        offers[name] = {}
        for line, entry in lines.items():
            fields = ("version", "path", "bin")
            if not (
                isinstance(entry, dict)
                and set(entry) == set(fields)
                and all(isinstance(entry[f], str) for f in fields)
                and _VERSION.fullmatch(entry["version"])
                and runtime_line(name, entry["version"]) == line
                and entry["path"].startswith("/")
                and entry["bin"].startswith("/")
            ):
                raise RuntimesError(
                    f'{where}: {name} {line} must be {{"version": "<x.y.z of that line>", "path": "/…", '
                    '"bin": "/…"}; run image/provision.sh again'
                )
            offers[name][line] = Offer(name, line, entry["version"], entry["path"], entry["bin"])
    return offers


def load_runtimes(path: str = RUNTIMES_PATH) -> Offers:
    """The offers of this instance; :class:`RuntimesError` if provision.sh never wrote them."""
    try:
        with open(path, "rb") as handle:
            return parse_runtimes(handle.read(), path)
    except FileNotFoundError:
        raise RuntimesError(f"{path} does not exist: this image offers no runtimes; run image/provision.sh") from None


def render_runtimes(offers: Iterable[Offer]) -> str:
    """The text of runtimes.json for ``offers`` (sorted, one writer)."""
    data: dict[str, dict[str, dict[str, str]]] = {}
    for offer in sorted(offers, key=lambda o: (o.name, line_key(o.line))):
        data.setdefault(offer.name, {})[offer.line] = {"version": offer.version, "path": offer.path, "bin": offer.bin}
    return json.dumps(data, indent=2) + "\n"


def offered_lines(offers: Mapping[str, Mapping[str, Offer]], name: str) -> list[str]:
    """The lines of ``name`` offered, oldest first."""
    return sorted(offers.get(name, {}), key=line_key)


def shim_dir(name: str, line: str, root: str = SHIMS_ROOT) -> str:
    """The command directory of one offer: ``/opt/slipway/runtimes/python-3.11/bin``."""
    return f"{root}/{name}-{line}/bin"


Runner = Callable[[Sequence[str]], "str | None"]


def _run(argv: Sequence[str]) -> str | None:
    """What ``argv`` prints, or ``None`` if it cannot run or fails."""
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _expand(patterns: Sequence[str]) -> list[str]:
    found: list[str] = []
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            # python3.11 is an interpreter; python3.11-config and friends are not.
            if re.fullmatch(r".*/(python3(\.[0-9]+)?|node(-[0-9]+)?)", path) and path not in found:
                found.append(path)
    return found


def discover(
    python_candidates: Sequence[str] = PYTHON_CANDIDATES,
    node_candidates: Sequence[str] = NODE_CANDIDATES,
    run: Runner = _run,
    root: str = SHIMS_ROOT,
) -> list[Offer]:
    """Run every candidate interpreter; one offer per release line (the first path found wins).

    A python counts only if it can run pip (apps install with it); a node only with an
    npm beside it (``npm`` for ``node``, ``npm-20`` for ``node-20``).
    """
    offers: dict[tuple[str, str], Offer] = {}
    for path in _expand(python_candidates):
        version = run([path, "-c", "import sys, pip; print('%d.%d.%d' % sys.version_info[:3])"])
        if version and _VERSION.fullmatch(version):
            line = runtime_line(PYTHON, version)
            offers.setdefault((PYTHON, line), Offer(PYTHON, line, version, path, shim_dir(PYTHON, line, root)))
    for path in _expand(node_candidates):
        version = (run([path, "--version"]) or "").lstrip("v")
        if _VERSION.fullmatch(version) and os.path.exists(_npm_beside(path)):
            line = runtime_line(NODE, version)
            offers.setdefault((NODE, line), Offer(NODE, line, version, path, shim_dir(NODE, line, root)))
    return list(offers.values())


def _npm_beside(node: str, tool: str = "npm") -> str:
    directory, base = os.path.split(node)
    suffix = base[len("node") :]
    return os.path.join(directory, f"{tool}{suffix}")


def shim_commands(offer: Offer) -> dict[str, tuple[str, str]]:
    """``{command: ("link", target) | ("script", text)}`` for an offer's command directory."""
    if offer.name == PYTHON:
        pip = f'#!/bin/sh\nexec {offer.path} -m pip "$@"\n'
        commands = {name: ("link", offer.path) for name in ("python", "python3", f"python{offer.line}")}
        commands.update({name: ("script", pip) for name in ("pip", "pip3", f"pip{offer.line}")})
        return commands
    commands = {"node": ("link", offer.path)}
    for tool in ("npm", "npx"):
        target = _npm_beside(offer.path, tool)
        if os.path.exists(target):
            commands[tool] = ("link", target)
    return commands


def install_shims(offers: Sequence[Offer], root: str = SHIMS_ROOT) -> None:
    """Make exactly the offers' command directories under ``root`` (root-owned, read-only to apps)."""
    wanted = {f"{offer.name}-{offer.line}": offer for offer in offers}
    os.makedirs(root, mode=0o755, exist_ok=True)
    for name in os.listdir(root):
        if name not in wanted:
            shutil.rmtree(os.path.join(root, name))
    for offer in offers:
        directory = shim_dir(offer.name, offer.line, root)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        commands = shim_commands(offer)
        for existing in os.listdir(directory):
            if existing not in commands:
                os.unlink(os.path.join(directory, existing))
        for command, (kind, value) in commands.items():
            path = os.path.join(directory, command)
            if kind == "link":
                if os.path.islink(path) and os.readlink(path) == value:
                    continue
                temporary = f"{path}.new"
                if os.path.lexists(temporary):
                    os.unlink(temporary)
                os.symlink(value, temporary)
                os.replace(temporary, path)
            else:
                if not os.path.islink(path) and os.path.isfile(path) and _read(path) == value:
                    continue
                with open(f"{path}.new", "w", encoding="utf-8") as handle:
                    handle.write(value)
                os.chmod(f"{path}.new", 0o755)
                os.replace(f"{path}.new", path)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def provision(path: str = RUNTIMES_PATH, root: str = SHIMS_ROOT) -> str:
    """Discover, install the command directories, write runtimes.json if it changed; a summary line."""
    offers = discover(root=root)
    install_shims(offers, root)
    text = render_runtimes(offers)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    current = _read(path) if os.path.exists(path) else None
    if current != text:
        with open(f"{path}.new", "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(f"{path}.new", 0o644)
        os.replace(f"{path}.new", path)
    return describe(parse_runtimes(text.encode(), path))


def describe(offers: Mapping[str, Mapping[str, Offer]]) -> str:
    """``python 3.11 (3.11.2), node 18 (18.19.0)`` or ``none``."""
    parts = [f"{name} {line} ({offers[name][line].version})" for name in NAMES for line in offered_lines(offers, name)]
    return ", ".join(parts) or "none"
