"""A JSON Schema validator for exactly the draft 2020-12 keywords Slipway's schemas use.

Instances may lack the ``jsonschema`` library, so the formats' schemas (release.schema.json,
build.schema.json) are checked with this small validator, which refuses a schema using any
other keyword rather than silently ignoring it. Tests prove it agrees with ``jsonschema``
on both schemas.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

_ANNOTATIONS = {"$schema", "$id", "title", "description", "$comment"}
_ASSERTIONS = {
    "type",
    "const",
    "required",
    "properties",
    "additionalProperties",
    "propertyNames",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "enum",
    "items",
    "maxItems",
}


class SchemaError(Exception):
    """The schema uses something the agent's validator does not implement."""


def schema_errors(instance: Any, schema: Mapping[str, Any], where: str = "") -> list[str]:
    """Return every violation of ``schema`` by ``instance`` as ``"<pointer>: <problem>"``.

    Implements the subset of JSON Schema 2020-12 listed in ``_ASSERTIONS``
    with the same semantics as the ``jsonschema`` library (``pattern`` is an
    unanchored ``re.search``; 1.0 is an integer; booleans are not numbers).
    Raises :class:`SchemaError` if ``schema`` uses another keyword.
    """
    unknown = set(schema) - _ANNOTATIONS - _ASSERTIONS
    if unknown:
        raise SchemaError(
            f"schema at {where or '/'} uses {sorted(unknown)}, which the agent's validator does not "
            "implement; extend slipway_release.manifest or keep the schema to the supported keywords"
        )
    here = where or "/"
    errors: list[str] = []
    if "type" in schema and not _has_type(instance, schema["type"]):
        return [f"{here}: expected {_type_words(schema['type'])}, got {_describe(instance)}"]
    if isinstance(schema.get("const"), (dict, list)):
        raise SchemaError(f"schema at {here} has an array or object const, which the agent does not implement")
    if "const" in schema and not _json_equal(instance, schema["const"]):
        errors.append(f"{here}: must be {json.dumps(schema['const'])}")
    if "enum" in schema:
        if any(isinstance(option, (dict, list)) for option in schema["enum"]):
            raise SchemaError(f"schema at {here} has an array or object in enum, which the agent does not implement")
        if not any(_json_equal(instance, option) for option in schema["enum"]):
            errors.append(f"{here}: must be one of {', '.join(json.dumps(option) for option in schema['enum'])}")
    if isinstance(instance, str):
        errors.extend(_string_errors(instance, schema, here))
    if _is_number(instance):
        errors.extend(_number_errors(instance, schema, here))
    if isinstance(instance, dict):
        errors.extend(_object_errors(instance, schema, where))
    if isinstance(instance, list):
        errors.extend(_array_errors(instance, schema, where))
    return errors


def _array_errors(value: list[Any], schema: Mapping[str, Any], where: str) -> list[str]:
    # 2020-12 "items" (without prefixItems): every element against one schema.
    errors = []
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(f"{where or '/'}: more than {schema['maxItems']} items")
    if "items" in schema:
        if not isinstance(schema["items"], dict):
            raise SchemaError(f"schema at {where or '/'} has a non-object items, which the agent does not implement")
        for index, item in enumerate(value):
            errors.extend(schema_errors(item, schema["items"], f"{where}/{index}"))
    return errors


def _string_errors(value: str, schema: Mapping[str, Any], here: str) -> list[str]:
    errors = []
    if "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{here}: {value[:60]!r} does not match {schema['pattern']}")
    if "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(f"{here}: shorter than {schema['minLength']} characters")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(f"{here}: longer than {schema['maxLength']} characters")
    return errors


def _number_errors(value: float, schema: Mapping[str, Any], here: str) -> list[str]:
    errors = []
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{here}: {value} is below the minimum {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{here}: {value} is above the maximum {schema['maximum']}")
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        errors.append(f"{here}: {value} must be greater than {schema['exclusiveMinimum']}")
    return errors


def _object_errors(value: dict[str, Any], schema: Mapping[str, Any], where: str) -> list[str]:
    errors = []
    for name in schema.get("required", []):
        if name not in value:
            errors.append(f"{where}/{name}: required field is missing")
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        pointer = f"{where}/{_pointer_escape(name)}"
        if "propertyNames" in schema:
            errors.extend(
                f"{pointer}: property name {error.split(': ', 1)[1]}"
                for error in schema_errors(name, schema["propertyNames"], pointer)
            )
        if name in properties:
            errors.extend(schema_errors(item, properties[name], pointer))
        elif extra is False:
            errors.append(f"{pointer}: unknown field")
        elif isinstance(extra, dict):
            errors.extend(schema_errors(item, extra, pointer))
    return errors


def _pointer_escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _has_type(value: Any, expected: Any) -> bool:
    if isinstance(expected, list):
        return any(_has_type(value, one) for one in expected)
    checks: dict[str, Callable[[Any], bool]] = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
        "number": _is_number,
        "integer": lambda v: _is_number(v) and (isinstance(v, int) or (math.isfinite(v) and v.is_integer())),
    }
    if expected not in checks:
        raise SchemaError(f"schema names unknown type {expected!r}")
    return checks[expected](value)


def _json_equal(left: Any, right: Any) -> bool:
    # JSON Schema equality for scalars: true is not 1, but 1 equals 1.0.
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if _is_number(left) and _is_number(right):
        return bool(left == right)
    return type(left) is type(right) and bool(left == right)


def _type_words(expected: Any) -> str:
    return " or ".join(expected) if isinstance(expected, list) else str(expected)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if _is_number(value):
        return "number"
    names: dict[type, str] = {str: "string", dict: "object", list: "array"}
    return names.get(type(value), type(value).__name__)


def read_schema(path: Path) -> dict[str, Any]:
    """Read a JSON Schema file."""
    with open(path, encoding="utf-8") as handle:
        schema: dict[str, Any] = json.load(handle)
    return schema
