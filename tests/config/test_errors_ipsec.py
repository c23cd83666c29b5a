"""IPsec tunnel config errors name the file, line and field (auth, remote, PSK file modes)."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.config import (
    IpsecTunnel,
    PskAuth,
    load_config,
)

from .conftest import BASE, WriteConfig
from .test_errors import errors_of, the_error

IPSEC_PEER = """\
  - id: gw-c
    sae_id: SAE_C_GW
    control: "192.0.2.3:7814"
    identity: "{identity}"
    tunnel:
      type: ipsec
      connection: qsgw-c
      ppk_id: qsgw-c@gw-a
      remote_addrs: [198.51.100.3]
      local_ts: [10.1.0.0/16]
      remote_ts: [10.2.0.0/16]
      auth: {psk_file: ipsec.psk}
"""


def test_ipsec_peer(write_config: WriteConfig, site: Path) -> None:
    cfg = load_config(write_config(BASE + IPSEC_PEER))
    tunnel = cfg.peer("gw-c").tunnel
    assert isinstance(tunnel, IpsecTunnel)
    assert tunnel.ppk_required and tunnel.local_addrs == ("%any",)
    assert isinstance(tunnel.auth, PskAuth) and tunnel.auth.psk_file == site / "ipsec.psk"


def test_ipsec_full_needs_auth_and_remote(write_config: WriteConfig) -> None:
    text = BASE + IPSEC_PEER.replace("      auth: {psk_file: ipsec.psk}\n", "")
    text = text.replace("      remote_addrs: [198.51.100.3]\n", "")
    errors = {e.field: e for e in errors_of(write_config(text))}
    assert "manage: full" in errors["peers[1].tunnel.auth"].message
    assert "manage: full" in errors["peers[1].tunnel.remote_addrs"].message


def test_ipsec_auth_of_neither_kind(write_config: WriteConfig) -> None:
    text = BASE + IPSEC_PEER.replace("{psk_file: ipsec.psk}", "{password: hunter2}")
    e = the_error(write_config(text), "peers[1].tunnel.auth")
    assert "psk_file" in e.message and "cert_file" in e.message
    assert "hunter2" not in e.message


def test_ipsec_psk_file_must_be_private(write_config: WriteConfig, site: Path) -> None:
    os.chmod(site / "ipsec.psk", 0o640)
    e = the_error(write_config(BASE + IPSEC_PEER), "peers[1].tunnel.auth.psk_file")
    assert "0640" in e.message and "chmod 600" in e.message


def test_duplicate_connection(write_config: WriteConfig) -> None:
    second = (
        IPSEC_PEER.replace("gw-c", "gw-d")
        .replace("SAE_C_GW", "SAE_D_GW")
        .replace("ppk_id: qsgw-d@gw-a", "ppk_id: other@gw-a")
        .replace("connection: qsgw-d", "connection: qsgw-c")
    )
    e = the_error(write_config(BASE + IPSEC_PEER + second), "peers[2].tunnel.connection")
    assert "duplicate connection 'qsgw-c'" in e.message
