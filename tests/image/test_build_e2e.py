"""Build, then deploy, on real systemd: the image's build program turns the fixture apps under
apps/ into slugs inside the session's instance (pip and npm reach their registries), the
publisher writes them as releases, and the agent deploys them until its own health check
answers HTTP 200. Builds that fail say why in one line."""

from __future__ import annotations

import copy
import io
import json
import tarfile
import time
from pathlib import Path

import pytest
from instance_harness import Publisher, get, slug_build, tarball

from local.instance import BuildRun, build, free_port, missing_prerequisites, source_archive

pytestmark = pytest.mark.e2e
if missing_prerequisites():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=f"instance e2e {missing_prerequisites()}")]

APPS = Path(__file__).resolve().parent / "apps"
DEPLOY = "/home/deploy/bin/deploy"
ENV = "test"
BUILD_TIMEOUT = 600


def build_in(world, source: bytes, name: str) -> BuildRun:
    started = time.monotonic()
    run = build(world["instance"], source, name=name, env=world["registry_env"], timeout=BUILD_TIMEOUT)
    print(f"{name}: built in {time.monotonic() - started:.1f}s, result {run.result}")
    return run


def ship(world, app: str, run: BuildRun, source: bytes, *, build_override=None) -> tuple[int, str, str, dict, int]:
    """Publish the slug as the app's next release and deploy it; (code, out, err, result, port)."""
    assert run.code == 0, run.stdout[-4000:] + run.stderr
    publishers = world.setdefault("publishers", {})
    if app not in publishers:
        publishers[app] = (Publisher(world["client"], app, ENV), free_port())
    publisher, port = publishers[app]
    release_id = f"r{len(publisher.published) + 1}"
    url = publisher.publish(release_id, source, "", port=port, slug=run.slug, build=build_override, timeout=30)
    result = world["instance"].run([DEPLOY, url], env=world["env"], check=False, timeout=300)
    last = json.loads(result.stdout.strip().splitlines()[-1])
    return result.returncode, result.stdout, result.stderr, last, port


def slug_names(slug: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(slug)) as tar:
        return set(tar.getnames())


def test_flask_app_with_gunicorn_builds_and_serves(instance_world):
    world = instance_world
    source = source_archive(APPS / "flask")
    run = build_in(world, source, "flask")
    assert run.code == 0, run.stdout[-4000:] + run.stderr
    assert "-----> Python app detected" in run.stdout
    assert "-----> Installing python 3.11 (3.11." in run.stdout and "3.11 requested in .python-version" in run.stdout
    assert "       Successfully installed" in run.stdout, "pip's output is shown, indented"
    assert (run.result["result"], run.result["kind"]) == ("built", "python")
    assert run.result["slug_size"] == len(run.slug)
    manifest = slug_build(run.slug)
    assert manifest["runtime"]["name"] == "python" and manifest["runtime"]["version"].startswith("3.11.")
    assert manifest["dependencies"] >= 7 and manifest["tools"]["pip"]
    assert ".slipway/python/bin/gunicorn" in slug_names(run.slug)
    # The same requirements.txt again: the packages come from the build cache, not from PyPI.
    again = build_in(world, source, "flask-again")
    assert again.code == 0, again.stdout[-4000:] + again.stderr
    assert "-----> Using the packages installed for the same requirements.txt on python 3.11." in again.stdout
    assert "Collecting" not in again.stdout and slug_build(again.slug)["dependencies"] == manifest["dependencies"]
    assert slug_names(again.slug) == slug_names(run.slug)

    code, out, err, result, port = ship(world, "flaskapp", run, source)
    assert code == 0, out + err
    assert result["result"] == "deployed"
    assert "downloaded" in out and "of slug (python app on python 3.11." in out
    assert get(port) == (200, "hello from flask 3.0.3\n")
    where = json.loads(get(port, "/where")[1])
    release = "/home/deploy/apps/flaskapp/releases/r1/app"
    assert where["cwd"] == release
    # The slug's own packages, from its release's directory (a unit names its release, never current).
    assert where["flask"] == f"{release}/.slipway/python/flask/__init__.py"
    assert where["python"] == manifest["runtime"]["version"]
    assert where["home"] == "/home/deploy/apps/flaskapp/home", "HOME is the app's writable directory"
    assert where["code_writable"] is False, "apps cannot change their release's code"
    assert where["path"].startswith(f"{release}/.slipway/python/bin:/opt/slipway/runtimes/")


def test_django_app_collects_static_at_build_and_migrates_at_release(instance_world):
    world = instance_world
    source = source_archive(APPS / "django")
    run = build_in(world, source, "django")
    assert run.code == 0, run.stdout[-4000:] + run.stderr
    assert "3.11.2 requested in runtime.txt" in run.stdout
    assert "-----> Running build command: python manage.py collectstatic --noinput" in run.stdout
    assert "static files copied to" in run.stdout
    assert "staticfiles/admin/css/base.css" in slug_names(run.slug), "collectstatic's output is in the slug"
    assert slug_build(run.slug)["build_command"] == "python manage.py collectstatic --noinput"

    code, out, err, _result, port = ship(world, "djangoapp", run, source)
    assert code == 0, out + err
    assert "-----> Running release phase: python manage.py migrate --noinput" in out
    assert "       Applying auth.0001_initial... OK" in out
    status, body = get(port)
    assert status == 200 and body.startswith("hello from django: ") and int(body.split()[3]) >= 10, body
    assert json.loads(get(port, "/health")[1])["database"] == "/home/deploy/apps/djangoapp/home/db.sqlite3"
    # The release phase's output is in the journal under <app>-release, as the failure line says.
    deadline = time.monotonic() + 10
    while True:
        journal = world["instance"].run(["journalctl", "--no-pager", "-o", "cat", "-t", "djangoapp-release"]).stdout
        if "Applying auth.0001_initial... OK" in journal or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "Applying auth.0001_initial... OK" in journal, journal[-2000:]


def test_express_app_with_its_lock_file_builds_and_serves(instance_world):
    world = instance_world
    source = source_archive(APPS / "express")
    run = build_in(world, source, "express")
    assert run.code == 0, run.stdout[-4000:] + run.stderr
    assert "-----> Node.js app detected" in run.stdout
    assert (
        "-----> Installing node 18 (18." in run.stdout and ">=18 requested in package.json engines.node" in run.stdout
    )
    assert "-----> Installing dependencies with npm 9." in run.stdout
    manifest = slug_build(run.slug)
    assert manifest["kind"] == "node" and manifest["env"]["PATH"] == ["node_modules/.bin"]
    assert "node_modules/express/package.json" in slug_names(run.slug)

    code, out, err, _result, port = ship(world, "expressapp", run, source)
    assert code == 0, out + err
    status, body = get(port)
    assert status == 200 and body.startswith("hello from express 4."), body
    where = json.loads(get(port, "/where")[1])
    assert where["node"] == f"v{manifest['runtime']['version']}"
    assert where["cwd"] == "/home/deploy/apps/expressapp/releases/r1/app"


def test_a_slug_built_for_a_runtime_this_instance_lacks_is_refused_before_anything_changes(instance_world):
    world = instance_world
    if "flaskapp" not in world.get("publishers", {}):
        pytest.skip("needs the Flask app deployed (test_flask_app_with_gunicorn_builds_and_serves)")
    publisher, port = world["publishers"]["flaskapp"]
    before = get(port)
    assert before is not None and before[0] == 200
    key = f"flaskapp/{ENV}/{publisher.published[-1]}/"
    slug = publisher.client.get_object(Bucket=publisher.bucket, Key=key + "slug.tar.gz")["Body"].read()
    source = publisher.client.get_object(Bucket=publisher.bucket, Key=key + "source.tar.gz")["Body"].read()
    elsewhere = copy.deepcopy(slug_build(slug))
    elsewhere["runtime"]["version"] = "3.13.3"
    run = BuildRun(0, "", "", {}, slug, 0.0)
    code, out, err, result, _ = ship(world, "flaskapp", run, source, build_override=elsewhere)
    release = publisher.published[-1]
    assert code == 1, out + err
    assert err == (
        f"deploy: FAILED: {release} not deployed: {release} was built for python 3.13 (3.13.3), which this instance "
        f"does not offer (it offers python 3.11); build it for an offered version or update the instance's base "
        f"image; {publisher.published[-2]} keeps running\n"
    )
    assert "download" in result["durations"] and "unpack" not in result["durations"]
    assert get(port) == before


def with_files(directory: Path, changes: dict[str, str | None]) -> bytes:
    """The fixture app's source with files replaced (text) or left out (None)."""
    files = {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    for name, text in changes.items():
        if text is None:
            files.pop(name, None)
        else:
            files[name] = text.encode()
    return tarball(files)


@pytest.mark.parametrize(
    ("name", "source", "line"),
    [
        (
            "unsupported-python",
            lambda: with_files(APPS / "flask", {".python-version": "3.14\n"}),
            "build: Python 3.14 requested in .python-version; this platform offers 3.11\n",
        ),
        (
            "unsupported-node",
            lambda: with_files(APPS / "express", {"package.json": json.dumps({"engines": {"node": "^22"}})}),
            "build: Node.js ^22 requested in package.json engines.node; this platform offers 18\n",
        ),
        (
            "failing-build-command",
            lambda: tarball({"Procfile": "web: ./serve.sh\nbuild: test -d assets\n", "serve.sh": "#!/bin/sh\n"}),
            "build: command 'test -d assets' exited 1\n",
        ),
        (
            "node-without-lock-file",
            lambda: with_files(APPS / "express", {"package-lock.json": None}),
            "build: package.json has no package-lock.json beside it; run `npm install` and commit package-lock.json "
            "so every build installs the same packages\n",
        ),
    ],
)
def test_builds_that_cannot_succeed_say_why_in_one_line(instance_world, name, source, line):
    run = build_in(instance_world, source(), name)
    assert run.code == 1, run.stdout + run.stderr
    assert run.stderr == line
    assert run.result["result"] == "failed" and f"build: {run.result['error']}\n" == line
    assert run.slug is None
