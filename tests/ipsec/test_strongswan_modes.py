"""X.509 IKE authentication (manage=full) and manage=ppk-only against real charons."""

from __future__ import annotations

import datetime
import os
import secrets
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import vici
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.tunnels.base import TunnelError
from gateway.tunnels.charon_process import CharonInstance
from gateway.tunnels.strongswan import IpsecSettings, StrongSwanDriver

from .conftest import A_INNER, A_OUTER, B_INNER, B_OUTER, site_pair
from .test_strongswan_tunnel import established, rotate, tunnel_ping

pytestmark = pytest.mark.netns


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(root: Path) -> dict[str, Path]:
    """A CA and one certificate per gateway (ECDSA P-256), PEM files; keys 0600."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("qsgw test CA"))
        .issuer_name(_name("qsgw test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    files = {"ca": root / "ca.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for gw in ("gw-a", "gw-b"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(gw))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(gw)]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        files[f"{gw}-cert"] = root / f"{gw}.pem"
        files[f"{gw}-cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{gw}-key"] = root / f"{gw}.key"
        fd = os.open(files[f"{gw}-key"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(
            fd,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        os.close(fd)
    return files


async def test_x509_authenticated_tunnel_rotates_ppk(lab: Any, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)

    def cert_auth(gw: str) -> dict[str, Any]:
        return dict(
            psk_file=None,
            cert_file=pki[f"{gw}-cert"],
            key_file=pki[f"{gw}-key"],
            ca_file=pki["ca"],
        )

    async with site_pair(lab, tmp_path, cert_auth("gw-a"), cert_auth("gw-b")) as (a, b):
        await rotate(a, b, 1)
        assert tunnel_ping(a)
        first = established(a)[0]
        await rotate(a, b, 2)
        now = established(a)
        assert len(now) == 1 and now[0]["uniqueid"] != first["uniqueid"]
        assert now[0]["ppk"] == b"yes"
        assert now[0]["remote-id"] == b"gw-b"
        assert tunnel_ping(a)


async def test_psk_without_ids_uses_the_gateway_addresses(lab: Any, tmp_path: Path) -> None:
    # The config's PSK auth has no IDs: charon then identifies both ends by
    # IP address, and the driver binds the PSK to those addresses.
    no_ids = dict(local_id=None, remote_id=None)
    async with site_pair(lab, tmp_path, no_ids, no_ids) as (a, b):
        await rotate(a, b, 1)
        assert tunnel_ping(a, count=1)
        sa = established(a)[0]
        assert sa["remote-id"] == B_OUTER.encode() and sa["ppk"] == b"yes"


def swanctl_conf(conn: str, side: str, psk_hex: str) -> str:
    mine, peer = (A_OUTER, B_OUTER) if side == "a" else (B_OUTER, A_OUTER)
    lts, rts = (A_INNER, B_INNER) if side == "a" else (B_INNER, A_INNER)
    me, other = ("gw-a", "gw-b") if side == "a" else ("gw-b", "gw-a")
    # One setting per line: swanctl.conf does not take `a = 1 b = 2`.
    return f"""connections {{
  {conn} {{
    version = 2
    local_addrs = {mine}
    remote_addrs = {peer}
    proposals = aes256gcm16-prfsha384-x25519
    ppk_id = qsgw-{conn}
    ppk_required = yes
    local {{
      auth = psk
      id = {me}
    }}
    remote {{
      auth = psk
      id = {other}
    }}
    children {{
      {conn} {{
        local_ts = {lts}/32
        remote_ts = {rts}/32
        esp_proposals = aes256gcm16
      }}
    }}
  }}
}}
secrets {{
  ike-qsgw {{
    id-1 = {me}
    id-2 = {other}
    secret = 0x{psk_hex}
  }}
}}
"""


def conn_names(charon: CharonInstance) -> set[str]:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(5)
    sock.connect(str(charon.vici_socket))
    try:
        return {c.decode() for c in vici.Session(sock).get_conns()["conns"]}
    finally:
        sock.close()


async def test_ppk_only_rotates_the_ppk_of_a_swanctl_connection(
    lab: Any, tmp_path: Path
) -> None:
    psk_hex = secrets.token_hex(32)

    def load(side: str, charon: CharonInstance) -> None:
        conf_dir = charon.workdir / "swanctl"
        conf_dir.mkdir()
        conf = conf_dir / "swanctl.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        conn = charon.workdir.name.split("-", 2)[2]
        os.write(fd, swanctl_conf(conn, side, psk_hex).encode())
        os.close(fd)
        subprocess.run(
            ["swanctl", "--load-all", "--noprompt", "--uri", f"unix://{charon.vici_socket}",
             "--file", str(conf)],
            check=True, capture_output=True, timeout=10,
            env={**os.environ, "SWANCTL_DIR": str(conf_dir)},
        )

    over = dict(manage="ppk-only", psk_file=None)
    async with site_pair(lab, tmp_path, over, over, before_start=load) as (a, b):
        await rotate(a, b, 1)
        assert tunnel_ping(a)
        await rotate(a, b, 2)
        assert len(established(a)) == 1 and established(a)[0]["ppk"] == b"yes"
        assert tunnel_ping(a)
        await a.driver.stop(keep_tunnel=False)
        # ppk-only owns the PPK only: the swanctl connection stays loaded.
        assert a.settings.connection in conn_names(a.charon)


async def test_ppk_only_without_the_connection_is_refused(lab: Any, tmp_path: Path) -> None:
    workdir = tmp_path / "charon"
    with CharonInstance(workdir, lab.ns_name("a")) as charon:
        driver = StrongSwanDriver(
            IpsecSettings(charon.vici_socket, "missing", "qsgw-missing", manage="ppk-only")
        )
        with pytest.raises(TunnelError, match="no connection 'missing'"):
            await driver.start()
        await driver.stop(keep_tunnel=True)
