"""Attacks from a configured peer's own address, on real daemons in namespaces.

The attacker (qsgw_lab.floodlab) runs in the initiator's namespace, so its
connections come from the very address the responder allows for that peer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.daemon.admission import REFUSAL_REASONS
from qsgw_lab.sitelab import CONTROL_PORT, SiteLab

from .conftest import site_lab, two_sites

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def atklab() -> Iterator[SiteLab]:
    with site_lab("qsatk") as sites:
        yield sites

def _epoch(sites: SiteLab, site: object, peer: str) -> int:
    st = sites.peer_status(site, peer)  # type: ignore[arg-type]
    return int(st["epoch"]) if st else 0


def test_a_flood_from_the_peer_address_does_not_stop_its_epochs(atklab: SiteLab) -> None:
    a, b = two_sites(atklab, rekey=2.0, lifetime=12.0)
    assert atklab.wait_for(lambda: _epoch(atklab, b, a.gateway_id) >= 2, 60)
    assert b.process is not None
    pid = b.process.pid
    lines0 = len(b.log_path.read_bytes().splitlines())
    e0 = _epoch(atklab, b, a.gateway_id)
    seconds = 16.0
    attacker = atklab.lab.popen(a.name, [
        sys.executable, "-m", "qsgw_lab.floodlab",
        "--target", f"{b.underlay_ip}:{CONTROL_PORT}", "--claim", a.gateway_id,
        "--responder", b.gateway_id, "--identity-dir", str(a.dir / "identity"),
        "--seconds", str(seconds), "--rate", "30", "--holders", "8",
    ], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    max_fds = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        max_fds = max(max_fds, len(list(Path(f"/proc/{pid}/fd").iterdir())))
        time.sleep(0.5)
    out, err = attacker.communicate(timeout=30)
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["forged_inits"] > 50 and stats["replayed_inits"] > 20, (stats, err)
    doc = atklab.status(b)
    assert doc is not None
    refused = doc["control_refused"]
    assert refused["bad_signature"] > 0 and refused["replay"] > 0, refused
    assert "other" in refused and all(isinstance(k, str) for k in refused)
    # A fixed set of keys, whatever the attacker sent (no key made from its input).
    assert set(refused) == {*REFUSAL_REASONS, "other"}, sorted(refused)
    # The real peer kept rekeying (every 2 s) through the flood.
    assert _epoch(atklab, b, a.gateway_id) >= e0 + 4
    st = atklab.peer_status(b, a.gateway_id)
    assert st is not None and st["state"] == "ok", st
    assert max_fds <= 64, max_fds
    lines = len(b.log_path.read_bytes().splitlines()) - lines0
    assert lines < 300, f"{lines} log lines for {stats['connections']} attack connections"
    assert doc["control_flood"] is True  # one alarm for the whole flood
