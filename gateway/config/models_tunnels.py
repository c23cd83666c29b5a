"""Config models of a peer's tunnel: WireGuard (PSK) or IPsec (IKEv2 PPK) and its IKE auth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
)

from gateway.config.values import (
    _PPK_ID_PATTERN,
    HostPortField,
    IfName,
    IkeAddr,
    InterfaceField,
    Name,
    NetworkField,
    PathField,
    Port,
    Proposal,
    TrafficSelector,
    _b64_key32,
    _file_validator,
    _Model,
    _Net,
    _secret_file,
    _vici_uri,
)


class WireGuardTunnel(_Model):
    type: Literal["wireguard"]
    driver: Literal["userspace", "kernel"] = "userspace"
    manage: Literal["full", "psk-only"] = "full"
    interface: IfName
    private_key_file: PathField | None = Field(default=None, validate_default=True)
    listen_port: Port | None = None
    addresses: tuple[InterfaceField, ...] = ()
    peer_public_key: Annotated[str, BeforeValidator(_b64_key32)]
    endpoint: HostPortField | None = None
    allowed_ips: tuple[NetworkField, ...] = Field(default=(), validate_default=True)
    # A keepalive makes the tunnel handshake without traffic, so its liveness is seen.
    persistent_keepalive_s: int = Field(default=25, ge=0, le=65535)
    wireguard_go: str = "wireguard-go"
    # Keyed but with no data-plane handshake for this long: the peer is `down`.
    liveness_s: float = Field(default=30.0, ge=2.0, le=3600.0)

    @field_validator("private_key_file")
    @classmethod
    def _private_key(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            if info.data.get("manage") == "full":
                raise ValueError(
                    "required with manage: full (a 0600 file from `wg genkey`); "
                    "use manage: psk-only to key an interface managed elsewhere"
                )
            return None
        return _secret_file(value, info)

    @field_validator("allowed_ips")
    @classmethod
    def _allowed(cls, value: tuple[_Net, ...], info: ValidationInfo) -> tuple[_Net, ...]:
        if not value and info.data.get("manage") == "full":
            raise ValueError("required with manage: full: at least one CIDR routed to the peer")
        return value


class PskAuth(_Model):
    psk_file: PathField

    _secrets = _file_validator("psk_file", secret=True)


class CertAuth(_Model):
    cert_file: PathField
    key_file: PathField
    ca_file: PathField
    local_id: str | None = None
    remote_id: str | None = None

    _files = _file_validator("cert_file", "ca_file", secret=False)
    _secrets = _file_validator("key_file", secret=True)


def _auth_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        if "psk_file" in value:
            return "psk"
        if "cert_file" in value or "key_file" in value:
            return "cert"
    return None


IkeAuth = Annotated[
    Annotated[PskAuth, Tag("psk")] | Annotated[CertAuth, Tag("cert")],
    Discriminator(
        _auth_kind,
        custom_error_type="auth_kind",
        custom_error_message="must be {psk_file: FILE} or {cert_file, key_file, ca_file, "
        "local_id, remote_id}",
    ),
]


class XfrmInterfaceSettings(_Model):
    """Route-based IPsec: an XFRM interface qsgw creates (pyroute2) and binds the
    CHILD_SA to (strongSwan's if_id_in/if_id_out), with its addresses and routes."""

    name: IfName
    if_id: int = Field(ge=1, le=0xFFFFFFFE)
    addresses: tuple[InterfaceField, ...] = ()
    routes: tuple[NetworkField, ...] = ()


class IpsecTunnel(_Model):
    type: Literal["ipsec"]
    vici_socket: Annotated[str, BeforeValidator(_vici_uri)] = "unix:///var/run/charon.vici"
    manage: Literal["full", "ppk-only"] = "full"
    connection: Name
    ppk_id: Annotated[str, Field(pattern=_PPK_ID_PATTERN)]
    ppk_required: bool = True
    local_addrs: tuple[IkeAddr, ...] = ("%any",)
    remote_addrs: tuple[IkeAddr, ...] = Field(default=(), validate_default=True)
    local_ts: tuple[TrafficSelector, ...] = ()
    remote_ts: tuple[TrafficSelector, ...] = ()
    # Passed through to strongSwan (e.g. ke1_mlkem768 where strongSwan >= 6).
    ike_proposals: tuple[Proposal, ...] = Field(
        default=("aes256gcm16-prfsha384-x25519",), min_length=1
    )
    esp_proposals: tuple[Proposal, ...] = Field(default=("aes256gcm16",), min_length=1)
    auth: IkeAuth | None = Field(default=None, validate_default=True)
    # Route-based (VTI-style) instead of policy-based: manage: full only.
    xfrm_interface: XfrmInterfaceSettings | None = None
    # Keyed but with no IKE SA (PPK) and CHILD_SA, or none with the current PPK,
    # for this long: the peer is `down`.
    liveness_s: float = Field(default=30.0, ge=2.0, le=3600.0)

    @field_validator("xfrm_interface")
    @classmethod
    def _xfrm(cls, value: XfrmInterfaceSettings | None,
              info: ValidationInfo) -> XfrmInterfaceSettings | None:
        if value is not None and info.data.get("manage") != "full":
            raise ValueError("only with manage: full (qsgw creates the interface); with "
                             "ppk-only set if_id_in/if_id_out in swanctl.conf")
        return value

    @field_validator("remote_addrs")
    @classmethod
    def _remote(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if not value and info.data.get("manage") == "full":
            raise ValueError("required with manage: full: the peer gateway's IKE address(es)")
        return value

    @field_validator("auth")
    @classmethod
    def _auth(cls, value: PskAuth | CertAuth | None, info: ValidationInfo) -> Any:
        if value is None and info.data.get("manage") == "full":
            raise ValueError(
                "required with manage: full: {psk_file: FILE} or "
                "{cert_file, key_file, ca_file, local_id, remote_id}"
            )
        return value


Tunnel = Annotated[WireGuardTunnel | IpsecTunnel, Field(discriminator="type")]
