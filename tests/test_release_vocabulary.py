"""The one vocabulary: names and release ids (slipway_release.names), the bucket layout
(slipway_release.layout), and the documents that must spell them the same way (the
manifest schema, the OpenAPI document, the provisioning script)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slipway import console, deploys
from slipway.deploys import DEPLOY_ID_PATTERN, deploy_id, deploy_of
from slipway.rollout.strategy import OPTIONS
from slipway_release import layout, names
from slipway_release.envfile import NAME_PATTERN
from slipway_release.layout import AppKeys, ReleaseUrl, parse_release_url, release_url, release_url_pattern
from slipway_release.procfile import PROCESS_TYPE

REPO = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((REPO / "image" / "slipway_release" / "release.schema.json").read_text())
OPENAPI = json.loads((REPO / "lambdas" / "slipway" / "openapi.json").read_text())

app_names = st.from_regex(rf"\A{names.APP_NAME}\Z")
env_names = st.from_regex(rf"\A{names.ENV_NAME}\Z")
release_numbers = st.integers(1, 999_999_998)  # r999999999 is the last: it has no next


@given(release_numbers)
def test_release_ids_round_trip(number: int) -> None:
    assert names.release_number(names.release_id(number)) == number
    assert names.is_release_id(f"r{number}")


@pytest.mark.parametrize("text", ["r0", "r01", "R1", "r", "r1000000000", " r1", "r1\n", "current", "7"])
def test_what_is_not_a_release_id(text: str) -> None:
    assert not names.is_release_id(text)
    with pytest.raises(ValueError, match="release ids look like r7"):
        names.release_number(text)


@given(st.lists(release_numbers, unique=True, max_size=30), st.lists(st.sampled_from(["current", "env", "lock"])))
def test_newest_first_and_the_next_id(numbers: list[int], others: list[str]) -> None:
    listed = [f"r{n}" for n in numbers] + others
    assert names.newest_first(listed) == [f"r{n}" for n in sorted(numbers, reverse=True)]
    assert names.next_release_id(listed) == f"r{max(numbers, default=0) + 1}"


def test_the_bucket_layout() -> None:
    keys = AppKeys("billing", "staging")
    assert (keys.prefix, keys.env_file, keys.current, keys.previous, keys.lock) == (
        "billing/staging/",
        "billing/staging/env",
        "billing/staging/current",
        "billing/staging/previous",
        "billing/staging/lock",
    )
    assert keys.instance("i-0abc") == "billing/staging/instances/i-0abc"
    assert keys.release("r7", layout.MANIFEST) == "billing/staging/r7/release.json"
    assert keys.upload("u1", layout.SOURCE) == "uploads/billing/staging/u1/source.tar.gz"
    assert keys.rollout_keys() == (
        "billing/staging/current",
        "billing/staging/previous",
        "billing/staging/lock",
        "billing/staging/instances/*",
    )


@given(app_names, env_names, st.one_of(release_numbers.map(lambda n: f"r{n}"), st.just("current")))
def test_release_urls_round_trip(app: str, env: str, target: str) -> None:
    url = release_url("my-releases.bucket", app, env, target)
    assert parse_release_url(url) == ReleaseUrl("my-releases.bucket", app, env, target)
    assert str(parse_release_url(url)) == url


@given(st.text(alphabet="s3:/abcr01-.xyz", max_size=40))
def test_the_ssm_pattern_admits_exactly_the_parseable_urls_of_its_apps(suffix: str) -> None:
    """What the SSM document lets through is what the agent parses, for these apps only."""
    pattern = re.compile(release_url_pattern(bucket_pattern=re.escape("b.x"), apps=["ab", "xyz"], env="s3"))
    for url in (suffix, f"s3://b.x/{suffix}", f"s3://b.x/ab/s3/{suffix}"):
        try:
            parsed: ReleaseUrl | None = parse_release_url(url)
        except ValueError:
            parsed = None
        admitted = parsed is not None and parsed.bucket == "b.x" and parsed.app in ("ab", "xyz") and parsed.env == "s3"
        assert (pattern.fullmatch(url) is not None) == admitted, url


def test_deploy_ids_name_their_app_and_release_even_when_the_app_name_holds_an_id() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    assert deploy_of(deploy_id("web", "r12", now, "0f0f")) == ("web", "r12")
    assert deploy_of(deploy_id("a-r1", "r2", now, "abcd")) == ("a-r1", "r2")
    assert deploy_of("web-r12-yesterday-0f0f") is None


# The documents that spell the same syntax.


def _anchored(pattern: str) -> str:
    return f"^{pattern}$"


def test_the_manifest_schema_spells_the_names_as_the_vocabulary_does() -> None:
    properties = SCHEMA["properties"]
    assert properties["id"]["pattern"] == _anchored(names.RELEASE_ID)
    assert properties["parent"]["pattern"] == _anchored(names.RELEASE_ID)
    assert properties["app"]["pattern"] == _anchored(names.APP_NAME)
    assert properties["env"]["pattern"] == _anchored(names.ENV_NAME)
    assert properties["formation"]["propertyNames"]["pattern"] == _anchored(PROCESS_TYPE.pattern)


def _schemas_with(document: Any, key: str) -> list[Any]:
    found = []
    if isinstance(document, dict):
        if key in document:
            found.append(document[key])
        for value in document.values():
            found += _schemas_with(value, key)
    elif isinstance(document, list):
        for value in document:
            found += _schemas_with(value, key)
    return found


def test_the_openapi_document_spells_release_ids_and_strategies_as_the_code_does() -> None:
    patterns = set(_schemas_with(OPENAPI, "pattern"))
    assert patterns >= {_anchored(p) for p in (names.RELEASE_ID, DEPLOY_ID_PATTERN, names.APP_NAME, names.ENV_NAME)}
    # Every pattern the API document holds is one of the vocabulary's (or a sha256, a commit, an upload id).
    vocabulary = (
        names.RELEASE_ID,
        DEPLOY_ID_PATTERN,
        names.APP_NAME,
        names.ENV_NAME,
        NAME_PATTERN.pattern,
        PROCESS_TYPE.pattern,  # a restart's and the logs' process type, as the Procfile spells it
    )
    assert {p for p in patterns if "a-z" in p or "r[1-9]" in p} == {_anchored(p) for p in vocabulary}
    strategies = [s for s in _schemas_with(OPENAPI, "strategy") if isinstance(s, dict) and "properties" in s]
    assert strategies
    for strategy in strategies:
        assert list(strategy["properties"]) == list(OPTIONS)
        for option, rule in OPTIONS.items():
            schema = strategy["properties"][option]
            if rule is None:
                assert schema == {"type": "boolean"}
            else:
                assert (schema["type"], schema["minimum"], schema["maximum"]) == ("integer", rule.low, rule.high)


def test_the_openapi_document_names_the_deploy_kinds_as_the_code_does() -> None:
    kind = OPENAPI["components"]["schemas"]["Deploy"]["properties"]["kind"]
    assert kind["enum"] == list(deploys.KINDS)


def test_the_openapi_document_names_the_console_s_assets_as_the_code_does() -> None:
    [asset] = OPENAPI["paths"]["/console/{asset}"]["parameters"]
    assert asset["schema"]["enum"] == list(console.ASSET_TYPES)
