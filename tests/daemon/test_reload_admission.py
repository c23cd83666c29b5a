"""A SIGHUP reload that removes a peer drops what admission remembers of it."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.config import PeerConfig, load_config
from gateway.daemon import app
from gateway.daemon.admission import InitAdmission
from gateway.handshake.codec import decode
from gateway.identity import LocalIdentity

from .test_admission import PEER_ADDR, _init, _params

_PEER = """\
  - id: {id}
    sae_id: {sae}
    control: "{addr}:7814"
    identity: "{identity}"
    tunnel:
      type: wireguard
      interface: wg-{id}
      private_key_file: wg.key
      listen_port: {port}
      peer_public_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
      allowed_ips: [203.0.113.{n}/32]
"""


def _config(peers: list[tuple[str, str, LocalIdentity]]) -> str:
    text = ("gateway:\n  id: gw-b\n  identity_dir: identity\nkme:\n  sae_id: SAE_B_GW\n"
            "  endpoints:\n    - url: https://192.0.2.100:8443\n      kme_id: KME_B\n"
            "  ca_file: ca.pem\n  cert_file: sae.pem\n  key_file: sae.key\npeers:\n")
    for peer, addr, ident in peers:
        n = int(addr.rsplit(".", 1)[1])  # per peer, not per position: gw-c stays unchanged
        text += _PEER.format(id=peer, sae=f"SAE_{peer.upper().replace('-', '_')}", addr=addr,
                             identity=ident.public.to_text(), port=51820 + n, n=n)
    return text


class _Session:
    def __init__(self) -> None:
        self.stopped = False

    async def stop(self, keep_tunnel: bool) -> None:
        self.stopped = True


async def test_reload_forgets_a_removed_peers_admitted_inits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = (LocalIdentity.generate(), LocalIdentity.generate())
    other = LocalIdentity.generate()
    # No KME or key files here: the reload reads the config without checking them.
    monkeypatch.setattr("gateway.daemon.app.load_config",
                        functools.partial(load_config, check_files=False))
    path = tmp_path / "gateway.yaml"
    both = _config([("gw-a", PEER_ADDR, ids[0]), ("gw-c", "192.0.2.11", other)])
    path.write_text(both)
    daemon = app.GatewayDaemon(path, load_config(path, check_files=False))
    daemon._refresh_allowed()
    adm = InitAdmission("gw-b", 60, lambda p: daemon._peer_addresses.get(p, set()),
                        lambda p: 0)  # the journal holds nothing yet
    daemon._admission = adm
    daemon._ctx = SimpleNamespace(config=daemon.config)  # type: ignore[assignment]
    session = _Session()
    daemon.sessions = {"gw-a": session, "gw-c": _Session()}  # type: ignore[dict-item]
    added: list[str] = []

    async def add_peer(peer: PeerConfig) -> None:
        added.append(peer.id)
        daemon.sessions[peer.id] = _Session()  # type: ignore[assignment]

    monkeypatch.setattr(daemon, "_add_peer", add_peer)

    ip, _ = _params(ids)
    ident_a = ids[0].public.to_text()
    now = time.time()

    def check(epoch: int) -> Any:
        init = decode(_init(ip, epoch, now))
        refusal = adm.check(init, PEER_ADDR, ident_a)  # type: ignore[arg-type]
        return None if refusal is None else refusal.reason

    assert check(5) is None  # admitted, in flight
    assert check(3) == "replay"  # below what is in flight: refused
    path.write_text(_config([("gw-c", "192.0.2.11", other)]))
    await daemon.reload()
    assert session.stopped and "gw-a" not in daemon.sessions
    assert check(3) == "wrong_source"  # gw-a lives nowhere now
    path.write_text(both)  # the peer comes back (its journal epochs still guard replays)
    await daemon.reload()
    assert added == ["gw-a"]
    # Nothing of the removed peer's in-flight INITs was kept: only the journal counts.
    assert check(3) is None
