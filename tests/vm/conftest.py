"""The appliance image tests: `make image` (cached) once per run, and a lab per test."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from qsgw_lab.netns import NetnsLab, PrefixLock
from qsgw_lab.vm import REPO, image_dir
from qsgw_lab.vmsites import VmPair, env_prefix


@pytest.fixture(scope="session")
def image() -> Path:
    if os.geteuid() != 0:
        pytest.skip("the VM tests need root (taps, namespaces, mmdebstrap)")
    # The make target, so the test builds what CI builds (and finds it cached after).
    res = subprocess.run(["make", "-C", str(REPO), "image"], capture_output=True, text=True,
                         timeout=1800, check=False)
    if res.returncode != 0:
        pytest.fail(f"make image failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}",
                    pytrace=False)
    return image_dir()


@pytest.fixture
def pair(image: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[VmPair]:
    # QSGW_VM_KEEP=DIR keeps each test's disks, consoles and reports in DIR/<test>.
    keep = os.environ.get("QSGW_VM_KEEP")
    work = Path(keep) / request.node.name if keep else tmp_path
    with PrefixLock(env_prefix()), NetnsLab(prefix=env_prefix()) as lab:
        vms = VmPair(lab, work)
        try:
            yield vms
        finally:
            vms.close()
    if not keep:
        shutil.rmtree(tmp_path, ignore_errors=True)  # the disk images are large
