"""kme.tls, kme.dialect, kme.dialect_rules and kme.prefetch: defaults, what they turn into
for the KME client, and bad values named by file, line and field with what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, ConfigIssue, kme_dialect, load_config

from .conftest import BASE, WriteConfig

PIN = "AB:" * 31 + "AB"

TLS_BLOCK = f"""\
  tls:
    verify: cert-sha256
    cert_sha256: "{PIN}"
    ciphers: ECDHE-RSA-AES128-SHA
  dialect: oss-flask
  dialect_rules:
    - {{status: 400, message: "pool refilling", calls: [enc_keys], means: unavailable}}
  prefetch: false
"""


def with_kme(extra: str, endpoint_extra: str = "") -> str:
    text = BASE.replace("  ca_file: kme/ca.pem\n", extra + "  ca_file: kme/ca.pem\n")
    return text.replace("      kme_id: KME_A\n", "      kme_id: KME_A\n" + endpoint_extra)


def the_error(path: Path, field: str) -> ConfigIssue:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    found = [e for e in info.value.errors if e.field == field]
    assert found, f"no error for {field}; got {info.value.errors}"
    assert found[0].file == str(path)
    return found[0]


def test_defaults_are_strict(write_config: WriteConfig) -> None:
    kme = load_config(write_config()).kme
    assert kme.tls.verify == "hostname" and kme.tls.min_version == "1.2"
    assert kme.tls.ciphers is None
    assert kme.dialect == "etsi" and kme.dialect_rules == () and kme.prefetch is True
    assert kme.endpoints[0].tls is None and kme.endpoints[0].dialect is None


def test_tls_dialect_and_prefetch_load(write_config: WriteConfig) -> None:
    kme = load_config(write_config(with_kme(TLS_BLOCK))).kme
    opts = kme.tls.options()
    assert opts.verify == "cert-sha256" and opts.cert_sha256 == "ab" * 32
    assert opts.ciphers == "ECDHE-RSA-AES128-SHA"
    assert kme.prefetch is False
    dialect = kme_dialect(kme.dialect, kme.dialect_rules)
    assert dialect.outcome(400, "Pool refilling, wait", "enc_keys") == "unavailable"
    assert dialect.outcome(400, "The requested key amount exceeds the generated key count",
                           "enc_keys") == "unavailable"
    assert dialect.outcome(400, "size shall be a multiple of 8", "enc_keys") == "bad-request"


def test_endpoint_overrides(write_config: WriteConfig) -> None:
    kme = load_config(write_config(with_kme(
        "", "      tls: {verify: kme-id}\n      dialect: oss-fastapi\n"))).kme
    assert kme.endpoints[0].tls is not None and kme.endpoints[0].tls.verify == "kme-id"
    assert kme.endpoints[0].dialect == "oss-fastapi" and kme.tls.verify == "hostname"


def test_unknown_dialect_lists_the_known_ones(write_config: WriteConfig) -> None:
    path = write_config(with_kme("  dialect: toshbia\n"))
    e = the_error(path, "kme.dialect")
    assert "toshbia" in e.message and "etsi" in e.message and "oss-flask" in e.message
    assert e.line == 9


def test_pin_mode_without_its_pin_is_named(write_config: WriteConfig) -> None:
    path = write_config(with_kme("  tls:\n    verify: spki-sha256\n"))
    e = the_error(path, "kme.tls")
    assert "spki_sha256" in e.message


def test_bad_verify_mode_says_what_is_allowed(write_config: WriteConfig) -> None:
    path = write_config(with_kme("  tls:\n    verify: none\n"))
    e = the_error(path, "kme.tls.verify")
    assert "kme-id" in e.message and "spki-sha256" in e.message


def test_bad_dialect_rule_is_named(write_config: WriteConfig) -> None:
    path = write_config(with_kme("  dialect_rules:\n    - {status: 200, means: unavailable}\n"))
    e = the_error(path, "kme.dialect_rules[0].status")
    assert "400" in e.message
