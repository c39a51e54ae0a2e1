"""health_check.codes: the load balancer's matcher syntax, parsed by one function."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slipway_release.health import DEFAULT_CODES, HealthCodesError, describe, parse_codes


@pytest.mark.parametrize(
    ("text", "codes"),
    [
        ("200", {200}),
        ("200,302", {200, 302}),
        ("200-204", {200, 201, 202, 203, 204}),
        ("200-202,302,404", {200, 201, 202, 302, 404}),
        ("499", {499}),
    ],
)
def test_matcher_texts(text, codes):
    assert parse_codes(text) == codes


def test_default_is_200_only():
    assert parse_codes(DEFAULT_CODES) == {200}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "are empty"),
        ("200,", "'' is not a status or a range"),
        ("200, 302", "' 302' is not a status or a range"),
        ("2xx", "'2xx' is not a status or a range"),
        ("20", "'20' is not a status"),
        ("199", "199 is outside 200-499"),
        ("200-500", "500 is outside 200-499"),
        ("302-200", "must go from low to high"),
        ("200-200", "must go from low to high"),
        ("200,200", "200 is named twice"),
        ("200-299,204", "204 is named twice"),
        ("2" * 101, "longer than 100"),
    ],
)
def test_bad_matchers_name_the_part(text, message):
    with pytest.raises(HealthCodesError, match="health check codes") as caught:
        parse_codes(text)
    assert message in str(caught.value)


@given(st.sets(st.integers(200, 499), min_size=1, max_size=20))
def test_describe_reads_back(codes):
    text = describe(frozenset(codes))
    assert parse_codes(text) == codes
    assert len(text.split(",")) <= len(codes)
