"""A hub's WireGuard interface shared by many peers: allowed for psk-only peers only."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_config

from .conftest import WriteConfig, make_wg_public_key

HEAD = """\
gateway:
  id: hub
  identity_dir: identity
kme:
  sae_id: SAE_HUB
  endpoints:
    - url: https://192.0.2.10:8443
      kme_id: KME_HUB
  ca_file: kme/ca.pem
  cert_file: kme/sae.pem
  key_file: kme/sae.key
peers:
"""

PEER = """\
  - id: {id}
    sae_id: SAE_{id}
    control: "192.0.2.{n}:7814"
    identity: "{{identity}}"
    tunnel:
      type: wireguard
      manage: {manage}
      interface: wg-hub
      peer_public_key: "{key}"
{extra}"""

FULL = "      private_key_file: wg/wg-a.key\n      allowed_ips: [203.0.113.{n}/32]\n"


def peers(*specs: tuple[str, str]) -> str:
    return HEAD + "".join(
        PEER.format(id=f"br{n}", n=n + 2, manage=manage, key=key,
                    extra=FULL.format(n=n + 2) if manage == "full" else "")
        for n, (manage, key) in enumerate(specs))


def test_psk_only_peers_share_one_interface(write_config: WriteConfig) -> None:
    cfg = load_config(write_config(peers(*[("psk-only", make_wg_public_key())
                                           for _ in range(3)])))
    assert {p.tunnel.interface for p in cfg.peers} == {"wg-hub"}  # type: ignore[union-attr]


@pytest.mark.parametrize("manages", [("full", "psk-only"), ("psk-only", "full")])
def test_an_interface_managed_in_full_is_one_peers(write_config: WriteConfig,
                                                   manages: tuple[str, str]) -> None:
    path = write_config(peers(*[(m, make_wg_public_key()) for m in manages]))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    e = next(e for e in info.value.errors if e.field == "peers[1].tunnel.interface")
    assert "duplicate interface 'wg-hub'" in e.message and "psk-only" in e.message


def test_two_peers_of_an_interface_need_their_own_keys(write_config: WriteConfig) -> None:
    key = make_wg_public_key()
    with pytest.raises(ConfigError) as info:
        load_config(write_config(peers(("psk-only", key), ("psk-only", key))))
    e = next(e for e in info.value.errors if e.field == "peers[1].tunnel.peer_public_key")
    assert "duplicate peer_public_key on interface 'wg-hub'" in e.message
    assert "peers[0]" in e.message
