"""Config models of one peer (peers[]): who it is, its keys' schedule and suite, its tunnel."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
)

from gateway.config.models_tunnels import Tunnel
from gateway.config.values import (
    HostPortField,
    Name,
    PathField,
    SaeId,
    Seconds,
    _check_files,
    _Model,
    _secret_file,
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


class StaticKemPin(_Model):
    """The peer's static McEliece public key: its file and that file's SHA-256."""

    public_file: PathField
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def _check_static_kem(pin: StaticKemPin | None, info: ValidationInfo) -> StaticKemPin | None:
    """A McEliece suite needs the peer's key pinned and this gateway's own key made."""
    from gateway import static_kem as sk
    from gateway.crypto.suites import SuiteError, lookup_suite

    try:
        suite = lookup_suite(info.data["suite"])
    except (KeyError, SuiteError):
        return pin  # the suite's own error says what is wrong
    kem = sk.suite_static_kem(suite)
    if kem is None:
        if pin is not None:
            raise ValueError(f"only the McEliece suites use a static key; suite "
                             f"{suite.name!r} does not: remove static_kem")
        return None
    make = f"`qsgw keygen --out DIR --static-kem {suite.name}`"
    if pin is None:
        raise ValueError(
            f"required with suite {suite.name!r}: the peer's static {kem} public key, "
            f"{{public_file: FILE, sha256: HEX}} as printed by {make} on the peer")
    if not _check_files(info):
        return pin
    try:
        sk.load_pinned(pin.public_file, pin.sha256, kem)
    except sk.StaticKemError as exc:
        raise ValueError(str(exc)) from None
    identity_dir = (info.context or {}).get("identity_dir")
    if identity_dir is not None:
        for own in sk.key_files(identity_dir, kem):
            if not own.exists():
                raise ValueError(
                    f"suite {suite.name!r} needs this gateway's own static {kem} key: {own} "
                    f"is missing (make it with {make.replace('DIR', str(identity_dir))})")
        _secret_file(sk.key_files(identity_dir, kem)[0], info)
    return pin


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
    # McEliece suites: the peer's static public key, pinned (gateway/static_kem.py).
    static_kem: StaticKemPin | None = Field(default=None, validate_default=True)
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
            lookup_suite(value)
        except SuiteError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("static_kem")
    @classmethod
    def _static_kem(cls, value: StaticKemPin | None, info: ValidationInfo) -> Any:
        return _check_static_kem(value, info)
