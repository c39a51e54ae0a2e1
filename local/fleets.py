"""Real fleets on this machine: every instance of every fleet a container, every target group an HAProxy.

:class:`Fleets` keeps what runs in step with what moto holds, checking every quarter of a
second (and answering moto's hooked requests in between):

* each instance of a fleet's Auto Scaling group is a container (:mod:`local.instance`)
  booted in its own network namespace on the platform's bridge (:mod:`local.network`),
  its root an overlay of the cached image, ``image/`` copied to where user data puts it,
  and its own user data run as cloud-init would (:mod:`local.boot`). An instance that
  leaves its group (terminated, scaled in) keeps running until the load balancer has
  drained it, then its container stops and its namespace goes;
* each target registered in a fleet's target group is a server of the fleet's HAProxy
  (:mod:`local.haproxy`), added down and checked as the target group says; a
  deregistered one drains (no new requests) until it has no request in flight or the
  deregistration delay has passed, then it is removed;
* ``DescribeTargetHealth`` is answered from those checks (:meth:`Fleets.target_health`);
* ``SendCommand`` runs the document's script in each target instance once its user data
  has ended (:meth:`Fleets.admit`, :meth:`Fleets.run`), as the SSM agent would, with the
  environment that stands in for the instance role (``local.boot.instance_environment``).

Everything the platform starts is stopped by :meth:`Fleets.stop`: containers, mounts,
namespaces, load balancers.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from local import cwagent, hooks
from local.aws import LogStream
from local.boot import BOOT_COMMAND, IMAGE_ON_INSTANCE, USER_DATA_LOG, USER_DATA_PATH, adapt_user_data
from local.haproxy import (
    DRAINING,
    REGISTERING,
    Balancer,
    LoadBalancer,
    Tracked,
    add_server,
    drain_server,
    park_server,
    reuse_server,
    target_health,
)
from local.instance import IMAGE, Instance, boot, mount_root, shutdown, unmount_root
from local.network import Bridge
from local.ssm import ORCHESTRATION, InvalidInstanceId, Step, command_status, outcome, shell_steps, undeliverable

log = logging.getLogger("local")

RECONCILE_SECONDS = 0.25
BOOT_TIMEOUT = 300  # the user data: provisioning and the first deploy
UNUSED = ("unused", "Target.NotRegistered", "Target is not registered to the target group")


@dataclass(frozen=True)
class FleetSpec:
    """One fleet as the stack made it: its group, its target group, its load balancer's settings."""

    app: str
    group: str
    target_group: str
    port: int  # the target group's port: where targets serve unless registered with another
    balancer: Balancer


@dataclass
class Box:
    """One instance: its slot on the bridge, its files, its container once booted."""

    instance_id: str
    app: str
    slot: int
    namespace: str
    address: str
    workdir: Path
    instance: Instance | None = None
    process: subprocess.Popen[bytes] | None = None
    boot_exit: int | None = None
    problem: str | None = None
    stopping: bool = False
    ready: threading.Event = field(default_factory=threading.Event)  # user data ended: the SSM agent is online
    stopped: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def online(self) -> bool:
        return self.ready.is_set() and self.instance is not None and not self.stopping and self.instance.alive()


@dataclass
class Fleet:
    spec: FleetSpec
    balancer: LoadBalancer
    boxes: dict[str, Box] = field(default_factory=dict)
    servers: dict[str, Tracked] = field(default_factory=dict)
    # Drained servers kept in maintenance (local.haproxy.park_server), by (instance, address, port).
    parked: dict[tuple[str, str, int], str] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    serial: Any = field(default_factory=lambda: itertools.count(1))


class Fleets:
    """Every fleet of one local platform, kept in step with moto by one thread."""

    def __init__(
        self,
        *,
        bridge: Bridge,
        specs: Sequence[FleetSpec],
        workdir: Path,
        environment: Mapping[str, str],
        user_data: Callable[[str], str],
        logs: Any = None,
    ) -> None:
        self.bridge = bridge
        self.logs = logs  # a CloudWatch Logs client: where command output streams when asked
        self.workdir = workdir
        self.environment = dict(environment)
        self.user_data = user_data
        self._specs = list(specs)
        self._fleets: dict[str, Fleet] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # Lifecycle ----------------------------------------------------------------------------------

    def start(self) -> Fleets:
        """Start each fleet's load balancer, then keep the fleets in step with moto."""
        for spec in self._specs:
            directory = self.workdir / "balancers"
            directory.mkdir(parents=True, exist_ok=True)
            self._fleets[spec.app] = Fleet(spec, LoadBalancer.start(spec.balancer, directory))
        self._thread = threading.Thread(target=self._loop, name="local-fleets", daemon=True)
        self._thread.start()
        return self

    def urls(self) -> dict[str, str]:
        """Each app's URL: its load balancer's frontend."""
        return {app: fleet.balancer.url for app, fleet in sorted(self._fleets.items())}

    def wait_ready(self, timeout: float) -> list[str]:
        """Wait until every instance has run its user data; the instances whose boot failed."""
        deadline = time.monotonic() + timeout
        while True:
            self.reconcile()
            boxes = [box for fleet in self._fleets.values() for box in list(fleet.boxes.values())]
            members = sum(len(hooks.group_members(f.spec.group)) for f in self._fleets.values())
            if len(boxes) >= members and all(box.ready.is_set() for box in boxes):
                return sorted(b.instance_id for b in boxes if b.problem or b.boot_exit)
            if time.monotonic() > deadline:
                raise TimeoutError(f"instances still booting after {timeout:.0f}s")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop every container, remove its mount and namespace, stop every load balancer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        boxes = [box for fleet in self._fleets.values() for box in list(fleet.boxes.values())]
        stopping = [threading.Thread(target=self._stop_box, args=(box,)) for box in boxes]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join(timeout=90)
        for fleet in self._fleets.values():
            fleet.balancer.stop()

    def processes(self) -> list[int]:
        """The ids of the processes the fleets run now (containers and load balancers), for checks."""
        found = [fleet.balancer.process.pid for fleet in self._fleets.values()]
        for fleet in self._fleets.values():
            found += [b.process.pid for b in list(fleet.boxes.values()) if b.process is not None]
        return found

    # Keeping in step --------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(RECONCILE_SECONDS):
            self.reconcile()

    def reconcile(self) -> None:
        for fleet in list(self._fleets.values()):
            try:
                self._reconcile(fleet)
            except Exception as error:  # keep going: the next round tries again
                log.warning(
                    "%s: could not bring the fleet in step: %s: %s", fleet.spec.app, type(error).__name__, error
                )

    def _reconcile(self, fleet: Fleet) -> None:
        members = hooks.group_members(fleet.spec.group)
        registered = hooks.registered_targets(fleet.spec.target_group)
        with fleet.lock:
            if self._stop.is_set():
                return
            for instance_id in members:
                if instance_id not in fleet.boxes:
                    fleet.boxes[instance_id] = self._launch(fleet, instance_id)
            self._sync_servers(fleet, registered)
            for instance_id, box in list(fleet.boxes.items()):
                if instance_id in members or box.stopping:
                    continue
                if any(t.instance == instance_id for t in fleet.servers.values()):
                    continue  # still draining: the container serves what is in flight
                box.stopping = True
                threading.Thread(target=self._retire, args=(fleet, box), daemon=True).start()

    def _sync_servers(self, fleet: Fleet, registered: Mapping[str, int]) -> None:
        balancer = fleet.spec.balancer
        read_at = time.monotonic()
        stats = fleet.balancer.stats()
        active = {t.instance: name for name, t in fleet.servers.items() if t.draining_since is None}
        for instance_id, port in registered.items():
            box = fleet.boxes.get(instance_id)
            if box is None:
                continue
            name = active.get(instance_id)
            if name is not None and fleet.servers[name].port != port:
                self._drain(fleet, name)
                name = None
            if name is None:
                name = fleet.parked.pop((instance_id, box.address, port), None)
                if name is not None:
                    fleet.balancer.commands(reuse_server(balancer, name))
                else:
                    name = f"{instance_id}.{next(fleet.serial)}"
                    fleet.balancer.commands(add_server(balancer, name, box.address, port))
                fleet.servers[name] = Tracked(name, instance_id, box.address, port, registered_at=time.monotonic())
                log.info("%s: target %s registered (%s:%d)", fleet.spec.app, instance_id, box.address, port)
        for instance_id, name in active.items():
            if instance_id not in registered:
                self._drain(fleet, name)
        for name, tracked in list(fleet.servers.items()):
            stat = stats.get(name)
            if tracked.draining_since is None:
                fleet.servers[name] = tracked.observe(stat, read_at)
                continue
            if tracked.draining_since >= read_at:
                continue  # drained after these stats were read: judge it on the next round
            idle = stat is None or stat.sessions == 0
            over = read_at - tracked.draining_since >= balancer.deregistration_delay_seconds
            if idle or over:
                if stat is not None:
                    fleet.balancer.commands(park_server(balancer, name, cut=not idle))
                    fleet.parked[(tracked.instance, tracked.address, tracked.port)] = name
                del fleet.servers[name]
                log.info(
                    "%s: target %s drained%s", fleet.spec.app, tracked.instance, "" if idle else " (delay over: cut)"
                )

    def _drain(self, fleet: Fleet, name: str) -> None:
        fleet.balancer.commands(drain_server(fleet.spec.balancer, name))
        fleet.servers[name] = replace(fleet.servers[name], draining_since=time.monotonic())

    # Instances --------------------------------------------------------------------------------

    def _launch(self, fleet: Fleet, instance_id: str) -> Box:
        slot, namespace, address = self.bridge.add_instance()
        box = Box(instance_id, fleet.spec.app, slot, namespace, address, self.workdir / "instances" / instance_id)
        box.thread = threading.Thread(target=self._boot, args=(box,), name=f"boot-{instance_id}", daemon=True)
        box.thread.start()
        return box

    def _boot(self, box: Box) -> None:
        started = time.monotonic()
        try:
            script = adapt_user_data(self.user_data(box.instance_id))
            box.workdir.mkdir(parents=True, exist_ok=True)
            root = mount_root(box.workdir)
            shutil.copytree(IMAGE, root / IMAGE_ON_INSTANCE.lstrip("/"), ignore=shutil.ignore_patterns("__pycache__"))
            # The host name is the instance id (nspawn would take the image's): apps and logs can tell instances apart.
            (root / "etc" / "hostname").write_text(box.instance_id + "\n")
            user_data = root / USER_DATA_PATH.lstrip("/")
            user_data.parent.mkdir(parents=True, exist_ok=True)
            user_data.write_text(script)
            if box.stopping:
                return

            def keep(process: subprocess.Popen[bytes]) -> None:
                box.process = process

            box.instance = boot(root, box.instance_id, box.workdir / "console.log", box.namespace, started=keep)
            if box.stopping:
                return
            result = box.instance.run(BOOT_COMMAND, env=self.environment, check=False, timeout=BOOT_TIMEOUT)
            box.boot_exit = result.returncode
            if result.returncode == 0 and self.logs is not None:
                # The CloudWatch agent's part: ship the app's log file (local.cwagent).
                instance = box.instance
                gone = lambda: box.stopping or not instance.alive()  # noqa: E731
                cwagent.ship(instance.directory, box.instance_id, self.logs, gone)
            if result.returncode == 0:
                log.info(
                    "%s: instance %s booted at %s in %.1fs",
                    box.app,
                    box.instance_id,
                    box.address,
                    time.monotonic() - started,
                )
            else:
                tail = " | ".join(box.instance.path(USER_DATA_LOG).read_text(errors="replace").splitlines()[-3:])
                log.warning(
                    "%s: instance %s: its user data exited %d: %s (%s)",
                    box.app,
                    box.instance_id,
                    result.returncode,
                    tail,
                    box.instance.path(USER_DATA_LOG),
                )
        except Exception as error:
            if not box.stopping:
                box.problem = f"{type(error).__name__}: {error}"
                log.warning("%s: instance %s did not boot: %s", box.app, box.instance_id, box.problem)
        finally:
            box.ready.set()

    def _stop_box(self, box: Box) -> None:
        """Shut the container down (also while it boots), remove its files and its namespace."""
        box.stopping = True
        if box.process is not None:
            shutdown(box.process)
        if box.thread is not None:
            box.thread.join(timeout=BOOT_TIMEOUT)
        if box.process is not None:
            shutdown(box.process)  # one that started while the first shutdown ran
        unmount_root(box.workdir)
        self.bridge.remove_instance(box.slot)
        box.stopped.set()

    def _retire(self, fleet: Fleet, box: Box) -> None:
        self._stop_box(box)
        with fleet.lock:
            if fleet.boxes.get(box.instance_id) is box:
                del fleet.boxes[box.instance_id]
        log.info("%s: instance %s stopped", fleet.spec.app, box.instance_id)

    def _box(self, instance_id: str) -> Box | None:
        for fleet in self._fleets.values():
            box = fleet.boxes.get(instance_id)
            if box is not None:
                return box
        return None

    # SSM Run Command (hooks.commands_run_on_instances) -----------------------------------------

    def admit(self, instance_ids: Sequence[str], content: Mapping[str, Any], parameters: Mapping[str, Any]) -> Any:
        """The command's steps; refused for an instance no fleet has, or parameters the document refuses."""
        known = {i for fleet in self._fleets.values() for i in hooks.group_members(fleet.spec.group)}
        known |= {i for fleet in self._fleets.values() for i in list(fleet.boxes)}
        unknown = sorted(set(instance_ids) - known)
        if unknown:
            raise InvalidInstanceId(f"Instances [{', '.join(unknown)}] not in a valid state for account")
        return shell_steps(content, parameters)

    def run(self, command: Any, steps: list[Step]) -> None:
        """Deliver the command to each instance (in the background); its invocations show the progress."""
        for invocation in command.invocations:
            invocation.update(
                Status="Pending",
                StatusDetails="Pending",
                ResponseCode=-1,
                PluginName=steps[0].name,
                ExecutionStartDateTime="",
                ExecutionEndDateTime="",
                ExecutionElapsedTime="",
                StandardOutputContent="",
                StandardErrorContent="",
            )
        command.status, command.status_details = "Pending", "Pending"
        command.completed_count = 0
        for invocation in command.invocations:
            threading.Thread(target=self._deliver, args=(command, invocation, steps), daemon=True).start()

    def _deliver(self, command: Any, invocation: dict[str, Any], steps: list[Step]) -> None:
        instance_id = invocation["InstanceId"]
        deadline = time.monotonic() + command.timeout_seconds
        box = self._box(instance_id)
        while not self._stop.is_set() and time.monotonic() < deadline:
            box = self._box(instance_id)
            if box is not None and (box.ready.is_set() or box.stopping):
                break
            time.sleep(0.1)
        if box is None or not box.online or box.instance is None:
            reason = "DeliveryTimedOut" if box is not None and not box.ready.is_set() else "Undeliverable"
            invocation.update(undeliverable(reason))
        else:
            invocation.update(Status="InProgress", StatusDetails="InProgress", ExecutionStartDateTime=_now())
            command.status, command.status_details = "InProgress", "InProgress"
            started = time.monotonic()
            invocation.update(self._execute(box.instance, command, instance_id, steps))
            invocation.update(ExecutionEndDateTime=_now(), ExecutionElapsedTime=f"PT{time.monotonic() - started:.3f}S")
        statuses = [i["Status"] for i in command.invocations]
        command.status, command.status_details = command_status(statuses)
        command.completed_count = sum(1 for s in statuses if s not in ("Pending", "InProgress"))
        command.error_count = sum(1 for s in statuses if s in ("Failed", "TimedOut"))

    def _output_group(self, command: Any) -> str | None:
        """The log group the command's output streams to, if its sender asked for one."""
        config = getattr(command, "cloudwatch_output", None) or {}
        if self.logs is None or not config.get("CloudWatchOutputEnabled"):
            return None
        return str(config.get("CloudWatchLogGroupName") or f"/aws/ssm/{command.document_name}")

    def _streamed(
        self, instance: Instance, argv: list[str], group: str, prefix: str
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``instance``, its stdout and stderr streaming line by line to
        ``<prefix>/stdout`` and ``<prefix>/stderr`` in ``group``, as the SSM agent streams them."""
        process = instance.popen(argv, self.environment)
        collected: dict[str, list[str]] = {"stdout": [], "stderr": []}

        def pump(name: str, source: Any) -> None:
            log = LogStream(self.logs, group, f"{prefix}/{name}")
            for line in source:
                collected[name].append(line)
                log.line(line.rstrip("\n"))
            log.flush()

        pumps = [
            threading.Thread(target=pump, args=(name, stream), daemon=True)
            for name, stream in (("stdout", process.stdout), ("stderr", process.stderr))
        ]
        for thread in pumps:
            thread.start()
        code = process.wait()
        for thread in pumps:
            thread.join(timeout=30)
        return subprocess.CompletedProcess(argv, code, "".join(collected["stdout"]), "".join(collected["stderr"]))

    def _execute(self, instance: Instance, command: Any, instance_id: str, steps: list[Step]) -> dict[str, Any]:
        command_id = command.command_id
        stdout, stderr, code = "", "", 0
        try:
            for step in steps:
                directory = ORCHESTRATION.format(instance=instance_id, command=command_id, step=step.name)
                script = instance.path(f"{directory}/_script.sh")
                script.parent.mkdir(parents=True, exist_ok=True)
                script.write_text(step.script)
                argv = ["timeout", "--kill-after=10", str(step.timeout_seconds), "bash", f"{directory}/_script.sh"]
                output = self._output_group(command)
                if output is None:
                    result = instance.run(argv, env=self.environment, check=False, timeout=step.timeout_seconds + 30)
                else:
                    result = self._streamed(instance, argv, output, f"{command_id}/{instance_id}/{step.name}")
                (script.parent / "stdout").write_text(result.stdout)
                (script.parent / "stderr").write_text(result.stderr)
                stdout, stderr, code = stdout + result.stdout, stderr + result.stderr, result.returncode
                if code != 0:
                    break
        except (OSError, subprocess.SubprocessError) as error:
            stderr, code = stderr + f"local SSM agent: {type(error).__name__}: {error}\n", 1
        return outcome(code, stdout, stderr)

    # ELB target health (hooks.target_health_from_load_balancer) ----------------------------------

    def target_health(
        self, target_group_arn: str, registered: Mapping[str, int], targets: Sequence[Mapping[str, Any]]
    ) -> list[tuple[str, int, str, str | None, str | None]] | None:
        """``DescribeTargetHealth`` for a fleet's target group, from its HAProxy; ``None`` for another."""
        fleet = next((f for f in self._fleets.values() if f.spec.target_group == target_group_arn), None)
        if fleet is None:
            return None
        check = fleet.spec.balancer.check
        with fleet.lock:
            now = time.monotonic()
            try:
                stats = fleet.balancer.stats()
            except OSError:
                stats = {}
            for name, seen in list(fleet.servers.items()):
                if seen.draining_since is None:
                    fleet.servers[name] = seen.observe(stats.get(name), now)
            active = {t.instance: t for t in fleet.servers.values() if t.draining_since is None}
            draining = {t.instance: t for t in fleet.servers.values() if t.draining_since is not None}
            asked = {str(t["Id"]): int(t.get("Port") or 0) for t in targets}
            ids = list(asked) or [*registered, *(i for i in draining if i not in registered)]
            answer = []
            for instance_id in ids:
                known = active.get(instance_id) or draining.get(instance_id)
                port = registered.get(instance_id) or asked.get(instance_id) or (known.port if known else 0)
                tracked = active.get(instance_id)
                if instance_id in registered:
                    state = (
                        REGISTERING
                        if tracked is None
                        else target_health(tracked, stats.get(tracked.server), check, now)
                    )
                elif instance_id in draining:
                    state = DRAINING
                else:
                    state = UNUSED
                answer.append((instance_id, port or fleet.spec.port, *state))
            return answer


def _now() -> str:
    return datetime.now(UTC).isoformat()
