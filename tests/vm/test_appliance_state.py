"""The appliance's state: a safe state without a config, a read-only root, and what a
power cut keeps (config, system journal, the key journal: no QKD key_ID used twice)."""

from __future__ import annotations

import pytest

from qsgw_lab.vm import ApplianceVM, Report
from qsgw_lab.vmsites import VmPair, peer_of, wireguard_full

pytestmark = [pytest.mark.netns, pytest.mark.vm]

BOOT_S = 300.0


def _ready(rep: Report) -> bool:
    p = peer_of(rep)
    return rep["units"]["qsgw.service"] == "active" and p is not None and p["state"] == "ok"


def test_without_a_config_drive_it_stays_safe(pair: VmPair) -> None:
    vm = ApplianceVM(pair.lab, pair.ns, "gw-bare", pair.workdir, 9)
    pair.vms.append(vm)  # stopped by the pair's close
    vm.make_state_disk()
    vm.start()
    rep = vm.wait_report(lambda r: r["units"]["qsgw-provision.service"] == "active"
                         and r["units"]["nftables.service"] == "active", BOOT_S,
                         "provisioned or safe")
    assert rep["units"]["qsgw.service"] == "inactive", rep["units"]
    assert rep["psk_sha256"] == {} and rep["sas"].strip() == ""
    assert rep["mounts"]["/"].startswith("squashfs ro"), rep["mounts"]
    assert "SAFE STATE" in rep["console"]  # in the journal
    assert "SAFE STATE" in vm.console_text()  # and on the console


def _key_ids(reports: list[Report], into: dict[str, int]) -> None:
    """key_ID -> the epoch it keyed; fails on a key_ID seen with two epochs."""
    for rep in reports:
        p = peer_of(rep)
        if p is None or not p.get("epoch"):
            continue
        for key_id in p.get("qkd_key_ids") or ():
            seen = into.setdefault(key_id, int(p["epoch"]))
            assert seen == int(p["epoch"]), f"QKD key {key_id} keyed epochs {seen} and {p['epoch']}"


def test_state_survives_a_power_cut(pair: VmPair) -> None:
    pair.start_simulator()
    pair.provision(wireguard_full)
    pair.start()
    a, b = pair.vms
    for vm in pair.vms:
        vm.wait_report(_ready, BOOT_S, "READY")
    before = b.wait_report(lambda r: _ready(r) and int(peer_of(r)["epoch"]) >= 2,  # type: ignore[index]
                           90, "at epoch 2")
    epoch_before = int(peer_of(before)["epoch"])  # type: ignore[index]
    b.stop()  # a power cut, not a shutdown
    b.config_drive = None  # what it runs now comes from its state disk alone
    b.start()
    rep = b.wait_report(lambda r: _ready(r) and int(peer_of(r)["epoch"]) > epoch_before,
                        BOOT_S, "READY again, at a later epoch")
    assert rep["boots"] >= 2, "the journal lost the first boot"
    assert rep["mounts"]["/"].startswith("squashfs ro")
    assert "provisioned" not in rep["console"]  # no config drive: the state disk's config
    used: dict[str, int] = {}
    _key_ids([*a.reports, a.latest() or {}], used)
    _key_ids(b.reports, used)
    assert used, "no QKD key_IDs reported"
