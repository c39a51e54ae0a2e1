"""The HTTP Basic request authorizer, on API Gateway's own event shapes.

``tests/events/authorizer_request.json`` is a REST API REQUEST-authorizer event in the
shape AWS documents ("Input to an API Gateway Lambda authorizer"), for one of our routes
with ``admin``'s credentials. ``authorizer_request_aws_sample.json`` is AWS's documented
sample as Powertools for AWS Lambda keeps it in its own tests (no Authorization header).
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st
from moto import mock_aws

from slipway import authorizer
from slipway.authorizer import (
    Credentials,
    allow,
    authenticate,
    authorize,
    basic_authorization,
    parse_basic_authorization,
    parse_users,
    stage_wildcard,
)

EVENTS = Path(__file__).resolve().parent / "events"
PASSWORD = "correct-horse-battery-staple"
USERS = {"admin": PASSWORD, "ana": "another-password-entirely"}
STAGE = "arn:aws:execute-api:us-east-1:123456789012:abcdef123/v1/*"


def load_event(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return event


@pytest.fixture
def event() -> dict[str, Any]:
    """A request to POST /apps/web/envs/staging/releases with admin's credentials."""
    return load_event("authorizer_request.json")


def with_authorization(event: dict[str, Any], value: str | None) -> dict[str, Any]:
    """``event`` with its Authorization header replaced (or removed, for ``None``), as API Gateway would send it."""
    changed = copy.deepcopy(event)
    for key in ("headers", "multiValueHeaders"):
        changed[key] = {k: v for k, v in (changed.get(key) or {}).items() if k.lower() != "authorization"}
    if value is not None:
        changed["headers"]["Authorization"] = value
        changed["multiValueHeaders"]["Authorization"] = [value]
    return changed


def assert_unauthorized(event: dict[str, Any], users: dict[str, str] = USERS) -> None:
    with pytest.raises(Exception) as raised:
        authorize(event, users)
    assert type(raised.value) is Exception
    assert str(raised.value) == "Unauthorized"


def test_right_credentials_allow_every_method_of_the_stage_for_that_user(event: dict[str, Any]) -> None:
    assert authorize(event, USERS) == {
        "principalId": "admin",
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": STAGE}],
        },
        "context": {"user": "admin"},
    }


def test_the_aws_sample_without_credentials_is_refused_and_with_them_allowed() -> None:
    sample = load_event("authorizer_request_aws_sample.json")
    assert_unauthorized(sample)
    allowed = authorize(with_authorization(sample, basic_authorization("ana", USERS["ana"])), USERS)
    assert allowed["principalId"] == "ana"
    assert allowed["policyDocument"]["Statement"][0]["Resource"] == (
        "arn:aws:execute-api:us-east-1:123456789012:abcdef123/test/*"
    )


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(basic_authorization("admin", "wrong-password"), id="wrong password"),
        pytest.param(basic_authorization("admin", PASSWORD + " "), id="password with a trailing space"),
        pytest.param(basic_authorization("nobody", PASSWORD), id="unknown user"),
        pytest.param(basic_authorization("ana", PASSWORD), id="another user's password"),
        pytest.param(basic_authorization("Admin", PASSWORD), id="user name in another case"),
        pytest.param(None, id="no header"),
        pytest.param("", id="empty header"),
        pytest.param("Basic", id="scheme only"),
        pytest.param("Basic " + base64.b64encode(b"admin" + PASSWORD.encode()).decode(), id="no colon"),
        pytest.param("Basic " + base64.b64encode(f":{PASSWORD}".encode()).decode(), id="empty user"),
        pytest.param("Basic not*base64!", id="bad base64"),
        pytest.param("Basic YWRtaW46", id="bad base64 padding"),
        pytest.param("Basic " + base64.b64encode(b"admin:\xff\xfe").decode(), id="not UTF-8"),
        pytest.param("Bearer " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode(), id="other scheme"),
        pytest.param(f"admin:{PASSWORD}", id="not encoded"),
    ],
)
def test_anything_but_right_credentials_is_unauthorized(event: dict[str, Any], authorization: str | None) -> None:
    assert_unauthorized(with_authorization(event, authorization))


def test_a_request_without_headers_is_unauthorized(event: dict[str, Any]) -> None:
    event["headers"] = None  # what API Gateway sends when there are none
    event["multiValueHeaders"] = None
    assert_unauthorized(event)


@pytest.mark.parametrize("scheme", ["Basic", "basic", "BASIC", "bAsIc"])
@pytest.mark.parametrize("header_name", ["Authorization", "authorization", "AUTHORIZATION"])
def test_header_name_and_scheme_are_case_insensitive(event: dict[str, Any], scheme: str, header_name: str) -> None:
    changed = with_authorization(event, None)
    encoded = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    changed["headers"][header_name] = f"{scheme} {encoded}"
    assert authorize(changed, USERS)["context"] == {"user": "admin"}


def test_passwords_may_contain_colons_and_any_unicode(event: dict[str, Any]) -> None:
    users = {"zoë": "pa:ss:wörd ✓"}
    allowed = authorize(with_authorization(event, basic_authorization("zoë", "pa:ss:wörd ✓")), users)
    assert allowed["principalId"] == "zoë"


def test_an_empty_stored_password_matches_nothing(event: dict[str, Any]) -> None:
    assert_unauthorized(with_authorization(event, basic_authorization("admin", "")), {"admin": ""})


def test_every_stored_user_is_compared_even_after_a_match(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = authorizer.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(authorizer.hmac, "compare_digest", counting)
    users = {"admin": PASSWORD, "ana": "x", "bo": "y"}
    assert authenticate(Credentials("admin", PASSWORD), users) == "admin"
    # A user name and a password per stored user, whether the first one matched or none did:
    # the time taken says nothing about which users exist.
    assert len(calls) == 2 * len(users)
    calls.clear()
    assert authenticate(Credentials("nobody", "nothing"), users) is None
    assert len(calls) == 2 * len(users)
    assert {len(a) for pair in calls for a in pair} == {32}  # digests: stored lengths do not show either


def test_neither_password_nor_header_is_logged(event: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=authorizer.__name__)
    header = event["headers"]["Authorization"]
    authorize(event, USERS)
    with pytest.raises(Exception, match="Unauthorized"):
        authorize(with_authorization(event, basic_authorization("admin", "guess-" + PASSWORD)), USERS)
    assert caplog.records
    for secret in (PASSWORD, header, header.split()[1], "guess-"):
        assert secret not in caplog.text
    assert PASSWORD not in repr(Credentials("admin", PASSWORD))


@pytest.mark.parametrize(
    "method_arn, expected",
    [
        (
            "arn:aws:execute-api:us-east-1:123456789012:abcdef123/v1/GET/apps/web/envs/staging/releases",
            "arn:aws:execute-api:us-east-1:123456789012:abcdef123/v1/*",
        ),
        (
            "arn:aws-cn:execute-api:cn-north-1:123456789012:abcdef123/v1/PATCH/apps/web/envs/staging/config",
            "arn:aws-cn:execute-api:cn-north-1:123456789012:abcdef123/v1/*",
        ),
        (
            "arn:aws:execute-api:us-east-1:123456789012:abcdef123/test/GET/",
            "arn:aws:execute-api:us-east-1:123456789012:abcdef123/test/*",
        ),
    ],
)
def test_policy_covers_the_whole_stage_so_a_cached_answer_fits_every_route(method_arn: str, expected: str) -> None:
    assert stage_wildcard(method_arn) == expected
    assert allow("ana", method_arn)["policyDocument"]["Statement"][0]["Resource"] == expected


@pytest.mark.parametrize(
    "method_arn",
    ["", "abcdef123/v1/GET/x", "arn:aws:lambda:us-east-1:1:function:f", "arn:aws:execute-api:us-east-1:1:abc"],
)
def test_a_malformed_method_arn_is_an_error_not_an_allow(method_arn: str) -> None:
    with pytest.raises(ValueError, match="not an execute-api method ARN"):
        stage_wildcard(method_arn)


@pytest.mark.parametrize(
    "secret_string, message",
    [
        ("admin=hunter2", "not JSON"),
        ('["admin", "hunter2"]', "JSON object of user names to password strings"),
        ('{"admin": 12345}', "JSON object of user names to password strings"),
    ],
)
def test_a_malformed_secret_names_the_problem_and_no_value(secret_string: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        parse_users(secret_string)
    assert "hunter2" not in str(raised.value) and "12345" not in str(raised.value)


# The Basic header format, property-based.

NAMES = st.text(st.characters(exclude_categories=("Cs",), exclude_characters=":"), min_size=1)
PASSWORDS = st.text(st.characters(exclude_categories=("Cs",)))


@given(user=NAMES, password=PASSWORDS, scheme=st.sampled_from(["Basic", "basic", "BASIC"]))
def test_any_user_and_password_round_trip_through_the_header(user: str, password: str, scheme: str) -> None:
    value = scheme + basic_authorization(user, password).removeprefix("Basic")
    assert parse_basic_authorization(value) == Credentials(user=user, password=password)


@given(user=NAMES, password=PASSWORDS.filter(bool), other=PASSWORDS)
def test_only_the_stored_password_authenticates(user: str, password: str, other: str) -> None:
    sent = parse_basic_authorization(basic_authorization(user, other))
    assert sent is not None
    assert authenticate(sent, {user: password}) == (user if other == password else None)


@given(st.text())
def test_no_header_value_crashes_the_parser(value: str) -> None:
    parsed = parse_basic_authorization(value)
    assert parsed is None or (parsed.user and ":" not in parsed.user)


# I/O: the users come from Secrets Manager (moto).


@pytest.fixture
def secrets(fake_aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A mocked Secrets Manager holding the users; the authorizer points at the secret."""
    authorizer.reset()
    with mock_aws():
        client = boto3.client("secretsmanager")
        arn = client.create_secret(Name="slipway-api-users", SecretString=json.dumps(USERS))["ARN"]
        monkeypatch.setenv("CREDENTIALS_SECRET_ARN", arn)
        yield client
    authorizer.reset()


def test_handler_checks_credentials_against_the_secret(secrets: Any, event: dict[str, Any]) -> None:
    assert authorizer.handler(event, None)["context"] == {"user": "admin"}
    with pytest.raises(Exception, match=r"^Unauthorized$"):
        authorizer.handler(with_authorization(event, basic_authorization("admin", "nope")), None)


def test_users_are_cached_for_a_few_minutes(secrets: Any) -> None:
    arn = secrets.describe_secret(SecretId="slipway-api-users")["ARN"]
    assert authorizer.load_users(arn, now=1000.0) == USERS
    secrets.put_secret_value(SecretId=arn, SecretString=json.dumps({"admin": "rotated"}))
    # Within the cache time the old users still apply; after it, the new ones.
    assert authorizer.load_users(arn, now=1000.0 + authorizer.CREDENTIALS_CACHE_SECONDS - 1) == USERS
    assert authorizer.load_users(arn, now=1000.0 + authorizer.CREDENTIALS_CACHE_SECONDS) == {"admin": "rotated"}


def test_a_malformed_secret_fails_loudly_instead_of_refusing_everyone(secrets: Any, event: dict[str, Any]) -> None:
    secrets.put_secret_value(SecretId="slipway-api-users", SecretString="admin:hunter2")
    # A ValueError is answered 500 by API Gateway: a broken deployment, not a wrong password.
    with pytest.raises(ValueError, match="not JSON"):
        authorizer.handler(event, None)


def test_importing_the_authorizer_creates_no_client_and_imports_no_boto3(repo: Path) -> None:
    code = "import sys, slipway.authorizer as a; print('boto3' in sys.modules, a.aws.client.cache_info().currsize == 0)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=repo / "lambdas", capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "True"]
