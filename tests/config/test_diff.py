"""diff_peers: what a SIGHUP reload must start, stop and restart."""

from __future__ import annotations

from gateway.config import changed_sections, diff_peers, load_config

from .conftest import BASE, WriteConfig
from .test_errors import SECOND_PEER


def test_unchanged_config_has_no_diff(write_config: WriteConfig) -> None:
    path = write_config(BASE + SECOND_PEER)
    assert diff_peers(load_config(path), load_config(path)) == ((), (), ())


def test_added_removed_changed(write_config: WriteConfig) -> None:
    old = load_config(write_config(BASE + SECOND_PEER, "old.yaml"))
    third = SECOND_PEER.replace("gw-c", "gw-d").replace("SAE_C_GW", "SAE_D_GW")
    third = third.replace("listen_port: 51821", "listen_port: 51822")
    text = BASE.replace("rekey_interval_s: 120", "rekey_interval_s: 60") + third
    new = load_config(write_config(text, "new.yaml"))
    added, removed, changed = diff_peers(old, new)
    assert [p.id for p in added] == ["gw-d"]
    assert [p.id for p in removed] == ["gw-c"]
    assert [p.id for p in changed] == ["gw-b"]
    assert changed[0].rekey_interval_s == 60  # the new settings


def test_a_change_deep_in_the_tunnel_counts(write_config: WriteConfig) -> None:
    old = load_config(write_config(BASE, "old.yaml"))
    text = BASE.replace(
        "allowed_ips: [203.0.113.2/32]", "allowed_ips: [203.0.113.2/32, 10.9.0.0/16]"
    )
    new = load_config(write_config(text, "new.yaml"))
    diff = diff_peers(old, new)
    assert [p.id for p in diff.changed] == ["gw-b"] and not diff.added and not diff.removed


def test_gateway_level_changes_are_not_peer_changes(write_config: WriteConfig) -> None:
    old = load_config(write_config(BASE, "old.yaml"))
    new = load_config(write_config(BASE + "control:\n  rate_limit_per_s: 9\n", "new.yaml"))
    assert diff_peers(old, new) == ((), (), ())
    assert old.control != new.control


def test_changed_sections(write_config: WriteConfig) -> None:
    old = load_config(write_config(BASE, "old.yaml"))
    text = BASE.replace("rekey_interval_s: 120", "rekey_interval_s: 60")
    text += "control:\n  rate_limit_per_s: 9\n"
    new = load_config(write_config(text, "new.yaml"))
    assert changed_sections(old, new) == ("control",)
    assert changed_sections(old, old) == ()
