"""/etc/slipway/runtimes.json: discovered by running interpreters, read back by build and deploy."""

import json
import os

import pytest

from slipway_release.runtimes import (
    Offer,
    RuntimesError,
    describe,
    discover,
    install_shims,
    load_runtimes,
    parse_runtimes,
    render_runtimes,
    shim_commands,
)


def fake_system(tmp_path, interpreters):
    """Files standing in for interpreters, and a runner answering as each would."""
    answers = {}
    for name, answer in interpreters.items():
        path = tmp_path / "usr" / "bin" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        answers[str(path)] = answer

    def run(argv):
        return answers.get(argv[0])

    return tmp_path / "usr" / "bin", run


def test_discovery_on_amazon_linux_2023_shapes(tmp_path):
    bin_dir, run = fake_system(
        tmp_path,
        {
            "python3": None,  # the system's 3.9 without pip: not offered
            "python3.9": None,
            "python3.11": "3.11.12",
            "python3.11-config": "3.11.12",
            "python3.12": "3.12.10",
            "python3.13": "3.13.3",
            "node-20": "v20.19.1",
            "npm-20": None,
            "node-22": "v22.15.0",
            "npm-22": None,
            "node": "v22.15.0",  # alternatives' link to node-22, without an npm beside it
        },
    )
    offers = discover(
        [f"{bin_dir}/python3", f"{bin_dir}/python3.[0-9]*"],
        [f"{bin_dir}/node", f"{bin_dir}/node-[0-9]*"],
        run=run,
        root="/opt/r",
    )
    assert sorted((o.name, o.line, o.version, os.path.basename(o.path)) for o in offers) == [
        ("node", "20", "20.19.1", "node-20"),
        ("node", "22", "22.15.0", "node-22"),
        ("python", "3.11", "3.11.12", "python3.11"),
        ("python", "3.12", "3.12.10", "python3.12"),
        ("python", "3.13", "3.13.3", "python3.13"),
    ]
    assert {o.bin for o in offers if o.name == "node"} == {"/opt/r/node-20/bin", "/opt/r/node-22/bin"}


def test_discovery_on_debian_12_shapes_one_offer_per_line(tmp_path):
    bin_dir, run = fake_system(
        tmp_path, {"python3": "3.11.2", "python3.11": "3.11.2", "node": "v18.19.0", "npm": None, "nodejs": "x"}
    )
    offers = discover([f"{bin_dir}/python3", f"{bin_dir}/python3.[0-9]*"], [f"{bin_dir}/node"], run=run, root="/opt/r")
    assert [(o.name, o.line, os.path.basename(o.path)) for o in offers] == [
        ("python", "3.11", "python3"),
        ("node", "18", "node"),
    ]
    text = render_runtimes(offers)
    assert json.loads(text) == {
        "node": {"18": {"bin": "/opt/r/node-18/bin", "path": f"{bin_dir}/node", "version": "18.19.0"}},
        "python": {"3.11": {"bin": "/opt/r/python-3.11/bin", "path": f"{bin_dir}/python3", "version": "3.11.2"}},
    }
    assert describe(parse_runtimes(text.encode())) == "python 3.11 (3.11.2), node 18 (18.19.0)"


def test_shims_make_exactly_the_offers_commands(tmp_path):
    bin_dir, _ = fake_system(tmp_path, {"python3.12": None, "node-22": None, "npm-22": None, "npx-22": None})
    python = Offer("python", "3.12", "3.12.10", f"{bin_dir}/python3.12", str(tmp_path / "r/python-3.12/bin"))
    node = Offer("node", "22", "22.15.0", f"{bin_dir}/node-22", str(tmp_path / "r/node-22/bin"))
    (tmp_path / "r/ruby-3/bin").mkdir(parents=True)
    install_shims([python, node], str(tmp_path / "r"))
    install_shims([python, node], str(tmp_path / "r"))  # converges
    assert sorted(os.listdir(tmp_path / "r")) == ["node-22", "python-3.12"]
    assert os.readlink(tmp_path / "r/python-3.12/bin/python") == f"{bin_dir}/python3.12"
    assert os.readlink(tmp_path / "r/node-22/bin/npm") == f"{bin_dir}/npm-22"
    assert (tmp_path / "r/python-3.12/bin/pip").read_text() == f'#!/bin/sh\nexec {bin_dir}/python3.12 -m pip "$@"\n'
    assert set(shim_commands(python)) == {"python", "python3", "python3.12", "pip", "pip3", "pip3.12"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"{", "is not valid JSON"),
        (b'{"ruby": {}}', "must be an object with python and/or node"),
        (b'{"python": {"3.12": {"version": "3.11.2", "path": "/p", "bin": "/b"}}}', "python 3.12 must be"),
        (b'{"python": {"3.11": "/usr/bin/python3.11"}}', "python 3.11 must be"),
        (b'{"node": {"18": {"version": "18.1.0", "path": "node", "bin": "/b"}}}', "node 18 must be"),
    ],
)
def test_parse_errors(text, message):
    with pytest.raises(RuntimesError, match=message):
        parse_runtimes(text)


def test_missing_file_says_to_provision(tmp_path):
    with pytest.raises(RuntimesError, match=r"does not exist: this image offers no runtimes; run image/provision.sh"):
        load_runtimes(str(tmp_path / "runtimes.json"))
