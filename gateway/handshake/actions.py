"""What the state machines ask the daemon to do, and what it feeds them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from gateway.handshake.errors import FailureReason
from gateway.handshake.messages import MessageType


class QkdPolicy(enum.Enum):
    REQUIRED = "required"
    PREFERRED = "preferred"
    OFF = "off"


class QkdKeyLike(Protocol):
    """A delivered QKD key (kms_client.Key fits)."""

    @property
    def key_id(self) -> str: ...

    @property
    def key(self) -> bytes: ...


@dataclass(frozen=True)
class QkdKey:
    key_id: str
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class SendMessage:
    data: bytes
    type: MessageType


@dataclass(frozen=True)
class FetchQkdKeys:
    """Master SAE: fetch ``count`` new keys (enc_keys) for the peer."""

    count: int


@dataclass(frozen=True)
class FetchQkdKeysById:
    """Slave SAE: fetch these key_IDs (dec_keys)."""

    key_ids: tuple[str, ...]


@dataclass(frozen=True)
class CommitEpoch:
    """Journal durably before going on (Journal.commit); on KeyReuseError or
    StaleEpochError call ``abort(FailureReason.KEY_REUSE or REPLAY)``."""

    peer_id: str
    epoch: int
    key_ids: tuple[str, ...]


@dataclass(frozen=True)
class InstallKey:
    """Install the tunnel key. The caller wipes ``key`` after installing.

    ``peer_confirmed``: the peer is known to hold the key (initiator, after
    DONE); the responder installs first and then calls ``on_installed``.
    """

    epoch: int
    key: bytearray = field(repr=False)
    sources: tuple[str, ...]
    key_ids: tuple[str, ...]
    suite: str
    degraded: bool
    peer_confirmed: bool


@dataclass(frozen=True)
class Rejected:
    """A message was refused and ignored; the handshake goes on."""

    reason: FailureReason
    detail: str = ""


@dataclass(frozen=True)
class HandshakeFailed:
    """The handshake is over without a key."""

    reason: FailureReason
    detail: str = ""


Action = (
    SendMessage | FetchQkdKeys | FetchQkdKeysById | CommitEpoch | InstallKey | Rejected
    | HandshakeFailed
)
