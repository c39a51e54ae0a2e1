"""The synthesized ``Platform-<env>`` template, adapted where moto's CloudFormation falls short.

The local platform is made from the template, not built beside it: :func:`adapt` returns
the template CloudFormation would deploy, changed only where moto lacks a resource type or
an attribute, each change named in :data:`ADAPTATIONS` with its reason. Resources moto
cannot create are taken out of the stack and created through their service's own API
instead (:class:`Deferred`), before the stack when nothing they need comes from it,
after it otherwise, with the values CloudFormation resolved for them (an output per
deferred resource carries its properties). Pure: no AWS calls.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

REGION = "us-east-1"
ACCOUNT = "123456789012"

# Why each change is made; :func:`adapt` (and :func:`flatten` before it) applies exactly these.
ADAPTATIONS: dict[str, str] = {
    "AWS::CloudFormation::Stack": (
        "the adaptations below (resources taken out, created through their API after the stack from its outputs) "
        "work on one template and its outputs: each app's nested stack is merged into the environment's stack "
        "(local.template.flatten), its resources' logical IDs prefixed with the app's, its parameters replaced "
        "by the values the parent passes, the parent's Outputs.X references by the child's output values; "
        "every real template, nested ones included, is still linted as CDK writes it"
    ),
    "AWS::ApiGateway::*": (
        "moto's CloudFormation lacks the Stage, Authorizer, GatewayResponse and Account types; the local front "
        "plays API Gateway from these same resources (local.gateway), so none is deployed into moto"
    ),
    "AWS::CertificateManager::Certificate": (
        "moto's CloudFormation lacks the type; only the API's custom domain (a second region's) uses it, and "
        "the local front serves the API on loopback under no domain"
    ),
    "AWS::Route53::*": (
        "a second region's failover name and its health check belong to a hosted zone of the organization's, "
        "and point at the API's custom domain, which the local front does not have; the records are asserted "
        "on the synthesized templates and linted there"
    ),
    "AWS::Lambda::Permission": "only API Gateway invokes through these permissions, and the local front is API Gateway",
    "AWS::WAFv2::*": (
        "moto's CloudFormation lacks WAF; its one rule (a rate limit per client address) guards a public API, "
        "and the local front serves loopback only"
    ),
    "Custom::VpcRestrictDefaultSG": (
        "its handler is a Node.js Lambda that moto could run only in Docker; it strips the default security "
        "group's rules, which guard nothing on one machine"
    ),
    "AWS::SecretsManager::Secret": "moto's CloudFormation lacks the type: created through Secrets Manager first",
    "AWS::CloudWatch::Alarm": (
        "moto's CloudFormation lacks the type: created through CloudWatch after the stack, under a fixed name, "
        "from the properties CloudFormation resolved"
    ),
    "AWS::AutoScaling::ScalingPolicy": (
        "moto's CloudFormation lacks the type: created through Auto Scaling after the stack"
    ),
    "AWS::StepFunctions::StateMachine": (
        "moto's CloudFormation creates state machines where its Step Functions interpreter does not look: created "
        "through Step Functions after the stack, under a fixed name, with the definition CloudFormation resolved"
    ),
    "AWS::EC2::SecurityGroupEgress": "moto's CloudFormation lacks the type: authorized through EC2 after the stack",
    "AWS::CodeBuild::Project": (
        "moto's CloudFormation lacks the type: created through CodeBuild after the stack, under a fixed name; "
        "moto runs no build, so the local platform runs each one in a builder container (local.builds)"
    ),
    "AWS::S3::BucketPolicy": (
        "moto's CloudFormation lacks the type, and moto would enforce its statement denying requests without "
        "TLS (the local AWS speaks plain HTTP on loopback) but not the conditions of its write-once statements: "
        "the policy is left out, and the local platform plays the write-once statements itself "
        "(local.hooks.write_once_releases)"
    ),
    "Fn::GetAtt TargetGroupFullName, LoadBalancerFullName": (
        "moto answers neither attribute; each is the resource part of the ARN, and is computed from it"
    ),
    "AWS::SSM::Document Content": (
        "moto keeps a document's Content object as an object and then fails to hash it; it goes in as the JSON "
        "text CloudFormation makes of it (Fn::ToJsonString)"
    ),
    "public SSM parameters": (
        "AWS publishes parameters (the Powertools layer's ARN) that moto does not have: given local values; "
        "moto has the Amazon Linux AMI ones, which stay"
    ),
    "AWS::ElasticLoadBalancingV2::TargetGroup TargetGroupAttributes": (
        "moto's CloudFormation ignores a target group's attributes (its deregistration delay among them): they are "
        "set through ModifyTargetGroupAttributes after the stack"
    ),
    "AWS::S3::Bucket VersioningConfiguration": (
        "moto's CloudFormation ignores a bucket's versioning: it is enabled through PutBucketVersioning after the "
        "stack (the release bucket's writer copies the object version it checked, which needs versions)"
    ),
    "Lambda code": (
        "moto runs no Lambda code without Docker; the local platform runs each function's handler in-process, "
        "so the asset bucket holds an empty archive under each code key"
    ),
}

# Types taken out of the stack entirely.
_DROPPED_PREFIXES = ("AWS::ApiGateway::", "AWS::WAFv2::", "AWS::Route53::")
_DROPPED = {
    "AWS::Lambda::Permission",
    "Custom::VpcRestrictDefaultSG",
    "AWS::S3::BucketPolicy",
    "AWS::CertificateManager::Certificate",
}
# Types created through their API instead, and whether that happens before the stack.
_DEFERRED = {
    "AWS::SecretsManager::Secret": "before",
    "AWS::CloudWatch::Alarm": "after",
    "AWS::AutoScaling::ScalingPolicy": "after",
    "AWS::EC2::SecurityGroupEgress": "after",
    "AWS::StepFunctions::StateMachine": "after",
    "AWS::CodeBuild::Project": "after",
}
# The ARN's resource part, from which moto's missing attributes are computed.
_FULL_NAMES = {"TargetGroupFullName": "targetgroup/", "LoadBalancerFullName": "loadbalancer/"}
OUTPUT_PREFIX = "LocalDeferred"


@dataclass(frozen=True)
class Deferred:
    """A resource created through its service's API instead of by the stack."""

    logical_id: str
    type: str
    properties: Mapping[str, Any]
    when: str  # "before" or "after" the stack
    name: str  # its physical name

    @property
    def ref(self) -> str:
        """What ``Ref`` gives for an ``after`` resource: its ARN for a state machine, else its name."""
        if self.type == "AWS::StepFunctions::StateMachine":
            return f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{self.name}"
        return self.name

    @property
    def arn(self) -> str | None:
        """What ``Fn::GetAtt <resource>.Arn`` gives, where the template asks for it."""
        if self.type == "AWS::CloudWatch::Alarm":
            return f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{self.name}"
        if self.type == "AWS::StepFunctions::StateMachine":
            return self.ref
        if self.type == "AWS::CodeBuild::Project":
            return f"arn:aws:codebuild:{REGION}:{ACCOUNT}:project/{self.name}"
        return None

    @property
    def output(self) -> str:
        """The stack output that carries the resolved properties of an ``after`` resource."""
        return f"{OUTPUT_PREFIX}{self.logical_id}"

    @property
    def parameter(self) -> str:
        """The stack parameter through which a ``before`` resource's id (its ``Ref``) reaches the stack."""
        return f"{OUTPUT_PREFIX}{self.logical_id}"


@dataclass
class Adapted:
    """The template to deploy into moto, and what to create beside it."""

    template: dict[str, Any]
    original: Mapping[str, Any]
    deferred: list[Deferred] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    lambda_code: list[tuple[str, str]] = field(default_factory=list)  # (bucket with tokens resolved, key)
    # (target group's logical id, its TargetGroupAttributes), applied after the stack
    target_group_attributes: list[tuple[str, list[dict[str, str]]]] = field(default_factory=list)
    versioned_buckets: list[str] = field(default_factory=list)  # logical ids, versioned after the stack


NESTED_STACK = "AWS::CloudFormation::Stack"
# Where CDK's assembly names a nested stack's template file (a resource's Metadata).
ASSET_PATH = "aws:asset:path"


def flatten(template: Mapping[str, Any], read: Callable[[str], Mapping[str, Any]]) -> dict[str, Any]:
    """``template`` with each nested stack's resources merged in, as one stack (see ADAPTATIONS).

    ``read`` gives the template of a nested stack's file (its ``aws:asset:path``). A nested
    stack's resource ``AppwebNestedStackAppwebNestedStackResource…`` puts its children in as
    ``Appweb<child id>`` (under its whole logical ID when another app's name gives the same
    prefix); ``Fn::GetAtt [<it>, Outputs.X]`` becomes the child's output X's value.
    """
    merged = copy.deepcopy(dict(template))
    resources: dict[str, Any] = merged["Resources"]
    nested = [logical for logical, r in resources.items() if r["Type"] == NESTED_STACK]
    outputs: dict[str, dict[str, Any]] = {}
    children_of: dict[str, list[str]] = {}
    prefixes: set[str] = set()
    for logical in nested:
        resource = resources.pop(logical)
        child = flatten(read(resource["Metadata"][ASSET_PATH]), read)
        prefix = logical.split("NestedStack")[0]
        if prefix in prefixes:  # apps "a-b" and "ab" are both "Appab"
            prefix = logical
        prefixes.add(prefix)
        passed = resource.get("Properties", {}).get("Parameters", {})
        names = set(child["Resources"])

        def rename(value: Any, names: set[str] = names, prefix: str = prefix, passed: Any = passed) -> Any:
            if isinstance(value, dict) and len(value) == 1:
                [(key, argument)] = value.items()
                if key == "Ref" and argument in passed:
                    return copy.deepcopy(passed[argument])
                if key == "Ref" and argument in names:
                    return {"Ref": prefix + argument}
                if key == "Fn::GetAtt" and argument[0] in names:
                    return {"Fn::GetAtt": [prefix + argument[0], *argument[1:]]}
            return value

        for parameter, definition in child.get("Parameters", {}).items():
            if parameter in passed:
                continue
            if merged.setdefault("Parameters", {}).setdefault(parameter, definition) != definition:
                raise ValueError(f"nested stack {logical}: parameter {parameter} differs from the parent's")
        depends = resource.get("DependsOn", [])
        for child_logical, child_resource in child["Resources"].items():
            changed = _walk(child_resource, rename)
            own = changed.get("DependsOn", [])
            own = [own] if isinstance(own, str) else own
            changed["DependsOn"] = [prefix + d for d in own] + list(depends)
            if not changed["DependsOn"]:
                del changed["DependsOn"]
            resources[prefix + child_logical] = changed
        for name, output in child.get("Outputs", {}).items():
            outputs[f"{logical}.{name}"] = _walk(output["Value"], rename)
            if "Description" in output:  # the child's own outputs (not the references CDK passes up) stay outputs
                merged.setdefault("Outputs", {})[prefix + name] = _walk(output, rename)
        children_of[logical] = [prefix + name for name in child["Resources"]]

    def resolve(value: Any) -> Any:
        if isinstance(value, dict) and list(value) == ["Fn::GetAtt"] and value["Fn::GetAtt"][0] in children_of:
            stack, attribute = value["Fn::GetAtt"][0], value["Fn::GetAtt"][1]
            return copy.deepcopy(outputs[f"{stack}.{attribute.removeprefix('Outputs.')}"])
        return value

    for logical, resource in list(resources.items()):
        resolved = _walk(resource, resolve)
        if "DependsOn" in resolved:
            depends = [resolved["DependsOn"]] if isinstance(resolved["DependsOn"], str) else resolved["DependsOn"]
            resolved["DependsOn"] = [c for d in depends for c in children_of.get(d, [d])]
        resources[logical] = resolved
    if "Outputs" in merged:
        merged["Outputs"] = _walk(merged["Outputs"], resolve)
    return merged


def physical_name(stack: str, logical_id: str) -> str:
    """The fixed name a deferred resource gets: ``<stack>-<logical id>``."""
    return f"{stack}-{logical_id}"


def _walk(value: Any, change: Callable[[Any], Any]) -> Any:
    changed = change(value)
    if changed is not value:
        return changed
    if isinstance(value, dict):
        return {key: _walk(item, change) for key, item in value.items()}
    if isinstance(value, list):
        return [_walk(item, change) for item in value]
    return value


def _arn_resource_part(logical_id: str, prefix: str) -> dict[str, Any]:
    """``targetgroup/<name>/<id>`` of an ELB ARN, without ``prefix`` when it is ``loadbalancer/``."""
    resource = {"Fn::Select": [5, {"Fn::Split": [":", {"Ref": logical_id}]}]}
    if prefix == "loadbalancer/":
        parts = {"Fn::Split": ["/", resource]}
        return {"Fn::Join": ["/", [{"Fn::Select": [i, parts]} for i in (1, 2, 3)]]}
    return resource


def adapt(template: Mapping[str, Any], *, stack: str, public_parameters: Mapping[str, str]) -> Adapted:
    """The template moto's CloudFormation can deploy as ``stack``, and what to create beside it.

    ``public_parameters`` gives a value for each public SSM parameter the template reads
    that moto does not have (by parameter name, e.g. the Powertools layer's).
    """
    adapted = copy.deepcopy(dict(template))
    resources: dict[str, Any] = adapted["Resources"]
    dropped = sorted(
        logical
        for logical, resource in resources.items()
        if resource["Type"] in _DROPPED or resource["Type"].startswith(_DROPPED_PREFIXES)
    )
    # The custom resource's provider (its function and role) goes with it.
    for resource in resources.values():
        if resource["Type"] == "Custom::VpcRestrictDefaultSG":
            provider = resource["Properties"]["ServiceToken"]["Fn::GetAtt"][0]
            dropped += [provider, resources[provider]["Properties"]["Role"]["Fn::GetAtt"][0]]
    deferred = [
        Deferred(
            logical_id=logical,
            type=resource["Type"],
            properties=resource.get("Properties", {}),
            when=_DEFERRED[resource["Type"]],
            name=physical_name(stack, logical),
        )
        for logical, resource in sorted(resources.items())
        if resource["Type"] in _DEFERRED
    ]
    names = {d.logical_id: d for d in deferred}

    def change(value: Any) -> Any:
        if not isinstance(value, dict) or len(value) != 1:
            return value
        if "Ref" in value and value["Ref"] in names:
            item = names[value["Ref"]]
            return {"Ref": item.parameter} if item.when == "before" else item.ref
        if "Fn::GetAtt" in value:
            logical, attribute = value["Fn::GetAtt"]
            if logical in names and attribute == "Arn" and names[logical].arn is not None:
                return names[logical].arn
            if attribute in _FULL_NAMES:
                return _arn_resource_part(logical, _FULL_NAMES[attribute])
        return value

    for logical in set(dropped) | set(names):
        del resources[logical]
    for resource in resources.values():
        if resource["Type"] == "AWS::SSM::Document" and isinstance(resource["Properties"].get("Content"), dict):
            resource["Properties"]["Content"] = {"Fn::ToJsonString": resource["Properties"]["Content"]}
    gone = set(dropped) | set(names)
    for logical, resource in list(resources.items()):
        resources[logical] = _walk(resource, change)
        depends = resource.get("DependsOn")
        if depends is not None:
            remaining = [d for d in ([depends] if isinstance(depends, str) else depends) if d not in gone]
            if remaining:
                resources[logical]["DependsOn"] = remaining
            else:
                del resources[logical]["DependsOn"]
    outputs = {
        key: _walk(output, change)
        for key, output in adapted.get("Outputs", {}).items()
        if not _mentions(output, set(dropped))
    }
    for item in deferred:
        if item.when == "after":
            properties = dict(_walk(dict(item.properties), change))
            if item.type == "AWS::CloudWatch::Alarm":
                properties["AlarmName"] = item.name
            outputs[item.output] = {"Value": {"Fn::ToJsonString": properties}}
    adapted["Outputs"] = outputs
    parameters = adapted.setdefault("Parameters", {})
    for item in deferred:
        if item.when == "before":
            parameters[item.parameter] = {"Type": "String", "Description": f"the id of {item.logical_id}, made locally"}
    for parameter in parameters.values():
        if parameter.get("Default") in public_parameters and parameter["Type"].startswith("AWS::SSM::Parameter::Value"):
            parameter.update(Type="String", Default=public_parameters[parameter["Default"]])
    code = [
        resource["Properties"]["Code"]
        for resource in resources.values()
        if resource["Type"] == "AWS::Lambda::Function" and "S3Key" in resource["Properties"].get("Code", {})
    ]
    attributes = [
        (
            logical,
            [{"Key": str(a["Key"]), "Value": str(a["Value"])} for a in resource["Properties"]["TargetGroupAttributes"]],
        )
        for logical, resource in sorted(resources.items())
        if resource["Type"] == "AWS::ElasticLoadBalancingV2::TargetGroup"
        and resource["Properties"].get("TargetGroupAttributes")
    ]
    versioned = sorted(
        logical
        for logical, resource in resources.items()
        if resource["Type"] == "AWS::S3::Bucket"
        and resource["Properties"].get("VersioningConfiguration", {}).get("Status") == "Enabled"
    )
    return Adapted(
        template=adapted,
        original=template,
        deferred=deferred,
        dropped=sorted(set(dropped)),
        lambda_code=[(_substitute(c["S3Bucket"]), c["S3Key"]) for c in code],
        target_group_attributes=attributes,
        versioned_buckets=versioned,
    )


def _mentions(value: Any, logical_ids: set[str]) -> bool:
    """Does ``value`` refer (Ref or GetAtt) to any of ``logical_ids``?"""
    if isinstance(value, dict):
        if value.get("Ref") in logical_ids:
            return True
        target = value.get("Fn::GetAtt")
        if isinstance(target, list) and target and target[0] in logical_ids:
            return True
        return any(_mentions(item, logical_ids) for item in value.values())
    if isinstance(value, list):
        return any(_mentions(item, logical_ids) for item in value)
    return False


def _substitute(value: Any) -> str:
    """A ``Fn::Sub`` over the pseudo parameters (the asset bucket's name), resolved for the local account."""
    if isinstance(value, str):
        return value
    text = value["Fn::Sub"]
    for name, resolved in {"AWS::AccountId": ACCOUNT, "AWS::Region": REGION, "AWS::URLSuffix": "amazonaws.com"}.items():
        text = text.replace("${" + name + "}", resolved)
    return str(text)


def resolved_properties(outputs: Mapping[str, str], item: Deferred) -> dict[str, Any]:
    """The properties of an ``after`` resource as CloudFormation resolved them (its output)."""
    properties: dict[str, Any] = json.loads(outputs[item.output])
    return properties
