"""The build flow: unpack the source, detect the app, install its runtime's dependencies into it,
run the Procfile's ``build:`` command, write the slug with its build manifest.

Everything the slug needs at run time lives inside the app directory, at paths relative to
it (``.slipway/python`` for pip's packages, ``node_modules`` for npm's), so the slug runs
wherever the agent unpacks it; the manifest (``.slipway/build.json``) says which of its
directories go on PATH and PYTHONPATH and which runtime line it needs.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from slipway_agent.unpack import unpack
from slipway_release.archive import ArchiveRules, UnsafeArchive
from slipway_release.build import (
    BUILD_MANIFEST,
    NODE,
    PROCFILE_KIND,
    PYTHON,
    SLIPWAY_DIR,
    BuildManifest,
    Runtime,
    build_manifest_from_data,
    manifest_data,
    process_environment,
)
from slipway_release.procfile import BUILD, ProcfileError, parse_procfile
from slipway_release.report import StepReport
from slipway_release.runtimes import Offer, RuntimesError, load_runtimes

from .cli import BuildArgs, UsageError, parse_args
from .select import (
    MAX_REQUEST_FILE_BYTES,
    PACKAGE_JSON,
    PACKAGE_LOCK,
    PROCFILE,
    PYTHON_VERSION_FILE,
    REQUIREMENTS,
    RUNTIME_TXT,
    SelectError,
    choose,
    detect_kind,
    node_request,
    python_request,
)

EXIT_BUILT, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# pip's packages (and their commands in bin/) inside the slug.
PYTHON_TARGET = f"{SLIPWAY_DIR}/python"
NODE_BIN = "node_modules/.bin"
INSTALL_TIMEOUT_SECONDS = 1800
BUILD_COMMAND_TIMEOUT_SECONDS = 900
SLUG_COMPRESSION = 6  # gzip's default: level 9 costs seconds on a big slug for a few percent
TAIL_LINES = 200


class BuildFailed(Exception):
    """A step failed; the message is the one line the developer reads."""


@dataclass
class Report(StepReport):
    """The build's steps (``slipway_release.report``), tool output indented, its failure line ``build: ...``."""

    failure_prefix: str = "build: "


@dataclass(frozen=True)
class Ran:
    """A command's exit status and the last lines it printed."""

    code: int
    tail: list[str]
    timed_out: bool = False


def run_streaming(argv: Sequence[str], cwd: str, env: Mapping[str, str], report: Report, timeout: float) -> Ran:
    """Run ``argv`` with its output indented under the current step; keep its last lines.

    The command runs in its own process group, killed whole when ``timeout`` passes.
    """
    try:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except OSError as error:
        raise BuildFailed(f"cannot run {argv[0]}: {error.strerror}") from None
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.start()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            text = line.rstrip("\n")
            tail.append(text)
            report.detail(text)
        code = process.wait()
    finally:
        timer.cancel()
    return Ran(code, list(tail), expired.is_set())


def tool_error(tail: Sequence[str], marker: str, *, first: bool = False) -> str:
    """The line of a tool's output that says what went wrong.

    The last (or, for npm, whose summary comes first, the ``first``) line starting with
    ``marker`` that says something: not empty, not npm's code/errno lines or its log path.
    Without one, the last line printed.
    """
    noise = re.compile(r"(code|errno|syscall|path|signal|command|cwd) |A complete log of this run|\S*-debug(-0)?\.log$")
    said = [
        line.strip()
        for line in tail
        if line.strip().startswith(marker)
        and line.strip()[len(marker) :].strip()
        and not noise.match(line.strip()[len(marker) :].strip())
    ]
    if said:
        return said[0] if first else said[-1]
    printed = [line.strip() for line in tail if line.strip()]
    return printed[-1] if printed else "no output"


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_small(path: str, what: str) -> str:
    """A request file's text (``.python-version``, ``package.json``…), refusing huge or non-UTF-8 ones."""
    with open(path, "rb") as handle:
        data = handle.read(MAX_REQUEST_FILE_BYTES + 1)
    if len(data) > MAX_REQUEST_FILE_BYTES:
        raise BuildFailed(f"{what} is larger than {MAX_REQUEST_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BuildFailed(f"{what} is not UTF-8 text") from None


def rewrite_shebangs(bin_dir: str, line: str) -> int:
    """Point pip's scripts at ``python<line>`` found on PATH instead of the build's absolute path.

    pip writes ``#!/abs/python`` (or, for long paths, a ``/bin/sh`` preamble that execs it);
    ``#!/usr/bin/env python3.11`` runs the same runtime wherever the slug is unpacked.
    Returns how many scripts were rewritten.
    """
    if not os.path.isdir(bin_dir):
        return 0
    shebang = f"#!/usr/bin/env python{line}\n".encode()
    preamble = re.compile(rb"#!/bin/sh\n'''exec' .*python[0-9.]* \"\$0\" \"\$@\"\n' '''\n")
    rewritten = 0
    for name in sorted(os.listdir(bin_dir)):
        path = os.path.join(bin_dir, name)
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, "rb") as handle:
            data = handle.read()
        match = preamble.match(data)
        if match:
            body = data[match.end() :]
        elif re.match(rb"#![^\n]*python[0-9.]*[ \t]*\n", data):
            body = data[data.index(b"\n") + 1 :]
        else:
            continue
        with open(path, "wb") as handle:
            handle.write(shebang + body)
        rewritten += 1
    return rewritten


class Build:
    """One run of ``build``."""

    def __init__(self, args: BuildArgs, report: Report, environ: Mapping[str, str]) -> None:
        self.args = args
        self.report = report
        self.environ = dict(environ)
        self.kind: str | None = None
        self.offer: Offer | None = None
        self.slug_size: int | None = None
        self.slug_sha256: str | None = None
        self.source_sha256: str | None = None
        self.runtime_step: str | None = None

    def run(self) -> int:
        started = time.monotonic()
        code, error = EXIT_BUILT, None
        try:
            with tempfile.TemporaryDirectory(prefix="slipway-build-") as work:
                self._build(work)
        except Exception as failure:  # every failure is one line, never a traceback
            error = _reason(failure)
            code = EXIT_FAILED
            self.report.failure(error)
        self.report.durations["total"] = time.monotonic() - started
        print(json.dumps(self.result(code, error), sort_keys=True), file=self.report.out, flush=True)
        return code

    def result(self, code: int, error: str | None) -> dict[str, object]:
        return {
            "result": "built" if code == EXIT_BUILT else "failed",
            "error": error,
            "kind": self.kind,
            "runtime": {"name": self.offer.name, "version": self.offer.version} if self.offer else None,
            "source_sha256": self.source_sha256,
            "slug_size": self.slug_size,
            "slug_sha256": self.slug_sha256,
            "durations": {name: round(seconds, 3) for name, seconds in self.report.durations.items()},
        }

    # The flow -----------------------------------------------------------------------------------

    def _build(self, work: str) -> None:
        report = self.report
        app = os.path.join(work, "app")
        cache = self.args.cache or os.path.join(work, "cache")
        os.makedirs(cache, mode=0o755, exist_ok=True)
        with report.phase("unpack"):
            self.source_sha256 = sha256_of(self.args.source)
            try:
                entries, size = unpack(Path(self.args.source), Path(app), self.args.max_unpacked_bytes)
            except UnsafeArchive as error:
                raise BuildFailed(f"refusing the source: {error}") from None
            if os.path.lexists(os.path.join(app, SLIPWAY_DIR)):
                raise BuildFailed(f"the source holds {SLIPWAY_DIR}/, which the build writes; remove it from the app")
        with report.phase("detect"):
            root_files = {name for name in os.listdir(app) if os.path.isfile(os.path.join(app, name))}
            self.kind = detect_kind(root_files)
            build_command = self._build_command(app, root_files)
            if self.kind != PROCFILE_KIND:
                self.offer = self._choose_runtime(app, root_files)
        report.step(
            {PYTHON: "Python app detected", NODE: "Node.js app detected"}.get(
                self.kind, "Procfile app detected: no dependencies to install, runs as is"
            )
        )
        report.detail(f"source: {entries} entries, {size} bytes, sha256 {self.source_sha256[:12]}")
        if self.runtime_step:
            report.step(self.runtime_step)
        tools: dict[str, str] = {}
        dependencies = 0
        path: list[str] = []
        pythonpath: list[str] = []
        if self.kind == PYTHON:
            assert self.offer is not None
            path, pythonpath = [f"{PYTHON_TARGET}/bin"], [PYTHON_TARGET]
            with report.phase("install"):
                dependencies, tools = self._install_python(app, cache, root_files)
        elif self.kind == NODE:
            path = [NODE_BIN]
            with report.phase("install"):
                dependencies, tools = self._install_node(app, cache)
        runtime = Runtime(self.offer.name, self.offer.version) if self.offer else None
        draft = build_manifest_from_data(
            manifest_data(
                kind=self.kind,
                runtime=runtime,
                path=path,
                pythonpath=pythonpath,
                source_sha256=self.source_sha256,
                built_at=utc_now(),
                extra={"tools": tools, "dependencies": dependencies, "build_command": build_command},
            )
        )
        if build_command:
            with report.phase("build_command"):
                self._run_build_command(app, build_command, draft)
        if self.kind == NODE:
            with report.phase("prune"):
                self._prune_node(app, cache)
        if self.kind == PYTHON:
            with report.phase("compile"):
                self._compile_python(app)
        with report.phase("slug"):
            manifest = dict(draft.raw, built_at=utc_now())
            os.makedirs(os.path.join(app, SLIPWAY_DIR), mode=0o755, exist_ok=True)
            with open(os.path.join(app, BUILD_MANIFEST), "w", encoding="utf-8") as handle:
                handle.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            self.slug_size = write_slug(app, self.args.output, self.args.max_unpacked_bytes)
            self.slug_sha256 = sha256_of(self.args.output)
        report.step(f"Slug written: {self.args.output} ({_megabytes(self.slug_size)})")

    def _build_command(self, app: str, root_files: set[str]) -> str | None:
        if PROCFILE not in root_files:
            return None
        try:
            return parse_procfile(read_small(os.path.join(app, PROCFILE), PROCFILE)).get(BUILD)
        except ProcfileError as error:
            raise BuildFailed(str(error)) from None

    def _choose_runtime(self, app: str, root_files: set[str]) -> Offer:
        offers = load_runtimes(self.args.runtimes)
        if self.kind == PYTHON:
            files = {
                name: read_small(os.path.join(app, name), name)
                for name in (PYTHON_VERSION_FILE, RUNTIME_TXT)
                if name in root_files
            }
            request = python_request(files)
        else:
            request = node_request(read_small(os.path.join(app, PACKAGE_JSON), PACKAGE_JSON))
        offer = choose(request, offers)
        how = f"{request.text} requested in {request.where}" if request.where else "the newest offered"
        self.runtime_step = f"Installing {offer.name} {offer.line} ({offer.version}; {how})"
        return offer

    def _tool_environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The build's environment for installers: the runtime's commands first on PATH."""
        assert self.offer is not None
        environment = {key: value for key, value in self.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
        environment["PATH"] = ":".join([self.offer.bin, environment.get("PATH") or "/usr/local/bin:/usr/bin:/bin"])
        environment.update(extra or {})
        return environment

    def _install_python(self, app: str, cache: str, root_files: set[str]) -> tuple[int, dict[str, str]]:
        assert self.offer is not None
        python = os.path.join(self.offer.bin, "python")
        environment = self._tool_environment({"PIP_ROOT_USER_ACTION": "ignore", "PIP_NO_INPUT": "1"})
        version = subprocess.run(
            [python, "-m", "pip", "--version"], env=environment, capture_output=True, text=True, check=False
        )
        if version.returncode != 0:
            raise BuildFailed(f"{python} -m pip does not run ({version.stdout}{version.stderr}".strip() + ")")
        pip_version = version.stdout.split()[1]
        what = ["-r", REQUIREMENTS] if REQUIREMENTS in root_files else ["."]
        shown = "pip install " + " ".join(what)
        target = os.path.join(app, PYTHON_TARGET)
        # The same requirements.txt on the same runtime and pip installs the same packages:
        # reuse them (pip's own cache only helps where the index's answers may be cached).
        # `pip install .` installs the app itself too, so only requirements.txt is keyed.
        key = None
        if REQUIREMENTS in root_files:
            with open(os.path.join(app, REQUIREMENTS), "rb") as handle:
                key = packages_key(self.offer.version, pip_version, handle.read())
            if restore_packages(cache, key, target):
                self.report.step(f"Using the packages installed for the same {REQUIREMENTS} on {self.offer}")
                return _count_dist_info(target), {"pip": pip_version}
        self.report.step(f"Installing dependencies with pip {pip_version} ({shown})")
        ran = run_streaming(
            [
                python,
                "-m",
                "pip",
                "install",
                "--target",
                target,
                "--cache-dir",
                os.path.join(cache, "pip"),
                "--disable-pip-version-check",
                "--progress-bar",
                "off",
                "--no-compile",
                "--no-warn-script-location",
                *what,
            ],
            app,
            environment,
            self.report,
            INSTALL_TIMEOUT_SECONDS,
        )
        if ran.code != 0:
            raise BuildFailed(f"{shown} failed: {tool_error(ran.tail, 'ERROR:')}" + _timed_out(ran))
        rewrite_shebangs(os.path.join(target, "bin"), self.offer.line)
        installed = _count_dist_info(target)
        self.report.detail(f"{installed} packages installed into {PYTHON_TARGET}")
        if key is not None:
            save_packages(cache, key, target)
        return installed, {"pip": pip_version}

    def _install_node(self, app: str, cache: str) -> tuple[int, dict[str, str]]:
        assert self.offer is not None
        npm = os.path.join(self.offer.bin, "npm")
        environment = self._tool_environment({"npm_config_update_notifier": "false", "npm_config_fund": "false"})
        version = subprocess.run([npm, "--version"], env=environment, capture_output=True, text=True, check=False)
        if version.returncode != 0:
            raise BuildFailed(f"{npm} does not run ({(version.stdout + version.stderr).strip()})")
        npm_version = version.stdout.strip()
        self.report.step(f"Installing dependencies with npm {npm_version} (npm ci)")
        ran = run_streaming(
            [npm, "ci", "--cache", os.path.join(cache, "npm"), "--prefer-offline", "--no-audit", "--no-fund"],
            app,
            environment,
            self.report,
            INSTALL_TIMEOUT_SECONDS,
        )
        if ran.code != 0:
            raise BuildFailed(f"npm ci failed: {_npm_error(ran.tail)}" + _timed_out(ran))
        return _count_node_packages(app), {"npm": npm_version}

    def _prune_node(self, app: str, cache: str) -> None:
        """Drop devDependencies once the build command (which may need them) has run."""
        try:
            with open(os.path.join(app, PACKAGE_JSON), encoding="utf-8") as handle:
                development = json.load(handle).get("devDependencies")
        except (OSError, ValueError, AttributeError):
            development = None
        if not development:
            return
        assert self.offer is not None
        self.report.step("Pruning devDependencies (npm prune --omit=dev)")
        ran = run_streaming(
            [
                os.path.join(self.offer.bin, "npm"),
                "prune",
                "--omit=dev",
                "--cache",
                os.path.join(cache, "npm"),
                "--no-audit",
                "--no-fund",
            ],
            app,
            self._tool_environment({"npm_config_update_notifier": "false"}),
            self.report,
            INSTALL_TIMEOUT_SECONDS,
        )
        if ran.code != 0:
            raise BuildFailed(f"npm prune failed: {_npm_error(ran.tail)}")

    def _compile_python(self, app: str) -> None:
        """Byte-compile the app and its packages once, for every process of every instance.

        Unpacking gives files new modification times, which would make ordinary .pyc files
        stale; unchecked-hash .pyc files are used as they are (a slug never changes).
        """
        assert self.offer is not None
        subprocess.run(
            [
                os.path.join(self.offer.bin, "python"),
                "-m",
                "compileall",
                "-qq",
                "-j",
                "0",
                "--invalidation-mode",
                "unchecked-hash",
                "-x",
                r"/(node_modules|\.git)/",
                app,
            ],
            env=self._tool_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=INSTALL_TIMEOUT_SECONDS,
            check=False,  # a file that does not compile fails where it is imported, as it would unbuilt
        )

    def _run_build_command(self, app: str, command: str, manifest: BuildManifest) -> None:
        """The Procfile's ``build:`` line, in the app directory, with the runtime and the installed
        dependencies on PATH and PYTHONPATH as every process will have them."""
        self.report.step(f"Running build command: {command}")
        environment = {key: value for key, value in self.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
        environment.update(process_environment(app, manifest, self.offer.bin if self.offer else None))
        ran = run_streaming(["/bin/bash", "-c", command], app, environment, self.report, BUILD_COMMAND_TIMEOUT_SECONDS)
        if ran.code != 0:
            raise BuildFailed(f"command {command!r} exited {ran.code}" + _timed_out(ran))


def write_slug(app: str, output: str, max_unpacked_bytes: int) -> int:
    """Tar and gzip ``app`` into ``output`` under the release archive rules; its size in bytes.

    Every entry is admitted by :class:`ArchiveRules` as the agent will admit it, so a slug
    the agent would refuse (an absolute symlink an installer made, say) fails the build.
    """
    rules = ArchiveRules(max_unpacked_bytes)
    temporary = f"{output}.partial-{os.getpid()}"
    try:
        with tarfile.open(temporary, "w:gz", compresslevel=SLUG_COMPRESSION) as tar:
            for relative in _walk(app):
                info = tar.gettarinfo(os.path.join(app, relative), arcname=relative)
                if info is None:
                    raise UnsafeArchive(f"{relative!r} is a socket or device")
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                rules.admit(info.name, info.type, info.size if info.isreg() else 0, info.mode, info.linkname)
                if info.isreg():
                    with open(os.path.join(app, relative), "rb") as handle:
                        tar.addfile(info, handle)
                else:
                    tar.addfile(info)
        rules.finish()
        os.replace(temporary, output)
    except UnsafeArchive as error:
        raise BuildFailed(f"the built app cannot be a slug: {error}") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return os.path.getsize(output)


def _walk(root: str) -> Iterator[str]:
    """Every path under ``root``, relative, parents before children, in a stable order."""
    for directory, subdirectories, files in os.walk(root):
        subdirectories.sort()
        relative_dir = os.path.relpath(directory, root)
        for name in sorted(subdirectories + files):
            yield name if relative_dir == "." else f"{relative_dir}/{name}"


PACKAGES_CACHE = "python-packages"
KEEP_PACKAGE_SETS = 3


def packages_key(runtime_version: str, pip_version: str, requirements: bytes) -> str:
    """What a set of installed packages depends on: the runtime, pip, the requirements' bytes."""
    digest = hashlib.sha256(f"{runtime_version}\0{pip_version}\0".encode() + requirements)
    return digest.hexdigest()[:32]


def restore_packages(cache: str, key: str, target: str) -> bool:
    """Copy the packages saved under ``key`` to ``target``; False if there are none."""
    saved = os.path.join(cache, PACKAGES_CACHE, key)
    if not os.path.isdir(saved):
        return False
    shutil.copytree(saved, target, symlinks=True)
    os.utime(saved)  # most recently used: pruned last
    return True


def save_packages(cache: str, key: str, target: str) -> None:
    """Keep a copy of ``target`` under ``key`` (written aside, then renamed), and only the newest few."""
    root = os.path.join(cache, PACKAGES_CACHE)
    os.makedirs(root, mode=0o755, exist_ok=True)
    final = os.path.join(root, key)
    if os.path.isdir(target) and not os.path.exists(final):
        partial = f"{final}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(target, partial, symlinks=True)
        os.replace(partial, final)
    sets = sorted(
        (entry for entry in os.scandir(root) if entry.is_dir() and "." not in entry.name),
        key=lambda entry: entry.stat().st_mtime,
        reverse=True,
    )
    for stale in sets[KEEP_PACKAGE_SETS:]:
        shutil.rmtree(stale.path, ignore_errors=True)


def _count_dist_info(target: str) -> int:
    return len([name for name in os.listdir(target) if name.endswith(".dist-info")]) if os.path.isdir(target) else 0


def _count_node_packages(app: str) -> int:
    try:
        with open(os.path.join(app, PACKAGE_LOCK), encoding="utf-8") as handle:
            packages = json.load(handle).get("packages", {})
    except (OSError, ValueError, AttributeError):
        return 0
    return sum(1 for name in packages if name.startswith("node_modules/"))


def _npm_error(tail: Sequence[str]) -> str:
    # npm 9 marks its errors "npm ERR!", npm 10 "npm error".
    marker = "npm error" if any(line.startswith("npm error") for line in tail) else "npm ERR!"
    return tool_error(tail, marker, first=True)


def _timed_out(ran: Ran) -> str:
    return " (stopped: it ran past its time limit)" if ran.timed_out else ""


def _megabytes(size: int | None) -> str:
    return f"{(size or 0) / 1024 / 1024:.1f} MB"


def _reason(error: BaseException) -> str:
    if isinstance(error, (BuildFailed, SelectError, RuntimesError, ValueError, LookupError)):
        return str(error)
    if isinstance(error, OSError):
        return f"{error.strerror or error}{f': {error.filename}' if error.filename else ''}"
    return f"{type(error).__name__}: {error}"


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of ``build``; returns the process exit code."""
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as error:
        print(f"build: {error}", file=sys.stderr)
        return EXIT_USAGE
    return Build(args, Report(), os.environ if environ is None else environ).run()
