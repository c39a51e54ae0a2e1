"""The /slipway Slack command: Slack's signing scheme (with Slack's own published example), the
command grammar, the rules of cdk.json, and the route end to end on the deployed stack, with a
stand-in for Slack's response URL on loopback collecting what is posted."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import api_events
import pytest
from api_events import call
from botocore.exceptions import ClientError
from moto_fleet import World, faster_rollout_clock

from constructs.config import ConfigError, PlatformConfig
from local.aws import Deployed
from slipway import aws, operations
from slipway.slack import handler as slack_handler
from slipway.slack.commands import Command, CommandError, parse
from slipway.slack.rules import Rule, RuleError, parse_rules, refusal
from slipway.slack.signature import SignatureError, sign, verify
from slipway.store import Bucket
from slipway_release.layout import SLACK_REQUESTS, slack_request, slack_requests

EVENTS = Path(__file__).parent / "events"
# Slack's own example, from "Verifying requests from Slack" (docs.slack.dev): secret, timestamp,
# the slash command's body as sent, and the signature Slack computed for them.
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_TIMESTAMP = "1531420618"
SLACK_BODY = (EVENTS / "slack_slash_command_sample.txt").read_bytes()
SLACK_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"


def headers(signature: str, timestamp: str = SLACK_TIMESTAMP) -> dict[str, str]:
    return {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": signature}


def test_slacks_published_example_verifies() -> None:
    assert sign(SLACK_SECRET, SLACK_TIMESTAMP, SLACK_BODY) == SLACK_SIGNATURE
    verify(SLACK_SECRET, headers(SLACK_SIGNATURE), SLACK_BODY, now=int(SLACK_TIMESTAMP) + 299)


@pytest.mark.parametrize(
    "secret, request_headers, body, now, message",
    [
        ("wrong-secret", headers(SLACK_SIGNATURE), SLACK_BODY, 1531420618, "does not match"),
        (SLACK_SECRET, headers(SLACK_SIGNATURE), SLACK_BODY + b"&text=deploy", 1531420618, "does not match"),
        (SLACK_SECRET, headers(SLACK_SIGNATURE), SLACK_BODY, 1531420618 + 301, "more than 300 s old"),
        (SLACK_SECRET, headers(SLACK_SIGNATURE), SLACK_BODY, 1531420618 - 301, "more than 300 s old or ahead"),
        (SLACK_SECRET, {"X-Slack-Signature": SLACK_SIGNATURE}, SLACK_BODY, 1531420618, "is missing"),
        (SLACK_SECRET, headers(SLACK_SIGNATURE, "soon"), SLACK_BODY, 1531420618, "not a Unix time"),
        (SLACK_SECRET, headers("v1=" + SLACK_SIGNATURE[3:]), SLACK_BODY, 1531420618, "does not match"),
    ],
)
def test_what_slack_did_not_sign_now_is_refused(
    secret: str, request_headers: dict[str, str], body: bytes, now: int, message: str
) -> None:
    with pytest.raises(SignatureError, match=message):
        verify(secret, request_headers, body, now=now)


def test_header_names_are_case_insensitive() -> None:
    lower = {k.lower(): v for k, v in headers(SLACK_SIGNATURE).items()}
    verify(SLACK_SECRET, lower, SLACK_BODY, now=int(SLACK_TIMESTAMP))


@pytest.mark.parametrize(
    "text, command",
    [
        ("", Command("help")),
        ("help", Command("help")),
        ("status billing staging", Command("status", "billing", "staging")),
        ("  deploy   billing staging  r7 ", Command("deploy", "billing", "staging", "r7")),
        ("deploy billing staging", Command("deploy", "billing", "staging")),
        ("cycle web production i-0abc123", Command("cycle", "web", "production", "i-0abc123")),
        ("rollback web production", Command("rollback", "web", "production")),
        ("restart web production", Command("restart", "web", "production")),
        ("restart billing staging worker", Command("restart", "billing", "staging", "worker")),
    ],
)
def test_commands(text: str, command: Command) -> None:
    assert parse(text) == command


@pytest.mark.parametrize(
    "text, message",
    [
        ("destroy web staging", "`destroy` is not a command"),
        ("deploy web", "needs an app and an environment"),
        ("deploy Web staging", "is not an app name"),
        ("deploy web Staging", "is not an environment name"),
        ("deploy web staging 7", "`7` is not a release id"),
        ("deploy web staging r7 now", "is too much"),
        ("status web staging r7", "is too much"),
        ("cycle web staging box-1", "is not an instance id"),
        ("restart web staging web.1", "`web.1` is not a process type"),
        ("restart web staging web worker", "is too much"),
    ],
)
def test_what_is_not_a_command_says_what_to_type(text: str, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        parse(text)


PRODUCTION_RULES = [
    {"actions": ["help", "status", "releases", "config"]},
    {"actions": ["deploy", "rollback", "cycle"], "users": ["U0ALICE1", "U0BOB22"], "channels": ["C0DEPLOYS"]},
]


@pytest.mark.parametrize(
    "action, user, channel, allowed",
    [
        ("status", "U0ANYONE", "C0RANDOM", True),
        ("deploy", "U0ALICE1", "C0DEPLOYS", True),
        ("deploy", "U0ALICE1", "C0RANDOM", False),  # the right person, the wrong channel
        ("deploy", "U0MALLORY", "C0DEPLOYS", False),  # the right channel, the wrong person
        ("cycle", "U0BOB22", "C0DEPLOYS", True),
    ],
)
def test_rules_allow_exactly_what_they_name(action: str, user: str, channel: str, allowed: bool) -> None:
    reason = refusal(parse_rules(PRODUCTION_RULES), action, user, channel, "production")
    assert (reason is None) == allowed, reason
    if action == "deploy" and user == "U0ALICE1" and not allowed:
        assert reason == "`deploy` in production is allowed to you only in <#C0DEPLOYS>; run it there"
    if user == "U0MALLORY":
        assert (
            reason is not None and "ask an operator to allow it in cdk.json (environments.production.slack)" in reason
        )


@pytest.mark.parametrize(
    "rules, where, problem",
    [
        ([], "rules", "non-empty list"),
        ([{"actions": ["deploy"], "user": ["U0A1"]}], "rules[0].user", "unknown key"),
        ([{"actions": ["destroy"]}], "rules[0].actions", "expected a list of actions"),
        ([{"actions": ["deploy"], "users": ["alice"]}], "rules[0].users", "'alice' is not a Slack user id"),
        ([{"actions": ["deploy"], "channels": "C0DEPLOYS"}], "rules[0].channels", "non-empty list"),
    ],
)
def test_bad_rules_are_refused_where_they_are(rules: Any, where: str, problem: str) -> None:
    with pytest.raises(RuleError) as raised:
        parse_rules(rules)
    assert raised.value.where == where and problem in raised.value.problem


def test_the_configuration_checks_the_rules_with_the_key_path(example_platform: dict[str, Any]) -> None:
    platform = json.loads(json.dumps(example_platform))
    platform["environments"]["production"]["slack"]["rules"][1]["users"] = ["alice"]
    with pytest.raises(ConfigError) as raised:
        PlatformConfig.from_context(platform)
    assert raised.value.path == "platform.environments.production.slack.rules[1].users"
    production = PlatformConfig.from_context(example_platform).environment("production")
    assert production.slack is not None
    assert production.slack.rules[1] == Rule(
        frozenset({"deploy", "rollback", "restart", "cycle"}),
        frozenset({"U024BE7LH", "U0G9QF9C6"}),
        frozenset({"C024BE91L"}),
    )


# The route, on the deployed stack ------------------------------------------------------------------


class SlackStandIn:
    """What Slack's response URL receives, on loopback."""

    def __init__(self) -> None:
        posts: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.posts = posts
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/commands/T1/1/x"

    def wait_for(self, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.posts) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.posts

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


SECRET = "local-signing-secret-for-tests"


@pytest.fixture
def slack(deployed: Deployed, monkeypatch: pytest.MonkeyPatch) -> Iterator[SlackStandIn]:
    """Staging's Slack command with a known signing secret; response URLs allowed on loopback only for the stand-in."""
    settings = json.loads(deployed.environment["SLACK_JSON"])
    deployed.clients.secretsmanager.put_secret_value(SecretId=settings["signing_secret"], SecretString=SECRET)
    monkeypatch.setenv("SLACK_JSON", json.dumps({**settings, "response_hosts": ["127.0.0.1"]}))
    slack_handler._secret_cache.clear()
    # Requests reach the handler as the stack's API function: its follow-ups invoke that function.
    [api_function] = [
        p
        for logical, p in deployed.stack.of_type("AWS::Lambda::Function").items()
        if logical.startswith("ControlPlaneApiFunction")
    ]
    arn = deployed.clients.lambda_.get_function(FunctionName=api_function)["Configuration"]["FunctionArn"]
    monkeypatch.setattr(api_events.Context, "invoked_function_arn", arn)
    stand_in = SlackStandIn()
    yield stand_in
    stand_in.close()


def signed(
    text: str,
    response_url: str,
    *,
    user: str = "U2CERLKJA",
    channel: str = "G8PSS9T3V",
    secret: str = SECRET,
    age: int = 0,
    timestamp: str | None = None,
    trigger_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A slash command's body and the headers Slack sends with it, signed ``age`` seconds ago (or at
    ``timestamp``); ``trigger_id`` as Slack makes one per command (the sample's by default)."""
    form = urllib.parse.parse_qs(SLACK_BODY.decode())
    form.update(text=[text], user_id=[user], channel_id=[channel], response_url=[response_url], command=["/slipway"])
    if trigger_id is not None:
        form.update(trigger_id=[trigger_id])
    body = urllib.parse.urlencode({k: v[0] for k, v in form.items()}).encode()
    timestamp = timestamp or str(int(time.time()) - age)
    return body, headers(sign(secret, timestamp, body), timestamp)


def send(body: bytes, request_headers: dict[str, str]) -> tuple[int, Any]:
    return call("POST", "/slack/commands", raw=body, user=None, headers=request_headers)


def command(
    text: str,
    response_url: str,
    *,
    user: str = "U2CERLKJA",
    channel: str = "G8PSS9T3V",
    secret: str = SECRET,
    age: int = 0,
) -> tuple[int, Any, float]:
    body, request_headers = signed(text, response_url, user=user, channel=channel, secret=secret, age=age)
    started = time.monotonic()
    status, answer = send(body, request_headers)
    return status, answer, time.monotonic() - started


def test_reads_answer_at_once_and_config_shows_names_only(slack: SlackStandIn, deployed: Deployed) -> None:
    World(deployed, instances=2, min_size=1)
    status, answer, _ = command("status web staging", slack.url)
    assert status == 200 and answer["response_type"] == "ephemeral"
    assert answer["blocks"][0]["text"]["text"].startswith("*web* in *staging*: current `r1`, 2 instance(s)")
    # billing has no release yet: the change is the canonical config the first release will take.
    call("PATCH", "/apps/billing/envs/staging/config", {"set": {"DATABASE_URL": "postgres://secret@db"}})
    _, answer, _ = command("config billing staging", slack.url)
    assert answer["text"] == "*billing* in *staging* sets: `DATABASE_URL`" and "secret@db" not in json.dumps(answer)


def test_a_deploy_is_acknowledged_in_3_s_and_its_outcome_posted(
    slack: SlackStandIn, deployed: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World(deployed, instances=2, min_size=1)
    faster_rollout_clock(monkeypatch)  # web's strategy bakes 30 s after each batch: 1.5 s here
    status, answer, elapsed = command("deploy web staging r2", slack.url)
    assert status == 200 and elapsed < 3, elapsed
    assert answer["response_type"] == "in_channel" and ":rocket: Deploy of *web* `r2` to *staging*" in answer["text"]
    assert "by roadrunner (Slack U2CERLKJA)" in answer["text"]  # who did it, as the deploy records it
    posts = slack.wait_for(1)
    deadline = time.monotonic() + 90
    while not any(":white_check_mark:" in p["text"] for p in posts) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert any(":white_check_mark: deployed, `r2` is current" in p["text"] for p in posts), posts
    assert len(posts) <= slack_handler.MAX_POSTS
    assert world.current() == "r2"
    [deploy] = call("GET", "/apps/web/envs/staging/deploys")[1]["deploys"]
    assert deploy["user"] == "roadrunner (Slack U2CERLKJA)"


def test_a_restart_is_a_rolling_restart_posted_when_done(
    slack: SlackStandIn, deployed: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World(deployed, instances=2, min_size=1)
    faster_rollout_clock(monkeypatch)
    status, answer, elapsed = command("restart web staging", slack.url)
    assert status == 200 and elapsed < 3, elapsed
    assert ":rocket: Restart of *web* `r1` to *staging*" in answer["text"], answer
    posts = slack.wait_for(1)
    deadline = time.monotonic() + 90
    while not any(":white_check_mark:" in p["text"] for p in posts) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert any(":white_check_mark: restarted, `r1` is current" in p["text"] for p in posts), posts
    assert world.current() == "r1"


def test_what_the_rules_or_the_signature_refuse_changes_nothing(
    slack: SlackStandIn, deployed: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World(deployed, instances=2, min_size=1)
    settings = json.loads(deployed.environment["SLACK_JSON"])
    monkeypatch.setenv(
        "SLACK_JSON", json.dumps({**settings, "response_hosts": ["127.0.0.1"], "rules": PRODUCTION_RULES})
    )
    status, answer, _ = command("deploy web staging r2", slack.url, user="U0ALICE1", channel="C0RANDOM")
    assert status == 200 and answer["text"].startswith(
        ":no_entry: `deploy` in staging is allowed to you only in <#C0DEPLOYS>"
    )
    status, refused, _ = command(
        "deploy web staging r2", slack.url, user="U0ALICE1", channel="C0DEPLOYS", secret="guess"
    )
    assert status == 401 and "not a request Slack signed" in refused["message"]
    status, refused, _ = command("deploy web staging r2", slack.url, user="U0ALICE1", channel="C0DEPLOYS", age=600)
    assert status == 401
    _, answer, _ = command("deploy web production r2", slack.url, user="U0ALICE1", channel="C0DEPLOYS")
    assert "This command serves *staging*" in answer["text"]
    _, answer, _ = command("launch web staging", slack.url)
    assert "`launch` is not a command" in answer["text"] and "/slipway deploy APP ENV" in answer["text"]
    time.sleep(0.5)
    assert world.current() == "r1" and slack.posts == []
    assert call("GET", "/apps/web/envs/staging/deploys")[1]["deploys"] == []


# Replays: each signed request is acted on once, by whichever instance of the function it reaches.


def cold_start() -> None:
    """What a new instance of the function starts without: every cache of this process."""
    slack_handler._secret_cache.clear()
    aws.client.cache_clear()
    operations.settings.cache_clear()


def accepted(deployed: Deployed) -> set[str]:
    """The keys of the Slack requests staging's control plane has recorded."""
    listing = deployed.clients.s3.list_objects_v2(Bucket=deployed.settings.bucket, Prefix=slack_requests("staging"))
    return {item["Key"] for item in listing.get("Contents", [])}


def test_a_replayed_request_is_refused_and_starts_nothing(
    slack: SlackStandIn, deployed: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World(deployed, instances=2, min_size=1)
    faster_rollout_clock(monkeypatch)
    body, request_headers = signed("deploy web staging r2", slack.url)
    status, answer = send(body, request_headers)
    assert status == 200 and ":rocket: Deploy of *web* `r2` to *staging*" in answer["text"], answer
    # The same request again (same timestamp, body and signature), while the deploy runs, to another
    # instance of the function: refused, said in one line.
    cold_start()
    status, refused = send(body, request_headers)
    assert (status, refused) == (401, {"message": "this request was already received (a replay); nothing was done"})
    posts = slack.wait_for(1)
    deadline = time.monotonic() + 90
    while not any(":white_check_mark:" in p["text"] for p in posts) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert any(":white_check_mark: deployed, `r2` is current" in p["text"] for p in posts), posts
    # And once the deploy is done and web unlocked, still within the request's five minutes.
    cold_start()
    status, refused = send(body, request_headers)
    assert status == 401 and "(a replay)" in refused["message"]
    time.sleep(0.5)
    [deploy] = call("GET", "/apps/web/envs/staging/deploys")[1]["deploys"]
    assert deploy["release"] == "r2" and world.current() == "r2"
    assert not any("(a replay)" in p["text"] for p in posts)  # a replay is answered, never posted to the channel
    # What refuses it: the record, at the layout's key for this signature.
    signature = request_headers["X-Slack-Signature"]
    key = f"slack-requests/staging/{hashlib.sha256(signature.encode()).hexdigest()}"
    assert slack_request("staging", signature) == key
    assert accepted(deployed) == {key}


def test_different_requests_in_the_same_second_are_each_accepted(slack: SlackStandIn, deployed: Deployed) -> None:
    World(deployed, instances=2, min_size=1)
    now = str(int(time.time()))
    requests = [
        signed("status web staging", slack.url, timestamp=now),
        signed("releases web staging", slack.url, timestamp=now),
        # The same command typed twice in one second: Slack gives each its own trigger_id.
        signed("status web staging", slack.url, timestamp=now, trigger_id="398738663015.47445629121.second"),
    ]
    assert len({request_headers["X-Slack-Signature"] for _, request_headers in requests}) == 3
    for body, request_headers in requests:
        status, answer = send(body, request_headers)
        assert status == 200 and "(a replay)" not in json.dumps(answer), answer
        assert answer["blocks"][0]["text"]["text"].startswith("*web* in *staging*"), answer
    assert accepted(deployed) == {slack_request("staging", h["X-Slack-Signature"]) for _, h in requests}


def test_a_body_that_is_not_utf_8_is_refused_for_its_signature_not_a_502(slack: SlackStandIn) -> None:
    """API Gateway base64-encodes a body that is not UTF-8 (the route needs no login): its bytes are
    what is verified, and fail."""
    status, answer = send(
        b"\xff\xfe" + b"text=status", {"X-Slack-Request-Timestamp": str(int(time.time())), "X-Slack-Signature": "v0=00"}
    )
    assert status == 401 and answer["message"].startswith("not a request Slack signed")


def test_what_is_refused_for_its_signature_is_not_recorded(slack: SlackStandIn, deployed: Deployed) -> None:
    """Only a request Slack signed is recorded: a forged or stale one cannot take a genuine one's place."""
    assert command("status web staging", slack.url, secret="guess")[0] == 401
    assert command("status web staging", slack.url, age=600)[0] == 401
    assert accepted(deployed) == set()


def test_a_request_that_cannot_be_recorded_is_not_acted_on(
    slack: SlackStandIn, deployed: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any failure to record other than S3's answer to a second create (here: access denied) stops
    the request before it is acted on: a request is never acted on unrecorded."""
    world = World(deployed, instances=2, min_size=1)

    def denied(*args: Any, **kwargs: Any) -> bool:
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "PutObject")

    monkeypatch.setattr(Bucket, "create", denied)
    with pytest.raises(ClientError, match="AccessDenied"):
        command("deploy web staging r2", slack.url)
    time.sleep(0.5)
    assert world.current() == "r1" and slack.posts == []
    assert call("GET", "/apps/web/envs/staging/deploys")[1]["deploys"] == []


def test_no_app_may_be_named_like_the_slack_requests_folder(example_platform: dict[str, Any]) -> None:
    """slack-requests/<env>/ would otherwise hold that app's keys, under the API's grant and the rule
    that expires the records after a day."""
    platform = json.loads(json.dumps(example_platform))
    platform["apps"]["slack-requests"] = platform["apps"].pop("web")
    with pytest.raises(ConfigError) as raised:
        PlatformConfig.from_context(platform)
    assert raised.value.path == "platform.apps.slack-requests"


def _arn(resource: Any) -> str:
    """An object ARN of the release bucket as a policy writes it, with the bucket named BUCKET."""
    if isinstance(resource, str):
        return resource
    parts = resource["Fn::Join"][1]
    return "".join(
        "arn:aws:s3:::BUCKET" if part == {"Fn::GetAtt": ["ReleaseBucket", "Arn"]} else str(part) for part in parts
    )


def test_the_api_may_record_its_own_environments_requests_and_they_expire(
    templates: dict[str, dict[str, Any]],
) -> None:
    resources = templates["Platform-staging"]["Resources"]
    puts = [
        _arn(resource)
        for logical, policy in resources.items()
        if policy["Type"] == "AWS::IAM::Policy" and logical.startswith("ControlPlaneApiFunctionRole")
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if "s3:PutObject" in statement["Action"] and statement["Effect"] == "Allow" and not statement.get("Condition")
        for resource in (statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]])
    ]

    def may_put(key: str) -> bool:
        return any(fnmatch.fnmatchcase(f"arn:aws:s3:::BUCKET/{key}", pattern) for pattern in puts)

    signature = sign(SECRET, SLACK_TIMESTAMP, SLACK_BODY)
    assert may_put(slack_request("staging", signature))
    assert not may_put(slack_request("production", signature))  # another environment's records
    # The records expire (a day after they are made, long after their five minutes), and nothing else does
    # by that rule: its prefix is the bucket's own namespace.
    [bucket] = [r for r in resources.values() if r["Type"] == "AWS::S3::Bucket"]
    rules = {rule["Id"]: rule for rule in bucket["Properties"]["LifecycleConfiguration"]["Rules"]}
    assert rules["ExpireSlackRequests"] == {
        "Id": "ExpireSlackRequests",
        "Prefix": SLACK_REQUESTS,
        "ExpirationInDays": 1,
        "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
        "Status": "Enabled",
    }
    assert slack_request("staging", signature).startswith(SLACK_REQUESTS) and slack_requests("staging").startswith(
        SLACK_REQUESTS
    )
