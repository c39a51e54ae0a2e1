"""API Gateway, played from the template's own REST API resources.

:meth:`Gateway.from_template` reads the ``AWS::ApiGateway::*`` resources of a synthesized
stack: each method's path (from the resource tree), the function its Lambda proxy
integration names, its REQUEST authorizer (function, identity header, cache time), the
gateway responses (the 401 with ``WWW-Authenticate``) and the stage. :meth:`Gateway.handle`
then treats one HTTP request as API Gateway does: the authorizer event, its policy, its
cached answer, the proxy event, the function's response, and the same answers for
missing routes and refused credentials. The events are API Gateway's own shapes.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from local.template import ACCOUNT, REGION

API_ID = "local"
VALIDATION_ERROR = "$context.error.validationErrorString"
Invoke = Callable[[str, dict[str, Any]], Any]  # (function logical id, event) -> the function's result


@dataclass(frozen=True)
class Authorizer:
    """A REQUEST authorizer: its function, the header it reads, how long its answers are kept."""

    function: str
    header: str
    ttl_seconds: int


@dataclass(frozen=True)
class Route:
    """One method: ``method`` on the resource ``path``, proxied to ``function``; its request body
    validated against ``body_schema`` (a JSON Schema draft 4 model) when its validator says so,
    and ``required_query`` parameters demanded."""

    method: str
    path: str
    function: str
    authorizer: str | None
    pattern: re.Pattern[str]
    body_schema: Mapping[str, Any] | None = None
    required_query: tuple[str, ...] = ()


@dataclass(frozen=True)
class GatewayResponse:
    status: int
    headers: Mapping[str, str]
    body: str


# API Gateway's own answers where the template sets none.
DEFAULT_RESPONSES = {
    "MISSING_AUTHENTICATION_TOKEN": GatewayResponse(403, {}, '{"message":"Missing Authentication Token"}'),
    "UNAUTHORIZED": GatewayResponse(401, {}, '{"message":"Unauthorized"}'),
    "ACCESS_DENIED": GatewayResponse(403, {}, '{"message":"User is not authorized to access this resource"}'),
    "AUTHORIZER_FAILURE": GatewayResponse(500, {}, '{"message":null}'),
    "INTEGRATION_FAILURE": GatewayResponse(502, {}, '{"message": "Internal server error"}'),
    "BAD_REQUEST_BODY": GatewayResponse(400, {}, '{"message": "Invalid request body"}'),
    "BAD_REQUEST_PARAMETERS": GatewayResponse(400, {}, '{"message": "Missing required request parameters"}'),
}


def _function_of(uri: Any) -> str:
    """The logical id of the function an integration or authorizer URI (a ``Fn::Join``) names."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            target = value.get("Fn::GetAtt")
            if isinstance(target, list) and target[1] == "Arn":
                found.append(target[0])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(uri)
    if len(set(found)) != 1:
        raise ValueError(f"cannot tell which function {uri} invokes")
    return found[0]


def _path_pattern(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(path)) + "$")


@dataclass
class Gateway:
    """One REST API stage, as the template defines it."""

    stage: str
    routes: list[Route]
    authorizers: Mapping[str, Authorizer]
    responses: Mapping[str, GatewayResponse]
    _cache: dict[tuple[str, str], tuple[float, dict[str, Any]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_template(cls, template: Mapping[str, Any]) -> Gateway:
        resources: Mapping[str, Any] = template["Resources"]
        of_type = {
            kind: {k: r["Properties"] for k, r in resources.items() if r["Type"] == f"AWS::ApiGateway::{kind}"}
            for kind in ("Resource", "Method", "Authorizer", "GatewayResponse", "Stage", "RequestValidator", "Model")
        }
        if len(of_type["Stage"]) != 1:
            raise ValueError("the local front plays one REST API stage; the template has " + str(len(of_type["Stage"])))

        def path_of(reference: Any) -> str:
            if "Fn::GetAtt" in reference:  # the API's root resource
                return ""
            properties = of_type["Resource"][reference["Ref"]]
            return f"{path_of(properties['ParentId'])}/{properties['PathPart']}"

        routes = []
        for method in of_type["Method"].values():
            integration = method.get("Integration", {})
            if integration.get("Type") != "AWS_PROXY":
                raise ValueError(f"the local front proxies to Lambda only; a method uses {integration.get('Type')}")
            path = path_of(method["ResourceId"]) or "/"
            authorizer = (
                method.get("AuthorizerId", {}).get("Ref") if method.get("AuthorizationType") == "CUSTOM" else None
            )
            validator = of_type["RequestValidator"].get(method.get("RequestValidatorId", {}).get("Ref", ""), {})
            body_schema = None
            if validator.get("ValidateRequestBody"):
                model = method.get("RequestModels", {}).get("application/json", {}).get("Ref")
                body_schema = of_type["Model"][model]["Schema"] if model else None
            required: tuple[str, ...] = ()
            if validator.get("ValidateRequestParameters"):
                required = tuple(
                    name.removeprefix("method.request.querystring.")
                    for name, needed in method.get("RequestParameters", {}).items()
                    if needed and name.startswith("method.request.querystring.")
                )
            routes.append(
                Route(
                    method["HttpMethod"],
                    path,
                    _function_of(integration["Uri"]),
                    authorizer,
                    _path_pattern(path),
                    body_schema,
                    required,
                )
            )
        authorizers = {
            logical: Authorizer(
                function=_function_of(a["AuthorizerUri"]),
                header=a["IdentitySource"].removeprefix("method.request.header."),
                ttl_seconds=int(a.get("AuthorizerResultTtlInSeconds", 300)),
            )
            for logical, a in of_type["Authorizer"].items()
        }
        responses = dict(DEFAULT_RESPONSES)
        for response in of_type["GatewayResponse"].values():
            headers = {
                name.removeprefix("gatewayresponse.header."): value.strip("'")
                for name, value in response.get("ResponseParameters", {}).items()
            }
            body = response.get("ResponseTemplates", {}).get("application/json", "")
            responses[response["ResponseType"]] = GatewayResponse(int(response["StatusCode"]), headers, body)
        [stage] = of_type["Stage"].values()
        return cls(
            stage=stage["StageName"],
            routes=sorted(routes, key=lambda r: (r.path, r.method)),
            authorizers=authorizers,
            responses=responses,
        )

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        for route in self.routes:
            found = route.pattern.match(path)
            if route.method == method and found:
                return route, found.groupdict()
        return None

    def handle(self, request: Request, body: bytes, invoke: Invoke) -> GatewayResponse:
        """One request through the stage: route, authorizer (cached), then the integration."""
        matched = self.match(request.method, request.path)
        if matched is None:
            return self.responses["MISSING_AUTHENTICATION_TOKEN"]
        route, parameters = matched
        request = request.with_route(route.path, parameters)
        context: dict[str, Any] = {}
        if route.authorizer is not None:
            allowed = self._authorize(self.authorizers[route.authorizer], route.authorizer, request, invoke)
            if isinstance(allowed, GatewayResponse):
                return allowed
            context = allowed
        refused = self._validate(route, request, body)
        if refused is not None:
            return refused
        try:
            result = invoke(route.function, proxy_event(request, self.stage, body=body, authorizer=context))
        except Exception:  # the function failed: API Gateway answers 502 and the client learns nothing more
            # ... and the traceback goes to the function's log, here this process's stderr.
            traceback.print_exc(file=sys.stderr)
            return self.responses["INTEGRATION_FAILURE"]
        if not isinstance(result, Mapping) or "statusCode" not in result:
            return self.responses["INTEGRATION_FAILURE"]
        payload = result.get("body") or ""
        if result.get("isBase64Encoded"):
            payload = base64.b64decode(payload).decode("utf-8", errors="replace")
        # A proxy response may give headers both ways; API Gateway sends both, multiValueHeaders winning.
        headers = dict(result.get("headers") or {})
        headers.update({name: ", ".join(values) for name, values in (result.get("multiValueHeaders") or {}).items()})
        return GatewayResponse(int(result["statusCode"]), headers, payload)

    def _validate(self, route: Route, request: Request, body: bytes) -> GatewayResponse | None:
        """API Gateway's request validator: required query parameters, then the body against its model."""
        missing = [name for name in route.required_query if name not in request.query]
        if missing:
            return self._bad("BAD_REQUEST_PARAMETERS", f"[Missing required request parameters: [{', '.join(missing)}]]")
        if route.body_schema is None:
            return None
        import jsonschema  # the local platform's own dependency (tests and tools), never Lambda's

        try:
            document = json.loads(body.decode("utf-8")) if body else None
            errors = sorted(
                jsonschema.Draft4Validator(route.body_schema).iter_errors(document), key=lambda e: list(e.path)
            )
        except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
            return self._bad("BAD_REQUEST_BODY", "[Invalid request body]")
        if errors:
            return self._bad("BAD_REQUEST_BODY", "[" + ", ".join(error.message for error in errors[:3]) + "]")
        return None

    def _bad(self, kind: str, error: str) -> GatewayResponse:
        response = self.responses[kind]
        escaped = json.dumps(error)[1:-1]  # substituted into a JSON string
        return GatewayResponse(response.status, response.headers, response.body.replace(VALIDATION_ERROR, escaped))

    def _authorize(
        self, authorizer: Authorizer, logical: str, request: Request, invoke: Invoke
    ) -> dict[str, Any] | GatewayResponse:
        identity = request.headers.get(authorizer.header) or next(
            (v for k, v in request.headers.items() if k.lower() == authorizer.header.lower()), None
        )
        if not identity:  # API Gateway does not call a REQUEST authorizer without its identity source
            return self.responses["UNAUTHORIZED"]
        key = (logical, identity)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and now - cached[0] < authorizer.ttl_seconds:
            answer = cached[1]
        else:
            try:
                answer = invoke(authorizer.function, authorizer_event(request, self.stage))
            except Exception as error:
                # A Lambda authorizer refuses with the error "Unauthorized"; anything else is its failure.
                return self.responses["UNAUTHORIZED" if str(error) == "Unauthorized" else "AUTHORIZER_FAILURE"]
            with self._lock:
                self._cache[key] = (now, answer)
        if not _allows(answer.get("policyDocument", {}), method_arn(request, self.stage)):
            return self.responses["ACCESS_DENIED"]
        return {**answer.get("context", {}), "principalId": answer.get("principalId")}


def _allows(policy: Mapping[str, Any], arn: str) -> bool:
    """Does the authorizer's IAM policy allow invoking ``arn`` (an explicit Deny wins)?"""
    allowed = False
    for statement in policy.get("Statement", []):
        resources = statement.get("Resource", [])
        resources = [resources] if isinstance(resources, str) else resources
        if any(fnmatch.fnmatchcase(arn, pattern) for pattern in resources):
            if statement.get("Effect") == "Deny":
                return False
            allowed = allowed or statement.get("Effect") == "Allow"
    return allowed


@dataclass(frozen=True)
class Request:
    """An HTTP request as API Gateway sees it; ``resource`` and ``parameters`` once it is routed."""

    method: str
    path: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    source_ip: str
    now: datetime
    resource: str = ""
    parameters: Mapping[str, str] = field(default_factory=dict)

    def with_route(self, resource: str, parameters: Mapping[str, str]) -> Request:
        return Request(self.method, self.path, self.headers, self.query, self.source_ip, self.now, resource, parameters)


def method_arn(request: Request, stage: str) -> str:
    return f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{API_ID}/{stage}/{request.method}{request.path}"


def _request_context(request: Request, stage: str) -> dict[str, Any]:
    return {
        "accountId": ACCOUNT,
        "apiId": API_ID,
        "domainName": f"{API_ID}.execute-api.{REGION}.amazonaws.com",
        "domainPrefix": API_ID,
        "extendedRequestId": str(uuid.uuid4()),
        "httpMethod": request.method,
        "identity": {"sourceIp": request.source_ip, "userAgent": request.headers.get("User-Agent")},
        "path": f"/{stage}{request.path}",
        "protocol": "HTTP/1.1",
        "requestId": str(uuid.uuid4()),
        "requestTime": request.now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
        "requestTimeEpoch": int(request.now.timestamp() * 1000),
        "resourceId": "local",
        "resourcePath": request.resource,
        "stage": stage,
    }


def authorizer_event(request: Request, stage: str) -> dict[str, Any]:
    """The event API Gateway sends a REST API REQUEST authorizer."""
    headers, query = request.headers, request.query
    return {
        "type": "REQUEST",
        "methodArn": method_arn(request, stage),
        "resource": request.resource,
        "path": request.path,
        "httpMethod": request.method,
        "headers": dict(headers),
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": dict(query),
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()},
        "pathParameters": dict(request.parameters),
        "stageVariables": None,
        "requestContext": _request_context(request, stage),
    }


def proxy_event(request: Request, stage: str, *, body: bytes, authorizer: Mapping[str, Any]) -> dict[str, Any]:
    """The event API Gateway sends a Lambda proxy integration, after the authorizer allowed the request."""
    headers, query = request.headers, request.query
    context = _request_context(request, stage)
    context["authorizer"] = dict(authorizer)
    try:
        text, encoded = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(body).decode("ascii"), True
    return {
        "resource": request.resource,
        "path": request.path,
        "httpMethod": request.method,
        "headers": dict(headers),
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": dict(query) or None,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} or None,
        "pathParameters": dict(request.parameters) or None,
        "stageVariables": None,
        "requestContext": context,
        "body": text if body else None,
        "isBase64Encoded": encoded,
    }
