"""The simulator's test PKI: a CA, a server certificate per KME, a client certificate per SAE.

Made once in the state directory and reused; a server certificate is re-issued when it
does not name the listening host. Every file is created 0600 (written to a temporary
name and renamed, so a crash never leaves half a key).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=3650)
LOCAL_NAMES: tuple[str, ...] = ("127.0.0.1", "::1", "localhost")


class PkiError(RuntimeError):
    """The PKI in the state directory cannot be read or written."""


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    kmes: dict[str, CertPair]
    saes: dict[str, CertPair]


def write_private(path: Path, data: bytes) -> None:
    """Write a file that is 0600 from its first byte, atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "qsgw KME simulator"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    seen: set[str] = set()
    for h in (*hosts, *LOCAL_NAMES):
        if h in seen or h in ("", "0.0.0.0", "::"):  # noqa: S104 - wildcard has no SAN
            continue
        seen.add(h)
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            entries.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(entries)


def _san_names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return ips | set(san.get_values_for_type(x509.DNSName))


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _issue(
    cn: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate | None,
    usage: str,
    hosts: Sequence[str] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = _name(cn)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject if ca_cert else subject)
        .public_key(key.public_key() if ca_cert else ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + VALIDITY)
    )
    if usage == "ca":
        key = ca_key
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        )
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
        eku = (
            ExtendedKeyUsageOID.SERVER_AUTH
            if usage == "server"
            else ExtendedKeyUsageOID.CLIENT_AUTH
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        if usage == "server":
            builder = builder.add_extension(_san(hosts), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert, key


def _safe(name: str) -> str:
    # IDs are validated by the topology (letters, digits, _ . -) but never trust a path.
    if "/" in name or name.startswith("."):
        raise PkiError(f"ID {name!r} cannot be used as a file name")
    return name


def ensure_pki(
    state_dir: Path, kme_ids: Sequence[str], sae_ids: Sequence[str], hosts: Sequence[str]
) -> Pki:
    """Create what is missing of the PKI under state_dir/pki and return its file names."""
    base = state_dir.resolve() / "pki"
    try:
        for d in (base, base / "kme", base / "sae"):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        ca_cert_path, ca_key_path = base / "ca.crt", base / "ca.key"
        if ca_cert_path.exists() and ca_key_path.exists():
            ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
            loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise PkiError(f"{ca_key_path}: not an EC private key")
            ca_key = loaded
        else:
            ca_key = ec.generate_private_key(ec.SECP256R1())
            ca_cert, _ = _issue("qsgw KME simulator CA", ca_key, None, "ca")
            write_private(ca_key_path, _pem_key(ca_key))
            write_private(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM))
        want_hosts = {h for h in (*hosts, *LOCAL_NAMES) if h not in ("", "0.0.0.0", "::")}  # noqa: S104
        kmes: dict[str, CertPair] = {}
        for kme_id in kme_ids:
            pair = CertPair(
                base / "kme" / f"{_safe(kme_id)}.crt", base / "kme" / f"{_safe(kme_id)}.key"
            )
            if not _valid(pair, ca_cert, kme_id, want_hosts):
                cert, key = _issue(kme_id, ca_key, ca_cert, "server", hosts)
                write_private(pair.key, _pem_key(key))
                write_private(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
            kmes[kme_id] = pair
        saes: dict[str, CertPair] = {}
        for sae_id in sae_ids:
            pair = CertPair(
                base / "sae" / f"{_safe(sae_id)}.crt", base / "sae" / f"{_safe(sae_id)}.key"
            )
            if not _valid(pair, ca_cert, sae_id, None):
                cert, key = _issue(sae_id, ca_key, ca_cert, "client")
                write_private(pair.key, _pem_key(key))
                write_private(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
            saes[sae_id] = pair
    except OSError as exc:
        raise PkiError(f"{base}: cannot create the test PKI: {exc.strerror}") from None
    return Pki(ca_cert_path, kmes, saes)


def _valid(pair: CertPair, ca_cert: x509.Certificate, cn: str, hosts: set[str] | None) -> bool:
    """An existing certificate is reused if the CA issued it to `cn` and it names `hosts`."""
    if not (pair.cert.exists() and pair.key.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    except ValueError:
        return False
    if cert.issuer != ca_cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns or cns[0].value != cn:
        return False
    if cert.not_valid_after_utc < dt.datetime.now(dt.UTC) + dt.timedelta(days=1):
        return False
    return hosts is None or hosts <= _san_names(cert)
