"""The API's contract, from its OpenAPI document: the routes API Gateway serves and the models it
validates request bodies against. Pure: the document in, plain data out."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch")
# JSON Schema draft 4, what API Gateway models speak.
DRAFT_4 = "http://json-schema.org/draft-04/schema#"
# OpenAPI keywords draft 4 lacks; dropped from models (the handler still checks what they say).
_NOT_IN_DRAFT_4 = ("nullable", "example", "readOnly", "writeOnly", "propertyNames", "deprecated")


@dataclass(frozen=True, order=True)
class ApiRoute:
    """One operation: a resource path (``/apps/{app}/envs/{env}/releases``) and a method, the schema
    its required JSON body is validated against (a name under ``components/schemas``) if it has
    one, and the query string parameters it takes (name, required)."""

    path: str
    method: str
    body_model: str | None = None
    query: tuple[tuple[str, bool], ...] = ()
    authorized: bool = True  # behind the API's Basic auth; False where the document says ``security: []``


def routes_from_openapi(document: Mapping[str, Any]) -> tuple[ApiRoute, ...]:
    """Every operation of an OpenAPI 3 document, sorted; methods upper case.

    Raises ``ValueError`` for a document without operations or with a path API Gateway
    cannot express.
    """
    paths = document.get("paths")
    if not isinstance(paths, Mapping) or not paths:
        raise ValueError("the OpenAPI document has no paths; describe at least one operation under 'paths'")
    routes: list[ApiRoute] = []
    for path, item in paths.items():
        if (
            not isinstance(path, str)
            or not path.startswith("/")
            or (path != "/" and (path.endswith("/") or "//" in path))
        ):
            raise ValueError(f"OpenAPI path {path!r} must start with '/' and have no empty or trailing segment")
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            routes.append(
                ApiRoute(
                    path=path,
                    method=method.upper(),
                    body_model=_body_model(operation),
                    query=_query(operation),
                    authorized=operation.get("security", document.get("security")) != [],
                )
            )
    if not routes:
        raise ValueError("the OpenAPI document has no operations; add get/post/... under its paths")
    return tuple(sorted(routes))


def _body_model(operation: Mapping[str, Any]) -> str | None:
    body = operation.get("requestBody") or {}
    if not body.get("required") or "application/json" not in body.get("content", {}):
        # An optional body is checked by the handler, which knows what its absence means; a form
        # (Slack's) by the handler too, which must verify its signature over the bytes as sent.
        return None
    reference = body["content"]["application/json"]["schema"].get("$ref", "")
    prefix = "#/components/schemas/"
    if not reference.startswith(prefix):
        raise ValueError(f"a required request body must refer to a schema under {prefix}; got {reference!r}")
    return str(reference[len(prefix) :])


def _query(operation: Mapping[str, Any]) -> tuple[tuple[str, bool], ...]:
    return tuple(
        (p["name"], bool(p.get("required"))) for p in operation.get("parameters", []) if p.get("in") == "query"
    )


def gateway_model(document: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The schema ``components/schemas/<name>`` as an API Gateway model: JSON Schema draft 4,
    references inlined, ``nullable`` as a type that admits null, OpenAPI-only keywords dropped."""
    schemas = document["components"]["schemas"]

    def convert(schema: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(schema, list):
            return [convert(item, seen) for item in schema]
        if not isinstance(schema, Mapping):
            return schema
        if "$ref" in schema:
            target = schema["$ref"].rsplit("/", 1)[1]
            if target in seen:
                raise ValueError(f"schema {name} refers to itself through {target}; API Gateway models cannot")
            return convert(schemas[target], (*seen, target))
        converted = {key: convert(value, seen) for key, value in schema.items() if key not in _NOT_IN_DRAFT_4}
        if schema.get("nullable") and "type" in converted:
            kinds = converted["type"] if isinstance(converted["type"], list) else [converted["type"]]
            converted["type"] = [*kinds, "null"]
        return converted

    model: dict[str, Any] = {"$schema": DRAFT_4, "title": name, **convert(copy.deepcopy(schemas[name]), (name,))}
    return model


@dataclass(frozen=True)
class ApiContract:
    """The routes of the API and the models of their request bodies, by name."""

    routes: tuple[ApiRoute, ...]
    models: Mapping[str, Mapping[str, Any]]

    @classmethod
    def from_openapi(cls, document: Mapping[str, Any]) -> ApiContract:
        routes = routes_from_openapi(document)
        names = sorted({route.body_model for route in routes if route.body_model})
        return cls(routes=routes, models={name: gateway_model(document, name) for name in names})
