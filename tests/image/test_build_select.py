"""What kind of app a source is and which offered runtime it gets: pure, every request format."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from slipway_build.select import (
    Request,
    SelectError,
    choose,
    detect_kind,
    node_request,
    parse_range,
    python_request,
    satisfies,
)

from slipway_release.runtimes import Offer

AL2023 = {
    "python": {
        line: Offer("python", line, version, f"/usr/bin/python{line}", f"/opt/slipway/runtimes/python-{line}/bin")
        for line, version in (("3.11", "3.11.12"), ("3.12", "3.12.10"), ("3.13", "3.13.3"))
    },
    "node": {
        line: Offer("node", line, version, f"/usr/bin/node-{line}", f"/opt/slipway/runtimes/node-{line}/bin")
        for line, version in (("20", "20.19.1"), ("22", "22.15.0"))
    },
}
DEBIAN = {
    "python": {"3.11": Offer("python", "3.11", "3.11.2", "/usr/bin/python3", "/opt/slipway/runtimes/python-3.11/bin")},
    "node": {"18": Offer("node", "18", "18.19.0", "/usr/bin/node", "/opt/slipway/runtimes/node-18/bin")},
}


@pytest.mark.parametrize(
    ("files", "kind"),
    [
        ({"requirements.txt", "Procfile"}, "python"),
        ({"pyproject.toml"}, "python"),
        ({"requirements.txt", "package.json"}, "python"),
        ({"package.json", "package-lock.json", "Procfile"}, "node"),
        ({"Procfile", "app.sh"}, "procfile"),
    ],
)
def test_kind_detection(files, kind):
    assert detect_kind(files) == kind


def test_node_without_lock_file_is_refused_with_the_fix():
    with pytest.raises(SelectError, match=r"package.json has no package-lock.json beside it; run `npm install`"):
        detect_kind({"package.json", "Procfile"})


def test_nothing_to_build():
    with pytest.raises(SelectError, match="nothing to build"):
        detect_kind({"README.md"})


@given(
    st.sets(
        st.sampled_from(
            [
                "requirements.txt",
                "pyproject.toml",
                "package.json",
                "package-lock.json",
                "Procfile",
                "README.md",
                "runtime.txt",
            ]
        )
    )
)
def test_kind_detection_is_total_and_follows_the_precedence(files):
    try:
        kind = detect_kind(files)
    except SelectError:
        assert not files & {"requirements.txt", "pyproject.toml"}
        assert ("package.json" in files and "package-lock.json" not in files) or not files & {
            "package.json",
            "Procfile",
        }
        return
    if files & {"requirements.txt", "pyproject.toml"}:
        assert kind == "python"
    elif "package.json" in files:
        assert kind == "node"
    else:
        assert kind == "procfile"


@pytest.mark.parametrize(
    ("files", "request_"),
    [
        ({".python-version": "3.12\n"}, Request("python", "3.12", ".python-version")),
        ({".python-version": "# pyenv\n\n3.13.1\n"}, Request("python", "3.13.1", ".python-version")),
        ({"runtime.txt": "python-3.11.9\n"}, Request("python", "3.11.9", "runtime.txt")),
        ({".python-version": "3.12", "runtime.txt": "python-3.11.9"}, Request("python", "3.12", ".python-version")),
        ({}, Request("python", None, None)),
    ],
)
def test_python_request_files(files, request_):
    assert python_request(files) == request_


def test_runtime_txt_must_name_python():
    with pytest.raises(SelectError, match=r"runtime.txt says '3.11'; write the version as python-3.11"):
        python_request({"runtime.txt": "3.11"})


@pytest.mark.parametrize(
    ("request_", "offers", "chosen"),
    [
        (Request("python", None, None), AL2023, "3.13.3"),
        (Request("python", "3.12", ".python-version"), AL2023, "3.12.10"),
        (Request("python", "3.11.9", "runtime.txt"), AL2023, "3.11.12"),
        (Request("python", "3", ".python-version"), AL2023, "3.13.3"),
        (Request("python", "3.11", ".python-version"), DEBIAN, "3.11.2"),
        (Request("node", None, None), AL2023, "22.15.0"),
        (Request("node", ">=18", "package.json engines.node"), AL2023, "22.15.0"),
        (Request("node", "20.x", "package.json engines.node"), AL2023, "20.19.1"),
        (Request("node", "^20", "package.json engines.node"), AL2023, "20.19.1"),
        (Request("node", "~20.19", "package.json engines.node"), AL2023, "20.19.1"),
        (Request("node", ">= 18 < 22", "package.json engines.node"), AL2023, "20.19.1"),
        (Request("node", "18 - 20", "package.json engines.node"), AL2023, "20.19.1"),
        (Request("node", "18 || 22", "package.json engines.node"), AL2023, "22.15.0"),
        (Request("node", "*", "package.json engines.node"), DEBIAN, "18.19.0"),
        (Request("node", ">=18.0.0", "package.json engines.node"), DEBIAN, "18.19.0"),
    ],
)
def test_choose_the_newest_offer_meeting_the_request(request_, offers, chosen):
    assert choose(request_, offers).version == chosen


@pytest.mark.parametrize(
    ("request_", "offers", "line"),
    [
        (
            Request("python", "3.14", ".python-version"),
            AL2023,
            "Python 3.14 requested in .python-version; this platform offers 3.11, 3.12, 3.13",
        ),
        (
            Request("python", "3.9.18", "runtime.txt"),
            DEBIAN,
            "Python 3.9.18 requested in runtime.txt; this platform offers 3.11",
        ),
        (
            Request("node", ">=20", "package.json engines.node"),
            DEBIAN,
            "Node.js >=20 requested in package.json engines.node; this platform offers 18",
        ),
        (
            Request("node", "^18.20", "package.json engines.node"),
            DEBIAN,
            "Node.js ^18.20 requested in package.json engines.node; this platform offers 18",
        ),
        (Request("node", "lts", "package.json engines.node"), DEBIAN, "package.json engines.node: 'lts' is not"),
        (Request("python", "latest", ".python-version"), DEBIAN, ".python-version says 'latest'"),
        (Request("node", None, None), {"python": DEBIAN["python"]}, "Node.js is needed, but this platform offers no"),
    ],
)
def test_unmet_requests_are_one_line_naming_the_file_and_the_offers(request_, offers, line):
    with pytest.raises(SelectError) as caught:
        choose(request_, offers)
    assert str(caught.value).startswith(line)
    assert "\n" not in str(caught.value)


def test_node_request_reads_engines():
    assert node_request(json.dumps({"engines": {"node": ">=18"}})) == Request(
        "node", ">=18", "package.json engines.node"
    )
    assert node_request(json.dumps({"name": "x"})) == Request("node", None, None)
    with pytest.raises(SelectError, match=r"engines.node must be a version range"):
        node_request(json.dumps({"engines": {"node": 18}}))
    with pytest.raises(SelectError, match=r"package.json is not valid JSON"):
        node_request("{")


# Ranges, against node-semver's definitions --------------------------------------------------------

versions = st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 4))


def holds(text, version):
    return satisfies(version, parse_range(text))


@given(versions, versions)
def test_caret(bound, version):
    major, minor, patch = bound
    text = f"^{major}.{minor}.{patch}"
    if major:
        expected = bound <= version < (major + 1, 0, 0)
    elif minor:
        expected = bound <= version < (0, minor + 1, 0)
    else:
        expected = bound <= version < (0, 0, patch + 1)
    assert holds(text, version) == expected


@given(versions, versions)
def test_tilde_and_partials(bound, version):
    major, minor, patch = bound
    assert holds(f"~{major}.{minor}.{patch}", version) == (bound <= version < (major, minor + 1, 0))
    assert holds(f"~{major}.{minor}", version) == ((major, minor, 0) <= version < (major, minor + 1, 0))
    assert holds(f"{major}.x", version) == (version[0] == major)
    assert holds(f"{major}.{minor}", version) == (version[:2] == (major, minor))
    assert holds(f"{major}.{minor}.{patch}", version) == (version == bound)


@given(versions, versions)
def test_comparators(bound, version):
    major, minor, patch = bound
    full = f"{major}.{minor}.{patch}"
    assert holds(f">={full}", version) == (version >= bound)
    assert holds(f">{full}", version) == (version > bound)
    assert holds(f"<{full}", version) == (version < bound)
    assert holds(f"<={full}", version) == (version <= bound)
    assert holds(f">{major}", version) == (version >= (major + 1, 0, 0))
    assert holds(f"<={major}.{minor}", version) == (version < (major, minor + 1, 0))


@given(versions, versions, versions)
def test_hyphen_and_alternatives(low, high, version):
    text = f"{low[0]}.{low[1]}.{low[2]} - {high[0]}.{high[1]}.{high[2]}"
    assert holds(text, version) == (low <= version <= high)
    assert holds(f"{low[0]} - {high[0]}", version) == ((low[0], 0, 0) <= version < (high[0] + 1, 0, 0))
    assert holds(f"{low[0]}.x || {high[0]}.x", version) == (version[0] in (low[0], high[0]))


@pytest.mark.parametrize("text", ["lts", "18.0.0-rc.1", ">=", "^", "18 -", "1.2.3.4"])
def test_ranges_that_are_not(text):
    with pytest.raises(ValueError, match="is not a version range"):
        parse_range(text)
