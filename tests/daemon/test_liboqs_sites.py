"""Two sites per liboqs KEM family: real daemons, wireguard-go, the KME simulator over mTLS."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qsgw_lab.sitelab import SiteLab
from tests.liboqs_gate import require_liboqs

from .conftest import site_lab

pytestmark = pytest.mark.netns


@pytest.mark.parametrize(("suite", "kem"), [("frodo1344shake", "FrodoKEM-1344-SHAKE"),
                                            ("hqc3", "HQC-3")])
def test_liboqs_suite_keys_a_wireguard_tunnel(sitelab: SiteLab, suite: str, kem: str) -> None:
    require_liboqs()
    _keys_a_tunnel(sitelab, suite, ["QKD", kem, "X25519"])


@pytest.fixture
def mce_sitelab() -> Iterator[SiteLab]:
    """A lab of its own prefix (qsmce), so it never collides with other labs."""
    with site_lab("qsmce") as sites:
        yield sites

def test_mceliece_static_keys_made_by_keygen_key_a_wireguard_tunnel(
    mce_sitelab: SiteLab,
) -> None:
    """Each site's static McEliece key made by `qsgw keygen --static-kem`, pinned by the other."""
    require_liboqs()
    _keys_a_tunnel(mce_sitelab, "mceliece460896f",
                   ["QKD", "Classic-McEliece-460896f", "ML-KEM-768", "X25519"],
                   static_kem="mceliece460896f")


def _keys_a_tunnel(sitelab: SiteLab, suite: str, sources: list[str],
                   static_kem: str | None = None) -> None:
    a = sitelab.add_site("inta", "gw-inta", "SAE_INTA_GW", "KME_INTA", static_kem=static_kem)
    b = sitelab.add_site("sgsics", "gw-sgsics", "SAE_SGSICS_GW", "KME_SGSICS",
                         static_kem=static_kem)
    t = sitelab.add_wireguard_tunnel(a, b, "required", 2.0, 8.0)
    sitelab.set_suite(suite)
    sitelab.start_simulator()
    for site in (a, b):
        sitelab.write_config(site)
        sitelab.start_daemon(site)

    def both_at(epoch: int) -> bool:
        sa, sb = sitelab.peer_status(a, b.gateway_id), sitelab.peer_status(b, a.gateway_id)
        return bool(sa and sb and sa["epoch"] == sb["epoch"] and sa["epoch"] >= epoch)

    assert sitelab.wait_for(lambda: both_at(2), 60), (
        f"{suite}: no second epoch: {sitelab.peer_status(a, b.gateway_id)}")
    status = sitelab.peer_status(a, b.gateway_id)
    assert status is not None
    assert status["sources"] == sources, status
    psk_a, psk_b = sitelab.preshared_key(a, t.if_a), sitelab.preshared_key(b, t.if_b)
    if sitelab.peer_status(a, b.gateway_id) == status:  # not rotated while reading
        assert psk_a and psk_a != "(none)" and psk_a == psk_b
    assert sitelab.lab.wait_ping(a.name, t.ip_b, timeout_s=15), f"{suite}: no traffic"
