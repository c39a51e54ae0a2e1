"""The build program on this machine, with its own runtimes (this Python, this node): every path
that needs no package registry. Builds that install from PyPI and npm run on an instance
(test_build_e2e.py)."""

import io
import json
import os
import shutil
import sys
import tarfile

import pytest
from instance_harness import tarball
from slipway_build.builder import main, rewrite_shebangs, tool_error

from slipway_release.archive import scan
from slipway_release.build import BUILD_MANIFEST, parse_build_manifest
from slipway_release.runtimes import discover, install_shims, render_runtimes

NODE = shutil.which("node")


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory):
    """runtimes.json offering this machine's python (and node, if any) through shims."""
    root = tmp_path_factory.mktemp("runtimes")
    offers = discover([os.path.realpath(sys.executable)], [NODE] if NODE else [], root=str(root / "shims"))
    install_shims(offers, str(root / "shims"))
    path = root / "runtimes.json"
    path.write_text(render_runtimes(offers))
    return path, {offer.name: offer for offer in offers}


def build(tmp_path, runtimes, files, capsys, extra=()):
    source = tmp_path / "source.tar.gz"
    source.write_bytes(tarball(files))
    slug = tmp_path / "slug.tar.gz"
    argv = ["--source", str(source), "--output", str(slug), "--runtimes", str(runtimes[0]), *extra]
    code = main(argv, environ={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    out, err = capsys.readouterr()
    result = json.loads(out.strip().splitlines()[-1]) if code != 2 else None
    return code, out, err, result, slug


def test_procfile_app_is_slugged_as_is_with_its_manifest(tmp_path, runtimes, capsys):
    files = {"Procfile": "web: ./serve.sh\nbuild: echo compiled > assets.txt\n", "serve.sh": "#!/bin/sh\n"}
    code, out, err, result, slug = build(tmp_path, runtimes, files, capsys)
    assert code == 0, out + err
    assert "-----> Procfile app detected" in out and "-----> Running build command: echo compiled" in out
    assert err == ""
    assert result["result"] == "built" and result["kind"] == "procfile" and result["runtime"] is None
    assert result["slug_size"] == slug.stat().st_size
    with open(slug, "rb") as stream:
        scanned = scan(stream, 10**9, read={BUILD_MANIFEST: 65536}, what="the slug")
    manifest = parse_build_manifest(scanned.files[BUILD_MANIFEST])
    assert manifest.kind == "procfile" and manifest.runtime is None and manifest.path == ()
    assert manifest.source_sha256 == result["source_sha256"]
    assert manifest.raw["build_command"] == "echo compiled > assets.txt"
    with tarfile.open(slug) as tar:
        assert tar.extractfile("assets.txt").read() == b"compiled\n"
        assert tar.getmember("serve.sh").mode & 0o111


def test_python_app_asking_for_an_absent_version_fails_in_one_line(tmp_path, runtimes, capsys):
    files = {"requirements.txt": "", ".python-version": "3.14\n", "Procfile": "web: python app.py\n"}
    code, _out, err, result, slug = build(tmp_path, runtimes, files, capsys)
    offered = runtimes[1]["python"].line
    assert code == 1
    assert err == f"build: Python 3.14 requested in .python-version; this platform offers {offered}\n"
    assert result["result"] == "failed" and result["error"] == err[len("build: ") : -1]
    assert not slug.exists()


def test_pip_failure_names_pips_last_error(tmp_path, runtimes, capsys):
    files = {"requirements.txt": "--no-index\nno-such-package-slipway==1.0\n", "Procfile": "web: python app.py\n"}
    code, out, err, _result, _ = build(tmp_path, runtimes, files, capsys)
    assert code == 1
    assert err.startswith("build: pip install -r requirements.txt failed: ERROR: ")
    assert "no-such-package-slipway" in err and err.count("\n") == 1
    assert "       ERROR: " in out, "pip's own output is shown, indented"


def test_failing_build_command_is_named_with_its_status(tmp_path, runtimes, capsys):
    files = {"Procfile": "web: ./serve.sh\nbuild: echo compiling; exit 3\n", "serve.sh": "#!/bin/sh\n"}
    code, out, err, _result, slug = build(tmp_path, runtimes, files, capsys)
    assert code == 1
    assert err == "build: command 'echo compiling; exit 3' exited 3\n"
    assert "       compiling\n" in out
    assert not slug.exists()


def test_python_app_without_dependencies_gets_the_runtime_on_its_build_path(tmp_path, runtimes, capsys):
    files = {
        "requirements.txt": "",
        "Procfile": "web: python app.py\nbuild: python -c 'import sys; print(sys.version_info[:2])' > version.txt\n",
    }
    code, out, err, _result, slug = build(tmp_path, runtimes, files, capsys, extra=["--cache", str(tmp_path / "c")])
    assert code == 0, out + err
    offer = runtimes[1]["python"]
    assert f"-----> Installing python {offer.line} ({offer.version}; the newest offered)" in out
    with tarfile.open(slug) as tar:
        assert tar.extractfile("version.txt").read().decode().strip() == str(sys.version_info[:2])
        manifest = json.loads(tar.extractfile(BUILD_MANIFEST).read())
    assert manifest["runtime"] == {"name": "python", "version": offer.version}
    assert manifest["env"] == {"PATH": [".slipway/python/bin"], "PYTHONPATH": [".slipway/python"]}


def test_packages_are_reused_for_the_same_requirements_only(tmp_path):
    from slipway_build.builder import KEEP_PACKAGE_SETS, packages_key, restore_packages, save_packages

    cache, target = str(tmp_path / "cache"), tmp_path / "app" / ".slipway" / "python"
    target.mkdir(parents=True)
    (target / "flask").mkdir()
    (target / "flask" / "__init__.py").write_text("x = 1\n")
    (target / "bin").mkdir()
    (target / "bin" / "flask").symlink_to("../flask/__init__.py")
    key = packages_key("3.11.2", "23.0.1", b"flask==3.0.3\n")
    assert key != packages_key("3.11.2", "23.0.1", b"flask==3.0.2\n") != packages_key("3.12.1", "23.0.1", b"")
    assert not restore_packages(cache, key, str(tmp_path / "elsewhere"))
    save_packages(cache, key, str(target))
    restored = tmp_path / "next" / ".slipway" / "python"
    assert restore_packages(cache, key, str(restored))
    assert (restored / "flask" / "__init__.py").read_text() == "x = 1\n"
    assert os.readlink(restored / "bin" / "flask") == "../flask/__init__.py"
    for number in range(KEEP_PACKAGE_SETS + 2):
        save_packages(cache, packages_key("3.11.2", "23.0.1", str(number).encode()), str(target))
    assert len(os.listdir(os.path.join(cache, "python-packages"))) == KEEP_PACKAGE_SETS


def test_node_app_without_lock_file(tmp_path, runtimes, capsys):
    files = {"package.json": json.dumps({"name": "x", "dependencies": {}}), "Procfile": "web: node index.js\n"}
    code, _out, err, result, _ = build(tmp_path, runtimes, files, capsys)
    assert code == 1
    assert err.startswith("build: package.json has no package-lock.json beside it; run `npm install` and commit")
    assert result["kind"] is None


def test_a_build_that_leaves_what_the_agent_would_refuse_fails(tmp_path, runtimes, capsys):
    files = {"Procfile": "web: ./serve.sh\nbuild: ln -s /etc config\n", "serve.sh": "#!/bin/sh\n"}
    code, _out, err, _result, slug = build(tmp_path, runtimes, files, capsys)
    assert code == 1
    assert err.startswith("build: the built app cannot be a slug: symlink 'config' points to the absolute path '/etc'")
    assert not slug.exists()


def test_source_must_not_hold_the_builds_own_directory(tmp_path, runtimes, capsys):
    code, _, err, _, _ = build(tmp_path, runtimes, {"Procfile": "web: x\n", ".slipway/build.json": "{}"}, capsys)
    assert code == 1 and err == "build: the source holds .slipway/, which the build writes; remove it from the app\n"


def test_unsafe_source_is_refused(tmp_path, runtimes, capsys):
    link = tarfile.TarInfo("etc")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc"
    source = tmp_path / "source.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.addfile(link)
    source.write_bytes(buffer.getvalue())
    code = main(["--source", str(source), "--output", str(tmp_path / "s.tgz"), "--runtimes", str(runtimes[0])], {})
    _, err = capsys.readouterr()
    assert code == 1 and err.startswith("build: refusing the source: symlink 'etc' points to the absolute path")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: --source, --output"),
        (["--source", "/nonexistent.tgz", "--output", "/tmp/x.tgz"], "--source /nonexistent.tgz: no such file"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys):
    assert main(argv, {}) == 2
    _, err = capsys.readouterr()
    assert err.startswith(f"build: {message}") and "usage: build --source" in err and err.count("\n") == 1


def test_shebangs_point_at_the_runtime_on_path(tmp_path):
    (tmp_path / "gunicorn").write_bytes(b"#!/tmp/build-123/python\nimport sys\n")
    (tmp_path / "long").write_bytes(
        b"#!/bin/sh\n'''exec' /very/long/path/bin/python3.11 \"$0\" \"$@\"\n' '''\nimport sys\n"
    )
    (tmp_path / "shell").write_bytes(b"#!/bin/sh\necho hi\n")
    assert rewrite_shebangs(str(tmp_path), "3.11") == 2
    assert (tmp_path / "gunicorn").read_bytes() == b"#!/usr/bin/env python3.11\nimport sys\n"
    assert (tmp_path / "long").read_bytes() == b"#!/usr/bin/env python3.11\nimport sys\n"
    assert (tmp_path / "shell").read_bytes() == b"#!/bin/sh\necho hi\n"


def test_tool_error_lines():
    pip = ["Collecting x", "ERROR: Could not find a version", "ERROR: No matching distribution found for x==1"]
    assert tool_error(pip, "ERROR:") == "ERROR: No matching distribution found for x==1"
    npm = [
        "npm ERR! code EUSAGE",
        "npm ERR! ",
        "npm ERR! `npm ci` can only install packages when your package.json and package-lock.json are in sync.",
        "npm ERR! A complete log of this run can be found in:",
        "npm ERR!     /root/.npm/_logs/2025-01-01T00_00_00_000Z-debug-0.log",
    ]
    assert tool_error(npm, "npm ERR!", first=True).startswith("npm ERR! `npm ci` can only install packages")
    assert tool_error(["", "last words", ""], "ERROR:") == "last words"
