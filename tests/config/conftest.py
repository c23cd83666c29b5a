"""Helpers for the config tests: a valid site on disk to break one field at a time."""

from __future__ import annotations

import base64
import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, x25519

_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def make_identity_text() -> str:
    """A well-formed public identity: qsgw-id-v2:<ed25519 pk>.<ml-dsa-65 pk>.<check>."""
    from gateway.identity import PublicIdentity

    ed = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(*_RAW)
    ml = mldsa.MLDSA65PrivateKey.generate().public_key().public_bytes(*_RAW)
    return PublicIdentity(ed, ml).to_text()


def make_wg_public_key() -> str:
    pk = x25519.X25519PrivateKey.generate().public_key().public_bytes(*_RAW)
    return base64.b64encode(pk).decode()


def write_secret(path: Path, data: bytes = b"not a real key\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


@pytest.fixture(scope="session")
def peer_identity() -> str:
    return make_identity_text()


@pytest.fixture(scope="session")
def wg_public_key() -> str:
    return make_wg_public_key()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A directory with every file a minimal config refers to, modes as required."""
    for name in ("ed25519.key", "mldsa65.key"):
        write_secret(tmp_path / "identity" / name)
    write_secret(tmp_path / "kme" / "sae.key")
    (tmp_path / "kme" / "ca.pem").write_text("ca\n")
    (tmp_path / "kme" / "sae.pem").write_text("cert\n")
    write_secret(tmp_path / "wg" / "wg-a.key")
    write_secret(tmp_path / "wg" / "wg-b.key")
    write_secret(tmp_path / "ipsec.psk")
    return tmp_path


# The minimal valid config: the tests change one thing in it at a time. Line
# numbers matter to the tests: `peers:` is line 12, the first peer's id line 13.
BASE = """\
gateway:
  id: gw-a
  identity_dir: identity
kme:
  sae_id: SAE_A_GW
  endpoints:
    - url: https://192.0.2.10:8443
      kme_id: KME_A
  ca_file: kme/ca.pem
  cert_file: kme/sae.pem
  key_file: kme/sae.key
peers:
  - id: gw-b
    sae_id: SAE_B_GW
    control: "192.0.2.2:7814"
    identity: "{identity}"
    rekey_interval_s: 120
    key_lifetime_s: 300
    suite: default
    tunnel:
      type: wireguard
      interface: wg-b
      private_key_file: wg/wg-b.key
      listen_port: 51820
      addresses: [203.0.113.1/24]
      peer_public_key: "{wgkey}"
      endpoint: "198.51.100.2:51820"
      allowed_ips: [203.0.113.2/32]
"""

WriteConfig = Callable[..., Path]


@pytest.fixture
def write_config(site: Path, peer_identity: str, wg_public_key: str) -> WriteConfig:
    """Write BASE (or given text) into the site as gateway.yaml, {identity}/{wgkey} filled in."""

    def write(text: str = BASE, name: str = "gateway.yaml") -> Path:
        path = site / name
        body = textwrap.dedent(text).replace("{identity}", peer_identity)
        path.write_text(body.replace("{wgkey}", wg_public_key))
        return path

    return write
