"""release.json: the schema file is the truth, and the agent's validator agrees with jsonschema."""

import copy
import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slipway_release.layout import SLUG, SOURCE, AppKeys
from slipway_release.manifest import (
    SCHEMA_PATH,
    HealthCheck,
    ManifestError,
    SchemaError,
    load_schema,
    parse_manifest,
    schema_errors,
    slug_key,
    source_key,
)

SCHEMA = load_schema()
BUILD = {
    "version": 1,
    "kind": "python",
    "runtime": {"name": "python", "version": "3.11.2"},
    "env": {"PATH": [".slipway/python/bin"], "PYTHONPATH": [".slipway/python"]},
    "source_sha256": "a" * 64,
    "built_at": "2025-11-26T02:09:00Z",
}
VALID = {
    "version": 2,
    "id": "r7",
    "app": "billing",
    "env": "staging",
    "slug": {"sha256": "d" * 64, "size": 4321},
    "build": BUILD,
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
    assert manifest.health_check == HealthCheck(path="/health", port=5000, timeout=30.0, codes=frozenset({200}))
    assert manifest.formation == {"web": 1, "worker": 2}
    assert (manifest.slug_sha256, manifest.slug_size) == ("d" * 64, 4321)
    assert manifest.build.runtime is not None and manifest.build.runtime.line == "3.11"


def test_health_codes_are_parsed_by_the_one_parser():
    manifest = parse_manifest(
        json.dumps(dict(VALID, health_check={"path": "/", "codes": "200-204,302"})).encode(), SCHEMA
    )
    assert manifest.health_check.codes == {200, 201, 202, 203, 204, 302}
    assert manifest.health_check.codes_text == "200-204,302"
    with pytest.raises(ManifestError, match="health check codes '302-200': range '302-200' must go from low to high"):
        parse_manifest(json.dumps(dict(VALID, health_check={"path": "/", "codes": "302-200"})).encode(), SCHEMA)


def test_build_is_checked_against_build_schema():
    broken = dict(VALID, build=dict(BUILD, env={"PATH": ["/abs"], "PYTHONPATH": []}))
    with pytest.raises(ManifestError, match=r"release.json build does not match build.schema.json: /env/PATH/0"):
        parse_manifest(json.dumps(broken).encode(), SCHEMA)


@pytest.mark.parametrize("version", [1, 4])
def test_other_versions_are_refused_before_the_schema(version):
    other = dict(VALID, version=version, something_new=True)
    with pytest.raises(ManifestError, match=f"has version {version}, but this agent understands versions 2, 3 only"):
        parse_manifest(json.dumps(other).encode(), SCHEMA)


@pytest.mark.parametrize("version", [2, 3])
def test_both_versions_name_where_their_slug_is(version):
    """Version 3 keeps slugs and sources by digest (shared by the releases that run them); version 2,
    written before, beside the manifest: an agent reads both."""
    manifest = parse_manifest(json.dumps(dict(VALID, version=version)).encode(), SCHEMA)
    keys = AppKeys(manifest.app, manifest.env)
    where = (slug_key(manifest, keys), source_key(manifest, keys))
    if version == 3:
        assert where == (keys.slug(manifest.slug_sha256), keys.source(manifest.source_sha256))
    else:
        assert where == (keys.release(manifest.id, SLUG), keys.release(manifest.id, SOURCE))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": "7"}, "/id: '7' does not match"),
        ({"source": {"sha256": "x", "size": 1}}, "/source/sha256"),
        ({"slug": {"sha256": "d" * 64}}, "/slug/size: required field is missing"),
        ({"build": None}, "/build: expected object, got null"),
        ({"health_check": {"path": "/", "codes": "2xx"}}, "/health_check/codes: '2xx' does not match"),
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
            {"path": st.just("/up")},
            optional={
                "port": st.integers(1000, 70000),
                "timeout": st.floats(-1, 700),
                "codes": st.sampled_from(["200", "200-299,302", "2xx", "20", "200,", 200]),
            },
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
