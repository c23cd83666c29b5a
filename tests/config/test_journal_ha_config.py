"""The journal: and ha: sections: a PostgreSQL journal for the pair, never a password in
the config, and no HA pair on a local journal."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

from .conftest import BASE, WriteConfig, write_secret


def _errors(path: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return {e.field: e.message for e in info.value.errors}


def test_a_postgresql_journal_and_ha_pair_load(write_config: WriteConfig, site: Path) -> None:
    write_secret(site / "pg.password", b"s3cret\n")
    path = write_config(BASE + "journal:\n  backend: postgresql\n"
                        "  conninfo: host=192.0.2.9 dbname=qsgw user=qsgw\n"
                        "  password_file: pg.password\n"
                        "ha:\n  virtual_address: 198.51.100.100\n  member: a1\n")
    cfg = load_config(path)
    assert cfg.journal.backend == "postgresql"
    assert cfg.journal.password_file == site / "pg.password"
    assert cfg.ha is not None and cfg.ha.member == "a1"
    assert load_config(write_config()).journal.backend == "sqlite"  # the default


def test_a_password_in_the_conninfo_is_refused_and_never_echoed(
        write_config: WriteConfig) -> None:
    path = write_config(BASE + "journal:\n  backend: postgresql\n"
                        "  conninfo: host=192.0.2.9 user=qsgw password=hunter2-xyz\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "journal.conninfo" in text and "password_file" in text
    assert "hunter2-xyz" not in text


def test_postgresql_needs_a_conninfo(write_config: WriteConfig) -> None:
    errors = _errors(write_config(BASE + "journal:\n  backend: postgresql\n"))
    assert any("conninfo" in f or "conninfo" in m for f, m in errors.items()), errors


def test_an_ha_pair_on_a_local_journal_is_refused(write_config: WriteConfig) -> None:
    errors = _errors(write_config(
        BASE + "ha:\n  virtual_address: 198.51.100.100\n  member: a1\n"))
    assert "ha" in errors and "journal.backend: postgresql" in errors["ha"], errors


def test_a_virtual_address_must_be_an_address(write_config: WriteConfig) -> None:
    errors = _errors(write_config(
        BASE + "journal:\n  backend: postgresql\n  conninfo: host=192.0.2.9\n"
        "ha:\n  virtual_address: 198.51.100.100/24\n  member: a1\n"))
    assert "ha.virtual_address" in errors, errors
