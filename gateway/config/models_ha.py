"""Config models of the journal (journal:, SQLite or PostgreSQL) and the HA pair (ha:)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from gateway.config.values import Name, PathField, _Model, _secret_file


class JournalSettings(_Model):
    """Where consumed key_IDs and epochs are kept: a local SQLite file (the default,
    <state_dir>/journal.db), or a PostgreSQL database that an HA pair shares."""

    backend: Literal["sqlite", "postgresql"] = "sqlite"
    # A libpq conninfo ("host=... port=... dbname=... user=... sslmode=...") or URI,
    # without the password: that is read from password_file.
    conninfo: Annotated[str, Field(min_length=1)] | None = Field(default=None,
                                                                 validate_default=True)
    password_file: PathField | None = Field(default=None, validate_default=True)
    connect_timeout_s: float = Field(default=2.0, ge=1, le=30)
    statement_timeout_ms: int = Field(default=2000, ge=100, le=60000)

    @field_validator("conninfo")
    @classmethod
    def _conninfo(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            if info.data.get("backend") == "postgresql":
                raise ValueError("journal.backend postgresql needs a conninfo "
                                 "(e.g. 'host=192.0.2.9 dbname=qsgw user=qsgw')")
            return None
        from psycopg import conninfo

        try:
            parts = conninfo.conninfo_to_dict(value)
        except Exception:  # the text may hold a password: never echoed
            raise ValueError("not a libpq conninfo ('key=value ...' or a postgresql:// "
                             "URI)") from None
        if "password" in parts:
            raise ValueError("holds a password: put it in journal.password_file (0600), "
                             "never in the config")
        return value

    @field_validator("password_file")
    @classmethod
    def _password(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _secret_file(value, info)


class HaSettings(_Model):
    """This gateway is one member of an active/standby pair: it is active while the
    virtual address (moved by keepalived's VRRP) is on one of its interfaces."""

    virtual_address: str
    member: Name  # this member's own name ("a1"), in the journal rows and the audit trail
    check_interval_s: float = Field(default=0.1, ge=0.02, le=5)

    @field_validator("virtual_address")
    @classmethod
    def _vip(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError("an IPv4 or IPv6 address (the VRRP virtual address, "
                             "without a prefix length)") from None
