"""peers_dir: a hub's peers one file each, read again on reload only when changed."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from gateway.config import ConfigError, diff_peers, load_config

from .conftest import BASE, WriteConfig
from .test_errors import SECOND_PEER


def _peer_file(site: Path, name: str, peer_id: str, port: int, identity: str, wgkey: str,
               extra: str = "") -> Path:
    """SECOND_PEER as a file of its own (one mapping, not a list entry)."""
    body = textwrap.dedent(SECOND_PEER.replace("  - id:", "    id:"))
    body = body.replace("gw-c", peer_id).replace("SAE_C_GW", f"SAE_{peer_id.upper()}")
    body = body.replace("wg-c", f"wg-{peer_id[-2:]}").replace("51821", str(port))
    body = body.replace("{identity}", identity).replace("{wgkey}", wgkey) + extra
    path = site / "peers.d" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(body)
    return path


def _with_dir(text: str = BASE) -> str:
    return text.replace("peers:\n", "peers_dir: peers.d\npeers:\n", 1)


def test_peers_come_from_the_directory_in_name_order(
        write_config: WriteConfig, site: Path, peer_identity: str, wg_public_key: str) -> None:
    _peer_file(site, "20-x2.yaml", "gw-x2", 51822, peer_identity, wg_public_key)
    _peer_file(site, "10-x1.yaml", "gw-x1", 51823, peer_identity, wg_public_key)
    (site / "peers.d" / "notes.txt").write_text("not a peer\n")
    cfg = load_config(write_config(_with_dir()))
    assert [p.id for p in cfg.peers] == ["gw-b", "gw-x1", "gw-x2"]
    # Relative paths resolve against the main config's directory.
    assert cfg.peers[1].tunnel.private_key_file == site / "wg" / "wg-a.key"  # type: ignore[union-attr]


def test_a_reload_reads_only_what_changed(
        write_config: WriteConfig, site: Path, peer_identity: str, wg_public_key: str) -> None:
    one = _peer_file(site, "x1.yaml", "gw-x1", 51822, peer_identity, wg_public_key)
    _peer_file(site, "x2.yaml", "gw-x2", 51823, peer_identity, wg_public_key)
    path = write_config(_with_dir())
    old = load_config(path)
    # One file changed, one added: the untouched one is the very same model.
    _peer_file(site, "x1.yaml", "gw-x1", 51822, peer_identity, wg_public_key,
               "rekey_interval_s: 60\n")
    os.utime(one, ns=(1, 1))  # a different mtime even within the clock's granularity
    _peer_file(site, "x3.yaml", "gw-x3", 51824, peer_identity, wg_public_key)
    new = load_config(path)
    assert new.peers[2] is old.peers[2]  # gw-x2, not read again
    added, removed, changed = diff_peers(old, new)
    assert [p.id for p in added] == ["gw-x3"] and not removed
    assert [p.id for p in changed] == ["gw-x1"] and changed[0].rekey_interval_s == 60
    (site / "peers.d" / "x3.yaml").unlink()
    assert [p.id for p in load_config(path).peers] == ["gw-b", "gw-x1", "gw-x2"]


def test_a_bad_peer_file_is_named_with_its_line(
        write_config: WriteConfig, site: Path, peer_identity: str, wg_public_key: str) -> None:
    bad = _peer_file(site, "x1.yaml", "gw-x1", 51822, peer_identity, wg_public_key,
                     "rekey_interval_s: often\n")
    with pytest.raises(ConfigError) as err:
        load_config(write_config(_with_dir()))
    text = str(err.value)
    line = bad.read_text().splitlines().index("rekey_interval_s: often") + 1
    assert f"{bad}:{line}:" in text and "rekey_interval_s" in text


def test_a_clash_with_an_inline_peer_is_reported_in_the_peer_file(
        write_config: WriteConfig, site: Path, peer_identity: str, wg_public_key: str) -> None:
    clash = _peer_file(site, "x1.yaml", "gw-b", 51822, peer_identity, wg_public_key)
    with pytest.raises(ConfigError) as err:
        load_config(write_config(_with_dir()))
    assert f"{clash}:1:" in str(err.value) and "duplicate peer id 'gw-b'" in str(err.value)


def test_peers_dir_must_be_a_directory(write_config: WriteConfig) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write_config(_with_dir().replace("peers.d", "nowhere.d")))
    assert "gateway.yaml:12:" in str(err.value) and "is not a directory" in str(err.value)


def test_an_empty_peers_key_beside_peers_dir_means_no_inline_peers(
        write_config: WriteConfig, site: Path, peer_identity: str, wg_public_key: str) -> None:
    """`peers:` written with no value, as a hub's gateway.yaml may have it."""
    _peer_file(site, "10-x1.yaml", "gw-x1", 51823, peer_identity, wg_public_key)
    text = BASE[: BASE.index("peers:\n")] + "peers_dir: peers.d\npeers:\n"
    cfg = load_config(write_config(text))
    assert [p.id for p in cfg.peers] == ["gw-x1"]
