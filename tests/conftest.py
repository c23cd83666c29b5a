"""Suite-wide settings: hypothesis profiles and the root/namespace gate."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

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
