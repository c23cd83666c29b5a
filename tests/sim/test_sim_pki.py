"""The test PKI and endpoints.json: contents, file modes, reuse across starts."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from kms_client.sim.pki import ensure_pki
from kms_client.sim.server import Simulator


def _mode(p: str | Path) -> int:
    return stat.S_IMODE(Path(p).stat().st_mode)


def _cn(path: str | Path) -> str:
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _sans(path: str | Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(
        san.get_values_for_type(x509.DNSName)
    )


async def test_endpoints_json_lists_kmes_saes_and_pairs(sim: Simulator, tmp_path: Path) -> None:
    path = tmp_path / "state" / "endpoints.json"
    data = json.loads(path.read_text())
    assert data == sim.endpoints
    assert set(data["kmes"]) == {"KME_A", "KME_B", "KME_C", "KME_D"}
    for kme_id, info in data["kmes"].items():
        assert info["url"].startswith("https://127.0.0.1:")
        assert Path(info["ca"]).is_absolute()
        assert info["url"] == sim.urls[kme_id]
    assert data["saes"]["SAE_A2"]["kme"] == "KME_A"
    for sae_id, info in data["saes"].items():
        assert Path(info["cert"]).is_absolute() and Path(info["key"]).is_absolute()
        assert _cn(info["cert"]) == sae_id
    assert ["SAE_A1", "SAE_A2"] in data["pairs"]
    assert ["SAE_A1", "SAE_B"] in data["pairs"]
    assert ["SAE_A1", "SAE_C"] in data["pairs"]  # through the relay
    assert not any("SAE_D" in p for p in data["pairs"])


async def test_pki_files_are_0600_and_server_certs_name_kme_and_host(sim: Simulator) -> None:
    assert sim.pki is not None
    files = [sim.pki.ca_cert]
    for pair in (*sim.pki.kmes.values(), *sim.pki.saes.values()):
        files += [pair.cert, pair.key]
    for f in files:
        assert _mode(f) == 0o600, f
    ca_key = sim.pki.ca_cert.with_name("ca.key")
    assert _mode(ca_key) == 0o600
    assert _mode(ca_key.parent) == 0o700
    for kme_id, pair in sim.pki.kmes.items():
        assert _cn(pair.cert) == kme_id
        assert {"127.0.0.1", "localhost"} <= _sans(pair.cert)
    # No private key in endpoints.json beyond file names.
    assert "PRIVATE KEY" not in json.dumps(sim.endpoints)


def test_pki_is_reused_and_server_cert_reissued_when_the_host_changes(tmp_path: Path) -> None:
    first = ensure_pki(tmp_path, ["KME_A"], ["SAE_A"], ["127.0.0.1"])
    ca = first.ca_cert.read_bytes()
    sae_cert = first.saes["SAE_A"].cert.read_bytes()
    kme_cert = first.kmes["KME_A"].cert.read_bytes()
    again = ensure_pki(tmp_path, ["KME_A"], ["SAE_A"], ["127.0.0.1"])
    assert again.ca_cert.read_bytes() == ca
    assert again.kmes["KME_A"].cert.read_bytes() == kme_cert
    moved = ensure_pki(tmp_path, ["KME_A"], ["SAE_A", "SAE_NEW"], ["192.0.2.10"])
    assert moved.ca_cert.read_bytes() == ca
    assert moved.saes["SAE_A"].cert.read_bytes() == sae_cert
    assert moved.kmes["KME_A"].cert.read_bytes() != kme_cert
    assert "192.0.2.10" in _sans(moved.kmes["KME_A"].cert)
    assert _cn(moved.saes["SAE_NEW"].cert) == "SAE_NEW"
    assert _mode(moved.saes["SAE_NEW"].key) == 0o600


async def test_second_start_reuses_the_pki(topology_file: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with Simulator.start(topology_file, state) as s1:
        assert s1.pki is not None
        key_bytes = s1.pki.saes["SAE_B"].key.read_bytes()
    async with Simulator.start(topology_file, state) as s2:
        assert s2.pki is not None
        assert s2.pki.saes["SAE_B"].key.read_bytes() == key_bytes
