"""The gate for tests that need liboqs: `make setup` builds it, so under CI a miss fails."""

from __future__ import annotations

import os

import pytest

from gateway.crypto import oqs_provider


def require_liboqs() -> None:
    """Return when liboqs loads; otherwise fail under CI and skip elsewhere, saying why."""
    try:
        oqs_provider.load_oqs()
    except oqs_provider.OqsUnavailable as exc:
        reason = f"liboqs is not usable ({exc}); `make setup` builds and installs it"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def liboqs() -> None:
    require_liboqs()
