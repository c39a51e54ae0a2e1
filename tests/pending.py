"""Tests that wait on the other half of a change, marked so that they fail loudly once it lands."""

import pytest

# Issue 9 (builds): release.json is schema version 2 (image/slipway_release/release.schema.json:
# the slug, the build manifest the publisher copies out of it, health_check.codes). The
# publisher (lambdas/slipway/releases.py) still writes version 1, which the schema refuses,
# so every publish answers 400 until it builds slugs. strict: each marked test fails as soon
# as publishing works again, so the mark is removed with the change that makes it work.
PUBLISHER_WRITES_V1 = pytest.mark.xfail(
    strict=True,
    reason="issue 9: the publisher still writes release.json version 1; the schema is version 2 (slug, build)",
)
