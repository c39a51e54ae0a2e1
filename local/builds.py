"""CodeBuild on this machine: every build the release workflow starts runs the image's build
program in a builder container, as the stack's CodeBuild project runs it on AWS.

moto keeps CodeBuild's projects and builds but runs nothing (``BatchGetBuilds`` reports every
build a success at once). :func:`codebuild_runs_builds` hooks three calls:

* ``StartBuild`` records the build as moto does, with the request's variables and cache
  (which moto drops), honours ``idempotencyToken`` as CodeBuild does, and hands the build to
  :class:`LocalBuilds`;
* ``BatchGetBuilds`` answers what the build really did: its status, phases and log stream;
* ``StopBuild`` stops it.

A build follows the project's buildspec (``constructs.builder.buildspec``) with the same
inputs: it fetches the source named by ``SLIPWAY_SOURCE`` from the local S3, runs
``/home/deploy/bin/build`` in the builder container (the cached Debian root filesystem on an
overlay, provisioned by ``provision.sh --builder``; the host's network, so pip and npm reach
their registries), keeps the app's dependency cache, writes the slug to ``SLIPWAY_SLUG``
and its log to the project's log group, one event per line.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

from local.aws import LogStream
from local.instance import HOST_CERTIFICATES, IMAGE, missing_prerequisites, mount_root, unmount_root

BUILD_PROGRAM = "/home/deploy/bin/build"
IMAGE_IN_BUILDER = "/opt/slipway/image"
# What systemd-nspawn says on a host without systemd as PID 1 when a container ends: not the build's.
NSPAWN_NOISE = 'Attempted to remove disk file system under "/run/systemd/nspawn/propagate/'
IDEMPOTENCY_SECONDS = 300  # CodeBuild keeps an idempotency token this long
_numbers = itertools.count(1)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Build:
    """One build, as ``BatchGetBuilds`` shows it."""

    id: str
    project: str
    variables: dict[str, str]
    cache: str | None
    log_group: str | None
    started: datetime = field(default_factory=_now)
    status: str = "IN_PROGRESS"
    phase: str = "PROVISIONING"
    ended: datetime | None = None
    failure: str | None = None
    process: subprocess.Popen[str] | None = None

    @property
    def stream(self) -> str:
        """The log stream: CodeBuild names it after the build id's part after the project."""
        return self.id.split(":", 1)[1]

    def view(self, arn_prefix: str) -> dict[str, Any]:
        phases: list[dict[str, Any]] = [{"phaseType": "SUBMITTED", "phaseStatus": "SUCCEEDED"}]
        if self.status != "IN_PROGRESS":
            contexts = [{"statusCode": "COMMAND_EXECUTION_ERROR", "message": self.failure}] if self.failure else []
            phases.append({"phaseType": "BUILD", "phaseStatus": self.status, "contexts": contexts})
        found: dict[str, Any] = {
            "id": self.id,
            "arn": f"{arn_prefix}:build/{self.id}",
            "projectName": self.project,
            "startTime": self.started,
            "currentPhase": "COMPLETED" if self.ended else self.phase,
            "buildStatus": self.status,
            "buildComplete": self.ended is not None,
            "phases": phases,
            "environment": {
                "environmentVariables": [
                    {"name": k, "value": v, "type": "PLAINTEXT"} for k, v in self.variables.items()
                ]
            },
            "logs": {"groupName": self.log_group, "streamName": self.stream} if self.log_group else {},
        }
        if self.ended:
            found["endTime"] = self.ended
        return found


class LocalBuilds:
    """Runs builds in one builder container, one at a time, with ``clients`` (boto3, the local
    AWS) for the source, the slug and the log; its files under ``workdir``."""

    def __init__(self, clients: Any, workdir: Path) -> None:
        self.clients, self.workdir = clients, workdir
        self.builds: dict[str, Build] = {}
        self._tokens: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()  # the builds' table
        self._running = threading.Lock()  # one build at a time in the builder
        self._root: Path | None = None
        self._environment: dict[str, str] = {}

    # The three hooked calls ---------------------------------------------------------------------

    def start(self, project: Mapping[str, Any], request: Mapping[str, Any]) -> Build:
        token = request.get("idempotencyToken")
        with self._lock:
            if token and token in self._tokens and time.monotonic() - self._tokens[token][0] < IDEMPOTENCY_SECONDS:
                return self.builds[self._tokens[token][1]]
            variables = {v["name"]: v["value"] for v in project["environment"].get("environmentVariables", [])}
            variables.update({v["name"]: v["value"] for v in request.get("environmentVariablesOverride") or []})
            logs = (project.get("logsConfig") or {}).get("cloudWatchLogs") or {}
            build = Build(
                id=f"{project['name']}:{uuid.uuid4()}",
                project=project["name"],
                variables=variables,
                cache=(request.get("cacheOverride") or {}).get("location"),
                log_group=logs.get("groupName"),
            )
            self.builds[build.id] = build
            if token:
                self._tokens[token] = (time.monotonic(), build.id)
        threading.Thread(target=self._run, args=(build,), name=f"build-{build.stream}", daemon=True).start()
        return build

    def get(self, ids: list[str]) -> list[Build]:
        with self._lock:
            return [self.builds[i] for i in ids if i in self.builds]

    def stop(self, build_id: str) -> Build | None:
        with self._lock:
            build = self.builds.get(build_id)
        if build is not None and build.ended is None:
            build.status, build.failure = "STOPPED", "stopped by StopBuild"
            if build.process is not None:
                build.process.kill()
        return build

    # Running one ---------------------------------------------------------------------------------

    def _run(self, build: Build) -> None:
        log = LogStream(self.clients.logs, build.log_group, build.stream)
        work = self.workdir / "builds" / build.stream
        outcome: tuple[str, str | None] | None = None
        try:
            with self._running:
                if build.status == "STOPPED":
                    return
                build.phase = "PROVISIONING"
                root = self._builder(log)
                build.phase = "BUILD"
                work.mkdir(parents=True)
                source, slug = build.variables["SLIPWAY_SOURCE"], build.variables["SLIPWAY_SLUG"]
                log.line(f"Fetching {source}")
                self._s3(source, lambda bucket, key: self.clients.s3.download_file(bucket, key, str(work / "source")))
                code = self._build(build, root, work, self._cache(build), log)
                if code == 0 and build.status == "IN_PROGRESS":
                    build.phase = "UPLOAD_ARTIFACTS"
                    self._s3(slug, lambda bucket, key: self.clients.s3.upload_file(str(work / "slug"), bucket, key))
                    log.line(f"Slug uploaded to {slug}")
                    outcome = ("SUCCEEDED", None)
                elif build.status == "IN_PROGRESS":
                    outcome = ("FAILED", f"Error while executing command: build program. Reason: exit status {code}")
        except Exception as error:  # the builder itself failed: the build did, saying why
            log.line(f"[local builder] {error}")
            outcome = ("FAULT", str(error))
        finally:
            build.ended = _now()
            # The log first: whoever sees the build ended reads its last lines (the build program's reason).
            log.flush()
            if outcome is not None:
                build.status, failure = outcome
                build.failure = failure or build.failure
            shutil.rmtree(work, ignore_errors=True)

    @staticmethod
    def _s3(url: str, act: Callable[[str, str], None]) -> None:
        parts = urlsplit(url)
        if parts.scheme != "s3":
            raise ValueError(f"{url!r} is not an s3:// URL")
        act(parts.netloc, parts.path.lstrip("/"))

    def _cache(self, build: Build) -> Path:
        """The app's dependency cache: CodeBuild keeps it in the bucket; here, a directory per location."""
        name = (build.cache or build.project).replace("/", "_")
        path = self.workdir / "caches" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _build(self, build: Build, root: Path, work: Path, cache: Path, log: LogStream) -> int:
        argv = [
            "systemd-nspawn",
            "--quiet",
            "--register=no",
            "--keep-unit",
            "--resolv-conf=bind-host",
            f"--machine=slipway-build-{os.getpid()}-{next(_numbers)}",
            f"--directory={root}",
            f"--bind={work}:/build",
            f"--bind={cache}:/cache",
            *(f"--setenv={name}={value}" for name, value in self._environment.items()),
            "--",
            BUILD_PROGRAM,
            "--source",
            "/build/source",
            "--output",
            "/build/slug",
            "--cache",
            "/cache",
        ]
        build.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
        )
        assert build.process.stdout is not None
        for line in build.process.stdout:
            if not line.startswith(NSPAWN_NOISE):
                log.line(line.rstrip("\n"))
        return build.process.wait()

    # The builder container ------------------------------------------------------------------------

    def _builder(self, log: LogStream) -> Path:
        """The builder's root, prepared on the first build: an overlay of the cached root
        filesystem, provisioned as a build host, trusting what this machine trusts."""
        if self._root is not None:
            return self._root
        missing = missing_prerequisites()
        if missing:
            raise RuntimeError(f"local builds run in a systemd-nspawn container, which {missing}")
        log.line("[local builder] preparing the builder container (once per platform)")
        root = mount_root(self.workdir / "builder")
        self._root = root
        image = root / IMAGE_IN_BUILDER.lstrip("/")
        shutil.copytree(IMAGE, image, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        extra = sorted(HOST_CERTIFICATES.glob("*.crt")) if HOST_CERTIFICATES.is_dir() else []
        if extra:
            target = root / str(HOST_CERTIFICATES).lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            for certificate in extra:
                shutil.copyfile(certificate, target / certificate.name)
            self._environment["NODE_EXTRA_CA_CERTS"] = "/etc/ssl/certs/ca-certificates.crt"
        script = "update-ca-certificates >/dev/null 2>&1; " if extra else ""
        prepared = subprocess.run(
            [
                "systemd-nspawn",
                "--quiet",
                "--register=no",
                "--keep-unit",
                "--resolv-conf=bind-host",
                f"--machine=slipway-builder-{os.getpid()}",
                f"--directory={root}",
                "--",
                "bash",
                "-c",
                f"{script}bash {IMAGE_IN_BUILDER}/provision.sh --builder",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        for line in prepared.stdout.splitlines():
            log.line(line)
        if prepared.returncode != 0:
            raise RuntimeError(f"provision.sh --builder failed: {prepared.stderr.strip().splitlines()[-1:]}")
        return root

    def close(self) -> None:
        """Stop running builds and take the builder down."""
        for build in list(self.builds.values()):
            self.stop(build.id)
        if self._root is not None:
            unmount_root(self.workdir / "builder")
            self._root = None


@contextmanager
def codebuild_runs_builds(builds: LocalBuilds) -> Iterator[None]:
    """While inside: CodeBuild's StartBuild, BatchGetBuilds and StopBuild go to ``builds``."""
    from moto.codebuild.exceptions import ResourceNotFoundException
    from moto.codebuild.responses import CodeBuildResponse
    from moto.core.responses import ActionResult

    def start_build(self: Any) -> Any:
        name = self._get_param("projectName")
        project = self.codebuild_backend.codebuild_projects.get(name)
        if project is None:
            raise ResourceNotFoundException(f"Project cannot be found: {name}")
        request = {
            key: self._get_param(key) for key in ("environmentVariablesOverride", "cacheOverride", "idempotencyToken")
        }
        build = builds.start(project.project_metadata, request)
        return ActionResult({"build": build.view(_arn_prefix(self))})

    def batch_get_builds(self: Any) -> Any:
        found = builds.get(list(self._get_param("ids")))
        return ActionResult({"builds": [b.view(_arn_prefix(self)) for b in found], "buildsNotFound": []})

    def stop_build(self: Any) -> Any:
        build = builds.stop(self._get_param("id"))
        if build is None:
            raise ResourceNotFoundException(f"Build cannot be found: {self._get_param('id')}")
        return ActionResult({"build": build.view(_arn_prefix(self))})

    with (
        mock.patch.object(CodeBuildResponse, "start_build", start_build),
        mock.patch.object(CodeBuildResponse, "batch_get_builds", batch_get_builds),
        mock.patch.object(CodeBuildResponse, "stop_build", stop_build),
    ):
        yield


def _arn_prefix(response: Any) -> str:
    return f"arn:aws:codebuild:{response.region}:{response.current_account}"
