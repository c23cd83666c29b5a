"""`require(component, ...)`: what a test needs, asked of `qsgw doctor`'s checks.

A missing component skips the test with the doctor's finding, except under the
environment variable `CI`: there, a component that `make setup` installs makes
the test FAIL, so no skip hides a missing install step. What no setup can give
(kernel modules, root, a network namespace kernel) still skips, and says so.
liboqs is installed by setup too, but is still pending (gateway.doctor.PENDING_SETUP),
so it skips with its reason until setup builds it.
"""

from __future__ import annotations

import os

import pytest

from gateway import doctor
from gateway.doctor_finding import Finding

_cache: dict[str, list[Finding]] = {}


def findings(component: str) -> list[Finding]:
    """The doctor's findings for one component, checked once per test run."""
    if component not in _cache:
        _cache[component] = list(doctor.component_findings(component))
    return _cache[component]


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def require(*components: str) -> None:
    """Skip (or under CI, fail) unless every component is present."""
    for component in components:
        missing = [f for f in findings(component) if f.status == "missing"]
        if not missing:
            continue
        what = "; ".join(str(f) for f in missing)
        setup_gaps = doctor.setup_gaps(missing)
        if setup_gaps and in_ci():
            pytest.fail(f"`make setup` should have installed {component}: {what}",
                        pytrace=False)
        if setup_gaps:
            pytest.skip(f"{component} missing ({what}); `make setup` installs it",
                        allow_module_level=True)
        if any(f.component in doctor.PENDING_SETUP for f in missing):
            pytest.skip(f"{component} missing ({what}); setup does not build it yet",
                        allow_module_level=True)
        pytest.skip(f"{component} missing, and no setup can install it here: {what}",
                    allow_module_level=True)
