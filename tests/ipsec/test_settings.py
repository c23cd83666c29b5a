"""Settings checks and input validation of the strongSwan driver (no charon needed)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from gateway.tunnels.base import TunnelError
from gateway.tunnels.strongswan import IpsecSettings, StrongSwanDriver, make_strongswan_driver


def full(tmp_path: Path, **over: object) -> IpsecSettings:
    values: dict[str, object] = dict(
        vici_socket=tmp_path / "none.vici",
        connection="site-b",
        ppk_id="qsgw-site-b",
        local_addrs=("192.0.2.1",),
        remote_addrs=("192.0.2.2",),
        local_ts=("198.51.100.0/24",),
        remote_ts=("203.0.113.0/24",),
        psk_file=tmp_path / "psk",
    )
    values.update(over)
    return IpsecSettings(**values)  # type: ignore[arg-type]


def test_full_management_names_missing_fields(tmp_path: Path) -> None:
    with pytest.raises(TunnelError, match="remote_addrs, local_ts"):
        full(tmp_path, remote_addrs=(), local_ts=()).validate()


def test_psk_and_certificates_together_are_refused(tmp_path: Path) -> None:
    s = full(tmp_path, cert_file=tmp_path / "c", key_file=tmp_path / "k", ca_file=tmp_path / "ca")
    with pytest.raises(TunnelError, match="either psk_file or"):
        s.validate()


def test_full_management_needs_an_authentication(tmp_path: Path) -> None:
    with pytest.raises(TunnelError, match="psk_file or cert_file"):
        full(tmp_path, psk_file=None).validate()


def test_ppk_only_needs_no_connection_details(tmp_path: Path) -> None:
    IpsecSettings(tmp_path / "x", "conn", "ppk", manage="ppk-only").validate()


@pytest.mark.parametrize("uri", ["tcp://127.0.0.1", "tcp://:4502", "tcp://host:port"])
def test_bad_vici_uri_is_refused(tmp_path: Path, uri: str) -> None:
    with pytest.raises(TunnelError, match="bad VICI URI"):
        full(tmp_path, vici_socket=uri).validate()


def test_vici_addresses(tmp_path: Path) -> None:
    assert full(tmp_path, vici_socket="unix:///run/x.vici").vici_address() == (
        socket.AF_UNIX,
        "/run/x.vici",
    )
    assert full(tmp_path, vici_socket="tcp://[::1]:4502").vici_address() == (
        socket.AF_INET6,
        ("::1", 4502),
    )


def test_driver_from_the_config_model(tmp_path: Path) -> None:
    from gateway.config import IpsecTunnel

    psk = tmp_path / "psk"
    fd = os.open(psk, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"not-a-real-psk")
    os.close(fd)
    model = IpsecTunnel.model_validate(
        {
            "type": "ipsec",
            "vici_socket": "unix:///run/qsgw-test/charon.vici",
            "connection": "site-b",
            "ppk_id": "qsgw-site-b",
            "remote_addrs": ("192.0.2.2",),
            "local_ts": ("198.51.100.0/24",),
            "remote_ts": ("203.0.113.0/24",),
            "auth": {"psk_file": str(psk)},
        }
    )
    driver = make_strongswan_driver(model, initiator=False)
    s = driver.settings
    assert s.psk_file == psk and s.cert_file is None
    assert s.initiator is False and s.ppk_required is True
    assert s.remote_addrs == ("192.0.2.2",) and s.local_addrs == ("%any",)
    assert s.vici_address() == (socket.AF_UNIX, "/run/qsgw-test/charon.vici")
    assert "not-a-real-psk" not in repr(driver) + repr(s)


@pytest.mark.parametrize("size", [0, 16, 31, 2000])
async def test_bad_key_sizes_are_refused_without_showing_the_key(
    tmp_path: Path, size: int
) -> None:
    driver = StrongSwanDriver(full(tmp_path))
    key = bytes([0xAB]) * size
    with pytest.raises(TunnelError, match="PPK must be") as err:
        await driver.install_key(1, key)
    assert "abab" not in str(err.value).lower()


async def test_unreachable_charon_is_a_tunnel_error(tmp_path: Path) -> None:
    driver = StrongSwanDriver(full(tmp_path))
    key = bytes(range(32))
    with pytest.raises(TunnelError, match="unreachable") as err:
        await driver.install_key(1, key)
    assert key.hex() not in str(err.value)
    assert "epoch=None" in repr(driver) and key.hex() not in repr(driver)
    health = await driver.health()
    assert not health.up and "unreachable" in health.detail
    with pytest.raises(TunnelError, match="has not been installed"):
        await driver.activate(1)


async def test_negative_epoch_is_refused(tmp_path: Path) -> None:
    driver = StrongSwanDriver(full(tmp_path))
    with pytest.raises(TunnelError, match="epoch"):
        await driver.install_key(-1, bytes(32))


def test_full_management_loads_a_make_before_break_twin(tmp_path: Path) -> None:
    from gateway.tunnels.strongswan_settings import conn_message

    s = full(tmp_path)
    assert s.conn_names == ("site-b", "site-b-mbb")
    assert s.twin_of("site-b") == "site-b-mbb" and s.twin_of("site-b-mbb") == "site-b"
    (name_a, first), = conn_message(s).items()
    (name_b, twin), = conn_message(s, "site-b-mbb").items()
    assert (name_a, name_b) == ("site-b", "site-b-mbb")
    # charon reuses an IKE SA whose config equals the initiated one (names aside):
    # the twin must differ, in something that changes nothing else.
    assert first != twin
    assert {k for k in first if first[k] != twin[k]} == {"rand_time"}
    assert first["unique"] == twin["unique"] == "no"
    assert first["children"] == twin["children"] and "site-b" in first["children"]
    # ppk-only: one swanctl connection, no twin.
    only = IpsecSettings(tmp_path / "x", "conn", "ppk", manage="ppk-only")
    assert only.conn_names == ("conn",) and only.twin_of("conn") == "conn"


def test_route_based_binds_the_child_sa_to_the_xfrm_interface(tmp_path: Path) -> None:
    from gateway.tunnels.strongswan_settings import conn_message

    msg = conn_message(full(tmp_path, if_id=17, xfrm_name="ipsec0"))
    child = msg["site-b"]["children"]["site-b"]
    assert child["if_id_in"] == child["if_id_out"] == "17"
    assert "if_id_in" not in conn_message(full(tmp_path))["site-b"]["children"]["site-b"]
