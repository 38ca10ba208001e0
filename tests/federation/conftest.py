"""Shared fixtures of the federation tests: federation on, and a fake network for outbound HTTP."""

from __future__ import annotations

import pytest
import responses


@pytest.fixture(autouse=True)
def _federation_on(settings):
    settings.STIGMEM_FEDERATION_ENABLED = True
    # Fake peers have names that must not be looked up in DNS, or listen on 127.0.0.1: the SSRF
    # guard would refuse them. Tests of the guard itself turn this off.
    settings.STIGMEM_FEDERATION_ALLOW_PRIVATE = True


@pytest.fixture
def remote_http():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock
