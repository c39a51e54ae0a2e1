"""The env file parser and the systemd EnvironmentFile renderer."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slipway_release.envfile import (
    MAX_ASSIGNMENT_BYTES,
    EnvFileError,
    check_carriable,
    parse_env,
    render_env,
    render_environment_file,
)

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True).filter(lambda n: n != "PORT")
# Any text an environment can hold: no NUL, no lone surrogates (not UTF-8).
values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=60)


@given(st.dictionaries(names, values, max_size=8))
def test_any_carriable_mapping_round_trips_through_the_canonical_form(mapping):
    assert parse_env(render_env(mapping)) == mapping


@given(values)
def test_double_quoted_values_with_escapes_parse_as_a_shell_would(value):
    escaped = "".join("\\" + c if c in '$`"\\' else c for c in value)
    assert parse_env(f'export A="{escaped}"\n') == {"A": value}


def test_shell_forms():
    text = (
        "# comment\n"
        "\n"
        "export PLAIN=value\n"
        "NO_EXPORT=1\n"
        "SINGLE='it'\\''s $HOME'\n"
        'DOUBLE="a \\"b\\" \\$c \\\\ \\n"\n'
        "MULTI='line one\n"
        "line two'\n"
        "CONT=abc\\\n"
        "def\n"
        "HASH=a#b   # trailing comment\n"
        "EMPTY=\n"
        "MIXED='x y'\"z\"w\n"
    )
    assert parse_env(text) == {
        "PLAIN": "value",
        "NO_EXPORT": "1",
        "SINGLE": "it's $HOME",
        "DOUBLE": 'a "b" $c \\ \\n',
        "MULTI": "line one\nline two",
        "CONT": "abcdef",
        "HASH": "a#b",
        "EMPTY": "",
        "MIXED": "x yzw",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("A=$HOME\n", "line 1: A: unquoted '$' would expand a variable"),
        ("A=`id`\n", "unquoted '`' would run a command"),
        ('A="$(id)"\n', "'$' inside double quotes would expand a variable"),
        ("A=one two\n", "the value is followed by 'two'"),
        ("A=x;rm -rf /\n", "unquoted ';' would end the command"),
        ("A=x|y\n", "would start a pipeline"),
        ("A=~/x\n", "may expand to a home directory"),
        ("A=1\r\n", "carriage return"),
        ("A='open\n", "single quote is never closed"),
        ('A="open\n', "double quote is never closed"),
        ("A=1\nB=2\nA=3\n", "line 3: A is already set on line 1"),
        ("1A=x\n", "expected 'export NAME=value'"),
        ("export\n", "expected 'export NAME=value'"),
        ("A=x\\", "ends after a backslash"),
        ("A=\x00\n", "NUL byte"),
    ],
)
def test_refuses_what_a_shell_would_not_read_as_a_literal(text, message):
    with pytest.raises(EnvFileError) as caught:
        parse_env(text)
    assert message in str(caught.value)


def test_environment_file_escapes_exactly_what_systemd_unescapes():
    text = render_environment_file({"A": 'q"b\\d$e`f', "B": "two\nlines", "C": "tab\tand 'single'"})
    assert text == (
        "# Written by the Slipway deploy agent from the release env file.\n"
        'A="q\\"b\\\\d\\$e\\`f"\n'
        'B="two\nlines"\n'
        "C=\"tab\tand 'single'\"\n"
    )


def test_check_carriable_accepts_the_kernel_limit_and_refuses_beyond():
    fits = "x" * (MAX_ASSIGNMENT_BYTES - len("K=") - 1)
    check_carriable({"K": fits})
    with pytest.raises(EnvFileError, match="Linux passes at most"):
        check_carriable({"K": fits + "x"})


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"PORT": "80"}, "the platform assigns itself"),
        ({"A": "\ud800"}, "not valid UTF-8"),
        ({"A-B": "1"}, "not a valid variable name"),
        ({f"K{i}": "x" * 100_000 for i in range(11)}, "keep the environment under"),
    ],
)
def test_check_carriable_refuses(mapping, message):
    with pytest.raises(EnvFileError, match=message):
        check_carriable(mapping)
