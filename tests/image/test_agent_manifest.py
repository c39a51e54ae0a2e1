"""release.json: the schema file is the truth, and the agent's validator agrees with jsonschema."""

import copy
import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slipway_release.manifest import (
    SCHEMA_PATH,
    HealthCheck,
    ManifestError,
    SchemaError,
    load_schema,
    parse_manifest,
    schema_errors,
)

SCHEMA = load_schema()
VALID = {
    "version": 1,
    "id": "r7",
    "app": "billing",
    "env": "staging",
    "source": {"sha256": "a" * 64, "size": 1234},
    "git": {"ref": "main", "commit": "b" * 40},
    "env_sha256": "c" * 64,
    "created_by": "alice",
    "created_at": "2025-11-26T02:10:00Z",
    "description": "fix invoices",
    "formation": {"web": 1, "worker": 2},
    "health_check": {"path": "/health"},
    "parent": "r6",
}


def test_schema_file_is_valid_draft_2020_12():
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA_PATH.name == "release.schema.json"


def test_parse_valid_manifest_with_defaults():
    manifest = parse_manifest(json.dumps(VALID).encode(), SCHEMA)
    assert (manifest.id, manifest.app, manifest.env, manifest.parent) == ("r7", "billing", "staging", "r6")
    assert manifest.health_check == HealthCheck(path="/health", port=5000, timeout=30.0)
    assert manifest.formation == {"web": 1, "worker": 2}


def test_unknown_version_is_refused_before_the_schema():
    newer = dict(VALID, version=2, something_new=True)
    with pytest.raises(ManifestError, match="has version 2, but this agent understands version 1 only"):
        parse_manifest(json.dumps(newer).encode(), SCHEMA)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": "7"}, "/id: '7' does not match"),
        ({"source": {"sha256": "x", "size": 1}}, "/source/sha256"),
        ({"formation": {"web": -1}}, "/formation/web: -1 is below the minimum 0"),
        ({"formation": {"we b": 1}}, "/formation/we b: property name"),
        ({"health_check": {"path": "/", "timeout": 0}}, "must be greater than 0"),
        ({"parent": 6}, "/parent: expected string or null, got number"),
        ({"extra": 1}, "/extra: unknown field"),
    ],
)
def test_invalid_manifests_name_the_field(change, message):
    with pytest.raises(ManifestError, match=r"does not match release\.schema\.json") as caught:
        parse_manifest(json.dumps(dict(VALID, **change)).encode(), SCHEMA)
    assert message in str(caught.value)


def test_not_json():
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse_manifest(b"{", SCHEMA)


def test_validator_refuses_keywords_it_does_not_implement():
    with pytest.raises(SchemaError, match=r"uses \['oneOf'\]"):
        schema_errors({}, {"type": "object", "oneOf": []})


# Agreement with the real library: mutate valid manifests at every path and compare verdicts.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 70000)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["", "r1", "r0", "/", "/x y", "a" * 64, "main", "2025-01-01T00:00:00Z", "web"]),
    lambda inner: (
        st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from(["web", "path", "x"]), inner, max_size=2)
    ),
    max_leaves=4,
)


def paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))


@st.composite
def mutated_manifests(draw):
    manifest = copy.deepcopy(VALID)
    manifest["health_check"] = draw(
        st.fixed_dictionaries(
            {"path": st.just("/up")}, optional={"port": st.integers(1000, 70000), "timeout": st.floats(-1, 700)}
        )
    )
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(list(paths(manifest))))
        if not path:
            continue
        parent = manifest
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()):
            parent[path[-1]] = draw(json_values)
        else:
            del parent[path[-1]]
        if draw(st.booleans()):
            parent[draw(st.sampled_from(["extra", "web", "port"]))] = draw(json_values)
    return manifest


@settings(max_examples=300)
@given(mutated_manifests())
def test_agent_validator_agrees_with_jsonschema(manifest):
    library = jsonschema.Draft202012Validator(SCHEMA).is_valid(manifest)
    assert (schema_errors(manifest, SCHEMA) == []) == library
