"""The digest chain on real systemd: ``current`` pins a release's manifest, the rollout pins it in
every command (``--digest``), and the agent refuses any other manifest before it stages, again
before it activates, and when it boots into ``current``, with the running release still serving.

The attack played: a release rewritten after the fact (its slug and its release.json, as a role
that may write release keys could), then an instance that stages it or boots into ``current``.
The app is ``pinned`` (its own port and releases) on the session's instance.
"""

from __future__ import annotations

import json

import pytest
from instance_harness import BUCKET, ENV, Poller, Publisher
from slugs import host_build
from test_agent_e2e import DEPLOY, ENV_FILE, good_source

from local.instance import free_port, missing_prerequisites

pytestmark = pytest.mark.e2e
if missing_prerequisites():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=f"instance e2e {missing_prerequisites()}")]

APP = "pinned"
APP_DIR = f"/home/deploy/apps/{APP}"


@pytest.fixture(scope="module")
def pinned(instance_world):
    world = dict(instance_world)
    world["publisher"] = Publisher(world["client"], APP, ENV)
    world["port"] = free_port()
    return world


def agent(world, *argv: str) -> tuple[int, str]:
    result = world["instance"].run([DEPLOY, *argv], env=world["env"], check=False, timeout=120)
    return result.returncode, result.stdout + result.stderr


def publish(world, release_id: str, label: str | None = None) -> str:
    return world["publisher"].publish(release_id, good_source(label or release_id), ENV_FILE, port=world["port"])


def deployed(world) -> str | None:
    try:
        return world["instance"].path(f"{APP_DIR}/DEPLOYED").read_text().strip() or None
    except FileNotFoundError:
        return None


def rewrite(world, release_id: str, label: str) -> None:
    """Replace the release's slug and release.json with another build's, consistent with each other:
    only a digest pinned before the rewrite can tell."""
    publish(world, release_id, label)


def test_the_chain_from_current_to_the_bytes(pinned):
    publisher = pinned["publisher"]
    r1 = publish(pinned, "r1")
    good = publisher.digest("r1")
    # Staging pins the manifest: any other digest is refused before anything is downloaded.
    code, out = agent(pinned, "--stage", r1, "--digest", "0" * 64)
    assert code == 1 and "refusing" in out and "the rollout pinned" in out, out
    assert not pinned["instance"].path(f"{APP_DIR}/releases/r1").exists()
    code, out = agent(pinned, "--stage", r1, "--digest", good)
    assert code == 0, out
    staged = json.loads(pinned["instance"].path(f"{APP_DIR}/releases/r1/STAGED").read_text())
    assert staged["manifest_sha256"] == good
    # Activating checks the pin again, against what the release was staged from.
    code, out = agent(pinned, "--activate", r1, "--digest", "f" * 64)
    assert code == 1 and "was staged from a release.json" in out and deployed(pinned) is None, out
    code, out = agent(pinned, "--activate", r1, "--digest", good)
    assert code == 0 and deployed(pinned) == "r1", out

    # r2 is made current, pinned; then rewritten in the bucket (slug and manifest). An instance booting
    # into current refuses it, and one staging it for a rollout refuses it too; r1 serves throughout.
    publish(pinned, "r2")
    current = publisher.set_current("r2")
    pinned_r2 = publisher.digest("r2")
    rewrite(pinned, "r2", "not-released")
    assert publisher.digest("r2") != pinned_r2
    with Poller(pinned["port"]) as poller:
        code, out = agent(pinned, current)
        assert code == 1 and "refusing" in out and pinned_r2[:12] in out, out
        code, out = agent(pinned, "--stage", publisher_url(pinned, "r2"), "--digest", pinned_r2)
        assert code == 1 and "refusing" in out, out
    assert poller.failures == [] and poller.bodies == {"r1"}
    assert deployed(pinned) == "r1"
    assert not pinned["instance"].path(f"{APP_DIR}/releases/r2").exists()


def test_a_pointer_from_before_digests_still_boots(pinned):
    publisher = pinned["publisher"]
    publish(pinned, "r3")
    current = publisher.set_current("r3", legacy=True)
    code, out = agent(pinned, current)
    assert code == 0 and "written before current pinned digests" in out, out
    assert deployed(pinned) == "r3"
    staged = json.loads(pinned["instance"].path(f"{APP_DIR}/releases/r3/STAGED").read_text())
    assert staged["manifest_sha256"] == publisher.digest("r3")  # what it was staged from, recorded anyway


def publisher_url(world, release_id: str) -> str:
    return f"s3://{BUCKET}/{APP}/{ENV}/{release_id}"


def test_a_release_running_a_staged_slug_downloads_nothing_and_an_identical_one_skips_its_preflight(pinned):
    """Version 3: a config change (r11: r10's slug, other config) links r10's unpacked slug instead of
    downloading it and is preflighted; a rollback's copy (r12: r10's slug and config) needs no preflight."""
    publisher = pinned["publisher"]
    slug = host_build(good_source("r10"))
    publisher.publish("r10", good_source("r10"), ENV_FILE, port=pinned["port"], slug=slug, version=3)
    code, out = agent(pinned, publisher_url(pinned, "r10"), "--digest", publisher.digest("r10"))
    assert code == 0 and deployed(pinned) == "r10", out
    publisher.publish(
        "r11", good_source("r10"), ENV_FILE + "export MORE=1\n", port=pinned["port"], slug=slug, version=3
    )
    code, out = agent(pinned, "--stage", publisher_url(pinned, "r11"), "--digest", publisher.digest("r11"))
    result = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and "r11 runs r10's slug" in out and "nothing to download" in out, out
    assert "preflight" in result["durations"], result
    publisher.publish("r12", good_source("r10"), ENV_FILE, port=pinned["port"], slug=slug, version=3)
    with Poller(pinned["port"]) as poller:
        code, out = agent(pinned, publisher_url(pinned, "r12"), "--digest", publisher.digest("r12"))
    result = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and deployed(pinned) == "r12", out
    assert "passed its preflight here: none needed" in out and "preflight" not in result["durations"], out
    assert poller.failures == []
