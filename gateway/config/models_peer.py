"""Config models of one peer (peers[]): who it is, its keys' schedule and suite, its tunnel."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
)

from gateway.config.models_tunnels import Tunnel
from gateway.config.values import (
    HostPortField,
    Name,
    SaeId,
    Seconds,
    _Model,
)


class BackoffSettings(_Model):
    initial: Seconds = 1.0
    max: Seconds = 30.0

    @field_validator("max")
    @classmethod
    def _max_ge_initial(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("initial")
        if initial is not None and value < initial:
            raise ValueError(f"must be >= initial ({initial:g} s)")
        return value


class PeerConfig(_Model):
    id: Name
    sae_id: SaeId
    control: HostPortField
    identity: str
    role: Literal["auto", "initiator", "responder"] = "auto"
    qkd: Literal["required", "preferred", "off"] = "required"
    qkd_keys_per_epoch: int = Field(default=1, ge=1, le=16)
    qkd_prefetch: bool = True
    rekey_interval_s: Seconds = 120.0
    key_lifetime_s: Seconds = 300.0
    retry_backoff_s: BackoffSettings = Field(default_factory=BackoffSettings)
    suite: str = "default"
    tunnel: Tunnel

    @field_validator("identity")
    @classmethod
    def _identity(cls, value: str) -> str:
        from gateway.identity import PREFIX, IdentityError, PublicIdentity

        try:
            PublicIdentity.from_text(value)
        except IdentityError as exc:
            raise ValueError(
                f"not a valid public identity: {exc}; it is the {PREFIX}... line printed by "
                "`qsgw keygen` on the peer"
            ) from None
        return value

    @field_validator("key_lifetime_s")
    @classmethod
    def _lifetime(cls, value: float, info: ValidationInfo) -> float:
        rekey = info.data.get("rekey_interval_s")
        if rekey is not None and value <= rekey:
            raise ValueError(
                f"must exceed rekey_interval_s ({rekey:g} s), so a new key is made "
                "before the current one expires"
            )
        return value

    @field_validator("suite")
    @classmethod
    def _suite(cls, value: str) -> str:
        try:
            from gateway.crypto.suites import SuiteError, lookup_suite
        except ImportError:  # pragma: no cover - only while the module is being written
            return value
        try:
            suite = lookup_suite(value)
        except SuiteError as exc:
            raise ValueError(str(exc)) from None
        if suite.static_kems:
            # The handshake supports pinned static McEliece keys; provisioning them
            # through the config (keygen, pinning) is not there yet: refuse, don't crash.
            raise ValueError(
                f"suite {value!r} needs a pinned static {', '.join(sorted(suite.static_kems))} "
                "key per gateway, which the config cannot provision yet; use frodo1344shake "
                "or frodo1344aes for a conservative (unstructured-lattice) KEM"
            )
        return value
