"""The crypto inventory lists every suite's algorithms with their real providers and versions."""

from __future__ import annotations

import json
import subprocess
import sys

from gateway.crypto.inventory import inventory
from gateway.crypto.suites import SUITE_NAMES
from tests.liboqs_gate import require_liboqs


def test_every_suite_and_algorithm_is_listed_with_provider_and_status() -> None:
    require_liboqs()
    rows = inventory()
    assert {r.suite for r in rows} == set(SUITE_NAMES)
    by = {(r.suite, r.algorithm): r for r in rows}
    assert by[("default", "ML-KEM-768")].provider == "cryptography"
    assert "FIPS 203" in by[("default", "ML-KEM-768")].status
    assert "FIPS 204" in by[("default", "ML-DSA-65")].status
    # The identity's ML-DSA-65 signs through liboqs (mldsa_oqs), and says so.
    mldsa_row = by[("default", "ML-DSA-65")]
    assert mldsa_row.provider == "liboqs" and "mldsa-native" in mldsa_row.provider_version
    frodo = by[("frodo1344shake", "FrodoKEM-1344-SHAKE")]
    assert (frodo.provider, frodo.provider_version) == ("liboqs", "0.16.0")
    assert "ISO" in frodo.status and "BSI TR-02102-1 recommended" in frodo.status
    assert "pending" in by[("hqc3", "HQC-3")].status
    assert "static" in by[("mceliece6688128f", "Classic-McEliece-6688128f")].parameter_set
    assert all(r.status for r in rows)


def test_cli_prints_json_with_library_versions() -> None:
    require_liboqs()
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "doctor", "--crypto", "--json"],
                         capture_output=True, text=True, timeout=120).stdout
    # One JSON document, nothing else on stdout (liboqs-python's own log line included).
    doc = json.loads(out)["crypto"]
    libs = doc["libraries"]
    assert libs["liboqs"] == "0.16.0" and libs["liboqs-python"] == "0.16.0.1"
    assert "OpenSSL" in libs["openssl (cryptography)"] and libs["cryptography"]
    assert "HQC-3" in libs["liboqs KEMs"]
    assert len(doc["algorithms"]) == len(inventory())
