"""The crypto inventory: per suite, each algorithm, its parameter set, provider, version, status.

``inventory()`` returns plain rows (for `qsgw doctor --crypto`, audits and
docs/security.md); ``library_versions()`` the libraries behind them. Nothing
here generates keys: a suite whose provider is missing is listed as such.
"""

from __future__ import annotations

import ssl
from dataclasses import asdict, dataclass
from importlib import metadata

from gateway.crypto import mldsa_oqs
from gateway.crypto.suites import SUITE_NAMES, SuiteError, lookup_suite

# Where each algorithm stands (as of 2025). BSI TR-02102-1 (2025-01) recommends
# FrodoKEM-976/1344 and Classic McEliece (460896, 6688128, 6960119, 8192128)
# and ML-KEM-768/1024, each only in a hybrid with a classical scheme.
STATUS: dict[str, str] = {
    "ML-KEM-768": "NIST FIPS 203 (category 3); BSI TR-02102-1 recommended (hybrid)",
    "ML-KEM-1024": "NIST FIPS 203 (category 5); BSI TR-02102-1 recommended (hybrid)",
    "FrodoKEM-976-AES": "ISO/IEC 18033-2 amendment (FrodoKEM) in progress; "
                        "BSI TR-02102-1 recommended (hybrid)",
    "FrodoKEM-976-SHAKE": "ISO/IEC 18033-2 amendment (FrodoKEM) in progress; "
                          "BSI TR-02102-1 recommended (hybrid)",
    "FrodoKEM-1344-AES": "ISO/IEC 18033-2 amendment (FrodoKEM) in progress; "
                         "BSI TR-02102-1 recommended (hybrid)",
    "FrodoKEM-1344-SHAKE": "ISO/IEC 18033-2 amendment (FrodoKEM) in progress; "
                           "BSI TR-02102-1 recommended (hybrid)",
    "HQC-3": "NIST selected HQC (March 2025); FIPS pending (draft standard expected); "
             "not in BSI TR-02102-1",
    "Classic-McEliece-460896f": "ISO/IEC 18033-2 amendment in progress; "
                                "BSI TR-02102-1 recommended (hybrid); not selected by NIST",
    "Classic-McEliece-6688128f": "ISO/IEC 18033-2 amendment in progress; "
                                 "BSI TR-02102-1 recommended (hybrid); not selected by NIST",
    "X25519": "RFC 7748; classical (not quantum-safe), the hybrid's classical part",
    "Ed25519": "RFC 8032 / FIPS 186-5; classical, one of the two signatures",
    "ML-DSA-65": "NIST FIPS 204 (category 3); BSI TR-02102-1 recommended",
    "HKDF-SHA-384": "RFC 5869 / NIST SP 800-56C; ETSI TS 103 744 CatKDF (clause 8.2)",
    "HMAC-SHA-384": "RFC 2104 / FIPS 198-1; key confirmation",
}
PARAMETER_SET: dict[str, str] = {
    "ML-KEM-768": "NIST category 3", "ML-KEM-1024": "NIST category 5",
    "FrodoKEM-976-AES": "category 3, AES-128 matrix", "FrodoKEM-976-SHAKE": "category 3, SHAKE",
    "FrodoKEM-1344-AES": "category 5, AES-128 matrix",
    "FrodoKEM-1344-SHAKE": "category 5, SHAKE",
    "HQC-3": "category 3 (2025-08-22 specification)",
    "Classic-McEliece-460896f": "category 3, static key pinned per gateway",
    "Classic-McEliece-6688128f": "category 5, static key pinned per gateway",
    "X25519": "Curve25519", "Ed25519": "edwards25519", "ML-DSA-65": "NIST category 3",
    "HKDF-SHA-384": "L = 32 (tunnel), 48 (confirmation)", "HMAC-SHA-384": "48-byte tag",
}


@dataclass(frozen=True)
class InventoryRow:
    suite: str
    role: str  # kem | signature | kdf | mac
    algorithm: str
    parameter_set: str
    provider: str
    provider_version: str
    status: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def library_versions() -> dict[str, str]:
    """OpenSSL (as linked by Python and by cryptography), cryptography and liboqs."""
    from cryptography.hazmat.backends.openssl.backend import backend

    out = {
        "cryptography": metadata.version("cryptography"),
        "openssl (cryptography)": backend.openssl_version_text(),
        "openssl (python ssl)": ssl.OPENSSL_VERSION,
    }
    out.update(liboqs_versions())
    return out


def liboqs_versions() -> dict[str, str]:
    """liboqs and liboqs-python versions and enabled KEMs, or why liboqs is absent."""
    from gateway.crypto import oqs_provider

    try:
        oqs = oqs_provider.load_oqs()
    except oqs_provider.OqsUnavailable as exc:
        return {"liboqs": f"not available: {exc}"}
    return {
        "liboqs": str(oqs.oqs_version()),
        "liboqs-python": str(oqs.oqs_python_version()),
        "liboqs path": str(oqs.native()._name),
        "liboqs KEMs": ", ".join(oqs.get_enabled_kem_mechanisms()),
        "liboqs signatures": ", ".join(oqs.get_enabled_sig_mechanisms()),
    }


def _provider_of(obj: object, versions: dict[str, str]) -> tuple[str, str]:
    if type(obj).__module__.endswith("oqs_provider"):
        return "liboqs", versions.get("liboqs", "?")
    if getattr(obj, "name", None) == mldsa_oqs.NAME and mldsa_oqs.available():
        # The identity signs and verifies through liboqs; its keys are OpenSSL's.
        return "liboqs", f"{versions.get('liboqs', '?')} (mldsa-native; key from the seed)"
    return "cryptography", (
        f"{versions['cryptography']} ({versions['openssl (cryptography)']})"
    )


def inventory(suites: tuple[str, ...] = SUITE_NAMES) -> list[InventoryRow]:
    """One row per algorithm of each suite, in suite order, then the KDF and the MAC."""
    versions = library_versions()
    crypto = f"{versions['cryptography']} ({versions['openssl (cryptography)']})"
    rows: list[InventoryRow] = []
    for name in suites:
        try:
            suite = lookup_suite(name)
        except SuiteError as exc:
            rows.append(InventoryRow(name, "kem", "-", "-", "liboqs", "not available",
                                     str(exc)))
            continue
        for kem in suite.kems:
            provider, version = _provider_of(kem, versions)
            rows.append(InventoryRow(name, "kem", kem.name, PARAMETER_SET.get(kem.name, ""),
                                     provider, version, STATUS.get(kem.name, "")))
        for sig in suite.signatures:
            provider, version = _provider_of(sig, versions)
            rows.append(InventoryRow(name, "signature", sig.name,
                                     PARAMETER_SET.get(sig.name, ""), provider, version,
                                     STATUS.get(sig.name, "")))
        for role, alg in (("kdf", "HKDF-SHA-384"), ("mac", "HMAC-SHA-384")):
            rows.append(InventoryRow(name, role, alg, PARAMETER_SET[alg], "cryptography",
                                     crypto, STATUS[alg]))
    return rows
