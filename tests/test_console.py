"""The web console in Debian's headless Chromium, driven by Playwright, against the local
platform (the stack in moto, API Gateway played from the template, the real handlers).

Each workflow is clicked through as a person would: the apps, an app's status and releases,
deploying a release with a strategy and watching it batch by batch, rolling back, cycling one
instance and the fleet, a refusal shown in words, a phone's screen. Every page must load
nothing but this origin and break no rule of its content security policy. A screenshot of
each page is kept in tests/artifacts/console/.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from end_to_end import PASSWORD, Run, releases

from slipway.console import CONTENT_SECURITY_POLICY

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

CHROMIUM = shutil.which("chromium")
ARTIFACTS = Path(__file__).parent / "artifacts" / "console"
# Headless as root, and kept to loopback: every host name resolves to nothing, and Chromium's
# own background traffic (updates, sync, safe browsing) is off.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
WAIT_MS = 60_000  # a rollout on the local platform takes seconds; generous for a busy machine

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (`make test` installs it)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def staging(local_platforms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return local_platforms["staging"]


class Watched:
    """A page, and everything it asked for or complained about."""

    def __init__(self, page: Any, origin: str) -> None:
        self.page = page
        self.origin = origin
        self.requests: list[str] = []
        self.problems: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("pageerror", lambda error: self.problems.append(f"script error: {error}"))
        page.on(
            "console",
            lambda message: (
                self.problems.append(f"console {message.type}: {message.text}") if message.type == "error" else None
            ),
        )
        page.on("dialog", lambda dialog: dialog.accept())

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def assert_clean(self) -> None:
        """Nothing but this origin was loaded, and nothing failed or was blocked."""
        foreign = [url for url in self.requests if not url.startswith(self.origin + "/")]
        assert not foreign, f"requests to other origins: {foreign}"
        assert not self.problems, self.problems


@pytest.fixture
def console(browser: Any, staging: dict[str, Any]) -> Iterator[Watched]:
    """A signed-in browser tab (the browser answers the API's Basic challenge) on the console."""
    context = browser.new_context(
        http_credentials={"username": staging["user"], "password": PASSWORD}, viewport={"width": 1280, "height": 900}
    )
    split = urlsplit(staging["url"])
    watched = Watched(context.new_page(), f"{split.scheme}://{split.netloc}")
    yield watched
    context.close()


def open_page(console: Watched, url: str, page_name: str) -> None:
    console.page.goto(url)
    expect(console.page.locator(f"body[data-page={page_name}]")).to_be_attached(timeout=WAIT_MS)


def api(staging: dict[str, Any], method: str, path: str, body: object = None) -> Any:
    authorization = base64.b64encode(f"{staging['user']}:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(
        staging["url"] + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Basic {authorization}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def fast_deploy(slipway: Run, app: str, release: str) -> None:
    result = slipway("deploy", app, "staging", release, "--bake", "0", "--interval", "0.2")
    assert result.returncode == 0, result.stderr


def test_the_page_is_served_with_its_security_policy_and_asks_browsers_for_credentials(
    browser: Any, staging: dict[str, Any]
) -> None:
    context = browser.new_context()
    # Without credentials: the challenge that makes a browser show its sign-in prompt.
    refused = context.request.get(staging["url"] + "/")
    assert refused.status == 401
    assert refused.headers["www-authenticate"] == 'Basic realm="Slipway"'
    context.close()

    context = browser.new_context(http_credentials={"username": staging["user"], "password": PASSWORD})
    page = context.new_page()
    served = page.goto(staging["url"] + "/")
    assert served is not None and served.status == 200
    assert served.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert served.headers["cache-control"] == "no-store"
    assert served.headers["x-content-type-options"] == "nosniff"
    # The stage's path is the page's base: the assets and every API call hang from it.
    assert page.eval_on_selector("base", "b => b.href") == staging["url"] + "/"
    context.close()


def test_apps_are_listed_with_their_release_instances_and_url(console: Watched, staging: dict[str, Any]) -> None:
    open_page(console, staging["url"] + "/", "appsPage")
    cards = console.page.locator("section.card[data-app]")
    expect(cards).to_have_count(len(staging["apps"]))
    assert cards.evaluate_all("cards => cards.map(c => c.dataset.app)") == sorted(staging["apps"])
    web = console.page.locator("section[data-app=web]")
    expect(web).to_contain_text("in service")
    listing = api(staging, "GET", "/apps")
    [shown] = [a for a in listing["apps"] if a["name"] == "web"]
    assert shown["url"].startswith("http://")
    expect(web.locator("a[target=_blank]")).to_have_attribute("href", shown["url"])
    console.shot("apps")
    console.assert_clean()


def test_deploy_a_release_with_a_strategy_and_watch_it_batch_by_batch(
    console: Watched, staging: dict[str, Any], slipway: Run
) -> None:
    assert slipway("release", "web", "staging", "-m", "console: first").returncode == 0
    assert slipway("config", "web", "staging", "set", "GREETING=hello").returncode == 0
    release = releases(slipway, "web", "staging")[0]
    open_page(console, staging["url"] + "/#/apps/web", "appPage")
    row = console.page.locator(f"tr[data-release={release['id']}]")
    expect(row).to_contain_text("config: GREETING")
    expect(row.locator("span[title=set]")).to_have_text("+GREETING")  # the release's config_changes
    console.shot("app")

    row.get_by_role("link", name=release["id"]).click()
    expect(console.page.locator("body[data-page=releasePage]")).to_be_attached()
    expect(console.page.locator("h1")).to_have_text(f"web {release['id']}")
    form = console.page.locator("#deploy-form")
    form.get_by_label("batch unit").select_option("batch_size")
    form.get_by_label("batch", exact=True).fill("1")
    form.get_by_label("Watch alarms after each batch (seconds)").fill("0")
    form.get_by_label("Canary: one instance first").uncheck()
    console.shot("release")
    form.get_by_role("button", name=f"Deploy {release['id']}").click()

    expect(console.page.locator("body[data-page=deployPage]")).to_be_attached()
    status = console.page.locator("#deploy .facts dd").first
    expect(status).to_have_text("SUCCEEDED", timeout=WAIT_MS)
    # web in staging runs 1 to 2 instances, one now: one batch, switched in place.
    batches = console.page.locator("#batches .batch")
    expect(batches).to_have_count(1)
    expect(console.page.locator("#batches .batch[data-state=done]")).to_have_count(1)
    expect(console.page.locator("#batches .badge[title=switched]")).to_have_count(1)
    deploy_id = console.page.url.rsplit("/", 1)[1]
    shown = api(staging, "GET", f"/apps/web/envs/staging/deploys/{deploy_id}")
    assert shown["strategy"] == {"canary": False, "batch_size": 1, "bake_seconds": 0}
    assert shown["release"] == release["id"] and shown["user"] == staging["user"]
    console.shot("deploy")

    console.page.locator(".crumbs a", has_text="web").click()
    expect(console.page.locator(f"tr[data-release={release['id']}] .badge.current")).to_be_visible()
    console.assert_clean()


def test_roll_back_to_the_release_before(console: Watched, staging: dict[str, Any], slipway: Run) -> None:
    assert slipway("release", "billing", "staging", "-m", "console: one").returncode == 0
    first = releases(slipway, "billing", "staging")[0]["id"]
    fast_deploy(slipway, "billing", first)
    assert slipway("release", "billing", "staging", "-m", "console: two").returncode == 0
    second = releases(slipway, "billing", "staging")[0]["id"]
    fast_deploy(slipway, "billing", second)

    open_page(console, staging["url"] + "/#/apps/billing", "appPage")
    console.page.get_by_role("link", name=f"Roll back to {first}").click()
    expect(console.page.locator("body[data-page=rollbackPage]")).to_be_attached()
    form = console.page.locator("#deploy-form")
    form.get_by_label("Watch alarms after each batch (seconds)").fill("0")
    console.shot("rollback")
    form.get_by_role("button", name=f"Roll back to {first}").click()

    # A new release copying the first one rolls out (as on Heroku), and the page says which.
    expect(console.page.locator("h1")).to_have_text(re.compile(rf"Rollback of billing to {first} as r\d+"))
    expect(console.page.locator("#deploy .facts dd").first).to_have_text("SUCCEEDED", timeout=WAIT_MS)
    copy = releases(slipway, "billing", "staging")[0]
    assert copy["base"] == {"env": "staging", "release": first, "reason": "rollback"}
    assert api(staging, "GET", "/apps/billing/envs/staging/status")["current"] == copy["id"]
    open_page(console, staging["url"] + "/#/apps/billing", "appPage")
    row = console.page.locator(f"tr[data-release={copy['id']}]")
    expect(row.locator(".from")).to_have_text(f"copy of {first}")
    expect(row.locator(".badge.current")).to_have_text("serves")
    console.assert_clean()


def test_a_refusal_is_shown_in_the_api_s_words(console: Watched, staging: dict[str, Any], slipway: Run) -> None:
    assert slipway("release", "web", "staging", "-m", "console: locked").returncode == 0
    release = releases(slipway, "web", "staging")[0]["id"]
    # Someone else's rollout holds web's deploy lock while it watches its alarms (a long bake).
    holding = api(
        staging,
        "POST",
        "/apps/web/envs/staging/deploys",
        {"release": release, "strategy": {"canary": False, "batch_percent": 100, "bake_seconds": 600}},
    )
    open_page(console, staging["url"] + f"/#/apps/web/releases/{release}", "releasePage")
    console.page.locator("#deploy-form").get_by_role("button", name=f"Deploy {release}").click()
    notice = console.page.locator("#notice.bad")
    expect(notice).to_contain_text("cannot deploy web in staging")
    expect(notice).to_contain_text(staging["user"])  # who holds it
    console.shot("refused")
    # The refusal changed nothing: the holder's rollout goes on; cancelled, it rolls back and ends.
    open_page(console, staging["url"] + f"/#/apps/web/deploys/{holding['id']}", "deployPage")
    expect(console.page.locator("#deploy .facts dd").first).to_have_text("RUNNING")
    api(staging, "POST", f"/apps/web/envs/staging/deploys/{holding['id']}/cancel", {})
    expect(console.page.locator("#deploy .facts dd").first).to_have_text("FAILED", timeout=WAIT_MS)
    # The failed call is the page's to show, not an error of the page.
    console.problems = [p for p in console.problems if "409" not in p]
    console.assert_clean()


def test_cycle_one_instance(console: Watched, staging: dict[str, Any]) -> None:
    before = api(staging, "GET", "/apps/billing/envs/staging/status")["instances"]
    victim = before[0]["id"]
    open_page(console, staging["url"] + "/#/apps/billing", "appPage")
    console.page.locator(f"tr[data-instance={victim}]").get_by_role("button", name="Cycle").click()
    expect(console.page.locator("#notice")).to_have_text(f"{victim} is being replaced.")
    # The status refreshes by itself: the replacement appears, the victim goes.
    expect(console.page.locator(f"tr[data-instance={victim}]")).to_have_count(0, timeout=WAIT_MS)
    expect(console.page.locator("#instances tbody tr")).to_have_count(len(before), timeout=WAIT_MS)
    console.shot("cycled-instance")
    console.assert_clean()


def test_cycle_the_fleet(console: Watched, staging: dict[str, Any]) -> None:
    open_page(console, staging["url"] + "/#/apps/billing", "appPage")
    console.page.get_by_role("button", name="Cycle all instances").click()
    expect(console.page.locator("body[data-page=cyclePage]")).to_be_attached()
    refresh = console.page.url.rsplit("/", 1)[1]
    # The page follows the refresh live to its end (it polls every 3 s): once the API says it ended,
    # the page says so too, with its final progress. (Comparing a moment of each raced the refresh.)
    deadline = time.monotonic() + 120
    shown = api(staging, "GET", f"/apps/billing/envs/staging/cycle/{refresh}")
    while shown["status"] in ("Pending", "InProgress", "Cancelling", "RollbackInProgress", "Baking"):
        assert time.monotonic() < deadline, f"the fleet's cycle did not end: {shown}"
        time.sleep(0.5)
        shown = api(staging, "GET", f"/apps/billing/envs/staging/cycle/{refresh}")
    expect(console.page.locator("#cycle .facts dd").first).to_have_text(shown["status"], timeout=10_000)
    expect(console.page.locator("#cycle [role=progressbar]")).to_have_attribute(
        "aria-valuenow", str(shown["percent"]), timeout=10_000
    )
    console.shot("cycle")
    console.assert_clean()


def test_usable_on_a_phone(browser: Any, staging: dict[str, Any]) -> None:
    context = browser.new_context(
        http_credentials={"username": staging["user"], "password": PASSWORD},
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    split = urlsplit(staging["url"])
    phone = Watched(context.new_page(), f"{split.scheme}://{split.netloc}")
    for fragment, page_name, shot in (("", "appsPage", "phone-apps"), ("#/apps/web", "appPage", "phone-app")):
        open_page(phone, staging["url"] + "/" + fragment, page_name)
        # Nothing wider than the screen: wide tables scroll inside their own box.
        assert phone.page.evaluate("document.documentElement.scrollWidth") <= 390
        phone.shot(shot)
    phone.assert_clean()
    context.close()
