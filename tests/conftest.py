"""Suite-wide settings: hypothesis profiles, and SIGTERM unwinding like Ctrl-C."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from qsgw_lab.sigterm import unwind_on_sigterm

# `make test` runs the default profile; `make test-slow` (QSGW_HYPOTHESIS_PROFILE=slow)
# is the long fuzzing mode (>= 100,000 examples for the decoders).
settings.register_profile("default", max_examples=200, deadline=None)
settings.register_profile(
    "slow",
    max_examples=100_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("QSGW_HYPOTHESIS_PROFILE", "default"))


def pytest_configure(config: pytest.Config) -> None:
    """A run ended with SIGTERM (a CI timeout, `timeout`, `kill`) unwinds like Ctrl-C:
    pytest tears the fixtures down and the labs remove their namespaces and processes.
    Without this, SIGTERM ends pytest where it stands and leaves them behind."""
    unwind_on_sigterm()
