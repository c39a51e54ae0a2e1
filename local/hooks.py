"""Every place the local platform changes moto, each a small named hook (a context manager).

Both modes (moto's in-process mock and the local platform's server):

* :func:`invoke_in_process` — moto's Lambda (and so its Step Functions interpreter) runs
  each function's handler in this process, without Docker.
* :func:`list_command_invocations` — SSM's ``ListCommandInvocations``, which moto lacks,
  answered from the commands moto keeps (:func:`local.ssm.list_invocations`).
* :func:`commands_reach_only_their_instances` — a command sent to ``InstanceIds`` (no
  ``Targets``) reaches those instances; moto adds every instance of the account to it.

The local platform's server only:

* :func:`write_once_releases` — the release bucket policy's two write-once statements, as S3
  enforces them: moto evaluates no bucket policy (and the template's is left out, see
  :mod:`local.template`), so a write to a release's files, a slug or a source without
  ``If-None-Match``, a copy into one, and a delete of one are refused here with S3's
  ``AccessDenied``, whoever asks. The keys are the policy's own (``AppKeys.write_once``).
* :func:`other_environments` — another environment of the account (what a promotion reads):
  each local environment is an AWS of its own, so its clients point at that environment's local
  AWS, found in the registry every running local platform writes itself into
  (:class:`EnvironmentRegistry`); on AWS they are the region's own endpoints.
* :func:`instance_refreshes` — Auto Scaling's ``StartInstanceRefresh``,
  ``DescribeInstanceRefreshes`` and ``CancelInstanceRefresh``, which moto lacks, carried
  out by :class:`local.refresh.InstanceRefreshes`.

With real instances (:mod:`local.fleets`) only:

* :func:`commands_run_on_instances` — ``SendCommand`` checks its parameters against the
  document as SSM does, then runs it in the target instances; their real status, exit
  code and output come back through ``GetCommandInvocation`` and ``ListCommandInvocations``
  (moto would report every command a success at once), and the output streams to CloudWatch
  Logs while it runs when the sender asks (``CloudWatchOutputConfig``, which moto drops).
* :func:`target_health_from_load_balancer` — ``DescribeTargetHealth`` reports what the
  fleet's HAProxy checks see (moto would report every target healthy).
* :func:`group_attachments_as_on_aws` — an Auto Scaling group registers its InService
  instances in its target groups and deregisters those that left it (terminated,
  detached), as AWS does; moto registers every member, Standby ones included, and never
  deregisters one. One difference stays: AWS also deregisters an instance entering
  Standby; here it stays registered until its caller deregisters it (the rollout does),
  because moto's ``DeregisterTargets`` refuses a target that is not registered.

And the reads of moto's state that its API does not give (:func:`registered_targets`:
DescribeTargetHealth is hooked, so the raw registrations are read here).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, Protocol
from unittest import mock

from local.template import ACCOUNT, REGION


@contextmanager
def invoke_in_process() -> Iterator[None]:
    """While inside: moto's Lambda (and so its Step Functions interpreter) runs handlers in this process.

    Defined beside the handler runner in :mod:`local.aws` (``local.aws.invoke_in_process``).
    """
    from local.aws import invoke_in_process as lambda_in_process

    with lambda_in_process():
        yield


def _list_command_invocations(self: Any) -> Any:
    from moto.core.responses import ActionResult

    from local.ssm import list_invocations

    listed, token = list_invocations(
        self.ssm_backend._commands,
        command_id=self._get_param("CommandId"),
        instance_id=self._get_param("InstanceId"),
        details=bool(self._get_param("Details", False)),
        max_results=self._get_param("MaxResults"),
        next_token=self._get_param("NextToken"),
    )
    result: dict[str, Any] = {"CommandInvocations": listed}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


@contextmanager
def list_command_invocations() -> Iterator[None]:
    """While inside: moto answers SSM's ``ListCommandInvocations``."""
    from moto.ssm.responses import SimpleSystemManagerResponse

    with mock.patch.object(
        SimpleSystemManagerResponse, "list_command_invocations", _list_command_invocations, create=True
    ):
        yield


def _instances_of_targets(self: Any) -> list[str]:
    if not self.targets:
        return []
    return list(_ORIGINAL_TARGETS(self))


_ORIGINAL_TARGETS: Any = None


@contextmanager
def commands_reach_only_their_instances() -> Iterator[None]:
    """While inside: moto adds instances to a command only for the ``Targets`` it names."""
    global _ORIGINAL_TARGETS
    from moto.ssm.models import Command

    _ORIGINAL_TARGETS = Command._get_instance_ids_from_targets
    with mock.patch.object(Command, "_get_instance_ids_from_targets", _instances_of_targets):
        yield


class Refreshes(Protocol):
    """What :func:`instance_refreshes` hands requests to (:class:`local.refresh.InstanceRefreshes`)."""

    def start(self, group: str, preferences: Mapping[str, Any], strategy: str = "Rolling") -> str: ...

    def describe(self, group: str, ids: Sequence[str] = ()) -> list[dict[str, Any]]: ...

    def cancel(self, group: str) -> str: ...


def _refused(error: Any) -> Exception:
    # Raised as an Auto Scaling exception: moto finds an error's shape by the module that raised it.
    from moto.autoscaling.exceptions import AutoscalingClientError

    return AutoscalingClientError(error.code, str(error))


@contextmanager
def instance_refreshes(refreshes: Refreshes) -> Iterator[None]:
    """While inside: Auto Scaling's instance refresh requests go to ``refreshes``."""
    from moto.autoscaling.responses import AutoScalingResponse
    from moto.core.responses import ActionResult

    from local.refresh import RefreshError

    def _group(response: Any) -> str:
        from moto.autoscaling.exceptions import AutoscalingClientError

        name = response._get_param("AutoScalingGroupName")
        if name not in response.autoscaling_backend.autoscaling_groups:
            raise AutoscalingClientError("ValidationError", f"AutoScalingGroup name not found - {name}")
        return str(name)

    def start(self: Any) -> Any:
        try:
            refresh = refreshes.start(
                _group(self), self._get_param("Preferences") or {}, self._get_param("Strategy") or "Rolling"
            )
        except RefreshError as error:
            raise _refused(error) from None
        return ActionResult({"InstanceRefreshId": refresh})

    def describe(self: Any) -> Any:
        listed = refreshes.describe(_group(self), self._get_param("InstanceRefreshIds") or [])
        return ActionResult({"InstanceRefreshes": listed})

    def cancel(self: Any) -> Any:
        try:
            return ActionResult({"InstanceRefreshId": refreshes.cancel(_group(self))})
        except RefreshError as error:
            raise _refused(error) from None

    with ExitStack() as stack:
        for name, method in (
            ("start_instance_refresh", start),
            ("describe_instance_refreshes", describe),
            ("cancel_instance_refresh", cancel),
        ):
            stack.enter_context(mock.patch.object(AutoScalingResponse, name, method, create=True))
        yield


class Runner(Protocol):
    """What :func:`commands_run_on_instances` hands commands to (:class:`local.fleets.Fleets`)."""

    def admit(self, instance_ids: Sequence[str], content: Mapping[str, Any], parameters: Mapping[str, Any]) -> Any:
        """Check a command before moto records it: raise to refuse it; what :meth:`run` gets."""

    def run(self, command: Any, admitted: Any) -> None:
        """Run a command moto recorded; update its invocations as they progress."""


@contextmanager
def commands_run_on_instances(runner: Runner) -> Iterator[None]:
    """While inside: ``SendCommand`` runs its document in the target instances through ``runner``."""
    from moto.ssm.models import SimpleSystemManagerBackend
    from moto.ssm.responses import SimpleSystemManagerResponse

    original = SimpleSystemManagerBackend.send_command
    original_response = SimpleSystemManagerResponse.send_command
    # moto's backend drops CloudWatchOutputConfig; the request's thread carries it to the command.
    request_output = threading.local()

    def send_command_response(self: Any) -> Any:
        request_output.config = self._get_param("CloudWatchOutputConfig") or {}
        try:
            return original_response(self)
        finally:
            request_output.config = {}

    def send_command(self: Any, **request: Any) -> Any:
        from moto.ssm.exceptions import SSMException

        from local.ssm import Refused

        document = self.get_document(request["document_name"], None, None, "JSON")
        try:
            admitted = runner.admit(request["instance_ids"], json.loads(document["Content"]), request["parameters"])
        except Refused as refused:
            raise SSMException(refused.code, str(refused)) from None
        command = original(self, **request)
        command.cloudwatch_output = dict(getattr(request_output, "config", None) or {})  # type: ignore[attr-defined]
        runner.run(command, admitted)
        return command

    with (
        mock.patch.object(SimpleSystemManagerBackend, "send_command", send_command),
        mock.patch.object(SimpleSystemManagerResponse, "send_command", send_command_response),
    ):
        yield


class HealthView(Protocol):
    """What :func:`target_health_from_load_balancer` asks (:class:`local.fleets.Fleets`)."""

    def target_health(
        self, target_group_arn: str, registered: Mapping[str, int], targets: Sequence[Mapping[str, Any]]
    ) -> list[tuple[str, int, str, str | None, str | None]] | None:
        """(id, port, state, reason, description) per target, or ``None`` for a target group it does not play."""


@contextmanager
def target_health_from_load_balancer(view: HealthView) -> Iterator[None]:
    """While inside: ``DescribeTargetHealth`` answers from ``view``."""
    from moto.elbv2.models import ELBv2Backend, FakeHealthStatus

    original = ELBv2Backend.describe_target_health

    def describe_target_health(self: Any, target_group_arn: str, targets: list[dict[str, Any]]) -> Any:
        group = self.target_groups.get(target_group_arn)
        if group is not None:
            registered = {tid: int(t["Port"]) for tid, t in list(group.targets.items())}
            answer = view.target_health(target_group_arn, registered, targets or [])
            if answer is not None:
                return [
                    FakeHealthStatus(tid, str(port), group.health_check_port, state, reason, description)
                    for tid, port, state, reason, description in answer
                ]
        return original(self, target_group_arn, targets)

    with mock.patch.object(ELBv2Backend, "describe_target_health", describe_target_health):
        yield


def _update_attached_target_groups(self: Any, group_name: str) -> None:
    """AWS's attachments: InService members registered, instances that left the group deregistered."""
    group = self.autoscaling_groups[group_name]
    if not group.target_group_arns:
        return
    states = list(group.instance_states)
    members = {s.instance.id for s in states}
    in_service = sorted(s.instance.id for s in states if s.lifecycle_state == "InService")
    for target_group in self.elbv2_backend.describe_target_groups(
        target_group_arns=group.target_group_arns, load_balancer_arn=None, names=None
    ):
        registered = list(target_group.targets)
        new = [{"Id": i, "Port": target_group.port} for i in in_service if i not in registered]
        if new:
            self.elbv2_backend.register_targets(target_group.arn, new)
        gone = [
            {"Id": i}
            for i in registered
            if i not in members and getattr(self.ec2_backend.get_instance_by_id(i), "autoscaling_group", None) is group
        ]
        if gone:
            self.elbv2_backend.deregister_targets(target_group.arn, gone)


@contextmanager
def group_attachments_as_on_aws() -> Iterator[None]:
    """While inside: Auto Scaling groups keep their target groups' registrations as AWS does."""
    from moto.autoscaling.models import AutoScalingBackend

    with mock.patch.object(AutoScalingBackend, "update_attached_target_groups", _update_attached_target_groups):
        yield


# Reads of moto's state ------------------------------------------------------------------------


def registered_targets(target_group_arn: str) -> dict[str, int]:
    """The targets moto has registered in a target group (id → port), as ELB's registrations."""
    from moto.elbv2.models import elbv2_backends

    group = elbv2_backends[ACCOUNT][REGION].target_groups.get(target_group_arn)
    return {} if group is None else {tid: int(t["Port"]) for tid, t in list(group.targets.items())}


def group_members(group_name: str) -> dict[str, str]:
    """The instances of an Auto Scaling group (id → lifecycle state), as moto has them."""
    from moto.autoscaling.models import autoscaling_backends

    group = autoscaling_backends[ACCOUNT][REGION].autoscaling_groups.get(group_name)
    return {} if group is None else {s.instance.id: s.lifecycle_state for s in list(group.instance_states)}


# Where each running local platform says where its AWS is: one small JSON file per environment.
REGISTRY_VARIABLE = "SLIPWAY_LOCAL_REGISTRY"


class EnvironmentRegistry:
    """The local environments running on this machine and where each one's AWS answers."""

    def __init__(self, directory: str | None = None) -> None:
        import os
        import tempfile
        from pathlib import Path

        self.directory = Path(
            directory or os.environ.get(REGISTRY_VARIABLE) or Path(tempfile.gettempdir(), "slipway-local")
        )

    def add(self, env: str, aws_endpoint: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.joinpath(f"{env}.json").write_text(json.dumps({"aws_endpoint": aws_endpoint}))

    def remove(self, env: str) -> None:
        self.directory.joinpath(f"{env}.json").unlink(missing_ok=True)

    def endpoint(self, env: str) -> str:
        """Where ``env``'s local AWS answers; a refusal the API passes on when it is not running."""
        from slipway.releases import ReleaseError

        try:
            return str(json.loads(self.directory.joinpath(f"{env}.json").read_text())["aws_endpoint"])
        except (OSError, ValueError, KeyError):
            raise ReleaseError(
                409, f"{env} is not running on this machine; start it (make local ENV={env}) and promote again"
            ) from None


@contextmanager
def other_environments(registry: EnvironmentRegistry) -> Iterator[None]:
    """While inside: a client of another environment (``slipway.aws.environment_client``) talks to that
    environment's local AWS, as the registry says where it is."""
    import boto3

    from slipway import aws

    def client(service: str, env: str, region: str) -> Any:
        return boto3.client(service, region_name=region, endpoint_url=registry.endpoint(env))

    with mock.patch.object(aws, "environment_client", client):
        yield


_DENIED = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>User is not authorized to '
    "perform {action} on {key} with an explicit deny in a resource-based policy (the release bucket's "
    "ReleasesAreWrittenOnce/ReleasesAreNeverDeleted statements)</Message></Error>"
)


def _write_once(key: str) -> bool:
    import fnmatch

    from slipway_release.layout import EVERY_APP, AppKeys

    return any(fnmatch.fnmatchcase(key, pattern) for pattern in AppKeys(EVERY_APP, EVERY_APP).write_once())


def _denied(action: str, key: str) -> tuple[int, dict[str, str], str]:
    return 403, {"Content-Type": "application/xml"}, _DENIED.format(action=action, key=key)


@contextmanager
def write_once_releases() -> Iterator[None]:
    """While inside: moto refuses what the release bucket's policy denies (a write to a write-once key
    without ``If-None-Match``, a copy into one, a delete of one), for every caller."""
    import re

    from moto.s3.responses import S3Response

    put, copy, delete = S3Response.put_object, S3Response.copy_object, S3Response.delete_object
    post, delete_keys = S3Response._key_response_post, S3Response._bucket_response_delete_keys

    def guarded_put(self: Any) -> Any:
        key = self.parse_key_name()
        if _write_once(key) and not self.headers.get("If-None-Match"):
            return _denied("s3:PutObject", key)
        return put(self)

    def guarded_copy(self: Any) -> Any:
        key = self.parse_key_name()
        return _denied("s3:PutObject", key) if _write_once(key) else copy(self)

    def guarded_delete(self: Any) -> Any:
        key = self.parse_key_name()
        return _denied("s3:DeleteObject", key) if _write_once(key) else delete(self)

    def guarded_post(self: Any, request: Any, body: bytes, bucket_name: str, query: Any, key_name: str) -> Any:
        completing = bool(query.get("uploadId"))  # CompleteMultipartUpload: it must carry the header
        if completing and _write_once(key_name) and not request.headers.get("If-None-Match"):
            return _denied("s3:PutObject", key_name)
        return post(self, request, body, bucket_name, query, key_name)

    def guarded_delete_keys(self: Any, bucket_name: str, authenticated: bool = True) -> Any:
        text = self.body.decode() if isinstance(self.body, bytes) else str(self.body)
        for key in re.findall(r"<Key>(.*?)</Key>", text):
            if _write_once(key):
                return _denied("s3:DeleteObject", key)
        return delete_keys(self, bucket_name, authenticated)

    with (
        mock.patch.object(S3Response, "put_object", guarded_put),
        mock.patch.object(S3Response, "copy_object", guarded_copy),
        mock.patch.object(S3Response, "delete_object", guarded_delete),
        mock.patch.object(S3Response, "_key_response_post", guarded_post),
        mock.patch.object(S3Response, "_bucket_response_delete_keys", guarded_delete_keys),
    ):
        yield
