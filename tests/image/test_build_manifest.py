"""build.json: build.schema.json is the truth, and the agent's validator agrees with jsonschema."""

import copy
import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slipway_release.build import (
    BUILD_SCHEMA_PATH,
    BuildManifestError,
    Runtime,
    load_build_schema,
    parse_build_manifest,
    process_environment,
    runtime_line,
)
from slipway_release.manifest import schema_errors

SCHEMA = load_build_schema()
VALID = {
    "version": 1,
    "kind": "python",
    "runtime": {"name": "python", "version": "3.11.2"},
    "env": {"PATH": [".slipway/python/bin"], "PYTHONPATH": [".slipway/python"]},
    "source_sha256": "a" * 64,
    "built_at": "2025-11-26T02:10:00Z",
    "tools": {"pip": "23.0.1"},
    "dependencies": 7,
    "build_command": None,
}


def test_schema_file_is_valid_draft_2020_12():
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert BUILD_SCHEMA_PATH.name == "build.schema.json"


def test_parse_valid_manifest():
    manifest = parse_build_manifest(json.dumps(VALID).encode())
    assert manifest.kind == "python" and manifest.runtime == Runtime("python", "3.11.2")
    assert manifest.runtime.line == "3.11"
    assert manifest.path == (".slipway/python/bin",) and manifest.pythonpath == (".slipway/python",)


def test_runtime_lines():
    assert runtime_line("python", "3.13.0") == "3.13"
    assert runtime_line("node", "18.19.0") == "18"


def test_process_environment_is_absolute_under_the_app_and_ends_with_the_system():
    manifest = parse_build_manifest(json.dumps(VALID).encode())
    env = process_environment("/home/deploy/apps/web/current/app", manifest, "/opt/slipway/runtimes/python-3.11/bin")
    assert env == {
        "PATH": "/home/deploy/apps/web/current/app/.slipway/python/bin:/opt/slipway/runtimes/python-3.11/bin"
        ":/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": "/home/deploy/apps/web/current/app/.slipway/python",
    }
    procfile = parse_build_manifest(
        json.dumps(dict(VALID, kind="procfile", runtime=None, env={"PATH": [], "PYTHONPATH": []})).encode()
    )
    assert process_environment("/a", procfile, None) == {"PATH": "/usr/local/bin:/usr/bin:/bin"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "has version 2, but this platform understands build manifests of version 1 only"),
        ({"kind": "ruby"}, '/kind: must be one of "python", "node", "procfile"'),
        ({"env": {"PATH": ["/usr/bin"], "PYTHONPATH": []}}, "/env/PATH/0: '/usr/bin' does not match"),
        ({"env": {"PATH": ["../x"], "PYTHONPATH": []}}, "/env/PATH/0: '../x' does not match"),
        ({"env": {"PATH": ["a/../../x"], "PYTHONPATH": []}}, "/env/PATH/0"),
        ({"runtime": {"name": "python", "version": "3.11"}}, "/runtime/version"),
        ({"runtime": None}, "a python build must have a python runtime"),
        ({"runtime": {"name": "node", "version": "18.1.0"}}, "a python build must have a python runtime"),
        ({"kind": "procfile"}, "a procfile build must have no runtime"),
        ({"extra": 1}, "/extra: unknown field"),
    ],
)
def test_invalid_manifests_name_the_field(change, message):
    with pytest.raises(BuildManifestError) as caught:
        parse_build_manifest(json.dumps(dict(VALID, **change)).encode())
    assert message in str(caught.value)


def test_not_json_or_too_big():
    with pytest.raises(BuildManifestError, match="not valid JSON"):
        parse_build_manifest(b"{")
    with pytest.raises(BuildManifestError, match="larger than"):
        parse_build_manifest(b" " * 70000)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(
        ["", "python", "node", "procfile", "3.11.2", "3.11", "a" * 64, ".slipway/python", "/abs", "..", "pip"]
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["name", "PATH", "x"]), inner, max_size=2)
    ),
    max_leaves=4,
)


def paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))


@st.composite
def mutated_manifests(draw):
    manifest = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(list(paths(manifest))))
        if not path:
            continue
        parent = manifest
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()):
            parent[path[-1]] = draw(json_values)
        elif isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.append(draw(json_values))
    return manifest


@settings(max_examples=300)
@given(mutated_manifests())
def test_agent_validator_agrees_with_jsonschema(manifest):
    library = jsonschema.Draft202012Validator(SCHEMA).is_valid(manifest)
    assert (schema_errors(manifest, SCHEMA) == []) == library
